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

function M.boot(app_path, gen)
  local check_only = os.getenv("FH_MODE") == "check"
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
    end
  end, traceback)
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
