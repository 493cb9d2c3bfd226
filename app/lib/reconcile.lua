-- Reconciliation of one SKU: Redis against itself (initial = available +
-- reserved + sold; the pending index holds exactly `reserved` tickets) and
-- MySQL against Redis (order quantities by status).  Used by the admin route
-- and by scripts/reconcile.lua.
--
-- MySQL rows are matched to the current sale by time: rows inserted before
-- the sale was created (or last reset) belong to an earlier sale.
local stock = require "lib.stock"

local M = {}

local STATUS_FIELD = { PENDING = "reserved", CONFIRMED = "sold", CANCELED = "canceled", EXPIRED = "expired" }

-- Returns the report: report.ok, and report.differences listing what disagrees (absent when ok).
function M.sku(redis, db, sku)
  local st, kind, err = stock.status(redis, sku, true)
  if not st then return nil, kind .. ": " .. tostring(err) end
  if st.code == "NO_SALE" then return nil, "no sale for SKU " .. sku end
  local c = st.counts
  local initial = tonumber(st.sale.initial) or 0
  local report = {
    skuId = sku, initial = initial, available = st.stock, reserved = c.reserved or 0, sold = c.sold or 0,
    canceled = c.canceled or 0, expired = c.expired or 0, pending = st.pending, outboxBacklog = st.outbox,
    differences = {},
  }
  local d = report.differences
  if st.stock + report.reserved + report.sold ~= initial then
    d[#d + 1] = ("redis: initial %d ~= available %d + reserved %d + sold %d"):format(initial, st.stock,
      report.reserved, report.sold)
  end
  if st.pendingQuantity ~= report.reserved then
    d[#d + 1] = ("redis: pending reservations hold %d tickets, counts say %d"):format(st.pendingQuantity, report.reserved)
  end
  if st.stock < 0 then d[#d + 1] = "redis: negative stock " .. st.stock end

  if db then
    local rows, qerr = db:query(
      "SELECT status, COUNT(*) AS n, COALESCE(SUM(quantity), 0) AS q FROM orders " ..
      "WHERE sku_id = ? AND created_at >= FROM_UNIXTIME(? / 1000) GROUP BY status", sku, tonumber(st.sale.createdAt) or 0)
    if not rows then
      d[#d + 1] = "mysql: " .. tostring(qerr)
    else
      local mysql = { reserved = 0, sold = 0, canceled = 0, expired = 0, orders = 0 }
      for _, r in ipairs(rows) do
        local f = STATUS_FIELD[r.status]
        if f then mysql[f] = tonumber(r.q) end
        mysql.orders = mysql.orders + tonumber(r.n)
      end
      report.mysql = mysql
      for _, f in ipairs { "reserved", "sold", "canceled", "expired" } do
        if mysql[f] ~= report[f] then
          d[#d + 1] = ("mysql: %s tickets %d, redis %d"):format(f, mysql[f], report[f])
        end
      end
    end
  end
  -- Events still in the outbox have not reached MySQL yet: differences may close.
  report.converging = st.outbox > 0
  report.ok = #d == 0
  -- an empty Lua table would encode as {}; say "no differences" by leaving it out
  if #d == 0 then report.differences = nil end
  return report
end

return M
