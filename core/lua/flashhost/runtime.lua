-- flashhost.runtime: the three entry points the C host calls in a generation.
--   boot(app_path, gen)  load the app, validate it, run its start hooks
--   dispatch(req, res)   one HTTP request (a task of its own)
--   stop()               the app's stop hooks (reload or shutdown)
local core = require "flashhost.core"
require "flashhost.http" -- registers the responder type the host hands to dispatch
local log = require "flashhost.log"
local application = require "flashhost.app"

local M = {}
local app, ctx, started

local function traceback(err)
  return debug.traceback(tostring(err), 2)
end

-- `flashhost --run SCRIPT [ARGS]`: a plain script run as one task, with every
-- binding usable; os.exit(code) ends the script with that exit code.
local function run_script(path)
  local args = {}
  for a in (os.getenv("FH_RUN_ARGS") or ""):gmatch("[^\31]+") do args[#args + 1] = a end
  args[0] = path
  _G.arg = args
  local exit_code
  os.exit = function(code)
    if code == true or code == nil then code = 0 elseif code == false then code = 1 end
    error({ fh_exit = tonumber(code) or 1 }, 0)
  end
  local chunk, err = loadfile(path)
  if not chunk then return false, err end
  local ok, res = xpcall(chunk, function(e)
    if type(e) == "table" and e.fh_exit then exit_code = e.fh_exit return e end
    -- busted (and other 5.1 tools) raise a nil error to mean "exit 1"
    if e == nil then exit_code = 1 return e end
    return debug.traceback(tostring(e), 2)
  end, unpack(args))
  if exit_code then return exit_code == 0, "exit " .. exit_code, exit_code end
  return ok, not ok and tostring(res) or nil, ok and 0 or 1
end

function M.boot(app_path, gen)
  local mode = os.getenv("FH_MODE")
  if mode == "run" then
    local ok, err, code = run_script(app_path)
    core.run_done(code or (ok and 0 or 1), err)
    return
  end
  local check_only = mode == "check"
  local ok, err = xpcall(function()
    local chunk, lerr = loadfile(app_path)
    if not chunk then error(lerr, 0) end
    local a = chunk()
    if not application.is_app(a) then
      error(app_path .. " must return an app (require('flashhost.app').new(...))", 0)
    end
    ctx = a:context(gen)
    a:validate(ctx)
    app = a
    if not check_only then
      a:start(ctx)
      started = true
      -- Take requests only once the clients the start hooks made can serve
      -- them: a reload that switched at once answered 503 "not connected"
      -- until its new Redis connection was up.  The first generation of a
      -- worker has no older code to fall back on, so it serves (503 while a
      -- dependency is away, as at any other time) rather than not at all.
      local ready_ms = tonumber(os.getenv("FH_READY_TIMEOUT_MS")) or 5000
      local ready, rerr = a:ready(ctx, ready_ms)
      if not ready then
        if gen > 1 then error(("not ready within %d ms: %s"):format(ready_ms, rerr), 0) end
        log.warn("app starts before its dependencies are ready", { app = a.name, err = rerr })
      end
    end
  end, traceback)
  if not check_only and gen > 1 then
    -- counted in the process-wide store, which outlives this generation
    local metrics = require "flashhost.metrics"
    if ok then
      metrics.counter("flashhost_reloads_total", "Hot reloads that switched to new code."):inc()
    else
      metrics.counter("flashhost_reload_failures_total", "Hot reloads refused (the old code kept serving)."):inc()
    end
  end
  if ok and not check_only then
    log.info("app started", { app = app.name, generation = gen })
  end
  core.boot_done(ok, (not ok) and tostring(err) or nil)
end

function M.dispatch(req, res)
  if not app then
    res:send(503, nil, '{"error":"UNAVAILABLE","message":"app not loaded"}')
    return
  end
  app:handle(req, res, ctx)
end

function M.stop()
  if app and started then
    started = false
    app:stop(ctx)
  end
end

return M
