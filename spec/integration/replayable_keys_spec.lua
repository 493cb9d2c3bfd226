-- lib/stock.replayable_keys against a real redis-server (database 9): the
-- keys a worker that answers a sold-out SKU from memory must still send to
-- Redis are every stored answer's key but those answered SOLD_OUT, read from
-- the answers' day hashes and sokeys as purchase_batch writes them.
local helpers = require "spec.helpers"
local stock = require "lib.stock"
local core = require "flashhost.core"

describe("replayable keys", function()
  local r
  before_each(function() r = helpers.stock_redis() end)
  after_each(function() r:close() end)

  local rules = { per_user_limit = 1, reservation_ttl_sec = 300, rate_limit = { capacity = 0, refill_per_sec = 1 } }

  local function attempt(sku, user, key)
    return { p = { userId = user, skuId = sku, quantity = 1, idempotencyKey = key },
      ids = { reservationId = core.id(), orderId = core.id(), traceId = "tr" } }
  end

  local function sorted(t)
    table.sort(t)
    return t
  end

  it("lists the bought and the refused by the limit, not the sold out nor another SKU's", function()
    assert(stock.create_sale(r, { skuId = "61", name = "s", price = 10, stock = 1 }, "t"))
    assert(stock.create_sale(r, { skuId = "62", name = "s", price = 10, stock = 1 }, "t"))
    local list = assert(stock.purchase_batch(r, "61", {
      attempt("61", "u1", "bought"), attempt("61", "u1", "limited"), attempt("61", "u2", "late"),
      attempt("61", "u3", ""),
    }, rules, false))
    assert.are.same({ "OK", "LIMIT_EXCEEDED", "SOLD_OUT", "SOLD_OUT" },
      { list[1].code, list[2].code, list[3].code, list[4].code })
    assert(stock.purchase_batch(r, "62", { attempt("62", "u9", "elsewhere") }, rules, false))
    assert.are.same({ "bought", "limited" }, sorted(assert(stock.replayable_keys(r, "61", core.now()))))
  end)

  it("reads the answers of yesterday's hash too, and none of a SKU with no answers", function()
    local day = math.floor(core.now() / stock.IDEM_DAY_MS)
    assert(r:call("HSET", stock.prefix("63") .. "idems:" .. (day - 1), "old", "{}", "older", "{}"))
    assert(r:call("HSET", stock.prefix("63") .. "idems:" .. (day - 2), "gone", "{}"))
    assert(r:call("SADD", stock.prefix("63") .. "sokeys", "older"))
    assert.are.same({ "old" }, stock.replayable_keys(r, "63", core.now()))
    assert.are.same({}, stock.replayable_keys(r, "64", core.now()))
  end)

  it("answers nil and why when Redis refuses the read", function()
    assert(r:call("SET", stock.prefix("65") .. "sokeys", "not a set"))
    local keys, why = stock.replayable_keys(r, "65", core.now())
    assert.is_nil(keys)
    assert.is_truthy(tostring(why):find("WRONGTYPE", 1, true))
  end)
end)
