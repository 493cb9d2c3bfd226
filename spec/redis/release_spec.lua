-- The release function of redis-lua/flashhost.lua against a real redis-server (database 9).
local scripts = require 'spec.redis.scripts'

describe('release', function()
  local r, S, K

  before_each(function()
    r = scripts.setup()
    S = '9'
    K = scripts.keys(S)
    r.sale(S, { initial = 4, price = 10 })
  end)

  after_each(function() if r then r.client:quit() end r = nil end)

  it('gives tickets back through a user key of the older hash form', function()
    local a = r.purchase(S, 'u1', { quantity = 2, perUserLimit = 3 })
    assert.are.equal('OK', a.code)
    -- the key as a version before string user keys left it
    r.client:del(K.u('u1'))
    r.client:hset(K.u('u1'), 'gen', r.client:hget(K.sale, 'gen'), 'held', '2')
    assert.are.equal('OK', r.release(S, a.reservationId, 'canceled').code)
    assert.is_false(r.client:hexists(K.u('u1'), 'held'))
    assert.are.equal('4', r.client:get(K.stock))
    -- the next purchase makes it a string again
    assert.are.equal('OK', r.purchase(S, 'u1').code)
    assert.are.equal('1', r.user(S, 'u1').held)
    r.check(S)
  end)

  describe('canceled', function()
    it('returns the tickets to stock once: counts, user, index, status, one canceled event', function()
      local a = r.purchase(S, 'u1', { quantity = 3, perUserLimit = 3, traceId = 'tr-buy' })
      local c = r.release(S, a.reservationId, 'canceled', { traceId = 'tr-cancel' })
      assert.are.same({ code = 'OK', reservationId = a.reservationId, orderId = a.orderId, userId = 'u1',
        quantity = 3, status = 'CANCELED', expiresAt = a.expiresAt }, c)
      local s = r.check(S)
      assert.are.same({ 4, 0, 0, 3, 0 }, { s.stock, s.reserved, s.sold, s.canceled, s.expired })
      assert.are.same({}, s.users)
      -- nothing held: the key keeps only the bucket, until it is full again
      assert.are.equal(0, tonumber(r.user(S, 'u1').held or 0))
      assert.is_true(r.client:pttl(K.u('u1')) > 0)
      assert.are.same({}, s.pending)
      assert.are.equal('CANCELED', r.res(S, a.reservationId).status)
      assert.is_true(r.client:pttl(K.res(a.reservationId)) > 86000000)

      local ev = r.events(S)
      assert.are.equal(2, #ev)
      local e = ev[2]
      assert.are.same({ type = 'canceled', eventId = a.reservationId .. ':canceled', reservationId = a.reservationId,
        orderId = a.orderId, userId = 'u1', skuId = '9', quantity = '3', unitPrice = '10', status = 'CANCELED',
        expiresAt = tostring(a.expiresAt), traceId = 'tr-cancel' },
        { type = e.type, eventId = e.eventId, reservationId = e.reservationId, orderId = e.orderId, userId = e.userId,
          skuId = e.skuId, quantity = e.quantity, unitPrice = e.unitPrice, status = e.status,
          expiresAt = e.expiresAt, traceId = e.traceId })
      assert.is_truthy(tonumber(e.ts))
    end)

    it('happens exactly once: a second release answers ALREADY_CANCELED and leaves stock alone', function()
      local a = r.purchase(S, 'u1')
      local b = r.purchase(S, 'u2')
      assert.are.equal('OK', r.release(S, a.reservationId, 'canceled').code)
      for _ = 1, 3 do
        assert.are.equal('ALREADY_CANCELED', r.release(S, a.reservationId, 'canceled').code)
        assert.are.equal('ALREADY_CANCELED', r.release(S, a.reservationId, 'expired').code)
      end
      local s = r.check(S)
      assert.are.same({ 3, 1, 1 }, { s.stock, s.reserved, s.canceled })
      assert.are.same({ u2 = 1 }, s.users)
      assert.are.equal(3, #r.events(S))
      assert.are.equal('PENDING', r.res(S, b.reservationId).status)
    end)

    it('keeps the tickets of the other reservations of the same user', function()
      local a = r.purchase(S, 'u1', { perUserLimit = 3 })
      r.purchase(S, 'u1', { perUserLimit = 3, quantity = 2 })
      r.release(S, a.reservationId, 'canceled')
      assert.are.same({ u1 = 2 }, r.check(S).users)
    end)

    it('after expiry records an expiry instead and answers ALREADY_EXPIRED', function()
      local a = r.purchase(S, 'u1')
      r.backdate(S, a.reservationId)
      local c = r.release(S, a.reservationId, 'canceled')
      assert.are.equal('ALREADY_EXPIRED', c.code)
      assert.are.equal('EXPIRED', c.status)
      local s = r.check(S)
      assert.are.same({ 4, 0, 1 }, { s.stock, s.canceled, s.expired })
      assert.are.equal('expired', r.events(S)[2].type)
      assert.are.equal('ALREADY_EXPIRED', r.release(S, a.reservationId, 'canceled').code)
      assert.are.equal(2, #r.events(S))
    end)
  end)

  describe('expired', function()
    it('answers NOT_DUE before expiresAt and changes nothing', function()
      local a = r.purchase(S, 'u1')
      local c = r.release(S, a.reservationId, 'expired')
      assert.are.equal('NOT_DUE', c.code)
      assert.are.equal('PENDING', c.status)
      assert.are.equal(a.expiresAt, c.expiresAt)
      assert.are.equal(3, r.check(S).stock)
      assert.are.equal(1, #r.events(S))
    end)

    it('expires once due: stock back once, one expired event; then ALREADY_EXPIRED', function()
      local a = r.purchase(S, 'u1', { traceId = 'tr-buy' })
      r.backdate(S, a.reservationId, 0)  -- due at exactly expiresAt
      local c = r.release(S, a.reservationId, 'expired')
      assert.are.equal('OK', c.code)
      assert.are.equal('EXPIRED', c.status)
      local s = r.check(S)
      assert.are.same({ 4, 0, 0, 1 }, { s.stock, s.reserved, s.canceled, s.expired })
      local e = r.events(S)[2]
      assert.are.same({ 'expired', a.reservationId .. ':expired', 'EXPIRED', 'tr-buy' }, { e.type, e.eventId, e.status, e.traceId })
      assert.are.equal('ALREADY_EXPIRED', r.release(S, a.reservationId, 'expired').code)
      assert.are.equal('ALREADY_EXPIRED', r.release(S, a.reservationId, 'canceled').code)
      assert.are.equal(4, r.check(S).stock)
      assert.are.equal(2, #r.events(S))
    end)
  end)

  it('does not touch a confirmed reservation: ALREADY_CONFIRMED', function()
    local a = r.purchase(S, 'u1')
    r.confirm(S, a.reservationId)
    r.patch_res(S, a.reservationId, { expiresAt = '1' })
    assert.are.equal('ALREADY_CONFIRMED', r.release(S, a.reservationId, 'canceled').code)
    assert.are.equal('ALREADY_CONFIRMED', r.release(S, a.reservationId, 'expired').code)
    local s = r.check(S)
    assert.are.same({ 3, 1 }, { s.stock, s.sold })
    assert.are.equal(2, #r.events(S))
  end)

  it('answers NOT_FOUND for an unknown reservation', function()
    assert.are.same({ code = 'NOT_FOUND', reservationId = 'ghost' }, r.release(S, 'ghost', 'canceled'))
    assert.are.equal(4, r.check(S).stock)
  end)

  it('answers NOT_OWNER when a userId is given and is not the buyer', function()
    local a = r.purchase(S, 'u1')
    assert.are.equal('NOT_OWNER', r.release(S, a.reservationId, 'canceled', { userId = 'u2' }).code)
    assert.are.equal(3, r.check(S).stock)
    assert.are.equal('OK', r.release(S, a.reservationId, 'canceled', { userId = 'u1' }).code)
  end)

  it('raises an error on a reservation with an unknown status, changing nothing', function()
    local a = r.purchase(S, 'u1')
    r.patch_res(S, a.reservationId, { status = 'LIMBO' })
    local ok, err = pcall(r.release, S, a.reservationId, 'canceled')
    assert.is_false(ok)
    assert.matches('unknown status LIMBO', err)
    assert.are.equal(3, r.state(S).stock)
    assert.are.equal(1, #r.events(S))
  end)

  it('raises errors for malformed arguments', function()
    local a = r.purchase(S, 'u1')
    local ok, err = pcall(r.release, S, a.reservationId, 'refunded')
    assert.is_false(ok)
    assert.matches('reason', err)
    ok, err = pcall(r.release, S, '', 'canceled')
    assert.is_false(ok)
    assert.matches('reservationId', err)
    ok, err = pcall(r.fcall, 'release', { K.res(a.reservationId), '{sku:8}:stock', K.counts, K.pending, K.outbox },
      { a.reservationId, 'canceled' })
    assert.is_false(ok)
    assert.matches('KEYS%[2%]', err)
    assert.are.equal(3, r.check(S).stock)
  end)
end)
