-- The order pipeline end to end, on the real Redis, Kafka and MariaDB of the
-- test stack: purchase API with its outbox relay -> Kafka -> order worker ->
-- MySQL, and the cleanup job expiring reservations.  Outages are real: the
-- stack's servers are stopped and started again.
local T = require "spec.e2e.support"
local cjson = require "cjson"

local env = function(k, d) local v = os.getenv(k) return (v and v ~= "") and v or d end
local REDIS_PORT = env("REDIS_PORT", "6379")
local OUTAGE = tonumber(env("PIPELINE_OUTAGE_SEC", "30"))

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  local ok = p:close()
  return out, ok
end

-- One value from MariaDB (the first column of the first row).
local function sql(q)
  local out = sh(("mariadb -h127.0.0.1 -P%s -u%s -p%s %s -N -B -e %s"):format(env("MYSQL_PORT", "3306"),
    env("MYSQL_USER", "flashuser"), env("MYSQL_PASSWORD", "flashpass"), env("MYSQL_DATABASE", "flash_sale"), T.q(q)))
  return tonumber(out:match("^(%-?%d+)")) or out:match("^([^\n]*)")
end

local function redis(...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = T.q(a) end
  return (sh("redis-cli -p " .. REDIS_PORT .. " " .. table.concat(args, " ")):gsub("%s+$", ""))
end

local function reconcile(sku)
  local out, ok = sh(("FLASHHOST_BIN=%s scripts/reconcile %s"):format(T.q(T.BIN), sku))
  return ok == true or ok == 0, out
end

describe("order pipeline", function()
  local api, worker, cleanup
  local sku_seq = 5000 + (os.time() % 1000) * 10

  local function new_sale(fields)
    sku_seq = sku_seq + 1
    local sale = { skuId = tostring(sku_seq), name = "Pipeline " .. sku_seq, price = 25, stock = 50 }
    for k, v in pairs(fields or {}) do sale[k] = v end
    local s, body = T.json(api.admin, "POST", "/admin/v1/sales", sale)
    assert.are.equal(201, s, cjson.encode(body))
    return sale.skuId
  end

  local user_seq = os.time() % 100000 * 1000
  local function buy(sku)
    user_seq = user_seq + 1
    return T.json(api.port, "POST", "/api/v1/flash/purchase", { userId = tostring(user_seq), skuId = sku, quantity = 1 })
  end

  local function orders(sku, status)
    return sql(("SELECT COUNT(*) FROM orders WHERE sku_id = %s%s"):format(sku, status and (" AND status = '" .. status .. "'") or ""))
  end

  local function wait_orders(sku, n, status, timeout)
    T.wait_for(("%d %s orders of SKU %s in MySQL"):format(n, status or "", sku), function()
      return orders(sku, status) == n
    end, timeout or 30)
  end

  local function start_worker()
    return T.start({ "--workers", "1", "app/order_worker.lua" }, { ORDER_BATCH = "100" })
  end

  setup(function()
    local out, ok = sh(T.q(T.BIN) .. " --run scripts/topics.lua")
    assert(ok == true or ok == 0, out)
    api = T.start({ "--workers", "2", "app/purchase.lua" })
    worker = start_worker()
    cleanup = T.start({ "--workers", "1", "app/cleanup.lua" }, { CLEANUP_INTERVAL_MS = "100" })
  end)
  teardown(function()
    T.stop(api)
    T.stop(worker)
    T.stop(cleanup)
  end)

  it("turns N purchases into exactly N orders and N audit rows", function()
    local sku = new_sale { stock = 50 }
    local ok_count = 0
    for _ = 1, 30 do
      if buy(sku) == 200 then ok_count = ok_count + 1 end
    end
    assert.are.equal(30, ok_count)
    wait_orders(sku, 30, "PENDING")
    assert.are.equal(30, sql("SELECT COUNT(*) FROM inventory_audit WHERE sku_id = " .. sku .. " AND event_type = 'reserved'"))
    assert.are.equal(30, sql("SELECT COUNT(*) FROM order_items WHERE sku_id = " .. sku))
    assert.are.equal(-30, sql("SELECT SUM(quantity_delta) FROM inventory_audit WHERE sku_id = " .. sku))
    local rok, out = reconcile(sku)
    assert.is_true(rok, out)
  end)

  it("confirms a paid order, returns stock once on cancel and on expiry", function()
    local sku = new_sale { stock = 3, reservationTtlSec = 2, perUserLimit = 1 }
    local _, a = buy(sku)
    local _, b = buy(sku)
    local _, c = buy(sku)
    assert.are.equal(410, (buy(sku)))

    local s, paid = T.json(api.port, "POST", "/api/v1/orders/" .. a.orderId .. "/pay", { paymentRef = "card-7" })
    assert.are.equal(200, s)
    assert.are.equal("CONFIRMED", paid.status)
    s = T.json(api.port, "POST", "/api/v1/orders/" .. b.orderId .. "/cancel")
    assert.are.equal(200, s)
    local s2, again = T.json(api.port, "POST", "/api/v1/orders/" .. b.orderId .. "/cancel")
    assert.are.equal(200, s2)
    assert.are.equal("ALREADY_CANCELED", again.code)
    assert.are.equal("1", redis("GET", "{sku:" .. sku .. "}:stock"))

    -- c is never paid: the cleanup job expires it and its ticket comes back
    T.wait_for("the unpaid reservation to expire", function()
      return redis("GET", "{sku:" .. sku .. "}:stock") == "2"
    end, 15)
    wait_orders(sku, 1, "CONFIRMED")
    wait_orders(sku, 1, "CANCELED")
    wait_orders(sku, 1, "EXPIRED")
    assert.are.equal(1, sql("SELECT COUNT(*) FROM payments WHERE order_id = " .. a.orderId))
    local _, view = T.json(api.port, "GET", "/api/v1/orders/" .. c.orderId)
    assert.are.equal("EXPIRED", view.status)
    -- paying after expiry is refused; the ticket can be bought again
    assert.are.equal(410, (T.json(api.port, "POST", "/api/v1/orders/" .. c.orderId .. "/pay")))
    assert.are.equal(200, (buy(sku)))
    T.wait_for("reconcile to agree", function() return reconcile(sku) end, 15)
  end)

  it("answers an order from MySQL when Redis no longer shows its reservation", function()
    local sku = new_sale { stock = 5 }
    local s, b = buy(sku)
    assert.are.equal(200, s)
    wait_orders(sku, 1, "PENDING")
    -- as after a torn append-only file: the order index survived, the reservation did not
    assert.are.equal("1", redis("DEL", "{sku:" .. sku .. "}:res:" .. b.reservationId))
    local path = "/api/v1/orders/" .. b.orderId
    local gs, view = T.json(api.port, "GET", path)
    assert.are.equal(200, gs, cjson.encode(view))
    assert.are.equal("mysql", view.source)
    assert.are.equal("PENDING", view.status)
    assert.are.equal(b.reservationId, view.reservationId)
    -- Redis holds nothing to confirm or release: a clear refusal, and nothing changes
    for _, action in ipairs { "pay", "cancel" } do
      local cs, cb = T.json(api.port, "POST", path .. "/" .. action, { paymentRef = "card-9" })
      assert.are.equal(409, cs, cjson.encode(cb))
      assert.are.equal("RESERVATION_GONE", cb.error)
      assert.are.equal("PENDING", cb.status)
    end
    assert.are.equal("4", redis("GET", "{sku:" .. sku .. "}:stock"))
    assert.are.equal(1, orders(sku, "PENDING"))
    -- without the index too (the entry of the order's block)
    local index_key = require("app.lib.stock").index_key(b.orderId)
    assert.are.equal("1", redis("HDEL", index_key, (require("lib.order_ids").locate(b.orderId))))
    gs, view = T.json(api.port, "GET", path)
    assert.are.equal(200, gs)
    assert.are.equal("mysql", view.source)
  end)

  it("ignores a second delivery of every event", function()
    local sku = new_sale { stock = 20 }
    for _ = 1, 10 do assert.are.equal(200, (buy(sku))) end
    wait_orders(sku, 10)
    local before_audit = sql("SELECT COUNT(*) FROM inventory_audit WHERE sku_id = " .. sku)
    local _, metrics_before = T.request(worker.admin, "GET", "/metrics")
    local applied = function(text)
      local n = 0
      for v in text:gmatch('order_events_total{type="reserved",outcome="applied"} (%d+)') do n = n + tonumber(v) end
      return n
    end
    local base = applied(metrics_before)
    -- produce every event of this SKU again, as a broker redelivery would
    local out, ok = sh(("%s --run spec/e2e/tools/redeliver.lua %s"):format(T.q(T.BIN), sku))
    assert(ok == true or ok == 0, out)
    local copies = tonumber(out:match("redelivered (%d+)"))
    assert.is_true(copies >= 10, out)
    T.wait_for("the worker to apply the copies", function()
      local _, m = T.request(worker.admin, "GET", "/metrics")
      return applied(m) >= base + 10
    end, 30)
    assert.are.equal(10, orders(sku))
    assert.are.equal(before_audit, sql("SELECT COUNT(*) FROM inventory_audit WHERE sku_id = " .. sku))
    assert.are.equal(10, sql("SELECT COUNT(*) FROM order_items WHERE sku_id = " .. sku))
  end)

  it("sends a poison message to the dead-letter topic, keeps going, and replays it on request", function()
    local function dead()
      local _, text = T.request(worker.admin, "GET", "/metrics")
      return tonumber((text or ""):match("\norder_dead_letters_total (%d+)")) or 0
    end
    local before = dead()
    local key = ("poison-%d"):format(os.time())
    local out, ok = sh(("%s --run spec/e2e/tools/produce.lua reservations %s '{not json'"):format(T.q(T.BIN), key))
    assert(ok == true or ok == 0, out)
    T.wait_for("the poison message in the dead-letter topic", function() return dead() > before end, 30)
    -- the line goes on: a purchase after it still becomes an order
    local sku = new_sale { stock = 5 }
    assert.are.equal(200, (buy(sku)))
    wait_orders(sku, 1, "PENDING")
    -- replay puts it back; it fails the same way and is dead-lettered again
    local listed = sh(("FLASHHOST_BIN=%s scripts/replay-dlq --dry-run"):format(T.q(T.BIN)))
    assert.truthy(listed:find("key " .. key, 1, true), listed)
    assert.truthy(listed:find("not JSON", 1, true), listed)
    local after_first = dead()
    local replayed, rok = sh(("FLASHHOST_BIN=%s scripts/replay-dlq"):format(T.q(T.BIN)))
    assert(rok == true or rok == 0, replayed)
    assert.truthy(replayed:find("key " .. key, 1, true), replayed)
    T.wait_for("the replayed message dead-lettered again", function() return dead() > after_first end, 30)
    local again = sh(("FLASHHOST_BIN=%s scripts/replay-dlq --dry-run"):format(T.q(T.BIN)))
    -- listed again, as a new dead letter: the first one was committed by the replay
    local function offset_of(text) return text:match("offset (%d+) key " .. key:gsub("%-", "%%-") .. " ") end
    assert.is_string(offset_of(again), again)
    assert.are_not.equal(offset_of(listed), offset_of(again))
  end)

  it("loses and doubles nothing when the order worker is killed mid-stream", function()
    local sku = new_sale { stock = 400 }
    local load = io.popen(("SKUS=%s LIMIT=200 wrk -t2 -c20 -d20s -s bench/wrk/purchase.lua http://127.0.0.1:%d 2>&1")
      :format(sku, api.port))
    T.wait_for("some orders to land", function() return orders(sku) > 20 end, 20)
    T.kill_all(worker)
    local text = load:read("*a")
    load:close()
    -- wrk stops counting at its limit while a few answers are still in flight:
    -- the reservations in Redis are the authority on what was sold
    local successes = tonumber(redis("HGET", "{sku:" .. sku .. "}:counts", "reserved"))
    assert.is_true(successes >= tonumber(text:match("s200=(%d+)")), text)
    assert.is_true(successes >= 300, text)
    -- the restarted worker takes the dead one's partitions back at once (static
    -- group membership) instead of waiting for its session to time out
    local t0 = T.now()
    worker = start_worker()
    wait_orders(sku, successes, nil, 60)
    local recovery = T.now() - t0
    print(("order worker restart -> last row: %.1f s"):format(recovery))
    assert.is_true(recovery < 10, ("last row %.1f s after the restart"):format(recovery))
    assert.are.equal(successes, sql("SELECT COUNT(*) FROM inventory_audit WHERE sku_id = " .. sku .. " AND event_type = 'reserved'"))
    assert.are.equal(successes, sql("SELECT COUNT(*) FROM order_items WHERE sku_id = " .. sku))
    local rok, rout = reconcile(sku)
    assert.is_true(rok, rout)

    -- a static member does not leave the group on a clean stop: a stop and
    -- start must be just as quick
    T.stop(worker)
    local later = new_sale { stock = 5 }
    for _ = 1, 5 do assert.are.equal(200, (buy(later))) end
    t0 = T.now()
    worker = start_worker()
    wait_orders(later, 5, nil, 60)
    recovery = T.now() - t0
    assert.is_true(recovery < 10, ("last row %.1f s after a clean restart"):format(recovery))
  end)

  it("gets a fenced order worker going again once the consumer that fenced it is gone", function()
    local sku = new_sale { stock = 20 }
    for _ = 1, 3 do assert.are.equal(200, (buy(sku))) end
    wait_orders(sku, 3, "PENDING")
    -- a second worker with the same node, host and worker id asks for the same
    -- group.instance.id: joining, it fences the running one
    local intruder = start_worker()
    local ok, err = pcall(T.wait_for, "the running worker to be fenced and start a new consumer", function()
      return T.read_log(worker):find("kafka consumer failed for good", 1, true)
    end, 60)
    T.stop(intruder)
    assert(ok, err)
    for _ = 1, 3 do assert.are.equal(200, (buy(sku))) end
    wait_orders(sku, 6, "PENDING", 60)
    local rok, rout = reconcile(sku)
    assert.is_true(rok, rout)
  end)

  it("keeps selling while Kafka is down and delivers every order after", function()
    local sku = new_sale { stock = 100 }
    sh("scripts/stack down kafka")
    local t_end, sold = T.now() + OUTAGE, 0
    while T.now() < t_end do
      local s = buy(sku)
      assert.are.equal(200, s)
      sold = sold + 1
      if sold >= 60 then T.sleep(math.max(0, t_end - T.now())) break end
      T.sleep(OUTAGE / 60)
    end
    local out, ok = sh("scripts/stack up kafka")
    assert(ok == true or ok == 0, out)
    wait_orders(sku, sold, "PENDING", 90)
    local rok, rout = reconcile(sku)
    assert.is_true(rok, rout)
  end)

  it("waits for MySQL when it is down and catches up", function()
    local sku = new_sale { stock = 100 }
    sh("scripts/stack down mysql")
    local t_end, sold = T.now() + OUTAGE, 0
    while T.now() < t_end do
      assert.are.equal(200, (buy(sku)))
      sold = sold + 1
      if sold >= 60 then T.sleep(math.max(0, t_end - T.now())) break end
      T.sleep(OUTAGE / 60)
    end
    local out, ok = sh("scripts/stack up mysql")
    assert(ok == true or ok == 0, out)
    wait_orders(sku, sold, "PENDING", 90)
    local rok, rout = reconcile(sku)
    assert.is_true(rok, rout)
  end)
end)
