-- flashhost.redis against a real Redis Cluster.  Runs inside the runtime:
--   build/flashhost --run /usr/bin/busted --ignore-lua -o TAP spec/integration/redis_cluster_spec.lua
-- It starts its own cluster of 3 masters on REDIS_CLUSTER_PORTS (default
-- 27001,27002,27003; the cluster bus uses each port + 10000) and, for one
-- case, a plain redis-server on REDIS_PLAIN_PORT (default 27010); nothing
-- else may listen there.  Everything is stopped at the end.
local redis = require "flashhost.redis"
local redis_cluster = require "flashhost.redis_cluster"
local core = require "flashhost.core"
local timer = require "flashhost.timer"
local cluster = require "spec.support.redis_cluster"

package.path = "./app/?.lua;" .. package.path
local stock = require "lib.stock"

local PLAIN_PORT = tonumber(os.getenv("REDIS_PLAIN_PORT")) or 27010
local RULES = { per_user_limit = 1, reservation_ttl_sec = 300, rate_limit = { capacity = 20, refill_per_sec = 5 } }

-- Polls cond every 5 ms for at most ms; returns its last value.
local function wait_until(ms, cond)
  local deadline = core.mono() + ms
  local v = cond()
  while not v and core.mono() < deadline do
    timer.sleep(5)
    v = cond()
  end
  return v
end

local function ms_since(t0) return core.mono() - t0 end
local function port_of(addr) return tonumber(addr:match(":(%d+)$")) end
local function addr_of(port) return "127.0.0.1:" .. port end

describe("flashhost.redis on a Redis Cluster", function()
  local C, r

  -- One SKU id per master, counting up from `base`: { [addr] = sku }.
  local function sku_per_master(base)
    local out, n = {}, 0
    for i = base, base + 500 do
      local a = r:node_of(stock.prefix(i) .. "stock")
      if a and not out[a] then out[a] = tostring(i); n = n + 1 end
      if n == #C.ports then return out end
    end
    error("no SKU found for every master")
  end

  -- A key (with a hash tag) that the master on `port` holds.
  local function key_on(port, tag)
    for i = 1, 1000 do
      local k = "{" .. tag .. i .. "}:k"
      if r:node_of(k) == addr_of(port) then return k end
    end
    error("no key for " .. port)
  end

  local function new_sale(sku, n)
    local a, kind, detail = stock.create_sale(r, { skuId = sku, name = "Sale " .. sku, price = 10, stock = n or 5 }, "t-" .. sku)
    assert.is_table(a, tostring(kind) .. " " .. tostring(detail))
    assert.equal("OK", a.code)
  end

  local function buy(sku, user, key)
    return stock.purchase(r, { userId = user, skuId = sku, quantity = 1, idempotencyKey = key },
      { reservationId = core.id(), orderId = core.id(), traceId = "t" }, RULES)
  end

  setup(function()
    C = cluster.start()
    -- two seeds of three: the third master is learnt from the slot map
    r = redis.connect { url = "redis-cluster://" .. addr_of(C.ports[1]) .. "," .. addr_of(C.ports[2]) }
    assert.is_true(r:wait_ready(5000))
    stock.register(r, "redis-lua")
  end)

  teardown(function()
    if r then r:close() end
    cluster.stop(C)
    cluster.stop_plain(PLAIN_PORT)
  end)

  describe("configuration", function()
    it("reads cluster URLs and option lists, and raises on misuse", function()
      local cfg = assert(redis_cluster.parse_url("redis-cluster://u:p%40w@10.0.0.1:7000,[::1]:7001/"))
      assert.same({ seeds = { "10.0.0.1:7000", "[::1]:7001" }, username = "u", password = "p@w" }, cfg)
      assert.is_nil(redis_cluster.parse_url("redis-cluster://h:1,h2"))
      local _, err = redis_cluster.parse_url("redis-cluster://:secret@h:1/3")
      assert.is_nil(err:find("secret", 1, true))
      assert.equal("redis-cluster://:***@h:1,h:2", redis.redact("redis-cluster://:secret@h:1,h:2"))
      assert.has_error(function() redis.connect { url = "redis-cluster://h" } end)
      assert.has_error(function() redis.connect { cluster = {} } end)
      assert.has_error(function() redis.connect { cluster = { "no-port" } } end)
      assert.has_error(function() redis.connect { cluster = { "h:1" }, timeout_ms = 0 } end)
      assert.is_true(r.cluster)
      local single = redis.connect { url = "redis://127.0.0.1:1" }
      assert.is_nil(single.cluster) -- the single-node client, untouched
      single:close()
    end)

    it("hashes keys to the slots Redis computes", function()
      for _, k in ipairs { "foo", "{user1000}.following", "{user1000}.followers", "a{}b", "{}", "x{y",
        "{sku:7}:stock", "{sku:7}:idem:abc", "", "h\195\169llo", "{a}{b}", "12345" } do
        assert.equal(cluster.slot(C.ports[1], k), redis_cluster.key_slot(k), "key " .. k)
      end
      assert.equal(redis_cluster.key_slot("12345"), redis_cluster.key_slot(12345))
      assert.equal(0x31C3, redis_cluster.crc16("123456789")) -- the XMODEM check value
    end)

    it("raises on commands that would break a shared connection", function()
      assert.has_error(function() r:call("ASKING") end)
      assert.has_error(function() r:call("readonly") end)
      assert.has_error(function() r:call("MULTI") end)
      assert.has_error(function() r:call() end)
      assert.has_error(function() r:call("GET", {}) end)
      local bare = redis.connect { cluster = { addr_of(C.ports[1]) } }
      assert.has_error(function() bare:fcall("no-library-registered", { "k" }, {}) end)
      bare:close()
      assert.has_error(function() r:call_node("10.9.9.9:1", "PING") end)
    end)
  end)

  describe("routing", function()
    it("sends each key to the master of its slot, on every master", function()
      local before = r:stats().moved
      for _, p in ipairs(C.ports) do
        local k = key_on(p, "route")
        assert.equal("OK", r:call("SET", k, "v" .. p))
        assert.equal("v" .. p, r:call("GET", k))
        assert.equal(1, r:call("EXISTS", k))
        -- the key is on that master itself, not reached through a redirection
        assert.equal("v" .. p, cluster.cli(p, "GET", k))
      end
      assert.equal(before, r:stats().moved)
      assert.equal(redis.null, r:call("GET", key_on(C.ports[3], "missing")))
      assert.equal("PONG", r:call("PING"))
      local ok, err = r:call("MGET", key_on(C.ports[1], "x"), key_on(C.ports[2], "y"))
      assert.is_false(ok)
      assert.matches("^CROSSSLOT", err)
    end)

    it("routes stream commands by their stream, as the outbox relay uses them", function()
      for _, p in ipairs(C.ports) do
        local stream = key_on(p, "outbox")
        local before = r:stats().moved
        assert.equal("OK", r:call("XGROUP", "CREATE", stream, "relay", "0", "MKSTREAM"))
        local id = assert(r:call("XADD", stream, "*", "type", "reserved"))
        local got = r:call("XREADGROUP", "GROUP", "relay", "c1", "COUNT", 10, "STREAMS", stream, ">")
        assert.equal(stream, got[1][1])
        assert.equal(id, got[1][2][1][1])
        assert.equal(1, r:call("XACK", stream, "relay", id))
        assert.is_table(r:call("XAUTOCLAIM", stream, "relay", "c1", 0, "0-0", "COUNT", 10))
        assert.is_table(r:call("XINFO", "STREAM", stream))
        assert.equal(before, r:stats().moved) -- each went straight to the stream's master
      end
    end)

    it("spreads SKUs 1..20 over all three masters, as the cluster does", function()
      local per = {}
      for i = 1, 20 do
        local key = stock.prefix(i) .. "stock"
        local a = r:node_of(key)
        assert.equal(addr_of(cluster.owner(C, key)), a, "SKU " .. i)
        per[a] = (per[a] or 0) + 1
      end
      local masters = r:masters()
      assert.equal(3, #masters)
      for _, a in ipairs(masters) do assert.is_true((per[a] or 0) >= 1, a .. " holds none of SKUs 1..20") end
    end)

    it("answers calls made before the slot map arrived", function()
      local fresh = redis.connect { cluster = { addr_of(C.ports[1]) } }
      local k = key_on(C.ports[3], "early")
      assert.equal("OK", fresh:call("SET", k, "early")) -- no wait_ready: a seed and MOVED carry it
      assert.equal("early", fresh:call("GET", k))
      assert.is_true(fresh:wait_ready(3000))
      assert.equal("connected", fresh:status())
      fresh:close()
      assert.equal("disconnected", fresh:status())
      assert.has_error(function() fresh:call("PING") end)
    end)

    it("says why it is not ready when pointed at a Redis without cluster mode", function()
      cluster.start_plain(PLAIN_PORT)
      local c = redis.connect { url = "redis-cluster://" .. addr_of(PLAIN_PORT) }
      local ok, err = c:wait_ready(300)
      assert.is_nil(ok)
      assert.equal("timeout", err)
      local st, why = c:status()
      assert.equal("connecting", st)
      assert.matches("cluster support disabled", why)
      c:close()
      cluster.stop_plain(PLAIN_PORT)
    end)

    it("pipelines 600 commands from 60 coroutines over the three masters", function()
      local done, wrong = 0, {}
      for i = 1, 60 do
        core.spawn(function()
          for j = 1, 10 do
            local k = "{pipe" .. (i * 10 + j) .. "}"
            local v, err = r:call("INCR", k)
            if v ~= 1 then wrong[#wrong + 1] = tostring(err or v) end
            local e = r:call("ECHO", k)
            if e ~= k then wrong[#wrong + 1] = tostring(e) end
          end
          done = done + 1
        end)
      end
      assert.is_truthy(wait_until(10000, function() return done == 60 end))
      assert.same({}, wrong)
      assert.equal(0, r:stats().inflight)
    end)
  end)

  describe("functions", function()
    local function libraries(port)
      local list = cluster.cli(port, "FUNCTION", "LIST", "LIBRARYNAME", stock.LIBRARY)
      return list:find("library_name", 1, true) and 1 or 0
    end

    it("loads the library on every master with load_functions", function()
      for _, p in ipairs(C.ports) do cluster.cli(p, "FUNCTION", "FLUSH") end
      for _, p in ipairs(C.ports) do assert.equal(0, libraries(p)) end
      assert.is_true(r:load_functions())
      for _, p in ipairs(C.ports) do assert.equal(1, libraries(p), "master " .. p) end
    end)

    it("runs purchases on SKUs of different masters", function()
      local skus = sku_per_master(1000)
      for a, sku in pairs(skus) do
        new_sale(sku, 5)
        local res = assert(buy(sku, "u1", "k1"))
        assert.equal("OK", res.code, a)
        assert.equal(4, res.remaining)
        -- a replay on the same node answers the stored result
        assert.equal("REPLAY", assert(buy(sku, "u1", "k1")).code)
        assert.equal("LIMIT_EXCEEDED", assert(buy(sku, "u1", "k2")).code)
        local st = assert(stock.status(r, sku))
        assert.equal(4, st.stock)
        assert.equal(1, st.counts.reserved)
        -- the SKU's keys live on its master
        assert.equal("4", cluster.cli(port_of(a), "GET", stock.prefix(sku) .. "stock"))
      end
    end)

    it("runs a batch of purchases on one master, without the order index", function()
      local skus = sku_per_master(1300)
      for a, sku in pairs(skus) do
        new_sale(sku, 2)
        local attempts = {}
        for i = 1, 3 do
          attempts[i] = { p = { userId = "b" .. i, skuId = sku, quantity = 1 },
            ids = { reservationId = core.id(), orderId = core.id(), traceId = "t" } }
        end
        local list = assert(stock.purchase_batch(r, sku, attempts, RULES, false))
        assert.same({ "OK", "OK", "SOLD_OUT" }, { list[1].code, list[2].code, list[3].code }, a)
        assert.equal(0, assert(stock.status(r, sku)).stock)
      end
    end)

    it("reloads the library on the one node that lost it", function()
      local skus = sku_per_master(1600)
      for _, sku in pairs(skus) do new_sale(sku, 5) end
      local victim = C.ports[2]
      assert.equal("OK", r:call_node(addr_of(victim), "FUNCTION", "FLUSH"))
      assert.equal(0, libraries(victim))
      for a, sku in pairs(skus) do
        assert.equal("OK", assert(buy(sku, "u9", "n1")).code, a)
      end
      for _, p in ipairs(C.ports) do assert.equal(1, libraries(p), "master " .. p) end
    end)
  end)

  describe("resharding", function()
    it("follows MOVED after a slot moved to another master, and refreshes the map", function()
      local skus = sku_per_master(2200)
      local from = C.ports[1]
      local sku = skus[addr_of(from)]
      local to = C.ports[3]
      new_sale(sku, 7)
      local key = stock.prefix(sku) .. "stock"
      local slot = redis_cluster.key_slot(key)
      local st0 = r:stats()
      cluster.migrate_slot(C, slot, from, to)
      assert.equal(addr_of(from), r:node_of(key)) -- the client has not heard yet

      local st = assert(stock.status(r, sku))
      assert.equal(7, st.stock)
      assert.equal(addr_of(to), r:node_of(key)) -- learnt from MOVED at once
      assert.equal(st0.moved + 1, r:stats().moved)
      assert.is_truthy(wait_until(3000, function() return r:stats().refreshes > st0.refreshes end))
      assert.equal(addr_of(to), r:node_of(key))
      assert.equal(addr_of(cluster.owner(C, key)), r:node_of(key))
      -- the library is loaded where it now runs, and purchases go on
      assert.equal("OK", assert(buy(sku, "m1", "m1")).code)
      assert.equal("6", cluster.cli(to, "GET", key))
      assert.equal(st0.moved + 1, r:stats().moved)
    end)

    it("follows ASK during a migration, ASKING and the command back to back", function()
      local skus = sku_per_master(2800)
      local from, to = C.ports[2], C.ports[1]
      local sku = skus[addr_of(from)]
      new_sale(sku, 9)
      local k = stock.prefix(sku)
      local slot = redis_cluster.key_slot(k .. "stock")
      assert.equal("OK", cluster.cli(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(from)))
      assert.equal("OK", cluster.cli(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(to)))
      -- one key of the slot has moved, the others not yet
      assert.equal("OK", cluster.cli(from, "MIGRATE", "127.0.0.1", to, k .. "stock", 0, 5000))
      assert.equal("1", cluster.cli(to, "CLUSTER", "COUNTKEYSINSLOT", slot))

      local st0 = r:stats()
      assert.equal("9", r:call("GET", k .. "stock"))            -- ASK to the importing master
      assert.equal("Sale " .. sku, r:call("HGET", k .. "sale", "name")) -- still on the old one
      assert.equal(st0.ask + 1, r:stats().ask)
      assert.equal(addr_of(from), r:node_of(k .. "stock"))       -- ASK does not change the map

      -- Many tasks at once: asked commands and plain ones for the importing
      -- master's own keys share its connection.  A command slipping between
      -- ASKING and its own would be refused (MOVED back) or take the flag.
      local own = key_on(to, "own")
      assert.equal("OK", r:call("SET", own, "mine"))
      local done, wrong = 0, {}
      for i = 1, 80 do
        core.spawn(function()
          local key, want = own, "mine"
          if i % 2 == 0 then key, want = k .. "stock", "9" end
          local v, err = r:call("GET", key)
          if v ~= want then wrong[#wrong + 1] = tostring(v) .. " " .. tostring(err) end
          done = done + 1
        end)
      end
      assert.is_truthy(wait_until(5000, function() return done == 80 end))
      assert.same({}, wrong)
      assert.equal(st0.ask + 41, r:stats().ask)

      -- a script whose keys are split between the two answers TRYAGAIN: it
      -- is sent again until the migration ends
      local quick = redis.connect { cluster = { addr_of(C.ports[1]) }, timeout_ms = 150 }
      assert.is_true(quick:wait_ready(3000))
      stock.register(quick, "redis-lua")
      local v, err = stock.purchase(quick, { userId = "a1", skuId = sku, quantity = 1 },
        { reservationId = core.id(), orderId = core.id() }, RULES)
      assert.is_nil(v)
      assert.equal("unavailable", err)
      assert.is_true(quick:stats().tryagain >= 1)
      quick:close()

      local result
      core.spawn(function() result = { buy(sku, "a2", "a2") } end)
      timer.sleep(60) -- the purchase is retrying now; finish the migration under it
      cluster.move_keys(slot, from, to)
      cluster.assign_slot(C, slot, to)
      assert.is_truthy(wait_until(3000, function() return result end))
      assert.equal("OK", result[1] and result[1].code, tostring(result[2]) .. " " .. tostring(result[3]))
      assert.equal(8, result[1].remaining)
      assert.is_truthy(wait_until(3000, function() return r:node_of(k .. "stock") == addr_of(to) end))
      assert.equal(8, assert(stock.status(r, sku)).stock)
    end)
  end)

  describe("a master down", function()
    it("answers not connected at once for its slots while the others keep working", function()
      local victim = C.ports[3]
      local dead_key = key_on(victim, "dead")
      local dead_sku = sku_per_master(3400)[addr_of(victim)]
      new_sale(dead_sku, 5)
      local live = {}
      for _, p in ipairs(C.ports) do if p ~= victim then live[#live + 1] = key_on(p, "live") end end

      local refreshes0 = r:stats().refreshes
      -- traffic on every master while one dies
      local stop, running, ok_live, failures, bad = false, 0, 0, {}, {}
      for i = 1, 12 do
        running = running + 1
        core.spawn(function()
          while not stop do
            local k = i % 3 == 0 and dead_key or live[i % 3]
            local t0 = core.mono()
            local v, err = r:call("INCR", k)
            if v then
              if k ~= dead_key then ok_live = ok_live + 1 end
            elseif k == dead_key then
              failures[err] = (failures[err] or 0) + 1
              if ms_since(t0) > 200 then bad[#bad + 1] = "slow failure " .. ms_since(t0) end
              timer.sleep(5)
            else
              bad[#bad + 1] = "live key failed: " .. tostring(err)
            end
          end
          running = running - 1
        end)
      end
      assert.is_truthy(wait_until(2000, function() return ok_live > 100 end))
      cluster.kill_node(C, victim)
      assert.is_truthy(wait_until(2000, function() return (failures["not connected"] or 0) > 5 end))
      local before = ok_live
      assert.is_truthy(wait_until(2000, function() return ok_live > before + 200 end))
      stop = true
      assert.is_truthy(wait_until(3000, function() return running == 0 end))
      assert.same({}, bad)
      for reason in pairs(failures) do
        assert.is_truthy(reason == "not connected" or reason == "connection lost", reason)
      end

      local t0 = core.mono()
      local v, err = r:call("GET", dead_key)
      assert.is_nil(v)
      assert.equal("not connected", err)
      local a, kind = buy(dead_sku, "d1", "d1")
      assert.is_nil(a)
      assert.equal("unavailable", kind)
      assert.is_true(ms_since(t0) < 50, "took " .. ms_since(t0) .. " ms")
      for _, k in ipairs(live) do assert.is_number(r:call("INCR", k)) end
      local st, why = r:status()
      assert.equal("disconnected", st)
      assert.matches(addr_of(victim), why, 1, true)
      -- the failures asked for a fresh map; with no replica the victim keeps its slots
      assert.is_truthy(wait_until(3000, function() return r:stats().refreshes > refreshes0 end))
      assert.equal(addr_of(victim), r:node_of(dead_key))
    end)
  end)
end)
