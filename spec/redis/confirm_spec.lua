-- The confirm function of redis-lua/flashhost.lua against a real redis-server (database 9).
local scripts = require 'spec.redis.scripts'

describe('confirm', function()
  local r, S, K

  before_each(function()
    r = scripts.setup()
    S = '7'
    K = scripts.keys(S)
    r.sale(S, { initial = 5, price = 25 })
  end)

  after_each(function() if r then r.client:quit() end r = nil end)

  it('takes a reservation whose value is no JSON object for none, changing nothing, and a reset goes on', function()
    local a = r.purchase(S, 'u1', { quantity = 2, perUserLimit = 2 })
    local b = r.purchase(S, 'u2')
    r.client:set(K.res(a.reservationId), 'not json')
    local before = r.state(S)
    assert.are.same({ code = 'NOT_FOUND', reservationId = a.reservationId }, r.confirm(S, a.reservationId))
    assert.are.same(before, r.state(S))
    -- a reset cancels the readable one and skips the other
    assert.are.equal(1, r.sale(S, { initial = 5, price = 25 }).canceled)
    assert.are.equal('CANCELED', r.res(S, b.reservationId).status)
  end)

  it('confirms a reservation of the older hash form, which is a string from then on', function()
    local a = r.purchase(S, 'u1', { quantity = 2, perUserLimit = 2 })
    local fields = r.res(S, a.reservationId)
    r.client:del(K.res(a.reservationId))
    for f, v in pairs(fields) do r.client:hset(K.res(a.reservationId), f, v) end
    assert.are.equal('OK', r.confirm(S, a.reservationId, { paymentRef = 'pay-1' }).code)
    local res = r.res(S, a.reservationId)
    assert.are.equal('CONFIRMED', res.status)
    assert.are.equal(a.orderId, res.orderId)
    assert.are.equal('ALREADY_CONFIRMED', r.confirm(S, a.reservationId).code)
    r.check(S)
  end)

  it('confirms a pending reservation: reserved -> sold, out of the pending index, one confirmed event', function()
    local a = r.purchase(S, 'u1', { quantity = 2, perUserLimit = 2, traceId = 'tr-buy' })
    local c = r.confirm(S, a.reservationId, { paymentRef = 'pay-1' })
    assert.are.same({ code = 'OK', reservationId = a.reservationId, orderId = a.orderId, userId = 'u1',
      quantity = 2, status = 'CONFIRMED', expiresAt = a.expiresAt, paymentRef = 'pay-1' }, c)
    local s = r.check(S)
    assert.are.same({ 3, 0, 2 }, { s.stock, s.reserved, s.sold })
    assert.are.same({ u1 = 2 }, s.users)  -- confirmed tickets still count for the per-user limit
    assert.are.same({}, s.pending)
    local res = r.res(S, a.reservationId)
    assert.are.equal('CONFIRMED', res.status)
    assert.are.equal('pay-1', res.paymentRef)
    local ttl = r.client:pttl(K.res(a.reservationId))
    assert.is_true(ttl > 86000000 and ttl <= 86400000)  -- kept a day for ALREADY_CONFIRMED answers

    local ev = r.events(S)
    assert.are.equal(2, #ev)
    local e = ev[2]
    assert.are.same({ type = 'confirmed', eventId = a.reservationId .. ':confirmed', reservationId = a.reservationId,
      orderId = a.orderId, userId = 'u1', skuId = '7', quantity = '2', unitPrice = '25', status = 'CONFIRMED',
      expiresAt = tostring(a.expiresAt), traceId = 'tr-buy', paymentRef = 'pay-1' },
      { type = e.type, eventId = e.eventId, reservationId = e.reservationId, orderId = e.orderId, userId = e.userId,
        skuId = e.skuId, quantity = e.quantity, unitPrice = e.unitPrice, status = e.status,
        expiresAt = e.expiresAt, traceId = e.traceId, paymentRef = e.paymentRef })
    assert.is_true(tonumber(e.ts) >= tonumber(ev[1].ts))
  end)

  it('uses the traceId given, else the reservation one, and paymentRef "" when none', function()
    local a = r.purchase(S, 'u1', { traceId = 'tr-buy' })
    assert.are.equal('OK', r.confirm(S, a.reservationId, { traceId = 'tr-pay' }).code)
    local e = r.events(S)[2]
    assert.are.equal('tr-pay', e.traceId)
    assert.are.equal('', e.paymentRef)
  end)

  it('answers ALREADY_CONFIRMED to a second confirm, changing nothing', function()
    local a = r.purchase(S, 'u1')
    r.confirm(S, a.reservationId, { paymentRef = 'pay-1' })
    local again = r.confirm(S, a.reservationId, { paymentRef = 'pay-2' })
    assert.are.equal('ALREADY_CONFIRMED', again.code)
    assert.are.equal('CONFIRMED', again.status)
    assert.are.equal('pay-1', again.paymentRef)
    assert.are.equal(2, #r.events(S))
    assert.are.equal(1, r.check(S).sold)
  end)

  it('refuses a reservation past its expiry with EXPIRED, and expires it on the spot', function()
    local a = r.purchase(S, 'u1')
    r.backdate(S, a.reservationId, 1)
    local c = r.confirm(S, a.reservationId, { paymentRef = 'late' })
    assert.are.equal('EXPIRED', c.code)
    assert.are.equal('EXPIRED', c.status)
    local s = r.check(S)
    assert.are.same({ 5, 0, 0, 1 }, { s.stock, s.reserved, s.sold, s.expired })
    assert.are.same({}, s.users)
    local ev = r.events(S)
    assert.are.equal(2, #ev)
    assert.are.equal('expired', ev[2].type)
    -- the sweeper finds nothing left to do, and a second confirm changes nothing
    assert.are.equal(0, r.expire(S).expired)
    assert.are.equal('EXPIRED', r.confirm(S, a.reservationId).code)
    assert.are.equal(2, #r.events(S))
  end)

  it('refuses at exactly expiresAt (expiry is due at now >= expiresAt)', function()
    local a = r.purchase(S, 'u1')
    r.backdate(S, a.reservationId, 0)
    assert.are.equal('EXPIRED', r.confirm(S, a.reservationId).code)
    r.check(S)
  end)

  it('refuses an expired or canceled reservation with EXPIRED / CANCELED', function()
    local a = r.purchase(S, 'u1', { perUserLimit = 0 })
    local b = r.purchase(S, 'u1', { perUserLimit = 0 })
    r.backdate(S, a.reservationId)
    r.expire(S)
    r.release(S, b.reservationId, 'canceled')
    local n = #r.events(S)
    assert.are.equal('EXPIRED', r.confirm(S, a.reservationId).code)
    local c = r.confirm(S, b.reservationId)
    assert.are.equal('CANCELED', c.code)
    assert.are.equal('CANCELED', c.status)
    assert.are.equal(n, #r.events(S))
    assert.are.equal(5, r.check(S).stock)
  end)

  it('answers NOT_FOUND for an unknown reservation', function()
    assert.are.same({ code = 'NOT_FOUND', reservationId = 'nope' }, r.confirm(S, 'nope'))
    assert.are.equal(0, #r.events(S))
  end)

  it('answers NOT_OWNER when a userId is given and is not the buyer', function()
    local a = r.purchase(S, 'u1')
    assert.are.same({ code = 'NOT_OWNER', reservationId = a.reservationId }, r.confirm(S, a.reservationId, { userId = 'u2' }))
    assert.are.equal('PENDING', r.res(S, a.reservationId).status)
    assert.are.equal('OK', r.confirm(S, a.reservationId, { userId = 'u1' }).code)
    r.check(S)
  end)

  it('raises an error on a reservation with an unknown status, changing nothing', function()
    local a = r.purchase(S, 'u1')
    r.patch_res(S, a.reservationId, { status = 'LIMBO' })
    local ok, err = pcall(r.confirm, S, a.reservationId)
    assert.is_false(ok)
    assert.matches('unknown status LIMBO', err)
    assert.are.equal(1, #r.events(S))
    assert.are.equal(1, r.state(S).reserved)
  end)

  it('raises errors for malformed arguments', function()
    local ok, err = pcall(r.fcall, 'confirm', { K.res(''), K.stock, K.counts, K.pending, K.outbox }, { '' })
    assert.is_false(ok)
    assert.matches('reservationId', err)
    ok, err = pcall(r.fcall, 'confirm', { K.res('a'), K.stock, K.counts, K.pending, K.outbox }, { 'b' })
    assert.is_false(ok)
    assert.matches('KEYS%[1%]', err)
    ok, err = pcall(r.fcall, 'confirm', { K.res('a'), K.stock, K.counts, K.outbox, K.pending }, { 'a' })
    assert.is_false(ok)
    assert.matches('KEYS%[4%]', err)
  end)
end)
