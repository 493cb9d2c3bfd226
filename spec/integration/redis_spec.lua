-- flashhost.redis against real redis-servers.  Runs inside the runtime:
--   build/flashhost --run /usr/bin/busted --ignore-lua -o TAP spec/integration/redis_spec.lua
-- REDIS_URL names the shared server (default redis://127.0.0.1:6379); only its
-- database 9 is used.  The outage tests start and kill a private redis-server
-- on REDIS_SPARE_PORT (default 26380), so nothing else may listen there.
local redis = require "flashhost.redis"
local core = require "flashhost.core"
local timer = require "flashhost.timer"

local URL = require("spec.helpers").redis_url()
local SPARE_PORT = tonumber(os.getenv("REDIS_SPARE_PORT")) or 26380
local SPARE_URL = "redis://127.0.0.1:" .. SPARE_PORT
local SPARE_PID = "/tmp/fh-redis-spec-" .. SPARE_PORT .. ".pid"

-- Polls cond every 5 ms for at most ms; returns its last value.
local function wait_until(ms, cond)
  local deadline = core.mono() + ms
  local v = cond()
  while not v and core.mono() < deadline do
    timer.sleep(5)
    v = cond()
  end
  return v
end

local function ms_since(t0) return core.mono() - t0 end

local function sh(cmd)
  local rc = os.execute(cmd)
  return rc == 0 or rc == true
end

local function spare_pid()
  local f = io.open(SPARE_PID)
  if not f then return nil end
  local pid = f:read("*n")
  f:close()
  return pid
end

local function spare_start(extra)
  assert(sh(("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --pidfile %s --logfile /dev/null %s")
    :format(SPARE_PORT, SPARE_PID, extra or "")), "cannot start redis-server on port " .. SPARE_PORT)
end

local function spare_signal(sig)
  assert(sh("kill -" .. sig .. " " .. assert(spare_pid(), "no spare redis-server")))
end

-- SIGKILL, like a crash: no goodbye on the connections.
local function spare_kill()
  local pid = spare_pid()
  if not pid then return end
  sh("kill -9 " .. pid .. " 2>/dev/null")
  assert(wait_until(5000, function() return not sh("kill -0 " .. pid .. " 2>/dev/null") end),
    "redis-server " .. pid .. " did not die")
  os.remove(SPARE_PID)
end

local function connected(url, opts)
  opts = opts or {}
  opts.url = url
  local r = redis.connect(opts)
  assert.is_true(r:wait_ready(3000))
  return r
end

describe("flashhost.redis", function()
  local r

  setup(function()
    r = connected(URL)
    assert.equal("OK", r:call("FLUSHDB"))
  end)

  teardown(function()
    if r then r:close() end
    spare_kill()
  end)

  describe("parse_url", function()
    it("reads host, port, db, user and password", function()
      local c = assert(redis.parse_url("redis://u%40x:p%3Aw@redis.local:7000/3"))
      assert.same({ host = "redis.local", port = 7000, db = 3, username = "u@x", password = "p:w" }, c)
      assert.same({ host = "127.0.0.1", port = 6379, db = 0, password = "pw" }, redis.parse_url("redis://:pw@127.0.0.1"))
      assert.same({ host = "::1", port = 6380, db = 0 }, redis.parse_url("redis://[::1]:6380/"))
    end)

    it("refuses what it cannot read, without echoing the password", function()
      assert.is_nil(redis.parse_url("http://x"))
      local _, err = redis.parse_url("redis://:secret@host:notaport")
      assert.is_nil(err:find("secret", 1, true))
      assert.has_error(function() redis.connect { url = "redis://host/db" } end)
      assert.equal("redis://:***@h:1/2", redis.redact("redis://:secret@h:1/2"))
    end)
  end)

  describe("connecting", function()
    it("selects the database of the URL", function()
      assert.matches(" db=9 ", r:call("CLIENT", "INFO"))
    end)

    it("resolves a host name without blocking the loop", function()
      local port = URL:match(":(%d+)/%d+$")
      local c = connected("redis://localhost:" .. port .. "/9")
      assert.equal("PONG", c:call("PING"))
      c:close()
    end)

    it("authenticates, and keeps retrying with a wrong password", function()
      spare_kill()
      spare_start("--requirepass s3cret")
      local good = connected("redis://:s3cret@127.0.0.1:" .. SPARE_PORT)
      assert.equal("PONG", good:call("PING"))
      local bad = redis.connect { url = "redis://:wrong@127.0.0.1:" .. SPARE_PORT }
      local ok, err = bad:wait_ready(300)
      assert.is_nil(ok)
      assert.equal("timeout", err)
      assert.matches("WRONGPASS", select(2, bad:status()))
      assert.equal("not connected", select(2, bad:call("PING")))
      good:close()
      bad:close()
      spare_kill()
    end)
  end)

  describe("replies", function()
    it("maps every reply type", function()
      assert.equal("OK", r:call("SET", "s", "hello\0world"))
      assert.equal("hello\0world", r:call("GET", "s"))
      assert.equal("PONG", r:call("PING"))
      assert.equal(1, r:call("INCR", "n"))
      assert.equal(11, r:call("INCRBY", "n", 10))
      assert.equal(redis.null, r:call("GET", "missing"))
      assert.is_not_nil(redis.null)
      assert.same({}, r:call("LRANGE", "missing", 0, -1))
    end)

    it("sends numbers without losing digits", function()
      assert.equal("OK", r:call("SET", "big", 2 ^ 53))
      assert.equal("9007199254740992", r:call("GET", "big"))
      r:call("SET", "f", 0.1)
      assert.equal(0.1, tonumber(r:call("GET", "f")))
    end)

    it("answers an error reply with false and the message", function()
      r:call("SET", "s", "x")
      local ok, err = r:call("LPUSH", "s", "y")
      assert.is_false(ok)
      assert.matches("^WRONGTYPE", err)
      ok, err = r:call("NOSUCHCOMMAND")
      assert.is_false(ok)
      assert.matches("^ERR", err)
    end)

    it("maps nested arrays, nested nils and nested errors", function()
      r:call("SET", "a", "1")
      assert.same({ "1", redis.null, "1" }, r:call("MGET", "a", "missing", "a"))
      local v = r:call("EVAL", [[return {1, {2, {3, 'x'}}, redis.error_reply('MY bad'), redis.status_reply('FINE'), 'y'}]], 0)
      assert.same({ 1, { 2, { 3, "x" } }, { err = "MY bad" }, "FINE", "y" }, v)
    end)

    it("raises on misuse", function()
      assert.has_error(function() r:call() end)
      assert.has_error(function() r:call("GET", {}) end)
      assert.has_error(function() r:call("MULTI") end)
      assert.has_error(function() r:call("subscribe", "ch") end)
      assert.has_error(function() r:call("SELECT", 1) end)
      assert.has_error(function() r:fcall("no-library-registered", {}, {}) end)
    end)
  end)

  it("pipelines 1,000 commands from 100 coroutines and answers each in its own coroutine", function()
    local done, wrong, errors = 0, 0, {}
    local t0 = core.mono()
    for i = 1, 100 do
      core.spawn(function()
        for j = 1, 10 do
          local tag = ("co%d-%d"):format(i, j)
          local v, err = r:call("ECHO", tag)
          if v ~= tag then wrong = wrong + 1; errors[#errors + 1] = tostring(err or v) end
          assert(r:call("INCR", "pipelined"))
        end
        done = done + 1
      end)
    end
    assert.is_truthy(wait_until(10000, function() return done == 100 end))
    assert.equal(0, wrong, table.concat(errors, ", "))
    assert.equal("1000", r:call("GET", "pipelined"))
    assert.equal(0, r:stats().inflight)
    -- 2,000 round trips one after the other would take far longer than a
    -- pipeline on loopback; this only catches a client that serialises.
    assert.is_true(ms_since(t0) < 5000)
  end)

  describe("functions", function()
    local LIB = "#!lua name=fhspec\n" ..
      "redis.register_function('fhspec_pair', function(keys, args) return { keys[1], args[1], args[2] } end)\n" ..
      "redis.register_function('fhspec_boom', function() return redis.error_reply('BOOM here') end)\n" ..
      "redis.register_function('fhspec_incr', function(keys) return redis.call('INCR', keys[1]) end)\n" ..
      "redis.register_function{ function_name = 'fhspec_get', callback = function(keys) return redis.call('GET', keys[1]) end, flags = { 'no-writes' } }\n"

    local function fresh(url)
      local c = connected(url or URL)
      return c:functions("fhspec", LIB)
    end

    it("loads the library on the first fcall and again after FUNCTION FLUSH", function()
      local c = fresh()
      c:call("FUNCTION", "DELETE", "fhspec")
      assert.same({ "k", "a", "7" }, c:fcall("fhspec_pair", { "k" }, { "a", 7 }))
      assert.equal(1, #c:call("FUNCTION", "LIST", "LIBRARYNAME", "fhspec"))
      assert.equal("OK", c:call("FUNCTION", "FLUSH"))
      -- Redis answers "Function not found": the client loads it and retries once
      assert.same({ "k2", "b", "8" }, c:fcall("fhspec_pair", { "k2" }, { "b", 8 }))
      assert.equal(1, #c:call("FUNCTION", "LIST", "LIBRARYNAME", "fhspec"))
      c:close()
    end)

    it("runs a no-writes function with fcall_ro, and refuses a writing one there", function()
      local c = fresh()
      assert.equal("OK", c:call("SET", "ro", "v"))
      assert.equal("v", c:fcall_ro("fhspec_get", { "ro" }, {}))
      local ok, err = c:fcall_ro("fhspec_incr", { "ro:n" }, {})
      assert.is_false(ok)
      assert.matches("write flag", err)
      assert.equal(1, c:fcall("fhspec_incr", { "ro:n" }, {}))
      c:close()
    end)

    it("passes a function's error reply through, and an unknown function's", function()
      local c = fresh()
      local ok, err = c:fcall("fhspec_boom", {}, {})
      assert.is_false(ok)
      assert.equal("BOOM here", err)
      ok, err = c:fcall("fhspec_nothing", {}, {})
      assert.is_false(ok)
      assert.matches("^ERR Function not found", err)
      c:close()
    end)

    it("loads the libraries up front with load_functions, true or nil and why", function()
      local c = fresh()
      assert.equal("OK", c:call("FUNCTION", "FLUSH"))
      assert.is_true(c:load_functions())
      assert.equal(1, #c:call("FUNCTION", "LIST", "LIBRARYNAME", "fhspec"))
      c:close()
      spare_kill()
      local down = redis.connect { url = SPARE_URL }:functions("fhspec", LIB)
      local v, err = down:load_functions()
      assert.is_nil(v)
      assert.equal("not connected", err)
      down:close()
    end)

    it("loads it again on a Redis restarted with empty data", function()
      spare_kill()
      spare_start()
      local c = fresh(SPARE_URL)
      assert.equal(1, c:fcall("fhspec_incr", { "n" }, {}))
      spare_kill()
      spare_start()
      assert.is_true(c:wait_ready(5000))
      assert.same({}, c:call("FUNCTION", "LIST"))
      assert.equal(1, c:fcall("fhspec_incr", { "n" }, {}))
      c:close()
      spare_kill()
    end)

    it("reads a library file and raises on a missing or unnamed one", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(sh("mkdir -p " .. dir))
      local f = assert(io.open(dir .. "/hello.lua", "w"))
      f:write("#!lua name=fhhello\nredis.register_function('fhhello', function(keys, args) return 'hello ' .. args[1] end)\n")
      f:close()
      f = assert(io.open(dir .. "/anon.lua", "w"))
      f:write("redis.register_function('x', function() return 1 end)\n")
      f:close()
      local c = connected(URL)
      assert.equal(c, c:load_library(dir .. "/hello.lua"))
      assert.equal("hello you", c:fcall("fhhello", {}, { "you" }))
      assert.has_error(function() c:load_library(dir .. "/missing.lua") end)
      assert.has_error(function() c:load_library(dir .. "/anon.lua") end)
      assert.has_error(function() c:functions("other", "#!lua name=fhhello\n") end)
      c:call("FUNCTION", "DELETE", "fhhello")
      c:close()
      sh("rm -rf " .. dir)
    end)
  end)

  describe("deadlines", function()
    it("times a slow command out and keeps the connection", function()
      local slow = connected(URL, { timeout_ms = 100 })
      local t0 = core.mono()
      -- BLPOP holds this connection for 500 ms without blocking the server.
      local v, err = slow:call("BLPOP", "fh:nothing", 0.5)
      assert.is_nil(v)
      assert.equal("timeout", err)
      assert.is_true(ms_since(t0) >= 90 and ms_since(t0) < 400)
      timer.sleep(600)
      -- the late answer of BLPOP was dropped; PING gets its own PONG
      assert.equal("PONG", slow:call("PING"))
      assert.equal("connected", slow:status())
      local st = slow:stats()
      assert.equal(1, st.connects)
      assert.equal(1, st.timeouts)
      slow:close()
    end)

    it("drops a stuck connection and reconnects at once", function()
      local slow = connected(URL, { timeout_ms = 100 })
      local answers = {}
      for i = 1, 4 do
        core.spawn(function()
          local _, err
          if i == 1 then _, err = slow:call("BLPOP", "fh:nothing", 3) else _, err = slow:call("PING") end
          answers[#answers + 1] = err
        end)
      end
      local t0 = core.mono()
      assert.is_truthy(wait_until(2000, function() return #answers == 4 end))
      assert.same({ "timeout", "timeout", "timeout", "timeout" }, answers)
      assert.is_truthy(wait_until(2000, function() return slow:stats().connects == 2 end))
      assert.equal("PONG", slow:call("PING"))
      -- long before the BLPOP on the old connection would have ended
      assert.is_true(ms_since(t0) < 2500)
      slow:close()
    end)

    it("answers overloaded past max_pending", function()
      local small = connected(URL, { max_pending = 2, timeout_ms = 2000 })
      local answers = {}
      for _ = 1, 2 do
        core.spawn(function()
          local v = small:call("BLPOP", "fh:nothing", 0.2)
          answers[#answers + 1] = v
        end)
      end
      timer.sleep(20)
      assert.equal(2, small:stats().inflight)
      local v, err = small:call("PING")
      assert.is_nil(v)
      assert.equal("overloaded", err)
      assert.is_truthy(wait_until(2000, function() return #answers == 2 end))
      assert.same({ redis.null, redis.null }, answers)
      assert.equal("PONG", small:call("PING"))
      small:close()
    end)
  end)

  describe("close", function()
    it("answers pending calls with closed and refuses later ones", function()
      local c = connected(URL)
      local got
      core.spawn(function() got = { c:call("BLPOP", "fh:nothing", 1) } end)
      timer.sleep(20)
      c:close()
      assert.is_truthy(wait_until(500, function() return got end))
      assert.same({ nil, "closed", "closed" }, got)
      assert.equal("disconnected", c:status())
      assert.has_error(function() c:call("PING") end)
      c:close() -- twice is fine
    end)

    it("survives clients dropped while connecting or waiting to reconnect", function()
      spare_kill()
      for _ = 1, 20 do redis.connect { url = SPARE_URL } end
      for _ = 1, 5 do redis.connect { url = "redis://localhost:" .. SPARE_PORT } end -- lookup pending
      local c = redis.connect { url = URL }
      c = nil
      collectgarbage()
      collectgarbage()
      timer.sleep(100) -- let the closed handles and contexts go
      assert.equal("PONG", r:call("PING"))
    end)
  end)

  describe("outages", function()
    it("answers not connected at once while Redis is down, then connects when it comes up", function()
      spare_kill()
      local c = redis.connect { url = SPARE_URL, timeout_ms = 500 }
      local t0 = core.mono()
      local v, err = c:call("PING")
      assert.is_nil(v)
      assert.equal("not connected", err)
      assert.is_true(ms_since(t0) < 20)
      assert.is_truthy(wait_until(2000, function() return select(2, c:status()) ~= nil end))
      local state, last = c:status()
      assert.is_not.equal("connected", state)
      assert.matches("refused", last)
      local ok, werr = c:wait_ready(100)
      assert.is_nil(ok)
      assert.equal("timeout", werr)

      spare_start()
      assert.is_true(c:wait_ready(5000))
      assert.equal("PONG", c:call("PING"))
      c:close()
    end)

    it("fails fast when Redis dies mid-traffic and recovers after it restarts", function()
      if not spare_pid() then spare_start() end
      local c = connected(SPARE_URL, { timeout_ms = 1000 })
      local stop, running = false, 0
      local ok_before, ok_after, failures, slowest_failure = 0, 0, {}, 0
      local restarted = false
      for i = 1, 20 do
        running = running + 1
        core.spawn(function()
          while not stop do
            local t0 = core.mono()
            local v, err = c:call("INCR", "traffic")
            if v then
              if restarted then ok_after = ok_after + 1 else ok_before = ok_before + 1 end
            else
              failures[err] = (failures[err] or 0) + 1
              slowest_failure = math.max(slowest_failure, ms_since(t0))
              timer.sleep(5)
            end
          end
          running = running - 1
        end)
      end
      assert.is_truthy(wait_until(2000, function() return ok_before > 200 end))
      spare_kill()
      assert.is_truthy(wait_until(2000, function() return c:status() ~= "connected" end))
      timer.sleep(300) -- the outage: every call must fail, and fast
      assert.is_truthy((failures["not connected"] or 0) > 0)
      for reason in pairs(failures) do
        assert.is_truthy(reason == "not connected" or reason == "connection lost", reason)
      end
      assert.is_true(slowest_failure < 200, "a failure took " .. slowest_failure .. " ms")

      restarted = true
      spare_start()
      assert.is_true(c:wait_ready(5000))
      assert.is_truthy(wait_until(3000, function() return ok_after > 200 end))
      stop = true
      assert.is_truthy(wait_until(2000, function() return running == 0 end))
      local st = c:stats()
      assert.equal(1, st.losses)
      assert.equal(2, st.connects)
      c:close()
      spare_kill()
    end)

    it("gives up on a frozen Redis and comes back when it thaws", function()
      spare_start()
      local c = connected(SPARE_URL, { timeout_ms = 100, connect_timeout_ms = 150 })
      spare_signal("STOP") -- accepts connections (kernel backlog), answers nothing
      local answers = {}
      for _ = 1, 5 do
        core.spawn(function()
          local _, err = c:call("PING")
          answers[#answers + 1] = err
        end)
      end
      assert.is_truthy(wait_until(1000, function() return #answers == 5 end))
      assert.same({ "timeout", "timeout", "timeout", "timeout", "timeout" }, answers)
      assert.is_truthy(wait_until(1000, function() return c:status() ~= "connected" end))
      -- new attempts connect at the TCP level but never get PONG
      assert.is_truthy(wait_until(2000, function() return select(2, c:status()) == "connect timeout" end))
      assert.equal("not connected", select(2, c:call("PING")))
      spare_signal("CONT")
      assert.is_true(c:wait_ready(5000))
      assert.equal("PONG", c:call("PING"))
      assert.equal(1, c:stats().losses)
      c:close()
      spare_kill()
    end)
  end)
end)
