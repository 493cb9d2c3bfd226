-- Request validation: pure functions, no I/O.  Each returns the cleaned
-- value, or nil and { field =, message = } describing the first problem.
local M = {}

local MAX_ID_DIGITS = 19 -- ids are positive 64-bit integers written as strings

local function id_string(v, field)
  if type(v) ~= "string" then
    return nil, { field = field, message = field .. " must be a string of digits" }
  end
  if #v == 0 or #v > MAX_ID_DIGITS or not v:match("^[1-9]%d*$") then
    return nil, { field = field, message = field .. " must be a positive integer written as a string (at most 19 digits)" }
  end
  if #v == MAX_ID_DIGITS and v > "9223372036854775807" then
    return nil, { field = field, message = field .. " is out of range" }
  end
  return v
end
M.id_string = id_string

-- body = { userId, skuId, quantity, idempotencyKey? }; unknown fields are ignored.
function M.purchase(body, max_quantity)
  if type(body) ~= "table" or body[1] ~= nil then
    return nil, { field = "body", message = "body must be a JSON object" }
  end
  local user, err = id_string(body.userId, "userId")
  if not user then return nil, err end
  local sku
  sku, err = id_string(body.skuId, "skuId")
  if not sku then return nil, err end
  local q = body.quantity
  if q == nil then q = 1 end
  max_quantity = max_quantity or 10
  if type(q) ~= "number" or q ~= q or q % 1 ~= 0 or q < 1 or q > max_quantity then
    return nil, { field = "quantity", message = "quantity must be an integer from 1 to " .. max_quantity }
  end
  local key = body.idempotencyKey
  if key ~= nil then
    -- visible ASCII only: the key becomes part of a Redis key name
    if type(key) ~= "string" or #key < 1 or #key > 128 or not key:match("^[\33-\126]+$") then
      return nil, { field = "idempotencyKey", message = "idempotencyKey must be 1 to 128 visible ASCII characters" }
    end
  end
  return { userId = user, skuId = sku, quantity = q, idempotencyKey = key }
end

local function opt_int(v, field, min, max)
  if v == nil then return true end
  if type(v) ~= "number" or v % 1 ~= 0 or v < min or v > max then
    return nil, { field = field, message = ("%s must be an integer from %d to %d"):format(field, min, max) }
  end
  return true
end

-- Admin: { skuId, name, price, stock, startsAt?, endsAt?, perUserLimit?, reservationTtlSec? }
function M.sale(body)
  if type(body) ~= "table" or body[1] ~= nil then
    return nil, { field = "body", message = "body must be a JSON object" }
  end
  local sku, err = id_string(body.skuId, "skuId")
  if not sku then return nil, err end
  if type(body.name) ~= "string" or #body.name < 1 or #body.name > 200 then
    return nil, { field = "name", message = "name must be a string of 1 to 200 characters" }
  end
  local price = body.price
  if type(price) ~= "number" or price ~= price or price < 0 or price > 1e9 then
    return nil, { field = "price", message = "price must be a number from 0 to 1e9" }
  end
  local ok
  for _, f in ipairs {
    { "stock", 0, 10000000 }, { "startsAt", 0, 1e13 }, { "endsAt", 0, 1e13 },
    { "perUserLimit", 0, 1000000 }, { "reservationTtlSec", 1, 86400 },
  } do
    ok, err = opt_int(body[f[1]], f[1], f[2], f[3])
    if not ok then return nil, err end
  end
  if body.stock == nil then return nil, { field = "stock", message = "stock is required" } end
  if body.startsAt and body.endsAt and body.endsAt ~= 0 and body.endsAt <= body.startsAt then
    return nil, { field = "endsAt", message = "endsAt must be after startsAt" }
  end
  local queue
  queue, err = M.queue(body.queue, body.startsAt or 0)
  if err then return nil, err end
  return {
    skuId = sku, name = body.name, price = price, stock = body.stock,
    startsAt = body.startsAt or 0, endsAt = body.endsAt or 0,
    perUserLimit = body.perUserLimit, reservationTtlSec = body.reservationTtlSec,
    queue = queue,
  }
end

M.MAX_ADMIT_PER_SEC = 100000

-- A waiting room's pace: admissions per second, a number from 0 (paused) up.
function M.admit_rate(v)
  if type(v) ~= "number" or v ~= v or v < 0 or v > M.MAX_ADMIT_PER_SEC then
    return nil, { field = "admitPerSec", message = "admitPerSec must be a number from 0 to " .. M.MAX_ADMIT_PER_SEC }
  end
  return v
end

-- The sale's `queue` setting: nil (or enabled = false) = no waiting room;
-- otherwise { admitPerSec, tokenTtlSec, preQueueSec } with defaults.
-- A pre-queue needs a start to open before.
function M.queue(q, startsAt)
  if q == nil then return nil end
  if type(q) ~= "table" or q[1] ~= nil then
    return nil, { field = "queue", message = "queue must be an object {enabled, admitPerSec, tokenTtlSec, preQueueSec}" }
  end
  if q.enabled ~= nil and type(q.enabled) ~= "boolean" then
    return nil, { field = "queue.enabled", message = "queue.enabled must be true or false" }
  end
  if q.enabled == false then return nil end
  local rate, err = M.admit_rate(q.admitPerSec == nil and 50 or q.admitPerSec)
  if not rate then err.field = "queue.admitPerSec"; return nil, err end
  local ok
  for _, f in ipairs { { "tokenTtlSec", 1, 3600 }, { "preQueueSec", 0, 86400 } } do
    ok, err = opt_int(q[f[1]], "queue." .. f[1], f[2], f[3])
    if not ok then return nil, err end
  end
  local pre = q.preQueueSec or 0
  if pre > 0 and startsAt <= 0 then
    return nil, { field = "queue.preQueueSec", message = "a pre-queue needs the sale's startsAt" }
  end
  return { admitPerSec = rate, tokenTtlSec = q.tokenTtlSec or 120, preQueueSec = pre }
end

return M
