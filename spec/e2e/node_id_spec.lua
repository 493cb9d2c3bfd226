-- Two purchase APIs on different machines with the same NODE_ID would hand out
-- the same order ids.  The node that comes second must refuse purchases and
-- report itself not ready for as long as the first one holds the NODE_ID, and
-- sell once the first is gone (lib/node_claim.lua).  The machines are told
-- apart by NODE_OWNER, which stands for the host name here.
local T = require "spec.e2e.support"

local REDIS_PORT = os.getenv("REDIS_PORT") or "6379"
local NODE_ID = "23" -- used by no other spec
local KEY = "flashhost:node:" .. NODE_ID

local function redis(...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = T.q(a) end
  return (T.sh("redis-cli -p " .. REDIS_PORT .. " --raw " .. table.concat(args, " ")):gsub("%s+$", ""))
end

describe("NODE_ID claim", function()
  local a, b
  local sku = tostring(880000 + os.time() % 10000)
  local function start(owner)
    return T.start({ "--workers", "2", "app/purchase.lua" }, { OUTBOX_RELAY = "off", NODE_ID = NODE_ID,
      NODE_OWNER = owner, REDIS_URL = "redis://127.0.0.1:" .. REDIS_PORT })
  end
  local function buy(app, user)
    return T.json(app.port, "POST", "/api/v1/flash/purchase",
      { userId = user, skuId = sku, quantity = 1, idempotencyKey = "node-id-" .. user })
  end

  setup(function()
    redis("DEL", KEY)
    a = start("machine-a")
    local s = T.json(a.admin, "POST", "/admin/v1/sales", { skuId = sku, name = "node id", price = 10, stock = 50 })
    assert.are.equal(201, s)
    -- the first node holds its NODE_ID before the second starts
    T.wait_for("machine-a to hold NODE_ID " .. NODE_ID, function() return redis("GET", KEY) == "machine-a" end, 10)
    b = start("machine-b")
  end)
  teardown(function()
    T.stop(a)
    T.stop(b)
    redis("DEL", KEY)
  end)

  it("refuses purchases on the second node, says why, and sells nothing there", function()
    assert.are.equal(200, (buy(a, "1")))
    -- every worker of machine-b says so (ten answers, spread over its workers);
    -- until it has asked Redis a worker refuses too, as not claimed yet
    T.wait_for("machine-b to see NODE_ID " .. NODE_ID .. " taken", function()
      for _ = 1, 10 do
        local s, body = T.json(b.port, "GET", "/ready")
        local dep = s == 503 and type(body) == "table" and body.dependencies.node_id
        if not (dep and dep.ok == false and tostring(dep.detail):find("NODE_ID 23 is held by machine-a", 1, true)) then
          return false
        end
      end
      return true
    end, 10)
    for i = 2, 6 do
      local s, body, headers = buy(b, tostring(i))
      assert.are.equal(503, s)
      assert.are.equal("SERVICE_UNAVAILABLE", body.error)
      assert.truthy(headers["retry-after"])
    end
    -- nothing was reserved by those five: only the first node's purchase
    assert.are.equal("49", redis("GET", "{sku:" .. sku .. "}:stock"))
    assert.truthy(T.read_log(b):find("NODE_ID is held by another node", 1, true))
    -- the first node is unaffected
    assert.are.equal(200, (buy(a, "7")))
    local s = T.json(a.port, "GET", "/ready")
    assert.are.equal(200, s)
  end)

  it("lets the second node sell once the first is gone and its lease lapsed", function()
    T.kill_all(a)
    T.wait_for("machine-b to take NODE_ID " .. NODE_ID, function() return redis("GET", KEY) == "machine-b" end, 20)
    T.wait_for("machine-b to be ready", function() return (T.json(b.port, "GET", "/ready")) == 200 end, 10)
    assert.are.equal(200, (buy(b, "8")))
  end)
end)
