-- flashhost --run bench/purchase_ceiling.lua SKU CONNS SECONDS
-- Redis's own ceiling for one purchase: CONNS coroutines calling the
-- purchase_batch function with one attempt each, back to back (unique buyer
-- and ids each time) over two pipelined connections, as the API's two workers
-- would, with no HTTP.  redis-benchmark cannot do this (each request needs the
-- same fresh id in a KEY and an ARGV); this is the figure the purchase route
-- compares to.
package.path = "app/?.lua;" .. package.path
local redis = require "flashhost.redis"
local core = require "flashhost.core"
local timer = require "flashhost.timer"
local stock = require "lib.stock"

local sku, conns, secs = arg[1], tonumber(arg[2]) or 50, tonumber(arg[3]) or 5
local clients = {}
for i = 1, 2 do
  clients[i] = redis.connect { url = os.getenv("REDIS_URL") }
  assert(clients[i]:wait_ready(3000))
  stock.setup(clients[i], "redis-lua")
end
local no_limits = { per_user_limit = 0, reservation_ttl_sec = 3600, rate_limit = { capacity = 0, refill_per_sec = 1 } }
local done, ok, running = 0, 0, conns
local deadline = core.now() + secs * 1000
for c = 1, conns do
  core.spawn(function()
    local r = clients[c % 2 + 1]
    while core.now() < deadline do
      local id = core.id()
      local a = stock.purchase(r, { userId = id, skuId = sku, quantity = 1 },
        { reservationId = id, orderId = core.id(), traceId = "" }, no_limits)
      done = done + 1
      if a and a.code == "OK" then ok = ok + 1 end
    end
    running = running - 1
  end)
end
local t0 = core.mono()
while running > 0 do timer.sleep(10) end
local elapsed = (core.mono() - t0) / 1000
print(("purchase function: %.0f calls/s (%d calls, %d ok, %.1fs)"):format(done / elapsed, done, ok, elapsed))
