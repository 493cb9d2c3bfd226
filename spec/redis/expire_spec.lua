-- The expire function of redis-lua/flashhost.lua against a real redis-server (database 9).
local scripts = require 'spec.redis.scripts'

describe('expire', function()
  local r, S, K

  before_each(function()
    r = scripts.setup()
    S = '5'
    K = scripts.keys(S)
    r.sale(S, { initial = 10, perUserLimit = 0 })
  end)

  after_each(function() if r then r.client:quit() end r = nil end)

  it('expires only due reservations, with the effects of release expired', function()
    local a = r.purchase(S, 'u1', { quantity = 2, traceId = 'tr-a' })
    local b = r.purchase(S, 'u2')
    local c = r.purchase(S, 'u1')
    r.backdate(S, a.reservationId)
    r.backdate(S, c.reservationId, 0)  -- due at exactly expiresAt
    assert.are.same({ code = 'OK', expired = 2, more = false }, r.expire(S))

    local s = r.check(S)
    assert.are.same({ 9, 1, 0, 3 }, { s.stock, s.reserved, s.canceled, s.expired })
    assert.are.same({ u2 = 1 }, s.users)
    assert.are.same({ b.reservationId }, s.pending)
    assert.are.equal('EXPIRED', r.res(S, a.reservationId).status)
    assert.are.equal('PENDING', r.res(S, b.reservationId).status)
    assert.is_true(r.client:pttl(K.res(a.reservationId)) > 86000000)

    local ev = r.events(S)
    assert.are.equal(5, #ev)
    local e = ev[4].reservationId == a.reservationId and ev[4] or ev[5]
    assert.are.same({ type = 'expired', eventId = a.reservationId .. ':expired', reservationId = a.reservationId,
      orderId = a.orderId, userId = 'u1', skuId = '5', quantity = '2', unitPrice = '50', status = 'EXPIRED',
      traceId = 'tr-a' },
      { type = e.type, eventId = e.eventId, reservationId = e.reservationId, orderId = e.orderId, userId = e.userId,
        skuId = e.skuId, quantity = e.quantity, unitPrice = e.unitPrice, status = e.status, traceId = e.traceId })

    -- exactly once: nothing more to do, and release finds it already expired
    assert.are.same({ code = 'OK', expired = 0, more = false }, r.expire(S))
    assert.are.equal('ALREADY_EXPIRED', r.release(S, a.reservationId, 'expired').code)
    assert.are.equal(9, r.check(S).stock)
  end)

  it('leaves the same state as release expired does', function()
    local a = r.purchase(S, 'u1', { resId = 'same' })
    r.backdate(S, 'same', 5000)
    r.release(S, 'same', 'expired')
    local viaRelease, resRelease = r.state(S), r.res(S, 'same')
    local evRelease = r.events(S)[2]

    r.client:quit()
    r = scripts.setup()
    r.sale(S, { initial = 10, perUserLimit = 0 })
    r.purchase(S, 'u1', { resId = 'same', orderId = a.orderId })
    r.backdate(S, 'same', 5000)
    r.expire(S)
    local viaExpire, resExpire = r.state(S), r.res(S, 'same')
    local evExpire = r.events(S)[2]

    -- a release leaves the id in the index until its member is walked; the
    -- expiry walk took it out
    assert.are.same({ 'same' }, viaRelease.indexed)
    assert.are.same({}, viaExpire.indexed)
    viaRelease.indexed, viaExpire.indexed = nil, nil
    assert.are.same(viaRelease, viaExpire)
    for _, t in ipairs({ resRelease, resExpire, evRelease, evExpire }) do
      t.createdAt, t.updatedAt, t.expiresAt, t.ts, t.id = nil, nil, nil, nil, nil
    end
    assert.are.same(resRelease, resExpire)
    assert.are.same(evRelease, evExpire)
  end)

  it('releases at most limit per call and says when more are due', function()
    for i = 1, 5 do r.backdate(S, r.purchase(S, 'u' .. i).reservationId, 1000 * i) end
    assert.are.same({ code = 'OK', expired = 2, more = true }, r.expire(S, 2))
    assert.are.same({ code = 'OK', expired = 2, more = true }, r.expire(S, 2))
    assert.are.same({ code = 'OK', expired = 1, more = false }, r.expire(S, 2))
    local s = r.check(S)
    assert.are.same({ 10, 5 }, { s.stock, s.expired })
  end)

  it('takes the oldest first', function()
    local old = r.purchase(S, 'u1').reservationId
    local new = r.purchase(S, 'u2').reservationId
    r.backdate(S, new, 1000)
    r.backdate(S, old, 9000)
    r.expire(S, 1)
    assert.are.equal('EXPIRED', r.res(S, old).status)
    assert.are.equal('PENDING', r.res(S, new).status)
  end)

  it('expires a reservation of a short-TTL sale by the real clock', function()
    r.sale(S, { initial = 10, ttlSec = 0.2 })
    local a = r.purchase(S, 'u1')
    assert.are.equal(0, r.expire(S).expired)
    local deadline, n = r.now() + 3000, 0
    repeat
      require('socket').sleep(0.05)
      n = r.expire(S).expired
    until n > 0 or r.now() > deadline
    assert.are.equal(1, n)
    assert.is_true(r.now() >= a.expiresAt)
    assert.are.equal(10, r.check(S, { outbox = false }).stock)
  end)

  it('uses the traceId given for its events, else each reservation one', function()
    local a = r.purchase(S, 'u1', { traceId = 'tr-a' })
    local b = r.purchase(S, 'u2', { traceId = 'tr-b' })
    r.backdate(S, a.reservationId, 2000)
    r.expire(S, 10, 'tr-sweep')
    r.backdate(S, b.reservationId, 1000)
    r.expire(S, 10)
    local ev = r.events(S)
    assert.are.same({ 'tr-sweep', 'tr-b' }, { ev[3].traceId, ev[4].traceId })
  end)

  it('drops index entries of missing or finished reservations, re-indexes a moved expiry', function()
    local a = r.purchase(S, 'u1')
    local b = r.purchase(S, 'u2')
    r.client:zadd(K.pending, 1, 'ghost')
    r.client:zadd(K.pending, 1, b.reservationId)  -- the hash still says: not due
    r.confirm(S, a.reservationId)
    r.client:zadd(K.pending, 1, a.reservationId)  -- finished, yet indexed
    assert.are.same({ code = 'OK', expired = 0, more = false }, r.expire(S))
    assert.are.same({ b.reservationId }, r.client:zrange(K.pending, 0, -1))
    assert.are.equal(b.expiresAt, tonumber(r.client:zscore(K.pending, b.reservationId)))
    local s = r.check(S)
    assert.are.same({ 8, 1, 1 }, { s.stock, s.reserved, s.sold })
  end)

  it("indexes a call's reservations as one member, and walks it in parts when the limit falls inside", function()
    local list = r.batch(S, { { user = 'b1' }, { user = 'b2' }, { user = 'b3' }, { user = 'b4' }, { user = 'b5' } },
      { perUserLimit = 0 })
    local ids = {}
    for i, a in ipairs(list) do
      assert.are.equal('OK', a.code)
      ids[i] = a.reservationId
    end
    assert.are.same({ { ids = ids, score = list[1].expiresAt } }, r.index(S))
    -- a confirmed one stays in the member, no longer counted as pending
    assert.are.equal('OK', r.confirm(S, ids[2]).code)
    local st = r.status(S, true)
    assert.are.same({ 4, 4 }, { st.pending, st.pendingQuantity })
    assert.are.same({ ids = ids, score = list[1].expiresAt }, r.index(S)[1])

    local past = r.now() - 1000
    for _, id in ipairs(ids) do r.patch_res(S, id, { expiresAt = tostring(past) }) end
    r.client:zadd(K.pending, past, table.concat(ids, ' '))
    -- limit 2: the first expires, the confirmed one is dropped; the other three
    -- stay together, as due as before
    assert.are.same({ code = 'OK', expired = 1, more = true }, r.expire(S, 2))
    assert.are.same({ { ids = { ids[3], ids[4], ids[5] }, score = past } }, r.index(S))
    assert.are.same({ code = 'OK', expired = 3, more = false }, r.expire(S, 10))
    assert.are.same({}, r.index(S))
    local s = r.check(S)
    assert.are.same({ 9, 0, 1, 4, 0 }, { s.stock, s.reserved, s.sold, s.expired, s.pendingCount })
    assert.are.equal('CONFIRMED', r.res(S, ids[2]).status)
  end)

  it('does nothing on a SKU without reservations', function()
    assert.are.same({ code = 'OK', expired = 0, more = false }, r.expire('nothing-here'))
    assert.are.equal(0, #r.events('nothing-here'))
  end)

  it('raises errors for malformed arguments', function()
    for _, bad in ipairs({ 0, -1, 1.5, 'many', '' }) do
      local ok, err = pcall(r.expire, S, bad)
      assert.is_false(ok)
      assert.matches('limit', err)
    end
    local ok, err = pcall(r.fcall, 'expire', { K.stock, K.counts, K.outbox, K.pending }, { 10 })
    assert.is_false(ok)
    assert.matches('KEYS%[3%]', err)
  end)
end)
