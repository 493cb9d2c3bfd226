-- What every flashhost app of this project shares: metrics (with the admin
-- /metrics route and the per-worker snapshot), readiness of the dependencies,
-- and where the Redis scripts live.
local core = require "flashhost.core"
local metrics = require "flashhost.metrics"

local M = {}

-- redis-lua/ beside app/, found from this file's own path so it works from
-- any working directory; FH_SCRIPTS_DIR overrides.
function M.scripts_dir()
  local env = os.getenv("FH_SCRIPTS_DIR")
  if env and env ~= "" then return env end
  local src = debug.getinfo(1, "S").source:sub(2)
  local app_dir = src:match("^(.*)/lib/[^/]+$") or "app"
  return app_dir .. "/../redis-lua"
end

-- The metrics of the project, defined once per process (the store keeps the
-- samples across reloads; defining again is harmless).
function M.define_metrics()
  local m = {}
  m.http = metrics.histogram("http_request_duration_seconds", "HTTP request latency.",
    { "method", "route", "status" })
  m.attempts = metrics.counter("purchase_attempts_total", "Purchase attempts by outcome.",
    { "status", "reason" })
  m.inventory = metrics.counter("inventory_operations_total", "Stock changes by operation.",
    { "operation" })
  m.redis = metrics.histogram("redis_operation_duration_seconds", "Redis function latency.",
    { "operation" })
  -- group commit: attempts / batches is the average batch size
  m.batches = metrics.counter("flashhost_purchase_batches_total", "purchase_batch calls sent to Redis.")
  m.batch_attempts = metrics.counter("flashhost_purchase_batch_attempts_total",
    "Purchase attempts sent in purchase_batch calls.")
  m.kafka = metrics.histogram("kafka_produce_latency_seconds", "Outbox event to Kafka delivery.",
    { "topic" })
  -- read from Redis at scrape time: the scraping worker's value, never summed over workers
  local shared = { shared = true }
  m.active = metrics.gauge("active_reservations", "Pending reservations, per SKU.", { "sku" }, shared)
  m.available = metrics.gauge("sku_available_tickets", "Tickets available, per SKU.", { "sku" }, shared)
  m.sold = metrics.gauge("sku_sold_tickets", "Tickets sold (paid), per SKU.", { "sku" }, shared)
  m.backlog = metrics.gauge("outbox_backlog",
    "Outbox entries not yet delivered to Kafka, per SKU (a purchase batch's reservations share one).", { "sku" }, shared)
  m.lag = metrics.gauge("consumer_lag", "Messages behind in the order worker's partitions.", { "topic" })
  m.events = metrics.counter("order_events_total", "Events applied to MySQL by type and outcome.",
    { "type", "outcome" })
  m.dead = metrics.counter("order_dead_letters_total", "Messages sent to the dead-letter topic.")
  m.expired = metrics.counter("reservations_expired_total", "Reservations expired by the cleanup job.")
  -- the waiting rooms, set by the keeper (app/cleanup.lua) at each step
  m.queue_length = metrics.gauge("queue_length", "Tickets waiting in a sale's queue, per SKU.", { "sku" })
  m.queue_admitted = metrics.counter("queue_admitted_total", "Tickets admitted from a sale's queue, per SKU.", { "sku" })
  m.queue_wait = metrics.gauge("queue_wait_seconds", "Wait from join to admission over the last 2000 admissions, per SKU.",
    { "sku", "quantile" })
  return m
end

-- ctx.metrics: small verbs the handlers call.
local function verbs(m)
  return {
    raw = m,
    purchase = function(status, reason) m.attempts:inc({ status = status, reason = reason }) end,
    inventory = function(op, n) m.inventory:inc({ operation = op }, n or 1) end,
    redis = function(op, seconds) m.redis:observe({ operation = op }, seconds) end,
    batch = function(n) m.batches:inc(nil, 1); m.batch_attempts:inc(nil, n) end,
  }
end

-- Per-SKU gauges come from Redis at scrape time (the truth, not a counter
-- that could drift): one O(1) status read per SKU in the sale list.
local function refresh_sku_gauges(ctx, m)
  if not ctx.redis then return end
  local stock = require "lib.stock"
  local skus = ctx.redis:call("SMEMBERS", stock.SKU_SET)
  if type(skus) ~= "table" then return end
  for _, sku in ipairs(skus) do
    local st = stock.status(ctx.redis, sku)
    if st and st.code == "OK" then
      m.active:set({ sku = sku }, st.pending)
      m.available:set({ sku = sku }, st.stock)
      m.sold:set({ sku = sku }, st.counts.sold or 0)
      m.backlog:set({ sku = sku }, st.outbox)
    end
  end
end

function M.install(app, opts)
  opts = opts or {}
  local m = M.define_metrics()

  app:on_start(function(ctx)
    ctx.metrics = verbs(m)
  end)

  -- A generation takes requests once its Redis connection is up and the
  -- server-side code is loaded on it (app:on_ready bounds the wait).
  app:on_ready(function(ctx, ms)
    if not ctx.redis then return true end
    local ok, err = ctx.redis:wait_ready(ms)
    if not ok then return nil, "redis: " .. tostring(err) end
    ok, err = ctx.redis:load_functions()
    if not ok then return nil, "redis functions: " .. tostring(err) end
    return true
  end)

  -- Publish this worker's samples for the other workers' scrapes.
  app:every(1000, "metrics-publish", function() metrics.publish() end)

  app:observe(function(req, status, elapsed_ms)
    m.http:observe({ method = req.method, route = req.route or "unmatched", status = status }, elapsed_ms / 1000)
  end)

  app:admin("GET", "/metrics", function(req, ctx)
    if opts.sku_gauges then refresh_sku_gauges(ctx, m) end
    return 200, metrics.render_all(), { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" }
  end)

  app:get("/health", function(req, ctx)
    return 200, { status = "ok", app = ctx.app, worker = ctx.info.worker_id, generation = ctx.info.generation }
  end)

  -- Ready when the dependencies this app cannot work without answer; the
  -- others are reported so an operator sees a degraded state.  The purchase
  -- API stays ready while Kafka or MySQL is away: reservations queue in the
  -- outbox and nothing is lost, so taking the node out would only hurt.
  app:get("/ready", function(req, ctx)
    local deps, ready = {}, true
    for name, check in pairs(ctx.dependencies or {}) do
      local ok, detail = check()
      deps[name] = { ok = ok, detail = detail }
      if not ok and (opts.required or {})[name] then ready = false end
    end
    return ready and 200 or 503, { status = ready and "ready" or "not ready", dependencies = deps }
  end)

  return m
end

-- Helpers for ctx.dependencies entries.
function M.redis_check(r)
  return function()
    local st, err = r:status()
    return st == "connected", err or st
  end
end

function M.now() return core.now() end

-- The project's MySQL database: MYSQL_DATABASE, else flash_sale (the runtime
-- itself has no default; every app and script of the project passes this).
function M.database() return os.getenv("MYSQL_DATABASE") or "flash_sale" end

return M
