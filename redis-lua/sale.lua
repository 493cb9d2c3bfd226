-- sale.lua: create a sale, or reset it to a fresh start. Contract: redis-lua/README.md.
--
-- KEYS: 1 sale, 2 stock, 3 counts, 4 users, 5 pending, 6 outbox
-- ARGV: 1 name, 2 price, 3 initial, 4 startsAt ("" = 0), 5 endsAt ("" or 0 = none),
--       6 perUserLimit, 7 ttlSec, 8 rlCapacity, 9 rlRate  (6..9: "" = the app's default),
--       10 traceId (for the events of reservations a reset cancels),
--       11 queue ("1" = the sale has a waiting room: purchases need an admission token)
--
-- A reset first cancels every reservation still pending, like a buyer's cancel (one
-- 'canceled' event each, so the order store learns of it), then starts over. Their
-- keys ({sku:ID}:res:<id>) come from the pending zset and are built from the same
-- {sku:ID} prefix, so they share the declared keys' cluster slot. The outbox is kept.

local SCRIPT = 'sale'
local function fail(msg) error({ err = 'ERR flashhost ' .. SCRIPT .. ': ' .. msg }) end

local prefix, skuId = string.match(KEYS[1] or '', '^({sku:([^}]+)}:)')
if not prefix then fail('KEYS[1] must start with {sku:ID}:') end
local function key(i, suffix)
  if KEYS[i] ~= prefix .. suffix then fail('KEYS[' .. i .. '] must be ' .. prefix .. suffix) end
  return KEYS[i]
end

local function num(i, what, min, optional)
  local v = ARGV[i]
  if optional and (v == nil or v == '') then return nil end
  local n = tonumber(v)
  if not n or n ~= n or n == math.huge or n < min then
    fail(what .. ' (ARGV[' .. i .. ']) must be a number >= ' .. min)
  end
  return n
end
local function int(i, what, min, optional)
  local n = num(i, what, min, optional)
  if n and n % 1 ~= 0 then fail(what .. ' (ARGV[' .. i .. ']) must be an integer') end
  return n
end

local saleKey, stockKey, countsKey = key(1, 'sale'), key(2, 'stock'), key(3, 'counts')
local usersKey, pendingKey, outboxKey = key(4, 'users'), key(5, 'pending'), key(6, 'outbox')
local name, price, initial = ARGV[1] or '', num(2, 'price', 0), int(3, 'initial', 0)
local startsAt, endsAt = int(4, 'startsAt', 0, true) or 0, int(5, 'endsAt', 0, true) or 0
local perUserLimit, ttlSec = int(6, 'perUserLimit', 0, true), num(7, 'ttlSec', 0, true)
local rlCapacity, rlRate = num(8, 'rlCapacity', 0, true), num(9, 'rlRate', 0, true)
if rlRate == 0 then fail('rlRate (ARGV[9]) must be > 0') end
local traceId = ARGV[10] or ''

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

local canceled = 0
for _, id in ipairs(redis.call('ZRANGE', pendingKey, 0, -1)) do
  local resKey = prefix .. 'res:' .. id
  local r = hash(resKey)
  if r and r.status == 'PENDING' then
    release(id, resKey, r, 'CANCELED', now, traceId ~= '' and traceId or r.traceId)
    canceled = canceled + 1
  end
end

-- gen tells this sale from earlier ones (purchase.lua ignores idempotency answers of
-- another generation). Taken from the clock, not only a counter, so it still grows when
-- the sale hash was deleted meanwhile.
local gen = math.max(now, (tonumber(redis.call('HGET', saleKey, 'gen')) or 0) + 1)

redis.call('DEL', saleKey, countsKey, usersKey, pendingKey)
redis.call('SET', stockKey, initial)
redis.call('HSET', countsKey, 'reserved', 0, 'sold', 0, 'canceled', 0, 'expired', 0)
local sale = { skuId = skuId, name = name, price = price, initial = initial, startsAt = startsAt,
  endsAt = endsAt, perUserLimit = perUserLimit, ttlSec = ttlSec, rlCapacity = rlCapacity,
  rlRate = rlRate, createdAt = now, gen = gen, queue = ARGV[11] == '1' and '1' or nil }
local fields = {}
for f, v in pairs(sale) do
  if f ~= 'skuId' then fields[#fields + 1] = f; fields[#fields + 1] = tostring(v) end
end
redis.call('HSET', saleKey, unpack(fields))
return cjson.encode({ code = 'OK', sale = sale, canceled = canceled })
