-- flashhost --run bench/function_cost.lua BATCHES N
-- Run from the root of the tree whose library and lib/stock.lua are measured
-- (bench/function_cost runs it there, also for an older revision).  Loads redis-lua/ into the Redis at
-- REDIS_URL, makes a sale, then sends BATCHES purchase_batch calls of N new
-- buyers each (every attempt succeeds, with its own idempotency key and the
-- order index written, as the purchase app sends them on one Redis) and
-- prints the server's CPU time per attempt over them (read from /proc, so
-- Redis must run on this machine; REDIS_PID names it), after 200 calls of
-- warm-up.  The figure counts everything Redis does for the calls: reading
-- them, the function, its append-only-file writes, the replies.
package.path = "app/?.lua;" .. package.path
local redis = require "flashhost.redis"
local core = require "flashhost.core"
local stock = require "lib.stock"
-- an older tree (bench/function_cost REV) has no blocks of ids: its ids are
-- drawn one by one there
local has_blocks, order_ids = pcall(require, "lib.order_ids")
local rules = require "rules"

local batches, n = tonumber(arg[1]) or 3000, tonumber(arg[2]) or 16
local pid = assert(os.getenv("REDIS_PID"), "REDIS_PID")
local r = redis.connect { url = os.getenv("REDIS_URL") }
assert(r:wait_ready(3000))
stock.setup(r, "redis-lua")
local sku = "990001"
assert(stock.create_sale(r, { skuId = sku, name = "cost", price = 10, stock = 1e9, reservationTtlSec = 3600 }, "t"))

local function cpu_ticks()
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local s = f:read("*a")
  f:close()
  -- fields 14 and 15 (utime, stime), counted after the parenthesised name
  local rest = s:match("%) (.*)$")
  local fields = {}
  for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
  return tonumber(fields[12]) + tonumber(fields[13])
end

local user = 0
local function run(count)
  for _ = 1, count do
    local attempts = {}
    for i = 1, n do
      user = user + 1
      local id = tostring(5000000 + user)
      attempts[i] = { p = { userId = id, skuId = sku, quantity = 1, idempotencyKey = "k-" .. id },
        ids = { traceId = "t" .. user } }
    end
    if has_blocks then
      order_ids.assign(core.id_block(), attempts)
    else
      for i = 1, n do attempts[i].ids.reservationId, attempts[i].ids.orderId = core.id(), core.id() end
    end
    local list, kind, detail = stock.purchase_batch(r, sku, attempts, rules, true)
    assert(list, detail or kind)
    assert(list[n].code == "OK", list[n].code)
  end
end

run(200)
local t0 = cpu_ticks()
run(batches)
local ticks = cpu_ticks() - t0
local hz = tonumber(os.getenv("CLK_TCK")) or 100 -- /proc's unit: 1/CLK_TCK s
print(("%.1f"):format(ticks / hz * 1e6 / (batches * n)))
