-- Benchmark app: a route answering JSON with no I/O (GET and POST), one doing one FCALL.
local app = require("flashhost.app").new("bench")
local redis = require("flashhost.redis")

-- The function redis-benchmark calls too (bench/run loads the same library),
-- so the two figures compare the same work.
local LIBRARY = "#!lua name=fhbench\n" ..
  "redis.register_function('fhbench_incr', function(keys) return redis.call('INCR', keys[1]) end)\n"

app:on_start(function(ctx)
  ctx.redis = redis.connect { url = os.getenv("REDIS_URL") }
  ctx.redis:functions("fhbench", LIBRARY)
end)

app:get("/hello", function() return 200, { hello = "world" } end)
-- The same answer to a POST with a body, so a load with bench/wrk/purchase.lua's
-- client work (a JSON body built per request, each answer checked) can measure
-- the hello route beside the sold-out purchase route.
app:post("/hello", function() return 200, { hello = "world" } end)

app:get("/fcall", function(req, ctx)
  local n, err = ctx.redis:fcall("fhbench_incr", { "bench:counter" }, {})
  if not n then return 503, { error = "UNAVAILABLE", message = err } end
  return 200, { n = n }
end)

return app
