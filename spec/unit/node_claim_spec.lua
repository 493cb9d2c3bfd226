-- lib/node_claim.lua's decisions, with the lease call stubbed: a node sells
-- only once Redis has answered that it holds its NODE_ID.  The lease itself
-- runs against a real Redis in spec/e2e/node_id_spec.lua.
local NodeClaim = require "app.lib.node_claim"

describe("NODE_ID claim", function()
  -- answers: what successive lease calls return (1, 0, or false for an error)
  local function claim(answers, holder, event)
    local calls = 0
    local errors = {}
    local c = NodeClaim.new {
      node_id = 7, owner = "me", answered = event,
      redis = { call = function() return holder end },
      lease = function()
        calls = calls + 1
        local a = answers[calls]
        if a == false then return nil, "connection refused" end
        return a
      end,
      log = { info = function() end, error = function(msg) errors[#errors + 1] = msg end },
    }
    return c, function() return calls end, errors
  end

  it("refuses until Redis first answers, asking at every tick until then", function()
    local c, calls = claim({ false, false, 1 })
    assert.matches("not claimed yet", c:refusal())
    c:tick(0)
    assert.matches("not claimed yet", c:refusal())
    c:tick(100)
    assert.matches("not claimed yet", c:refusal())
    c:tick(200)
    assert.is_nil(c:refusal())
    assert.are.equal(3, calls())
  end)

  it("renews every RENEW_MS once answered, and keeps the last answer while Redis is away", function()
    local c, calls = claim({ 1, false, 1 })
    c:tick(0)
    c:tick(NodeClaim.RENEW_MS - 1)
    assert.are.equal(1, calls())
    c:tick(NodeClaim.RENEW_MS)
    assert.are.equal(2, calls())
    assert.is_nil(c:refusal()) -- the failed renewal left the claim as it was
    c:tick(NodeClaim.RENEW_MS + 100)
    assert.are.equal(2, calls())
  end)

  it("lets a request wait for the first answer (await), and only for that one", function()
    local waits, set = {}, 0
    local event = { wait = function(_, ms) waits[#waits + 1] = ms end, set = function() set = set + 1 end }
    local c = claim({ false, 1, 1 }, nil, event)
    c:tick(0)
    assert.matches("not claimed yet", c:await())
    assert.are.same({ NodeClaim.FIRST_WAIT_MS }, waits)
    c:tick(100)
    assert.are.equal(1, set)
    assert.is_nil(c:await())
    c:tick(100 + NodeClaim.RENEW_MS)
    assert.is_nil(c:await())
    assert.are.same({ NodeClaim.FIRST_WAIT_MS }, waits) -- no wait once answered
    assert.are.equal(1, set)                            -- set once
  end)

  it("refuses while another owner holds it, naming the holder, and sells once it is back", function()
    local c, _, errors = claim({ 0, 1 }, "machine-a")
    c:tick(0)
    assert.are.equal("NODE_ID 7 is held by machine-a", c:refusal())
    assert.are.equal(1, #errors)
    c:tick(NodeClaim.RENEW_MS)
    assert.is_nil(c:refusal())
  end)
end)
