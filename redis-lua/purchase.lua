-- purchase_batch, part of the Function library `flashhost`: the loader
-- appends this file to flashhost.lua (app/lib/stock.lua LIBRARY_FILES), so
-- the helpers defined there (context, now_ms, idem_days, index_key, ...) are
-- in scope here.  It is not a library of its own and does not load alone.
--
-- ---- stored answers ------------------------------------------------------------------

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

-- The JSON text of the OK answer an OK's compact form ('OK <quantity> ...') stands for.
local function ok_from_body(body)
  local q, resJson, orderJson, remaining, expires, price =
    string.match(body, '^OK\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
  return ok_answer(q, resJson, price == '' and '' or ',"unitPrice":' .. price, orderJson, remaining, expires)
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
  if string.sub(answer, 1, 3) == 'OK' .. REC_SEP then answer = ok_from_body(answer) end
  return { gen = gen, userJson = userJson, hashJson = hashJson, result = answer }
end

-- ---- purchase_batch ------------------------------------------------------------------

-- KEYS: 1 sale, 2 stock, 3 counts, 4 pending, 5 outbox, 6 sokeys, then per attempt
--       u:<userId>, res:<reservationId>
-- (Named here, not declared: the stored answers' hashes, idems:<day>, from
-- Redis's clock, in the SKU's slot as the declared keys; and with index '1'
-- the order index hash, from the first orderId: one Redis only.)
-- ARGV: 1 n, 2 perUserLimit, 3 ttlSec, 4 rlCapacity, 5 rlRate, 6 index ('1' | '0'),
--       then per attempt: userId, quantity, idempotencyKey, requestHash, reservationId,
--       orderId, traceId
-- index '1': the ids are those of one block (app/lib/order_ids.lua: attempt i's
-- orderId is the block's first id + i - 1, its reservationId that + 128), and
-- the call writes the block's one order index entry, block -> SKU.
-- Answer: a JSON array: first what the OK answers share, {expiresAt,
-- unitPrice} ({} when none is OK), then element i + 1 the answer of attempt i:
-- exactly what the attempts would get one by one, in order, with the per-SKU
-- reads and writes done once for the batch.  An OK is its `remaining` alone
-- (a JSON number): the caller has its quantity and ids, and the OK answer is
-- those with the shared fields; every other answer is its JSON object.
local function purchase_batch(keys, args)
  -- what runs per attempt, read from the globals once per call (each global
  -- read goes through the function's environment)
  local encode, find, format = cjson.encode, string.find, string.format
  local c = context('purchase_batch', keys, args)
  local n = c.int(args[1], 'n (ARGV[1])', 1)
  if args[6] ~= '1' and args[6] ~= '0' then c.fail("index (ARGV[6]) must be '1' or '0'") end
  local index = args[6] == '1'
  local nkeys = 6 + 2 * n
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
    if seen[resId] then c.fail('reservationId ' .. resId .. ' appears twice') end
    if find(resId, PENDING_SEP, 1, true) then c.fail('reservationId ' .. resId .. ' has a space') end
    seen[resId] = true
    qtys[i], resKeys[i] = qty, keys[k + 2]
    local idem = args[a + 3]
    if idem ~= '' and not idemSeen[idem] then idemSeen[idem] = true; idemList[#idemList + 1] = idem end
    local uk = keys[k + 1]
    if not userSeen[uk] then userSeen[uk] = true; userKeys[#userKeys + 1] = uk end
  end
  -- the block's first id: the first order's (its check is the caller's promise's
  -- cheap part: the index entry names the block from it)
  local block = index and args[6 + 6]
  if block and (n > BLOCK_ATTEMPTS or not is_block_start(block)) then
    c.fail('index 1 needs at most ' .. BLOCK_ATTEMPTS .. ' attempts and the first orderId a block start, got ' .. block)
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
  local intTexts = {}              -- int_text's memo
  local nowText, expiresText = int_text(now, intTexts), int_text(expiresAt, intTexts)
  local expiresArg = int_arg(expiresAt)
  local idemToday, idemYesterday, idemExpireAt = idem_days(prefix, now)
  local unitPrice = tonumber(price)
  -- JSON pieces of the stored records and events (strings: cjson.encode never raises)
  local skuJson, priceJson = cjson.encode(c.sku), cjson.encode(price)
  local nowTextJson, expiresTextJson = cjson.encode(nowText), cjson.encode(expiresText)
  -- a compact reservation's fields after its quantity, up to its traceId: the same for the batch
  local resTail = RES_SEP .. (price or '') .. RES_SEP .. expiresText .. RES_SEP .. nowText .. RES_SEP
  -- Those of the OK answer (numbers) are made at the first OK: there, where
  -- the answer was encoded whole before, as a number cjson cannot write raises.
  local unitPriceJson, unitPricePart, expiresJson
  local qtyTexts = {}              -- quantity -> { tostring, as JSON string, as JSON number }
  -- A bucket refilled in this call is full again at the same time for every user.
  local fullAt = rlCap > 0 and now + math.ceil(rlCap * 1000 / rlRate)
  local fullAtText, fullAtArg = fullAt and int_text(fullAt, intTexts), fullAt and int_arg(fullAt)

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
  local answers = {}               -- i -> attempt i's element of the call's answer (JSON text)
  local okBodies = {}              -- i -> the compact form of attempt i's OK, when stored
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
  -- form (see REC_SEP; false: none), is stored in its place.  userJson: the userId as JSON
  -- when the caller has it.
  local function final(i, text, soldOut, okBody, userJson)
    local a = 6 + (i - 1) * 7
    local idem = args[a + 3]
    if idem ~= '' then
      idemWrites[#idemWrites + 1] = idem
      idemWrites[#idemWrites + 1] = gen .. REC_SEP .. (userJson or encode(args[a + 1])) .. REC_SEP ..
        encode(args[a + 4]) .. REC_SEP .. (okBody or text)
      stored[idem] = i
      if okBody then okBodies[i] = okBody end
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
        return '{"result":' .. (okBodies[j] and ok_from_body(okBodies[j]) or answers[j]) .. ',"code":"REPLAY"}'
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
    -- The reservation (compact, see RES_SEP) and the event are written from
    -- their pieces (ids escaped by cjson.encode as any string); the event in
    -- the key order cjson gave the table it replaces: the same text.
    local resJson, orderJson, userJson, traceJson = encode(resId), encode(orderId), encode(userId), encode(traceId)
    mset[#mset + 1] = keys[k + 2]
    mset[#mset + 1] = 'P' .. RES_SEP .. userJson .. RES_SEP .. orderJson .. RES_SEP .. qt[1] .. resTail .. traceJson
    -- its row of the call's reserved message (the fields it shares with the others once there)
    events[#events + 1] = (#events > 1 and ',[' or '[') .. resJson .. ',' .. orderJson .. ',' .. userJson .. ',' ..
      qt[2] .. ',' .. traceJson .. ']'
    made[#made + 1] = resId
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
    return final(i, remaining, false, okBody, userJson)
  end

  for i = 1, n do answers[i] = attempt(i) end

  if taken > 0 then
    local takenArg = int_arg(taken)
    redis.call('DECRBY', stockKey, takenArg)
    redis.call('HINCRBY', countsKey, 'reserved', takenArg)
    redis.call('HINCRBY', countsKey, 'pending', int_arg(#made))
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
  if block and #made > 0 then
    local ik = index_key(block)
    redis.call('HSET', ik, block, c.sku)
    keep_index(ik, int_arg(math.floor((ttlSec + INDEX_KEEP_SEC) * 1000)))
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
  -- the answers as one JSON array, made in one piece, after what the OKs share
  local shared = expiresJson and '[{"expiresAt":' .. expiresJson .. unitPricePart .. '},' or '[{},'
  answers[1] = shared .. answers[1]
  answers[n] = answers[n] .. ']'
  return table.concat(answers, ',')
end

redis.register_function('purchase_batch', purchase_batch)
