-- Where an order lives, and how to read it: the Redis key layout of the order
-- index and the reservation, and the SQL of the orders table.  The order
-- routes (lib/orders.lua) ask this module and never spell a key or a query.
--
-- An order is found through the index (lib/stock.index_key: orderId ->
-- "sku:reservation", written with the reservation) or, once the order worker
-- wrote it, in MySQL.  MySQL also answers when the index is there but the reservation is
-- not (a Redis restarted from a repaired append-only file can have lost it).
local cjson = require "cjson"
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

-- A reservation of before they were strings: a hash.
local function reservation_hash(redis, key)
  local res, err = redis:call("HGETALL", key)
  if type(res) ~= "table" then return nil, err or "unreadable reservation" end
  if #res == 0 then return nil end
  local h = {}
  for i = 1, #res, 2 do h[res[i]] = res[i + 1] end
  return h
end

-- The reservation as a table (in Redis a JSON object of texts, see
-- redis-lua/README.md): fields | nil (no such key) | nil, err (Redis away,
-- or a value that is no reservation)
function M.reservation(redis, sku, resId)
  local key = stock.prefix(sku) .. "res:" .. resId
  local v, err, kind = redis:call("GET", key)
  if v == false and kind == "WRONGTYPE" then return reservation_hash(redis, key) end
  if v == cjson.null then return nil end
  if type(v) ~= "string" then return nil, err or "unreadable reservation" end
  local ok, h = pcall(cjson.decode, v)
  if not ok or type(h) ~= "table" then return nil, "unreadable reservation " .. key end
  return h
end

return M
