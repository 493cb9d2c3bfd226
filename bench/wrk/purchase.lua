-- wrk script: purchases where every request is a different buyer with its own
-- idempotency key, so neither the per-user limit nor the rate limit hides the
-- stock logic.  Environment:
--   SKUS        comma-separated SKU ids to spread over (default "1")
--   LIMIT       requests per thread, then the thread stops (0 = until -d ends)
--   USER_BASE   first user id (default: from the clock, so runs do not collide)
--   ROUTE       the path posted to (default /api/v1/flash/purchase): bench/run posts
--               the same bodies to the hello route to compare like with like
-- At the end it prints one line:  RESULT total=N s200=N s410=N ... bad_json=N
local threads = {}
local skus = {}
for s in (os.getenv("SKUS") or "1"):gmatch("%d+") do skus[#skus + 1] = s end
local limit = tonumber(os.getenv("LIMIT")) or 0
local user_base = tonumber(os.getenv("USER_BASE")) or (os.time() % 100000) * 100000
local route = os.getenv("ROUTE") or "/api/v1/flash/purchase"

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

-- globals: done() reads them from each thread with thread:get
n, counts, bad = 0, {}, 0
prefix = nil

function init(args)
  prefix = ("%d%03d"):format(user_base + tid, 0)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  local sku = skus[(n % #skus) + 1]
  local user = prefix .. n
  local body = ('{"userId":"%s","skuId":"%s","quantity":1,"idempotencyKey":"k-%s-%d"}'):format(user, sku, prefix, n)
  return wrk.format("POST", route, nil, body)
end

answered = 0
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  -- every answer must be one JSON object
  if not (body:match("^%s*{.*}%s*$")) then bad = bad + 1 end
  answered = answered + 1
  if limit > 0 and answered >= limit then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local total, bad_total, by = 0, 0, {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for status, k in pairs(c or {}) do by[status] = (by[status] or 0) + k; total = total + k end
    bad_total = bad_total + (t:get("bad") or 0)
  end
  local parts = { "RESULT", "total=" .. total }
  for _, s in ipairs { 200, 400, 403, 404, 409, 410, 422, 425, 429, 500, 503 } do
    parts[#parts + 1] = ("s%d=%d"):format(s, by[s] or 0)
  end
  parts[#parts + 1] = "bad_json=" .. bad_total
  parts[#parts + 1] = ("p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f"):format(latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000)
  io.write(table.concat(parts, " "), "\n")
end
