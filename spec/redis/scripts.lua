-- Support for spec/redis/*_spec.lua (not a spec itself): calls the scripts of
-- redis-lua/ with KEYS and ARGV in the order redis-lua/README.md gives, and reads
-- back the state and the outbox to check the invariants.
local cjson = require 'cjson'
local redis = require 'redis'
local helpers = require 'spec.helpers'
local assert = require 'luassert'

local root = debug.getinfo(1, 'S').source:match('^@(.-)spec/redis/scripts%.lua$') or ''
local xrange = redis.command('XRANGE')
local time = redis.command('TIME')

local M = { NAMES = { 'sale', 'purchase', 'confirm', 'release', 'expire' } }
M.root = root

function M.source(name)
  local f = assert(io.open(root .. 'redis-lua/' .. name .. '.lua'))
  local text = f:read('*a')
  f:close()
  return text
end

function M.keys(sku)
  local p = '{sku:' .. sku .. '}:'
  return {
    prefix = p, sale = p .. 'sale', stock = p .. 'stock', counts = p .. 'counts', users = p .. 'users',
    pending = p .. 'pending', outbox = p .. 'outbox',
    rl = function(user) return p .. 'rl:' .. user end,
    idem = function(key) return p .. 'idem:' .. key end,
    okkeys = p .. 'okkeys',
    res = function(id) return p .. 'res:' .. id end,
  }
end

-- Database 9, flushed unless o.flush == false, with every script loaded. Returns the API below.
function M.setup(o)
  local client = helpers.redis()
  if not (o and o.flush == false) then client:flushdb() end
  local sha, seq = {}, 0
  for _, name in ipairs(M.NAMES) do sha[name] = client:script('load', M.source(name)) end

  local api = { client = client }

  -- EVALSHA; answers are decoded, error replies raise.
  function api.eval(name, keys, argv)
    local args = { sha[name], #keys }
    for _, k in ipairs(keys) do args[#args + 1] = k end
    for i = 1, table.maxn(argv) do args[#args + 1] = argv[i] == nil and '' or tostring(argv[i]) end
    return cjson.decode(client:evalsha(args))
  end

  function api.sale(sku, o)
    o = o or {}
    local k = M.keys(sku)
    return api.eval('sale', { k.sale, k.stock, k.counts, k.users, k.pending, k.outbox },
      { o.name or ('sale ' .. sku), o.price or 50, o.initial or 10, o.startsAt, o.endsAt,
        o.perUserLimit, o.ttlSec, o.rlCapacity, o.rlRate, o.traceId, o.queue and '1' or nil })
  end

  -- o: quantity, key, hash, resId, orderId, traceId and the app's defaults
  -- perUserLimit, ttlSec, rlCapacity, rlRate (DESIGN.md's defaults unless given).
  function api.purchase(sku, user, o)
    o = o or {}
    seq = seq + 1
    local k = M.keys(sku)
    local resId, key = o.resId or ('r' .. seq), o.key or ''
    return api.eval('purchase',
      { k.sale, k.stock, k.counts, k.users, k.pending, k.outbox, k.rl(user), k.idem(key), k.res(resId), k.okkeys },
      { user, o.quantity or 1, key, o.hash or 'h', resId, o.orderId or ('o' .. seq), o.traceId or 'trace-p',
        o.perUserLimit or 1, o.ttlSec or 300, o.rlCapacity or 20, o.rlRate or 5, o.queueTicket })
  end

  function api.confirm(sku, id, o)
    o = o or {}
    local k = M.keys(sku)
    return api.eval('confirm', { k.res(id), k.stock, k.counts, k.users, k.pending, k.outbox },
      { id, o.paymentRef, o.userId, o.traceId })
  end

  function api.release(sku, id, reason, o)
    o = o or {}
    local k = M.keys(sku)
    return api.eval('release', { k.res(id), k.stock, k.counts, k.users, k.pending, k.outbox },
      { id, reason, o.userId, o.traceId })
  end

  function api.expire(sku, limit, traceId)
    local k = M.keys(sku)
    return api.eval('expire', { k.stock, k.counts, k.users, k.pending, k.outbox }, { limit or 100, traceId })
  end

  -- Redis's clock in milliseconds (the scripts' "now").
  function api.now()
    local t = time(client)
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end

  function api.res(sku, id) return client:hgetall(M.keys(sku).res(id)) end

  -- Moves a pending reservation's expiry msAgo into the past, in the hash and the zset.
  function api.backdate(sku, id, msAgo)
    local k = M.keys(sku)
    local at = api.now() - (msAgo or 1000)
    client:hset(k.res(id), 'expiresAt', tostring(at))
    client:zadd(k.pending, at, id)
    return at
  end

  function api.events(sku)
    local out = {}
    for _, entry in ipairs(xrange(client, M.keys(sku).outbox, '-', '+')) do
      local e, f = { id = entry[1] }, entry[2]
      for i = 1, #f, 2 do e[f[i]] = f[i + 1] end
      out[#out + 1] = e
    end
    return out
  end

  function api.state(sku)
    local k = M.keys(sku)
    local sale, counts = client:hgetall(k.sale), client:hgetall(k.counts)
    local s = {
      initial = tonumber(sale.initial), stock = tonumber(client:get(k.stock)),
      users = {}, pending = client:zrange(k.pending, 0, -1),
    }
    for _, f in ipairs({ 'reserved', 'sold', 'canceled', 'expired' }) do s[f] = tonumber(counts[f]) or 0 end
    for u, n in pairs(client:hgetall(k.users)) do s.users[u] = tonumber(n) end
    return s
  end

  -- Asserts the invariants of one SKU and returns its state. The outbox sums are
  -- checked unless o.outbox == false (a reset keeps the events of the earlier sale).
  function api.check(sku, o)
    local s = api.state(sku)
    assert.are.equal(s.initial, s.stock + s.reserved + s.sold, 'initial == stock + reserved + sold')
    assert.is_true(s.stock >= 0 and s.reserved >= 0 and s.sold >= 0 and s.canceled >= 0 and s.expired >= 0)
    local held = 0
    for _, n in pairs(s.users) do
      assert.is_true(n > 0)
      held = held + n
    end
    assert.are.equal(s.reserved + s.sold, held, 'tickets held by users == reserved + sold')
    local pendingQty = 0
    for _, id in ipairs(s.pending) do
      local r = api.res(sku, id)
      assert.are.equal('PENDING', r.status)
      pendingQty = pendingQty + tonumber(r.quantity)
    end
    assert.are.equal(s.reserved, pendingQty, 'reserved == quantities of pending reservations')
    if not (o and o.outbox == false) then
      local sum, seen = { reserved = 0, confirmed = 0, canceled = 0, expired = 0 }, {}
      for _, e in ipairs(api.events(sku)) do
        assert.is_nil(seen[e.eventId], 'duplicate eventId ' .. tostring(e.eventId))
        seen[e.eventId] = true
        sum[e.type] = sum[e.type] + tonumber(e.quantity)
      end
      assert.are.equal(s.reserved + s.sold + s.canceled + s.expired, sum.reserved)
      assert.are.equal(s.sold, sum.confirmed)
      assert.are.equal(s.canceled, sum.canceled)
      assert.are.equal(s.expired, sum.expired)
    end
    return s
  end

  return api
end

return M
