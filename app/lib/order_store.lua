-- Where an order lives, and how to read it: the Redis key layout of the order
-- index and the reservation hash, and the SQL of the orders table.  The order
-- routes (lib/orders.lua) ask this module and never spell a key or a query.
--
-- An order is found through the index (lib/stock.index_key: orderId ->
-- "sku:reservation", written with the reservation) or, once the order worker wrote it, in
-- MySQL.  MySQL also answers when the index is there but the reservation is
-- not (a Redis restarted from a repaired append-only file can have lost it).
local stock = require "lib.stock"

local M = {}

-- The order's MySQL row: row | nil (no row, or no database) | nil, err (could not ask)
function M.row(db, orderId)
  if not db then return nil end
  local rows, err = db:query(
    "SELECT id, reservation_id, user_id, sku_id, quantity, unit_price, status, " ..
    "UNIX_TIMESTAMP(expires_at) * 1000 AS expires_ms FROM orders WHERE id = ?", orderId)
  if not rows then return nil, err end
  return rows[1]
end

-- locate(redis, db, orderId) -> { sku, reservationId, row? } | nil, "missing" | nil, "unavailable", err
function M.locate(redis, db, orderId)
  local ref, err = stock.read_index(redis, orderId)
  if type(ref) == "string" then
    local sku, resId = ref:match("^(%d+):(%d+)$")
    if sku then return { sku = sku, reservationId = resId } end
  end
  local row, derr = M.row(db, orderId)
  if row then return { sku = row.sku_id, reservationId = row.reservation_id, row = row } end
  if ref == nil and (derr or not db) then return nil, "unavailable", derr or err end
  return nil, "missing"
end

-- The reservation hash as a table: fields | nil (no such hash) | nil, err (Redis away)
function M.reservation(redis, sku, resId)
  local res, err = redis:call("HGETALL", stock.prefix(sku) .. "res:" .. resId)
  if type(res) ~= "table" then return nil, err or "unreadable reservation" end
  if #res == 0 then return nil end
  local h = {}
  for i = 1, #res, 2 do h[res[i]] = res[i + 1] end
  return h
end

return M
