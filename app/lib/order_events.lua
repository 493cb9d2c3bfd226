-- Turning `reservations` messages into MySQL writes.  Pure (no I/O): the
-- order worker runs the statements; unit specs check them.
--
-- Every event upserts its order, so events may arrive in any order and any
-- number of times: a row is created by whichever event comes first, and its
-- status only ever leaves PENDING (the Redis scripts allow exactly one of
-- confirmed / canceled / expired per reservation).  Audit rows are keyed by
-- the event id, payments by the order: duplicates are ignored.
local cjson = require "cjson.safe"

local M = {}

local TYPES = { reserved = "PENDING", confirmed = "CONFIRMED", canceled = "CANCELED", expired = "EXPIRED" }
local DELTA = { reserved = -1, confirmed = 0, canceled = 1, expired = 1 }

local function digits(v) return type(v) == "string" and v:match("^%d+$") and #v <= 19 end

-- Checks one decoded event and fills in what the statements need; returns
-- the event or nil, reason.
local function check(ev)
  if type(ev) ~= "table" then return nil, "not a JSON object" end
  if not TYPES[ev.type] then return nil, "unknown event type " .. tostring(ev.type) end
  for _, f in ipairs { "orderId", "reservationId", "userId", "skuId" } do
    if not digits(ev[f]) then return nil, "bad " .. f end
  end
  local q = tonumber(ev.quantity)
  if not q or q < 1 or q % 1 ~= 0 then return nil, "bad quantity" end
  ev.quantity = q
  ev.unitPrice = tonumber(ev.unitPrice) or 0
  ev.expiresAt = tonumber(ev.expiresAt) or 0
  if type(ev.eventId) ~= "string" or #ev.eventId == 0 or #ev.eventId > 64 then
    ev.eventId = ev.reservationId .. ":" .. ev.type
  end
  ev.status = TYPES[ev.type]
  return ev
end

-- A purchase batch's reserved message (decoded): the fields its events
-- share (skuId, ts, unitPrice, expiresAt) and `rows`, one
-- [reservationId, orderId, userId, quantity, traceId] per reservation, as
-- redis-lua's purchase_batch writes it.  Returns its events, with the fields
-- and texts of a single reserved event, unchecked; nil, reason when a row is
-- not an array.
function M.expand(batch)
  local out = {}
  for i, row in ipairs(batch.rows) do
    if type(row) ~= "table" then return nil, ("row %d: not an array"):format(i) end
    local resId = row[1]
    out[i] = { type = "reserved", eventId = type(resId) == "string" and resId .. ":reserved" or nil,
      reservationId = resId, orderId = row[2], userId = row[3], quantity = row[4], traceId = row[5],
      skuId = batch.skuId, ts = batch.ts, unitPrice = batch.unitPrice, expiresAt = batch.expiresAt,
      status = "PENDING" }
  end
  return out
end

-- Decodes one message: a single event object, a purchase batch's reserved
-- message (see expand; the relay sends that outbox entry's text as it is), or
-- the JSON array of events older versions wrote for a batch.  Returns the
-- list of events, or nil, reason when the message or any event in it is
-- unreadable: a message is dead-lettered whole.
local MAX_EVENTS = 1000
function M.decode_all(value)
  local v = cjson.decode(value or "")
  if type(v) ~= "table" then return nil, "not JSON" end
  if v.rows ~= nil then
    if v.type ~= "reserved" then return nil, "rows of type " .. tostring(v.type) end
    if type(v.rows) ~= "table" or v.rows[1] == nil then return nil, "rows must be a non-empty array" end
    local why
    v, why = M.expand(v)
    if not v then return nil, why end
  elseif v[1] == nil then
    local ev, why = check(v)
    if not ev then return nil, why end
    return { ev }
  end
  if #v > MAX_EVENTS then return nil, "more than " .. MAX_EVENTS .. " events in one message" end
  for i = 1, #v do
    local ev, why = check(v[i])
    if not ev then return nil, ("event %d: %s"):format(i, why) end
  end
  return v
end

local function placeholders(n, each)
  local one = "(" .. each .. ")"
  local t = {}
  for i = 1, n do t[i] = one end
  return table.concat(t, ",")
end

-- The statements for a batch of decoded events: { { sql, params... }, ... }
function M.statements(events)
  if #events == 0 then return {} end
  local stmts = {}

  local order_params = {}
  for _, e in ipairs(events) do
    for _, v in ipairs { e.orderId, e.reservationId, e.userId, e.skuId, e.quantity, e.unitPrice,
      e.status, e.expiresAt, e.traceId or "" } do
      order_params[#order_params + 1] = v
    end
  end
  stmts[#stmts + 1] = { "INSERT INTO orders (id, reservation_id, user_id, sku_id, quantity, unit_price, status, expires_at, trace_id) VALUES " ..
    placeholders(#events, "?, ?, ?, ?, ?, ?, ?, FROM_UNIXTIME(? / 1000), ?") ..
    " ON DUPLICATE KEY UPDATE status = IF(status = 'PENDING', VALUES(status), status)", order_params }

  local items, audit, pay = {}, {}, {}
  local n_items, n_pay = 0, 0
  for _, e in ipairs(events) do
    if e.type == "reserved" then
      for _, v in ipairs { e.orderId, e.skuId, e.quantity, e.unitPrice } do items[#items + 1] = v end
      n_items = n_items + 1
    elseif e.type == "confirmed" then
      for _, v in ipairs { e.orderId, e.quantity * e.unitPrice, "PAID" } do pay[#pay + 1] = v end
      n_pay = n_pay + 1
    end
    for _, v in ipairs { e.orderId, e.skuId, e.type, DELTA[e.type] * e.quantity, e.eventId } do
      audit[#audit + 1] = v
    end
  end
  if n_items > 0 then
    stmts[#stmts + 1] = { "INSERT IGNORE INTO order_items (order_id, sku_id, quantity, unit_price) VALUES " ..
      placeholders(n_items, "?, ?, ?, ?"), items }
  end
  if n_pay > 0 then
    stmts[#stmts + 1] = { "INSERT IGNORE INTO payments (order_id, amount, status) VALUES " ..
      placeholders(n_pay, "?, ?, ?"), pay }
  end
  stmts[#stmts + 1] = { "INSERT IGNORE INTO inventory_audit (order_id, sku_id, event_type, quantity_delta, event_id) VALUES " ..
    placeholders(#events, "?, ?, ?, ?, ?"), audit }
  return stmts
end

-- What the worker publishes on `orders` (and `payments` for confirmations).
function M.order_message(e)
  return {
    key = e.orderId,
    value = cjson.encode { orderId = e.orderId, reservationId = e.reservationId, userId = e.userId,
      skuId = e.skuId, quantity = e.quantity, status = e.status, event = e.type, ts = tonumber(e.ts) },
    headers = { trace_id = e.traceId or "", event_id = e.eventId },
  }
end

function M.payment_message(e)
  return {
    key = e.orderId,
    value = cjson.encode { orderId = e.orderId, amount = e.quantity * e.unitPrice,
      paymentRef = e.paymentRef or "", status = "PAID", ts = tonumber(e.ts) },
    headers = { trace_id = e.traceId or "", event_id = e.eventId },
  }
end

return M
