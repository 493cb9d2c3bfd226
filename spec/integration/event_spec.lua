-- core.event (flashhost/event.lua on timer.park/unpark, on the runtime's one
-- timed wait).  Runs inside the runtime:
--   build/flashhost --run /usr/bin/busted --ignore-lua -o TAP spec/integration/event_spec.lua
-- A generation's stop cannot be shown from inside the generation that runs
-- busted; tests/c/test_wait.c covers it.
local core = require "flashhost.core"
local timer = require "flashhost.timer"

-- Yields until every task spawned so far has run to its next wait.
local function settle() timer.sleep(1) end

describe("core.event", function()
  it("wakes every waiter with the values of set, in the order they began waiting", function()
    local ev = core.event()
    local order = {}
    for i = 1, 5 do
      core.spawn(function()
        local a, b, c = ev:wait(2000)
        order[#order + 1] = { i, a, b, c }
      end)
    end
    assert.equal(5, ev:set("go", nil, 3))
    assert.same({}, order) -- set never runs a waiter inside the caller
    settle()
    assert.equal(5, #order)
    for i = 1, 5 do assert.same({ i, "go", nil, 3 }, order[i]) end
  end)

  it("answers at once once set, until cleared", function()
    local ev = core.event()
    assert.is_false(ev:is_set())
    assert.equal(0, ev:set(42))
    assert.is_true(ev:is_set())
    local t0 = core.mono()
    assert.equal(42, ev:wait(1000))
    assert.is_true(core.mono() - t0 < 50)
    ev:clear()
    assert.is_false(ev:is_set())
    local v, err, kind = ev:wait(10)
    assert.is_nil(v)
    assert.equal("timeout", err)
    assert.equal("timeout", kind)
  end)

  it("times out after the deadline, with a kind, and is then not woken", function()
    local ev = core.event()
    local got
    core.spawn(function() got = { ev:wait(20) } end)
    local t0 = core.mono()
    local deadline = t0 + 1000
    while not got and core.mono() < deadline do timer.sleep(5) end
    assert.is_truthy(got)
    assert.is_true(core.mono() - t0 >= 19)
    assert.same({ nil, "timeout", "timeout" }, got)
    assert.equal(0, ev:set("late")) -- nobody waits any more
  end)

  it("does not wake a timed-out waiter inside its next wait", function()
    local ev = core.event()
    local after
    core.spawn(function()
      ev:wait(1)
      after = timer.sleep(40) and "slept" or "broken"
    end)
    timer.sleep(15) -- the waiter timed out and sleeps now
    ev:set("too late")
    timer.sleep(60)
    assert.equal("slept", after)
  end)

  it("waits without a deadline until set, and through_stop keeps the values", function()
    local ev = core.event()
    local got
    core.spawn(function() got = { ev:wait(nil, true) } end)
    timer.sleep(30)
    assert.is_nil(got)
    assert.equal(1, ev:set("done", 1))
    settle()
    assert.same({ "done", 1 }, got)
  end)

  it("raises on a bad deadline and leaves no waiter behind", function()
    local ev = core.event()
    assert.has_error(function() ev:wait(-1) end)
    assert.has_error(function() ev:wait("soon") end)
    assert.equal(0, ev:set("x")) -- and a later set wakes nobody
  end)

  it("wakes many waiters from one set", function()
    local ev = core.event()
    local n = 0
    for _ = 1, 200 do core.spawn(function() if ev:wait(2000) == "x" then n = n + 1 end end) end
    assert.equal(200, ev:set("x"))
    settle()
    assert.equal(200, n)
  end)
end)
