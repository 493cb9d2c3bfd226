-- release.lua: a buyer cancels, or a reservation expires; its tickets go back to
-- stock exactly once. Contract: redis-lua/README.md.
--
-- KEYS: 1 res:<reservationId>, 2 stock, 3 counts, 4 users, 5 pending, 6 outbox
-- ARGV: 1 reservationId, 2 reason ('canceled' | 'expired'), 3 userId ("" = no owner check),
--       4 traceId ("" = the reservation's own)

local SCRIPT = 'release'
local function fail(msg) error({ err = 'ERR flashhost ' .. SCRIPT .. ': ' .. msg }) end

local prefix, skuId = string.match(KEYS[1] or '', '^({sku:([^}]+)}:)')
if not prefix then fail('KEYS[1] must start with {sku:ID}:') end
local function key(i, suffix)
  if KEYS[i] ~= prefix .. suffix then fail('KEYS[' .. i .. '] must be ' .. prefix .. suffix) end
  return KEYS[i]
end

local id, reason = ARGV[1] or '', ARGV[2]
if id == '' then fail('reservationId (ARGV[1]) is required') end
if reason ~= 'canceled' and reason ~= 'expired' then fail("reason (ARGV[2]) must be 'canceled' or 'expired'") end
local resKey, stockKey, countsKey = key(1, 'res:' .. id), key(2, 'stock'), key(3, 'counts')
local usersKey, pendingKey, outboxKey = key(4, 'users'), key(5, 'pending'), key(6, 'outbox')
local userId, traceId = ARGV[3] or '', ARGV[4] or ''

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
    quantity = tonumber(r.quantity), status = r.status, expiresAt = tonumber(r.expiresAt) })
end
if userId ~= '' and userId ~= r.userId then return cjson.encode({ code = 'NOT_OWNER', reservationId = id }) end
if r.status ~= 'PENDING' then
  if r.status == 'CONFIRMED' or r.status == 'CANCELED' or r.status == 'EXPIRED' then
    return answer('ALREADY_' .. r.status)
  end
  fail('reservation ' .. id .. ' has unknown status ' .. tostring(r.status))
end
if traceId == '' then traceId = r.traceId end

local due = now >= tonumber(r.expiresAt)
if reason == 'expired' then
  if not due then return answer('NOT_DUE') end
  release(id, resKey, r, 'EXPIRED', now, traceId)
  return answer('OK')
end
-- A cancel that arrives after expiry finds a reservation that has already expired:
-- record it as such (what the sweeper would have done) and say so.
if due then
  release(id, resKey, r, 'EXPIRED', now, traceId)
  return answer('ALREADY_EXPIRED')
end
release(id, resKey, r, 'CANCELED', now, traceId)
return answer('OK')
