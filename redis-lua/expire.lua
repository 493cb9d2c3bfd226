-- expire.lua: the sweeper. Expires up to ARGV[1] due reservations of one SKU and
-- returns their tickets to stock, exactly as release.lua does for reason 'expired'.
-- Contract: redis-lua/README.md.
--
-- KEYS: 1 stock, 2 counts, 3 users, 4 pending, 5 outbox
-- ARGV: 1 limit (integer >= 1), 2 traceId ("" = each reservation's own)
--
-- The reservation keys ({sku:ID}:res:<id>) are read from the pending zset, so they
-- cannot be declared in KEYS; they are built from the same {sku:ID} prefix and so
-- live in the same cluster slot as the declared keys.

local SCRIPT = 'expire'
local function fail(msg) error({ err = 'ERR flashhost ' .. SCRIPT .. ': ' .. msg }) end

local prefix, skuId = string.match(KEYS[1] or '', '^({sku:([^}]+)}:)')
if not prefix then fail('KEYS[1] must start with {sku:ID}:') end
local function key(i, suffix)
  if KEYS[i] ~= prefix .. suffix then fail('KEYS[' .. i .. '] must be ' .. prefix .. suffix) end
  return KEYS[i]
end

local limit = tonumber(ARGV[1])
if not limit or limit % 1 ~= 0 or limit < 1 then fail('limit (ARGV[1]) must be an integer >= 1') end
local stockKey, countsKey, usersKey = key(1, 'stock'), key(2, 'counts'), key(3, 'users')
local pendingKey, outboxKey = key(4, 'pending'), key(5, 'outbox')
local traceId = ARGV[2] or ''

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

local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', pendingKey, '-inf', now, 'LIMIT', 0, limit)) do
  local resKey = prefix .. 'res:' .. id
  local r = hash(resKey)
  -- The reservation hash is the truth and the zset only its index: an entry whose
  -- reservation is gone or finished is dropped, one whose expiresAt moved is re-indexed.
  if not r or r.status ~= 'PENDING' then
    redis.call('ZREM', pendingKey, id)
  elseif now < tonumber(r.expiresAt) then
    redis.call('ZADD', pendingKey, r.expiresAt, id)
  else
    release(id, resKey, r, 'EXPIRED', now, traceId ~= '' and traceId or r.traceId)
    n = n + 1
  end
end
local more = redis.call('ZCOUNT', pendingKey, '-inf', now) > 0
return cjson.encode({ code = 'OK', expired = n, more = more })
