-- flashhost --run bench/queue_fill.lua SKU N  > tickets.txt
-- Puts N users in SKU's waiting room through the queue_join function (the
-- join route's own call), 200 joins in flight at a time, and prints each
-- user's ticket, signed with QUEUE_SECRET as the API signs it, one a line,
-- for bench/wrk/queue_status.lua.
package.path = "app/?.lua;" .. package.path
local redis = require "flashhost.redis"
local core = require "flashhost.core"
local timer = require "flashhost.timer"
local crypto = require "flashhost.crypto"
local stock = require "lib.stock"
local store = require "lib.queue_store"
local qtoken = require "lib.queue_token"

local sku, n = arg[1], tonumber(arg[2]) or 10000
local r = redis.connect { url = os.getenv("REDIS_URL") }
assert(r:wait_ready(3000))
stock.setup(r, "redis-lua")
local signer = qtoken.new(assert(os.getenv("QUEUE_SECRET"), "QUEUE_SECRET"), crypto)
local tickets, next_user, running = {}, 0, 0
for _ = 1, 200 do
  running = running + 1
  core.spawn(function()
    while next_user < n do
      next_user = next_user + 1
      local user = tostring(700000000 + next_user)
      local a = assert(store.join(r, sku, user))
      assert(a.code == "OK", "join: " .. tostring(a.code))
      tickets[#tickets + 1] = signer.ticket(sku, a.gen, a.seq, user)
    end
    running = running - 1
  end)
end
while running > 0 do timer.sleep(5) end
io.write(table.concat(tickets, "\n"), "\n")
