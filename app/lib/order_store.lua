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

-- A PENDING reservation as purchase_batch writes it: 'P' and seven fields,
-- 0x1F before each, the ids as JSON texts (redis-lua/README.md) -> fields | nil
local function compact_reservation(v)
  local u, o, q, p, e, c, t = v:match(
    "^P\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$")
  if not u then return nil end
  local ok, userId, orderId, traceId = pcall(function() return cjson.decode(u), cjson.decode(o), cjson.decode(t) end)
  if not ok or type(userId) ~= "string" or type(orderId) ~= "string" or type(traceId) ~= "string" then return nil end
  return { userId = userId, orderId = orderId, quantity = q, unitPrice = p ~= "" and p or nil, status = "PENDING",
    expiresAt = e, createdAt = c, updatedAt = c, traceId = traceId }
end

-- A reservation's text in either form -> fields | nil (no reservation)
function M.decode_reservation(v)
  if v:sub(1, 2) == "P\31" then return compact_reservation(v) end
  local ok, t = pcall(cjson.decode, v)
  return ok and type(t) == "table" and t or nil
end

-- The reservation as a table of texts (in Redis compact while PENDING, then a
-- JSON object, see redis-lua/README.md): fields | nil (no such key) | nil,
-- err (Redis away, or a value that is no reservation)
function M.reservation(redis, sku, resId)
  local key = stock.prefix(sku) .. "res:" .. resId
  local v, err, kind = redis:call("GET", key)
  if v == false and kind == "WRONGTYPE" then return reservation_hash(redis, key) end
  if v == cjson.null then return nil end
  if type(v) ~= "string" then return nil, err or "unreadable reservation" end
  local h = M.decode_reservation(v)
  if not h then return nil, "unreadable reservation " .. key end
  return h
end

return M
