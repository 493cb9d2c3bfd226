local SoldOut = require "app.lib.soldout"

describe("sold-out marks", function()
  it("answers from memory until the mark runs out", function()
    local m = SoldOut.new()
    assert.is_nil(m:check("1", nil, 0))
    m:mark("1", 0, {}, 500, 1000)
    assert.are.equal(0, m:check("1", nil, 1200))
    assert.are.equal(0, m:check("1", "new-key", 1499))
    assert.is_nil(m:check("2", nil, 1200))
  end)

  it("sends one probe to Redis when the mark runs out, the others keep the old answer", function()
    local m = SoldOut.new()
    m:mark("1", 0, {}, 500, 0)
    assert.is_nil(m:check("1", nil, 600))        -- the probe
    assert.are.equal(0, m:check("1", nil, 601))  -- stale while the probe is out
    assert.are.equal(0, m:check("1", nil, 602))
    m:answered("1", true)                        -- still sold out: renewal follows
    assert.is_true(m:begin_fetch("1", 603))
    assert.is_false(m:begin_fetch("1", 603))     -- one fetch at a time
    m:mark("1", 0, {}, 500, 604)
    assert.are.equal(0, m:check("1", nil, 700))
  end)

  it("clears when the probe finds stock, and retries a failed probe", function()
    local m = SoldOut.new()
    m:mark("1", 0, {}, 500, 0)
    assert.is_nil(m:check("1", nil, 600))
    m:probe_failed("1")
    assert.is_nil(m:check("1", nil, 601))        -- the next request probes again
    m:answered("1", false)                       -- stock came back
    assert.is_nil(m:check("1", nil, 602))
    assert.is_nil(m:check("1", nil, 603))
  end)

  it("lets keys that bought a ticket through to Redis", function()
    local m = SoldOut.new()
    m:mark("1", 0, { "paid-key" }, 500, 0)
    assert.is_nil(m:check("1", "paid-key", 10))
    assert.are.equal(0, m:check("1", "other", 10))
  end)

  it("clears at once when stock comes back", function()
    local m = SoldOut.new()
    m:mark("1", 0, {}, 500, 0)
    m:clear("1")
    assert.is_nil(m:check("1", nil, 1))
  end)
end)
