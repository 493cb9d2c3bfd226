-- The waiting room's functions (queue_* in redis-lua/queue.lua) and the
-- queue checks of sale and purchase_batch, against a real redis-server (database 9).
local cjson = require 'cjson'
local redis = require 'redis'
local scripts = require 'spec.redis.scripts'

redis.commands.fcall = redis.command('FCALL')
redis.commands.fcall_ro = redis.command('FCALL_RO')

local function order_of(t)
  local parts = {}
  for i, v in ipairs(t) do parts[i] = ('%010d'):format(v) end
  return table.concat(parts)
end

describe('queue functions', function()
  local r, c, S, K

  local function call(name, ...)
    local ro = ({ queue_state = true, queue_order = true, queue_ticket = true })[name]
    local res = (ro and c.fcall_ro or c.fcall)(c, name, 1, K.sale, ...)
    return type(res) == 'string' and cjson.decode(res) or res
  end
  local function meta() return c:hgetall(K.prefix .. 'q') end
  local function step(n)
    local a = call('queue_advance', n, tonumber(meta().tick), 0, 1000)
    assert.are.equal('OK', a.code, cjson.encode(a))
    return a
  end
  local function queued_sale(o)
    o = o or {}
    o.queue = true
    local a = r.sale(S, o)
    assert.are.equal('1', a.sale.queue)
    local q = call('queue_setup', o.rate or 10, o.ttl or 60, o.pre or 0)
    assert.are.equal('OK', q.code)
  end

  before_each(function()
    r = scripts.setup()
    c = r.client
    S = '77'
    K = scripts.keys(S)
  end)
  after_each(function() if c then c:quit() end c = nil end)

  it('refuses a purchase without a ticket on a queued sale, stores nothing and takes nothing', function()
    queued_sale { initial = 5 }
    local a = r.purchase(S, '1', { key = 'k1' })
    assert.are.same({ code = 'QUEUE_TOKEN_REQUIRED' }, a)
    assert.are.equal('5', c:get(K.stock))
    assert.is_nil(r.idem(S, 'k1'))
    assert.is_false(c:exists(K.u('1')), 'no rate token taken')
    -- a client's key that looks like a token's is still no token
    assert.are.same({ code = 'QUEUE_TOKEN_REQUIRED' }, r.purchase(S, '1', { key = 'q:1' }))
    -- the key a checked token buys under
    local ok = r.purchase(S, '1', { key = 'q 1:1' })
    assert.are.equal('OK', ok.code)
    assert.are.equal('REPLAY', r.purchase(S, '1', { key = 'q 1:1' }).code)
    r.check(S)
  end)

  it('leaves sales without a queue alone', function()
    r.sale(S, { initial = 5 })
    assert.are.equal('OK', r.purchase(S, '1').code)
    assert.are.same({ code = 'NO_QUEUE' }, call('queue_join', '1'))
    assert.are.same({ code = 'NO_QUEUE' }, call('queue_state'))
    K = scripts.keys('404')
    assert.are.same({ code = 'NO_SALE' }, call('queue_join', '1'))
  end)

  it('gives one ticket per user, first come first served after the opening', function()
    queued_sale { initial = 100 }
    local a = call('queue_join', '10')
    assert.are.equal(1, a.seq)
    assert.are.equal(1, a.pos) -- no pre-queue: open at once
    assert.are.equal(2, call('queue_join', '11').pos)
    local again = call('queue_join', '10')
    assert.are.equal(1, again.seq)
    assert.are.equal('2', meta().tail)
  end)

  it('admits at the given count, records admission and expiry, and counts used tokens', function()
    queued_sale { initial = 100, ttl = 30 }
    for u = 1, 5 do call('queue_join', tostring(u)) end
    local a = step(2)
    assert.are.equal(2, a.admitted)
    assert.are.equal(2, a.serving)
    assert.are.equal(3, a.length)
    assert.are.equal(2, #a.waitsMs)
    local t = call('queue_ticket', 2)
    assert.are.equal('live', t.state)
    assert.are.equal(t.admittedAt + 30000, t.expiresAt)
    assert.are.equal('WAITING', call('queue_ticket', 3).code)
    assert.are.equal('NOT_ADMITTED', call('queue_used', 3).code)
    assert.are.equal('OK', call('queue_used', 2).code)
    call('queue_used', 2) -- twice counts once
    assert.are.equal('used', call('queue_ticket', 2).state)
    local m = meta()
    assert.are.same({ '2', '1', '2' }, { m.admitted, m.used, m.serving })
    -- never beyond the last ticket
    assert.are.equal(3, step(50).admitted)
    assert.are.equal(0, step(50).admitted)
  end)

  it('ignores a step from a stale reading of the tick (a second keeper)', function()
    queued_sale { initial = 100 }
    call('queue_join', '1')
    local a = call('queue_advance', 1, 5, 0, 10)
    assert.are.equal('STALE', a.code)
    assert.are.equal('0', meta().serving)
  end)

  it('frees the places of tokens that expired unused, not of used ones', function()
    queued_sale { initial = 100, ttl = 1 }
    for u = 1, 6 do call('queue_join', tostring(u)) end
    step(3)
    call('queue_used', 1)
    -- ticket 2 bought, but the app's note was lost: its idempotency key tells
    local gen = meta().gen
    r.store_idem(S, 'q ' .. gen .. ':2', '{}')
    -- the tokens' expiry, moved into the past instead of waiting for it
    for s = 1, 3 do c:zadd(K.prefix .. 'q:live', 1, tostring(s)) end
    local a = step(0)
    assert.are.equal(1, a.freed)
    assert.are.equal(1, a.admitted) -- the one freed place goes to the next ticket
    local m = meta()
    assert.are.same({ '1', '2', '4' }, { m.expired, m.used, m.serving })
    assert.are.equal('expired', call('queue_ticket', 3).state)
  end)

  it('stops admitting when the stock is gone and says so', function()
    queued_sale { initial = 1 }
    for u = 1, 3 do call('queue_join', tostring(u)) end
    step(1)
    assert.are.equal('OK', r.purchase(S, '1', { key = 'q ' .. meta().gen .. ':1' }).code)
    local a = step(5)
    assert.is_true(a.soldOut)
    assert.are.equal(0, a.admitted)
    assert.are.equal('1', meta().soldOut)
    assert.are.same({ code = 'SOLD_OUT' }, call('queue_join', '9'))
    assert.is_true(call('queue_state').soldOut == '1')
  end)

  it('closes the pre-queue at the opening and takes the shuffle once, checked', function()
    local t = r.now()
    queued_sale { initial = 100, startsAt = t + 400, pre = 60 }
    assert.are.same('NOT_DUE', call('queue_open', 0, '').code)
    for u = 1, 4 do
      local a = call('queue_join', tostring(u))
      assert.is_true(a.preQueue)
      assert.are.equal(0, a.pos)
    end
    assert.are.equal(0, step(10).admitted) -- nothing admitted before the opening
    while r.now() < t + 400 do end
    local late = call('queue_join', '5') -- closes the pre-queue: 4 tickets
    assert.are.equal(5, late.pos)
    assert.are.same('STALE', call('queue_open', 3, order_of { 1, 2, 3 }).code)
    assert.has_error(function() call('queue_open', 4, order_of { 1, 2, 2, 4 }) end)
    assert.has_error(function() call('queue_open', 4, '12') end)
    assert.are.equal('OK', call('queue_open', 4, order_of { 3, 1, 4, 2 }).code)
    assert.are.equal('ALREADY_OPEN', call('queue_open', 4, order_of { 1, 2, 3, 4 }).code)
    assert.are.equal(2, call('queue_join', '1').pos) -- ticket 1 is second now
    step(2)
    assert.are.equal('OK', call('queue_ticket', 3).code)
    assert.are.equal('OK', call('queue_ticket', 1).code)
    assert.are.equal('WAITING', call('queue_ticket', 2).code)
    local o = call('queue_order')
    assert.are.equal(order_of { 3, 1, 4, 2 }, o.order)
  end)

  it('refuses joins before the pre-queue opens and after the end', function()
    local t = r.now()
    queued_sale { initial = 10, startsAt = t + 100000, pre = 10 }
    local a = call('queue_join', '1')
    assert.are.equal('NOT_OPEN', a.code)
    assert.are.equal(t + 90000, a.opensAt)
    assert.are.equal('0', meta().tail)
    queued_sale { initial = 10, startsAt = 1000, endsAt = 2000 }
    assert.are.equal('ENDED', call('queue_join', '1').code)
  end)

  it('takes a new rate, and a reset without a queue leaves the old one unused', function()
    queued_sale { initial = 10 }
    assert.are.equal(25, call('queue_rate', 25).rate)
    assert.are.equal('25', meta().rate)
    r.sale(S, { initial = 10 })
    assert.are.same({ code = 'NO_QUEUE' }, call('queue_rate', 5))
    assert.are.equal('OK', r.purchase(S, '1').code)
  end)
end)
