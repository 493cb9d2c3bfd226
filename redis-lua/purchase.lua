-- purchase.lua: one purchase attempt for one SKU, checked and applied atomically.
-- Contract (KEYS, ARGV, answers, events): redis-lua/README.md.
--
-- KEYS: 1 sale, 2 stock, 3 counts, 4 users, 5 pending, 6 outbox,
--       7 rl:<userId>, 8 idem:<idempotencyKey>, 9 res:<reservationId>, 10 okkeys
-- ARGV: 1 userId, 2 quantity, 3 idempotencyKey ("" = none), 4 requestHash,
--       5 reservationId, 6 orderId, 7 traceId, 8 perUserLimit, 9 ttlSec,
--       10 rlCapacity, 11 rlRate   (8..11: the app's defaults; the sale hash wins where set),
--       12 queueTicket ("" = none; the app has checked the admission token's signature)

local SCRIPT = 'purchase'
local IDEM_TTL_MS = 86400000

local function fail(msg) error({ err = 'ERR flashhost ' .. SCRIPT .. ': ' .. msg }) end

local prefix, skuId = string.match(KEYS[1] or '', '^({sku:([^}]+)}:)')
if not prefix then fail('KEYS[1] must start with {sku:ID}:') end
local function key(i, suffix)
  if KEYS[i] ~= prefix .. suffix then fail('KEYS[' .. i .. '] must be ' .. prefix .. suffix) end
  return KEYS[i]
end
local function num(v, what, min)
  local n = tonumber(v)
  if not n or n ~= n or n == math.huge or n < min then fail(what .. ' must be a number >= ' .. min) end
  return n
end
local function int(v, what, min)
  local n = num(v, what, min)
  if n % 1 ~= 0 then fail(what .. ' must be an integer') end
  return n
end
local function text(i, what)
  if not ARGV[i] or ARGV[i] == '' then fail(what .. ' (ARGV[' .. i .. ']) is required') end
  return ARGV[i]
end

local userId, idem, requestHash = text(1, 'userId'), ARGV[3] or '', ARGV[4] or ''
local qty = int(ARGV[2], 'quantity', 1)
local resId, orderId, traceId = text(5, 'reservationId'), text(6, 'orderId'), ARGV[7] or ''
local saleKey, stockKey, countsKey, usersKey = key(1, 'sale'), key(2, 'stock'), key(3, 'counts'), key(4, 'users')
local pendingKey, outboxKey, rlKey = key(5, 'pending'), key(6, 'outbox'), key(7, 'rl:' .. userId)
local idemKey, resKey, okKeysKey = key(8, 'idem:' .. idem), key(9, 'res:' .. resId), key(10, 'okkeys')
-- Every check that can raise happens before the first write: a script error does not roll back.
if redis.call('EXISTS', resKey) == 1 then fail('reservationId ' .. resId .. ' already exists') end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local sale = {}
local flat = redis.call('HGETALL', saleKey)
for i = 1, #flat, 2 do sale[flat[i]] = flat[i + 1] end
local limit = int(sale.perUserLimit or ARGV[8], 'perUserLimit', 0)
local ttlSec = num(sale.ttlSec or ARGV[9], 'ttlSec', 0)
local rlCap = num(sale.rlCapacity or ARGV[10], 'rlCapacity', 0)
local rlRate = num(sale.rlRate or ARGV[11], 'rlRate', 0)
if rlCap > 0 and rlRate <= 0 then fail('rlRate must be > 0 when rlCapacity > 0') end

-- 1. Idempotency. The record remembers the sale generation: after a reset (or a
-- deleted sale) an old answer no longer applies and the key is evaluated afresh.
if idem ~= '' then
  local raw = redis.call('GET', idemKey)
  if raw then
    local rec = cjson.decode(raw)
    if rec.gen == sale.gen then
      if rec.userId ~= userId then return cjson.encode({ code = 'IDEMPOTENCY_KEY_REUSED' }) end
      if rec.requestHash ~= requestHash then return cjson.encode({ code = 'IDEMPOTENCY_MISMATCH' }) end
      return cjson.encode({ code = 'REPLAY', result = rec.result })
    end
  end
end

-- Answers that are final for this request are stored, so a retry gets them back.
local function final(result)
  if idem ~= '' then
    local rec = { userId = userId, requestHash = requestHash, gen = sale.gen, result = result }
    redis.call('SET', idemKey, cjson.encode(rec), 'PX', IDEM_TTL_MS)
  end
  return cjson.encode(result)
end

-- 2. No sale: not stored, so unknown SKUs leave nothing behind and a sale created later is honoured.
if not sale.gen then return cjson.encode({ code = 'NO_SALE' }) end

-- 2b. A queued sale sells only to admitted tickets; not stored, the token may come next.
if sale.queue == '1' and (ARGV[12] or '') == '' then return cjson.encode({ code = 'QUEUE_TOKEN_REQUIRED' }) end

-- 3. Token bucket per user per SKU. A refusal writes nothing: the refill is computed
-- from ts, so the bucket only needs to be written when a token is taken.
if rlCap > 0 then
  local b = redis.call('HMGET', rlKey, 'tokens', 'ts')
  local tokens, ts = tonumber(b[1]) or rlCap, tonumber(b[2]) or now
  tokens = math.min(rlCap, tokens + math.max(0, now - ts) * rlRate / 1000)
  if tokens < 1 then
    return cjson.encode({ code = 'RATE_LIMITED', retryAfterMs = math.ceil((1 - tokens) * 1000 / rlRate) })
  end
  redis.call('HSET', rlKey, 'tokens', tostring(tokens - 1), 'ts', tostring(now))
  -- Once full again the bucket is the same as no bucket: let it vanish then.
  redis.call('PEXPIRE', rlKey, math.ceil(rlCap * 1000 / rlRate))
end

-- 4. Sale window. NOT_STARTED is not stored: the same request must succeed once the sale opens.
local startsAt, endsAt = tonumber(sale.startsAt) or 0, tonumber(sale.endsAt) or 0
if now < startsAt then return cjson.encode({ code = 'NOT_STARTED', startsAt = startsAt }) end
if endsAt > 0 and now >= endsAt then return final({ code = 'ENDED', endsAt = endsAt }) end

-- 5. Per-user limit (0 = none) over tickets held: pending and confirmed.
local held = tonumber(redis.call('HGET', usersKey, userId)) or 0
if limit > 0 and held + qty > limit then
  return final({ code = 'LIMIT_EXCEEDED', limit = limit, held = held })
end

-- 6. Stock.
local stock = tonumber(redis.call('GET', stockKey)) or 0
if stock < qty then return final({ code = 'SOLD_OUT', remaining = stock }) end

-- 7. Reserve.
local expiresAt = now + math.floor(ttlSec * 1000)
redis.call('DECRBY', stockKey, qty)
redis.call('HINCRBY', countsKey, 'reserved', qty)
redis.call('HINCRBY', usersKey, userId, qty)
redis.call('HSET', resKey, 'userId', userId, 'orderId', orderId, 'quantity', tostring(qty),
  'unitPrice', sale.price, 'status', 'PENDING', 'expiresAt', tostring(expiresAt),
  'createdAt', tostring(now), 'updatedAt', tostring(now), 'traceId', traceId)
redis.call('ZADD', pendingKey, expiresAt, resId)
redis.call('XADD', outboxKey, '*', 'type', 'reserved', 'eventId', resId .. ':reserved',
  'reservationId', resId, 'orderId', orderId, 'userId', userId, 'skuId', skuId,
  'quantity', tostring(qty), 'unitPrice', sale.price, 'status', 'PENDING',
  'expiresAt', tostring(expiresAt), 'ts', tostring(now), 'traceId', traceId)
-- The keys that bought a ticket: a worker that marks this SKU sold out still
-- sends these to Redis, so their retries get their stored answer back.
if idem ~= '' then
  redis.call('SADD', okKeysKey, idem)
  redis.call('PEXPIRE', okKeysKey, IDEM_TTL_MS)
end
return final({ code = 'OK', reservationId = resId, orderId = orderId, quantity = qty,
  expiresAt = expiresAt, remaining = stock - qty, unitPrice = tonumber(sale.price) })
