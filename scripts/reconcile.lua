-- flashhost --run scripts/reconcile.lua [SKU...]  (or scripts/reconcile)
-- Checks, per SKU, that Redis accounts for every ticket (initial = available +
-- reserved + sold) and that MySQL's orders agree with Redis by status.  Prints
-- the differences; exits 1 if there are any, 2 if a store cannot be reached.
package.path = "app/?.lua;" .. package.path
local redis = require "flashhost.redis"
local mysql = require "flashhost.mysql"
local stock = require "lib.stock"
local reconcile = require "lib.reconcile"
local services = require "lib.services"

-- A deep status walks every pending reservation of a SKU in one call: after a
-- load test that is 100,000s of them, far more than a request's 1 s.
local r = redis.connect { url = os.getenv("REDIS_URL"), timeout_ms = 30000 }
local ok, err = r:wait_ready(3000)
if not ok then io.stderr:write("reconcile: redis: ", tostring(err), "\n") os.exit(2) end
stock.register(r, services.scripts_dir())
local db = os.getenv("RECONCILE_MYSQL") ~= "off" and mysql.pool { size = 1, database = services.database() } or nil

local skus = { ... }
if #skus == 0 then
  skus = r:call("SMEMBERS", stock.SKU_SET)
  if type(skus) ~= "table" then io.stderr:write("reconcile: cannot list SKUs\n") os.exit(2) end
  table.sort(skus, function(a, b) return tonumber(a) < tonumber(b) end)
end

local bad = 0
for _, sku in ipairs(skus) do
  local rep, rerr = reconcile.sku(r, db, sku)
  if not rep then
    print(("sku %s: %s"):format(sku, rerr))
    bad = bad + 1
  else
    local m = rep.mysql
    print(("sku %s: initial %d available %d reserved %d sold %d canceled %d expired %d backlog %d%s -> %s"):format(
      sku, rep.initial, rep.available, rep.reserved, rep.sold, rep.canceled, rep.expired, rep.outboxBacklog,
      m and (" | mysql orders %d pending %d confirmed %d canceled %d expired %d"):format(m.orders, m.reserved, m.sold, m.canceled, m.expired) or "",
      rep.ok and "ok" or (rep.converging and "CONVERGING" or "DIFFERENT")))
    for _, d in ipairs(rep.differences or {}) do print("  " .. d) end
    if not rep.ok then bad = bad + 1 end
  end
end
os.exit(bad == 0 and 0 or 1)
