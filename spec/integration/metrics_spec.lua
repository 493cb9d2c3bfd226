-- flashhost.metrics on its C store: series are looked up once per distinct set
-- of label values and then updated through the store's slots.  Runs inside
-- the runtime:
--   build/flashhost --run /usr/bin/busted --ignore-lua -o TAP spec/integration/metrics_spec.lua
local metrics = require "flashhost.metrics"
local store = require "flashhost.metrics.store"

-- The value of one sample line of this process's text, or nil.
local function sample(text, series)
  for line in text:gmatch("[^\n]+") do
    local name, v = line:match("^(%S+) (%S+)$")
    if name == series then return tonumber(v) end
  end
end

local n = 0
local function name(base)
  n = n + 1
  return ("spec_%s_%d_%d"):format(base, n, os.time())
end

describe("metrics", function()
  it("counts each series of a counter apart, including empty and absent label values", function()
    local c = metrics.counter(name("hits_total"), "Hits.", { "route", "status" })
    c:inc({ route = "/a", status = 200 })
    c:inc({ route = "/a", status = 200 }, 2)
    c:inc({ route = "/a", status = 404 })
    c:inc({ route = "", status = 200 })
    c:inc({ status = 200 })          -- route absent: the same series as ""
    c:inc()                          -- no labels at all: a series of its own
    local text = store.render()
    assert.are.equal(3, sample(text, c.name .. '{route="/a",status="200"}'))
    assert.are.equal(1, sample(text, c.name .. '{route="/a",status="404"}'))
    assert.are.equal(2, sample(text, c.name .. '{route="",status="200"}'))
    assert.are.equal(1, sample(text, c.name))
  end)

  it("keeps a single-label family's empty value apart from its unlabelled series", function()
    local c = metrics.counter(name("one_total"), "One label.", { "kind" })
    c:inc({ kind = "" }, 5)
    c:inc(nil, 7)
    local text = store.render()
    assert.are.equal(5, sample(text, c.name .. '{kind=""}'))
    assert.are.equal(7, sample(text, c.name))
  end)

  it("sets gauges and fills histogram buckets, sum and count", function()
    local g = metrics.gauge(name("depth"), "Depth.", { "sku" })
    g:set({ sku = "1" }, 10)
    g:set({ sku = "1" }, 4)
    local h = metrics.histogram(name("seconds"), "Latency.", { "op" }, { 0.1, 1 })
    h:observe({ op = "x" }, 0.05)
    h:observe({ op = "x" }, 0.5)
    h:observe({ op = "x" }, 3)
    local text = store.render()
    assert.are.equal(4, sample(text, g.name .. '{sku="1"}'))
    assert.are.equal(1, sample(text, h.name .. '_bucket{op="x",le="0.1"}'))
    assert.are.equal(2, sample(text, h.name .. '_bucket{op="x",le="1"}'))
    assert.are.equal(3, sample(text, h.name .. '_bucket{op="x",le="+Inf"}'))
    assert.are.equal(3, sample(text, h.name .. '_count{op="x"}'))
    assert.is_true(math.abs(sample(text, h.name .. '_sum{op="x"}') - 3.55) < 1e-9)
  end)

  it("adds to the same samples from a second definition, as the next generation after a reload does", function()
    local id = name("reload_total")
    local first = metrics.counter(id, "Reloaded.", { "k" })
    first:inc({ k = "v" }, 2)
    local second = metrics.counter(id, "Reloaded.", { "k" })
    second:inc({ k = "v" }, 3)
    -- and through the store by name, as a family past its cache bound is updated
    store.add(id, 'k="v"', 4)
    assert.are.equal(9, sample(store.render(), id .. '{k="v"}'))
  end)

  it("refuses slots that do not exist", function()
    assert.has_error(function() store.add_at(-1, 1) end)
    assert.has_error(function() store.add_at(1e9, 1) end)
    assert.has_error(function() store.observe_at(0, 1e6, 1) end)
    assert.has_error(function() store.slot(name("never_defined"), "") end)
  end)
end)
