-- Benchmark app: one route answering JSON with no I/O, one doing one EVALSHA.
local app = require("flashhost.app").new("bench")
local redis = require("flashhost.redis")

-- The script redis-benchmark runs too, so the two figures compare the same work.
local SCRIPT = "return redis.call('INCR', KEYS[1])"

app:on_start(function(ctx)
  ctx.redis = redis.connect { url = os.getenv("REDIS_URL") }
  ctx.redis:script("incr", SCRIPT)
end)

app:get("/hello", function() return 200, { hello = "world" } end)

app:get("/evalsha", function(req, ctx)
  local n, err = ctx.redis:evalsha("incr", { "bench:counter" }, {})
  if not n then return 503, { error = "UNAVAILABLE", message = err } end
  return 200, { n = n }
end)

return app
