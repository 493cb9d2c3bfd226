-- A port belongs to one master and its workers.  Workers share it through
-- SO_REUSEPORT, which would also let a second flashhost with the same PORT
-- join, and the kernel would then split connections between two apps; the
-- second one must instead refuse to start and leave the first untouched.
local T = require "spec.e2e.support"
local socket = require "socket"

local function app(name)
  return ([[
local app = require("flashhost.app").new(%q)
app:get("/health", function() return 200, { ok = true } end)
app:get("/%s", function() return 200, { app = %q } end)
return app
]]):format(name, name, name)
end

-- Starts flashhost in the background on the given ports; the handle tells
-- whether it has exited, with which code, and what it logged.
local function start_bg(file, port, admin)
  local log, rcfile = os.tmpname(), os.tmpname()
  os.remove(rcfile)
  local cmd = ("cd %s && (env PORT=%d ADMIN_PORT=%d HOST=127.0.0.1 %s --workers 2 %s >%s 2>&1; echo $? >%s) </dev/null >/dev/null 2>&1 & echo $!")
    :format(T.q(T.ROOT), port, admin, T.q(T.BIN), T.q(file), T.q(log), T.q(rcfile))
  local p = io.popen(cmd)
  local shell = tonumber(p:read("*l"))
  p:close()
  local h = { shell = shell, log = log }
  function h.rc()
    local f = io.open(rcfile)
    if not f then return nil end
    local rc = tonumber(f:read("*a"))
    f:close()
    return rc
  end
  function h.read_log() return T.read_log(h) end
  function h.kill()
    for _, master in ipairs(T.children(shell)) do T.kill_all({ pid = master }) end
    os.remove(log)
    os.remove(rcfile)
  end
  return h
end

-- How many of n fresh connections the app `name` answered.
local function answered_by(port, name, n)
  local got = 0
  for _ = 1, n do
    local s, body = T.request(port, "GET", "/" .. name)
    if s == 200 and body:find('"app":"' .. name .. '"', 1, true) then got = got + 1 end
  end
  return got
end

-- every background start of the current test, killed after it
local started = {}
local function start_bg_tracked(...)
  local h = start_bg(...)
  started[#started + 1] = h
  return h
end
local function kill_started()
  for _, h in ipairs(started) do h.kill() end
  started = {}
end

describe("a port taken by a running flashhost", function()
  local a, dir
  before_each(function()
    dir = T.scratch({ ["a.lua"] = app("a"), ["b.lua"] = app("b") })
    a = T.start({ "--workers", "2", dir .. "/a.lua" })
  end)
  after_each(function()
    kill_started()
    T.stop(a)
    os.execute("rm -rf " .. T.q(dir))
  end)

  for _, which in ipairs { "PORT", "ADMIN_PORT" } do
    it("makes a second master on the same " .. which .. " exit at once, and the first keeps serving", function()
      local port = which == "PORT" and a.port or T.free_port()
      local admin = which == "ADMIN_PORT" and a.admin or T.free_port()
      local started = T.now()
      local b = start_bg_tracked(dir .. "/b.lua", port, admin)
      local exited = pcall(T.wait_for, "the second master to exit", function() return b.rc() end, 3)
      local took = T.now() - started
      local got = answered_by(a.port, "a", 100)
      local rc, log = b.rc(), b.read_log()
      b.kill()
      assert.is_true(exited, ("the second master was still running after 3 s; %d of 100 requests reached the first"):format(got))
      assert.is_true(took < 3)
      assert.are_not.equal(0, rc)
      local want = ("%s %d is in use by another process"):format(which, which == "PORT" and port or admin)
      assert.truthy(log:find(want, 1, true), log)
      assert.are.equal(100, got)
    end)
  end

  it("stays with the first master across a worker restart and a reload", function()
    local kids = T.wait_for("two workers", function()
      local k = T.children(a.pid)
      return #k == 2 and k
    end)
    T.signal(kids[1], "KILL")
    T.wait_for("a replacement worker", function()
      local k = T.children(a.pid)
      return #k == 2 and k[1] ~= kids[1] and k[2] ~= kids[1] and k
    end)
    T.signal(a.pid, "HUP")
    T.wait_for("the reload", function() return T.count(T.read_log(a), "reloaded: generation") >= 2 end)
    local b = start_bg_tracked(dir .. "/b.lua", a.port, a.admin)
    T.wait_for("the second master to exit", function() return b.rc() end, 3)
    local rc = b.rc()
    b.kill()
    assert.are_not.equal(0, rc)
    assert.are.equal(100, answered_by(a.port, "a", 100))
  end)

  it("is free again for a new master once the old one was SIGKILLed", function()
    local kids = T.children(a.pid)
    T.signal(a.pid, "KILL")
    -- its workers get SIGTERM from the kernel and close their listeners
    T.wait_for("the old workers to exit", function()
      for _, k in ipairs(kids) do if T.alive(k) then return false end end
      return true
    end)
    local c = T.start({ "--workers", "2", dir .. "/b.lua" }, nil, { port = a.port, admin = a.admin })
    local got = answered_by(a.port, "b", 20)
    T.stop(c)
    assert.are.equal(20, got)
  end)
end)

describe("a port taken by another program", function()
  it("makes flashhost exit non-zero and say so", function()
    local port = T.free_port()
    local other = assert(socket.bind("127.0.0.1", port))
    local dir = T.scratch({ ["a.lua"] = app("a") })
    local b = start_bg_tracked(dir .. "/a.lua", port, T.free_port())
    local exited = pcall(T.wait_for, "flashhost to exit", function() return b.rc() end, 5)
    local rc, log = b.rc(), b.read_log()
    b.kill()
    other:close()
    os.execute("rm -rf " .. T.q(dir))
    kill_started()
    assert.is_true(exited)
    assert.are_not.equal(0, rc)
    assert.truthy(log:find(("PORT %d is in use by another process"):format(port), 1, true), log)
  end)
end)
