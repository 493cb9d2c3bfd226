-- The stock operations of a SKU: one Redis Function call each (redis-lua/README.md
-- is the contract).  Returns the decoded answer, or nil, kind, detail where
-- kind is "unavailable" (Redis could not be asked: a 503) or "error" (Redis
-- said no: a bug or a misconfiguration, a 500).
local cjson = require "cjson.safe"
local order_ids = require "lib.order_ids"

local M = {}

-- The Redis Function library of redis-lua/ and its name.  It is one library
-- kept in files by responsibility: their texts, joined in this order, are the
-- source loaded (the first declares the name and the helpers the rest use).
M.LIBRARY = "flashhost"
M.LIBRARY_FILES = { "flashhost.lua", "purchase.lua", "queue.lua" }

-- library_source(dir) -> the library's source from dir's files.  A missing or
-- unreadable file raises: a broken deployment must not start.
function M.library_source(dir)
  dir = dir:gsub("/$", "")
  local parts = {}
  for i, name in ipairs(M.LIBRARY_FILES) do
    local path = dir .. "/" .. name
    local f, err = io.open(path, "rb")
    if not f then error("redis library: " .. tostring(err), 2) end
    parts[i] = f:read("*a")
    f:close()
    if not parts[i] then error("redis library: cannot read " .. path, 2) end
  end
  return table.concat(parts, "\n")
end

-- register(redis, dir): registers the library of dir on a client (nothing is
-- sent; the first call loads it).  Returns the client.
function M.register(redis, dir)
  return redis:functions(M.LIBRARY, M.library_source(dir))
end

-- setup(redis, dir, log): register, then load the library now (yields, at
-- most the client's connect timeout), so the first requests find it there.
-- A Redis that is not there yet is only logged: every call loads it again.
function M.setup(redis, dir, log)
  M.register(redis, dir)
  redis:wait_ready()
  local ok, err = redis:load_functions()
  if not ok and log then log.warn("redis functions not loaded yet", { err = err }) end
  return redis
end

local function prefix(sku) return "{sku:" .. sku .. "}:" end
M.prefix = prefix

local function decode(res, err)
  if res == nil then return nil, "unavailable", err end
  if res == false then return nil, "error", err end
  local v = cjson.decode(res)
  if type(v) ~= "table" then return nil, "error", "unreadable function answer" end
  return v
end
M.decode = decode

-- The fingerprint of a purchase body: the same key with another body is a conflict.
function M.fingerprint(p)
  return p.userId .. "|" .. p.skuId .. "|" .. p.quantity
end

-- batch_answers(list, attempts) -> { answer, ... } | nil, err: the answers of
-- a purchase_batch call from its decoded answer, whose first element is what
-- its OKs share ({expiresAt, unitPrice}) and whose element i + 1 is attempt
-- i's answer: an object, or for an OK its `remaining` alone, which with the
-- attempt's own quantity and ids makes the OK answer (redis-lua/README.md).
function M.batch_answers(list, attempts)
  local n = #attempts
  if #list ~= n + 1 or type(list[1]) ~= "table" then
    return nil, "purchase_batch answered " .. (#list - 1) .. " of " .. n .. " attempts"
  end
  local shared, out = list[1], {}
  for i = 1, n do
    local a = list[i + 1]
    if type(a) == "number" then
      local ids = attempts[i].ids
      a = { code = "OK", quantity = attempts[i].p.quantity, reservationId = ids.reservationId, orderId = ids.orderId,
        remaining = a, expiresAt = shared.expiresAt, unitPrice = shared.unitPrice }
    elseif type(a) ~= "table" then
      return nil, "unreadable answer of attempt " .. i
    end
    out[i] = a
  end
  return out
end

-- purchase_batch(redis, sku, attempts, rules, with_index) -> { answer, ... }
-- (attempt i's decoded answer at i) | nil, kind, detail.  attempts[i] =
-- { p = <validated purchase of this sku>, ids = { reservationId, orderId,
-- traceId } }.  One FCALL: the answers are those the attempts would get one by
-- one, in this order.  with_index: the ids are one block's (lib/order_ids
-- assign) and the function also writes the block's order index entry;
-- single-node Redis only (on a cluster the index hash is in another slot).
function M.purchase_batch(redis, sku, attempts, rules, with_index)
  local k = prefix(sku)
  local rl = rules.rate_limit or {}
  local n = #attempts
  local keys = { k .. "sale", k .. "stock", k .. "counts", k .. "pending", k .. "outbox", k .. "sokeys" }
  local args = { n, rules.per_user_limit or 0, rules.reservation_ttl_sec or 300, rl.capacity or 0,
    rl.refill_per_sec or 1, with_index and "1" or "0" }
  local nk, na = 6, 6
  for i = 1, n do
    local p, ids = attempts[i].p, attempts[i].ids
    local idem = p.idempotencyKey or ""
    keys[nk + 1], keys[nk + 2] = k .. "u:" .. p.userId, k .. "res:" .. ids.reservationId
    nk = nk + 2
    args[na + 1], args[na + 2], args[na + 3], args[na + 4] = p.userId, p.quantity, idem, M.fingerprint(p)
    args[na + 5], args[na + 6], args[na + 7] = ids.reservationId, ids.orderId, ids.traceId or ""
    na = na + 7
  end
  local list, kind, detail = decode(redis:fcall("purchase_batch", keys, args))
  if not list then return nil, kind, detail end
  local out, err = M.batch_answers(list, attempts)
  if not out then return nil, "error", err end
  return out
end

-- The stored purchase answers of a SKU are kept in one hash per day of
-- Redis's clock, {sku:S}:idems:<day> (redis-lua/flashhost.lua idem_days).
M.IDEM_DAY_MS = 86400000

-- replayable_keys(redis, sku, now) -> the idempotency keys of the SKU whose
-- stored answer is not SOLD_OUT (a purchase, a limit refusal, a sale ended),
-- which a worker answering the SKU's SOLD_OUT from memory must still send to
-- Redis for their replay | nil, reason.  They are the fields of the answers'
-- hashes less those listed in {sku:S}:sokeys.  The hashes are named from
-- Redis's clock: the host's day and the days either side of it are read, for
-- clocks less than a day apart.  Read at a SKU's sell-out, not per purchase.
function M.replayable_keys(redis, sku, now)
  local k = prefix(sku)
  local sold_out, err = redis:call("SMEMBERS", k .. "sokeys")
  if type(sold_out) ~= "table" then return nil, err or "SMEMBERS failed" end
  local skip = {}
  for _, key in ipairs(sold_out) do skip[key] = true end
  local out, day = {}, math.floor(now / M.IDEM_DAY_MS)
  for d = day - 1, day + 1 do
    local fields, ferr = redis:call("HKEYS", k .. "idems:" .. d)
    if type(fields) ~= "table" then return nil, ferr or "HKEYS failed" end
    for _, key in ipairs(fields) do
      if not skip[key] then out[#out + 1] = key end
    end
  end
  return out
end

-- purchase(redis, p, ids, rules): one attempt, a batch of one; its decoded answer.
function M.purchase(redis, p, ids, rules)
  local list, kind, detail = M.purchase_batch(redis, p.skuId, { { p = p, ids = ids } }, rules, false)
  if not list then return nil, kind, detail end
  return list[1]
end

local function reservation_keys(sku, resId)
  local k = prefix(sku)
  return { k .. "res:" .. resId, k .. "stock", k .. "counts", k .. "pending", k .. "outbox" }
end

function M.confirm(redis, sku, resId, paymentRef, userId, traceId)
  return decode(redis:fcall("confirm", reservation_keys(sku, resId),
    { resId, paymentRef or "", userId or "", traceId or "" }))
end

-- reason: "canceled" | "expired"
function M.release(redis, sku, resId, reason, userId, traceId)
  return decode(redis:fcall("release", reservation_keys(sku, resId),
    { resId, reason, userId or "", traceId or "" }))
end

-- Before a sale's reset: its pending index walked in steps of RESET_STEP
-- reservations (each step a short call, canceling the PENDING ones), until at
-- most RESET_LEFT members are left for the reset's own walk: the ids of as
-- many purchase calls, 128 each at most.  New purchases on the old sale can add
-- members meanwhile: after RESET_MAX_STEPS steps the reset takes what is left.
-- canceled (how many) | nil, kind, detail
M.RESET_STEP, M.RESET_LEFT, M.RESET_MAX_STEPS = 500, 4, 1000
function M.cancel_before_reset(redis, sku, traceId)
  local k = prefix(sku)
  local canceled = 0
  for _ = 1, M.RESET_MAX_STEPS do
    local a, kind, detail = decode(redis:fcall("cancel_pending", { k .. "stock", k .. "counts", k .. "pending", k .. "outbox" },
      { M.RESET_STEP, traceId or "" }))
    if not a then return nil, kind, detail end
    canceled = canceled + a.canceled
    if a.left <= M.RESET_LEFT then break end
  end
  return canceled
end

function M.expire(redis, sku, limit, traceId)
  local k = prefix(sku)
  return decode(redis:fcall("expire", { k .. "stock", k .. "counts", k .. "pending", k .. "outbox" },
    { limit or 100, traceId or "" }))
end

-- status(redis, sku [, deep]): O(1) unless `deep`, which also sums the
-- pending reservations (pendingQuantity) for reconciliation.  Read-only.
function M.status(redis, sku, deep)
  local k = prefix(sku)
  return decode(redis:fcall_ro("status", { k .. "sale", k .. "stock", k .. "counts", k .. "pending", k .. "outbox" },
    { deep and "deep" or "" }))
end

-- sale: the validated admin body (see lib/validate.sale).
function M.create_sale(redis, s, traceId)
  local k = prefix(s.skuId)
  local function opt(v) return v == nil and "" or v end
  return decode(redis:fcall("sale", { k .. "sale", k .. "stock", k .. "counts", k .. "pending", k .. "outbox" },
    { s.name, s.price, s.stock, s.startsAt or 0, s.endsAt or 0, opt(s.perUserLimit),
      opt(s.reservationTtlSec), "", "", traceId or "", s.queue and "1" or "" }))
end

-- lease(redis, key, owner, ttl_ms | "release") -> 1 | 0 (the caller holds it
-- after the call), or as r:call on failure.
function M.lease(redis, key, owner, ttl)
  return redis:fcall("lease", { key }, { owner, ttl })
end

-- Every SKU that ever had a sale: the cleanup job and the admin page walk it.
M.SKU_SET = "flash:skus"

-- The order index, so the order routes can find a reservation: a hash whose
-- fields are the first ids of purchase batches' blocks (lib/order_ids), each
-- valued with its SKU, and, from before blocks, order ids valued
-- "skuId:reservationId".  One hash holds the ids of some four minutes (all
-- digits but the last 12 of a snowflake; a block's ids differ in their last
-- 9 only): the library's index_key.
function M.index_key(orderId) return "orderidx:" .. orderId:sub(1, -13) end

-- The index entry of one batch's block (its first id -> the SKU), written by
-- the host (on a cluster, where purchase_batch cannot): it lives ttl_sec
-- plus a day.
function M.write_index(redis, block, sku, ttl_sec)
  return redis:fcall("order_index", { M.index_key(block) }, { block, sku, (math.floor(ttl_sec) + 86400) * 1000 })
end

-- The index entry of an order: "skuId:reservationId" | the client's null (no
-- entry) | nil, err.  One HMGET reads the order's own field (an order of
-- before blocks: "skuId:reservationId") and its block's (the SKU alone: the
-- reservation is the order id's by construction).  The first order of a
-- block is the block's first id: both fields are then the same one.
function M.read_index(redis, orderId)
  local block, resId = order_ids.locate(orderId)
  local v, err = redis:call("HMGET", M.index_key(orderId), orderId, block or orderId)
  if type(v) ~= "table" then return nil, err end
  if type(v[1]) == "string" and v[1]:find(":", 1, true) then return v[1] end
  if block and type(v[2]) == "string" then return v[2] .. ":" .. resId end
  return v[1]
end

return M
