-- Group commit (app/lib/group_commit.lua) on the runtime's real tasks and
-- events.  send() here stands for the Redis call: it records each batch and
-- takes a few milliseconds, as a call in flight does.
local core = require "flashhost.core"
local timer = require "flashhost.timer"
local GroupCommit = require "lib.group_commit"

local function wait_until(ms, cond)
  local deadline = core.mono() + ms
  while not cond() and core.mono() < deadline do timer.sleep(2) end
  return cond()
end

describe("group commit", function()
  local batches, calls
  local function recorder(delay_ms, fail)
    batches, calls = {}, 0
    return function(key, items)
      calls = calls + 1
      local b = { key = key }
      for i, it in ipairs(items) do b[i] = it end
      batches[#batches + 1] = b
      timer.sleep(delay_ms)
      if fail then return nil, "unavailable", "down" end
      local out = {}
      for i, it in ipairs(items) do out[i] = { echo = it, pos = i } end
      return out
    end
  end

  -- Starts n submits of key in n tasks; returns the table their answers land in.
  -- answers.n counts the answers in.
  local function submit_many(gc, key, n, first)
    local answers = { n = 0 }
    for i = first or 1, (first or 1) + n - 1 do
      core.spawn(function()
        local a, kind, detail = gc:submit(key, i)
        answers[i] = { a = a, kind = kind, detail = detail }
        answers.n = answers.n + 1
      end)
    end
    return answers
  end

  it("sends a lone attempt at once, in a batch of one", function()
    local gc = GroupCommit.new { send = recorder(1) }
    local t0 = core.mono()
    local a = gc:submit("sku1", "only")
    assert.are.equal("only", a.echo)
    assert.are.equal(1, #batches)
    assert.are.equal(1, #batches[1])
    assert.is_true(core.mono() - t0 < 500)
  end)

  it("queues attempts behind the call in flight and sends them as one batch, in order", function()
    local gc = GroupCommit.new { send = recorder(20) }
    local answers = submit_many(gc, "sku1", 50)
    assert.is_true(wait_until(3000, function() return answers.n == 50 end))
    -- the first went alone; the 49 that arrived while it was in flight went together
    assert.are.equal(2, #batches)
    assert.are.same({ key = "sku1", 1 }, batches[1])
    assert.are.equal(49, #batches[2])
    for i = 1, 49 do assert.are.equal(i + 1, batches[2][i]) end
    -- every attempt got its own answer
    for i = 1, 50 do assert.are.equal(i, answers[i].a.echo) end
  end)

  it("takes the next batch when its leader runs: attempts that arrive with the answer ride along", function()
    batches = {}
    local late = { n = 0 }
    local arrive = core.event()
    local gc
    gc = GroupCommit.new { send = function(_, items)
      batches[#batches + 1] = items
      timer.sleep(5)
      -- wakes the late attempt's task in the turn the first answer comes back:
      -- it runs before the next leader does
      if #batches == 1 then arrive:set() end
      local out = {}
      for i, it in ipairs(items) do out[i] = { echo = it } end
      return out
    end }
    core.spawn(function()
      arrive:wait(3000)
      late.a = gc:submit("sku1", "late")
      late.n = 1
    end)
    local queued = submit_many(gc, "sku1", 2)
    assert.is_true(wait_until(3000, function() return queued.n == 2 and late.n == 1 end))
    -- 1 alone; 2 and the late one in the second call (a batch taken as the
    -- first answer came back would have left "late" for a third)
    assert.are.same({ { 1 }, { 2, "late" } }, batches)
    assert.are.equal("late", late.a.echo)
  end)

  it("caps a batch at max and sends the rest in the next call", function()
    local gc = GroupCommit.new { send = recorder(20), max = 16 }
    local answers = submit_many(gc, "sku1", 41)
    assert.is_true(wait_until(3000, function() return answers.n == 41 end))
    local sizes = {}
    for i, b in ipairs(batches) do sizes[i] = #b end
    assert.are.same({ 1, 16, 16, 8 }, sizes)
    for i = 1, 41 do assert.are.equal(i, answers[i].a.echo) end
  end)

  it("keeps keys apart: each key has its own call in flight", function()
    local gc = GroupCommit.new { send = recorder(20) }
    local a1 = submit_many(gc, "skuA", 5)
    local a2 = submit_many(gc, "skuB", 5, 101)
    assert.is_true(wait_until(3000, function() return a1.n == 5 and a2.n == 5 end))
    for _, b in ipairs(batches) do
      for _, it in ipairs(b) do assert.are.equal(b.key == "skuA", it < 100) end
    end
    assert.are.equal(4, #batches) -- 1 + 4 for each key
  end)

  it("gives every member of a failed batch the failure, and recovers", function()
    local gc = GroupCommit.new { send = recorder(10, true) }
    local answers = submit_many(gc, "sku1", 10)
    assert.is_true(wait_until(3000, function() return answers.n == 10 end))
    for i = 1, 10 do
      assert.is_nil(answers[i].a)
      assert.are.equal("unavailable", answers[i].kind)
    end
    gc.send = recorder(1)
    assert.are.equal("again", gc:submit("sku1", "again").echo)
  end)

  it("turns an error raised by send into an error answer for the whole batch", function()
    local gc = GroupCommit.new { send = function() error("bug") end }
    local a, kind, detail = gc:submit("sku1", 1)
    assert.is_nil(a)
    assert.are.equal("error", kind)
    assert.truthy(detail:find("bug", 1, true))
    -- the lane is free again
    gc.send = recorder(1)
    assert.are.equal(2, gc:submit("sku1", 2).echo)
  end)

  it("reports each batch's size", function()
    local sizes = {}
    local gc = GroupCommit.new { send = recorder(20), on_batch = function(key, n) sizes[#sizes + 1] = n end }
    local answers = submit_many(gc, "sku1", 20)
    assert.is_true(wait_until(3000, function() return answers.n == 20 end))
    assert.are.same({ 1, 19 }, sizes)
  end)
end)
