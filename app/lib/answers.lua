-- Turns script answers into HTTP answers.  Pure: no I/O, so every mapping is
-- unit-tested (spec/unit/answers_spec.lua).
local M = {}

-- The purchases of one batch expire at the same millisecond: the last text is kept.
local iso_ms, iso_text
local function iso(ms)
  if ms ~= iso_ms then
    iso_text = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(ms / 1000)) .. (".%03dZ"):format(ms % 1000)
    iso_ms = ms
  end
  return iso_text
end
M.iso = iso

local json = require("cjson").encode

-- A JSON number as cjson writes it (14 significant digits); integers, the
-- usual case, by string.format, which costs no C library float formatting.
local function number(v)
  if v % 1 == 0 and v > -1e14 and v < 1e14 then return ("%d"):format(v) end
  return json(v)
end

-- The 200 of a reservation as JSON text: the fields of a table encoded by
-- cjson, written from their pieces, since this is the answer every sale
-- sends most (spec/unit/answers_spec.lua checks it against the table).
local message_json = setmetatable({}, { __mode = "k" })
local function reserved_text(a, msg, elapsed_ms)
  local m = message_json[msg]
  if not m then m = json(msg); message_json[msg] = m end
  local expires = number(a.expiresAt)
  return '{"success":true,"reservationId":' .. json(a.reservationId) .. ',"orderId":' .. json(a.orderId) ..
    ',"quantity":' .. number(a.quantity) .. ',"expiresAt":' .. expires .. ',"expiresAtMs":' .. expires ..
    ',"expiresAtIso":' .. json(iso(a.expiresAt)) .. ',"remaining":' .. number(a.remaining) ..
    ',"message":' .. m .. ',"processingTimeMs":' .. number(elapsed_ms) .. '}'
end

-- reserved_text writes exactly the table's fields only when each has its usual type.
local function writable(a, elapsed_ms)
  return type(a.reservationId) == "string" and type(a.orderId) == "string" and type(a.quantity) == "number"
    and type(a.expiresAt) == "number" and type(a.remaining) == "number" and type(elapsed_ms) == "number"
end

-- The body of an OK answer as a table: what reserved_text writes.
local function reserved_table(a, msg)
  return {
    success = true, reservationId = a.reservationId, orderId = a.orderId, quantity = a.quantity,
    -- expiresAt stays epoch milliseconds, as clients of the original API compute
    -- `expiresAt - Date.now()`; the ISO form has a field of its own
    expiresAt = a.expiresAt, expiresAtMs = a.expiresAt, expiresAtIso = iso(a.expiresAt),
    remaining = a.remaining,
    message = msg,
  }
end

-- refusal(status, code, message [, extra fields [, headers]]) -> status, body, headers:
-- the one shape of every refused request, {success = false, error, message, ...}.
local function refusal(status, code, message, extra, headers)
  local body = { success = false, error = code, message = message }
  for k, v in pairs(extra or {}) do body[k] = v end
  return status, body, headers
end
M.refusal = refusal

-- purchase(answer, rules, elapsed_ms) -> status, body, headers
-- purchase(answer, rules, elapsed_ms [, as_table]) -> status, body, headers.
-- The 200 of a reservation comes as JSON text unless as_table is set; every
-- other body is a table.
function M.purchase(a, rules, elapsed_ms, as_table)
  local msg = rules.messages or {}
  local replayed = false
  if a.code == "REPLAY" then
    a, replayed = a.result, true
  end
  local status, body, headers
  local c = a.code
  if c == "OK" and (as_table or not writable(a, elapsed_ms)) then
    status, body = 200, reserved_table(a, msg.reserved or "reserved")
  elseif c == "OK" then
    status, body = 200, reserved_text(a, msg.reserved or "reserved", elapsed_ms)
  elseif c == "SOLD_OUT" then
    status, body = refusal(410, "SOLD_OUT", msg.sold_out or "sold out", { remaining = a.remaining or 0, remainingStock = a.remaining or 0 })
  elseif c == "ENDED" then
    status, body = refusal(410, "SALE_ENDED", msg.sale_ended or "sale ended", { endsAt = a.endsAt })
  elseif c == "NOT_STARTED" then
    local wait = math.max(1, math.ceil(((a.startsAt or 0) - (a.now or 0)) / 1000))
    status, body, headers = refusal(425, "SALE_NOT_STARTED", msg.not_started or "sale not started",
      { startsAt = a.startsAt }, a.now and { ["Retry-After"] = tostring(wait) } or nil)
  elseif c == "LIMIT_EXCEEDED" then
    status, body = refusal(403, "PURCHASE_LIMIT_EXCEEDED", msg.limit or "limit reached",
      { limit = a.limit, held = a.held })
  elseif c == "RATE_LIMITED" then
    local secs = math.max(1, math.ceil((a.retryAfterMs or 1000) / 1000))
    status, body, headers = refusal(429, "RATE_LIMITED", msg.rate_limited or "too many requests",
      { retryAfterMs = a.retryAfterMs, retryAfter = secs }, { ["Retry-After"] = tostring(secs) })
  elseif c == "QUEUE_TOKEN_REQUIRED" then
    status, body = refusal(403, "QUEUE_TOKEN_REQUIRED", msg.queue_token_required or
      "this sale has a waiting room: join it and buy with the queueToken it gives")
  elseif c == "NO_SALE" then
    status, body = refusal(404, "SKU_NOT_FOUND", msg.unknown_sku or "unknown SKU")
  elseif c == "IDEMPOTENCY_KEY_REUSED" then
    status, body = refusal(409, "IDEMPOTENCY_KEY_REUSED", "this idempotency key belongs to another request")
  elseif c == "IDEMPOTENCY_MISMATCH" then
    status, body = refusal(422, "IDEMPOTENCY_KEY_MISMATCH", "this idempotency key was used with a different body")
  else
    status, body = refusal(500, "INTERNAL", "unexpected answer " .. tostring(c))
  end
  if type(body) == "table" then body.processingTimeMs = elapsed_ms end
  if replayed then
    headers = headers or {}
    headers["Idempotent-Replayed"] = "true"
  end
  return status, body, headers
end

-- The 410 a worker answers from its in-process sold-out mark, as a string:
-- the same fields as purchase({code = "SOLD_OUT"}), without building and
-- encoding a table on the path that carries a sold-out stampede.
local json_string = require("cjson").encode
local sold_out_prefix = {}
function M.sold_out_body(remaining, rules, elapsed_ms)
  local msg = (rules.messages or {}).sold_out or "sold out"
  local key = msg .. "\0" .. remaining
  local prefix = sold_out_prefix[key]
  if not prefix then
    prefix = ('{"success":false,"error":"SOLD_OUT","message":%s,"remaining":%d,"remainingStock":%d,"processingTimeMs":')
      :format(json_string(msg), remaining, remaining)
    sold_out_prefix[key] = prefix
  end
  return 410, prefix .. tostring(elapsed_ms) .. "}"
end

-- A dependency could not be asked: 503 with Retry-After, nothing was changed
-- that the client cannot safely retry (the idempotency key makes it safe).
function M.unavailable(rules, detail)
  local secs = tostring(rules.retry_after_unavailable_sec or 1)
  return 503, { success = false, error = "SERVICE_UNAVAILABLE",
    message = (rules.messages or {}).unavailable or "service unavailable" }, { ["Retry-After"] = secs }
end

function M.internal()
  return 500, { success = false, error = "INTERNAL", message = "internal error" }
end

-- An order as GET /api/v1/orders/:id shows it, from its reservation in
-- Redis or from its row in MySQL.  Times as in a purchase answer: expiresAt
-- in epoch ms, expiresAtIso the same instant as text.
function M.order_view(orderId, loc, h)
  local exp = tonumber(h.expiresAt)
  return { orderId = orderId, reservationId = loc.reservationId, skuId = loc.sku, userId = h.userId,
    quantity = tonumber(h.quantity), unitPrice = tonumber(h.unitPrice), status = h.status,
    expiresAt = exp, expiresAtIso = exp and iso(exp) or nil, source = "redis" }
end

function M.order_row_view(orderId, r)
  local exp = tonumber(r.expires_ms) and math.floor(tonumber(r.expires_ms)) or nil
  return { orderId = orderId, reservationId = r.reservation_id, skuId = r.sku_id, userId = r.user_id,
    quantity = tonumber(r.quantity), unitPrice = tonumber(r.unit_price), status = r.status,
    expiresAt = exp, expiresAtIso = exp and iso(exp) or nil, source = "mysql" }
end

-- confirm/release answers for the order routes.
local ORDER = {
  OK = 200, ALREADY_CONFIRMED = 200, ALREADY_CANCELED = 200, ALREADY_EXPIRED = 410,
  EXPIRED = 410, CANCELED = 409, NOT_DUE = 409, NOT_FOUND = 404, NOT_OWNER = 404,
  RESERVATION_GONE = 409,
}
local STATUS_OF = { OK = nil, ALREADY_CONFIRMED = "CONFIRMED" }

function M.order_change(a, action)
  local status = ORDER[a.code] or 500
  -- a cancel that finds the order already confirmed cannot be honoured
  if action == "cancel" and a.code == "ALREADY_CONFIRMED" then status = 409 end
  if action == "pay" and a.code == "ALREADY_CANCELED" then status = 409 end
  local body = {
    success = status == 200, code = a.code, orderId = a.orderId, reservationId = a.reservationId,
    status = a.status or STATUS_OF[a.code], quantity = a.quantity, paymentRef = a.paymentRef,
    expiresAt = a.expiresAt, expiresAtIso = a.expiresAt and iso(a.expiresAt) or nil,
  }
  if status ~= 200 then
    body.error = (a.code == "NOT_OWNER") and "NOT_FOUND" or a.code
    body.message = ({
      EXPIRED = "the reservation expired before payment", ALREADY_EXPIRED = "the reservation had expired",
      CANCELED = "the order was canceled", ALREADY_CONFIRMED = "the order is already paid",
      ALREADY_CANCELED = "the order was canceled", NOT_DUE = "not due",
      NOT_FOUND = "no such order", NOT_OWNER = "no such order",
      RESERVATION_GONE = "the order's reservation is no longer held, so the order cannot be paid or canceled",
    })[a.code] or "unexpected answer"
  end
  return status, body
end

return M
