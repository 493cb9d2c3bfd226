-- The purchase API on a Redis Cluster: a real flashhost running
-- app/purchase.lua with REDIS_URL=redis-cluster://... against 3 masters that
-- this spec starts (REDIS_CLUSTER_PORTS, default 27001,27002,27003; the
-- cluster bus uses each port + 10000) and stops.  The SKUs of every case live
-- on different masters.  The outbox relay is off so the outbox streams can be
-- counted.
local T = require "spec.e2e.support"
local cluster = require "spec.support.redis_cluster"
local socket = require "socket"
local cjson = require "cjson"



describe("purchase API on a Redis Cluster", function()
  local C, app
  local sku_seq = 5000 + (os.time() % 1000) * 10

  -- A SKU id whose keys live on the master on `port`.
  local function sku_on(port)
    for _ = 1, 500 do
      sku_seq = sku_seq + 1
      if cluster.owner(C, "{sku:" .. sku_seq .. "}:stock") == port then return tostring(sku_seq) end
    end
    error("no SKU found for port " .. port)
  end

  local function new_sale(port, fields)
    local sku = sku_on(port)
    local sale = { skuId = sku, name = "Cluster " .. sku, price = 10, stock = 10 }
    for k, v in pairs(fields or {}) do sale[k] = v end
    local s, body = T.json(app.admin, "POST", "/admin/v1/sales", sale)
    assert.are.equal(201, s, cjson.encode(body))
    return sku
  end

  local function buy(user, sku, extra)
    local b = { userId = user, skuId = sku, quantity = 1 }
    for k, v in pairs(extra or {}) do b[k] = v end
    return T.json(app.port, "POST", "/api/v1/flash/purchase", b)
  end

  local function sku_state(sku)
    local s, body = T.json(app.port, "GET", "/api/v1/flash/skus/" .. sku)
    assert.are.equal(200, s, cjson.encode(body))
    return body
  end

  -- What the master holding the SKU says, bypassing flashhost.
  local function stock_in_redis(port, sku) return tonumber(cluster.cli(port, "GET", "{sku:" .. sku .. "}:stock")) end

  -- Two purchases sent at the same moment on two connections: both requests
  -- are written before either answer is read.  Returns the two statuses.
  local function race(sku, u1, u2)
    local conns = {}
    for i, user in ipairs { u1, u2 } do
      local c = socket.tcp()
      c:settimeout(5)
      assert(c:connect("127.0.0.1", app.port))
      local body = cjson.encode { userId = user, skuId = sku, quantity = 1 }
      conns[i] = c
      c:send(("POST /api/v1/flash/purchase HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" ..
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"):format(#body, body))
    end
    local statuses = {}
    for i, c in ipairs(conns) do
      local resp, _, partial = c:receive("*a")
      c:close()
      statuses[i] = tonumber((resp or partial or ""):match("^HTTP/1%.1 (%d+)"))
    end
    table.sort(statuses)
    return statuses
  end

  setup(function()
    C = cluster.start()
    local seeds = {}
    for i, p in ipairs(C.ports) do seeds[i] = "127.0.0.1:" .. p end
    app = T.start({ "--workers", "2", "app/purchase.lua" },
      { OUTBOX_RELAY = "off", REDIS_URL = "redis-cluster://" .. table.concat(seeds, ",") },
      { wait_path = "/ready" }) -- ready: the slot map is known and every master connected
  end)

  teardown(function()
    T.stop(app)
    cluster.stop(C)
  end)

  it("sells from SKUs on each of the three masters", function()
    for _, p in ipairs(C.ports) do
      local sku = new_sale(p, { stock = 5 })
      local s, b = buy("1001", sku, { idempotencyKey = "first" })
      assert.are.equal(200, s, cjson.encode(b))
      assert.is_true(b.success)
      assert.matches("^%d+$", b.orderId)
      local st = sku_state(sku)
      assert.are.equal(4, st.available)
      assert.are.equal(1, st.reserved)
      assert.are.equal(4, stock_in_redis(p, sku))
      -- the order index (its own slot) leads back to the reservation
      -- (indexed just after the answer, possibly by the other worker: poll)
      T.wait_for("order " .. b.orderId, function()
        return (T.json(app.port, "GET", "/api/v1/orders/" .. b.orderId)) == 200
      end, 5)
    end
    -- the global SKU list lives in one slot, wherever that is
    local s, list = T.json(app.admin, "GET", "/admin/v1/sales")
    assert.are.equal(200, s)
    assert.is_true(#list.sales >= 3)
  end)

  it("gives the last ticket to one of two buyers racing for it, on every master", function()
    for _, p in ipairs(C.ports) do
      local sku = new_sale(p, { stock = 1 })
      assert.same({ 200, 410 }, race(sku, "2001", "2002"))
      assert.are.equal(0, sku_state(sku).available)
      assert.are.equal(0, stock_in_redis(p, sku))
    end
  end)

  it("replays a repeated idempotency key and takes nothing more", function()
    for _, p in ipairs(C.ports) do
      local sku = new_sale(p, { stock = 5 })
      local _, first = buy("3001", sku, { idempotencyKey = "again" })
      local s, again = buy("3001", sku, { idempotencyKey = "again" })
      assert.are.equal(200, s)
      assert.are.equal(first.reservationId, again.reservationId)
      assert.are.equal(first.orderId, again.orderId)
      assert.are.equal(422, (buy("3001", sku, { idempotencyKey = "again", quantity = 2 })))
      assert.are.equal(409, (buy("3002", sku, { idempotencyKey = "again" })))
      assert.are.equal(4, sku_state(sku).available)
      assert.are.equal(4, stock_in_redis(p, sku))
    end
  end)

  it("holds one ticket per user by default", function()
    for _, p in ipairs(C.ports) do
      local sku = new_sale(p, { stock = 5 })
      assert.are.equal(200, (buy("5001", sku)))
      local s, b = buy("5001", sku)
      assert.are.equal(403, s)
      assert.are.equal("PURCHASE_LIMIT_EXCEEDED", b.error)
      assert.are.equal(200, (buy("5002", sku)))
      assert.are.equal(3, sku_state(sku).available)
    end
  end)

  it("never oversells: 3,000 requests for 3 x 300 tickets on three masters", function()
    local skus, owner = {}, {}
    for i, p in ipairs(C.ports) do
      skus[i] = new_sale(p, { stock = 300 })
      owner[skus[i]] = p
    end
    local out = os.tmpname()
    -- 2 threads stop after 1,500 answers each; -d bounds the time (wrk waits it out)
    os.execute(("SKUS=%s LIMIT=1500 wrk -t2 -c60 -d12s -s bench/wrk/purchase.lua http://127.0.0.1:%d > %s 2>&1")
      :format(table.concat(skus, ","), app.port, out))
    local f = io.open(out)
    local text = f:read("*a")
    f:close()
    os.remove(out)
    local res = {}
    for k, v in (text:match("RESULT (.-)\n") or ""):gmatch("([%w_]+)=([%d%.]+)") do res[k] = tonumber(v) end
    assert.is_true((res.total or 0) >= 3000, text)
    assert.are.equal(900, res.s200, text)
    assert.are.equal(res.total - 900, res.s410, text)
    assert.are.equal(0, res.s503 + res.s500, text)
    assert.are.equal(0, res.bad_json, text)
    for _, sku in ipairs(skus) do
      local st = sku_state(sku)
      assert.are.equal(0, st.available)
      assert.are.equal(300, st.reserved)
      assert.are.equal(0, stock_in_redis(owner[sku], sku))
      -- one event per ticket, however many batches carried them
      assert.are.equal("300", cluster.cli(owner[sku], "EVAL", T.COUNT_OUTBOX_EVENTS, "1", "{sku:" .. sku .. "}:outbox"))
    end
  end)

  it("answers 503 for the SKUs of a dead master and keeps selling the others", function()
    local skus = {}
    for i, p in ipairs(C.ports) do skus[i] = new_sale(p, { stock = 50, perUserLimit = 0 }) end
    local victim = C.ports[2]
    cluster.kill_node(C, victim)
    local n = 0
    T.wait_for("the dead master's SKU to answer 503", function()
      n = n + 1
      return (buy("7" .. n, skus[2])) == 503
    end, 10)
    local s, b = buy("7100", skus[2])
    assert.are.equal(503, s)
    assert.are.equal("SERVICE_UNAVAILABLE", b.error)
    for _, i in ipairs { 1, 3 } do
      for u = 1, 5 do assert.are.equal(200, (buy("72" .. i .. u, skus[i]))) end
    end
  end)
end)
