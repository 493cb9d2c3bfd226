-- Observability end to end: the Prometheus config and alert rules in
-- deploy/prometheus/ (promtool), the /metrics text of a purchase app with two
-- workers, /ready, and a real Prometheus scraping the app's admin listener.
local T = require "spec.e2e.support"
local cjson = require "cjson"
local socket = require "socket"

local REDIS_PORT = os.getenv("REDIS_PORT") or "6379"
local REDIS_URL = os.getenv("REDIS_URL") or ("redis://127.0.0.1:" .. REDIS_PORT)
local PURCHASE_ROUTE = "/api/v1/flash/purchase"

local port = T.free_port

-- Runs a shell command: exit code, output (stdout and stderr).
local function sh(cmd)
  local p = io.popen("(" .. cmd .. ") 2>&1; echo \"__rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return rc, (out:gsub("__rc=%d+%s*$", ""))
end

local function read(path)
  local f = assert(io.open(path))
  local t = f:read("*a")
  f:close()
  return t
end

local function urlencode(s)
  return (s:gsub("[^%w%-_.~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- Go's server answers larger bodies chunked.
local function dechunk(body, headers)
  if not (headers and (headers["transfer-encoding"] or ""):lower():find("chunked")) then return body end
  local out, i = {}, 1
  while true do
    local size_hex, data_start = body:match("^(%x+)[^\r\n]*\r\n()", i)
    local size = size_hex and tonumber(size_hex, 16)
    if not size or size == 0 then break end
    out[#out + 1] = body:sub(data_start, data_start + size - 1)
    i = data_start + size + 2
  end
  return table.concat(out)
end

local function get_json(port, path)
  local s, body, h = T.request(port, "GET", path)
  if not s then return nil, body end
  local ok, v = pcall(cjson.decode, dechunk(body, h))
  return s, ok and v or body
end

-- Prometheus text: families { name = { help = n, type = n, kind =, first_sample_line =,
-- help_line =, type_line = } }, samples { series = value }, and the series in order.
local function parse_exposition(text)
  local families, samples, order, lineno = {}, {}, {}, 0
  local function fam(name)
    families[name] = families[name] or { help = 0, type = 0 }
    return families[name]
  end
  for line in text:gmatch("[^\n]+") do
    lineno = lineno + 1
    local kind, name, rest = line:match("^# (%u+) ([%w_:]+) ?(.*)$")
    if kind == "HELP" then
      local f = fam(name)
      f.help, f.help_line = f.help + 1, f.help_line or lineno
    elseif kind == "TYPE" then
      local f = fam(name)
      f.type, f.type_line, f.kind = f.type + 1, f.type_line or lineno, rest
    elseif not line:match("^#") then
      local series, value = line:match("^(.-)%s+(%S+)$")
      assert(series, "unreadable line: " .. line)
      assert(samples[series] == nil, "series listed twice: " .. series)
      samples[series] = tonumber(value)
      order[#order + 1] = series
      local base = series:match("^([%w_:]+)")
      local stem = base
      for _, suffix in ipairs { "_bucket", "_sum", "_count" } do
        local s = base:sub(1, #base - #suffix)
        if base:sub(-#suffix) == suffix and families[s] and families[s].kind == "histogram" then stem = s end
      end
      local f = fam(stem)
      f.first_sample_line = f.first_sample_line or lineno
      f.samples = (f.samples or 0) + 1
    end
  end
  return families, samples, order
end

-- The sum of the samples of `name` whose label text contains every `needles` string.
local function sum_series(samples, name, needles)
  local total = 0
  for series, v in pairs(samples) do
    if series:match("^([%w_:]+)") == name then
      local ok = true
      for _, n in ipairs(needles or {}) do
        if not series:find(n, 1, true) then ok = false break end
      end
      if ok then total = total + v end
    end
  end
  return total
end

-- deploy/prometheus/prometheus.yml for a test: scrape `admin` every second,
-- the other apps on ports nobody listens on; alerts.yml beside it.
local function render_config(dir, admin, others)
  local text = read(T.ROOT .. "/deploy/prometheus/prometheus.yml")
  local n
  local function sub(pattern, repl)
    text, n = text:gsub(pattern, repl)
    assert(n == 1, "prometheus.yml no longer has " .. pattern)
  end
  sub("scrape_interval: %d+s", "scrape_interval: 1s")
  sub("scrape_timeout: %d+s", "scrape_timeout: 1s")
  sub("evaluation_interval: %d+s", "evaluation_interval: 1s")
  sub('"127%.0%.0%.1:9145"', ('"127.0.0.1:%d"'):format(admin))
  sub('"127%.0%.0%.1:9146"', ('"127.0.0.1:%d"'):format(others[1]))
  sub('"127%.0%.0%.1:9147"', ('"127.0.0.1:%d"'):format(others[2]))
  T.write(dir .. "/prometheus.yml", text)
  T.write(dir .. "/alerts.yml", read(T.ROOT .. "/deploy/prometheus/alerts.yml"))
  return dir .. "/prometheus.yml"
end

-- Situations each alert rule must (and must not) fire on, for `promtool test rules`.
local RULE_TESTS = [[
rule_files: [alerts.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # node a: 10 req/s, 1 of them 503 (9%); node b: 10 req/s, 0.05/s 503 (0.5%)
      - series: 'http_request_duration_seconds_count{job="purchase",instance="a",method="POST",route="/api/v1/flash/purchase",status="200"}'
        values: '0+600x10'
      - series: 'http_request_duration_seconds_count{job="purchase",instance="a",method="POST",route="/api/v1/flash/purchase",status="503"}'
        values: '0+60x10'
      - series: 'http_request_duration_seconds_count{job="purchase",instance="b",method="POST",route="/api/v1/flash/purchase",status="200"}'
        values: '0+600x10'
      - series: 'http_request_duration_seconds_count{job="purchase",instance="b",method="POST",route="/api/v1/flash/purchase",status="503"}'
        values: '0+3x10'
      # node a: every purchase takes 100..250 ms; node b: all under 5 ms
      - series: 'http_request_duration_seconds_bucket{job="purchase",instance="a",method="POST",route="/api/v1/flash/purchase",status="200",le="0.1"}'
        values: '0x10'
      - series: 'http_request_duration_seconds_bucket{job="purchase",instance="a",method="POST",route="/api/v1/flash/purchase",status="200",le="0.25"}'
        values: '0+600x10'
      - series: 'http_request_duration_seconds_bucket{job="purchase",instance="a",method="POST",route="/api/v1/flash/purchase",status="200",le="+Inf"}'
        values: '0+600x10'
      - series: 'http_request_duration_seconds_bucket{job="purchase",instance="b",method="POST",route="/api/v1/flash/purchase",status="200",le="0.005"}'
        values: '0+600x10'
      - series: 'http_request_duration_seconds_bucket{job="purchase",instance="b",method="POST",route="/api/v1/flash/purchase",status="200",le="+Inf"}'
        values: '0+600x10'
    alert_rule_test:
      - eval_time: 1m
        alertname: PurchaseErrorRateHigh
        exp_alerts: []
      - eval_time: 5m
        alertname: PurchaseErrorRateHigh
        exp_alerts:
          - exp_labels: { severity: critical, instance: a }
            exp_annotations:
              summary: "Purchase errors above 1% on a"
              description: "9.091% of purchase requests answered 5xx over the last 2 minutes. Check Redis (GET /ready) and the app's error logs."
      - eval_time: 5m
        alertname: PurchaseLatencyP99High
        exp_alerts:
          - exp_labels: { severity: warning, instance: a }
            exp_annotations:
              summary: "Purchase p99 latency above 100 ms on a"
              description: "p99 of POST /api/v1/flash/purchase is 248.5ms. Look at redis_operation_duration_seconds and the workers' CPU."

  - interval: 1m
    input_series:
      # SKU 7 sells out at minute 2 (two purchase nodes report it); SKU 8 has been empty all along
      - series: 'sku_available_tickets{job="purchase",instance="a",sku="7"}'
        values: '5 3 0 0 0 0'
      - series: 'sku_available_tickets{job="purchase",instance="b",sku="7"}'
        values: '5 3 0 0 0 0'
      - series: 'sku_available_tickets{job="purchase",instance="a",sku="8"}'
        values: '0x30'
      - series: 'sku_available_tickets{job="purchase",instance="a",sku="9"}'
        values: '9x30'
    alert_rule_test:
      - eval_time: 1m
        alertname: SkuSoldOut
        exp_alerts: []
      - eval_time: 4m
        alertname: SkuSoldOut
        exp_alerts:
          - exp_labels: { severity: info, sku: "7" }
            exp_annotations:
              summary: "SKU 7 is sold out"
              description: "No tickets are available for SKU 7; buyers now get 410 SOLD_OUT. Unpaid reservations that expire put tickets back on sale."
      - eval_time: 25m
        alertname: SkuSoldOut
        exp_alerts: []

  - interval: 1m
    input_series:
      - series: 'outbox_backlog{job="purchase",instance="a",sku="7"}'
        values: '0+500x12'
      - series: 'outbox_backlog{job="purchase",instance="b",sku="7"}'
        values: '0+500x12'
      - series: 'outbox_backlog{job="purchase",instance="a",sku="8"}'
        values: '900x12'
      - series: 'consumer_lag{job="order_worker",instance="w1",topic="reservations"}'
        values: '700x12'
      - series: 'consumer_lag{job="order_worker",instance="w2",topic="reservations"}'
        values: '700x12'
      - series: 'consumer_lag{job="order_worker",instance="w1",topic="payments"}'
        values: '10x12'
      - series: 'order_dead_letters_total{job="order_worker",instance="w1"}'
        values: '0 0 0 2 2 2'
    alert_rule_test:
      - eval_time: 6m
        alertname: OutboxBacklogHigh
        exp_alerts: []
      - eval_time: 9m
        alertname: OutboxBacklogHigh
        exp_alerts:
          - exp_labels: { severity: warning, sku: "7" }
            exp_annotations:
              summary: "Outbox of SKU 7 holds 4.5k undelivered events"
              description: "The outbox relay is not keeping up or cannot reach Kafka. Nothing is lost (events stay in Redis), but orders reach MySQL late. Check kafka in GET /ready and kafka_produce_latency_seconds."
      - eval_time: 3m
        alertname: ConsumerLagHigh
        exp_alerts: []
      - eval_time: 6m
        alertname: ConsumerLagHigh
        exp_alerts:
          - exp_labels: { severity: warning, topic: reservations }
            exp_annotations:
              summary: "Order worker is 1.4k messages behind on reservations"
              description: "The order worker is not keeping up or cannot write to MySQL; orders show up late. Check MySQL and the order worker's logs."
      - eval_time: 4m
        alertname: OrderDeadLetters
        exp_alerts:
          - exp_labels: { severity: warning, instance: w1 }
            exp_annotations:
              summary: "Order events were dead-lettered on w1"
              description: "2 messages went to order-dead-letter in 10 minutes. Inspect them and replay with scripts/replay-dlq."

  - interval: 1m
    input_series:
      - series: 'flashhost_worker_restarts_total{job="purchase",instance="a"}'
        values: '0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'flashhost_worker_restarts_total{job="cleanup",instance="c"}'
        values: '0x20'
      # the counter of node a appears with its first refused reload at minute 60;
      # node b's failure is older than the test
      - series: 'flashhost_reload_failures_total{job="purchase",instance="a"}'
        values: '_x60 1x60'
      - series: 'flashhost_reload_failures_total{job="purchase",instance="b"}'
        values: '1x120'
      - series: 'up{job="purchase",instance="a"}'
        values: '1 1 0 0 0 0'
      - series: 'up{job="cleanup",instance="c"}'
        values: '1x5'
    alert_rule_test:
      - eval_time: 5m
        alertname: FlashhostWorkerRestarts
        exp_alerts:
          - exp_labels: { severity: warning, job: purchase, instance: a }
            exp_annotations:
              summary: "purchase on a restarted workers"
              description: "1 worker restarts in 10 minutes. The master's log says how each worker ended."
      - eval_time: 18m
        alertname: FlashhostWorkerRestarts
        exp_alerts: []
      - eval_time: 58m
        alertname: FlashhostReloadFailed
        exp_alerts: []
      - eval_time: 63m
        alertname: FlashhostReloadFailed
        exp_alerts:
          - exp_labels: { severity: warning, job: purchase, instance: a }
            exp_annotations:
              summary: "A hot reload of purchase on a was refused"
              description: "The old code keeps serving. The log line 'reload refused' holds the error; check a change with flashhost --check before SIGHUP."
      - eval_time: 100m
        alertname: FlashhostReloadFailed
        exp_alerts: []
      - eval_time: 1m
        alertname: FlashhostTargetDown
        exp_alerts: []
      - eval_time: 4m
        alertname: FlashhostTargetDown
        exp_alerts:
          - exp_labels: { severity: critical, job: purchase, instance: a }
            exp_annotations:
              summary: "purchase on a does not answer /metrics"
              description: "The process is down or its admin listener is unreachable."
]]

-- Removes the sales a spec made from Redis (their keys and the SKU list
-- entry), so later specs do not relay or walk them.
local function forget_skus(skus)
  for _, sku in ipairs(skus) do
    os.execute(("redis-cli -p %s --scan --pattern %s | xargs -r redis-cli -p %s DEL >/dev/null 2>&1")
      :format(REDIS_PORT, T.q("{sku:" .. sku .. "}:*"), REDIS_PORT))
    os.execute(("redis-cli -p %s SREM flash:skus %s >/dev/null 2>&1"):format(REDIS_PORT, sku))
  end
end

describe("observability", function()
  local app, scratch, metrics_dir
  local made = {}
  local purchases_ok = 0
  local sku_seq = 500000 + (os.time() % 10000) * 10
  local user_seq = (os.time() % 100000) * 1000

  local function new_sale(stock)
    sku_seq = sku_seq + 1
    local sale = { skuId = tostring(sku_seq), name = "Obs " .. sku_seq, price = 10, stock = stock }
    local s, body = T.json(app.admin, "POST", "/admin/v1/sales", sale)
    assert.are.equal(201, s, cjson.encode(body))
    made[#made + 1] = sale.skuId
    return sale.skuId
  end

  local function buy(sku)
    user_seq = user_seq + 1
    local s, b = T.json(app.port, "POST", PURCHASE_ROUTE,
      { userId = tostring(user_seq), skuId = sku, quantity = 1 })
    if s == 200 then purchases_ok = purchases_ok + 1 end
    return s, b
  end

  local function worker_snapshot_success(id)
    local f = io.open(("%s/worker-%d.prom"):format(metrics_dir, id))
    if not f then return 0 end
    local _, samples = parse_exposition(f:read("*a"))
    f:close()
    return sum_series(samples, "purchase_attempts_total", { 'status="success"' })
  end

  setup(function()
    scratch = T.scratch()
    metrics_dir = scratch .. "/metrics"
    app = T.start({ "--workers", "2", "app/purchase.lua" },
      { OUTBOX_RELAY = "off", REDIS_URL = REDIS_URL, FH_METRICS_DIR = metrics_dir },
      { port = port(), admin = port() })
  end)

  teardown(function()
    T.stop(app)
    forget_skus(made)
    if scratch then os.execute("rm -rf " .. T.q(scratch)) end
  end)

  it("has a Prometheus config and alert rules that promtool accepts", function()
    local dir = scratch .. "/promtool"
    local cfg = render_config(dir, 9145, { 9146, 9147 })
    local rc, out = sh("promtool check config " .. T.q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("SUCCESS: 1 rule files found", out, 1, true)
    rc, out = sh("promtool check rules " .. T.q(T.ROOT .. "/deploy/prometheus/alerts.yml"))
    assert.are.equal(0, rc, out)
    local n = tonumber(out:match("SUCCESS: (%d+) rules found"))
    assert.is_true(n and n >= 7, out)
    -- the committed config scrapes the three admin listeners
    local committed = read(T.ROOT .. "/deploy/prometheus/prometheus.yml")
    for _, target in ipairs { "127.0.0.1:9145", "127.0.0.1:9146", "127.0.0.1:9147" } do
      assert.is_truthy(committed:find(target, 1, true), target)
    end
  end)

  it("fires each alert on the situation it describes, and not otherwise", function()
    local dir = scratch .. "/rules"
    T.write(dir .. "/alerts.yml", read(T.ROOT .. "/deploy/prometheus/alerts.yml"))
    T.write(dir .. "/alerts_test.yml", RULE_TESTS)
    local rc, out = sh("cd " .. T.q(dir) .. " && promtool test rules alerts_test.yml")
    assert.are.equal(0, rc, out)
    assert.matches("SUCCESS", out, 1, true)
    -- every alert of the file is exercised above
    for name in read(dir .. "/alerts.yml"):gmatch("alert: ([%w_]+)") do
      assert.is_truthy(RULE_TESTS:find("alertname: " .. name .. "\n", 1, true), name .. " has no rule test")
    end
  end)

  it("sums /metrics over the workers and names each family once", function()
    local sku = new_sale(500)
    -- purchases on fresh connections until both workers have answered some
    local deadline = T.now() + 30
    repeat
      for _ = 1, 10 do assert.are.equal(200, (buy(sku))) end
      T.wait_for("the workers to publish", function()
        return worker_snapshot_success(0) + worker_snapshot_success(1) == purchases_ok
      end, 5)
    until (worker_snapshot_success(0) > 0 and worker_snapshot_success(1) > 0) or T.now() > deadline
    local w0, w1 = worker_snapshot_success(0), worker_snapshot_success(1)
    assert.is_true(w0 > 0 and w1 > 0, ("both workers answered purchases (%d, %d)"):format(w0, w1))

    local text
    T.wait_for("/metrics to count every purchase", function()
      local s, body = T.request(app.admin, "GET", "/metrics")
      if s ~= 200 then return false end
      text = body
      local _, samples = parse_exposition(body)
      return sum_series(samples, "purchase_attempts_total", { 'status="success"' }) == purchases_ok
    end, 10)
    local families, samples = parse_exposition(text)
    assert.are.equal(purchases_ok, sum_series(samples, "purchase_attempts_total", { 'status="success"' }))
    assert.are.equal(w0 + w1, purchases_ok)
    assert.are.equal(purchases_ok, samples[('http_request_duration_seconds_count{method="POST",route="%s",status="200"}'):format(PURCHASE_ROUTE)])
    assert.are.equal(purchases_ok, samples[('http_request_duration_seconds_bucket{method="POST",route="%s",status="200",le="+Inf"}'):format(PURCHASE_ROUTE)])
    assert.are.equal(2, samples["flashhost_workers"])
    assert.are.equal(0, samples["flashhost_worker_restarts_total"])

    -- HELP and TYPE once per family, before its samples
    local seen = 0
    for name, f in pairs(families) do
      assert.are.equal(1, f.help, "HELP lines of " .. name)
      assert.are.equal(1, f.type, "TYPE lines of " .. name)
      assert.is_true(f.help_line < f.type_line, name)
      if f.first_sample_line then
        assert.is_true(f.type_line < f.first_sample_line, name)
        seen = seen + 1
      end
      assert.is_truthy(({ counter = true, gauge = true, histogram = true })[f.kind], name .. " " .. tostring(f.kind))
    end
    for _, name in ipairs { "http_request_duration_seconds", "purchase_attempts_total", "redis_operation_duration_seconds",
        "inventory_operations_total", "sku_available_tickets", "outbox_backlog", "flashhost_workers",
        "flashhost_worker_restarts_total" } do
      assert.is_truthy(families[name] and families[name].samples, name .. " has samples")
    end
    assert.is_true(seen >= 8)
  end)

  it("reports the per-SKU gauges once, not once per worker", function()
    local sku = new_sale(40)
    for _ = 1, 6 do assert.are.equal(200, (buy(sku))) end
    local s, st = T.json(app.port, "GET", "/api/v1/flash/skus/" .. sku)
    assert.are.equal(200, s)
    assert.are.equal(34, st.available)
    -- scrape until both workers have served a scrape since the sale began
    -- and published their samples after it (a worker's snapshot counts the
    -- /metrics requests it answered)
    local function scrapes(id)
      local f = io.open(("%s/worker-%d.prom"):format(metrics_dir, id))
      if not f then return 0 end
      local _, samples = parse_exposition(f:read("*a"))
      f:close()
      return sum_series(samples, "http_request_duration_seconds_count", { 'route="/metrics"' })
    end
    local before = { scrapes(0), scrapes(1) }
    local function check(body)
      local _, samples = parse_exposition(body)
      assert.are.equal(34, samples[('sku_available_tickets{sku="%s"}'):format(sku)], "available")
      assert.are.equal(6, samples[('active_reservations{sku="%s"}'):format(sku)], "pending reservations")
      assert.are.equal(6, samples[('outbox_backlog{sku="%s"}'):format(sku)], "outbox")
      assert.are.equal(0, samples[('sku_sold_tickets{sku="%s"}'):format(sku)], "sold")
    end
    T.wait_for("both workers to serve a scrape", function()
      local s2, body = T.request(app.admin, "GET", "/metrics")
      assert.are.equal(200, s2)
      check(body)
      return scrapes(0) > before[1] and scrapes(1) > before[2]
    end, 20)
    for _ = 1, 4 do check(select(2, T.request(app.admin, "GET", "/metrics"))) end
  end)

  it("reports Redis and MySQL separately in /ready", function()
    local s, b = T.json(app.port, "GET", "/ready")
    assert.are.equal(200, s, cjson.encode(b))
    assert.are.equal("ready", b.status)
    assert.is_true(b.dependencies.redis.ok)
    assert.are.equal("connected", b.dependencies.redis.detail)
    assert.is_boolean(b.dependencies.mysql.ok)
    if os.getenv("MYSQL_PORT") then assert.is_true(b.dependencies.mysql.ok, cjson.encode(b)) end
    -- without the outbox relay this process does not talk to Kafka at all
    assert.is_nil(b.dependencies.kafka)

    -- MySQL away: reported, and the node stays ready (purchases only need Redis)
    local nomysql = T.start({ "--workers", "1", "app/purchase.lua" },
      { OUTBOX_RELAY = "off", REDIS_URL = REDIS_URL, MYSQL_PORT = tostring(T.free_port()),
        FH_METRICS_DIR = scratch .. "/metrics-nomysql" }, { port = port(), admin = port() })
    local ok, err = pcall(function()
      local s2, b2 = T.json(nomysql.port, "GET", "/ready")
      assert.are.equal(200, s2, cjson.encode(b2))
      assert.is_true(b2.dependencies.redis.ok)
      assert.is_false(b2.dependencies.mysql.ok)
      assert.is_string(b2.dependencies.mysql.detail)
    end)
    T.stop(nomysql)
    assert(ok, err)
  end)

  it("is scraped by a real Prometheus with the right purchase count", function()
    -- a few more purchases, so the count is not one an earlier test happened to leave
    local sku = new_sale(50)
    for _ = 1, 7 do assert.are.equal(200, (buy(sku))) end
    local dir = scratch .. "/prometheus"
    local prom_port = port()
    local cfg = render_config(dir, app.admin, { port(), port() })
    os.execute("mkdir -p " .. T.q(dir .. "/data"))
    local log = dir .. "/prometheus.log"
    local p = io.popen(("prometheus --config.file=%s --storage.tsdb.path=%s --web.listen-address=127.0.0.1:%d >%s 2>&1 & echo $!")
      :format(T.q(cfg), T.q(dir .. "/data"), prom_port, T.q(log)))
    local pid = tonumber(p:read("*l"))
    p:close()
    local ok, err = pcall(function()
      T.wait_for("prometheus to be ready", function()
        if not T.alive(pid) then error("prometheus exited: " .. read(log)) end
        return (T.request(prom_port, "GET", "/-/ready")) == 200
      end, 30)

      local value, labels
      T.wait_for("prometheus to have the purchase counter", function()
        local s, b = get_json(prom_port, "/api/v1/query?query=purchase_attempts_total")
        if s ~= 200 or b.status ~= "success" then return false end
        for _, r in ipairs(b.data.result) do
          if r.metric.status == "success" then
            value, labels = tonumber(r.value[2]), r.metric
            return value == purchases_ok
          end
        end
        return false
      end, 30)
      assert.are.equal(purchases_ok, value)
      assert.are.equal("purchase", labels.job)
      assert.are.equal("127.0.0.1:" .. app.admin, labels.instance)

      local s, b = get_json(prom_port, "/api/v1/query?query=" .. urlencode('up{job="purchase"}'))
      assert.are.equal(200, s)
      assert.are.equal("1", b.data.result[1].value[2])

      -- the alert rules loaded and evaluate without errors
      T.wait_for("the rules to be evaluated", function()
        local s2, r = get_json(prom_port, "/api/v1/rules")
        if s2 ~= 200 or r.status ~= "success" or #r.data.groups < 3 then return false end
        for _, g in ipairs(r.data.groups) do
          for _, rule in ipairs(g.rules) do
            if rule.health ~= "ok" then return false, rule.name .. " " .. tostring(rule.health) end
          end
        end
        return true
      end, 20)

      -- every query of the Grafana dashboard is valid PromQL, and the
      -- panels cover the metrics operators watch
      local dash = cjson.decode(read(T.ROOT .. "/deploy/grafana/dashboard.json"))
      assert.is_true(dash.schemaVersion >= 36 and dash.schemaVersion <= 41, tostring(dash.schemaVersion))
      local exprs, ids = {}, {}
      local function walk(panels)
        for _, panel in ipairs(panels or {}) do
          assert.is_nil(ids[panel.id], "panel id used twice: " .. tostring(panel.id))
          ids[panel.id] = true
          for _, t in ipairs(panel.targets or {}) do exprs[#exprs + 1] = t.expr end
          walk(panel.panels)
        end
      end
      walk(dash.panels)
      local all = table.concat(exprs, "\n")
      for _, m in ipairs { "purchase_attempts_total", "http_request_duration_seconds_bucket", "sku_available_tickets",
          "sku_sold_tickets", "active_reservations", "outbox_backlog", "consumer_lag", "kafka_produce_latency_seconds_bucket",
          "redis_operation_duration_seconds_bucket", "flashhost_reloads_total", "flashhost_reload_failures_total",
          "flashhost_worker_restarts_total" } do
        assert.is_truthy(all:find(m, 1, true), "no panel shows " .. m)
      end
      for _, e in ipairs(exprs) do
        local q = e:gsub("%$__rate_interval", "1m"):gsub("%$__interval", "15s"):gsub("%$__range", "1h")
          :gsub("%${sku:regex}", ".*"):gsub("%$sku", ".*"):gsub("%${job}", "purchase"):gsub("%$job", "purchase")
        assert.is_nil(q:find("$", 1, true), "unknown variable in " .. e)
        local s3, r3 = get_json(prom_port, "/api/v1/query?query=" .. urlencode(q))
        assert.are.equal(200, s3, e .. " -> " .. (type(r3) == "table" and tostring(r3.error) or tostring(r3)))
        assert.are.equal("success", r3.status, e)
      end
    end)
    T.signal(pid, "TERM")
    local stopped = pcall(T.wait_for, "prometheus to stop", function() return not T.alive(pid) end, 15)
    if not stopped then T.signal(pid, "KILL") end
    assert(ok, err)
    assert.is_true(stopped, "prometheus stopped on SIGTERM")
  end)
end)
