-- /metrics across a replaced worker, and the shared-memory folders of dead
-- masters.  Each worker publishes a snapshot of its samples to
-- /dev/shm/flashhost-<master pid>; a worker that replaces a dead one must
-- keep the dead one's counts, and a master killed with SIGKILL cannot remove
-- its folder, so the next master does.
local T = require "spec.e2e.support"

local APP = [[
local app = require("flashhost.app").new("counted")
local metrics = require("flashhost.metrics")
local hits = metrics.counter("hits_total", "Requests served.", { "route" })
local took = metrics.histogram("hit_seconds", "Time per request.", {})
local up = metrics.gauge("worker_up", "1 per worker process.", {})
app:on_start(function() up:set({}, 1) end)
app:every(100, "metrics-publish", function() metrics.publish() end)
app:get("/health", function() return 200, { ok = true } end)
app:get("/hit", function()
  hits:inc({ route = "hit" })
  took:observe({}, 0.001)
  return 200, { ok = true }
end)
app:admin("GET", "/metrics", function() return 200, metrics.render_all(), { ["Content-Type"] = "text/plain" } end)
return app
]]

local function scrape(proc)
  local s, body = T.request(proc.admin, "GET", "/metrics")
  assert.are.equal(200, s)
  local function value(pattern) return tonumber(body:match("\n" .. pattern .. " (%d+)")) or 0 end
  return {
    hits = value('hits_total{route="hit"}'),
    count = value("hit_seconds_count"),
    up = value("worker_up"),
  }
end

local function hit(proc, n)
  for _ = 1, n do assert.are.equal(200, (T.request(proc.port, "GET", "/hit"))) end
end

local function exists(path)
  local ok = os.rename(path, path)
  return ok and true or false
end

describe("metrics of a replaced worker", function()
  local proc, dir
  before_each(function()
    dir = T.scratch({ ["app.lua"] = APP })
    proc = T.start({ "--workers", "2", dir .. "/app.lua" })
  end)
  after_each(function()
    T.stop(proc)
    os.execute("rm -rf " .. T.q(dir))
  end)

  it("stay in the totals: counters never go back when a worker is SIGKILLed and replaced", function()
    hit(proc, 200)
    T.wait_for("200 hits in /metrics", function() return scrape(proc).hits == 200 end)
    local kids = T.children(proc.pid)
    assert.are.equal(2, #kids)
    T.signal(kids[1], "KILL")
    local lowest = math.huge
    T.wait_for("a replacement worker", function()
      lowest = math.min(lowest, scrape(proc).hits)
      local k = T.children(proc.pid)
      return #k == 2 and k[1] ~= kids[1] and k[2] ~= kids[1]
    end)
    hit(proc, 50)
    -- every scrape from here on: the new worker publishes within 100 ms
    local deadline, last = T.now() + 1.5, nil
    repeat
      last = scrape(proc)
      lowest = math.min(lowest, last.hits)
      T.sleep(0.05)
    until T.now() > deadline
    assert.is_true(lowest >= 200, ("the counter went back to %d after the replacement"):format(lowest))
    assert.are.equal(250, last.hits)
    assert.are.equal(250, last.count)
    assert.are.equal(2, last.up) -- the dead worker's gauge is not counted beside its replacement's
  end)

  it("keep their carried counts through a reload", function()
    hit(proc, 40)
    T.wait_for("40 hits", function() return scrape(proc).hits == 40 end)
    local kids = T.children(proc.pid)
    T.signal(kids[2], "KILL")
    T.wait_for("a replacement worker", function()
      local k = T.children(proc.pid)
      return #k == 2 and k[1] ~= kids[2] and k[2] ~= kids[2]
    end)
    T.signal(proc.pid, "HUP")
    T.wait_for("the reload", function() return T.count(T.read_log(proc), "reloaded: generation") >= 2 end)
    hit(proc, 10)
    local got = T.wait_for("50 hits", function()
      local s = scrape(proc)
      return s.hits == 50 and s
    end)
    assert.are.equal(50, got.count)
  end)
end)

describe("shared-memory folders of masters", function()
  it("are removed at start when their master is dead, and kept while it lives", function()
    local dir = T.scratch({ ["app.lua"] = APP })
    local live = T.start({ "--workers", "1", dir .. "/app.lua" })
    local dead = T.start({ "--workers", "1", dir .. "/app.lua" })
    local live_dir, dead_dir = "/dev/shm/flashhost-" .. live.pid, "/dev/shm/flashhost-" .. dead.pid
    T.wait_for("both folders", function() return exists(live_dir) and exists(dead_dir) end)
    local dead_kids = T.children(dead.pid)
    T.signal(dead.pid, "KILL")
    T.wait_for("the killed master's workers to go", function()
      for _, k in ipairs(dead_kids) do if T.alive(k) then return false end end
      return true
    end)
    assert.is_true(exists(dead_dir), "a SIGKILLed master cannot clean up; the folder should still be there")
    local next_one = T.start({ "--workers", "1", dir .. "/app.lua" })
    local gone, kept = not exists(dead_dir), exists(live_dir .. "/worker-0.prom")
    T.stop(next_one)
    T.stop(live)
    os.execute("rm -rf " .. T.q(dir) .. " " .. T.q(dead_dir))
    assert.is_true(gone, dead_dir .. " is still there")
    assert.is_true(kept, "the live master's snapshot was removed")
  end)
end)
