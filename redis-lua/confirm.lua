-- confirm.lua: payment confirms a pending reservation. Contract: redis-lua/README.md.
--
-- KEYS: 1 res:<reservationId>, 2 stock, 3 counts, 4 users, 5 pending, 6 outbox
-- ARGV: 1 reservationId, 2 paymentRef ("" = none), 3 userId ("" = no owner check),
--       4 traceId ("" = the reservation's own)

local SCRIPT = 'confirm'
local function fail(msg) error({ err = 'ERR flashhost ' .. SCRIPT .. ': ' .. msg }) end

local prefix, skuId = string.match(KEYS[1] or '', '^({sku:([^}]+)}:)')
if not prefix then fail('KEYS[1] must start with {sku:ID}:') end
local function key(i, suffix)
  if KEYS[i] ~= prefix .. suffix then fail('KEYS[' .. i .. '] must be ' .. prefix .. suffix) end
  return KEYS[i]
end

local id = ARGV[1] or ''
if id == '' then fail('reservationId (ARGV[1]) is required') end
local resKey, stockKey, countsKey = key(1, 'res:' .. id), key(2, 'stock'), key(3, 'counts')
local usersKey, pendingKey, outboxKey = key(4, 'users'), key(5, 'pending'), key(6, 'outbox')
local paymentRef, userId, traceId = ARGV[2] or '', ARGV[3] or '', ARGV[4] or ''

-- shared:begin (this block is identical in confirm, release, expire and sale.lua)
local RES_KEEP_MS = 86400000  -- a finished reservation is kept a day, for ALREADY_* answers

local function hash(k)
  local flat = redis.call('HGETALL', k)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function emit(kind, id, r, status, now, traceId, ...)
  redis.call('XADD', outboxKey, '*', 'type', kind, 'eventId', id .. ':' .. kind,
    'reservationId', id, 'orderId', r.orderId, 'userId', r.userId, 'skuId', skuId,
    'quantity', r.quantity, 'unitPrice', r.unitPrice, 'status', status,
    'expiresAt', r.expiresAt, 'ts', tostring(now), 'traceId', traceId, ...)
end

-- Returns a PENDING reservation's tickets to stock. Callers come here only from
-- PENDING, and the status written here leaves PENDING: so stock returns exactly once.
local function release(id, resKey, r, status, now, traceId)
  local q = tonumber(r.quantity)
  local kind = string.lower(status)  -- 'canceled' | 'expired': the count field and event type
  redis.call('INCRBY', stockKey, q)
  redis.call('HINCRBY', countsKey, 'reserved', -q)
  redis.call('HINCRBY', countsKey, kind, q)
  if redis.call('HINCRBY', usersKey, r.userId, -q) <= 0 then redis.call('HDEL', usersKey, r.userId) end
  redis.call('ZREM', pendingKey, id)
  redis.call('HSET', resKey, 'status', status, 'updatedAt', tostring(now))
  redis.call('PEXPIRE', resKey, RES_KEEP_MS)
  r.status = status
  emit(kind, id, r, status, now, traceId)
end
-- shared:end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local r = hash(resKey)
if not r then return cjson.encode({ code = 'NOT_FOUND', reservationId = id }) end
local function answer(code)
  return cjson.encode({ code = code, reservationId = id, orderId = r.orderId, userId = r.userId,
    quantity = tonumber(r.quantity), status = r.status, expiresAt = tonumber(r.expiresAt),
    paymentRef = r.paymentRef })
end
if userId ~= '' and userId ~= r.userId then return cjson.encode({ code = 'NOT_OWNER', reservationId = id }) end
if r.status == 'CONFIRMED' then return answer('ALREADY_CONFIRMED') end
if r.status == 'CANCELED' or r.status == 'EXPIRED' then return answer(r.status) end
if r.status ~= 'PENDING' then fail('reservation ' .. id .. ' has unknown status ' .. tostring(r.status)) end
if traceId == '' then traceId = r.traceId end

-- Past its expiry a reservation is expired whoever looks first: do the sweeper's
-- work now, so the buyer's answer and the stored state agree.
if now >= tonumber(r.expiresAt) then
  release(id, resKey, r, 'EXPIRED', now, traceId)
  return answer('EXPIRED')
end

local q = tonumber(r.quantity)
redis.call('HINCRBY', countsKey, 'reserved', -q)
redis.call('HINCRBY', countsKey, 'sold', q)
redis.call('ZREM', pendingKey, id)
redis.call('HSET', resKey, 'status', 'CONFIRMED', 'paymentRef', paymentRef, 'updatedAt', tostring(now))
redis.call('PEXPIRE', resKey, RES_KEEP_MS)
r.status, r.paymentRef = 'CONFIRMED', paymentRef
emit('confirmed', id, r, 'CONFIRMED', now, traceId, 'paymentRef', paymentRef)
return answer('OK')
