-- purchase_batch of redis-lua/purchase.lua against a real redis-server (database 9):
-- a batch answers exactly what its attempts would get one by one, in order.
local scripts = require 'spec.redis.scripts'
local order_ids = require 'lib.order_ids'

local info = require('redis').command('INFO')
local config = require('redis').command('CONFIG')

describe('purchase_batch', function()
  local r

  before_each(function() r = scripts.setup() end)
  after_each(function() if r then r.client:quit() end r = nil end)

  local cjson = require 'cjson'
  local function copy(t) return cjson.decode(cjson.encode(t)) end
  local run = 0

  -- Answers without what depends on the moment (expiresAt, retryAfterMs: one
  -- call is later than the other by a few ms).
  local function stable(answers)
    for _, a in ipairs(answers) do
      local t = a.code == 'REPLAY' and a.result or a
      t.expiresAt = t.expiresAt and 'at'
      if a.retryAfterMs then
        assert.is_true(a.retryAfterMs >= 1)
        a.retryAfterMs = 'later'
      end
    end
    return answers
  end

  -- What the state of a SKU says, without its name.
  local function summary(sku)
    local s = r.check(sku)
    local res = {}
    for _, id in ipairs(s.pending) do
      local h = r.res(sku, id)
      res[id] = { h.userId, h.orderId, h.quantity, h.status, h.traceId }
    end
    local ev = {}
    for i, e in ipairs(r.events(sku)) do ev[i] = { e.type, e.reservationId, e.userId, e.quantity } end
    return { stock = s.stock, reserved = s.reserved, users = s.users, res = res, events = ev,
      sokeys = r.client:smembers(scripts.keys(sku).sokeys) }
  end

  -- Runs the attempts one by one on SKU 'one' and as one batch on SKU 'all',
  -- both with the same sale (and `before`, done on each); asserts the same
  -- answers and the same resulting state.  Returns the batch's answers.
  local function same_as_one_by_one(sale, attempts, o, before)
    for _, sku in ipairs({ 'one', 'all' }) do
      if sale then r.sale(sku, sale) end
      if before then before(sku) end
    end
    -- the same ids on both SKUs (their keys differ by the SKU), new ones each run
    run = run + 1
    local function ids(list)
      for i, a in ipairs(list) do a.resId, a.orderId = a.resId or (run .. 'res' .. i), a.orderId or (run .. 'ord' .. i) end
      return list
    end
    local seq = {}
    for i, a in ipairs(ids(copy(attempts))) do seq[i] = r.batch('one', { a }, o)[1] end
    local batch = ids(copy(attempts))
    local answers = r.batch('all', batch, o)
    assert.are.equal(#attempts, #answers)
    local raw = copy(answers)
    assert.are.same(stable(seq), stable(answers))
    if sale then
      local one, all = summary('one'), summary('all')
      table.sort(one.sokeys)
      table.sort(all.sokeys)
      assert.are.same(one, all)
    end
    return raw
  end

  local function codes(answers)
    local out = {}
    for i, a in ipairs(answers) do out[i] = a.code end
    return out
  end

  it('answers every outcome in one batch, in order, as one by one', function()
    local a = same_as_one_by_one({ initial = 3, price = '19.9' }, {
      { user = 'u1', key = 'k1', hash = 'h1' },              -- OK
      { user = 'u1', key = 'k1', hash = 'h1' },              -- REPLAY of the first
      { user = 'u2', key = 'k1', hash = 'h1' },              -- another user's key
      { user = 'u1', key = 'k1', hash = 'other' },           -- another body
      { user = 'u1', quantity = 2 },                         -- limit 2, holds 1
      { user = 'u3', quantity = 2, key = 'k3' },             -- OK, the last two
      { user = 'u4', key = 'k4' },                           -- nothing left
      { user = 'u5' }, { user = 'u5' }, { user = 'u5' },     -- a bucket of 2
    }, { perUserLimit = 2, rlCapacity = 2, rlRate = 0.001 })
    assert.are.same({ 'OK', 'REPLAY', 'IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_MISMATCH', 'LIMIT_EXCEEDED',
      'OK', 'SOLD_OUT', 'SOLD_OUT', 'SOLD_OUT', 'RATE_LIMITED' }, codes(a))
    assert.are.same(a[1], a[2].result)
    assert.are.same({ code = 'OK', reservationId = a[1].reservationId, orderId = a[1].orderId, quantity = 1, remaining = 2,
      unitPrice = 19.9, expiresAt = a[1].expiresAt }, a[1])
    assert.are.same({ code = 'LIMIT_EXCEEDED', limit = 2, held = 1 }, a[5])
    assert.are.equal(0, a[6].remaining)
    assert.are.same({ code = 'SOLD_OUT', remaining = 0 }, a[7])
    assert.is_true(a[10].retryAfterMs > 990000)
    -- the stored answers: the batch's first OK, its SOLD_OUT, as one by one
    assert.are.same({ code = 'REPLAY', result = a[7] }, r.purchase('all', 'u4', { key = 'k4' }))
  end)

  it('answers NO_SALE, NOT_STARTED and ENDED for a whole batch as one by one', function()
    local attempts = { { user = 'u1', key = 'a' }, { user = 'u2' }, { user = 'u1', key = 'a' } }
    assert.are.same({ 'NO_SALE', 'NO_SALE', 'NO_SALE' }, codes(same_as_one_by_one(nil, attempts)))
    assert.are.same({}, r.client:keys('*'))  -- unknown SKUs leave nothing behind

    local later = r.now() + 60000
    local a = same_as_one_by_one({ initial = 5, startsAt = later }, attempts, { rlCapacity = 1, rlRate = 0.001 })
    -- not stored: the same key is evaluated again, and takes a token again
    assert.are.same({ 'NOT_STARTED', 'NOT_STARTED', 'RATE_LIMITED' }, codes(a))
    assert.are.equal(later, a[1].startsAt)

    local ended = r.now() - 1
    for _, sku in ipairs({ 'one', 'all' }) do r.client:hset(scripts.keys(sku).sale, 'startsAt', '0', 'endsAt', tostring(ended)) end
    a = same_as_one_by_one(nil, attempts, { rlCapacity = 0 })
    -- stored: the second attempt with key a replays it
    assert.are.same({ 'ENDED', 'ENDED', 'REPLAY' }, codes(a))
    assert.are.same(a[1], a[3].result)
    for _, sku in ipairs({ 'one', 'all' }) do r.check(sku) end
  end)

  it('lets the stock run out inside a batch, quantities and all', function()
    local a = same_as_one_by_one({ initial = 5 }, {
      { user = 'a', quantity = 2 }, { user = 'b', quantity = 2 }, { user = 'c', quantity = 2 },
      { user = 'd', quantity = 1 }, { user = 'e', quantity = 1 },
    }, { perUserLimit = 0 })
    assert.are.same({ 'OK', 'OK', 'SOLD_OUT', 'OK', 'SOLD_OUT' }, codes(a))
    assert.are.same({ 3, 1, nil, 0, nil }, { a[1].remaining, a[2].remaining, nil, a[4].remaining })
    assert.are.equal(1, a[3].remaining)
    assert.are.equal(0, a[5].remaining)
    local s = r.check('all')
    assert.are.same({ stock = 0, reserved = 5 }, { stock = s.stock, reserved = s.reserved })
  end)

  it('replays and refuses duplicate idempotency keys within a batch', function()
    local a = same_as_one_by_one({ initial = 1 }, {
      { user = 'u1', key = 'k', hash = 'h' },       -- OK
      { user = 'u2', key = 'z' },                   -- SOLD_OUT, stored
      { user = 'u2', key = 'z' },                   -- its replay
      { user = 'u3', key = 'k', hash = 'h' },       -- someone else's key
      { user = 'u1', key = 'k', hash = 'h' },       -- the first again
      { user = 'u1', key = 'k', hash = 'h2' },      -- the first's key, another body
    }, { perUserLimit = 0 })
    assert.are.same({ 'OK', 'SOLD_OUT', 'REPLAY', 'IDEMPOTENCY_KEY_REUSED', 'REPLAY', 'IDEMPOTENCY_MISMATCH' }, codes(a))
    assert.are.same(a[2], a[3].result)
    assert.are.same(a[1], a[5].result)
    assert.are.same({ 'z' }, r.client:smembers(scripts.keys('all').sokeys))
    assert.are.equal(1, #r.events('all'))
  end)

  it('applies the per-user limit and the bucket in order to one user twice', function()
    local a = same_as_one_by_one({ initial = 10 }, {
      { user = 'u1' }, { user = 'u1' }, { user = 'u1' }, { user = 'u2', quantity = 3 },
    }, { perUserLimit = 2, rlCapacity = 0 })
    assert.are.same({ 'OK', 'OK', 'LIMIT_EXCEEDED', 'LIMIT_EXCEEDED' }, codes(a))
    assert.are.same({ code = 'LIMIT_EXCEEDED', limit = 2, held = 2 }, a[3])
    assert.are.same({ code = 'LIMIT_EXCEEDED', limit = 2, held = 0 }, a[4])
    assert.are.same({ u1 = 2 }, r.check('all').users)

    r.client:flushdb()
    a = same_as_one_by_one({ initial = 10 }, {
      { user = 'b' }, { user = 'b' }, { user = 'b' }, { user = 'c' }, { user = 'b' },
    }, { perUserLimit = 0, rlCapacity = 2, rlRate = 0.001 })
    assert.are.same({ 'OK', 'OK', 'RATE_LIMITED', 'OK', 'RATE_LIMITED' }, codes(a))
    local tokens = tonumber(r.user('all', 'b').tokens)
    assert.is_true(tokens >= 0 and tokens < 0.01)
  end)

  it('treats a user key of an earlier sale as empty, and leaves a held count to no TTL', function()
    local a = same_as_one_by_one({ initial = 5 }, { { user = 'u1' } }, { perUserLimit = 1 },
      function(sku)
        -- a count and an empty bucket left by an earlier sale of the SKU
        r.set_user(sku, 'u1', { gen = '1', held = '1', tokens = '0', ts = tostring(r.now()) })
      end)
    assert.are.same({ 'OK' }, codes(a))
    local u = r.user('all', 'u1')
    assert.are.equal(r.client:hget(scripts.keys('all').sale, 'gen'), u.gen)
    assert.are.equal('1', u.held)
    assert.are.equal(-1, r.client:pttl(scripts.keys('all').u('u1')))
  end)

  it('takes 128 attempts in one call, doing the per-SKU work once', function()
    r.sale('all', { initial = 100 })
    local attempts = {}
    for i = 1, 128 do attempts[i] = { user = 'u' .. i, key = 'k' .. i } end
    config(r.client, 'RESETSTAT')
    local a = r.batch('all', attempts, { index = true, ttlSec = 60 })
    local stats = info(r.client, 'commandstats')
    local calls = {}
    for cmd, n in stats:gmatch('cmdstat_([%w|_]+):calls=(%d+)') do calls[cmd] = tonumber(n) end
    -- pexpire: the index hash's NX and GT; pexpireat: the answers' hash and sokeys
    -- (the 28 answered SOLD_OUT, in one SADD)
    -- hincrby: counts' reserved and pending; zadd: the index's one member for the 100
    assert.are.same({ time = 1, hgetall = 1, decrby = 1, hincrby = 2, zadd = 1, sadd = 1, pexpire = 2, exists = 1,
        xadd = 1, pexpireat = 2, get = 1, mget = 1, mset = 1, hmget = 2 },
      { time = calls.time, hgetall = calls.hgetall, decrby = calls.decrby, hincrby = calls.hincrby,
        zadd = calls.zadd, sadd = calls.sadd, pexpire = calls.pexpire, exists = calls.exists, xadd = calls.xadd,
        pexpireat = calls.pexpireat, get = calls.get, mget = calls.mget, mset = calls.mset, hmget = calls.hmget })
    -- read once for the batch: the sale (hgetall), the stock (get), the 128
    -- users (mget), the stored answers of today and yesterday (hmget).  Written: the 100 reservations
    -- and their buyers in one MSET; the 28 refused ones, who hold nothing, each
    -- with the time its bucket is full again (set PXAT); the 128 answers with
    -- one HSET, and the block's one order index entry with another
    assert.are.equal(28, calls.set)
    assert.are.equal(2, calls.hset)
    -- the 100 reservations' events travel in the call's one outbox entry
    assert.are.equal(1, r.entries('all'))
    assert.are.equal(100, #r.events('all'))

    assert.are.equal(128, #a)
    -- the ids are one block's: its first id leads to the SKU, for the TTL and a day
    local block = attempts[1].orderId
    local ik = scripts.index_key(block)
    assert.are.same({ [block] = 'all' }, r.client:hgetall(ik))
    local ttl = r.client:ttl(ik)
    assert.is_true(ttl > 86400 + 55 and ttl <= 86400 + 60)
    for i = 1, 100 do
      assert.are.equal('OK', a[i].code)
      assert.are.equal(100 - i, a[i].remaining)
      -- each order leads to its reservation by construction
      local b, resId = order_ids.locate(a[i].orderId)
      assert.are.equal(block, b)
      assert.are.equal(a[i].reservationId, resId)
      assert.are.equal(a[i].orderId, r.res('all', resId).orderId)
    end
    for i = 101, 128 do
      assert.are.same({ code = 'SOLD_OUT', remaining = 0 }, a[i])
      assert.is_false(r.client:exists(scripts.keys('all').res(attempts[i].resId)))
    end
    local s = r.check('all')
    assert.are.equal(0, s.stock)
    assert.are.equal(100, #s.pending)
    -- the index holds the call's 100 reservations as one member, scored by their expiry
    local index = r.index('all')
    assert.are.equal(1, #index)
    assert.are.same(s.pending, index[1].ids)
    assert.are.equal(a[1].expiresAt, index[1].score)
    assert.are.equal(28, r.client:scard(scripts.keys('all').sokeys))
    -- every attempt stored its final answer
    assert.are.equal('REPLAY', r.purchase('all', 'u128', { key = 'k128' }).code)
  end)

  describe('a malformed batch', function()
    local function unchanged(f, pattern)
      r.sale('all', { initial = 10 })
      assert.are.equal('OK', r.purchase('all', 'old', { resId = 'taken' }).code)
      local before = r.client:dbsize()
      local events = #r.events('all')
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches(pattern, tostring(err))
      assert.are.equal(before, r.client:dbsize())
      assert.are.equal(events, #r.events('all'))
      assert.are.equal(9, r.check('all').stock)
    end
    local function good(n)
      local list = {}
      for i = 1, n do list[i] = { user = 'g' .. i, key = 'gk' .. i } end
      return list
    end

    it('fails whole, with nothing changed, for one bad attempt anywhere', function()
      for _, bad in ipairs({
        { { quantity = 0 }, 'quantity' }, { { quantity = 'x' }, 'quantity' }, { { user = '' }, 'userId' },
        { { resId = '' }, 'reservationId' }, { { orderId = '' }, 'orderId' },
        { { resId = 'taken' }, 'reservationId taken already exists' }, { { resId = 'gk1dup' }, 'appears twice' },
        -- the pending index separates a call's ids with spaces
        { { resId = 'two words' }, 'reservationId two words has a space' },
      }) do
        local list = good(5)
        if bad[1].resId == 'gk1dup' then list[1].resId = 'gk1dup' end
        for k, v in pairs(bad[1]) do list[4][k] = v end
        unchanged(function() r.batch('all', list, { index = true }) end, bad[2])
        r.client:flushdb()
      end
    end)

    it('fails for wrong keys or counts', function()
      unchanged(function()
        local keys, argv = r.batch_args('all', good(3))
        keys[6 + 2 * 2 + 1] = scripts.keys('all').u('someone')
        r.fcall('purchase_batch', keys, argv)
      end, 'KEYS%[11%]')
      r.client:flushdb()
      -- with the index, the first order must be a block's first id
      unchanged(function()
        local keys, argv = r.batch_args('all', good(3), { index = true })
        argv[6 + 6] = '457000000000000001'
        r.fcall('purchase_batch', keys, argv)
      end, 'block start')
      r.client:flushdb()
      unchanged(function()
        local list = good(3)
        list[1].orderId = 'o1'
        local keys, argv = r.batch_args('all', list, { index = true })
        r.fcall('purchase_batch', keys, argv)
      end, 'block start')
      r.client:flushdb()
      unchanged(function()
        local keys, argv = r.batch_args('all', good(3))
        argv[1] = 4
        r.fcall('purchase_batch', keys, argv)
      end, 'keys expected')
      r.client:flushdb()
      unchanged(function()
        local keys, argv = r.batch_args('all', good(2))
        argv[6] = 'yes'
        r.fcall('purchase_batch', keys, argv)
      end, 'index')
    end)
  end)

  describe('stored answers, one hash a day', function()
    local K = scripts.keys('all')
    local DAY = 86400000

    it('replays an answer stored yesterday, and not one of the day before', function()
      r.sale('all', { initial = 10 })
      local first = r.purchase('all', 'u1', { key = 'k1' })
      assert.are.equal('OK', first.code)
      local today, yesterday = r.idem_days('all')
      local day = math.floor(r.now() / DAY)
      local text = r.client:hget(today, 'k1')
      -- the same record as if stored a day earlier
      r.client:del(today)
      r.client:hset(yesterday, 'k1', text)
      local again = r.purchase('all', 'u1', { key = 'k1' })
      assert.are.equal('REPLAY', again.code)
      assert.are.same(first, again.result)
      -- two days earlier: gone by then (its hash has expired), so not read
      r.client:del(yesterday)
      r.client:hset(K.idems(day - 2), 'k1', text)
      local late = r.purchase('all', 'u1', { key = 'k1', perUserLimit = 5 })
      assert.are.equal('OK', late.code)
      assert.are_not.equal(first.reservationId, late.reservationId)
      -- today's hash expires at the end of tomorrow
      local pttl = r.client:pttl(today)
      assert.is_true(pttl > DAY and pttl <= 2 * DAY, tostring(pttl))
      r.check('all')
    end)
  end)

  describe('the order index', function()
    it('never shortens the life of a hash that sales of longer TTLs share', function()
      r.sale('all', { initial = 10, ttlSec = 3600 })
      r.sale('short', { initial = 10, ttlSec = 60 })
      local a1 = r.batch('all', { { user = 'u1' } }, { index = true })[1]
      local a2 = r.batch('short', { { user = 'u1' } }, { index = true })[1]
      assert.are.equal('OK', a1.code)
      assert.are.equal('OK', a2.code)
      local k = scripts.index_key(a1.orderId)
      assert.are.equal(k, scripts.index_key(a2.orderId))
      assert.is_true(r.client:ttl(k) > 86400 + 3500)
      -- each block's entry leads to its own SKU, and the order to its reservation
      local block, resId = order_ids.locate(a2.orderId)
      assert.are.equal('short', r.client:hget(k, block))
      assert.are.equal(a2.orderId, r.res('short', resId).orderId)
    end)

    it('is written by order_index where the host writes it (a cluster), with the same care', function()
      local id = '457000000000123392' -- a block's first id
      local k = scripts.index_key(id)
      assert.are.equal('orderidx:457000', k)
      assert.are.equal(1, r.fcall('order_index', { k }, { id, '7', 120000000 }))
      assert.are.equal(1, r.fcall('order_index', { k }, { '457000000000123648', '8', 1000 }))
      assert.are.equal('7', r.client:hget(k, id))
      assert.is_true(r.client:pttl(k) > 119000000)
      assert.has_error(function() r.fcall('order_index', { 'orderidx:1' }, { id, '7:r1', 1000 }) end)
      assert.has_error(function() r.fcall('order_index', { k }, { id, '', 1000 }) end)
      assert.has_error(function() r.fcall('order_index', { k }, { id, '7:r1', 'soon' }) end)
    end)
  end)
end)
