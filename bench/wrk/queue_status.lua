-- wrk script: status polls of a waiting room, each request another ticket of
-- the file TICKETS (one a line, from bench/queue_fill.lua), in turn.
-- Environment: SKU, TICKETS.  At the end it prints one line:
--   RESULT total=N s200=N waiting=N other=N p50_ms=... p99_ms=... p999_ms=...
local threads = {}
local sku = os.getenv("SKU") or "1"
local tickets = {}
for line in io.lines(os.getenv("TICKETS")) do tickets[#tickets + 1] = line end

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

n, total, ok, waiting = 0, 0, 0, 0
local paths

function init()
  -- each thread starts at its own place in the list
  n = tid * 997
  paths = {}
  for i, t in ipairs(tickets) do paths[i] = "/api/v1/flash/queue/" .. sku .. "/status?ticket=" .. t end
end

function request()
  n = n + 1
  return wrk.format("GET", paths[n % #paths + 1])
end

function response(status, headers, body)
  total = total + 1
  if status == 200 then
    ok = ok + 1
    if body:find('"state":"waiting"', 1, true) then waiting = waiting + 1 end
  end
end

function done(summary, latency)
  local t, s, w = 0, 0, 0
  for _, th in ipairs(threads) do
    t, s, w = t + th:get("total"), s + th:get("ok"), w + th:get("waiting")
  end
  io.write(("RESULT total=%d s200=%d waiting=%d other=%d p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f\n"):format(
    t, s, w, t - w, latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
