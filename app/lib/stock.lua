-- The stock operations of a SKU: one Redis script call each (redis-lua/README.md
-- is the contract).  Returns the decoded answer, or nil, kind, detail where
-- kind is "unavailable" (Redis could not be asked: a 503) or "error" (Redis
-- said no: a bug or a misconfiguration, a 500).
local cjson = require "cjson.safe"

local M = {}

M.SCRIPTS = { "sale", "purchase", "confirm", "release", "expire", "status" }

local function prefix(sku) return "{sku:" .. sku .. "}:" end
M.prefix = prefix

local function decode(res, err)
  if res == nil then return nil, "unavailable", err end
  if res == false then return nil, "error", err end
  local v = cjson.decode(res)
  if type(v) ~= "table" then return nil, "error", "unreadable script answer" end
  return v
end

-- The fingerprint of a purchase body: the same key with another body is a conflict.
function M.fingerprint(p)
  return p.userId .. "|" .. p.skuId .. "|" .. p.quantity
end

function M.purchase(redis, p, ids, rules)
  local k = prefix(p.skuId)
  local rl = rules.rate_limit or {}
  return decode(redis:evalsha("purchase",
    { k .. "sale", k .. "stock", k .. "counts", k .. "users", k .. "pending", k .. "outbox",
      k .. "rl:" .. p.userId, k .. "idem:" .. (p.idempotencyKey or ""), k .. "res:" .. ids.reservationId,
      k .. "okkeys" },
    { p.userId, p.quantity, p.idempotencyKey or "", M.fingerprint(p), ids.reservationId, ids.orderId,
      ids.traceId or "", rules.per_user_limit or 0, rules.reservation_ttl_sec or 300,
      rl.capacity or 0, rl.refill_per_sec or 1, p.queueTicket and p.queueTicket.id or "" }))
end

local function reservation_keys(sku, resId)
  local k = prefix(sku)
  return { k .. "res:" .. resId, k .. "stock", k .. "counts", k .. "users", k .. "pending", k .. "outbox" }
end

function M.confirm(redis, sku, resId, paymentRef, userId, traceId)
  return decode(redis:evalsha("confirm", reservation_keys(sku, resId),
    { resId, paymentRef or "", userId or "", traceId or "" }))
end

-- reason: "canceled" | "expired"
function M.release(redis, sku, resId, reason, userId, traceId)
  return decode(redis:evalsha("release", reservation_keys(sku, resId),
    { resId, reason, userId or "", traceId or "" }))
end

function M.expire(redis, sku, limit, traceId)
  local k = prefix(sku)
  return decode(redis:evalsha("expire",
    { k .. "stock", k .. "counts", k .. "users", k .. "pending", k .. "outbox" },
    { limit or 100, traceId or "" }))
end

-- status(redis, sku [, deep]): O(1) unless `deep`, which also sums the
-- pending reservations (pendingQuantity) for reconciliation.
function M.status(redis, sku, deep)
  local k = prefix(sku)
  return decode(redis:evalsha("status", { k .. "sale", k .. "stock", k .. "counts", k .. "pending", k .. "outbox" },
    { deep and "deep" or "" }))
end

-- sale: the validated admin body (see lib/validate.sale).
function M.create_sale(redis, s, traceId)
  local k = prefix(s.skuId)
  local function opt(v) return v == nil and "" or v end
  return decode(redis:evalsha("sale",
    { k .. "sale", k .. "stock", k .. "counts", k .. "users", k .. "pending", k .. "outbox" },
    { s.name, s.price, s.stock, s.startsAt or 0, s.endsAt or 0, opt(s.perUserLimit),
      opt(s.reservationTtlSec), "", "", traceId or "", s.queue and "1" or "" }))
end

-- Every SKU that ever had a sale: the cleanup job and the admin page walk it.
M.SKU_SET = "flash:skus"

-- orderId -> "skuId:reservationId", so the order routes can find a reservation.
function M.order_key(orderId) return "order:" .. orderId end

return M
