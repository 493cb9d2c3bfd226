-- One purchase attempt (purchase_batch with n = 1) of redis-lua/purchase.lua
-- against a real redis-server (database 9).  Batches: batch_spec.lua.
local scripts = require 'spec.redis.scripts'
local cjson = require "cjson"

describe('purchase', function()
  local r, S, K

  before_each(function()
    r = scripts.setup()
    S = '42'
    K = scripts.keys(S)
  end)

  after_each(function() if r then r.client:quit() end r = nil end)

  describe('a successful purchase', function()
    it('reserves: stock, counts, user, reservation, pending index, one reserved event', function()
      r.sale(S, { initial = 5, price = '19.99' })
      local before = r.now()
      local a = r.purchase(S, 'u1', { quantity = 1, resId = 'res1', orderId = 'ord1', traceId = 'tr1', ttlSec = 300 })
      assert.are.equal('OK', a.code)
      assert.are.equal('res1', a.reservationId)
      assert.are.equal('ord1', a.orderId)
      assert.are.equal(1, a.quantity)
      assert.are.equal(4, a.remaining)
      assert.are.equal(19.99, a.unitPrice)
      assert.is_true(a.expiresAt >= before + 300000 and a.expiresAt <= r.now() + 300000)

      local s = r.check(S)
      assert.are.same({ stock = 4, reserved = 1, sold = 0 }, { stock = s.stock, reserved = s.reserved, sold = s.sold })
      assert.are.same({ u1 = 1 }, s.users)
      assert.are.same({ 'res1' }, s.pending)
      assert.are.equal(a.expiresAt, tonumber(r.client:zscore(K.pending, 'res1')))

      local res = r.res(S, 'res1')
      assert.are.same({ userId = 'u1', orderId = 'ord1', quantity = '1', unitPrice = '19.99', status = 'PENDING',
        expiresAt = tostring(a.expiresAt), traceId = 'tr1' },
        { userId = res.userId, orderId = res.orderId, quantity = res.quantity, unitPrice = res.unitPrice,
          status = res.status, expiresAt = res.expiresAt, traceId = res.traceId })
      assert.is_truthy(tonumber(res.createdAt))
      assert.are.equal(-1, r.client:pttl(K.res('res1')))  -- a pending reservation never vanishes by itself

      local ev = r.events(S)
      assert.are.equal(1, #ev)
      assert.are.same({ type = 'reserved', eventId = 'res1:reserved', reservationId = 'res1', orderId = 'ord1',
        userId = 'u1', skuId = '42', quantity = '1', unitPrice = '19.99', status = 'PENDING',
        expiresAt = tostring(a.expiresAt), ts = res.createdAt, traceId = 'tr1', id = ev[1].id }, ev[1])
    end)

    it('never oversells: stock 3, fifty buyers, exactly 3 OK', function()
      r.sale(S, { initial = 3 })
      local ok, soldOut = 0, 0
      for i = 1, 50 do
        local a = r.purchase(S, 'user' .. i)
        if a.code == 'OK' then ok = ok + 1 elseif a.code == 'SOLD_OUT' then soldOut = soldOut + 1 end
        r.check(S)
      end
      assert.are.equal(3, ok)
      assert.are.equal(47, soldOut)
      assert.are.equal(0, r.check(S).stock)
      assert.are.equal(3, #r.events(S))
    end)

    it('never oversells with buyers racing from four processes at once', function()
      r.sale(S, { initial = 3 })
      local child = os.tmpname()
      local f = assert(io.open(child, 'w'))
      f:write([[
        local w = ...
        package.path = './?.lua;./app/?.lua;' .. package.path
        local api = require('spec.redis.scripts').setup({ flush = false })
        local ok = 0
        for i = 1, 25 do
          local a = api.purchase('42', 'w' .. w .. 'u' .. i, { resId = 'w' .. w .. 'r' .. i })
          if a.code == 'OK' then ok = ok + 1 end
        end
        io.write(ok)
      ]])
      f:close()
      local procs, ok = {}, 0
      for w = 1, 4 do procs[w] = assert(io.popen('luajit ' .. child .. ' ' .. w)) end
      for w = 1, 4 do
        ok = ok + assert(tonumber(procs[w]:read('*a')))
        procs[w]:close()
      end
      os.remove(child)
      assert.are.equal(3, ok)
      local s = r.check(S)
      assert.are.equal(0, s.stock)
      assert.are.equal(3, s.reserved)
    end)

    it('takes several tickets at once and refuses more than remain with SOLD_OUT and remaining', function()
      r.sale(S, { initial = 5 })
      assert.are.equal('OK', r.purchase(S, 'u1', { quantity = 3, perUserLimit = 10 }).code)
      local a = r.purchase(S, 'u2', { quantity = 3, perUserLimit = 10 })
      assert.are.same({ code = 'SOLD_OUT', remaining = 2 }, a)
      assert.are.equal('OK', r.purchase(S, 'u2', { quantity = 2, perUserLimit = 10 }).code)
      assert.are.same({ code = 'SOLD_OUT', remaining = 0 }, r.purchase(S, 'u3'))
      local s = r.check(S)
      assert.are.equal(0, s.stock)
      assert.are.equal(5, s.reserved)
    end)

    it('answers NO_SALE for an unknown SKU and leaves nothing behind', function()
      assert.are.same({ code = 'NO_SALE' }, r.purchase('404', 'u1', { key = 'k1' }))
      assert.are.same({}, r.client:keys('*'))
    end)
  end)

  describe('idempotency', function()
    it('lists the keys whose stored answer is SOLD_OUT in sokeys, for as long as the answers', function()
      r.sale(S, { initial = 1 })
      assert.are.equal('OK', r.purchase(S, 'u1', { key = 'bought' }).code)
      assert.are.equal('LIMIT_EXCEEDED', r.purchase(S, 'u1', { key = 'limited' }).code)
      assert.are.equal('SOLD_OUT', r.purchase(S, 'u2', { key = 'late' }).code)
      assert.are.same({ 'late' }, r.client:smembers(K.sokeys))
      local today = r.idem_days(S)
      -- the same expiry time (two PTTL reads, a few ms apart)
      assert.is_true(math.abs(r.client:pttl(today) - r.client:pttl(K.sokeys)) < 100)
      -- so the stored keys less sokeys are the two that a worker answering
      -- SOLD_OUT from memory still sends to Redis for their replay
      local fields = r.client:hkeys(today)
      table.sort(fields)
      assert.are.same({ 'bought', 'late', 'limited' }, fields)
    end)

    it('replays the stored answer, taking no stock and no rate token', function()
      r.sale(S, { initial = 5 })
      local first = r.purchase(S, 'u1', { key = 'k1', hash = 'h1', rlCapacity = 2, rlRate = 0.001 })
      assert.are.equal('OK', first.code)
      local tokens = r.user(S, 'u1').tokens
      for _ = 1, 5 do
        local again = r.purchase(S, 'u1', { key = 'k1', hash = 'h1', rlCapacity = 2, rlRate = 0.001 })
        assert.are.equal('REPLAY', again.code)
        assert.are.same(first, again.result)
      end
      assert.are.equal(tokens, r.user(S, 'u1').tokens)
      local s = r.check(S)
      assert.are.equal(4, s.stock)
      assert.are.equal(1, #r.events(S))
      -- stored in today's hash of answers, which lives at least a day more
      assert.is_truthy(r.idem(S, 'k1'))
      assert.is_true(r.client:pttl((r.idem_days(S))) > 86000000)
      -- nothing was answered SOLD_OUT
      assert.is_false(r.client:exists(K.sokeys))
      -- the one token left is still there for a new request
      assert.are.equal('OK', r.purchase(S, 'u2', { key = 'k2' }).code)
    end)

    it('stores an answer in its compact form and replays the same answer from it', function()
      r.sale(S, { initial = 5, price = 12.5 })
      local first = r.purchase(S, 'u1', { key = 'k1', hash = 'h1', quantity = 2, perUserLimit = 3 })
      assert.are.equal('OK', first.code)
      local gen = r.client:hget(K.sale, 'gen')
      -- gen, user, request hash, then OK's numbers and ids, each as its JSON text
      assert.are.equal(table.concat({ gen, '"u1"', '"h1"', 'OK', '2', '"' .. first.reservationId .. '"',
        '"' .. first.orderId .. '"', '3', tostring(first.expiresAt), '12.5' }, '\31'), r.idem(S, 'k1'))
      local again = r.purchase(S, 'u1', { key = 'k1', hash = 'h1', quantity = 2, perUserLimit = 3 })
      assert.are.same({ code = 'REPLAY', result = first }, again)
      -- a refusal keeps its JSON after the same head
      local limit = r.purchase(S, 'u1', { key = 'k2', hash = 'h2', quantity = 2, perUserLimit = 3 })
      assert.are.same({ code = 'LIMIT_EXCEEDED', limit = 3, held = 2 }, limit)
      assert.are.equal(gen .. '\31"u1"\31"h2"\31{', r.idem(S, 'k2'):sub(1, #gen + 12))
      assert.are.same({ code = 'REPLAY', result = limit },
        r.purchase(S, 'u1', { key = 'k2', hash = 'h2', quantity = 2, perUserLimit = 3 }))
      r.check(S)
    end)

    it('replays a record of the JSON form (stored before the compact one), and texts that hold the separator', function()
      r.sale(S, { initial = 5 })
      local gen = r.client:hget(K.sale, 'gen')
      local old = { code = 'OK', reservationId = 'r-old', orderId = 'o-old', quantity = 1, remaining = 9, expiresAt = 5 }
      r.store_idem(S, 'k-old', cjson.encode({ userId = 'u1', requestHash = 'h1', gen = gen, result = old }))
      assert.are.same({ code = 'REPLAY', result = old }, r.purchase(S, 'u1', { key = 'k-old', hash = 'h1' }))
      assert.are.same({ code = 'IDEMPOTENCY_MISMATCH' }, r.purchase(S, 'u1', { key = 'k-old', hash = 'h2' }))
      local odd = 'u\31x'
      local first = r.purchase(S, odd, { key = 'k-odd', hash = 'h\31y' })
      assert.are.equal('OK', first.code)
      -- its texts are stored escaped: the record still splits into its parts
      assert.are.equal(gen .. '\31"u\\u001fx"\31', r.idem(S, 'k-odd'):sub(1, #gen + 12))
      assert.are.same({ code = 'REPLAY', result = first }, r.purchase(S, odd, { key = 'k-odd', hash = 'h\31y' }))
      assert.are.same({ code = 'IDEMPOTENCY_KEY_REUSED' }, r.purchase(S, 'u', { key = 'k-odd', hash = 'h\31y' }))
      -- no stock was taken by the replays: 5 less the one of the odd user
      assert.are.equal(4, r.check(S).stock)
    end)

    it('writes a new reservation compact, which confirm and expire read as its fields', function()
      r.sale(S, { initial = 5, price = 12.5, ttlSec = 60 })
      local a = r.purchase(S, 'u\31x', { quantity = 2, perUserLimit = 3, traceId = 't"1' })
      assert.are.equal('OK', a.code)
      local text = r.client:get(K.res(a.reservationId))
      local created = text:match('\31(%d+)\31"t\\"1"$')
      -- 'P', then the ids as JSON texts (escaped: the separator stays a separator) and the numbers
      assert.are.equal(table.concat({ 'P', '"u\\u001fx"', '"' .. a.orderId .. '"', '2', '12.5', tostring(a.expiresAt),
        created, '"t\\"1"' }, '\31'), text)
      assert.are.same({ userId = 'u\31x', orderId = a.orderId, quantity = '2', unitPrice = '12.5', status = 'PENDING',
        expiresAt = tostring(a.expiresAt), createdAt = created, updatedAt = created, traceId = 't"1' },
        r.res(S, a.reservationId))
      local c = r.confirm(S, a.reservationId, { paymentRef = 'pay-1', userId = 'u\31x' })
      assert.are.equal('CONFIRMED', c.status)
      assert.are.equal(a.orderId, c.orderId)
      -- once it left PENDING it is a JSON object of the same fields and more
      local saved = cjson.decode(r.client:get(K.res(a.reservationId)))
      assert.are.same({ 'u\31x', '2', '12.5', 'pay-1', created, 't"1' },
        { saved.userId, saved.quantity, saved.unitPrice, saved.paymentRef, saved.createdAt, saved.traceId })
      -- one of the JSON form, PENDING, still expires and gives its tickets back
      local b = r.purchase(S, 'u2', { perUserLimit = 3 })
      r.patch_res(S, b.reservationId, { expiresAt = '1' })
      assert.are.equal('{', r.client:get(K.res(b.reservationId)):sub(1, 1))
      assert.are.equal('EXPIRED', r.release(S, b.reservationId, 'expired').status)
      assert.are.equal(3, r.check(S).stock)
    end)

    it('refuses the key of another user with IDEMPOTENCY_KEY_REUSED', function()
      r.sale(S, { initial = 5 })
      assert.are.equal('OK', r.purchase(S, 'u1', { key = 'k1', hash = 'h1' }).code)
      assert.are.same({ code = 'IDEMPOTENCY_KEY_REUSED' }, r.purchase(S, 'u2', { key = 'k1', hash = 'h1' }))
      assert.are.same({ code = 'IDEMPOTENCY_KEY_REUSED' }, r.purchase(S, 'u2', { key = 'k1', hash = 'other' }))
      assert.are.equal(4, r.check(S).stock)
      assert.is_false(r.client:exists(K.u('u2')))
    end)

    it('refuses the same key with a different body with IDEMPOTENCY_MISMATCH', function()
      r.sale(S, { initial = 5 })
      assert.are.equal('OK', r.purchase(S, 'u1', { key = 'k1', hash = 'h1' }).code)
      assert.are.same({ code = 'IDEMPOTENCY_MISMATCH' }, r.purchase(S, 'u1', { key = 'k1', hash = 'h2', quantity = 2 }))
      assert.are.equal(4, r.check(S).stock)
    end)

    it('stores the final refusals SOLD_OUT, LIMIT_EXCEEDED and ENDED, so a retry gets them again', function()
      r.sale(S, { initial = 1 })
      assert.are.equal('OK', r.purchase(S, 'u1', { key = 'a' }).code)
      local limit = r.purchase(S, 'u1', { key = 'b' })
      assert.are.same({ code = 'LIMIT_EXCEEDED', limit = 1, held = 1 }, limit)
      local sold = r.purchase(S, 'u2', { key = 'c' })
      assert.are.same({ code = 'SOLD_OUT', remaining = 0 }, sold)
      -- stock comes back: a new request succeeds, the old key keeps its answer
      local id = r.state(S).pending[1]
      assert.are.equal('OK', r.release(S, id, 'canceled').code)
      assert.are.same({ code = 'REPLAY', result = sold }, r.purchase(S, 'u2', { key = 'c' }))
      assert.are.same({ code = 'REPLAY', result = limit }, r.purchase(S, 'u1', { key = 'b' }))
      assert.are.equal('OK', r.purchase(S, 'u2', { key = 'd' }).code)

      r.client:hset(K.sale, 'endsAt', tostring(r.now() - 1))
      local ended = r.purchase(S, 'u3', { key = 'e' })
      assert.are.equal('ENDED', ended.code)
      r.client:hset(K.sale, 'endsAt', '0')
      assert.are.same({ code = 'REPLAY', result = ended }, r.purchase(S, 'u3', { key = 'e' }))
      r.check(S)
    end)

    it('does not store RATE_LIMITED, NOT_STARTED or NO_SALE: a later retry is evaluated afresh', function()
      assert.are.same({ code = 'NO_SALE' }, r.purchase(S, 'u1', { key = 'n' }))
      r.sale(S, { initial = 5, startsAt = r.now() + 60000 })
      assert.are.equal('NOT_STARTED', r.purchase(S, 'u1', { key = 'n' }).code)
      assert.is_nil(r.idem(S, 'n'))
      r.client:hset(K.sale, 'startsAt', '0')
      assert.are.equal('OK', r.purchase(S, 'u1', { key = 'n' }).code)
      local rl = { key = 'q', rlCapacity = 1, rlRate = 0.001, perUserLimit = 0 }
      assert.are.equal('OK', r.purchase(S, 'u2', { rlCapacity = 1, rlRate = 0.001, perUserLimit = 0 }).code)
      assert.are.equal('RATE_LIMITED', r.purchase(S, 'u2', rl).code)
      assert.is_nil(r.idem(S, 'q'))
      r.patch_user(S, 'u2', { ts = '0' })  -- refill the bucket
      assert.are.equal('OK', r.purchase(S, 'u2', rl).code)
      r.check(S)
    end)

    it('ignores an answer stored for an earlier sale of the SKU after a reset', function()
      r.sale(S, { initial = 1 })
      assert.are.equal('OK', r.purchase(S, 'u1', { key = 'k1' }).code)
      assert.are.equal('SOLD_OUT', r.purchase(S, 'u2', { key = 'k2' }).code)
      r.sale(S, { initial = 1 })
      local a = r.purchase(S, 'u2', { key = 'k2' })
      assert.are.equal('OK', a.code)
      assert.are.same({ code = 'REPLAY', result = a }, r.purchase(S, 'u2', { key = 'k2' }))
      r.check(S, { outbox = false })
    end)
  end)

  describe('rate limit', function()
    local rl = { rlCapacity = 2, rlRate = 0.001, perUserLimit = 0 }

    it('allows a burst of capacity, then RATE_LIMITED with retryAfterMs', function()
      r.sale(S, { initial = 10 })
      assert.are.equal('OK', r.purchase(S, 'u1', rl).code)
      assert.are.equal('OK', r.purchase(S, 'u1', rl).code)
      local a = r.purchase(S, 'u1', rl)
      assert.are.equal('RATE_LIMITED', a.code)
      -- 1 token at 0.001 tokens/s takes about 1000 s
      assert.is_true(a.retryAfterMs > 990000 and a.retryAfterMs <= 1000000)
      assert.are.equal('OK', r.purchase(S, 'u2', rl).code)  -- per user
      assert.are.equal(7, r.check(S).stock)
    end)

    it('refills over time at rlRate, capped at rlCapacity', function()
      r.sale(S, { initial = 10 })
      r.purchase(S, 'u1', rl)
      r.purchase(S, 'u1', rl)
      assert.are.equal('RATE_LIMITED', r.purchase(S, 'u1', rl).code)
      -- 1500 s ago at 0.001/s: 1.5 tokens came back
      local now = r.now()
      r.patch_user(S, 'u1', { ts = tostring(now - 1500000) })
      assert.are.equal('OK', r.purchase(S, 'u1', rl).code)
      assert.is_true(math.abs(tonumber(r.user(S, 'u1').tokens) - 0.5) < 0.01)
      assert.are.equal('RATE_LIMITED', r.purchase(S, 'u1', rl).code)
      -- far in the past: never more than capacity
      r.patch_user(S, 'u1', { ts = '0' })
      assert.are.equal('OK', r.purchase(S, 'u1', rl).code)
      assert.are.equal('OK', r.purchase(S, 'u1', rl).code)
      assert.are.equal('RATE_LIMITED', r.purchase(S, 'u1', rl).code)
      r.check(S)
    end)

    it('refills by the real clock', function()
      r.sale(S, { initial = 10 })
      local fast = { rlCapacity = 1, rlRate = 20, perUserLimit = 0 }  -- a token every 50 ms
      assert.are.equal('OK', r.purchase(S, 'u1', fast).code)
      local a = r.purchase(S, 'u1', fast)
      assert.are.equal('RATE_LIMITED', a.code)
      assert.is_true(a.retryAfterMs >= 1 and a.retryAfterMs <= 50)
      local deadline, code = r.now() + 2000, nil
      repeat
        require('socket').sleep(0.01)
        code = r.purchase(S, 'u1', fast).code
      until code == 'OK' or r.now() > deadline
      assert.are.equal('OK', code)
    end)

    it('lets the bucket vanish once it would be full again, but never a held count', function()
      r.sale(S, { initial = 10 })
      -- a refusal that took a token: the key holds nothing else
      assert.are.equal('LIMIT_EXCEEDED', r.purchase(S, 'u1', { rlCapacity = 4, rlRate = 2, quantity = 2 }).code)
      local ttl = r.client:pttl(K.u('u1'))
      assert.is_true(ttl > 1900 and ttl <= 2000)
      -- a ticket held: the key stays, whatever the bucket
      local a = r.purchase(S, 'u1', { rlCapacity = 4, rlRate = 2 })
      assert.are.equal('OK', a.code)
      assert.are.equal(-1, r.client:pttl(K.u('u1')))
      assert.are.equal('1', r.user(S, 'u1').held)
      -- given back: the bucket alone lasts until it is full again
      assert.are.equal('OK', r.release(S, a.reservationId, 'canceled').code)
      ttl = r.client:pttl(K.u('u1'))
      assert.is_true(ttl > 1500 and ttl <= 2000, 'ttl ' .. ttl)
      assert.are.equal(0, tonumber(r.user(S, 'u1').held or 0))
      r.check(S)
    end)

    it('is off with rlCapacity 0, and the sale hash wins over the app default', function()
      r.sale(S, { initial = 10 })
      for _ = 1, 5 do assert.are.equal('OK', r.purchase(S, 'u1', { rlCapacity = 0, perUserLimit = 0 }).code) end
      assert.is_nil(r.user(S, 'u1').tokens)  -- the key holds the tickets only
      r.sale(S, { initial = 10, rlCapacity = 1, rlRate = 0.001 })
      assert.are.equal('OK', r.purchase(S, 'u2', { rlCapacity = 0, perUserLimit = 0 }).code)
      assert.are.equal('RATE_LIMITED', r.purchase(S, 'u2', { rlCapacity = 0, perUserLimit = 0 }).code)
      r.check(S, { outbox = false })
    end)

    it('is checked before the sale window: attempts before the start cost tokens', function()
      r.sale(S, { initial = 10, startsAt = r.now() + 60000 })
      assert.are.equal('NOT_STARTED', r.purchase(S, 'u1', { rlCapacity = 1, rlRate = 0.001 }).code)
      assert.are.equal('RATE_LIMITED', r.purchase(S, 'u1', { rlCapacity = 1, rlRate = 0.001 }).code)
    end)
  end)

  describe('sale window', function()
    it('answers NOT_STARTED with startsAt before the start, and OK from then on', function()
      local at = r.now() + 60000
      r.sale(S, { initial = 10, startsAt = at })
      assert.are.same({ code = 'NOT_STARTED', startsAt = at }, r.purchase(S, 'u1', { key = 'k' }))
      r.client:hset(K.sale, 'startsAt', tostring(r.now()))
      assert.are.equal('OK', r.purchase(S, 'u1', { key = 'k' }).code)
    end)

    it('answers ENDED with endsAt from endsAt on; endsAt 0 means no end', function()
      local at = r.now() - 1
      r.sale(S, { initial = 10, endsAt = at })
      assert.are.same({ code = 'ENDED', endsAt = at }, r.purchase(S, 'u1'))
      r.sale(S, { initial = 10, endsAt = 0 })
      assert.are.equal('OK', r.purchase(S, 'u1').code)
      r.sale(S, { initial = 10, endsAt = r.now() + 60000 })
      assert.are.equal('OK', r.purchase(S, 'u1').code)
      assert.are.equal(9, r.check(S, { outbox = false }).stock)
    end)
  end)

  describe('per-user limit', function()
    it('counts pending and confirmed tickets: LIMIT_EXCEEDED with limit and held', function()
      r.sale(S, { initial = 10 })
      local o = { perUserLimit = 3 }
      local a = r.purchase(S, 'u1', { perUserLimit = 3, quantity = 2 })
      assert.are.equal('OK', r.confirm(S, a.reservationId).code)
      assert.are.equal('OK', r.purchase(S, 'u1', o).code)
      assert.are.same({ code = 'LIMIT_EXCEEDED', limit = 3, held = 3 }, r.purchase(S, 'u1', o))
      assert.are.same({ code = 'LIMIT_EXCEEDED', limit = 3, held = 0 }, r.purchase(S, 'u2', { perUserLimit = 3, quantity = 4 }))
      assert.are.equal(7, r.check(S).stock)
    end)

    it('gives the tickets back to the limit after a cancel or an expiry, not after a confirm', function()
      r.sale(S, { initial = 10 })
      local a = r.purchase(S, 'u1')
      assert.are.equal('LIMIT_EXCEEDED', r.purchase(S, 'u1').code)
      r.release(S, a.reservationId, 'canceled')
      assert.is_nil(r.state(S).users.u1)
      local b = r.purchase(S, 'u1')
      assert.are.equal('OK', b.code)
      r.backdate(S, b.reservationId)
      assert.are.equal(1, r.expire(S).expired)
      local c = r.purchase(S, 'u1')
      assert.are.equal('OK', c.code)
      r.confirm(S, c.reservationId)
      assert.are.equal('LIMIT_EXCEEDED', r.purchase(S, 'u1').code)
      assert.are.equal(9, r.check(S).stock)
    end)

    it('is off with perUserLimit 0, and the sale hash wins over the app default', function()
      r.sale(S, { initial = 10 })
      assert.are.equal('OK', r.purchase(S, 'u1', { perUserLimit = 0, quantity = 5 }).code)
      r.sale(S, { initial = 10, perUserLimit = 2 })
      assert.are.equal('OK', r.purchase(S, 'u1', { perUserLimit = 0, quantity = 2 }).code)
      assert.are.same({ code = 'LIMIT_EXCEEDED', limit = 2, held = 2 }, r.purchase(S, 'u1', { perUserLimit = 0 }))
      r.check(S, { outbox = false })
    end)
  end)

  describe('reservation TTL', function()
    it('uses the app default, unless the sale sets ttlSec', function()
      r.sale(S, { initial = 10 })
      local t0 = r.now()
      local a = r.purchase(S, 'u1', { ttlSec = 60 })
      assert.is_true(a.expiresAt >= t0 + 60000 and a.expiresAt <= r.now() + 60000)
      r.sale(S, { initial = 10, ttlSec = 5 })
      t0 = r.now()
      a = r.purchase(S, 'u1', { ttlSec = 60 })
      assert.is_true(a.expiresAt >= t0 + 5000 and a.expiresAt <= r.now() + 5000)
    end)
  end)

  describe('malformed arguments', function()
    local function fails(pattern, f)
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches(pattern, tostring(err))
    end

    it('raise errors and write nothing', function()
      r.sale(S, { initial = 10 })
      local before = r.client:dbsize()
      fails('quantity', function() r.purchase(S, 'u1', { quantity = 0 }) end)
      fails('quantity', function() r.purchase(S, 'u1', { quantity = 1.5 }) end)
      fails('quantity', function() r.purchase(S, 'u1', { quantity = 'two' }) end)
      fails('userId', function() r.purchase(S, '') end)
      fails('reservationId', function() r.purchase(S, 'u1', { resId = '' }) end)
      fails('orderId', function() r.purchase(S, 'u1', { orderId = '' }) end)
      fails('rlCapacity', function() r.purchase(S, 'u1', { rlCapacity = 'lots' }) end)
      fails('rlRate', function() r.purchase(S, 'u1', { rlRate = 0 }) end)
      fails('ttlSec', function() r.purchase(S, 'u1', { ttlSec = 'soon' }) end)
      fails('perUserLimit', function() r.purchase(S, 'u1', { perUserLimit = 'x' }) end)
      local argv = { 1, 1, 300, 20, 5, '0', 'u1', 1, '', 'h', 'x', 'o', 't' }
      fails('KEYS%[7%]', function()
        r.fcall('purchase_batch', { K.sale, K.stock, K.counts, K.pending, K.outbox, K.sokeys, K.u('other'), K.res('x') }, argv)
      end)
      fails('KEYS%[2%]', function()
        r.fcall('purchase_batch', { K.sale, '{sku:43}:stock', K.counts, K.pending, K.outbox, K.sokeys, K.u('u1'), K.res('x') }, argv)
      end)
      fails('KEYS%[1%]', function() r.fcall('purchase_batch', { 'sale' }, { 1 }) end)
      assert.are.equal(before, r.client:dbsize())
      assert.are.equal(0, #r.events(S))
    end)

    it('refuses to overwrite an existing reservation id', function()
      r.sale(S, { initial = 10 })
      assert.are.equal('OK', r.purchase(S, 'u1', { resId = 'dup' }).code)
      fails('already exists', function() r.purchase(S, 'u2', { resId = 'dup' }) end)
      assert.are.equal(9, r.check(S).stock)
    end)
  end)
end)
