#!lua name=flashhost
-- The atomic state changes of a flash sale, as one Redis Function library.
-- Loaded with FUNCTION LOAD REPLACE; called with FCALL (FCALL_RO for status).
-- Contract (KEYS, ARGV, answers, events): redis-lua/README.md.
--
-- The library is this file followed by queue.lua (the loader joins them:
-- app/lib/stock.lua LIBRARY_FILES), so the helpers here serve both.
-- Functions here: sale, purchase_batch, confirm, release, expire, cancel_pending,
-- status, lease, order_index;
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

-- x as a command argument: the text Redis would make of the number, precomputed
-- where that text is surely tostring's.  Both print a non-negative integer below
-- 1e14 as its plain digits (tostring keeps 14 significant digits); anything
-- else stays a number, for Redis to format as before.
local function int_arg(x)
  if x % 1 == 0 and x >= 0 and x < 1e14 then return tostring(x) end
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
  return prefix .. 'idems:' .. day, prefix .. 'idems:' .. (day - 1), (day + 2) * IDEM_DAY_MS
end

-- A stored answer (a field of the idems hash) is one text, REC_SEP between
-- its parts: '<gen> <userId> <requestHash> <answer>', where <answer> is the
-- answer's JSON, or for an OK 'OK <quantity> <reservationId> <orderId>
-- <remaining> <expiresAt> <unitPrice>' (each as its JSON text; unitPrice
-- empty when the sale has none), which the replay turns back into the same
-- answer: about 100 bytes where the JSON record took 300, to build, store
-- and append to the file.  Its texts (userId, requestHash, the ids) are in
-- their JSON form, which never holds the byte REC_SEP (cjson escapes every
-- control character), so the parts split back whatever the texts are.  A
-- record of before this form is the JSON object { userId, requestHash, gen,
-- result }, and is read as well.
local REC_SEP = '\31'

-- The JSON text of an OK answer, from its parts (JSON texts; unitPricePart
-- is ',"unitPrice":<n>' or ''), in the key order cjson gave the table it
-- replaces.
local function ok_answer(qtyJson, resJson, unitPricePart, orderJson, remaining, expiresJson)
  return '{"quantity":' .. qtyJson .. ',"reservationId":' .. resJson .. ',"code":"OK"' .. unitPricePart ..
    ',"orderId":' .. orderJson .. ',"remaining":' .. remaining .. ',"expiresAt":' .. expiresJson .. '}'
end

-- stored_record(text) -> { gen, userJson, hashJson (the userId and the
-- requestHash as JSON), result (the answer's JSON) } | nil
local function stored_record(text)
  if string.sub(text, 1, 1) == '{' then
    local r = cjson.decode(text)
    return { gen = r.gen, userJson = cjson.encode(r.userId), hashJson = cjson.encode(r.requestHash),
      result = cjson.encode(r.result) }
  end
  local gen, userJson, hashJson, answer = string.match(text, '^([^\31]*)\31([^\31]*)\31([^\31]*)\31(.*)$')
  if not gen then return nil end -- not a record: as if none were stored
  if string.sub(answer, 1, 3) == 'OK' .. REC_SEP then
    local q, resJson, orderJson, remaining, expires, price =
      string.match(answer, '^OK\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
    answer = ok_answer(q, resJson, price == '' and '' or ',"unitPrice":' .. price, orderJson, remaining, expires)
  end
  return { gen = gen, userJson = userJson, hashJson = hashJson, result = answer }
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

-- A reservation, {sku:S}:res:<id>, is one string: a JSON object whose values
-- are texts (userId, orderId, quantity, unitPrice, status, expiresAt,
-- createdAt, updatedAt, traceId; paymentRef once confirmed), so that
-- purchase_batch writes a batch's reservations in its one MSET.
-- reservation(k) -> fields | nil (no such key, or a value that is no JSON
-- object: read as none rather than raise halfway through a function's writes,
-- and the reconciliation sees the tickets it held).  A reservation of before
-- they were strings is a hash: read as such, and a string from its next save.
local function reservation(k)
  local v = redis.pcall('GET', k)
  if type(v) == 'table' and v.err then return hash(k) end
  if not v then return nil end
  local ok, r = pcall(cjson.decode, v)
  if ok and type(r) == 'table' then return r end
  return nil
end

-- A reservation that left PENDING is kept a day more (RES_KEEP_MS).
local function save_finished(k, r)
  redis.call('SET', k, cjson.encode(r), 'PX', RES_KEEP_MS)
end

-- The order index: order id -> '<skuId>:<reservationId>', so the order routes
-- find a reservation from an order id.  The ids of a few minutes share one
-- hash (ids are time-ordered snowflakes: all digits but the last 12, some 4
-- minutes of ids), written by a batch with one HSET: no key, expiry and write
-- per purchase.  The host names the same hash: app/lib/stock.lua index_key.
local function index_key(orderId)
  return 'orderidx:' .. string.sub(orderId, 1, -13)
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

-- ---- purchase_batch ------------------------------------------------------------------

-- KEYS: 1 sale, 2 stock, 3 counts, 4 pending, 5 outbox, 6 sokeys, then per attempt
--       u:<userId>, res:<reservationId>; then, when ARGV[6] is '1', per attempt the
--       order index hash of its orderId (index_key)
-- (The stored answers' hashes, idems:<day>, are named from Redis's clock here:
-- the SKU's slot, as the declared keys.)
-- ARGV: 1 n, 2 perUserLimit, 3 ttlSec, 4 rlCapacity, 5 rlRate, 6 index ('1' | '0'),
--       then per attempt: userId, quantity, idempotencyKey, requestHash, reservationId,
--       orderId, traceId
-- Answer: a JSON array, element i the answer of attempt i: exactly what the
-- attempts would get one by one, in order, with the per-SKU reads and writes
-- done once for the batch.
local function purchase_batch(keys, args)
  -- what runs per attempt, read from the globals once per call (each global
  -- read goes through the function's environment)
  local encode, find, format = cjson.encode, string.find, string.format
  local c = context('purchase_batch', keys, args)
  local n = c.int(args[1], 'n (ARGV[1])', 1)
  if args[6] ~= '1' and args[6] ~= '0' then c.fail("index (ARGV[6]) must be '1' or '0'") end
  local index = args[6] == '1'
  local nkeys = 6 + (index and 3 or 2) * n
  if #keys ~= nkeys then c.fail(nkeys .. ' keys expected for ' .. n .. ' attempts, got ' .. #keys) end
  if #args ~= 6 + 7 * n then c.fail((6 + 7 * n) .. ' arguments expected for ' .. n .. ' attempts, got ' .. #args) end
  local saleKey, stockKey, countsKey = c.key(1, 'sale'), c.key(2, 'stock'), c.key(3, 'counts')
  local pendingKey, outboxKey, soKeysKey = c.key(4, 'pending'), c.key(5, 'outbox'), c.key(6, 'sokeys')
  local prefix = c.prefix

  -- Every attempt is checked before anything is written: a bad one fails the call.
  -- Attempt i's arguments are ARGV[a + 1..7] and its keys KEYS[k + 1..2] (a, k
  -- below), read from there: no table per attempt.
  local qtys, seen, resKeys, qtyOf = {}, {}, {}, {}
  local idemList, idemSeen = {}, {}   -- the distinct idempotency keys, in order
  local userKeys, userSeen = {}, {}   -- the distinct user keys, in order
  for i = 1, n do
    local a, k = 6 + (i - 1) * 7, 6 + (i - 1) * 2
    local userId = c.text(a + 1, 'userId')
    -- the usual case checked without building c.int's label (a number to
    -- format), and once per distinct text
    local qtext = args[a + 2]
    local qty = qtyOf[qtext]
    if not qty then
      qty = tonumber(qtext)
      if not qty or qty ~= qty or qty == math.huge or qty < 1 or qty % 1 ~= 0 then
        qty = c.int(qtext, 'quantity (ARGV[' .. (a + 2) .. '])', 1)
      end
      qtyOf[qtext] = qty
    end
    local resId = c.text(a + 5, 'reservationId')
    local orderId = c.text(a + 6, 'orderId')
    if keys[k + 1] ~= prefix .. 'u:' .. userId then c.key(k + 1, 'u:' .. userId) end
    if keys[k + 2] ~= prefix .. 'res:' .. resId then c.key(k + 2, 'res:' .. resId) end
    if index then
      local ik = 6 + 2 * n + i
      if keys[ik] ~= index_key(orderId) then c.fail('KEYS[' .. ik .. '] must be ' .. index_key(orderId)) end
    end
    if seen[resId] then c.fail('reservationId ' .. resId .. ' appears twice') end
    if find(resId, PENDING_SEP, 1, true) then c.fail('reservationId ' .. resId .. ' has a space') end
    seen[resId] = true
    qtys[i], resKeys[i] = qty, keys[k + 2]
    local idem = args[a + 3]
    if idem ~= '' and not idemSeen[idem] then idemSeen[idem] = true; idemList[#idemList + 1] = idem end
    local uk = keys[k + 1]
    if not userSeen[uk] then userSeen[uk] = true; userKeys[#userKeys + 1] = uk end
  end
  if redis.call('EXISTS', unpack(resKeys)) > 0 then
    for i = 1, n do
      if redis.call('EXISTS', resKeys[i]) == 1 then
        c.fail('reservationId ' .. args[6 + (i - 1) * 7 + 5] .. ' already exists')
      end
    end
  end

  local now = now_ms()
  local sale = hash(saleKey) or {}
  local limit = c.int(sale.perUserLimit or args[2], 'perUserLimit', 0)
  local ttlSec = c.num(sale.ttlSec or args[3], 'ttlSec', 0)
  local rlCap = c.num(sale.rlCapacity or args[4], 'rlCapacity', 0)
  local rlRate = c.num(sale.rlRate or args[5], 'rlRate', 0)
  if rlCap > 0 and rlRate <= 0 then c.fail('rlRate must be > 0 when rlCapacity > 0') end
  local gen, price = sale.gen, sale.price
  local startsAt, endsAt = tonumber(sale.startsAt) or 0, tonumber(sale.endsAt) or 0
  local queued = sale.queue == '1'
  local expiresAt = now + math.floor(ttlSec * 1000)
  -- The same texts for every attempt of the batch, formatted once: each
  -- tostring of a number, each number argument of redis.call and each number
  -- cjson.encode writes is a float formatting.
  local nowText, expiresText = tostring(now), tostring(expiresAt)
  local expiresArg = int_arg(expiresAt)
  local indexPx = int_arg(math.floor((ttlSec + INDEX_KEEP_SEC) * 1000))
  local idemToday, idemYesterday, idemExpireAt = idem_days(prefix, now)
  local unitPrice = tonumber(price)
  -- JSON pieces of the stored records and events (strings: cjson.encode never raises)
  local skuJson, priceJson = cjson.encode(c.sku), cjson.encode(price)
  local nowTextJson, expiresTextJson = cjson.encode(nowText), cjson.encode(expiresText)
  -- Those of the OK answer (numbers) are made at the first OK: there, where
  -- the answer was encoded whole before, as a number cjson cannot write raises.
  local unitPriceJson, unitPricePart, expiresJson
  local qtyTexts = {}              -- quantity -> { tostring, as JSON string, as JSON number }
  local intTexts = {}              -- int_text's memo
  -- A bucket refilled in this call is full again at the same time for every user.
  local fullAt = rlCap > 0 and now + math.ceil(rlCap * 1000 / rlRate)
  local fullAtText, fullAtArg = fullAt and tostring(fullAt), fullAt and int_arg(fullAt)

  -- What the attempts read and change, kept here across the batch: a later
  -- attempt sees what an earlier one did, as it would one call later.
  local stock                      -- read when an attempt first needs it
  local users, userOrder = {}, {}  -- userKey -> { held, tokens, ts, fullAt, ... }
  local userText = {}              -- userKey -> its key's text, as read (absent: no key)
  local idems = {}                 -- idempotency key -> stored record text, as read (absent: none)
  local stored = {}                -- idempotency key -> i: attempt i of this call stored its answer
  -- events: the reserved message's rows, after its head (events[1], made last)
  local taken, made, soKeys, events = 0, {}, {}, { false }
  local idemWrites = {}            -- HSET arguments of the answers stored by this call
  local indexWrites = {}           -- index hash -> its HSET arguments
  local answers = {}               -- i -> attempt i's answer (JSON text)
  local mset = {}                  -- MSET arguments: the new reservations, then the users who hold tickets

  -- Every stored answer the batch may replay, in one read per day's hash.
  if #idemList > 0 then
    local t, y = redis.call('HMGET', idemToday, unpack(idemList)), redis.call('HMGET', idemYesterday, unpack(idemList))
    for j = 1, #idemList do
      local raw = t[j] or y[j]
      if raw then idems[idemList[j]] = raw end
    end
  end

  -- Every user of the batch in one read (a sale must exist for any to be asked).
  if gen then
    local v = redis.call('MGET', unpack(userKeys))
    for j = 1, #userKeys do
      if v[j] then userText[userKeys[j]] = v[j] end
    end
  end

  -- A user's state, from the text read; a key of another sale generation
  -- counts as empty.
  local function user(k)
    local u = users[k]
    if u then return u end
    local v = userText[k]
    local g, held, tokens, ts, fa
    if v then g, held, tokens, ts, fa = user_fields(v) end
    if g == gen then
      -- (tokensText and dirty, set later, are named here too: the table is
      -- made with room for them instead of growing twice)
      u = { held = tonumber(held) or 0, tokens = tonumber(tokens), ts = tonumber(ts), fullAt = tonumber(fa),
        tokensText = nil, dirty = nil }
    else
      u = { held = 0, tokens = nil, tokensText = nil, ts = nil, fullAt = nil, dirty = nil }
    end
    users[k], userOrder[#userOrder + 1] = u, k
    return u
  end

  -- Answers that are final for this request are stored, so a retry gets them back.
  -- The keys whose stored answer is SOLD_OUT join sokeys: a worker that answers
  -- a sold-out SKU from memory sends every other stored key to Redis (the
  -- answers' fields less sokeys), so their retries get their own stored answer
  -- (a 200, a 403) back.  SOLD_OUT is stored at the stock's end only, where a
  -- set of every other answer cost a member per purchase.
  -- text (attempt i's answer, encoded once) is both the stored record's result
  -- and the attempt's element of the call's answer; okBody, an OK's compact
  -- form (see REC_SEP), is stored in its place.  userJson: the userId as JSON
  -- when the caller has it.
  local function final(i, text, soldOut, okBody, userJson)
    local a = 6 + (i - 1) * 7
    local idem = args[a + 3]
    if idem ~= '' then
      idemWrites[#idemWrites + 1] = idem
      idemWrites[#idemWrites + 1] = gen .. REC_SEP .. (userJson or encode(args[a + 1])) .. REC_SEP ..
        encode(args[a + 4]) .. REC_SEP .. (okBody or text)
      stored[idem] = i
      if soldOut then soKeys[#soKeys + 1] = idem end
    end
    return text
  end

  local function attempt(i)
    local a, k = 6 + (i - 1) * 7, 6 + (i - 1) * 2
    local userId, qty, idem = args[a + 1], qtys[i], args[a + 3]
    -- 1. Idempotency: a stored answer of this sale generation is the answer.
    if idem ~= '' then
      local j = stored[idem]
      if j then
        -- stored by attempt j of this call, of this generation: its record is
        -- attempt j's userId, requestHash and answer
        local b = 6 + (j - 1) * 7
        if args[b + 1] ~= userId then return '{"code":"IDEMPOTENCY_KEY_REUSED"}' end
        if args[b + 4] ~= args[a + 4] then return '{"code":"IDEMPOTENCY_MISMATCH"}' end
        return '{"result":' .. answers[j] .. ',"code":"REPLAY"}'
      end
      local rec = idems[idem]
      if type(rec) == 'string' then rec = stored_record(rec); idems[idem] = rec end
      if rec and rec.gen == gen then
        if rec.userJson ~= encode(userId) then return '{"code":"IDEMPOTENCY_KEY_REUSED"}' end
        if rec.hashJson ~= encode(args[a + 4]) then return '{"code":"IDEMPOTENCY_MISMATCH"}' end
        return '{"result":' .. rec.result .. ',"code":"REPLAY"}'
      end
    end

    -- 2. No sale: not stored, so unknown SKUs leave nothing behind.
    if not gen then return '{"code":"NO_SALE"}' end

    -- 2b. A queued sale sells only under a queue token's key (see QUEUE_IDEM_PREFIX);
    -- not stored: the same attempt with a token may follow.
    if queued and string.sub(idem, 1, #QUEUE_IDEM_PREFIX) ~= QUEUE_IDEM_PREFIX then
      return '{"code":"QUEUE_TOKEN_REQUIRED"}'
    end

    -- 3. Token bucket: every attempt on a sale takes a token, refusals included.
    local u = user(keys[k + 1])
    if rlCap > 0 then
      local tokens, ts = u.tokens or rlCap, u.ts or now
      tokens = math.min(rlCap, tokens + math.max(0, now - ts) * rlRate / 1000)
      if tokens < 1 then
        return cjson.encode({ code = 'RATE_LIMITED', retryAfterMs = math.ceil((1 - tokens) * 1000 / rlRate) })
      end
      -- as stored and read back: the next attempt of this user sees the same number
      local left, exact = int_text(tokens - 1, intTexts)
      u.tokens, u.tokensText, u.ts = exact and tokens - 1 or tonumber(left), left, now
      u.fullAt = fullAt
      u.dirty = true
    end

    -- 4. Sale window. NOT_STARTED is not stored: the same request must succeed once the sale opens.
    if now < startsAt then return cjson.encode({ code = 'NOT_STARTED', startsAt = startsAt }) end
    if endsAt > 0 and now >= endsAt then return final(i, cjson.encode({ code = 'ENDED', endsAt = endsAt })) end

    -- 5. Per-user limit (0 = none) over tickets held: pending and confirmed.
    if limit > 0 and u.held + qty > limit then
      return final(i, cjson.encode({ code = 'LIMIT_EXCEEDED', limit = limit, held = u.held }))
    end

    -- 6. Stock.
    if not stock then stock = tonumber(redis.call('GET', stockKey)) or 0 end
    if stock < qty then return final(i, cjson.encode({ code = 'SOLD_OUT', remaining = stock }), true) end

    -- 7. Reserve: the per-attempt writes now, the per-SKU ones once after the loop.
    stock, taken = stock - qty, taken + qty
    u.held, u.dirty = u.held + qty, true
    local qt = qtyTexts[qty]
    if not qt then
      local q = tostring(qty)
      qt = { q, cjson.encode(q), cjson.encode(qty) }
      qtyTexts[qty] = qt
    end
    local resId, orderId, traceId = args[a + 5], args[a + 6], args[a + 7]
    -- The reservation, the event and the answer are written as JSON text from
    -- their pieces (ids escaped by cjson.encode as any string); the event and
    -- the answer in the key order cjson gave the tables they replace: the same text.
    local resJson, orderJson, userJson, traceJson = encode(resId), encode(orderId), encode(userId), encode(traceId)
    mset[#mset + 1] = keys[k + 2]
    mset[#mset + 1] = '{"userId":' .. userJson .. ',"orderId":' .. orderJson .. ',"quantity":' .. qt[2] ..
      ',"unitPrice":' .. priceJson .. ',"status":"PENDING","expiresAt":' .. expiresTextJson .. ',"createdAt":' ..
      nowTextJson .. ',"updatedAt":' .. nowTextJson .. ',"traceId":' .. traceJson .. '}'
    -- its row of the call's reserved message (the fields it shares with the others once there)
    events[#events + 1] = (#events > 1 and ',[' or '[') .. resJson .. ',' .. orderJson .. ',' .. userJson .. ',' ..
      qt[2] .. ',' .. traceJson .. ']'
    made[#made + 1] = resId
    if index then
      local ik = keys[6 + 2 * n + i]
      local w = indexWrites[ik]
      if not w then w = {}; indexWrites[ik] = w; indexWrites[#indexWrites + 1] = ik end
      w[#w + 1] = orderId
      w[#w + 1] = c.sku .. ':' .. resId
    end
    if not expiresJson then
      unitPriceJson = unitPrice == nil and '' or cjson.encode(unitPrice)
      unitPricePart = unitPrice == nil and '' or ',"unitPrice":' .. unitPriceJson
      expiresJson = cjson.encode(expiresAt)
    end
    -- remaining: an integer printed as an integer (cheaper than a float
    -- formatting, and the same digits below 1e14); anything else by cjson
    local remaining = (stock >= 1 and stock < 1e14 and stock % 1 == 0) and format('%d', stock) or encode(stock)
    local okBody = idem ~= '' and 'OK' .. REC_SEP .. qt[3] .. REC_SEP .. resJson .. REC_SEP .. orderJson .. REC_SEP ..
      remaining .. REC_SEP .. expiresJson .. REC_SEP .. unitPriceJson
    return final(i, ok_answer(qt[3], resJson, unitPricePart, orderJson, remaining, expiresJson), false, okBody or nil,
      userJson)
  end

  for i = 1, n do answers[i] = attempt(i) end

  if taken > 0 then
    redis.call('DECRBY', stockKey, taken)
    redis.call('HINCRBY', countsKey, 'reserved', taken)
    redis.call('HINCRBY', countsKey, 'pending', #made)
    redis.call('ZADD', pendingKey, expiresArg, table.concat(made, PENDING_SEP))
    -- One outbox entry for the call's reservations, which the relay sends as
    -- one Kafka message: its `events` field is a JSON object of what the
    -- reserved events share (skuId, ts, unitPrice, expiresAt, status) and
    -- one row [reservationId, orderId, userId, quantity, traceId] each, all
    -- texts (lib/order_events.lua expand makes the events of it).  One entry
    -- to append, read, acknowledge, delete and send, instead of one per
    -- ticket sold, and the shared fields written once.
    events[1] = '{"type":"reserved","skuId":' .. skuJson .. ',"ts":' .. nowTextJson .. ',"unitPrice":' .. priceJson ..
      ',"status":"PENDING","expiresAt":' .. expiresTextJson .. ',"rows":['
    events[#events + 1] = ']}'
    redis.call('XADD', outboxKey, '*', 'type', 'reserved', 'events', table.concat(events))
  end
  if #idemWrites > 0 then
    redis.call('HSET', idemToday, unpack(idemWrites))
    -- the same time all day: set by the day's first call (NX), which alone
    -- then reaches the append-only file
    redis.call('PEXPIREAT', idemToday, int_arg(idemExpireAt), 'NX')
  end
  if #soKeys > 0 then
    -- as long as the newest answer it names (today's hash)
    redis.call('SADD', soKeysKey, unpack(soKeys))
    redis.call('PEXPIREAT', soKeysKey, int_arg(idemExpireAt))
  end
  for _, ik in ipairs(indexWrites) do
    redis.call('HSET', ik, unpack(indexWrites[ik]))
    keep_index(ik, indexPx)
  end
  -- The users changed: those who hold tickets join the reservations in the
  -- one MSET (which also drops any TTL: held tickets must never expire); one
  -- who holds nothing keeps only its bucket, until the bucket is full again.
  for _, k in ipairs(userOrder) do
    local u = users[k]
    if u.dirty then
      local v = gen .. '|' .. int_text(u.held, intTexts) .. '|'
      if not u.tokens then
        v = v .. '||'
      elseif u.tokensText then
        -- the bucket was taken from in this call: its texts are at hand
        v = v .. u.tokensText .. '|' .. nowText .. '|' .. fullAtText
      else
        v = v .. tostring(u.tokens) .. '|' .. tostring(u.ts) .. '|' .. tostring(u.fullAt)
      end
      if u.held > 0 then
        mset[#mset + 1] = k
        mset[#mset + 1] = v
      else
        redis.call('SET', k, v, 'PXAT', u.tokensText and fullAtArg or u.fullAt)
      end
    end
  end
  if #mset > 0 then redis.call('MSET', unpack(mset)) end
  -- the answers as one JSON array, made in one piece
  answers[1] = '[' .. answers[1]
  answers[n] = answers[n] .. ']'
  return table.concat(answers, ',')
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
redis.register_function('purchase_batch', purchase_batch)
redis.register_function('confirm', confirm)
redis.register_function('release', release)
redis.register_function('expire', expire)
redis.register_function{ function_name = 'status', callback = status, flags = { 'no-writes' } }
redis.register_function('lease', lease)
redis.register_function('order_index', order_index)
redis.register_function('cancel_pending', cancel_pending)
