-- The sale function of redis-lua/flashhost.lua against a real redis-server (database 9).
local scripts = require 'spec.redis.scripts'

describe('sale', function()
  local r, S, K

  before_each(function()
    r = scripts.setup()
    S = '3'
    K = scripts.keys(S)
  end)

  after_each(function() if r then r.client:quit() end r = nil end)

  it('creates a sale: hash, stock = initial, zero counts; optional fields only when given', function()
    local t0 = r.now()
    local a = r.sale(S, { name = 'Spring gig', price = '19.90', initial = 100, startsAt = 1000, endsAt = 2000 })
    assert.are.equal('OK', a.code)
    assert.are.equal(0, a.canceled)
    local sale = a.sale
    assert.is_true(sale.createdAt >= t0 and sale.createdAt <= r.now())
    assert.is_true(sale.gen >= sale.createdAt)
    assert.are.same({ code = 'OK', canceled = 0, sale = { skuId = '3', name = 'Spring gig', price = 19.9, initial = 100,
      startsAt = 1000, endsAt = 2000, createdAt = sale.createdAt, gen = sale.gen } }, a)
    local h = r.client:hgetall(K.sale)
    assert.are.same({ name = 'Spring gig', price = '19.9', initial = '100', startsAt = '1000', endsAt = '2000',
      createdAt = tostring(sale.createdAt), gen = tostring(sale.gen) }, h)
    assert.are.equal('100', r.client:get(K.stock))
    assert.are.same({ reserved = '0', sold = '0', canceled = '0', expired = '0', pending = '0' },
      r.client:hgetall(K.counts))
    r.check(S)
  end)

  it('keeps perUserLimit, ttlSec, rlCapacity, rlRate when given', function()
    local a = r.sale(S, { initial = 1, perUserLimit = 4, ttlSec = 90, rlCapacity = 3, rlRate = 0.5 })
    assert.are.same({ 4, 90, 3, 0.5 }, { a.sale.perUserLimit, a.sale.ttlSec, a.sale.rlCapacity, a.sale.rlRate })
    local h = r.client:hgetall(K.sale)
    assert.are.same({ '4', '90', '3', '0.5' }, { h.perUserLimit, h.ttlSec, h.rlCapacity, h.rlRate })
  end)

  it('defaults startsAt and endsAt to 0 (open now, no end)', function()
    local a = r.sale(S, { initial = 2 })
    assert.are.same({ 0, 0 }, { a.sale.startsAt, a.sale.endsAt })
    assert.are.equal('OK', r.purchase(S, 'u1').code)
  end)

  it('resets: fresh stock, counts, users and pending index; the outbox is kept', function()
    r.sale(S, { initial = 5, perUserLimit = 0 })
    local a = r.purchase(S, 'u1', { quantity = 2 })
    r.confirm(S, a.reservationId)
    local b = r.purchase(S, 'u2')
    local c = r.purchase(S, 'u3')
    r.release(S, c.reservationId, 'canceled')
    local gen1 = tonumber(r.client:hget(K.sale, 'gen'))
    local events = #r.events(S)

    local reset = r.sale(S, { initial = 7, traceId = 'tr-reset' })
    assert.are.equal('OK', reset.code)
    assert.are.equal(1, reset.canceled)
    assert.is_true(reset.sale.gen > gen1)
    local s = r.check(S, { outbox = false })
    assert.are.same({ initial = 7, stock = 7, reserved = 0, sold = 0, canceled = 0, expired = 0, users = {}, pending = {},
      indexed = {}, pendingCount = 0 }, s)
    assert.is_nil(r.client:hget(K.sale, 'perUserLimit'))  -- a reset forgets the earlier sale's settings

    -- the pending reservation was canceled, with one event, so the order store learns of it
    assert.are.equal('CANCELED', r.res(S, b.reservationId).status)
    local ev = r.events(S)
    assert.are.equal(events + 1, #ev)
    assert.are.same({ 'canceled', b.reservationId, 'CANCELED', 'tr-reset' },
      { ev[#ev].type, ev[#ev].reservationId, ev[#ev].status, ev[#ev].traceId })
    -- reservations of the earlier sale cannot move the new sale's counts
    assert.are.equal('CANCELED', r.confirm(S, b.reservationId).code)
    assert.are.equal('ALREADY_CONFIRMED', r.release(S, a.reservationId, 'canceled').code)
    assert.are.equal(0, r.expire(S).expired)
    r.check(S, { outbox = false })
  end)

  it('lets a reset cancel in steps first (cancel_pending), with the same outcome as one walk', function()
    r.sale(S, { initial = 20, perUserLimit = 0 })
    local ids = {}
    for i = 1, 9 do ids[i] = r.purchase(S, 'u' .. i).reservationId end
    r.confirm(S, ids[1])
    r.release(S, ids[2], 'canceled')
    -- an index entry left without a PENDING reservation is dropped on the way
    r.client:zadd(K.pending, 1, 'ghost')
    local function step(limit)
      return r.fcall('cancel_pending', { K.stock, K.counts, K.pending, K.outbox }, { limit, 'tr-step' })
    end
    -- the oldest ids first, at most `limit` a step: ghost, then 1 (confirmed)
    -- and 2 (canceled), which waited in the index for a walk; left: members
    assert.are.same({ code = 'OK', canceled = 0, left = 7 }, step(3))
    assert.are.same({ 'CONFIRMED', 'CANCELED', 'PENDING' },
      { r.res(S, ids[1]).status, r.res(S, ids[2]).status, r.res(S, ids[3]).status })
    assert.are.same({ code = 'OK', canceled = 3, left = 4 }, step(3))
    assert.are.same({ 'CANCELED', 'CANCELED', 'CANCELED', 'PENDING' },
      { r.res(S, ids[3]).status, r.res(S, ids[4]).status, r.res(S, ids[5]).status, r.res(S, ids[6]).status })
    local s = r.check(S)
    assert.are.same({ 15, 4, 1, 4 }, { s.stock, s.reserved, s.sold, s.canceled })
    -- the reset cancels the four left; every pending one got one canceled event
    assert.are.equal(4, r.sale(S, { initial = 20 }).canceled)
    local canceled = 0
    for _, e in ipairs(r.events(S)) do if e.type == 'canceled' then canceled = canceled + 1 end end
    assert.are.equal(1 + 7, canceled)
    assert.are.equal('CONFIRMED', r.res(S, ids[1]).status)
    assert.are.same({ code = 'OK', canceled = 0, left = 0 }, step(500))
    assert.has_error(function() step(0) end)
  end)

  it('raises errors for non-numbers and negative numbers, writing nothing', function()
    local bad = {
      { price = 'free' }, { price = -1 }, { initial = 'many' }, { initial = 2.5 }, { initial = -1 },
      { startsAt = 'now' }, { endsAt = 'later' }, { perUserLimit = 'one' }, { perUserLimit = 1.5 },
      { ttlSec = 'long' }, { rlCapacity = 'big' }, { rlRate = 'fast' }, { rlRate = 0 }, { price = 'nan' },
      { price = 'inf' },
    }
    for _, o in ipairs(bad) do
      local field = next(o)
      local ok, err = pcall(r.sale, S, o)
      assert.is_false(ok, field)
      assert.matches(field, err)
    end
    assert.are.same({}, r.client:keys('*'))
    local ok, err = pcall(r.fcall, 'sale', { K.sale, K.stock, K.counts, K.outbox, K.pending }, { 'n', 1, 1 })
    assert.is_false(ok)
    assert.matches('KEYS%[4%]', err)
    ok, err = pcall(r.fcall, 'sale', { 'sku:3:sale' }, { 'n', 1, 1 })
    assert.is_false(ok)
    assert.matches('KEYS%[1%]', err)
  end)
end)
