#!lua name=flashqueue
-- The waiting room of queued sales: one Redis Function library (FUNCTION LOAD
-- REPLACE; called with FCALL / FCALL_RO).  Contract: redis-lua/README.md,
-- "queue functions".  Every function takes one key, the SKU's sale hash
-- `{sku:S}:sale`, and derives the queue's keys from its hash tag, so each call
-- touches one Cluster slot.  Answers are JSON text; a bad argument raises.

local IDEM_PREFIX = 'idem:q:' -- the purchase idempotency key a token buys under

local function fail(fn, msg) error({ err = 'ERR flashhost ' .. fn .. ': ' .. msg }) end

local function prefix_of(fn, keys)
  local p = string.match(keys[1] or '', '^({sku:[^}]+}:)sale$')
  if not p then fail(fn, 'KEYS[1] must be {sku:ID}:sale') end
  return p
end

local function int(fn, v, what, min)
  local n = tonumber(v)
  if not n or n ~= n or n % 1 ~= 0 or n < min or n == math.huge then
    fail(fn, what .. ' must be an integer >= ' .. min)
  end
  return n
end

local function num(fn, v, what, min)
  local n = tonumber(v)
  if not n or n ~= n or n < min or n == math.huge then fail(fn, what .. ' must be a number >= ' .. min) end
  return n
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function hash(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

local function n(h, f) return tonumber(h[f]) or 0 end

-- The queue's keys besides the sale hash.
local function keys_of(p)
  return {
    meta = p .. 'q', users = p .. 'q:users', joined = p .. 'q:joined', order = p .. 'q:order',
    adm = p .. 'q:adm', live = p .. 'q:live', used = p .. 'q:used',
  }
end

-- The queue of this sale generation, or nil, code: a queue left from an
-- earlier generation of the SKU does not count.
local function load(p)
  local sale = hash(p .. 'sale')
  if not sale or not sale.gen then return nil, 'NO_SALE' end
  local q = hash(p .. 'q')
  if sale.queue ~= '1' or not q or q.gen ~= sale.gen then return nil, 'NO_QUEUE', sale end
  return q, sale
end

local ORDER_WIDTH = 10 -- the order string: position p holds the ticket number at (p-1)*10, zero-padded

-- The ticket number at position `pos` (pre-queue positions were shuffled).
local function seq_at(k, q, pos)
  if pos > n(q, 'preCount') then return pos end
  local s = redis.call('GETRANGE', k.order, (pos - 1) * ORDER_WIDTH, pos * ORDER_WIDTH - 1)
  return tonumber(s)
end

-- The position of ticket `seq`: pre-queue tickets have one only once opened.
local function pos_of(k, q, seq)
  if seq > n(q, 'preCount') then return seq end
  if q.opened ~= '1' then return 0 end
  local order = redis.call('GET', k.order) or ''
  for pos = 1, n(q, 'preCount') do
    if tonumber(string.sub(order, (pos - 1) * ORDER_WIDTH + 1, pos * ORDER_WIDTH)) == seq then return pos end
  end
  return 0
end

-- queue_setup(sale; admitPerSec, tokenTtlSec, preQueueSec): a fresh queue for
-- the sale's current generation (the sale hash must carry queue = 1).
local function setup(keys, args)
  local p = prefix_of('queue_setup', keys)
  local rate = num('queue_setup', args[1], 'admitPerSec', 0)
  local ttl = int('queue_setup', args[2], 'tokenTtlSec', 1)
  local pre = int('queue_setup', args[3], 'preQueueSec', 0)
  local sale = hash(p .. 'sale')
  if not sale or not sale.gen then return cjson.encode({ code = 'NO_SALE' }) end
  if sale.queue ~= '1' then fail('queue_setup', 'the sale hash does not have queue = 1') end
  local k = keys_of(p)
  redis.call('DEL', k.meta, k.users, k.joined, k.order, k.adm, k.live, k.used)
  redis.call('HSET', k.meta, 'gen', sale.gen, 'startsAt', sale.startsAt or '0', 'endsAt', sale.endsAt or '0',
    'rate', tostring(rate), 'ttl', ttl, 'pre', pre, 'tail', 0, 'frozen', 0, 'preCount', 0, 'opened', 0,
    'serving', 0, 'admitted', 0, 'used', 0, 'expired', 0, 'soldOut', 0, 'tick', 0, 'measured', 0)
  return cjson.encode({ code = 'OK', gen = sale.gen })
end

-- queue_drop(sale): removes the queue's keys (a sale reset without a queue).
local function drop(keys, args)
  local k = keys_of(prefix_of('queue_drop', keys))
  return redis.call('DEL', k.meta, k.users, k.joined, k.order, k.adm, k.live, k.used)
end

-- queue_join(sale; userId): one ticket per user and generation.
local function join(keys, args)
  local p = prefix_of('queue_join', keys)
  local user = args[1]
  if type(user) ~= 'string' or user == '' then fail('queue_join', 'userId is required') end
  local q, code = load(p)
  if not q then return cjson.encode({ code = code }) end
  local k = keys_of(p)
  local now = now_ms()
  local startsAt, endsAt = n(q, 'startsAt'), n(q, 'endsAt')
  local seq = tonumber(redis.call('HGET', k.users, user))
  if not seq then
    local opensAt = startsAt - n(q, 'pre') * 1000
    if now < opensAt then return cjson.encode({ code = 'NOT_OPEN', opensAt = opensAt, now = now }) end
    if endsAt > 0 and now >= endsAt then return cjson.encode({ code = 'ENDED', endsAt = endsAt }) end
    if q.soldOut == '1' then return cjson.encode({ code = 'SOLD_OUT' }) end
    -- At the opening the pre-queue closes: the tickets taken so far are the
    -- ones the keeper shuffles; later ones are served in join order.
    if now >= startsAt and q.frozen ~= '1' then
      q.frozen, q.preCount = '1', q.tail
      redis.call('HSET', k.meta, 'frozen', 1, 'preCount', q.tail)
      if n(q, 'tail') == 0 then
        q.opened = '1'
        redis.call('HSET', k.meta, 'opened', 1)
      end
    end
    seq = redis.call('HINCRBY', k.meta, 'tail', 1)
    q.tail = tostring(seq)
    redis.call('HSET', k.users, user, seq)
    redis.call('HSET', k.joined, seq, now)
  end
  local pos = q.frozen == '1' and pos_of(k, q, seq) or 0
  return cjson.encode({
    code = 'OK', seq = seq, gen = q.gen, pos = pos, preQueue = pos == 0, serving = n(q, 'serving'),
    startsAt = startsAt, soldOut = q.soldOut == '1', now = now,
  })
end

-- queue_state(sale) [no-writes]: what a worker caches to answer status polls.
local function state(keys, args)
  local p = prefix_of('queue_state', keys)
  local q, code = load(p)
  if not q then return cjson.encode({ code = code }) end
  q.code = 'OK'
  q.stock = tonumber(redis.call('GET', p .. 'stock')) or 0
  q.now = now_ms()
  q.length = n(q, 'tail') - n(q, 'serving')
  return cjson.encode(q)
end

-- queue_order(sale) [no-writes]: the shuffled order of the pre-queue ("" before the opening).
local function order(keys, args)
  local p = prefix_of('queue_order', keys)
  local q, code = load(p)
  if not q then return cjson.encode({ code = code }) end
  return cjson.encode({ code = 'OK', gen = q.gen, preCount = n(q, 'preCount'), opened = q.opened == '1',
    order = redis.call('GET', keys_of(p).order) or '' })
end

-- queue_ticket(sale; seq) [no-writes]: an admitted ticket's admission time and
-- what became of its token.
local function ticket(keys, args)
  local p = prefix_of('queue_ticket', keys)
  local seq = int('queue_ticket', args[1], 'ticket', 1)
  local q, code = load(p)
  if not q then return cjson.encode({ code = code }) end
  local k = keys_of(p)
  local at = tonumber(redis.call('HGET', k.adm, seq))
  if not at then return cjson.encode({ code = 'WAITING', tail = n(q, 'tail') }) end
  local st = 'live'
  if redis.call('SISMEMBER', k.used, seq) == 1 then st = 'used'
  elseif not redis.call('ZSCORE', k.live, seq) then st = 'expired' end
  return cjson.encode({ code = 'OK', admittedAt = at, expiresAt = at + n(q, 'ttl') * 1000, state = st,
    soldOut = q.soldOut == '1' })
end

-- queue_open(sale; preCount, order): the keeper's shuffle of the pre-queue,
-- written once.  STALE when the pre-queue it shuffled is not the one closed.
local function open(keys, args)
  local p = prefix_of('queue_open', keys)
  local count = int('queue_open', args[1], 'preCount', 0)
  local ord = args[2] or ''
  if #ord ~= count * ORDER_WIDTH then fail('queue_open', 'order must hold preCount numbers of 10 digits') end
  local q, code = load(p)
  if not q then return cjson.encode({ code = code }) end
  if q.opened == '1' then return cjson.encode({ code = 'ALREADY_OPEN' }) end
  local now = now_ms()
  if now < n(q, 'startsAt') then return cjson.encode({ code = 'NOT_DUE', startsAt = n(q, 'startsAt') }) end
  local k = keys_of(p)
  if q.frozen ~= '1' then
    q.preCount = q.tail
    redis.call('HSET', k.meta, 'frozen', 1, 'preCount', q.tail)
  end
  if n(q, 'preCount') ~= count then return cjson.encode({ code = 'STALE', preCount = n(q, 'preCount') }) end
  -- every ticket 1..count exactly once
  local seen = {}
  for pos = 1, count do
    local s = tonumber(string.sub(ord, (pos - 1) * ORDER_WIDTH + 1, pos * ORDER_WIDTH))
    if not s or s < 1 or s > count or seen[s] then fail('queue_open', 'order is not a permutation of 1..preCount') end
    seen[s] = true
  end
  redis.call('SET', k.order, ord)
  redis.call('HSET', k.meta, 'opened', 1)
  return cjson.encode({ code = 'OK', preCount = count })
end

-- queue_advance(sale; count, tick, measuredRate, sweepLimit): the keeper's
-- step.  Tokens past their expiry that bought nothing give their places up
-- (each admits one more); then up to `count` (+ those) waiting tickets are
-- admitted while the SKU has stock.  `tick` must be the value the keeper last
-- read: a second keeper working from an older reading changes nothing.
local function advance(keys, args)
  local fn = 'queue_advance'
  local p = prefix_of(fn, keys)
  local count = int(fn, args[1], 'count', 0)
  local tick = int(fn, args[2], 'tick', 0)
  local measured = num(fn, args[3], 'measuredRate', 0)
  local limit = int(fn, args[4] or 1000, 'sweepLimit', 1)
  local q, code = load(p)
  if not q then return cjson.encode({ code = code }) end
  if n(q, 'tick') ~= tick then return cjson.encode({ code = 'STALE', tick = n(q, 'tick') }) end
  local k = keys_of(p)
  local now = now_ms()
  local gen = q.gen

  -- 1. Tokens due: used ones leave quietly, unused ones free a place.
  local freed, used_late = 0, 0
  local due = redis.call('ZRANGEBYSCORE', k.live, '-inf', now, 'LIMIT', 0, limit)
  for _, s in ipairs(due) do
    redis.call('ZREM', k.live, s)
    if redis.call('SISMEMBER', k.used, s) == 0 then
      if redis.call('EXISTS', p .. IDEM_PREFIX .. gen .. ':' .. s) == 1 then
        -- bought, but the app's note of it was lost: count it now
        redis.call('SADD', k.used, s)
        used_late = used_late + 1
      else
        freed = freed + 1
      end
    end
  end
  if freed > 0 then redis.call('HINCRBY', k.meta, 'expired', freed) end
  if used_late > 0 then redis.call('HINCRBY', k.meta, 'used', used_late) end

  -- 2. Sold out: no admission while the stock is empty.
  local stock = tonumber(redis.call('GET', p .. 'stock')) or 0
  local sold_out = stock <= 0
  local serving, tail = n(q, 'serving'), n(q, 'tail')
  local admit = 0
  local waits = {}
  if q.opened == '1' and not sold_out then
    admit = math.min(count + freed, tail - serving)
    local exp = now + n(q, 'ttl') * 1000
    for pos = serving + 1, serving + admit do
      local s = seq_at(k, q, pos)
      redis.call('HSET', k.adm, s, now)
      redis.call('ZADD', k.live, exp, s)
      local j = tonumber(redis.call('HGET', k.joined, s))
      if j then waits[#waits + 1] = now - j end
    end
    serving = serving + admit
  end
  redis.call('HSET', k.meta, 'serving', serving, 'soldOut', sold_out and 1 or 0, 'tick', tick + 1,
    'measured', tostring(measured))
  if admit > 0 then redis.call('HINCRBY', k.meta, 'admitted', admit) end
  return cjson.encode({
    code = 'OK', admitted = admit, freed = freed, serving = serving, length = tail - serving,
    soldOut = sold_out, waitsMs = waits, tick = tick + 1, now = now,
    more = #due == limit,
  })
end

-- queue_used(sale; seq): a purchase bought with this ticket's token.
local function used(keys, args)
  local p = prefix_of('queue_used', keys)
  local seq = int('queue_used', args[1], 'ticket', 1)
  local q, code = load(p)
  if not q then return cjson.encode({ code = code }) end
  local k = keys_of(p)
  if not redis.call('HGET', k.adm, seq) then return cjson.encode({ code = 'NOT_ADMITTED' }) end
  if redis.call('SADD', k.used, seq) == 1 then redis.call('HINCRBY', k.meta, 'used', 1) end
  return cjson.encode({ code = 'OK' })
end

-- queue_rate(sale; admitPerSec): the operator's new pace, effective at the next step.
local function rate(keys, args)
  local p = prefix_of('queue_rate', keys)
  local r = num('queue_rate', args[1], 'admitPerSec', 0)
  local q, code = load(p)
  if not q then return cjson.encode({ code = code }) end
  redis.call('HSET', keys_of(p).meta, 'rate', tostring(r))
  return cjson.encode({ code = 'OK', rate = r })
end

redis.register_function('queue_setup', setup)
redis.register_function('queue_drop', drop)
redis.register_function('queue_join', join)
redis.register_function { function_name = 'queue_state', callback = state, flags = { 'no-writes' } }
redis.register_function { function_name = 'queue_order', callback = order, flags = { 'no-writes' } }
redis.register_function { function_name = 'queue_ticket', callback = ticket, flags = { 'no-writes' } }
redis.register_function('queue_open', open)
redis.register_function('queue_advance', advance)
redis.register_function('queue_used', used)
redis.register_function('queue_rate', rate)
