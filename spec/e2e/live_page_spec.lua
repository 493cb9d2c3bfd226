-- The live sale page on the admin listener of app/purchase.lua: its JSON
-- endpoint, and the page itself rendered by headless Chromium during a wrk
-- load (a screenshot, and the DOM after the scripts ran).
local T = require "spec.e2e.support"
local cjson = require "cjson"
local socket = require "socket"

local REDIS_PORT = os.getenv("REDIS_PORT") or "6379"
local REDIS_URL = os.getenv("REDIS_URL") or ("redis://127.0.0.1:" .. REDIS_PORT)
-- The last screenshot stays here to be looked at.
local SCREENSHOT = os.getenv("LIVE_PAGE_PNG") or "/tmp/flashhost-live-page.png"

local port = T.free_port

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local t = f:read("*a")
  f:close()
  return t
end

-- Runs headless Chromium on `url` with `mode` ("--dump-dom" or
-- "--screenshot=FILE"); returns the exit code and stdout.
local function chromium(url, mode)
  local profile = T.scratch()
  local out = os.tmpname()
  local cmd = ("timeout -k 5 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run " ..
    "--disable-background-networking --disable-component-update --disable-sync --user-data-dir=%s " ..
    "--window-size=1200,800 --virtual-time-budget=3000 %s %s >%s 2>/dev/null"):format(T.q(profile), mode, T.q(url), T.q(out))
  local rc = os.execute(cmd)
  local text = read(out) or ""
  os.remove(out)
  os.execute("rm -rf " .. T.q(profile))
  return (rc == 0 or rc == true) and 0 or rc, text
end

-- The row of `sku` in a dumped DOM: { cell class = { text =, value = } }.
local function row_of(dom, sku)
  local tr = dom:match('<tr id="sku%-' .. sku .. '"[^>]*>(.-)</tr>')
  if not tr then return nil end
  local cells = {}
  for attrs, text in tr:gmatch("<td([^>]*)>(.-)</td>") do
    local cls = attrs:match('class="([^"]*)"') or ""
    local name = cls:match("([%w_]+)$")
    if name then cells[name] = { text = text, value = attrs:match('data%-value="([^"]*)"') } end
  end
  return cells
end

-- Removes the sales a spec made from Redis (their keys and the SKU list
-- entry), so later specs do not relay or walk them.
local function forget_skus(skus)
  local port = os.getenv("REDIS_PORT") or "6379"
  for _, sku in ipairs(skus) do
    os.execute(("redis-cli -p %s --scan --pattern %s | xargs -r redis-cli -p %s DEL >/dev/null 2>&1")
      :format(port, T.q("{sku:" .. sku .. "}:*"), port))
    os.execute(("redis-cli -p %s SREM flash:skus %s >/dev/null 2>&1"):format(port, sku))
  end
end

local function png_size(data)
  if not data or data:sub(1, 8) ~= "\137PNG\r\n\26\n" or data:sub(13, 16) ~= "IHDR" then return nil end
  local function u32(i)
    local a, b, c, d = data:byte(i, i + 3)
    return ((a * 256 + b) * 256 + c) * 256 + d
  end
  return u32(17), u32(21)
end

describe("live sale page", function()
  local app, scratch
  local made = {}
  local sku_seq = 700000 + (os.time() % 10000) * 10
  local user_seq = (os.time() % 100000) * 1000 + 500

  local function new_sale(fields)
    sku_seq = sku_seq + 1
    local sale = { skuId = tostring(sku_seq), name = "Live " .. sku_seq, price = 25, stock = 10 }
    for k, v in pairs(fields or {}) do sale[k] = v end
    local s, body = T.json(app.admin, "POST", "/admin/v1/sales", sale)
    assert.are.equal(201, s, cjson.encode(body))
    made[#made + 1] = sale.skuId
    return sale.skuId
  end

  local function buy(sku)
    user_seq = user_seq + 1
    return (T.json(app.port, "POST", "/api/v1/flash/purchase", { userId = tostring(user_seq), skuId = sku, quantity = 1 }))
  end

  local function live()
    local s, b = T.json(app.admin, "GET", "/admin/v1/live")
    assert.are.equal(200, s, type(b) == "table" and cjson.encode(b) or tostring(b))
    return b
  end

  local function sku_in(b, sku)
    for _, v in ipairs(type(b.skus) == "table" and b.skus or {}) do
      if v.skuId == sku then return v end
    end
  end

  setup(function()
    scratch = T.scratch()
    app = T.start({ "--workers", "2", "app/purchase.lua" },
      { OUTBOX_RELAY = "off", REDIS_URL = REDIS_URL, FH_METRICS_DIR = scratch .. "/metrics" },
      { port = port(), admin = port() })
  end)
  teardown(function()
    T.stop(app)
    forget_skus(made)
    if scratch then os.execute("rm -rf " .. T.q(scratch)) end
  end)

  it("serves one self-contained HTML page on the admin listener", function()
    local s, body, h = T.request(app.admin, "GET", "/")
    assert.are.equal(200, s)
    assert.matches("^text/html", h["content-type"])
    assert.matches("^<!doctype html>", body)
    assert.is_truthy(body:find("<style>", 1, true))
    assert.is_truthy(body:find("<script>", 1, true))
    assert.is_truthy(body:find("/admin/v1/live", 1, true))
    -- nothing fetched from elsewhere
    assert.is_nil(body:find("https?://"))
    assert.is_nil(body:find("<link", 1, true))
    assert.is_nil(body:find("<script src", 1, true))
    assert.is_nil(body:find("@import", 1, true))
    assert.is_nil(body:find("url(", 1, true))
    -- the public listener does not serve it
    local ps = T.request(app.port, "GET", "/")
    assert.are.equal(404, ps)
  end)

  it("answers each open sale's stock and the purchase totals as JSON", function()
    local sku = new_sale { stock = 10 }
    local ended = new_sale { startsAt = 1000, endsAt = 2000 }
    local before = live().totals
    local base_success = (before.attempts or {}).success or 0
    for _ = 1, 4 do assert.are.equal(200, buy(sku)) end
    local b
    T.wait_for("the totals to count the purchases", function()
      b = live()
      return (b.totals.attempts.success or 0) == base_success + 4
    end, 10)
    local v = sku_in(b, sku)
    assert.is_table(v, "the open sale is listed")
    assert.are.equal("Live " .. sku, v.name)
    assert.are.equal(6, v.available)
    assert.are.equal(4, v.reserved)
    assert.are.equal(0, v.sold)
    assert.are.equal(10, v.initial)
    assert.are.equal(4, v.taken)
    assert.are.equal(4, v.outbox)
    assert.are.equal("ACTIVE", v.status)
    assert.is_nil(sku_in(b, ended), "an ended sale is not listed")
    assert.is_true(b.otherSkus >= 1)
    -- newest sale first
    assert.are.equal(sku, b.skus[1].skuId)

    local t = b.totals
    assert.are.equal(2, t.workers)
    assert.are.equal(0, t.restarts)
    assert.is_true(t.requests >= 4)
    assert.is_true(t.responses["200"] >= 4)
    assert.is_number(t.p50Ms)
    assert.is_number(t.p99Ms)
    assert.is_true(t.p50Ms > 0 and t.p50Ms <= t.p99Ms, cjson.encode(t))
    -- cumulative buckets, +Inf last and equal to the request count
    local last = t.buckets[#t.buckets]
    assert.are.equal("+Inf", last[1])
    assert.are.equal(t.requests, last[2])
    for i = 2, #t.buckets - 1 do
      assert.is_true(t.buckets[i][1] > t.buckets[i - 1][1])
      assert.is_true(t.buckets[i][2] >= t.buckets[i - 1][2])
    end
    -- each quantile lies in the bucket where its rank falls
    for _, q in ipairs { { 0.5, t.p50Ms }, { 0.99, t.p99Ms } } do
      local rank, lo = q[1] * t.requests, 0
      for _, b in ipairs(t.buckets) do
        if b[2] >= rank then
          local hi = b[1] == "+Inf" and lo or b[1]
          assert.is_true(q[2] / 1000 >= lo - 1e-9 and q[2] / 1000 <= hi + 1e-9,
            ("p%g = %s ms outside (%s, %s] s"):format(q[1] * 100, q[2], lo, hi))
          break
        end
        lo = b[1]
      end
    end
  end)

  it("shows live numbers in a browser during a load", function()
    local sku = new_sale { stock = 1000000, name = "Flash <Concert> & Co" }
    local url = ("http://127.0.0.1:%d/"):format(app.admin)
    -- wrk in the background: every request a new buyer of this SKU
    local out = os.tmpname()
    local p = io.popen(("cd %s && SKUS=%s wrk -t1 -c2 -d40s -s bench/wrk/purchase.lua http://127.0.0.1:%d >%s 2>&1 & echo $!")
      :format(T.q(T.ROOT), sku, app.port, T.q(out)))
    local wrk_pid = tonumber(p:read("*l"))
    p:close()
    local ok, err = pcall(function()
      T.wait_for("the load to reserve tickets", function()
        local v = sku_in(live(), sku)
        return v and v.reserved > 0
      end, 10)

      -- during the load: the page lists the SKU with a rate above zero.  The
      -- page's timers run on virtual time, so its samples may be only a few
      -- real milliseconds apart: a render without a rate yet is tried again.
      local rc, dom, cells
      -- (a headless Chromium takes seconds to start on a busy machine: the load
      -- lasts long enough for five renders and a screenshot, and is stopped below)
      for _ = 1, 5 do
        rc, dom = chromium(url, "--dump-dom")
        assert.are.equal(0, rc)
        cells = row_of(dom, sku)
        if cells and cells.rate and (tonumber(cells.rate.value) or 0) > 0 then break end
      end
      assert.is_true(T.alive(wrk_pid), "the load was still running")
      assert.matches('id="state" class="live"', dom, 1, true)
      assert.is_table(cells, "the page has a row for SKU " .. sku)
      assert.are.equal(sku, cells.sku.text)
      assert.matches("Flash &lt;Concert&gt; &amp; Co", cells.name.text, 1, true)
      assert.is_true(tonumber(cells.reserved.text) > 0, cells.reserved.text)
      assert.is_true(tonumber(cells.rate.value) > 0, "tickets/s " .. tostring(cells.rate.value))
      assert.are.equal(1000000, tonumber(cells.available.text) + tonumber(cells.reserved.text) + tonumber(cells.sold.text))

      os.remove(SCREENSHOT)
      local png = SCREENSHOT .. ".tmp.png"
      rc = chromium(url, "--screenshot=" .. png)
      assert.are.equal(0, rc)
      assert.is_true(T.alive(wrk_pid), "the load was still running")
      local data = read(png)
      local w, h = png_size(data)
      assert.are.equal(1200, w)
      assert.are.equal(800, h)
      assert.is_true(#data > 15000, "screenshot of " .. #data .. " bytes")
      assert(os.rename(png, SCREENSHOT))
    end)
    -- enough load: wrk stops on SIGINT and prints its summary (-d40s bounds it anyway)
    T.signal(wrk_pid, "INT")
    T.wait_for("wrk to finish", function() return not T.alive(wrk_pid) end, 40)
    local text = read(out) or ""
    os.remove(out)
    assert(ok, err)
    local res = {}
    for k, v in (text:match("RESULT (.-)\n") or ""):gmatch("([%w_]+)=([%d%.]+)") do res[k] = tonumber(v) end
    assert.is_true((res.s200 or 0) > 0, text)
    -- Every answer is a purchase, or, rarely, a 503: the browsers beside the
    -- load write to the same disk, and an append-only-file fsync that stalls
    -- Redis past the client's deadline is answered 503 (a retry is safe)
    assert.are.equal(res.total, res.s200 + res.s503, text)
    assert.is_true(res.s503 <= res.total / 100, text)

    -- after the load: the page shows what the API says
    local s, st = T.json(app.port, "GET", "/api/v1/flash/skus/" .. sku)
    assert.are.equal(200, s)
    -- wrk drops the answers still in flight when its time is up (at most one per
    -- connection), and a purchase answered 503 after its deadline may have reserved
    assert.is_true(st.reserved >= res.s200 and st.reserved <= res.s200 + 2 + res.s503,
      ("%d reserved, %d answered 200, %d answered 503"):format(st.reserved, res.s200, res.s503))
    local rc, dom = chromium(url, "--dump-dom")
    assert.are.equal(0, rc)
    local cells = row_of(dom, sku)
    assert.is_table(cells, "the page has a row for SKU " .. sku)
    assert.are.equal(tostring(st.reserved), cells.reserved.text)
    assert.are.equal(tostring(st.available), cells.available.text)
    assert.are.equal(tostring(st.sold), cells.sold.text)
  end)

end)
