-- Redis client throughput: N coroutines, each running M FCALL of a trivial
-- function on one shared connection, as the purchase path does.
--   flashhost --run bench/redis_client.lua [N [M]]      (defaults 200 × 500)
-- Uses REDIS_URL (default redis://127.0.0.1:6379); touches one key, fh:bench:n.
local redis = require "flashhost.redis"
local core = require "flashhost.core"
local timer = require "flashhost.timer"

local N = tonumber(arg[1]) or 200
local M = tonumber(arg[2]) or 500

local r = redis.connect { timeout_ms = 5000, max_pending = N * 2 }
assert(r:wait_ready(3000), "redis not reachable at " .. r.url)
r:functions("fhbench", "#!lua name=fhbench\n" ..
  "redis.register_function('fhbench_incr', function(keys) return redis.call('INCR', keys[1]) end)\n")
assert(r:call("DEL", "fh:bench:n"))
assert(r:fcall("fhbench_incr", { "fh:bench:n" }, {})) -- load it once, outside the timing

local done, failed = 0, 0
local t0 = core.mono()
for _ = 1, N do
  core.spawn(function()
    for _ = 1, M do
      local v = r:fcall("fhbench_incr", { "fh:bench:n" }, {})
      if type(v) ~= "number" then failed = failed + 1 end
    end
    done = done + 1
  end)
end
while done < N do timer.sleep(1) end
local secs = (core.mono() - t0) / 1000
local total = N * M
print(("%d coroutines x %d FCALL: %d ops in %.2f s = %.0f ops/s, %d failed"):format(
  N, M, total, secs, total / secs, failed))
assert(r:call("GET", "fh:bench:n") == tostring(total + 1), "counter does not match")
r:call("DEL", "fh:bench:n")
r:close()
