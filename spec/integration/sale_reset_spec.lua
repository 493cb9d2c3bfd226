-- A sale's reset with more pending reservations than one step cancels
-- (lib/stock.cancel_before_reset, then the reset), on a real redis-server
-- (database 9): every pending reservation is canceled once, most of them in
-- steps before the reset, and the stock and counts come out as one walk's.
-- The index holds one member per purchase call (here 12 of 100 ids).
local helpers = require "spec.helpers"
local core = require "flashhost.core"
local stock = require "lib.stock"
local order_ids = require "lib.order_ids"

describe("sale reset in steps", function()
  local r
  before_each(function() r = helpers.stock_redis() end)
  after_each(function() r:close() end)

  local rules = { per_user_limit = 0, reservation_ttl_sec = 300, rate_limit = { capacity = 0, refill_per_sec = 1 } }
  local SKU = "41"

  it("cancels 1,200 pending reservations, all but a few calls' worth before the reset", function()
    assert(stock.create_sale(r, { skuId = SKU, name = "s", price = 10, stock = 2000 }, "t"))
    local user = 0
    for _ = 1, 12 do
      local attempts = {}
      for i = 1, 100 do
        user = user + 1
        attempts[i] = { p = { userId = tostring(user), skuId = SKU, quantity = 1 },
          ids = { traceId = "buy" } }
      end
      order_ids.assign(core.id_block(), attempts)
      for _, a in ipairs(assert(stock.purchase_batch(r, SKU, attempts, rules, true))) do
        assert.are.equal("OK", a.code)
      end
    end
    local stepped = assert(stock.cancel_before_reset(r, SKU, "reset"))
    assert.is_true(stepped >= 1200 - stock.RESET_STEP, "canceled in steps: " .. stepped)
    assert.is_true(r:call("ZCARD", stock.prefix(SKU) .. "pending") <= stock.RESET_LEFT)
    -- between the steps and the reset the SKU is consistent: what was canceled is back in stock
    local st = assert(stock.status(r, SKU, true))
    assert.are.same({ 800 + stepped, 1200 - stepped, stepped, 1200 - stepped },
      { st.stock, st.counts.reserved, st.counts.canceled, st.pendingQuantity })
    local reset = assert(stock.create_sale(r, { skuId = SKU, name = "s", price = 10, stock = 500 }, "reset"))
    assert.are.equal(1200, stepped + reset.canceled)
    st = assert(stock.status(r, SKU, true))
    assert.are.same({ 500, 0, 0, 0 }, { st.stock, st.counts.reserved, st.pending, st.pendingQuantity })
  end)

  it("takes one short step on a SKU with nothing pending", function()
    assert.are.equal(0, stock.cancel_before_reset(r, "42", "reset"))
  end)
end)
