-- The waiting room's functions, part of the Function library `flashhost`: the
-- loader appends this file to flashhost.lua and purchase.lua (app/lib/stock.lua
-- LIBRARY_FILES), so the helpers defined in flashhost.lua (context, now_ms, hash, QUEUE_IDEM_PREFIX) are
-- in scope here.  It is not a library of its own and does not load alone.
--
-- ---- the waiting room (queue_*) ------------------------------------------------------

-- Every queue function takes one key, the SKU's sale hash `{sku:S}:sale`, and
-- derives the queue's keys ({sku:S}:q, q:users, q:joined, q:order, q:adm,
-- q:live, q:used) from its hash tag, so each call touches one Cluster slot.
-- Answers are JSON text; a malformed argument raises.

local function field(h, f) return tonumber(h[f]) or 0 end

-- The queue's keys besides the sale hash.
local function queue_keys(p)
  return {
    meta = p .. 'q', users = p .. 'q:users', joined = p .. 'q:joined', order = p .. 'q:order',
    adm = p .. 'q:adm', live = p .. 'q:live', used = p .. 'q:used',
  }
end

-- The queue of this sale generation, or nil, code: a queue left from an
-- earlier generation of the SKU does not count.
local function load_queue(p)
  local sale = hash(p .. 'sale')
  if not sale or not sale.gen then return nil, 'NO_SALE' end
  local q = hash(p .. 'q')
  if sale.queue ~= '1' or not q or q.gen ~= sale.gen then return nil, 'NO_QUEUE', sale end
  return q, sale
end

-- The call of a queue_* function: its context, with KEYS[1] checked to be the
-- SKU's sale, and the SKU's key prefix.
local function queue_context(name, keys, args)
  local c = context(name, keys, args)
  c.key(1, 'sale')
  return c, c.prefix
end

-- The queue of the SKU with prefix p: q | nil, the encoded refusal to answer.
local function queue_of(p)
  local q, code = load_queue(p)
  if not q then return nil, cjson.encode({ code = code }) end
  return q
end

local ORDER_WIDTH = 10 -- the order string: position p holds the ticket number at (p-1)*10, zero-padded

-- The ticket number at position `pos` (pre-queue positions were shuffled).
local function seq_at(k, q, pos)
  if pos > field(q, 'preCount') then return pos end
  local s = redis.call('GETRANGE', k.order, (pos - 1) * ORDER_WIDTH, pos * ORDER_WIDTH - 1)
  return tonumber(s)
end

-- The position of ticket `seq`: pre-queue tickets have one only once opened.
local function pos_of(k, q, seq)
  if seq > field(q, 'preCount') then return seq end
  if q.opened ~= '1' then return 0 end
  local order = redis.call('GET', k.order) or ''
  for pos = 1, field(q, 'preCount') do
    if tonumber(string.sub(order, (pos - 1) * ORDER_WIDTH + 1, pos * ORDER_WIDTH)) == seq then return pos end
  end
  return 0
end

-- queue_setup(sale; admitPerSec, tokenTtlSec, preQueueSec): a fresh queue for
-- the sale's current generation (the sale hash must carry queue = 1).
local function queue_setup(keys, args)
  local c, p = queue_context('queue_setup', keys, args)
  local rate = c.num(args[1], 'admitPerSec', 0)
  local ttl = c.int(args[2], 'tokenTtlSec', 1)
  local pre = c.int(args[3], 'preQueueSec', 0)
  local sale = hash(p .. 'sale')
  if not sale or not sale.gen then return cjson.encode({ code = 'NO_SALE' }) end
  if sale.queue ~= '1' then c.fail('the sale hash does not have queue = 1') end
  local k = queue_keys(p)
  redis.call('DEL', k.meta, k.users, k.joined, k.order, k.adm, k.live, k.used)
  redis.call('HSET', k.meta, 'gen', sale.gen, 'startsAt', sale.startsAt or '0', 'endsAt', sale.endsAt or '0',
    'rate', tostring(rate), 'ttl', ttl, 'pre', pre, 'tail', 0, 'frozen', 0, 'preCount', 0, 'opened', 0,
    'serving', 0, 'admitted', 0, 'used', 0, 'expired', 0, 'soldOut', 0, 'tick', 0, 'measured', 0)
  return cjson.encode({ code = 'OK', gen = sale.gen })
end

-- queue_drop(sale): removes the queue's keys (a sale reset without a queue).
local function queue_drop(keys, args)
  local c = context('queue_drop', keys, args)
  c.key(1, 'sale')
  local k = queue_keys(c.prefix)
  return redis.call('DEL', k.meta, k.users, k.joined, k.order, k.adm, k.live, k.used)
end

-- queue_join(sale; userId): one ticket per user and generation.
local function queue_join(keys, args)
  local c, p = queue_context('queue_join', keys, args)
  local user = args[1]
  if type(user) ~= 'string' or user == '' then c.fail('userId is required') end
  local q, refusal = queue_of(p)
  if not q then return refusal end
  local k = queue_keys(p)
  local now = now_ms()
  local startsAt, endsAt = field(q, 'startsAt'), field(q, 'endsAt')
  local seq = tonumber(redis.call('HGET', k.users, user))
  if not seq then
    local opensAt = startsAt - field(q, 'pre') * 1000
    if now < opensAt then return cjson.encode({ code = 'NOT_OPEN', opensAt = opensAt, now = now }) end
    if endsAt > 0 and now >= endsAt then return cjson.encode({ code = 'ENDED', endsAt = endsAt }) end
    if q.soldOut == '1' then return cjson.encode({ code = 'SOLD_OUT' }) end
    -- At the opening the pre-queue closes: the tickets taken so far are the
    -- ones the keeper shuffles; later ones are served in join order.
    if now >= startsAt and q.frozen ~= '1' then
      q.frozen, q.preCount = '1', q.tail
      redis.call('HSET', k.meta, 'frozen', 1, 'preCount', q.tail)
      if field(q, 'tail') == 0 then
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
    code = 'OK', seq = seq, gen = q.gen, pos = pos, preQueue = pos == 0, serving = field(q, 'serving'),
    startsAt = startsAt, soldOut = q.soldOut == '1', now = now,
  })
end

-- queue_state(sale) [no-writes]: what a worker caches to answer status polls.
local function queue_state(keys, args)
  local c, p = queue_context('queue_state', keys, args)
  local q, refusal = queue_of(p)
  if not q then return refusal end
  q.code = 'OK'
  q.stock = tonumber(redis.call('GET', p .. 'stock')) or 0
  q.now = now_ms()
  q.length = field(q, 'tail') - field(q, 'serving')
  return cjson.encode(q)
end

-- queue_order(sale) [no-writes]: the shuffled order of the pre-queue ("" before the opening).
local function queue_order_fn(keys, args)
  local c, p = queue_context('queue_order', keys, args)
  local q, refusal = queue_of(p)
  if not q then return refusal end
  return cjson.encode({ code = 'OK', gen = q.gen, preCount = field(q, 'preCount'), opened = q.opened == '1',
    order = redis.call('GET', queue_keys(p).order) or '' })
end

-- queue_ticket(sale; seq) [no-writes]: an admitted ticket's admission time and
-- what became of its token.
local function queue_ticket(keys, args)
  local c, p = queue_context('queue_ticket', keys, args)
  local seq = c.int(args[1], 'ticket', 1)
  local q, refusal = queue_of(p)
  if not q then return refusal end
  local k = queue_keys(p)
  local at = tonumber(redis.call('HGET', k.adm, seq))
  if not at then return cjson.encode({ code = 'WAITING', tail = field(q, 'tail') }) end
  local st = 'live'
  if redis.call('SISMEMBER', k.used, seq) == 1 then st = 'used'
  elseif not redis.call('ZSCORE', k.live, seq) then st = 'expired' end
  return cjson.encode({ code = 'OK', admittedAt = at, expiresAt = at + field(q, 'ttl') * 1000, state = st,
    soldOut = q.soldOut == '1' })
end

-- queue_open(sale; preCount, order): the keeper's shuffle of the pre-queue,
-- written once.  STALE when the pre-queue it shuffled is not the one closed.
local function queue_open(keys, args)
  local c, p = queue_context('queue_open', keys, args)
  local count = c.int(args[1], 'preCount', 0)
  local ord = args[2] or ''
  if #ord ~= count * ORDER_WIDTH then c.fail('order must hold preCount numbers of 10 digits') end
  local q, refusal = queue_of(p)
  if not q then return refusal end
  if q.opened == '1' then return cjson.encode({ code = 'ALREADY_OPEN' }) end
  local now = now_ms()
  if now < field(q, 'startsAt') then return cjson.encode({ code = 'NOT_DUE', startsAt = field(q, 'startsAt') }) end
  local k = queue_keys(p)
  if q.frozen ~= '1' then
    q.preCount = q.tail
    redis.call('HSET', k.meta, 'frozen', 1, 'preCount', q.tail)
  end
  if field(q, 'preCount') ~= count then return cjson.encode({ code = 'STALE', preCount = field(q, 'preCount') }) end
  -- every ticket 1..count exactly once
  local seen = {}
  for pos = 1, count do
    local s = tonumber(string.sub(ord, (pos - 1) * ORDER_WIDTH + 1, pos * ORDER_WIDTH))
    if not s or s < 1 or s > count or seen[s] then c.fail('order is not a permutation of 1..preCount') end
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
local function queue_advance(keys, args)
  local c, p = queue_context('queue_advance', keys, args)
  local count = c.int(args[1], 'count', 0)
  local tick = c.int(args[2], 'tick', 0)
  local measured = c.num(args[3], 'measuredRate', 0)
  local limit = c.int(args[4] or 1000, 'sweepLimit', 1)
  local q, refusal = queue_of(p)
  if not q then return refusal end
  if field(q, 'tick') ~= tick then return cjson.encode({ code = 'STALE', tick = field(q, 'tick') }) end
  local k = queue_keys(p)
  local now = now_ms()
  local gen = q.gen

  -- 1. Tokens due: used ones leave quietly, unused ones free a place.
  local freed, used_late = 0, 0
  local due = redis.call('ZRANGEBYSCORE', k.live, '-inf', now, 'LIMIT', 0, limit)
  for _, s in ipairs(due) do
    redis.call('ZREM', k.live, s)
    if redis.call('SISMEMBER', k.used, s) == 0 then
      if idem_stored(p, now, QUEUE_IDEM_PREFIX .. gen .. ':' .. s) then
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
  local serving, tail = field(q, 'serving'), field(q, 'tail')
  local admit = 0
  local waits = {}
  if q.opened == '1' and not sold_out then
    admit = math.min(count + freed, tail - serving)
    local exp = now + field(q, 'ttl') * 1000
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
local function queue_used(keys, args)
  local c, p = queue_context('queue_used', keys, args)
  local seq = c.int(args[1], 'ticket', 1)
  local q, refusal = queue_of(p)
  if not q then return refusal end
  local k = queue_keys(p)
  if not redis.call('HGET', k.adm, seq) then return cjson.encode({ code = 'NOT_ADMITTED' }) end
  if redis.call('SADD', k.used, seq) == 1 then redis.call('HINCRBY', k.meta, 'used', 1) end
  return cjson.encode({ code = 'OK' })
end

-- queue_rate(sale; admitPerSec): the operator's new pace, effective at the next step.
local function queue_rate(keys, args)
  local c, p = queue_context('queue_rate', keys, args)
  local r = c.num(args[1], 'admitPerSec', 0)
  local q, refusal = queue_of(p)
  if not q then return refusal end
  redis.call('HSET', queue_keys(p).meta, 'rate', tostring(r))
  return cjson.encode({ code = 'OK', rate = r })
end

redis.register_function('queue_setup', queue_setup)
redis.register_function('queue_drop', queue_drop)
redis.register_function('queue_join', queue_join)
redis.register_function{ function_name = 'queue_state', callback = queue_state, flags = { 'no-writes' } }
redis.register_function{ function_name = 'queue_order', callback = queue_order_fn, flags = { 'no-writes' } }
redis.register_function{ function_name = 'queue_ticket', callback = queue_ticket, flags = { 'no-writes' } }
redis.register_function('queue_open', queue_open)
redis.register_function('queue_advance', queue_advance)
redis.register_function('queue_used', queue_used)
redis.register_function('queue_rate', queue_rate)
