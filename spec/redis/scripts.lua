-- Support for spec/redis/*_spec.lua (not a spec itself): calls the functions of
-- the library of redis-lua/ with KEYS and ARGV in the order redis-lua/README.md
-- gives, and reads back the state and the outbox to check the invariants.
local cjson = require 'cjson'
local redis = require 'redis'
local helpers = require 'spec.helpers'
local assert = require 'luassert'
local order_events = require 'app.lib.order_events'
local stock = require 'lib.stock'
local order_ids = require 'lib.order_ids'
local order_store = require 'lib.order_store'

local root = debug.getinfo(1, 'S').source:match('^@(.-)spec/redis/scripts%.lua$') or ''
local xrange = redis.command('XRANGE')
local time = redis.command('TIME')

local M = { FUNCTIONS = { 'sale', 'purchase_batch', 'confirm', 'release', 'expire', 'status', 'lease', 'order_index', 'cancel_pending',
  'queue_setup', 'queue_drop', 'queue_join', 'queue_state', 'queue_order', 'queue_ticket', 'queue_open',
  'queue_advance', 'queue_used', 'queue_rate' } }
M.root = root

-- The library as the app loads it: redis-lua/'s files joined by lib/stock.lua.
function M.source()
  return require('app.lib.stock').library_source(root .. 'redis-lua')
end

-- The order index hash of an order id, named as the app names it.
function M.index_key(orderId) return stock.index_key(orderId) end

-- The first id of the k-th block of a spec: 18 digits, a multiple of 256.
function M.block(k) return '457000000' .. string.format('%09d', 256 * k) end

-- A user key's text 'gen|held|tokens|ts|fullAt' as a table of its non-empty fields.
local USER_FIELDS = { 'gen', 'held', 'tokens', 'ts', 'fullAt' }
function M.user_fields(v)
  local parts = { v:match('^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$') }
  assert(#parts == 5, 'a user key holds ' .. v)
  local u = {}
  for i, f in ipairs(USER_FIELDS) do if parts[i] ~= '' then u[f] = parts[i] end end
  return u
end

function M.user_text(u)
  local parts = {}
  for i, f in ipairs(USER_FIELDS) do parts[i] = u[f] or '' end
  return table.concat(parts, '|')
end

function M.keys(sku)
  local p = '{sku:' .. sku .. '}:'
  return {
    prefix = p, sale = p .. 'sale', stock = p .. 'stock', counts = p .. 'counts',
    pending = p .. 'pending', outbox = p .. 'outbox',
    u = function(user) return p .. 'u:' .. user end,
    -- the stored answers of one day of Redis's clock (day = floor(ms / 86400000))
    idems = function(day) return p .. 'idems:' .. day end,
    -- the idempotency keys whose stored answer is SOLD_OUT
    sokeys = p .. 'sokeys',
    res = function(id) return p .. 'res:' .. id end,
  }
end

local fcall, fcall_ro, function_cmd = redis.command('FCALL'), redis.command('FCALL_RO'), redis.command('FUNCTION')
local scan = redis.command('SCAN')

-- Database 9, flushed unless o.flush == false, with the library loaded. Returns the API below.
function M.setup(o)
  local client = helpers.redis()
  if not (o and o.flush == false) then client:flushdb() end
  assert.are.equal('flashhost', function_cmd(client, 'LOAD', 'REPLACE', M.source()))
  local seq, blocks = 0, 0

  local api = { client = client }

  -- FCALL (FCALL_RO for status); answers are decoded, error replies raise.
  function api.fcall(name, keys, argv)
    local args = { name, #keys }
    for _, k in ipairs(keys) do args[#args + 1] = k end
    for i = 1, table.maxn(argv) do args[#args + 1] = argv[i] == nil and '' or tostring(argv[i]) end
    local call = name == 'status' and fcall_ro or fcall
    return cjson.decode(call(client, unpack(args)))
  end

  function api.sale(sku, o)
    o = o or {}
    local k = M.keys(sku)
    return api.fcall('sale', { k.sale, k.stock, k.counts, k.pending, k.outbox },
      { o.name or ('sale ' .. sku), o.price or 50, o.initial or 10, o.startsAt, o.endsAt,
        o.perUserLimit, o.ttlSec, o.rlCapacity, o.rlRate, o.traceId, o.queue and '1' or nil })
  end

  -- The KEYS and ARGV of purchase_batch for attempts { user, quantity, key, hash,
  -- resId, orderId, traceId }, with o: the app's defaults perUserLimit, ttlSec,
  -- rlCapacity, rlRate (DESIGN.md's defaults unless given) and index.  With
  -- o.index the ids not given are those of a new block (lib/order_ids).
  function api.batch_args(sku, attempts, o)
    o = o or {}
    local k = M.keys(sku)
    local keys = { k.sale, k.stock, k.counts, k.pending, k.outbox, k.sokeys }
    local argv = { #attempts, o.perUserLimit or 1, o.ttlSec or 300, o.rlCapacity or 20, o.rlRate or 5,
      o.index and '1' or '0' }
    if o.index then
      blocks = blocks + 1
      local base = M.block(blocks)
      for i, a in ipairs(attempts) do
        local orderId, resId = order_ids.of_block(base, i)
        a.orderId, a.resId = a.orderId or orderId, a.resId or resId
      end
    end
    for _, a in ipairs(attempts) do
      seq = seq + 1
      a.resId, a.orderId, a.key = a.resId or ('r' .. seq), a.orderId or ('o' .. seq), a.key or ''
      keys[#keys + 1], keys[#keys + 2] = k.u(a.user), k.res(a.resId)
      for _, v in ipairs({ a.user, a.quantity or 1, a.key, a.hash or 'h', a.resId, a.orderId, a.traceId or 'trace-p' }) do
        argv[#argv + 1] = v
      end
    end
    return keys, argv
  end

  -- One purchase_batch call: the list of answers, each OK made whole from
  -- its `remaining` as the app makes it (lib/stock.batch_answers).
  function api.batch(sku, attempts, o)
    local raw = api.fcall('purchase_batch', api.batch_args(sku, attempts, o))
    local shaped = {}
    for i, a in ipairs(attempts) do
      shaped[i] = { p = { quantity = a.quantity or 1 }, ids = { reservationId = a.resId, orderId = a.orderId } }
    end
    local list, err = stock.batch_answers(raw, shaped)
    assert(list, err)
    return list, raw
  end

  -- One attempt, a batch of one. o: quantity, key, hash, resId, orderId, traceId and the defaults.
  function api.purchase(sku, user, o)
    o = o or {}
    local list = api.batch(sku, { { user = user, quantity = o.quantity, key = o.key, hash = o.hash,
      resId = o.resId, orderId = o.orderId, traceId = o.traceId } }, o)
    assert.are.equal(1, #list)
    return list[1]
  end

  function api.confirm(sku, id, o)
    o = o or {}
    local k = M.keys(sku)
    return api.fcall('confirm', { k.res(id), k.stock, k.counts, k.pending, k.outbox },
      { id, o.paymentRef, o.userId, o.traceId })
  end

  function api.release(sku, id, reason, o)
    o = o or {}
    local k = M.keys(sku)
    return api.fcall('release', { k.res(id), k.stock, k.counts, k.pending, k.outbox },
      { id, reason, o.userId, o.traceId })
  end

  function api.expire(sku, limit, traceId)
    local k = M.keys(sku)
    return api.fcall('expire', { k.stock, k.counts, k.pending, k.outbox }, { limit or 100, traceId })
  end

  function api.status(sku, deep)
    local k = M.keys(sku)
    return api.fcall('status', { k.sale, k.stock, k.counts, k.pending, k.outbox }, { deep and 'deep' or '' })
  end

  -- Redis's clock in milliseconds (the functions' "now").
  function api.now()
    local t = time(client)
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end

  -- A reservation's fields (texts: compact while PENDING, then a JSON
  -- object in Redis; read as the app reads them), or {} when there is none.
  function api.res(sku, id)
    local v = client:get(M.keys(sku).res(id))
    return v and assert(order_store.decode_reservation(v), 'unreadable reservation ' .. v) or {}
  end

  -- Changes some fields of a reservation, keeping the others and its TTL
  -- (saved as a JSON object: a form every reader reads).
  function api.patch_res(sku, id, changes)
    local k = M.keys(sku).res(id)
    local r = assert(order_store.decode_reservation((assert(client:get(k), 'no reservation ' .. id))))
    for f, v in pairs(changes) do r[f] = v end
    local ttl = client:pttl(k)
    client:set(k, cjson.encode(r))
    if ttl > 0 then client:pexpire(k, ttl) end
  end

  -- User `id`'s key on SKU `sku` as its fields { gen, held, tokens, ts, fullAt }
  -- (texts; an empty field is absent), or nil when there is no key.
  function api.user(sku, id)
    local v = client:get(M.keys(sku).u(id))
    return v and M.user_fields(v)
  end

  -- Writes user `id`'s key from fields as api.user gives them (no TTL).
  function api.set_user(sku, id, u)
    client:set(M.keys(sku).u(id), M.user_text(u))
  end

  -- Changes some fields of user `id`'s key, keeping the others and its TTL.
  function api.patch_user(sku, id, changes)
    local u = (assert(api.user(sku, id), 'no key of user ' .. id))
    for f, v in pairs(changes) do u[f] = v end
    local k = M.keys(sku).u(id)
    local ttl = client:pttl(k)
    client:set(k, M.user_text(u))
    if ttl > 0 then client:pexpire(k, ttl) end
  end

  -- The hash today's stored answers go to, and yesterday's.
  function api.idem_days(sku)
    local day = math.floor(api.now() / 86400000)
    local k = M.keys(sku)
    return k.idems(day), k.idems(day - 1)
  end

  -- The stored answer under idempotency key `key` (its JSON text), or nil.
  function api.idem(sku, key)
    local today, yesterday = api.idem_days(sku)
    return client:hget(today, key) or client:hget(yesterday, key)
  end

  -- Stores `text` as the answer under `key`, as purchase_batch would today.
  function api.store_idem(sku, key, text)
    client:hset((api.idem_days(sku)), key, text)
  end

  -- The pending index's members (the ids of one purchase call, space-separated)
  -- with their scores: { { ids = {...}, score = n }, ... }, oldest first.
  function api.index(sku)
    local flat = client:zrange(M.keys(sku).pending, 0, -1, 'WITHSCORES')
    local out = {}
    for _, pair in ipairs(flat) do
      local ids = {}
      for id in pair[1]:gmatch('[^ ]+') do ids[#ids + 1] = id end
      out[#out + 1] = { ids = ids, score = tonumber(pair[2]) }
    end
    return out
  end

  -- Moves a pending reservation's expiry msAgo into the past, in the reservation
  -- and the index (where it becomes a member of its own).
  function api.backdate(sku, id, msAgo)
    local k = M.keys(sku)
    local at = api.now() - (msAgo or 1000)
    api.patch_res(sku, id, { expiresAt = tostring(at) })
    for _, m in ipairs(api.index(sku)) do
      for j, other in ipairs(m.ids) do
        if other == id then
          client:zrem(k.pending, table.concat(m.ids, ' '))
          table.remove(m.ids, j)
          if #m.ids > 0 then client:zadd(k.pending, m.score, table.concat(m.ids, ' ')) end
          break
        end
      end
    end
    client:zadd(k.pending, at, id)
    return at
  end

  -- Every event in the outbox, in order: a purchase_batch entry holds its
  -- reservations' events in one message (`events`: what they share and a row
  -- each, which the order worker expands as here); each becomes one event
  -- here with its entry's id.
  function api.events(sku)
    local out = {}
    for _, entry in ipairs(xrange(client, M.keys(sku).outbox, '-', '+')) do
      local e, f = { id = entry[1] }, entry[2]
      for i = 1, #f, 2 do e[f[i]] = f[i + 1] end
      if e.events then
        local batch = cjson.decode(e.events)
        assert.are.equal('reserved', batch.type)
        for _, ev in ipairs(assert(order_events.expand(batch))) do
          ev.id = e.id
          out[#out + 1] = ev
        end
      else
        out[#out + 1] = e
      end
    end
    return out
  end
  -- The outbox's entries (not events): one per call that changed something.
  function api.entries(sku) return #xrange(client, M.keys(sku).outbox, '-', '+') end

  function api.state(sku)
    local k = M.keys(sku)
    local sale, counts = client:hgetall(k.sale), client:hgetall(k.counts)
    local s = {
      initial = tonumber(sale.initial), stock = tonumber(client:get(k.stock)),
      users = {}, pending = {}, indexed = {}, pendingCount = tonumber(counts.pending),
    }
    for _, f in ipairs({ 'reserved', 'sold', 'canceled', 'expired' }) do s[f] = tonumber(counts[f]) or 0 end
    -- indexed: every id in the pending index, in order; pending: those whose
    -- reservation is PENDING (the others wait there for their member's walk)
    for _, m in ipairs(api.index(sku)) do
      for _, id in ipairs(m.ids) do
        s.indexed[#s.indexed + 1] = id
        local ok, r = pcall(api.res, sku, id)  -- an unreadable value is no reservation
        if ok and r.status == 'PENDING' then s.pending[#s.pending + 1] = id end
      end
    end
    -- Tickets held per user: the user keys of this sale generation (a test
    -- database is small enough to scan; the functions never do).
    local cursor = '0'
    repeat
      local page = scan(client, cursor, 'MATCH', k.prefix .. 'u:*', 'COUNT', 1000)
      cursor = page[1]
      for _, key in ipairs(page[2]) do
        local u = M.user_fields(client:get(key))
        local held = tonumber(u.held) or 0
        assert.is_true(held >= 0, key .. ' holds a negative count')
        if u.gen == sale.gen and held > 0 then s.users[key:sub(#k.prefix + 3)] = held end
        -- a key that holds tickets never expires
        if held > 0 then assert.are.equal(-1, client:pttl(key), key .. ' holds tickets but expires') end
      end
    until cursor == '0'
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
    local pendingQty, once = 0, {}
    for _, id in ipairs(s.indexed) do
      assert.is_nil(once[id], id .. ' is indexed twice')
      once[id] = true
    end
    for _, id in ipairs(s.pending) do pendingQty = pendingQty + tonumber(api.res(sku, id).quantity) end
    assert.are.equal(s.reserved, pendingQty, 'reserved == quantities of the indexed pending reservations')
    if s.pendingCount then assert.are.equal(#s.pending, s.pendingCount, 'counts.pending == pending reservations') end
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
