-- flashhost.app: what an app file returns.
--
--   local app = require("flashhost.app").new("hello")
--   app:get("/hello/:name", function(req, ctx) return 200, { hi = req.params.name } end)
--   app:on_start(function(ctx) ctx.redis = require("flashhost.redis").connect() end)
--   return app
--
-- A handler returns status, body, headers.  A table body is sent as JSON, a
-- string as is.  A handler that raises answers 500 and is logged with its
-- traceback; the worker carries on.
local core = require "flashhost.core"
local timer = require "flashhost.timer"
local log = require "flashhost.log"
local cjson = require "cjson.safe"

-- Request bodies come from strangers: a private decoder that accepts strict
-- JSON only.  lua-cjson would otherwise read hex numbers, Infinity and NaN,
-- and it stops at a NUL byte as if the text ended there.
local strict = require("cjson.safe").new()
strict.decode_invalid_numbers(false)
strict.decode_max_depth(32)

local M = {}
local App = {}
App.__index = App

local Request = {}
Request.__index = Request

-- req:json() -> value | nil, reason.  Only JSON objects count as a body, and
-- only strict JSON (RFC 8259): no hex, Infinity or NaN, nothing after the value.
function Request:json()
  if self._json ~= nil then return self._json end
  if self.body == "" then return nil, "empty body" end
  if self.body:find("\0", 1, true) then return nil, "malformed JSON: NUL byte in the body" end
  local v, err = strict.decode(self.body)
  if v == nil then return nil, "malformed JSON: " .. tostring(err) end
  if type(v) ~= "table" then return nil, "body must be a JSON object" end
  self._json = v
  return v
end

function Request:header(name)
  return self.headers[name:lower()]
end

local function split_path(path)
  local segs = {}
  for s in path:gmatch("[^/]+") do segs[#segs + 1] = s end
  return segs
end

function M.new(name)
  return setmetatable({
    name = name or "app",
    routes = { public = {}, admin = {} },
    exact = { public = {}, admin = {} },
    memo = { public = {}, admin = {} }, memo_size = 0,
    starts = {}, stops = {}, readies = {}, validators = {}, tasks = {}, filters = {}, observers = {},
  }, App)
end

function M.is_app(v)
  return getmetatable(v) == App
end

-- app:route(method, path, fn [, listener]).  Path segments ":name" capture.
function App:route(method, path, fn, listener)
  assert(type(fn) == "function", "route handler must be a function")
  listener = listener or "public"
  assert(self.routes[listener], "unknown listener " .. tostring(listener))
  if not path:find(":", 1, true) then
    self.exact[listener][method .. " " .. path] = { fn = fn, path = path }
  end
  table.insert(self.routes[listener], { method = method, path = path, segs = split_path(path), fn = fn })
  return self
end

for _, m in ipairs { "GET", "POST", "PUT", "DELETE", "PATCH" } do
  App[m:lower()] = function(self, path, fn) return self:route(m, path, fn, "public") end
end

-- app:admin(method, path, fn): served only on the admin listener (127.0.0.1).
function App:admin(method, path, fn) return self:route(method, path, fn, "admin") end

-- app:use(fn): runs before every public handler; returning a status answers early.
function App:use(fn) table.insert(self.filters, fn); return self end
-- app:observe(fn): called after every answer with (req, status, elapsed_ms).
function App:observe(fn) table.insert(self.observers, fn); return self end
function App:on_start(fn) table.insert(self.starts, fn); return self end
-- Stop hooks run when the generation is told to stop (reload or shutdown),
-- while its in-flight requests may still be running: do not close clients
-- those requests use; every client closes when the drained state is collected.
function App:on_stop(fn) table.insert(self.stops, fn); return self end
-- app:on_ready(fn): fn(ctx, timeout_ms) -> true | nil, reason.  Runs after the
-- start hooks and before the generation takes its first request: a client
-- connected, a library loaded.  A reload that is not ready in time is refused
-- and the old code keeps serving (see runtime.boot).
function App:on_ready(fn) table.insert(self.readies, fn); return self end
-- app:on_validate(fn): runs at boot and on --check; raise to refuse the code.
function App:on_validate(fn) table.insert(self.validators, fn); return self end
-- app:every(ms, name, fn): a periodic job, in a task of its own, while the app runs.
function App:every(ms, name, fn)
  table.insert(self.tasks, { ms = ms, name = name, fn = fn })
  return self
end

function App:context(gen)
  local info = core.info()
  info.generation = gen
  return { app = self.name, log = log, info = info }
end

function App:validate(ctx)
  for _, fn in ipairs(self.validators) do fn(ctx) end
end

local function run_every(job, ctx)
  while not core.stopping() do
    local ok, err = xpcall(job.fn, debug.traceback, ctx)
    if not ok then log.error("periodic job failed", { job = job.name, err = err }) end
    if not timer.sleep(job.ms) then break end
  end
end

function App:start(ctx)
  for _, fn in ipairs(self.starts) do fn(ctx) end
  for _, job in ipairs(self.tasks) do core.spawn(run_every, job, ctx) end
end

-- Runs the ready hooks within one deadline shared by all of them.
-- -> true | nil, reason
function App:ready(ctx, timeout_ms)
  local deadline = core.mono() + timeout_ms
  for _, fn in ipairs(self.readies) do
    local left = math.max(0, deadline - core.mono())
    local ok, err = fn(ctx, left)
    if not ok then return nil, tostring(err or "not ready") end
  end
  return true
end

function App:stop(ctx)
  for _, fn in ipairs(self.stops) do
    local ok, err = xpcall(fn, debug.traceback, ctx)
    if not ok then log.error("stop hook failed", { err = err }) end
  end
end

-- Paths that matched a route with parameters, remembered per listener: a hot
-- route such as a waiting room's status poll is then one table lookup instead
-- of a walk over every route.  Bounded: the memo starts afresh past MAX_MEMO.
local MAX_MEMO = 4096

-- Returns the route ({ fn, path }) and its params, or nil and whether the
-- path exists for another method (405 rather than 404).
function App:match(listener, method, path)
  local key = method .. " " .. path
  local exact = self.exact[listener][key]
  if exact then return exact, {} end
  local memo = self.memo[listener]
  local hit = memo[key]
  if hit then
    local params = {}
    for k, v in pairs(hit.params) do params[k] = v end -- the handler's own copy
    return hit.route, params
  end
  local r, params = self:walk(listener, method, path)
  if r then
    if self.memo_size >= MAX_MEMO then
      self.memo = { public = {}, admin = {} }
      self.memo_size = 0
      memo = self.memo[listener]
    end
    local kept = {}
    for k, v in pairs(params) do kept[k] = v end
    memo[key] = { route = r, params = kept }
    self.memo_size = self.memo_size + 1
  end
  return r, params
end

function App:walk(listener, method, path)
  local segs = split_path(path)
  local path_known = false
  for _, r in ipairs(self.routes[listener]) do
    if #r.segs == #segs then
      local params, ok = {}, true
      for i, s in ipairs(r.segs) do
        if s:byte(1) == 58 then -- ":"
          params[s:sub(2)] = segs[i]
        elseif s ~= segs[i] then
          ok = false
          break
        end
      end
      if ok then
        if r.method == method then return r, params end
        path_known = true
      end
    end
  end
  return nil, path_known
end

local function traceback(err) return debug.traceback(tostring(err), 2) end

local function valid_request_id(id)
  return id and #id <= 64 and id:match("^[%w%-_.:]+$") ~= nil
end

local function run_handler(self, req, ctx)
  local route, params = self:match(req.listener, req.method, req.path)
  if not route then
    req.route = "unmatched"
    if params then return 405, { error = "METHOD_NOT_ALLOWED", message = req.method .. " is not allowed here" } end
    return 404, { error = "NOT_FOUND", message = "no route for " .. req.path }
  end
  req.params = params
  req.route = route.path
  if req.listener == "public" then
    for _, f in ipairs(self.filters) do
      local s, b, h = f(req, ctx)
      if s then return s, b, h end
    end
  end
  -- Not a tail call: a handler's own tail calls (`return answers.x(...)`) would
  -- then return straight into xpcall, a C frame, and LuaJIT gives up every trace
  -- that returns there ("NYI: return to lower frame"), leaving the hot request
  -- path to the interpreter.
  local status, body, headers = route.fn(req, ctx)
  return status, body, headers
end

function App:handle(req, res, ctx)
  local t0 = core.mono()
  setmetatable(req, Request)
  local rid = req.headers["x-request-id"]
  req.id = valid_request_id(rid) and rid or core.id()
  local ok, status, body, headers = xpcall(run_handler, traceback, self, req, ctx)
  if not ok then
    log.error("handler failed", { request_id = req.id, path = req.path, err = status })
    status, body, headers = 500, { error = "INTERNAL", message = "internal error" }, nil
  end
  if type(body) == "table" then body = cjson.encode(body) end
  headers = headers or {}
  headers["X-Request-Id"] = req.id
  res:send(tonumber(status) or 500, headers, body)
  local elapsed = core.mono() - t0
  for _, f in ipairs(self.observers) do
    local ok2, err = pcall(f, req, status, elapsed)
    if not ok2 then log.error("observer failed", { err = err }) end
  end
end

return M
