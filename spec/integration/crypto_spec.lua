-- flashhost.crypto (core/crypto.c): OpenSSL's HMAC-SHA256 against the RFC 4231
-- test vectors, the constant-time compare and the random source.
local crypto = require "flashhost.crypto"

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

describe("flashhost.crypto", function()
  it("computes HMAC-SHA256 as RFC 4231 says", function()
    -- test case 1
    assert.are.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      crypto.hmac_sha256_hex(("\11"):rep(20), "Hi There"))
    -- test case 2: a key shorter than the block
    assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      crypto.hmac_sha256_hex("Jefe", "what do ya want for nothing?"))
    -- test case 6: a key longer than the block is hashed first
    assert.are.equal("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
      crypto.hmac_sha256_hex(("\170"):rep(131), "Test Using Larger Than Block-Size Key - Hash Key First"))
    local raw = crypto.hmac_sha256("Jefe", "what do ya want for nothing?")
    assert.are.equal(32, #raw)
    assert.are.equal(crypto.hmac_sha256_hex("Jefe", "what do ya want for nothing?"), hex(raw))
    -- bytes, not C strings: a NUL inside the message counts
    assert.are_not.equal(crypto.hmac_sha256_hex("k", "a\0b"), crypto.hmac_sha256_hex("k", "a"))
  end)

  it("raises on misuse", function()
    assert.has_error(function() crypto.hmac_sha256_hex("", "m") end)
    assert.has_error(function() crypto.hmac_sha256_hex(nil, "m") end)
    assert.has_error(function() crypto.random_bytes(0) end)
    assert.has_error(function() crypto.random_bytes(4097) end)
  end)

  it("compares strings", function()
    assert.is_true(crypto.equal("abc", "abc"))
    assert.is_false(crypto.equal("abc", "abd"))
    assert.is_false(crypto.equal("abc", "ab"))
    assert.is_true(crypto.equal("", ""))
  end)

  it("gives random bytes, different every call", function()
    local a, b = crypto.random_bytes(32), crypto.random_bytes(32)
    assert.are.equal(32, #a)
    assert.are_not.equal(a, b)
    assert.are.equal(4096, #crypto.random_bytes(4096))
  end)
end)
