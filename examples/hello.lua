-- The smallest flashhost app: `build/flashhost examples/hello.lua`, then
-- curl localhost:3000/hello/world
local app = require("flashhost.app").new("hello")

app:get("/health", function() return 200, { status = "ok" } end)

app:get("/hello/:name", function(req)
  return 200, { hello = req.params.name }
end)

app:post("/echo", function(req)
  local body, err = req:json()
  if not body then return 400, { error = "BAD_JSON", message = err } end
  return 200, body
end)

app:get("/sleep", function(req)
  require("flashhost.timer").sleep(tonumber(req.query and req.query:match("ms=(%d+)")) or 100)
  return 200, { slept = true }
end)

return app
