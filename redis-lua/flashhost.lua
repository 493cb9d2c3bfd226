#!lua name=flashhost
-- The atomic state changes of a flash sale, as one Redis Function library.
-- Loaded with FUNCTION LOAD REPLACE; called with FCALL (FCALL_RO for status).
-- Contract (KEYS, ARGV, answers, events): redis-lua/README.md.
--
-- The library is this file followed by purchase.lua and queue.lua (the
-- loader joins them: app/lib/stock.lua LIBRARY_FILES), so the helpers here
-- serve all three.
-- Functions here: sale, confirm, release, expire, cancel_pending, status,
-- lease, order_index; in purchase.lua purchase_batch;
-- in queue.lua the waiting room's queue_setup, queue_drop, queue_join,
-- queue_state, queue_order, queue_ticket, queue_open, queue_advance,
-- queue_used, queue_rate.
-- Everything a function does that can raise is checked before its first write:
-- a function error does not roll back.

local RES_KEEP_MS = 86400000   -- a finished reservation is kept a day, for ALREADY_* answers
local INDEX_KEEP_SEC = 86400   -- the order index outlives its reservation's TTL by a day
-- Stored purchase answers live in one hash per SKU and day of Redis's clock,
-- {sku:S}:idems:<day>, field = the idempotency key: a batch reads all of its
-- keys with one HMGET per day and stores its answers with one HSET, where a
-- key per answer cost a GET and a SET PX per attempt.  A day's hash is read
-- that day and the next and expires after it: an answer lives one to two days.
local IDEM_DAY_MS = 86400000
-- The idempotency key a queue token buys under: 'q <gen>:<ticket>'.  The app
-- derives it from a token whose signature it checked; a client cannot send one
-- (its keys have no spaces), so a key with this prefix is proof of admission.
local QUEUE_IDEM_PREFIX = 'q '

-- ---- arguments ---------------------------------------------------------------

-- The call of one function: its SKU (from KEYS[1]) and the checks that raise
-- 'ERR flashhost <name>: ...' on malformed arguments.
local function context(name, keys, args)
  local c = { keys = keys, args = args }
  function c.fail(msg) error({ err = 'ERR flashhost ' .. name .. ': ' .. msg }) end
  c.prefix, c.sku = string.match(keys[1] or '', '^({sku:([^}]+)}:)')
  if not c.prefix then c.fail('KEYS[1] must start with {sku:ID}:') end
  -- KEYS[i] must be the SKU's key with this suffix: a wrong order fails loudly.
  function c.key(i, suffix)
    if keys[i] ~= c.prefix .. suffix then c.fail('KEYS[' .. i .. '] must be ' .. c.prefix .. suffix) end
    return keys[i]
  end
  function c.num(v, what, min)
    local n = tonumber(v)
    if not n or n ~= n or n == math.huge or n < min then c.fail(what .. ' must be a number >= ' .. min) end
    return n
  end
  function c.int(v, what, min)
    local n = c.num(v, what, min)
    if n % 1 ~= 0 then c.fail(what .. ' must be an integer') end
    return n
  end
  -- ARGV[i], required
  function c.text(i, what)
    if not args[i] or args[i] == '' then c.fail(what .. ' (ARGV[' .. i .. ']) is required') end
    return args[i]
  end
  return c
end

-- ---- shared state changes ------------------------------------------------------

-- Redis's clock in epoch milliseconds: the only clock a function may use.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- x as a command argument: the text Redis would make of the number, made
-- where that text is surely an integer's digits (a non-negative integer below
-- 1e14) with an integer formatting, where Redis (and tostring) would format a
-- float; anything else stays a number, for Redis to format as before.
local function int_arg(x)
  if x % 1 == 0 and x >= 0 and x < 1e14 then return string.format('%d', x) end
  return x
end

-- tostring(x), without a float formatting where x is an integer from 1 up to
-- 1e14: there string.format's '%d' prints the same digits, and memo (a table
-- per call) keeps them for the next time.  Second result: true when the text
-- is exactly x (so tonumber of it would give x back).
local function int_text(x, memo)
  if x >= 1 and x < 1e14 and x % 1 == 0 then
    local t = memo[x]
    if not t then t = string.format('%d', x); memo[x] = t end
    return t, true
  end
  return tostring(x), false
end

-- The two hashes of stored answers a call at `now` reads, today's first (the
-- one it writes), and the time today's expires (see IDEM_DAY_MS).
local function idem_days(prefix, now)
  local day = math.floor(now / IDEM_DAY_MS)
  local format = string.format
  return prefix .. 'idems:' .. format('%d', day), prefix .. 'idems:' .. format('%d', day - 1), (day + 2) * IDEM_DAY_MS
end

-- Whether an answer is stored under idempotency key `idem` of the SKU.
local function idem_stored(prefix, now, idem)
  local today, yesterday = idem_days(prefix, now)
  return redis.call('HEXISTS', today, idem) == 1 or redis.call('HEXISTS', yesterday, idem) == 1
end

local function hash(k)
  local flat = redis.call('HGETALL', k)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- A reservation, {sku:S}:res:<id>, is one string, so that purchase_batch
-- writes a batch's reservations in its one MSET.  Its fields are texts
-- (userId, orderId, quantity, unitPrice, status, expiresAt, createdAt,
-- updatedAt, traceId; paymentRef once confirmed).  A new one, PENDING, is
-- written compact: 'P' then userId, orderId, quantity, unitPrice (empty:
-- none), expiresAt, createdAt and traceId, RES_SEP before each; the ids as
-- their JSON texts, which never hold the byte RES_SEP (cjson escapes every
-- control character), the rest numbers.  updatedAt is createdAt.  About 100
-- bytes where its JSON object took 250, to build, store and append to the
-- file.  Once it leaves PENDING it is saved as a JSON object of its fields.
local RES_SEP = '\31'

-- The fields of a compact reservation | nil (a text that is none).
local function compact_reservation(v)
  local u, o, q, p, e, c, t = string.match(v,
    '^P\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
  if not u then return nil end
  local ok, userId, orderId, traceId = pcall(function() return cjson.decode(u), cjson.decode(o), cjson.decode(t) end)
  if not ok or type(userId) ~= 'string' or type(orderId) ~= 'string' or type(traceId) ~= 'string' then return nil end
  return { userId = userId, orderId = orderId, quantity = q, unitPrice = p ~= '' and p or nil, status = 'PENDING',
    expiresAt = e, createdAt = c, updatedAt = c, traceId = traceId }
end

-- reservation(k) -> fields | nil (no such key, or a value that is no
-- reservation: read as none rather than raise halfway through a function's
-- writes, and the reconciliation sees the tickets it held).  A reservation of
-- before they were strings is a hash: read as such, and a string from its
-- next save.
local function reservation(k)
  local v = redis.pcall('GET', k)
  if type(v) == 'table' and v.err then return hash(k) end
  if not v then return nil end
  if string.sub(v, 1, 2) == 'P' .. RES_SEP then return compact_reservation(v) end
  local ok, r = pcall(cjson.decode, v)
  if ok and type(r) == 'table' then return r end
  return nil
end

-- A reservation that left PENDING is kept a day more (RES_KEEP_MS).
local function save_finished(k, r)
  redis.call('SET', k, cjson.encode(r), 'PX', RES_KEEP_MS)
end

-- The order index, so the order routes find a reservation from an order id:
-- a purchase batch's block -> its SKU (below), and from before blocks, order
-- id -> '<skuId>:<reservationId>'.  The ids of a few minutes share one hash
-- (ids are time-ordered snowflakes: all digits but the last 12, some 4
-- minutes of ids; a block's ids differ in their last 9 only).  The host names
-- the same hash: app/lib/stock.lua index_key.
local function index_key(orderId)
  return 'orderidx:' .. string.sub(orderId, 1, -13)
end

-- A purchase batch's ids are one block (app/lib/order_ids.lua): its first
-- id is a multiple of 256, attempt i's orderId that + i - 1 (at most 128
-- attempts) and its reservationId that + 128.  The batch writes one index
-- entry, field = the block's first id, value = the SKU; the host finds an
-- order's reservation from its id.  An id mod 256 is its last 9 digits mod
-- 256 (1e9 is a multiple of 256): a number Lua holds exactly.
local BLOCK_ATTEMPTS = 128
local function is_block_start(id)
  return string.find(id, '^%d+$') ~= nil and tonumber(string.sub(id, -9)) % 256 == 0
end

-- An index hash lives at least px ms past its last write, and never less
-- than it had: hashes are shared by sales of different TTLs.
local function keep_index(k, px)
  redis.call('PEXPIRE', k, px, 'NX')
  redis.call('PEXPIRE', k, px, 'GT')
end

-- The pending index, {sku:S}:pending, is a zset whose member is the ids of
-- the reservations one purchase_batch call made (one `now`, so one expiry),
-- separated by spaces, scored by their expiresAt: one member per call, where
-- a member per reservation cost a zset insert per purchase.  (An older form,
-- one id per member, reads as a call of one.)  The reservation is the truth:
-- the ids of a member that left PENDING stay until the member is walked (its
-- expiry, a reset), which drops them, so confirm and release leave the index
-- alone.  How many reservations are PENDING is counted in counts.pending.
local PENDING_SEP = ' '

-- The reservation ids of one member of the pending index, in order (an iterator).
local function member_ids(member)
  return string.gmatch(member, '[^' .. PENDING_SEP .. ']+')
end

-- walk_pending(s, flat, budget, visit): flat is a ZRANGE ... WITHSCORES answer
-- (member, score, ...), oldest first.  Calls visit(id) for up to `budget` ids
-- in order; each member walked leaves the index, and the ids of one walked in
-- part go back as a member of their own (same score).  visit may index an id
-- anew: the member is gone by then.
local function walk_pending(s, flat, budget, visit)
  local seen = 0
  for i = 1, #flat, 2 do
    if seen >= budget then break end
    local member = flat[i]
    redis.call('ZREM', s.pending, member)
    local rest
    for id in member_ids(member) do
      if seen < budget then
        seen = seen + 1
        visit(id)
      else
        rest = rest or {}
        rest[#rest + 1] = id
      end
    end
    if rest then redis.call('ZADD', s.pending, flat[i + 1], table.concat(rest, PENDING_SEP)) end
  end
end

-- The keys of one SKU that a reservation's release touches.
local function sku_keys(c, stock, counts, pending, outbox)
  return { prefix = c.prefix, id = c.sku, stock = stock, counts = counts, pending = pending, outbox = outbox }
end

-- One outbox event of reservation id (r its hash).
local function emit(s, kind, id, r, status, now, traceId, ...)
  redis.call('XADD', s.outbox, '*', 'type', kind, 'eventId', id .. ':' .. kind,
    'reservationId', id, 'orderId', r.orderId, 'userId', r.userId, 'skuId', s.id,
    'quantity', r.quantity, 'unitPrice', r.unitPrice, 'status', status,
    'expiresAt', r.expiresAt, 'ts', tostring(now), 'traceId', traceId, ...)
end

-- A user's key on a SKU, {sku:S}:u:<userId>, is one string of five fields,
-- 'gen|held|tokens|ts|fullAt' (an empty one: none), so a batch reads all of
-- its users with one MGET and writes those who hold tickets with one MSET.
-- user_fields(text) -> gen, held, tokens, ts, fullAt (texts), or nothing.
local function user_fields(v)
  return string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
end

-- The tickets a user holds drop by q.  At zero the key only keeps the token
-- bucket, and only until the bucket is full again (fullAt): then it is the
-- same as no key.  A key that holds tickets never expires.
local function unhold(s, userId, q, now)
  local k = s.prefix .. 'u:' .. userId
  local v = redis.pcall('GET', k)
  if type(v) == 'table' and v.err then
    -- a user key of before user keys were strings (a hash): its reservation
    -- still gives its tickets back; the key is a string from its next purchase
    if redis.call('HINCRBY', k, 'held', -q) <= 0 then redis.call('HDEL', k, 'held') end
    return
  end
  local gen, held, tokens, ts, fullAt
  if v then gen, held, tokens, ts, fullAt = user_fields(v) end
  if not gen then redis.call('DEL', k) return end
  local left = (tonumber(held) or 0) - q
  if left > 0 then
    redis.call('SET', k, gen .. '|' .. string.format('%d', left) .. '|' .. tokens .. '|' .. ts .. '|' .. fullAt)
  elseif (tonumber(fullAt) or 0) > now then
    redis.call('SET', k, gen .. '|0|' .. tokens .. '|' .. ts .. '|' .. fullAt, 'PXAT', fullAt)
  else
    redis.call('DEL', k)
  end
end

-- Returns a PENDING reservation's tickets to stock. Callers come here only from
-- PENDING, and the status written here leaves PENDING: so stock returns exactly once.
-- The one copy of this step: sale, confirm, release and expire all use it.
local function release_reservation(s, id, resKey, r, status, now, traceId)
  local q = tonumber(r.quantity)
  local kind = string.lower(status)  -- 'canceled' | 'expired': the count field and event type
  redis.call('INCRBY', s.stock, q)
  redis.call('HINCRBY', s.counts, 'reserved', -q)
  redis.call('HINCRBY', s.counts, kind, q)
  redis.call('HINCRBY', s.counts, 'pending', -1)
  unhold(s, r.userId, q, now)
  r.status, r.updatedAt = status, tostring(now)
  save_finished(resKey, r)
  emit(s, kind, id, r, status, now, traceId)
end

-- Walks up to `budget` ids of the pending index from its oldest, canceling
-- each PENDING one as a sale's reset does: a buyer's cancel, whatever its
-- expiry (one 'canceled' event each).  Returns how many were canceled.
local function cancel_pending_walk(c, s, flat, budget, now, traceId)
  local n = 0
  walk_pending(s, flat, budget, function(id)
    local resKey = c.prefix .. 'res:' .. id
    local r = reservation(resKey)
    if r and r.status == 'PENDING' then
      release_reservation(s, id, resKey, r, 'CANCELED', now, traceId ~= '' and traceId or r.traceId)
      n = n + 1
    end
  end)
  return n
end

-- ---- sale ------------------------------------------------------------------------

-- KEYS: 1 sale, 2 stock, 3 counts, 4 pending, 5 outbox
-- ARGV: 1 name, 2 price, 3 initial, 4 startsAt, 5 endsAt, 6 perUserLimit, 7 ttlSec,
--       8 rlCapacity, 9 rlRate, 10 traceId
local function sale(keys, args)
  local c = context('sale', keys, args)
  local function opt(i, what, min, integer)
    if args[i] == nil or args[i] == '' then return nil end
    local label = what .. ' (ARGV[' .. i .. '])'
    return integer and c.int(args[i], label, min) or c.num(args[i], label, min)
  end
  local saleKey, stockKey, countsKey = c.key(1, 'sale'), c.key(2, 'stock'), c.key(3, 'counts')
  local s = sku_keys(c, stockKey, countsKey, c.key(4, 'pending'), c.key(5, 'outbox'))
  local name = args[1] or ''
  local price, initial = c.num(args[2], 'price (ARGV[2])', 0), c.int(args[3], 'initial (ARGV[3])', 0)
  local startsAt, endsAt = opt(4, 'startsAt', 0, true) or 0, opt(5, 'endsAt', 0, true) or 0
  local perUserLimit, ttlSec = opt(6, 'perUserLimit', 0, true), opt(7, 'ttlSec', 0)
  local rlCapacity, rlRate = opt(8, 'rlCapacity', 0), opt(9, 'rlRate', 0)
  if rlRate == 0 then c.fail('rlRate (ARGV[9]) must be > 0') end
  local traceId = args[10] or ''

  local now = now_ms()
  -- A reset first cancels every reservation still pending, like a buyer's cancel
  -- (one 'canceled' event each, so the order store learns of it).  The app
  -- cancels most of them beforehand in steps (cancel_pending), so this walk
  -- is short.
  local canceled = cancel_pending_walk(c, s, redis.call('ZRANGE', s.pending, 0, -1, 'WITHSCORES'), math.huge, now,
    traceId)

  -- gen tells this sale from earlier ones: idempotency answers and user keys of
  -- another generation count as absent, so a reset needs no scan of them.  Taken
  -- from the clock, not only a counter, so it still grows when the sale hash was
  -- deleted meanwhile.
  local gen = math.max(now, (tonumber(redis.call('HGET', saleKey, 'gen')) or 0) + 1)

  redis.call('DEL', saleKey, countsKey, s.pending)
  redis.call('SET', stockKey, initial)
  redis.call('HSET', countsKey, 'reserved', 0, 'sold', 0, 'canceled', 0, 'expired', 0, 'pending', 0)
  local info = { skuId = c.sku, name = name, price = price, initial = initial, startsAt = startsAt,
    endsAt = endsAt, perUserLimit = perUserLimit, ttlSec = ttlSec, rlCapacity = rlCapacity,
    rlRate = rlRate, createdAt = now, gen = gen, queue = args[11] == '1' and '1' or nil }
  local fields = {}
  for f, v in pairs(info) do
    if f ~= 'skuId' then fields[#fields + 1] = f; fields[#fields + 1] = tostring(v) end
  end
  redis.call('HSET', saleKey, unpack(fields))
  return cjson.encode({ code = 'OK', sale = info, canceled = canceled })
end

-- ---- confirm / release ------------------------------------------------------------

-- KEYS of both: 1 res:<reservationId>, 2 stock, 3 counts, 4 pending, 5 outbox
local function reservation_call(name, keys, args)
  local c = context(name, keys, args)
  local id = args[1] or ''
  if id == '' then c.fail('reservationId (ARGV[1]) is required') end
  local resKey = c.key(1, 'res:' .. id)
  return c, id, resKey, sku_keys(c, c.key(2, 'stock'), c.key(3, 'counts'), c.key(4, 'pending'), c.key(5, 'outbox'))
end

-- ARGV: 1 reservationId, 2 paymentRef, 3 userId ("" = no owner check), 4 traceId
local function confirm(keys, args)
  local c, id, resKey, s = reservation_call('confirm', keys, args)
  local paymentRef, userId, traceId = args[2] or '', args[3] or '', args[4] or ''
  local now = now_ms()
  local r = reservation(resKey)
  if not r then return cjson.encode({ code = 'NOT_FOUND', reservationId = id }) end
  local function answer(code)
    return cjson.encode({ code = code, reservationId = id, orderId = r.orderId, userId = r.userId,
      quantity = tonumber(r.quantity), status = r.status, expiresAt = tonumber(r.expiresAt),
      paymentRef = r.paymentRef })
  end
  if userId ~= '' and userId ~= r.userId then return cjson.encode({ code = 'NOT_OWNER', reservationId = id }) end
  if r.status == 'CONFIRMED' then return answer('ALREADY_CONFIRMED') end
  if r.status == 'CANCELED' or r.status == 'EXPIRED' then return answer(r.status) end
  if r.status ~= 'PENDING' then c.fail('reservation ' .. id .. ' has unknown status ' .. tostring(r.status)) end
  if traceId == '' then traceId = r.traceId end

  -- Past its expiry a reservation is expired whoever looks first: do the sweeper's
  -- work now, so the buyer's answer and the stored state agree.
  if now >= tonumber(r.expiresAt) then
    release_reservation(s, id, resKey, r, 'EXPIRED', now, traceId)
    return answer('EXPIRED')
  end

  -- The tickets stay held by the user: held counts pending and confirmed alike.
  local q = tonumber(r.quantity)
  redis.call('HINCRBY', s.counts, 'reserved', -q)
  redis.call('HINCRBY', s.counts, 'sold', q)
  redis.call('HINCRBY', s.counts, 'pending', -1)
  r.status, r.paymentRef, r.updatedAt = 'CONFIRMED', paymentRef, tostring(now)
  save_finished(resKey, r)
  emit(s, 'confirmed', id, r, 'CONFIRMED', now, traceId, 'paymentRef', paymentRef)
  return answer('OK')
end

-- ARGV: 1 reservationId, 2 reason ('canceled' | 'expired'), 3 userId, 4 traceId
local function release(keys, args)
  local c, id, resKey, s = reservation_call('release', keys, args)
  local reason = args[2]
  if reason ~= 'canceled' and reason ~= 'expired' then c.fail("reason (ARGV[2]) must be 'canceled' or 'expired'") end
  local userId, traceId = args[3] or '', args[4] or ''
  local now = now_ms()
  local r = reservation(resKey)
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
    c.fail('reservation ' .. id .. ' has unknown status ' .. tostring(r.status))
  end
  if traceId == '' then traceId = r.traceId end

  local due = now >= tonumber(r.expiresAt)
  if reason == 'expired' then
    if not due then return answer('NOT_DUE') end
    release_reservation(s, id, resKey, r, 'EXPIRED', now, traceId)
    return answer('OK')
  end
  -- A cancel that arrives after expiry finds a reservation that has already expired:
  -- record it as such (what the sweeper would have done) and say so.
  if due then
    release_reservation(s, id, resKey, r, 'EXPIRED', now, traceId)
    return answer('ALREADY_EXPIRED')
  end
  release_reservation(s, id, resKey, r, 'CANCELED', now, traceId)
  return answer('OK')
end

-- ---- expire ------------------------------------------------------------------------

-- KEYS: 1 stock, 2 counts, 3 pending, 4 outbox.  ARGV: 1 limit, 2 traceId
-- The reservation keys come from the pending zset, built from the same {sku:S}
-- prefix: the same cluster slot as the declared keys.
local function expire(keys, args)
  local c = context('expire', keys, args)
  local limit = tonumber(args[1])
  if not limit or limit % 1 ~= 0 or limit < 1 then c.fail('limit (ARGV[1]) must be an integer >= 1') end
  local s = sku_keys(c, c.key(1, 'stock'), c.key(2, 'counts'), c.key(3, 'pending'), c.key(4, 'outbox'))
  local traceId = args[2] or ''
  local now = now_ms()
  local n = 0
  -- up to `limit` ids of the members due (each has one id at least)
  local due = redis.call('ZRANGEBYSCORE', s.pending, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  walk_pending(s, due, limit, function(id)
    local resKey = c.prefix .. 'res:' .. id
    local r = reservation(resKey)
    -- The reservation is the truth and the zset only its index: an id whose
    -- reservation is gone or finished is dropped, one whose expiresAt moved is re-indexed.
    if not r or r.status ~= 'PENDING' then return end
    if now < tonumber(r.expiresAt) then
      redis.call('ZADD', s.pending, r.expiresAt, id)
    else
      release_reservation(s, id, resKey, r, 'EXPIRED', now, traceId ~= '' and traceId or r.traceId)
      n = n + 1
    end
  end)
  local more = redis.call('ZCOUNT', s.pending, '-inf', now) > 0
  return cjson.encode({ code = 'OK', expired = n, more = more })
end

-- ---- cancel_pending -------------------------------------------------------------------

-- A reset's cancels, a step at a time: up to `limit` pending reservations
-- (the oldest first) canceled as `sale` cancels them.  The app calls it until
-- few are left before it resets a sale, so a reset of a sale with many
-- pending reservations never holds Redis for the whole walk.
-- KEYS: 1 stock, 2 counts, 3 pending, 4 outbox.  ARGV: 1 limit, 2 traceId.
-- Answer: {code:"OK", canceled, left} (left: members of the index after the
-- step, each the ids of one purchase call, of 128 at most).
local function cancel_pending(keys, args)
  local c = context('cancel_pending', keys, args)
  local limit = tonumber(args[1])
  if not limit or limit % 1 ~= 0 or limit < 1 then c.fail('limit (ARGV[1]) must be an integer >= 1') end
  local s = sku_keys(c, c.key(1, 'stock'), c.key(2, 'counts'), c.key(3, 'pending'), c.key(4, 'outbox'))
  local n = cancel_pending_walk(c, s, redis.call('ZRANGE', s.pending, 0, limit - 1, 'WITHSCORES'), limit, now_ms(),
    args[2] or '')
  return cjson.encode({ code = 'OK', canceled = n, left = redis.call('ZCARD', s.pending) })
end

-- ---- status (read-only) ----------------------------------------------------------------

-- KEYS: 1 sale, 2 stock, 3 counts, 4 pending, 5 outbox.  ARGV: 1 "deep" to also sum
-- the pending reservations' quantities (reconciliation: it walks every one).
-- One function so that stock and counts come from the same moment.
local function status(keys, args)
  local sale = hash(keys[1])
  if not sale then return cjson.encode({ code = 'NO_SALE' }) end
  local counts = { reserved = 0, sold = 0, canceled = 0, expired = 0 }
  local pending  -- PENDING reservations (counts.pending; a sale of before it: the index's size)
  local flat = redis.call('HGETALL', keys[3])
  for i = 1, #flat, 2 do
    if flat[i] == 'pending' then pending = tonumber(flat[i + 1]) else counts[flat[i]] = tonumber(flat[i + 1]) end
  end
  local answer = {
    code = 'OK', sale = sale, stock = tonumber(redis.call('GET', keys[2])) or 0, counts = counts,
    pending = pending or redis.call('ZCARD', keys[4]), outbox = redis.call('XLEN', keys[5]),
  }
  if args[1] == 'deep' then
    -- Summed from the reservations themselves, so a reconciliation compares two
    -- independent records: counts and reservations.
    local prefix = string.match(keys[1], '^({sku:[^}]+}:)')
    local qty = 0
    for _, member in ipairs(redis.call('ZRANGE', keys[4], 0, -1)) do
      for id in member_ids(member) do
        local r = reservation(prefix .. 'res:' .. id)
        if r and r.status == 'PENDING' then qty = qty + (tonumber(r.quantity) or 0) end
      end
    end
    answer.pendingQuantity = qty
  end
  return cjson.encode(answer)
end

-- ---- order_index -----------------------------------------------------------------------

-- The host's write of one order's index entry, where purchase_batch cannot
-- write it (on a cluster the index hash is in another slot than the SKU).
-- KEYS: 1 the index hash (index_key).  ARGV: 1 orderId, 2 '<skuId>:<reservationId>',
-- 3 life in ms.  Answer: 1.
local function order_index(keys, args)
  if keys[1] ~= index_key(args[1] or '') or (args[2] or '') == '' then
    return redis.error_reply('ERR flashhost order_index: KEYS[1] must be the index hash of ARGV[1], ARGV[2] the reference')
  end
  local px = tonumber(args[3])
  if not px or px < 1 or px % 1 ~= 0 then return redis.error_reply('ERR flashhost order_index: life (ARGV[3]) must be an integer >= 1') end
  redis.call('HSET', keys[1], args[1], args[2])
  keep_index(keys[1], args[3])
  return 1
end

-- ---- lease ---------------------------------------------------------------------------

-- A lease held by one owner at a time, renewed by its holder; a holder that dies
-- stops renewing and the lease lapses after ttl.
-- KEYS: 1 the lease key.  ARGV: 1 owner, 2 ttl ms (take or renew) or "release".
-- Answer: 1 when the caller holds the lease after the call, else 0.
local function lease(keys, args)
  local holder = redis.call('GET', keys[1])
  if args[2] == 'release' then
    if holder == args[1] then redis.call('DEL', keys[1]) end
    return 0
  end
  local ttl = tonumber(args[2])
  if not ttl or ttl < 1 then return redis.error_reply('ERR flashhost lease: ttl must be >= 1 ms') end
  if holder == args[1] then
    redis.call('PEXPIRE', keys[1], ttl)
    return 1
  end
  if not holder then
    redis.call('SET', keys[1], args[1], 'PX', ttl)
    return 1
  end
  return 0
end

redis.register_function('sale', sale)
redis.register_function('confirm', confirm)
redis.register_function('release', release)
redis.register_function('expire', expire)
redis.register_function{ function_name = 'status', callback = status, flags = { 'no-writes' } }
redis.register_function('lease', lease)
redis.register_function('order_index', order_index)
redis.register_function('cancel_pending', cancel_pending)
