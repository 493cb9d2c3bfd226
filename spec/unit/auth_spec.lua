local auth = require "app.lib.auth"

local function env(t) return function(k) return t[k] end end
-- A fake verifier: the token is the claims JSON itself when the secret matches.
local function verify(token, secret)
  if secret ~= "s3cret" then return nil, "invalid token" end
  return token:match("^{.*}$") and token or nil, "invalid token"
end
local function req(token) return { headers = { authorization = token and ("Bearer " .. token) or nil } } end

describe("auth", function()
  it("refuses to start with the placeholder or no secret", function()
    assert.has_error(function() auth.config(env { AUTH = "jwt", JWT_SECRET = auth.PLACEHOLDER_SECRET }) end)
    assert.has_error(function() auth.config(env { AUTH = "jwt" }) end)
    assert.has_error(function() auth.config(env { AUTH = "basic" }) end)
    assert.are.equal("none", auth.config(env {}).mode)
  end)

  local cfg = { mode = "jwt", secret = "s3cret" }

  it("lets everything through without AUTH=jwt", function()
    assert.is_nil(auth.require_user({ mode = "none" }, req(nil), "1", verify, 0))
  end)

  it("answers 401 without, with a bad or an expired token", function()
    assert.are.equal(401, auth.require_user(cfg, req(nil), "1", verify, 0))
    assert.are.equal(401, auth.require_user(cfg, req("garbage"), "1", verify, 0))
    assert.are.equal(401, auth.require_user(cfg, req('{"sub":"1","exp":1}'), "1", verify, 5000))
    assert.are.equal(401, auth.require_user(cfg, req('{"exp":99999999999}'), "1", verify, 0))
  end)

  it("answers 403 for someone else's userId and nothing for the owner", function()
    assert.are.equal(403, auth.require_user(cfg, req('{"sub":"2"}'), "1", verify, 0))
    assert.is_nil(auth.require_user(cfg, req('{"sub":"1"}'), "1", verify, 0))
    assert.is_nil(auth.require_user(cfg, req('{"sub":1}'), "1", verify, 0))
  end)
end)
