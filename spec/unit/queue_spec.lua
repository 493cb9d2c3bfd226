-- The waiting room's pure parts: ticket and token signatures (lib/queue_token)
-- and the keeper's arithmetic (lib/queue_pace).  The HMAC here is a stand-in
-- with the same shape as flashhost.crypto (the real one is only inside the
-- runtime; spec/integration/crypto_spec.lua checks it).
local qtoken = require "lib.queue_token"
local pace = require "lib.queue_pace"

-- Not a MAC: a keyed checksum good enough to tell inputs apart in a spec.
local fake = {
  hmac_sha256_hex = function(key, msg)
    local h = {}
    for i = 1, 8 do
      local x = i * 2654435761 % 4294967296
      for j = 1, #key do x = (x * 31 + key:byte(j)) % 4294967296 end
      for j = 1, #msg do x = (x * 33 + msg:byte(j) + i) % 4294967296 end
      h[i] = ("%08x"):format(x)
    end
    return table.concat(h)
  end,
  equal = function(a, b) return a == b end,
}

describe("queue tickets and tokens", function()
  local S = qtoken.new("0123456789abcdef-secret", fake)

  it("refuses a short secret", function()
    assert.has_error(function() qtoken.new("short", fake) end)
    assert.has_error(function() qtoken.new(nil, fake) end)
  end)

  it("round-trips a ticket, bound to its SKU", function()
    local t = S.ticket("7", "1700", 42, "123")
    local p = S.parse_ticket("7", t)
    assert.are.same({ gen = "1700", seq = 42, user = "123", id = "1700:42" }, p)
    assert.is_nil(S.parse_ticket("8", t), "a ticket of another SKU")
    assert.is_nil(S.parse_ticket("7", t:gsub("%.42%.", ".41.")), "another place")
    assert.is_nil(S.parse_ticket("7", t:gsub("%.123%.", ".124.")), "another user")
    assert.is_nil(S.parse_ticket("7", "garbage"))
    assert.is_nil(S.parse_ticket("7", nil))
    assert.is_nil(S.parse_ticket("7", t .. "0"))
    local other = qtoken.new("another-secret-of-16", fake)
    assert.is_nil(other.parse_ticket("7", t), "signed with another secret")
  end)

  it("round-trips a token for one user and SKU until it expires", function()
    local tok = S.token("7", "123", "1700", 42, 5000)
    local p = S.parse_token("7", "123", tok, 4999)
    assert.are.same({ gen = "1700", seq = 42, expiresAt = 5000, id = "1700:42" }, p)
    assert.are.equal("q 1700:42", qtoken.idempotency_key(p))
    local _, code, why = S.parse_token("7", "123", tok, 5000)
    assert.are.equal("QUEUE_TOKEN_INVALID", code)
    assert.are.equal("expired", why)
    assert.is_nil(S.parse_token("7", "124", tok, 1), "someone else's")
    assert.is_nil(S.parse_token("8", "123", tok, 1), "another SKU's")
    assert.is_nil(S.parse_token("7", "123", tok:gsub("%.5000%.", ".9000."), 1), "a longer life")
    assert.is_nil(S.parse_token("7", "123", "1700.42.5000." .. ("0"):rep(64), 1), "forged")
    assert.is_nil(S.parse_token("7", "123", 12, 1))
  end)
end)

describe("queue pacing", function()
  it("admits at the rate, carrying fractions over", function()
    local total, carry = 0, 0
    for _ = 1, 100 do
      local n
      n, carry = pace.step(250, 0.1, carry)
      total = total + n
    end
    assert.are.equal(2500, total)
    total, carry = 0, 0
    for _ = 1, 40 do
      local n
      n, carry = pace.step(0.5, 0.1, carry)
      total = total + n
    end
    assert.are.equal(2, total) -- one every 2 s
  end)

  it("does not burst after a pause, and a rate of 0 stops admission", function()
    local n = pace.step(100, 30, 0)
    assert.are.equal(100, n)
    assert.are.equal(0, (pace.step(0, 1, 0)))
    assert.are.equal(0, (pace.step(10, -1, 0)))
  end)

  it("measures the rate over a window", function()
    local m = pace.meter(1000)
    assert.is_nil(m:rate())
    for i = 0, 20 do m:add(i * 100, i * 5) end -- 50 per second
    assert.is_true(math.abs(m:rate() - 50) < 1e-9)
    assert.is_true(#m.samples <= 12)
    m:add(3000, 100) -- nothing for a second: the window sees it
    assert.is_true(m:rate() < 50)
  end)

  it("shuffles into a permutation, uniformly", function()
    local bit = require "bit"
    local x = 2463534242
    local function lcg() -- xorshift32: deterministic 32-bit numbers for the spec
      x = bit.bxor(x, bit.lshift(x, 13))
      x = bit.bxor(x, bit.rshift(x, 17))
      x = bit.bxor(x, bit.lshift(x, 5))
      return x % 4294967296
    end
    local t = pace.shuffle(1000, lcg)
    local seen = {}
    for _, v in ipairs(t) do assert.is_nil(seen[v]); seen[v] = true end
    assert.are.equal(1000, #t)
    -- where ticket 1 ends up over many shuffles of 4: each place about 1/4
    local counts = { 0, 0, 0, 0 }
    for _ = 1, 8000 do
      local s = pace.shuffle(4, lcg)
      for pos, v in ipairs(s) do if v == 1 then counts[pos] = counts[pos] + 1 end end
    end
    for pos = 1, 4 do assert.is_true(math.abs(counts[pos] - 2000) < 200, "place " .. pos .. ": " .. counts[pos]) end
    assert.are.same({ 3, 1, 2 }, pace.decode_order(pace.encode_order { 3, 1, 2 }))
    assert.are.equal(30, #pace.encode_order { 3, 1, 2 })
  end)

  it("reads 32-bit numbers from a byte source", function()
    local src = pace.u32_source(function(n) return ("\0\0\1\2"):rep(n / 4) end)
    assert.are.equal(258, src())
    assert.are.equal(258, src())
  end)

  it("keeps a bounded sample of waits and its quantiles; estimates the wait", function()
    local w = pace.waits(100)
    assert.is_nil(w:quantile(0.5))
    for i = 1, 250 do w:add(i) end
    assert.are.equal(100, #w.list)
    assert.are.equal(200, w:quantile(0.5))
    assert.are.equal(250, w:quantile(1))
    assert.are.equal(1, pace.eta_sec(0, 10))
    assert.are.equal(10, pace.eta_sec(99, 10))
    assert.is_nil(pace.eta_sec(5, 0))
  end)
end)

describe("queue counter cache", function()
  local Cache = require "lib.queue_cache"
  local reads, state, fail

  local function new()
    reads, fail = 0, false
    state = { code = "OK", gen = "9", serving = "0", tail = "10", preCount = "0", frozen = "1", opened = "1",
      soldOut = "0", rate = "5", measured = "0", stock = "3" }
    return Cache.new {
      refresh_ms = 250, stale_max_ms = 1000,
      fetch = function()
        reads = reads + 1
        if fail then return nil, "unavailable", "down" end
        local copy = {}
        for k, v in pairs(state) do copy[k] = v end
        return copy
      end,
      fetch_order = function() return { code = "OK", gen = "9", opened = true, order = pace.encode_order { 3, 1, 2 } } end,
    }
  end

  it("reads Redis at most once per refresh interval", function()
    local c = new()
    assert.are.equal(0, c:get("1", 1000).q.serving)
    state.serving = "4"
    assert.are.equal(0, c:get("1", 1249).q.serving, "within 250 ms: the copy")
    assert.are.equal(1, reads)
    assert.are.equal(4, c:get("1", 1250).q.serving, "then a fresh read")
    assert.are.equal(2, reads)
  end)

  it("keeps a copy for a SKU without a queue too, and serves a stale copy only for a while", function()
    local c = new()
    state = { code = "NO_QUEUE" }
    assert.are.equal("NO_QUEUE", c:get("2", 0).q.code)
    c:get("2", 100)
    assert.are.equal(1, reads)
    c = new()
    c:get("1", 0)
    fail = true
    assert.is_table(c:get("1", 900), "Redis away: the old copy")
    local e, kind = c:get("1", 1500)
    assert.is_nil(e)
    assert.are.equal("unavailable", kind)
  end)

  it("says sold out when the stock is gone, before the keeper's flag", function()
    local c = new()
    state.stock = "0"
    assert.is_true(c:get("1", 0).q.soldOut)
    c = new()
    c:get("1", 0)
    c:sold_out("1")
    assert.is_true(c:get("1", 10).q.soldOut, "a local SOLD_OUT answer counts at once")
  end)

  it("places pre-queue tickets by the shuffled order, later ones by their number", function()
    local c = new()
    state.preCount = "3"
    local e = c:get("1", 0)
    assert.are.same({ 2, 3, 1, 4 }, { Cache.position(e, 1), Cache.position(e, 2), Cache.position(e, 3), Cache.position(e, 4) })
    state.opened, state.frozen = "0", "0"
    e = c:get("1", 1000)
    assert.is_nil(Cache.position(e, 5), "the pre-queue is still open: no place yet")
  end)
end)
