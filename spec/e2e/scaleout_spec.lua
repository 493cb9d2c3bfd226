-- Several order workers and cleanup instances side by side, on the test stack's
-- Redis, Kafka and MariaDB: one purchase API (outbox relay on), two order workers
-- in one consumer group, two cleanup instances sharing the lease.  A sale with a
-- short reservation TTL is bought out; half the orders are paid, the rest expire.
-- One order worker leaves and the cleanup lease holder is killed on the way.  In
-- the end MySQL holds exactly one row per sale, with the right status, and the
-- expired tickets are back on sale exactly once.
local T = require "spec.e2e.support"
local cjson = require "cjson"
local socket = require "socket"

local function env(k, d)
  local v = os.getenv(k)
  return (v and v ~= "") and v or d
end
local REDIS_PORT = env("REDIS_PORT", "6379")

local free_port = T.free_port
local function ports() return { port = free_port(), admin = free_port() } end

local sh = T.sh

-- Rows of a query as arrays of strings (tab-separated batch output).
local function sql(q)
  local out, rc = sh(("MYSQL_PWD=%s mariadb --no-defaults --protocol=TCP -h%s -P%s -u%s %s -N -B -e %s"):format(
    T.q(env("MYSQL_PASSWORD", "flashpass")), T.q(env("MYSQL_HOST", "127.0.0.1")), env("MYSQL_PORT", "3306"),
    T.q(env("MYSQL_USER", "flashuser")), T.q(env("MYSQL_DATABASE", "flash_sale")), T.q(q)))
  if rc ~= 0 then error("mariadb: " .. out, 2) end
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local row = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do row[#row + 1] = field end
    rows[#rows + 1] = row
  end
  return rows
end

local function sql_map(q) -- first column -> second column (as a number when it is one)
  local m = {}
  for _, r in ipairs(sql(q)) do m[r[1]] = tonumber(r[2]) or r[2] end
  return m
end

local function redis(...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = T.q(a) end
  return (sh("redis-cli -p " .. REDIS_PORT .. " --raw " .. table.concat(args, " ")):gsub("%s+$", ""))
end

-- Sum of the samples of one metric family on an admin listener.
local function metric(proc, name)
  local s, body = T.request(proc.admin, "GET", "/metrics")
  assert.are.equal(200, s)
  local sum = 0
  for line in body:gmatch("[^\n]+") do
    if line:sub(1, #name) == name and line:sub(#name + 1, #name + 1):match("[{ ]") then
      sum = sum + (tonumber(line:match("(%S+)$")) or 0)
    end
  end
  return sum
end

-- The partitions a consumer holds now, from its "assigned N" / "revoked N" log lines.
local function held_partitions(proc)
  local n = 0
  for what, k in T.read_log(proc):gmatch("(%a+) (%d+) partitions") do
    if what == "assigned" then n = n + tonumber(k) elseif what == "revoked" then n = n - tonumber(k) end
  end
  return n
end

describe("several order workers and cleanup instances", function()
  local api, workers, cleanups = nil, {}, {}

  -- wait_for, and on a time-out the end of every app's log in the error.
  local function settle(what, fn, timeout)
    local ok, err = pcall(T.wait_for, what, fn, timeout)
    if ok then return end
    local parts = { tostring(err) }
    for name, p in pairs { api = api, worker1 = workers[1] or false, worker2 = workers[2] or false,
      cleanup1 = cleanups[1] or false, cleanup2 = cleanups[2] or false } do
      if p then
        local lines = {}
        for l in T.read_log(p):gmatch("[^\n]+") do lines[#lines + 1] = l:sub(1, 300) end
        parts[#parts + 1] = ("---- %s (last lines of its log)\n%s"):format(name,
          table.concat(lines, "\n", math.max(1, #lines - 12)))
      end
    end
    error(table.concat(parts, "\n"), 2)
  end
  local sku = tostring(800000000 + os.time() % 100000000) -- new for every run: MySQL keeps old rows
  local STOCK, BUYERS = 200, 210
  local PARTITIONS = 6 -- of `reservations`, scripts/topics.lua

  setup(function()
    local out, rc = sh(T.q(T.BIN) .. " --run scripts/topics.lua")
    assert(rc == 0, "topics: " .. out)
    api = T.start({ "--workers", "2", "app/purchase.lua" }, { NODE_ID = "3" }, ports())
    for i = 1, 2 do
      workers[i] = T.start({ "--workers", "1", "app/order_worker.lua" },
        { ORDER_BATCH = "50", NODE_ID = tostring(3 + i) }, ports())
      cleanups[i] = T.start({ "--workers", "1", "app/cleanup.lua" },
        { CLEANUP_INTERVAL_MS = "100", CLEANUP_LEASE_MS = "2000", NODE_ID = tostring(5 + i) }, ports())
    end
  end)

  teardown(function()
    for _, p in ipairs { api or false, workers[1] or false, workers[2] or false, cleanups[1] or false, cleanups[2] or false } do
      if p then T.stop(p) end
    end
  end)

  it("lands every order in MySQL exactly once and returns expired stock exactly once", function()
    local t0 = T.now()
    -- Both workers hold partitions of `reservations` before any event is produced.  (A
    -- member of the group that is gone without leaving, such as an order worker another
    -- spec stopped, holds up the join until its session times out: 10 s.)
    settle("both order workers to be assigned partitions", function()
      return held_partitions(workers[1]) > 0 and held_partitions(workers[2]) > 0
    end, 60)

    local s, body = T.json(api.admin, "POST", "/admin/v1/sales",
      { skuId = sku, name = "Scale-out " .. sku, price = 12, stock = STOCK, reservationTtlSec = 2 })
    assert.are.equal(201, s, cjson.encode(body))

    -- Buy out the sale from distinct users; pay every other order at once (well
    -- within the 2 s TTL), leave the others to expire.
    local user0 = (os.time() % 100000) * 1000
    local bought, paid, sold_out = {}, {}, 0
    for i = 1, BUYERS do
      local st, b = T.json(api.port, "POST", "/api/v1/flash/purchase",
        { userId = tostring(user0 + i), skuId = sku, quantity = 1 })
      if st == 200 then
        bought[#bought + 1] = b.orderId
        if #bought % 2 == 1 then
          -- paid at once: the order index is on its way to Redis before the
          -- purchase answer leaves, so a pay on either worker must find it
          local ps, pb = T.json(api.port, "POST", "/api/v1/orders/" .. b.orderId .. "/pay", { paymentRef = "card-" .. i })
          assert.are.equal(200, ps, cjson.encode(pb))
          assert.are.equal("CONFIRMED", pb.status)
          paid[b.orderId] = true
        end
      else
        assert.are.equal(410, st, cjson.encode(b))
        sold_out = sold_out + 1
      end
    end
    local n_paid = 0
    for _ in pairs(paid) do n_paid = n_paid + 1 end
    assert.are.equal(STOCK, #bought)
    assert.are.equal(BUYERS - STOCK, sold_out)
    assert.are.equal(STOCK / 2, n_paid)
    local n_expired = STOCK - n_paid

    -- Every reservation reaches MySQL as PENDING or CONFIRMED, spread over both workers.
    settle("all orders in MySQL", function()
      return tonumber(sql("SELECT COUNT(*) FROM orders WHERE sku_id = " .. sku)[1][1]) == STOCK
    end, 30)
    local applied = { metric(workers[1], "order_events_total"), metric(workers[2], "order_events_total") }
    assert.is_true(applied[1] > 0 and applied[2] > 0, ("events applied per worker: %d, %d"):format(applied[1], applied[2]))

    -- One worker leaves the group (a clean stop): the other takes all partitions.
    T.stop(workers[2])
    workers[2] = nil
    settle("the remaining worker to hold every partition", function()
      return held_partitions(workers[1]) >= PARTITIONS
    end, 60)

    -- The lease holder among the cleanup instances dies; the other takes over.
    -- (a lease left by an earlier run lapses within its TTL first)
    local owner, holder
    settle("the lease to belong to one of the two instances", function()
      owner = redis("GET", "cleanup:lease")
      for i, c in ipairs(cleanups) do
        for _, w in ipairs(T.children(c.pid)) do
          if owner:match(":" .. w .. "$") then holder = i end
        end
      end
      return holder
    end, 10)
    local dead = cleanups[holder]
    local before = metric(dead, "reservations_expired_total")
    -- the master first, or it would replace its worker
    local victims = T.children(dead.pid)
    T.signal(dead.pid, "KILL")
    for _, w in ipairs(victims) do T.signal(w, "KILL") end
    settle("the lease holder to be gone", function()
      if T.alive(dead.pid) then return false end
      for _, w in ipairs(victims) do if T.alive(w) then return false end end
      return true
    end, 5)
    local other = cleanups[3 - holder]

    -- Redis: the unpaid reservations expire, their tickets come back once.
    settle("the unpaid reservations to expire", function()
      local _, st = T.json(api.port, "GET", "/api/v1/flash/skus/" .. sku)
      return st.reserved == 0 and st.expired == n_expired
    end, 30)
    local _, st = T.json(api.port, "GET", "/api/v1/flash/skus/" .. sku)
    assert.are.equal(STOCK - n_paid, st.available)
    assert.are.equal(n_paid, st.sold)
    assert.are.equal(n_expired, st.expired)
    settle("the lease to move to the other instance", function()
      local now = redis("GET", "cleanup:lease")
      return now ~= "" and now ~= owner
    end, 10)
    assert.is_true(metric(other, "reservations_expired_total") >= n_expired - before)

    -- MySQL converges: one row per sale with the final status, one `reserved` audit
    -- row per order, stock movements that add up.
    settle("every order's final status in MySQL", function()
      local by = sql_map("SELECT status, COUNT(*) FROM orders WHERE sku_id = " .. sku .. " GROUP BY status")
      return by.CONFIRMED == n_paid and by.EXPIRED == n_expired and by.PENDING == nil
    end, 60)
    local rows = sql("SELECT id, status FROM orders WHERE sku_id = " .. sku)
    assert.are.equal(STOCK, #rows)
    local in_db = {}
    for _, r in ipairs(rows) do in_db[r[1]] = r[2] end
    for _, id in ipairs(bought) do
      assert.are.equal(paid[id] and "CONFIRMED" or "EXPIRED", in_db[id], "order " .. id)
    end
    local audit = sql(("SELECT event_type, COUNT(*), COUNT(DISTINCT order_id), SUM(quantity_delta) " ..
      "FROM inventory_audit WHERE sku_id = %s GROUP BY event_type ORDER BY event_type"):format(sku))
    assert.are.same({
      { "confirmed", tostring(n_paid), tostring(n_paid), "0" },
      { "expired", tostring(n_expired), tostring(n_expired), tostring(n_expired) },
      { "reserved", tostring(STOCK), tostring(STOCK), tostring(-STOCK) },
    }, audit)
    local strays = sql(("SELECT COUNT(*) FROM orders o WHERE o.sku_id = %s AND (SELECT COUNT(*) FROM inventory_audit a " ..
      "WHERE a.order_id = o.id AND a.event_type = 'reserved') <> 1"):format(sku))
    assert.are.equal("0", strays[1][1])
    assert.are.equal(tostring(STOCK), sql("SELECT COUNT(*) FROM order_items WHERE sku_id = " .. sku)[1][1])
    assert.are.equal(tostring(n_paid), sql("SELECT COUNT(*) FROM payments p JOIN orders o ON o.id = p.order_id " ..
      "WHERE o.sku_id = " .. sku)[1][1])

    local out, rc = sh(("FLASHHOST_BIN=%s scripts/reconcile %s"):format(T.q(T.BIN), sku))
    assert.are.equal(0, rc, out)
    print(("scale-out: %d orders (%d paid, %d expired) settled in MySQL in %.1fs")
      :format(STOCK, n_paid, n_expired, T.now() - t0))
  end)
end)
