-- The purchase API end to end: a real flashhost running app/purchase.lua
-- against the test stack's Redis, driven over HTTP.  The outbox relay is off
-- here so the outbox streams can be counted; the pipeline has its own spec.
local T = require "spec.e2e.support"
local cjson = require "cjson"

local REDIS_PORT = os.getenv("REDIS_PORT") or "6379"

local function redis(...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = T.q(a) end
  local p = io.popen("redis-cli -p " .. REDIS_PORT .. " --no-raw " .. table.concat(args, " ") .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

local function redis_int(...)
  return tonumber(redis(...):match("%(integer%) (%-?%d+)")) or tonumber(redis(...):match('"(%-?%d+)"'))
end

local function outbox_events(sku)
  return redis_int("EVAL", T.COUNT_OUTBOX_EVENTS, "1", "{sku:" .. sku .. "}:outbox")
end

describe("purchase API", function()
  local app
  local sku_seq = 100 + (os.time() % 1000) * 10

  local function new_sale(fields)
    sku_seq = sku_seq + 1
    local sale = { skuId = tostring(sku_seq), name = "Test " .. sku_seq, price = 10, stock = 10 }
    for k, v in pairs(fields or {}) do sale[k] = v end
    local s, body = T.json(app.admin, "POST", "/admin/v1/sales", sale)
    assert.are.equal(201, s, cjson.encode(body))
    return sale.skuId, body
  end

  local function buy(user, sku, extra, headers)
    local b = { userId = user, skuId = sku, quantity = 1 }
    for k, v in pairs(extra or {}) do b[k] = v end
    return T.json(app.port, "POST", "/api/v1/flash/purchase", b, headers)
  end

  local function sku_state(sku)
    local s, body = T.json(app.port, "GET", "/api/v1/flash/skus/" .. sku)
    assert.are.equal(200, s)
    return body
  end

  setup(function()
    app = T.start({ "--workers", "2", "app/purchase.lua" }, { OUTBOX_RELAY = "off", REDIS_URL = "redis://127.0.0.1:" .. REDIS_PORT })
  end)
  teardown(function() T.stop(app) end)

  it("reserves a ticket and takes it from the stock", function()
    local sku = new_sale { stock = 5 }
    local s, b = buy("1001", sku, { idempotencyKey = "first" })
    assert.are.equal(200, s)
    assert.is_true(b.success)
    assert.matches("^%d+$", b.reservationId)
    assert.matches("^%d+$", b.orderId)
    assert.is_number(b.expiresAt)
    assert.is_true(b.expiresAt > os.time() * 1000)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT", b.expiresAtIso)
    assert.is_number(b.processingTimeMs)
    assert.is_string(b.message)
    local st = sku_state(sku)
    assert.are.equal(4, st.available)
    assert.are.equal(1, st.reserved)
    assert.are.equal(5, st.initial)
  end)

  it("gives the last ticket to one of two buyers", function()
    local sku = new_sale { stock = 1 }
    local s1 = buy("2001", sku)
    local s2, b2 = buy("2002", sku)
    assert.are.equal(200, s1)
    assert.are.equal(410, s2)
    assert.are.equal("SOLD_OUT", b2.error)
    assert.are.equal(0, sku_state(sku).available)
  end)

  it("replays a repeated idempotency key and takes nothing more", function()
    local sku = new_sale { stock = 5 }
    local _, first = buy("3001", sku, { idempotencyKey = "again" })
    local s, again, h = buy("3001", sku, { idempotencyKey = "again" })
    assert.are.equal(200, s)
    assert.are.equal("true", h["idempotent-replayed"])
    assert.are.equal(first.reservationId, again.reservationId)
    assert.are.equal(first.orderId, again.orderId)
    assert.are.equal(4, sku_state(sku).available)
    -- the same key with another body, or by another user, is a conflict
    assert.are.equal(422, (buy("3001", sku, { idempotencyKey = "again", quantity = 2 })))
    assert.are.equal(409, (buy("3002", sku, { idempotencyKey = "again" })))
    assert.are.equal(4, sku_state(sku).available)
  end)

  it("replays a stored refusal exactly while the SKU is marked sold out in memory", function()
    local sku = new_sale { stock = 1 }
    assert.are.equal(200, (buy("4101", sku, { idempotencyKey = "bought" })))
    local s, b = buy("4101", sku, { idempotencyKey = "limited" })
    assert.are.equal(403, s)
    assert.are.equal("PURCHASE_LIMIT_EXCEEDED", b.error)
    -- enough sold-out answers that every worker sets its in-process mark
    for i = 1, 20 do assert.are.equal(410, (buy(tostring(4200 + i), sku))) end
    for _ = 1, 10 do
      local s2, b2, h2 = buy("4101", sku, { idempotencyKey = "limited" })
      assert.are.equal(403, s2)
      assert.are.equal("PURCHASE_LIMIT_EXCEEDED", b2.error)
      assert.are.equal("true", h2["idempotent-replayed"])
      local s3, _, h3 = buy("4101", sku, { idempotencyKey = "bought" })
      assert.are.equal(200, s3)
      assert.are.equal("true", h3["idempotent-replayed"])
    end
  end)

  it("rate-limits 25 quick requests by one user", function()
    local sku = new_sale { stock = 100, perUserLimit = 0 }
    local statuses = {}
    for i = 1, 25 do
      local s, b, h = buy("4001", sku, { idempotencyKey = "rl-" .. i })
      statuses[s] = (statuses[s] or 0) + 1
      if s == 429 then
        assert.are.equal("RATE_LIMITED", b.error)
        assert.matches("^%d+$", h["retry-after"])
      end
    end
    assert.is_true((statuses[429] or 0) >= 1, "some requests were limited")
    assert.is_true((statuses[200] or 0) >= 20 and statuses[200] <= 22, "about a bucket's worth went through")
    assert.are.equal(100 - statuses[200], sku_state(sku).available)
  end)

  it("holds one ticket per user by default", function()
    local sku = new_sale { stock = 5 }
    assert.are.equal(200, (buy("5001", sku)))
    local s, b = buy("5001", sku)
    assert.are.equal(403, s)
    assert.are.equal("PURCHASE_LIMIT_EXCEEDED", b.error)
  end)

  it("answers the sale window and unknown SKUs", function()
    local future = new_sale { startsAt = os.time() * 1000 + 3600000 }
    local s, b, h = buy("6001", future)
    assert.are.equal(425, s)
    assert.are.equal("SALE_NOT_STARTED", b.error)
    assert.matches("^%d+$", h["retry-after"])
    local past = new_sale { startsAt = 1000, endsAt = 2000 }
    s, b = buy("6001", past)
    assert.are.equal(410, s)
    assert.are.equal("SALE_ENDED", b.error)
    s, b = buy("6001", "987654321")
    assert.are.equal(404, s)
    assert.are.equal("SKU_NOT_FOUND", b.error)
  end)

  it("refuses bad input with a 4xx and changes nothing", function()
    local sku = new_sale { stock = 5 }
    local keys_before = redis_int("DBSIZE")
    local cases = {
      { "{not json", 400 },
      { cjson.encode { userId = 1, skuId = sku }, 400 },
      { cjson.encode { userId = "1", skuId = sku, quantity = "1" }, 400 },
      { cjson.encode { userId = "1", skuId = sku, quantity = 1e308 }, 400 },
      { cjson.encode { userId = "1", skuId = sku, quantity = 11 }, 400 },
      { cjson.encode { userId = "99999999999999999999999", skuId = sku }, 400 },
      { '{"userId":"1","skuId":"' .. sku .. '","idempotencyKey":"\255\254"}', 400 },
      { cjson.encode { userId = "1' OR '1'='1", skuId = sku }, 400 },
      { cjson.encode { userId = "1", skuId = sku .. "}:stock" }, 400 },
      { cjson.encode { userId = "1", skuId = sku, idempotencyKey = "x\nSET a b" }, 400 },
      { cjson.encode { userId = "1", skuId = sku, idempotencyKey = ("k"):rep(200) }, 400 },
      { "[1,2,3]", 400 },
      -- strict JSON: lua-cjson alone would read these as 5 tickets, or stop at the NUL
      { '{"userId":"1","skuId":"' .. sku .. '","quantity":0x5}', 400, "INVALID_JSON" },
      { '{"userId":"1","skuId":"' .. sku .. '","quantity":Infinity}', 400, "INVALID_JSON" },
      { '{"userId":"1","skuId":"' .. sku .. '","quantity":NaN}', 400, "INVALID_JSON" },
      { '{"userId":"1","skuId":"' .. sku .. '"}\0', 400, "INVALID_JSON" },
      { '{"userId":"1","skuId":"' .. sku .. '"} {}', 400, "INVALID_JSON" },
      { "", 400 },
      { ("x"):rep(1024 * 1024), 413 },
    }
    for _, c in ipairs(cases) do
      local s, body = T.request(app.port, "POST", "/api/v1/flash/purchase", c[1], { ["Content-Type"] = "application/json" })
      assert.are.equal(c[2], s, "for body " .. c[1]:sub(1, 60))
      local ok, decoded = pcall(cjson.decode, body)
      assert.is_true(ok, "answer is JSON: " .. tostring(body))
      assert.is_string(decoded.error)
      if c[3] then assert.are.equal(c[3], decoded.error, "for body " .. c[1]:sub(1, 60)) end
    end
    assert.are.equal(5, sku_state(sku).available)
    assert.are.equal(keys_before, redis_int("DBSIZE"))
  end)

  it("reloads 10 times under in-stock purchase load without failing a purchase", function()
    -- every request a new buyer of a SKU that cannot run out: each answer must be a 200
    local sku = new_sale { stock = 10000000, reservationTtlSec = 3600 }
    local load = T.wrk_async(("http://127.0.0.1:%d"):format(app.port), 7, 64, "bench/wrk/purchase.lua",
      { SKUS = sku, USER_BASE = 700000000 + sku_seq * 1000 })
    T.sleep(0.5)
    local log_before = #T.read_log(app)
    for _ = 1, 10 do
      T.signal(app.pid, "HUP")
      T.sleep(0.5)
    end
    local r = load.result()
    assert.is_true(r.requests > 1000, "load ran: " .. r.raw)
    assert.are.equal(0, r.non2xx, r.raw)
    assert.are.equal(0, r.socket_errors, r.raw)
    local ok, total = tonumber(r.raw:match("s200=(%d+)")), tonumber(r.raw:match("total=(%d+)"))
    assert.are.equal(total, ok, r.raw)
    local after = T.read_log(app):sub(log_before + 1)
    assert.is_nil(after:find("purchase not processed", 1, true), after:sub(1, 2000))
    assert.is_true(T.count(after, '"app started"') >= 10, "the workers switched to new code")
    -- wrk stops with up to one request per connection unanswered, which may still reserve
    local reserved = sku_state(sku).reserved
    assert.is_true(reserved >= ok and reserved <= ok + 64, ("%d answered 200, %d reserved"):format(ok, reserved))
  end)

  it("answers 503 with Retry-After while Redis is away, and recovers", function()
    local sku = new_sale { stock = 5 }
    os.execute("scripts/stack down redis >/dev/null 2>&1")
    local s, b, h = buy("7001", sku)
    os.execute("scripts/stack up redis >/dev/null 2>&1")
    assert.are.equal(503, s)
    assert.are.equal("SERVICE_UNAVAILABLE", b.error)
    assert.are.equal("1", h["retry-after"])
    T.wait_for("purchases to work again", function() return (buy("7002", sku)) == 200 end, 20)
    -- every worker reconnects on its own backoff: wait until a run of fresh
    -- connections (spread over the workers by the kernel) all find Redis ready
    T.wait_for("every worker ready", function()
      for _ = 1, 20 do
        if T.request(app.port, "GET", "/ready") ~= 200 then return false end
      end
      return true
    end, 20)
  end)

  it("never oversells: 20,000 requests on 200 connections for 1,000 tickets", function()
    local sku = new_sale { stock = 1000 }
    local out = os.tmpname()
    -- 2 threads stop after 10,000 answers each; -d bounds the time (wrk waits it out)
    os.execute(("SKUS=%s LIMIT=10000 wrk -t2 -c200 -d20s -s bench/wrk/purchase.lua http://127.0.0.1:%d > %s 2>&1")
      :format(sku, app.port, out))
    local f = io.open(out)
    local text = f:read("*a")
    f:close()
    os.remove(out)
    local res = {}
    for k, v in text:match("RESULT (.-)\n"):gmatch("([%w_]+)=([%d%.]+)") do res[k] = tonumber(v) end
    assert.is_true(res.total >= 20000, text)
    assert.are.equal(1000, res.s200, text)
    assert.are.equal(res.total - 1000, res.s410, text)
    assert.are.equal(0, res.bad_json, text)
    local st = sku_state(sku)
    assert.are.equal(0, st.available)
    assert.are.equal(1000, st.reserved)
    -- one event per ticket, however many batches carried them
    assert.are.equal(1000, outbox_events(sku))
  end)
end)
