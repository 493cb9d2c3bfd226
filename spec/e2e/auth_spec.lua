-- AUTH=jwt end to end: the purchase and order routes need an HS256 bearer
-- token whose subject is the request's user; tokens are made with the real
-- libjwt binding (flashhost --run), and the app verifies them with it.
local T = require "spec.e2e.support"
local cjson = require "cjson"

local SECRET = "spec-secret-" .. os.time()

-- Signs claims with flashhost.jwt in a flashhost process.
local function token(claims, secret)
  local script = os.tmpname()
  T.write(script, ("io.write(assert(require('flashhost.jwt').sign_hs256(%q, %q)))"):format(cjson.encode(claims), secret or SECRET))
  local out, rc = T.sh(T.q(T.BIN) .. " --run " .. T.q(script))
  os.remove(script)
  assert(rc == 0, out)
  return out:match("([%w%-_]+%.[%w%-_]+%.[%w%-_]+)")
end

describe("authentication with AUTH=jwt", function()
  local app
  local sku = tostring(70000 + os.time() % 10000)
  local future = os.time() + 3600

  setup(function()
    app = T.start({ "--workers", "1", "app/purchase.lua" }, { AUTH = "jwt", JWT_SECRET = SECRET, OUTBOX_RELAY = "off" })
    local s = T.json(app.admin, "POST", "/admin/v1/sales", { skuId = sku, name = "auth", price = 1, stock = 10 })
    assert.are.equal(201, s)
  end)
  teardown(function() T.stop(app) end)

  local function buy(user, tok)
    return T.json(app.port, "POST", "/api/v1/flash/purchase", { userId = user, skuId = sku },
      tok and { Authorization = "Bearer " .. tok } or nil)
  end

  it("refuses requests without a valid token", function()
    local s, b = buy("501")
    assert.are.equal(401, s)
    assert.are.equal("UNAUTHORIZED", b.error)
    assert.are.equal(401, (buy("501", "not.a.token")))
    assert.are.equal(401, (buy("501", token({ sub = "501", exp = future }, "another-secret"))))
    assert.are.equal(401, (buy("501", token({ sub = "501", exp = os.time() - 10 }))))
  end)

  it("refuses a token of another user with 403", function()
    local s, b = buy("501", token { sub = "502", exp = future })
    assert.are.equal(403, s)
    assert.are.equal("FORBIDDEN", b.error)
  end)

  it("serves the token's own user, also on the order routes", function()
    local tok = token { sub = "503", exp = future }
    local s, b = buy("503", tok)
    assert.are.equal(200, s, cjson.encode(b))
    local other = token { sub = "504", exp = future }
    assert.are.equal(403, (T.json(app.port, "GET", "/api/v1/orders/" .. b.orderId, nil, { Authorization = "Bearer " .. other })))
    assert.are.equal(404, (T.json(app.port, "POST", "/api/v1/orders/" .. b.orderId .. "/cancel", nil, { Authorization = "Bearer " .. other })))
    local gs, view = T.json(app.port, "GET", "/api/v1/orders/" .. b.orderId, nil, { Authorization = "Bearer " .. tok })
    assert.are.equal(200, gs)
    assert.are.equal("503", view.userId)
    assert.are.equal(200, (T.json(app.port, "POST", "/api/v1/orders/" .. b.orderId .. "/pay", nil, { Authorization = "Bearer " .. tok })))
  end)

  it("will not start with the placeholder secret", function()
    local bad = T.start({ "--workers", "1", "app/purchase.lua" },
      { AUTH = "jwt", JWT_SECRET = "change-me-in-production" }, { wait = false })
    T.wait_for("refusal", function() return not T.alive(bad.pid) end, 15)
    assert.truthy(T.read_log(bad):find("placeholder", 1, true))
    T.stop(bad)
  end)
end)
