-- lib/order_store.lua against a real redis-server (database 9): the order
-- routes' reads of the order index and of a reservation, in the form
-- purchase_batch writes them and in the hash form of older versions.
local helpers = require "spec.helpers"
local stock = require "lib.stock"
local order_ids = require "lib.order_ids"
local store = require "lib.order_store"

describe("order store", function()
  local r
  before_each(function() r = helpers.stock_redis() end)
  after_each(function() r:close() end)

  local rules = { per_user_limit = 0, reservation_ttl_sec = 300, rate_limit = { capacity = 0, refill_per_sec = 1 } }

  -- users buy in one batch, its ids named from block `block` (a multiple of 256)
  local function buy(sku, users, block)
    assert(stock.create_sale(r, { skuId = sku, name = "s", price = 10, stock = 5 }, "t"))
    local attempts = {}
    for i, user in ipairs(users) do
      attempts[i] = { p = { userId = user, skuId = sku, quantity = 2, idempotencyKey = "k-" .. user },
        ids = { traceId = "tr" } }
    end
    order_ids.assign(block, attempts)
    return assert(stock.purchase_batch(r, sku, attempts, rules, true))
  end

  it("finds each order of a batch through the block's one index entry, and reads its reservation", function()
    local list = buy("31", { "u1", "u2", "u3" }, "457000000000000256")
    assert.are.same({ "OK", "OK", "SOLD_OUT" }, { list[1].code, list[2].code, list[3].code })
    assert.are.same({ "457000000000000256", "31" }, r:call("HGETALL", stock.index_key("457000000000000256")))
    -- the first order's id is the block's own: the same field
    assert.are.same({ sku = "31", reservationId = list[1].reservationId }, (store.locate(r, nil, list[1].orderId)))
    local loc = assert(store.locate(r, nil, "457000000000000257"))
    assert.are.same({ sku = "31", reservationId = "457000000000000385" }, loc)
    assert.are.equal(list[2].reservationId, loc.reservationId)
    local h = assert(store.reservation(r, loc.sku, loc.reservationId))
    assert.are.same({ "u2", "457000000000000257", "2", "10", "PENDING", "tr" },
      { h.userId, h.orderId, h.quantity, h.unitPrice, h.status, h.traceId })
    -- the refused third names a reservation that does not exist
    loc = assert(store.locate(r, nil, "457000000000000258"))
    assert.is_nil(store.reservation(r, loc.sku, loc.reservationId))
  end)

  it("answers missing, or unavailable without a database, for an order nobody indexed", function()
    local loc, why = store.locate(r, nil, "457000000000000009")
    assert.is_nil(loc)
    assert.are.equal("missing", why)
    -- a reservation id of a block is no order id
    loc, why = store.locate(r, nil, "457000000000000385")
    assert.is_nil(loc)
    assert.are.equal("missing", why)
    assert.is_nil(store.reservation(r, "31", "nope"))
  end)

  it("finds a block's entry the host wrote through order_index (a cluster's path)", function()
    assert.are.equal(1, stock.write_index(r, "457000000000000512", "32", 300))
    assert.are.same({ sku = "32", reservationId = "457000000000000649" }, (store.locate(r, nil, "457000000000000521")))
  end)

  it("finds an order indexed one by one, as before blocks", function()
    assert.are.equal(1, r:call("HSET", stock.index_key("457000000000000003"), "457000000000000003", "33:9"))
    assert.are.same({ sku = "33", reservationId = "9" }, (store.locate(r, nil, "457000000000000003")))
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
