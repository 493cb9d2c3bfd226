-- lib/order_store.lua against a real redis-server (database 9): the order
-- routes' reads of the order index and of a reservation, in the form
-- purchase_batch writes them and in the hash form of older versions.
local helpers = require "spec.helpers"
local stock = require "lib.stock"
local store = require "lib.order_store"

describe("order store", function()
  local r
  before_each(function() r = helpers.stock_redis() end)
  after_each(function() r:close() end)

  local rules = { per_user_limit = 0, reservation_ttl_sec = 300, rate_limit = { capacity = 0, refill_per_sec = 1 } }

  local function buy(sku, user, orderId, resId)
    assert(stock.create_sale(r, { skuId = sku, name = "s", price = 10, stock = 5 }, "t"))
    local list = assert(stock.purchase_batch(r, sku, {
      { p = { userId = user, skuId = sku, quantity = 2, idempotencyKey = "k-" .. user },
        ids = { reservationId = resId, orderId = orderId, traceId = "tr" } } }, rules, true))
    assert.are.equal("OK", list[1].code)
    return list[1]
  end

  it("finds an order through the index the batch wrote, and reads its reservation", function()
    buy("31", "u1", "457000000000000001", "457000000000000002")
    local loc = assert(store.locate(r, nil, "457000000000000001"))
    assert.are.same({ sku = "31", reservationId = "457000000000000002" }, loc)
    local h = assert(store.reservation(r, loc.sku, loc.reservationId))
    assert.are.same({ "u1", "457000000000000001", "2", "10", "PENDING", "tr" },
      { h.userId, h.orderId, h.quantity, h.unitPrice, h.status, h.traceId })
  end)

  it("answers missing, or unavailable without a database, for an order nobody indexed", function()
    local loc, why = store.locate(r, nil, "457000000000000009")
    assert.is_nil(loc)
    assert.are.equal("missing", why)
    assert.is_nil(store.reservation(r, "31", "nope"))
  end)

  it("finds an entry the host wrote through order_index (a cluster's path)", function()
    assert.are.equal(1, stock.write_index(r, "457000000000000003", "32:9", 300))
    assert.are.same({ sku = "32", reservationId = "9" }, (store.locate(r, nil, "457000000000000003")))
  end)

  it("reads a reservation of the older hash form, and refuses a value that is no reservation", function()
    local key = stock.prefix("33") .. "res:1"
    assert(r:call("HSET", key, "userId", "u1", "orderId", "o1", "quantity", "1", "status", "PENDING"))
    local h = assert(store.reservation(r, "33", "1"))
    assert.are.same({ "u1", "o1", "PENDING" }, { h.userId, h.orderId, h.status })
    assert(r:call("SET", stock.prefix("33") .. "res:2", "not json"))
    local none, err = store.reservation(r, "33", "2")
    assert.is_nil(none)
    assert.matches("unreadable reservation", err)
  end)
end)
