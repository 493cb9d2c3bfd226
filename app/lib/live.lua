-- The live sale page on the admin listener: `GET /` serves the page
-- (lib/live_page.lua), `GET /admin/v1/live` the numbers it shows, fetched
-- every second: each open sale's stock from Redis (one consistent read per
-- SKU) and the purchase totals of this process's workers from the metrics.
-- Rates and the recent p99 are computed by the page from successive answers
-- (the counters and buckets here are cumulative).
local core = require "flashhost.core"
local metrics = require "flashhost.metrics"
local cjson = require "cjson.safe"
local stock = require "lib.stock"
local admin = require "lib.admin"
local answers = require "lib.answers"
local page = require "lib.live_page"
local queue_admin = require "lib.queue_admin"

local M = {}

M.PURCHASE_ROUTE = "/api/v1/flash/purchase"
M.MAX_SKUS = 50

local function ms(seconds) return seconds and math.floor(seconds * 1e6 + 0.5) / 1000 or nil end

-- Purchase totals from the metrics samples (summed over the workers).
function M.totals(samples)
  local attempts, total = {}, 0
  for _, s in ipairs(samples) do
    if s.name == "purchase_attempts_total" then
      local st = s.labels.status or ""
      attempts[st] = (attempts[st] or 0) + s.value
      total = total + s.value
    end
  end
  local responses, requests = {}, 0
  local route = { route = M.PURCHASE_ROUTE }
  for _, s in ipairs(samples) do
    if s.name == "http_request_duration_seconds_count" and s.labels.route == M.PURCHASE_ROUTE then
      local code = s.labels.status or "?"
      responses[code] = (responses[code] or 0) + s.value
      requests = requests + s.value
    end
  end
  local buckets = metrics.buckets(samples, "http_request_duration_seconds", route)
  local wire = {}
  for i, b in ipairs(buckets) do wire[i] = { b.le == math.huge and "+Inf" or b.le, b.count } end
  return {
    attempts = attempts, attemptsTotal = total,
    responses = responses, requests = requests,
    p50Ms = ms(metrics.quantile(0.5, buckets)), p99Ms = ms(metrics.quantile(0.99, buckets)),
    buckets = wire,
    workers = metrics.sum(samples, "flashhost_workers"),
    restarts = metrics.sum(samples, "flashhost_worker_restarts_total"),
  }
end

-- Open sales (started and not ended; sold out included), newest first.
function M.skus(r, now)
  local ids = r:call("SMEMBERS", stock.SKU_SET)
  if type(ids) ~= "table" then return nil, ids == nil and "redis unavailable" or "SMEMBERS failed" end
  local out, hidden = {}, 0
  for _, sku in ipairs(ids) do
    local st, kind, detail = stock.status(r, sku)
    if not st and kind == "unavailable" then return nil, detail end
    if st and st.code == "OK" then
      local v = admin.sku_view(sku, st, now)
      if v.status == "ACTIVE" or v.status == "SOLD_OUT" then
        v.pending = st.pending
        v.outbox = st.outbox
        v.createdAt = tonumber(st.sale.createdAt) or 0
        -- every ticket ever reserved; only grows, so the page derives a rate from it
        v.taken = v.reserved + v.sold + v.canceled + v.expired
        -- a queued sale's waiting room: length, admitted, used, expired, rates
        if st.sale.queue == "1" then v.queue = queue_admin.stats(r, sku) end
        out[#out + 1] = v
      else
        hidden = hidden + 1
      end
    end
  end
  table.sort(out, function(a, b)
    if a.createdAt ~= b.createdAt then return a.createdAt > b.createdAt end
    return (tonumber(a.skuId) or 0) < (tonumber(b.skuId) or 0)
  end)
  for i = #out, M.MAX_SKUS + 1, -1 do out[i] = nil; hidden = hidden + 1 end
  return out, hidden
end

function M.routes(app, deps)
  deps = deps or {}
  local rules = deps.rules or {}

  app:admin("GET", "/", function()
    return 200, page, { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-store" }
  end)

  app:admin("GET", "/admin/v1/live", function(req, ctx)
    local now = core.now()
    local skus, hidden = M.skus(ctx.redis, now)
    if not skus then return answers.unavailable(rules, hidden) end
    local info = ctx.info or {}
    local body = {
      now = now, app = ctx.app, node = info.node_id, worker = info.worker_id,
      skus = skus, otherSkus = hidden, totals = M.totals(metrics.samples()),
    }
    return 200, body, { ["Cache-Control"] = "no-store" }
  end)
end

return M
