-- A torn append-only file: Redis killed while writing the last purchase.
-- Redis logs a script's writes as one MULTI ... EXEC block.  A kill -9 in the
-- middle of that write leaves the block without its EXEC; left to itself,
-- Redis 7.0 cuts the file inside the block, appends new writes after the
-- orphan MULTI, and the next restart applies half a purchase.  scripts/stack
-- repairs the file before Redis starts.  This spec tears the file the same
-- way (kill -9, then cut inside the last block), restarts Redis twice through
-- scripts/stack with purchases in between, and checks that the torn purchase
-- is wholly absent and reconcile is clean.
local T = require "spec.e2e.support"
local cjson = require "cjson"

local env = function(k, d) local v = os.getenv(k) return (v and v ~= "") and v or d end
local REDIS_PORT = env("REDIS_PORT", "6379")
local STACK_DIR = env("STACK_DIR", T.ROOT .. "/.stack")
local AOF_DIR = STACK_DIR .. "/redis/appendonlydir"

local function redis(...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = T.q(a) end
  return (T.sh("redis-cli -p " .. REDIS_PORT .. " " .. table.concat(args, " ")):gsub("%s+$", ""))
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- The incremental file Redis appends to: the last `type i` line of the manifest.
local function last_incr_file()
  local name
  for line in read(AOF_DIR .. "/appendonly.aof.manifest"):gmatch("[^\n]+") do
    name = line:match("^file (%S+) seq %d+ type i") or name
  end
  return AOF_DIR .. "/" .. assert(name, "no incr file in the manifest")
end

local function last_find(hay, needle)
  local at, i = nil, 1
  while true do
    local s = hay:find(needle, i, true)
    if not s then return at end
    at, i = s, s + 1
  end
end

describe("a torn append-only file", function()
  local app
  local sku = tostring(90000 + os.time() % 10000)
  local user = os.time() % 100000 * 100

  local function buy()
    user = user + 1
    local s, b = T.json(app.port, "POST", "/api/v1/flash/purchase", { userId = tostring(user), skuId = sku, quantity = 1 })
    assert.are.equal(200, s, cjson.encode(b))
    return b, tostring(user)
  end

  local function stack(cmd)
    local out, rc = T.sh("scripts/stack " .. cmd .. " redis")
    assert.are.equal(0, rc, out)
    return out
  end

  -- Every worker reconnects on its own backoff: a run of fresh connections
  -- (spread over the workers) must all find Redis ready.
  local function wait_ready()
    T.wait_for("every worker ready", function()
      for _ = 1, 10 do
        if T.request(app.port, "GET", "/ready") ~= 200 then return false end
      end
      return true
    end, 20)
  end

  setup(function()
    app = T.start({ "--workers", "2", "app/purchase.lua" }, { OUTBOX_RELAY = "off", REDIS_URL = "redis://127.0.0.1:" .. REDIS_PORT })
  end)
  teardown(function()
    T.stop(app)
    T.sh("scripts/stack up redis") -- the specs after this one need it, whatever happened here
  end)

  it("loses the torn purchase whole and nothing else, across two restarts", function()
    local s, body = T.json(app.admin, "POST", "/admin/v1/sales", { skuId = sku, name = "Torn " .. sku, price = 10, stock = 10 })
    assert.are.equal(201, s, cjson.encode(body))
    buy()
    buy()
    local torn, torn_user = buy()

    -- a 200 means the write reached the file (Redis writes the AOF before it
    -- answers); wait for it anyway rather than trust the timing
    local file = last_incr_file()
    local res_key = "{sku:" .. sku .. "}:res:" .. torn.reservationId
    T.wait_for("the last purchase in the AOF", function() return read(file):find(res_key, 1, true) end, 5)
    local pid = tonumber(read(STACK_DIR .. "/redis/redis.pid"))
    T.signal(pid, "KILL")
    T.wait_for("Redis to die", function() return not T.alive(pid) end, 5)

    -- cut inside the last purchase's block: after its stock, counts and
    -- pending writes, in the middle of the MSET that writes its reservation
    -- and its user, so the block holds half a purchase
    local aof = read(file)
    local multi = assert(last_find(aof, "*1\r\n$5\r\nMULTI\r\n"), "no MULTI in the AOF")
    local res_at = assert(aof:find(res_key, multi, true), "the reservation is not in the last block")
    local at = assert(aof:find("MSET", multi, true), "no MSET in the last block")
    assert.truthy(at < res_at, "the reservation is written by the MSET")
    assert.truthy(aof:find("ZADD", multi, true) < at, "the pending entry is written before the reservation")
    assert.truthy(aof:find("DECRBY", multi, true) < at, "stock is written before the reservation")
    assert.is_nil(aof:find("MULTI", at, true), "nothing after the torn block")
    local cut = at + 5
    assert.are.equal(0, select(2, T.sh(("truncate -s %d %s"):format(cut, T.q(file)))))

    local out = stack("up")
    assert.truthy(out:find("repaired", 1, true), out)
    wait_ready()
    local after1 = buy()
    stack("down")
    stack("up")
    wait_ready()
    local after2 = buy()

    local prefix = "{sku:" .. sku .. "}:"
    assert.are.equal("0", redis("EXISTS", res_key))
    assert.are.equal("", redis("ZSCORE", prefix .. "pending", torn.reservationId))
    assert.are.equal("0", redis("EXISTS", prefix .. "u:" .. torn_user))
    assert.are.equal("4", redis("ZCARD", prefix .. "pending"))
    assert.are.equal("6", redis("GET", prefix .. "stock"))
    assert.are.equal("4", redis("HGET", prefix .. "counts", "reserved"))
    assert.are.equal("4", redis("HGET", prefix .. "counts", "pending"))
    for _, b in ipairs { after1, after2 } do
      assert.are.equal("1", redis("EXISTS", prefix .. "res:" .. b.reservationId))
    end
    local st, view = T.json(app.port, "GET", "/api/v1/flash/skus/" .. sku)
    assert.are.equal(200, st)
    assert.are.equal(6, view.available)
    assert.are.equal(4, view.reserved)
    -- the torn order's index outlived it; with no row in MySQL either, it is not found
    assert.are.equal(404, (T.json(app.port, "GET", "/api/v1/orders/" .. torn.orderId)))
    -- Redis's own accounts (no order worker runs here, so MySQL has no rows to compare)
    local rout, rc = T.sh(("RECONCILE_MYSQL=off FLASHHOST_BIN=%s scripts/reconcile %s"):format(T.q(T.BIN), sku))
    assert.are.equal(0, rc, rout)
  end)
end)
