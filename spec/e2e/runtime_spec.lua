-- The runtime as operators meet it: several workers, a crashed worker coming
-- back, hot reload under load, a broken reload refused, draining on SIGTERM,
-- and `--check`.  Each test starts its own flashhost on free ports.
local T = require "spec.e2e.support"

-- A tiny app whose answer comes from a module, so a reload is visible.
local function app_files(version, extra)
  return {
    ["app.lua"] = [[
local app = require("flashhost.app").new("reloadable")
local timer = require("flashhost.timer")
local version = require("lib.version")
app:get("/health", function() return 200, { ok = true } end)
app:get("/version", function() return 200, { version = version, pid = require("flashhost.core").info().pid } end)
app:get("/slow", function()
  local f = io.open(os.getenv("FH_SLOW_MARK") or "/dev/null", "w") f:write("started") f:close()
  timer.sleep(1500)
  return 200, { slow = true, version = version }
end)
app:get("/crash", function() os.exit(9) end)
]] .. (extra or "") .. "\nreturn app\n",
    ["lib/version.lua"] = ("return %q\n"):format(version),
  }
end

describe("flashhost processes", function()
  local proc, dir
  after_each(function()
    T.stop(proc)
    proc = nil
    if dir then os.execute("rm -rf " .. T.q(dir)) end
  end)

  it("runs N workers and replaces one that dies", function()
    dir = T.scratch(app_files("v1"))
    proc = T.start({ "--workers", "2", dir .. "/app.lua" })
    local kids = T.wait_for("two workers", function()
      local k = T.children(proc.pid)
      return #k == 2 and k
    end)
    T.signal(kids[1], "KILL")
    T.wait_for("a replacement worker", function()
      local k = T.children(proc.pid)
      return #k == 2 and k[1] ~= kids[1] and k[2] ~= kids[1]
    end)
    local s = T.request(proc.port, "GET", "/version")
    assert.are.equal(200, s)
    assert.truthy(T.read_log(proc):find("restarting", 1, true))
  end)

  it("reloads on SIGHUP under load without failing a request", function()
    dir = T.scratch(app_files("v1"))
    proc = T.start({ "--workers", "2", dir .. "/app.lua" })
    local load = T.wrk_async(("http://127.0.0.1:%d/version"):format(proc.port), 6, 40)
    T.sleep(0.5)
    for i = 1, 10 do
      T.write(dir .. "/lib/version.lua", ("return %q\n"):format("v" .. (i + 1)))
      T.signal(proc.pid, "HUP")
      T.sleep(0.4)
    end
    local r = load.result()
    assert.is_true(r.requests > 1000, "load ran: " .. r.raw)
    assert.are.equal(0, r.non2xx, r.raw)
    assert.are.equal(0, r.socket_errors, r.raw)
    -- every worker serves the last version
    T.wait_for("v11 everywhere", function()
      for _ = 1, 10 do
        local _, body = T.json(proc.port, "GET", "/version")
        if body.version ~= "v11" then return false end
      end
      return true
    end)
  end)

  it("reloads by itself with --watch when a module changes", function()
    dir = T.scratch(app_files("before"))
    proc = T.start({ "--workers", "1", "--watch", dir .. "/app.lua" })
    T.write(dir .. "/lib/version.lua", 'return "after"\n')
    T.wait_for("the edited module to serve", function()
      local _, b = T.json(proc.port, "GET", "/version")
      return b.version == "after"
    end, 10)
    assert.truthy(T.read_log(proc):find("app files changed", 1, true))
  end)

  it("refuses code that fails to load and keeps serving the old code", function()
    dir = T.scratch(app_files("good"))
    proc = T.start({ "--workers", "1", dir .. "/app.lua" })
    T.write(dir .. "/lib/version.lua", "return (")
    T.signal(proc.pid, "HUP")
    T.wait_for("refusal logged", function() return T.read_log(proc):find("reload refused", 1, true) end)
    local _, body = T.json(proc.port, "GET", "/version")
    assert.are.equal("good", body.version)
    -- a start hook that fails is refused the same way
    T.write(dir .. "/lib/version.lua", 'return "better"\n')
    T.write(dir .. "/app.lua", app_files("x", 'app:on_start(function() error("no database") end)')["app.lua"])
    T.signal(proc.pid, "HUP")
    T.wait_for("second refusal", function() return T.count(T.read_log(proc), "reload refused") >= 2 end)
    _, body = T.json(proc.port, "GET", "/version")
    assert.are.equal("good", body.version)
    -- and a good one is taken
    T.write(dir .. "/app.lua", app_files("x")["app.lua"])
    T.signal(proc.pid, "HUP")
    T.wait_for("new code", function()
      local _, b = T.json(proc.port, "GET", "/version")
      return b.version == "better"
    end)
  end)

  it("finishes in-flight requests on SIGTERM and exits", function()
    dir = T.scratch(app_files("v1"))
    local mark = dir .. "/slow-started"
    proc = T.start({ "--workers", "1", dir .. "/app.lua" }, { FH_SLOW_MARK = mark })
    local out = os.tmpname()
    os.execute(("curl -s -m 10 http://127.0.0.1:%d/slow > %s &"):format(proc.port, out))
    T.wait_for("the slow handler to start", function() return io.open(mark) ~= nil end)
    T.signal(proc.pid, "TERM")
    T.wait_for("exit", function() return not T.alive(proc.pid) end, 10)
    local f = io.open(out)
    local body = f:read("*a")
    f:close()
    os.remove(out)
    assert.truthy(body:find('"slow":true', 1, true), "the in-flight request was answered: " .. body)
    -- new connections are refused once it is gone
    assert.is_nil((T.request(proc.port, "GET", "/health")))
  end)

  it("checks an app without serving it", function()
    dir = T.scratch(app_files("v1"))
    assert.is_true(os.execute(T.q(T.BIN) .. " --check " .. T.q(dir .. "/app.lua") .. " >/dev/null 2>&1") == 0)
    T.write(dir .. "/lib/version.lua", "return (")
    assert.is_false(os.execute(T.q(T.BIN) .. " --check " .. T.q(dir .. "/app.lua") .. " >/dev/null 2>&1") == 0)
  end)

  it("does not restart a worker whose app cannot start, and says why", function()
    dir = T.scratch(app_files("v1", 'app:on_start(function() error("cannot start") end)'))
    proc = T.start({ "--workers", "2", dir .. "/app.lua" }, nil, { wait = false })
    T.wait_for("master gives up", function() return not T.alive(proc.pid) end, 10)
    local log = T.read_log(proc)
    assert.truthy(log:find("cannot start", 1, true))
    assert.truthy(log:find("not restarting", 1, true))
  end)
end)
