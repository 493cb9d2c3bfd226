-- The waiting room end to end: the purchase API, the order worker and the
-- cleanup job (the keeper) running; 5,000 users join during the pre-queue,
-- are shuffled at the opening, admitted at a rate set live, buy with their
-- tokens until the sale sells out; bad input is refused and changes nothing;
-- the waiting page is rendered by headless Chromium.
local T = require "spec.e2e.support"
local cjson = require "cjson"
local socket = require "socket"

local REDIS_PORT = os.getenv("REDIS_PORT") or "6379"
local SECRET = "e2e-queue-secret-0123456789"
local JOINERS = tonumber(os.getenv("QUEUE_E2E_JOINERS")) or 5000

-- One keep-alive connection with pipelining: `batch` sends every request of
-- the list, then reads the answers in order (the server answers a
-- connection's requests one after the other).
local Conn = {}
Conn.__index = Conn

local function connect(port)
  local c = assert(socket.tcp())
  c:settimeout(10)
  assert(c:connect("127.0.0.1", port))
  c:setoption("tcp-nodelay", true)
  return setmetatable({ c = c, port = port }, Conn)
end

local function encode(method, path, body)
  if type(body) == "table" then body = cjson.encode(body) end
  local head = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"):format(method, path)
  if body then head = head .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n" end
  return head .. "\r\n" .. (body or "")
end

function Conn:read()
  local line = assert(self.c:receive("*l"))
  local status = tonumber(line:match("^HTTP/1%.1 (%d+)"))
  local headers = {}
  while true do
    local h = assert(self.c:receive("*l"))
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    headers[k:lower()] = v
  end
  local n = tonumber(headers["content-length"]) or 0
  local body = n > 0 and assert(self.c:receive(n)) or ""
  local ok, v = pcall(cjson.decode, body)
  return status, ok and v or body, headers
end

-- reqs: { { method, path, body }, ... } -> { { status, body, headers }, ... }
function Conn:batch(reqs)
  local out, chunk = {}, 100
  for i = 1, #reqs, chunk do
    local parts = {}
    for j = i, math.min(#reqs, i + chunk - 1) do parts[#parts + 1] = encode(reqs[j][1], reqs[j][2], reqs[j][3]) end
    assert(self.c:send(table.concat(parts)))
    for _ = i, math.min(#reqs, i + chunk - 1) do out[#out + 1] = { self:read() } end
  end
  return out
end

function Conn:one(method, path, body) return unpack(self:batch { { method, path, body } }[1]) end
function Conn:close() self.c:close() end

local function sh(cmd)
  local out, rc = T.sh(cmd)
  return out, rc == 0
end

local function redis(...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = T.q(a) end
  return (T.sh("redis-cli -p " .. REDIS_PORT .. " " .. table.concat(args, " ")):gsub("%s+$", ""))
end

-- Spearman's rank correlation of two rankings of the same n items (no ties).
local function spearman(a, b)
  local n, d2 = #a, 0
  for i = 1, n do d2 = d2 + (a[i] - b[i]) ^ 2 end
  return 1 - 6 * d2 / (n * (n * n - 1))
end

describe("waiting room", function()
  local api, worker, cleanup, conn
  local made = {}
  local sku_seq = 880000 + (os.time() % 1000) * 10
  local user_base = (os.time() % 100000) * 100000

  local function new_sale(fields)
    sku_seq = sku_seq + 1
    local sale = { skuId = tostring(sku_seq), name = "Queue " .. sku_seq, price = 30, stock = 10 }
    for k, v in pairs(fields or {}) do sale[k] = v end
    local s, body = T.json(api.admin, "POST", "/admin/v1/sales", sale)
    assert.are.equal(201, s, cjson.encode(body))
    made[#made + 1] = sale.skuId
    return sale.skuId, body
  end

  local function stats(sku)
    local s, b = T.json(api.admin, "GET", "/admin/v1/sales/" .. sku .. "/queue")
    assert.are.equal(200, s, cjson.encode(b))
    return b
  end

  local function set_rate(sku, rate)
    local s, b = T.json(api.admin, "POST", "/admin/v1/sales/" .. sku .. "/queue", { admitPerSec = rate })
    assert.are.equal(200, s, cjson.encode(b))
    assert.are.equal(rate, b.admitPerSec)
  end

  local function status_path(sku, ticket) return "/api/v1/flash/queue/" .. sku .. "/status?ticket=" .. ticket end
  local function join_req(sku, user) return { "POST", "/api/v1/flash/queue/" .. sku .. "/join", { userId = user } } end
  local function buy_req(sku, user, token)
    return { "POST", "/api/v1/flash/purchase", { userId = user, skuId = sku, quantity = 1, queueToken = token } }
  end

  local function reconcile(sku)
    local out, ok = sh(("FLASHHOST_BIN=%s scripts/reconcile %s"):format(T.q(T.BIN), sku))
    return ok, out
  end

  setup(function()
    local out, ok = sh(T.q(T.BIN) .. " --run scripts/topics.lua")
    assert(ok, out)
    local env = { QUEUE_SECRET = SECRET }
    api = T.start({ "--workers", "2", "app/purchase.lua" }, env)
    worker = T.start({ "--workers", "1", "app/order_worker.lua" }, { ORDER_BATCH = "200" })
    cleanup = T.start({ "--workers", "1", "app/cleanup.lua" }, { CLEANUP_INTERVAL_MS = "100", QUEUE_STEP_MS = "50" })
    conn = connect(api.port)
  end)
  teardown(function()
    if conn then conn:close() end
    T.stop(api)
    T.stop(worker)
    T.stop(cleanup)
    for _, sku in ipairs(made) do
      os.execute(("redis-cli -p %s --scan --pattern %s | xargs -r redis-cli -p %s DEL >/dev/null 2>&1")
        :format(REDIS_PORT, T.q("{sku:" .. sku .. "}:*"), REDIS_PORT))
      redis("SREM", "flash:skus", sku)
      redis("SREM", "flash:queued", sku)
    end
  end)

  it("shuffles 5,000 pre-queue joiners fairly, admits at the set rate, sells out, reconciles", function()
    local t_start = T.now()
    local STOCK, TTL = 200, 2
    -- the sale opens once everybody has joined; the joins take a few seconds under the sanitizers
    local opens = math.floor((T.now() + 8) * 1000)
    local sku = new_sale { stock = STOCK, startsAt = opens,
      queue = { enabled = true, admitPerSec = 0, tokenTtlSec = TTL, preQueueSec = 600 } }

    -- 1. Everybody joins during the pre-queue, in a known order.
    local users, reqs = {}, {}
    for i = 1, JOINERS do
      users[i] = tostring(user_base + i)
      reqs[i] = join_req(sku, users[i])
    end
    local tickets, user_of = {}, {}
    for i, r in ipairs(conn:batch(reqs)) do
      assert.are.equal(200, r[1], cjson.encode(r[2]))
      assert.are.equal("waiting", r[2].state)
      assert.is_true(r[2].preQueue)
      tickets[i] = r[2].ticket
      user_of[r[2].ticket] = i
    end
    assert.is_true(T.now() * 1000 < opens, "the joins ended before the opening (raise the margin)")
    local s, again = conn:one(unpack(join_req(sku, users[1])))
    assert.are.equal(200, s)
    assert.are.equal(tickets[1], again.ticket, "a second join gives the same ticket")
    assert.are.equal(JOINERS, stats(sku).joined)
    -- before the opening: no purchase, with or without a made-up token
    s = conn:one(unpack(buy_req(sku, users[1], nil)))
    assert.are.equal(403, s)

    -- 2. The opening shuffles them.  Rate 0: nobody admitted yet, so a
    -- ticket's position is its place in the admission order.
    T.wait_for("the opening", function() return stats(sku).opened end, 20)
    reqs = {}
    for i = 1, JOINERS do reqs[i] = { "GET", status_path(sku, tickets[i]) } end
    local pos, seen = {}, {}
    for i, r in ipairs(conn:batch(reqs)) do
      assert.are.equal(200, r[1], cjson.encode(r[2]))
      assert.are.equal("waiting", r[2].state)
      assert.is_nil(r[2].preQueue)
      assert.is_string(r[3]["retry-after"])
      local p = r[2].position
      assert.is_true(p >= 1 and p <= JOINERS and not seen[p], "position " .. tostring(p))
      seen[p] = true
      assert.are.equal(p - 1, r[2].ahead)
      pos[i] = p
    end
    local order = {}
    for i = 1, JOINERS do order[i] = i end
    -- The bound: for a uniform shuffle rho has mean 0 and sd 1/sqrt(n-1)
    -- (0.014 for 5,000), so |rho| < 0.1 fails with probability ~1e-12;
    -- FIFO order gives rho = 1, a reversed one -1.
    local rho = spearman(order, pos)
    assert.is_true(math.abs(rho) < 0.1, "Spearman's rho between join and admission order: " .. rho)
    assert.are.equal(1, spearman(order, order))
    -- the first to join is not favoured: their mean position is near the middle
    local first_mean = 0
    for i = 1, 500 do first_mean = first_mean + pos[i] end
    first_mean = first_mean / 500
    assert.is_true(first_mean > JOINERS * 0.4 and first_mean < JOINERS * 0.6, "first 500 joiners' mean position " .. first_mean)
    local by_pos = {}
    for i, p in ipairs(pos) do by_pos[p] = i end

    -- 3. Admit a first batch, pause, and let half of them not buy: their
    -- places go to the next in line when the tokens expire.
    set_rate(sku, 200)
    T.wait_for("a first batch admitted", function() return stats(sku).serving >= 20 end, 10)
    set_rate(sku, 0)
    local paused
    T.wait_for("the admissions to stop", function()
      local a = stats(sku).serving
      socket.sleep(0.2)
      paused = stats(sku)
      return paused.serving == a
    end, 10)
    local first = paused.serving
    local tokens = {}
    reqs = {}
    for p = 1, first do reqs[p] = { "GET", status_path(sku, tickets[by_pos[p]]) } end
    -- the worker's copy of the counters may be a step behind: poll until it caught up
    T.wait_for("the first batch to read admitted", function()
      for p, r in ipairs(conn:batch(reqs)) do
        assert.are.equal(200, r[1])
        if r[2].state ~= "admitted" then return false end
        tokens[p] = r[2].token
      end
      return true
    end, 3)
    -- the next one waits, first in line
    local _, nxt = conn:one("GET", status_path(sku, tickets[by_pos[first + 1]]))
    assert.are.same({ "waiting", 1, 0 }, { nxt.state, nxt.position, nxt.ahead })
    local buyers, skipped = {}, {}
    reqs = {}
    for p = 1, first do
      if p % 2 == 0 then
        skipped[#skipped + 1] = p
      else
        buyers[#buyers + 1] = p
        reqs[#reqs + 1] = buy_req(sku, users[by_pos[p]], tokens[p])
      end
    end
    local orders = {}
    for k, r in ipairs(conn:batch(reqs)) do
      assert.are.equal(200, r[1], cjson.encode(r[2]))
      orders[buyers[k]] = r[2].orderId
    end
    local sold = #buyers
    -- one token buys once: the same purchase again is the first answer replayed
    local p1 = buyers[1]
    local s2, b2, h2 = conn:one(unpack(buy_req(sku, users[by_pos[p1]], tokens[p1])))
    assert.are.equal(200, s2)
    assert.are.equal("true", h2["idempotent-replayed"])
    assert.are.equal(orders[p1], b2.orderId)
    -- a token is its holder's only: another user cannot use it
    s2, b2 = conn:one(unpack(buy_req(sku, users[by_pos[skipped[1]]], tokens[p1])))
    assert.are.equal(403, s2)
    assert.are.equal("QUEUE_TOKEN_INVALID", b2.error)
    -- nobody buys without a token, nor with a forged one
    local waiting_user = users[by_pos[JOINERS]]
    s2, b2 = conn:one(unpack(buy_req(sku, waiting_user, nil)))
    assert.are.equal(403, s2)
    assert.are.equal("QUEUE_TOKEN_REQUIRED", b2.error)
    local forged = tokens[p1]:sub(1, -2) .. (tokens[p1]:sub(-1) == "0" and "1" or "0")
    s2, b2 = conn:one(unpack(buy_req(sku, users[by_pos[p1]], forged)))
    assert.are.equal(403, s2)
    assert.are.equal("QUEUE_TOKEN_INVALID", b2.error)
    local st = select(2, T.json(api.port, "GET", "/api/v1/flash/skus/" .. sku))
    assert.are.equal(STOCK - sold, st.available)

    -- the skipped tokens expire: each frees one place, though the rate is 0
    local after
    T.wait_for("the unused tokens to expire", function()
      after = stats(sku)
      return after.expired == #skipped and after.serving == first + #skipped
    end, TTL + 5)
    assert.are.equal(#buyers, after.used)
    s2, b2 = conn:one("GET", status_path(sku, tickets[by_pos[skipped[1]]]))
    assert.are.equal("expired", b2.state)
    s2, b2 = conn:one(unpack(buy_req(sku, users[by_pos[skipped[1]]], tokens[skipped[1]])))
    assert.are.equal(403, s2)
    assert.are.equal("QUEUE_TOKEN_INVALID", b2.error)

    -- 4. Full speed: everyone polls and buys in their turn until the sale sells out.
    set_rate(sku, 500)
    local next_pos, last_ok_at = first + 1, nil
    local deadline = T.now() + 30
    while sold < STOCK and T.now() < deadline do
      reqs = {}
      local ps = {}
      for p = next_pos, math.min(JOINERS, next_pos + 199) do
        ps[#ps + 1] = p
        reqs[#reqs + 1] = { "GET", status_path(sku, tickets[by_pos[p]]) }
      end
      local buys, bps = {}, {}
      for k, r in ipairs(conn:batch(reqs)) do
        local state = r[2].state
        if state == "admitted" then
          bps[#bps + 1] = ps[k]
          buys[#buys + 1] = buy_req(sku, users[by_pos[ps[k]]], r[2].token)
        elseif state == "expired" then
          next_pos = ps[k] + 1 -- a freed place that lapsed while we were busy: its turn has passed
        else
          break
        end
      end
      for k, r in ipairs(conn:batch(buys)) do
        if r[1] == 200 then
          sold = sold + 1
          last_ok_at = T.now()
        else
          assert.are.equal(410, r[1], cjson.encode(r[2]))
          assert.are.equal("SOLD_OUT", r[2].error)
        end
        next_pos = bps[k] + 1
      end
      if #buys == 0 then socket.sleep(0.02) end
    end
    assert.are.equal(STOCK, sold)
    st = select(2, T.json(api.port, "GET", "/api/v1/flash/skus/" .. sku))
    assert.are.equal(0, st.available)
    assert.are.equal(STOCK, st.reserved)

    -- 5. Everyone still waiting hears sold_out within one poll interval.
    local waiting = {}
    for p = next_pos, JOINERS do waiting[#waiting + 1] = { "GET", status_path(sku, tickets[by_pos[p]]) } end
    assert.is_true(#waiting > 1000, #waiting .. " still waiting")
    local _, probe, ph = conn:one(unpack(waiting[#waiting]))
    local poll_sec = tonumber(ph["retry-after"]) or 2
    if probe.state ~= "sold_out" then
      T.wait_for("sold_out for the last in line", function()
        return select(2, conn:one(unpack(waiting[#waiting]))).state == "sold_out"
      end, poll_sec + 1)
    end
    assert.is_true(T.now() - last_ok_at <= poll_sec, ("sold_out %.2f s after the last sale"):format(T.now() - last_ok_at))
    for _, r in ipairs(conn:batch(waiting)) do
      assert.are.equal(200, r[1])
      assert.are.equal("sold_out", r[2].state)
    end
    assert.is_true(stats(sku).soldOut)

    -- 6. Every buyer held a token: the sale's buyers are admitted users only.
    local keys = T.sh(("redis-cli -p %s --scan --pattern %s"):format(REDIS_PORT, T.q("{sku:" .. sku .. "}:u:*")))
    local n, serving = 0, stats(sku).serving
    for key in keys:gmatch("[^\n]+") do
      -- a user key is 'gen|held|tokens|ts|fullAt' (redis-lua/README.md)
      if (tonumber(redis("GET", key):match("^[^|]*|([^|]*)|")) or 0) > 0 then
        n = n + 1
        local i = tonumber(key:match(":u:(%d+)$")) - user_base
        assert.is_true(i >= 1 and i <= JOINERS and pos[i] <= serving, "buyer " .. key .. " was admitted")
      end
    end
    assert.are.equal(STOCK, n)

    -- 7. MySQL agrees once the outbox drained.
    T.wait_for("reconcile to agree", function() return reconcile(sku) end, 30)
    local s3, rep = T.json(api.admin, "GET", "/admin/v1/sales/" .. sku .. "/reconcile")
    assert.are.equal(200, s3)
    assert.is_true(rep.ok, cjson.encode(rep))
    assert.is_true(T.now() - t_start < 60, "took " .. (T.now() - t_start) .. " s")
  end)

  it("refuses bad input with a clear 4xx and changes nothing", function()
    local sku = new_sale { stock = 5, queue = { enabled = true, admitPerSec = 1000, tokenTtlSec = 30 } }
    local other = new_sale { stock = 5, queue = { enabled = true, admitPerSec = 1000, tokenTtlSec = 30 } }
    local plain = new_sale { stock = 5 }
    local s, a = conn:one(unpack(join_req(sku, "41")))
    assert.are.equal(200, s)
    local _, b = conn:one(unpack(join_req(other, "42")))
    T.wait_for("admission", function()
      return select(2, conn:one("GET", status_path(sku, a.ticket))).state == "admitted"
    end, 5)
    local token = select(2, conn:one("GET", status_path(sku, a.ticket))).token
    local before, before_other = stats(sku), stats(other)
    local cases = {
      { join_req("99999991", "41"), 404, "SKU_NOT_FOUND" },
      { join_req(plain, "41"), 404, "QUEUE_NOT_FOUND" },
      { join_req(sku, "abc"), 400, "VALIDATION_ERROR" },
      { { "POST", "/api/v1/flash/queue/" .. sku .. "/join", "{not json" }, 400, "INVALID_JSON" },
      { { "GET", status_path(other, a.ticket) }, 400, "QUEUE_TICKET_INVALID" }, -- a ticket of another SKU
      { { "GET", status_path(sku, a.ticket:gsub("%.41%.", ".42.")) }, 400, "QUEUE_TICKET_INVALID" },
      { { "GET", status_path(sku, "") }, 400, "QUEUE_TICKET_INVALID" },
      { { "GET", status_path("99999991", a.ticket) }, 400, "QUEUE_TICKET_INVALID" },
      { buy_req(sku, "41", token:sub(1, -5) .. "beef"), 403, "QUEUE_TOKEN_INVALID" }, -- forged
      { buy_req(sku, "42", token), 403, "QUEUE_TOKEN_INVALID" }, -- another user's
      { buy_req(other, "41", token), 403, "QUEUE_TOKEN_INVALID" }, -- another SKU's
      { buy_req(sku, "41", 12), 403, "QUEUE_TOKEN_INVALID" },
      { buy_req(sku, "41", nil), 403, "QUEUE_TOKEN_REQUIRED" },
    }
    for _, c in ipairs(cases) do
      local r = conn:batch { c[1] }[1]
      assert.are.equal(c[2], r[1], c[1][2] .. " " .. cjson.encode(r[2]))
      assert.are.equal(c[3], r[2].error, c[1][2] .. " " .. cjson.encode(r[2]))
      assert.is_string(r[2].message)
    end
    local after, after_other = stats(sku), stats(other)
    for _, f in ipairs { "joined", "admitted", "used", "expired" } do
      assert.are.equal(before[f], after[f], f)
      assert.are.equal(before_other[f], after_other[f], f)
    end
    for _, k in ipairs { sku, other, plain } do
      assert.are.equal(5, select(2, T.json(api.port, "GET", "/api/v1/flash/skus/" .. k)).available)
    end
    assert.are.equal("0", redis("EXISTS", "{sku:99999991}:q"))
    -- the admin side: a bad rate, a SKU without a queue, a bad queue setting
    -- (each in the one shape of a refusal, as the public routes answer)
    local b
    s, b = T.json(api.admin, "POST", "/admin/v1/sales/" .. sku .. "/queue", { admitPerSec = -1 })
    assert.are.equal(400, s)
    assert.are.same({ false, "VALIDATION_ERROR" }, { b.success, b.error })
    s, b = T.json(api.admin, "POST", "/admin/v1/sales/" .. plain .. "/queue", { admitPerSec = 5 })
    assert.are.equal(404, s)
    assert.are.same({ false, "QUEUE_NOT_FOUND" }, { b.success, b.error })
    local s4, b4 = T.json(api.admin, "POST", "/admin/v1/sales",
      { skuId = "99999992", name = "x", price = 1, stock = 1, queue = { preQueueSec = 60 } })
    assert.are.equal(400, s4)
    assert.are.same({ false, "VALIDATION_ERROR", "queue.preQueueSec" }, { b4.success, b4.error, b4.field })
    assert.are.equal(1000, stats(sku).admitPerSec)
    -- the purchase itself still works with the right token
    local s5 = conn:one(unpack(buy_req(sku, "41", token)))
    assert.are.equal(200, s5)
  end)

  it("shows the figures on /metrics and the live page", function()
    local sku = new_sale { stock = 5, queue = { enabled = true, admitPerSec = 1000, tokenTtlSec = 30 } }
    for i = 1, 3 do conn:one(unpack(join_req(sku, tostring(60 + i)))) end
    T.wait_for("admission", function() return stats(sku).admitted == 3 end, 5)
    local text
    T.wait_for("the keeper's figures", function()
      local s
      s, text = T.request(cleanup.admin, "GET", "/metrics")
      return s == 200 and text:find('queue_admitted_total{sku="' .. sku .. '"} 3', 1, true)
        and text:find('queue_wait_seconds{sku="' .. sku .. '",quantile="0.99"}', 1, true)
    end, 5)
    assert.is_truthy(text:find('queue_length{sku="' .. sku .. '"} 0', 1, true))
    local s, live = T.json(api.admin, "GET", "/admin/v1/live")
    assert.are.equal(200, s)
    local found
    for _, v in ipairs(live.skus) do if v.skuId == sku then found = v end end
    assert.is_table(found and found.queue, "the live answer has the queue")
    assert.are.same({ 0, 3, 0, 0 }, { found.queue.length, found.queue.admitted, found.queue.used, found.queue.expired })
  end)

  describe("the waiting page", function()
    local function chromium(url)
      local profile = T.scratch()
      local out = os.tmpname()
      local cmd = ("timeout -k 5 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run " ..
        "--disable-background-networking --disable-component-update --disable-sync --user-data-dir=%s " ..
        "--window-size=800,600 --virtual-time-budget=4000 --dump-dom %s >%s 2>/dev/null"):format(T.q(profile), T.q(url), T.q(out))
      local rc = os.execute(cmd)
      local f = io.open(out)
      local dom = f and f:read("*a") or ""
      if f then f:close() end
      os.remove(out)
      os.execute("rm -rf " .. T.q(profile))
      assert.is_true(rc == 0 or rc == true, "chromium failed")
      return dom
    end
    local function text_of(dom, id) return dom:match('id="' .. id .. '"[^>]*>([^<]*)<') end
    local function state_of(dom) return dom:match('id="state" data%-state="([%w_]+)"') end

    it("is one self-contained page on the public listener", function()
      local s, body, h = T.request(api.port, "GET", "/queue/123")
      assert.are.equal(200, s)
      assert.matches("^text/html", h["content-type"])
      assert.is_nil(body:find("https?://"))
      assert.is_nil(body:find("<script src", 1, true))
      assert.is_nil(body:find("<link", 1, true))
      assert.are.equal(404, (T.request(api.port, "GET", "/queue/abc")))
    end)

    it("shows the place in line and the people ahead", function()
      local sku = new_sale { stock = 5, queue = { enabled = true, admitPerSec = 0 } }
      for i = 1, 3 do conn:one(unpack(join_req(sku, tostring(70 + i)))) end
      local dom = chromium(("http://127.0.0.1:%d/queue/%s?user=74"):format(api.port, sku))
      assert.are.equal("waiting", state_of(dom), dom)
      assert.are.equal("4", text_of(dom, "position"))
      assert.are.equal("3", text_of(dom, "ahead"))
      assert.are.equal(4, stats(sku).joined)
    end)

    it("moves to your turn with a buy button, then to sold out", function()
      local sku = new_sale { stock = 1, queue = { enabled = true, admitPerSec = 1000 } }
      local dom = chromium(("http://127.0.0.1:%d/queue/%s?user=81"):format(api.port, sku))
      -- the keeper admits within its step; the page polls until then
      if state_of(dom) ~= "admitted" then dom = chromium(("http://127.0.0.1:%d/queue/%s?user=81"):format(api.port, sku)) end
      assert.are.equal("admitted", state_of(dom), dom)
      assert.is_truthy(dom:find('<button id="buy"', 1, true))
      -- someone else's purchase sells it out: the page of the next in line says so
      local _, a = conn:one(unpack(join_req(sku, "81")))
      local token = select(2, conn:one("GET", status_path(sku, a.ticket))).token
      assert.are.equal(200, (conn:one(unpack(buy_req(sku, "81", token)))))
      T.wait_for("sold out", function() return stats(sku).soldOut end, 5)
      dom = chromium(("http://127.0.0.1:%d/queue/%s?user=82"):format(api.port, sku))
      assert.are.equal("sold_out", state_of(dom), dom)
      assert.are.equal("Sold out", text_of(dom, "overText"))
    end)
  end)
end)
