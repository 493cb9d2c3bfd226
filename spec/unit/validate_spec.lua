local validate = require "app.lib.validate"

describe("validate.purchase", function()
  local function ok(body) return assert(validate.purchase(body, 10)) end
  local function bad(body, field)
    local v, err = validate.purchase(body, 10)
    assert.is_nil(v)
    assert.are.equal(field, err.field)
    assert.is_string(err.message)
  end

  it("accepts the original API's body and ignores unknown fields", function()
    local p = ok { userId = "123", skuId = "1", quantity = 2, idempotencyKey = "k-1", extra = { 1 } }
    assert.are.same({ userId = "123", skuId = "1", quantity = 2, idempotencyKey = "k-1" }, p)
  end)

  it("defaults quantity to 1 and the key to none", function()
    local p = ok { userId = "9", skuId = "8" }
    assert.are.equal(1, p.quantity)
    assert.is_nil(p.idempotencyKey)
  end)

  it("rejects a body that is not an object", function()
    bad("x", "body")
    bad({ 1, 2 }, "body")
  end)

  it("requires numeric id strings", function()
    bad({ userId = 123, skuId = "1" }, "userId")
    bad({ userId = "12a", skuId = "1" }, "userId")
    bad({ userId = "", skuId = "1" }, "userId")
    bad({ userId = "0123", skuId = "1" }, "userId")
    bad({ userId = "1", skuId = "1; DROP TABLE orders" }, "skuId")
    bad({ userId = "1", skuId = "99999999999999999999" }, "skuId")
    bad({ userId = "9223372036854775808", skuId = "1" }, "userId")
    assert.is_table(validate.purchase({ userId = "9223372036854775807", skuId = "1" }))
  end)

  it("requires an integer quantity from 1 to the maximum", function()
    for _, q in ipairs { 0, 11, -1, 1.5, 1e308, "1", true } do
      bad({ userId = "1", skuId = "1", quantity = q }, "quantity")
    end
    local v = validate.purchase({ userId = "1", skuId = "1", quantity = 3 }, 2)
    assert.is_nil(v)
  end)

  it("bounds and restricts idempotency keys", function()
    bad({ userId = "1", skuId = "1", idempotencyKey = ("k"):rep(129) }, "idempotencyKey")
    bad({ userId = "1", skuId = "1", idempotencyKey = "" }, "idempotencyKey")
    bad({ userId = "1", skuId = "1", idempotencyKey = "has space" }, "idempotencyKey")
    bad({ userId = "1", skuId = "1", idempotencyKey = "\255\254" }, "idempotencyKey")
    bad({ userId = "1", skuId = "1", idempotencyKey = 42 }, "idempotencyKey")
    assert.is_table(validate.purchase({ userId = "1", skuId = "1", idempotencyKey = ("k"):rep(128) }))
  end)
end)

describe("validate.sale", function()
  it("accepts a full sale and fills the optional times", function()
    local s = assert(validate.sale { skuId = "5", name = "Gig", price = 19.9, stock = 100 })
    assert.are.equal(0, s.startsAt)
    assert.are.equal(0, s.endsAt)
  end)

  it("rejects wrong types and impossible windows", function()
    assert.is_nil(validate.sale { skuId = "5", name = "Gig", price = "19.9", stock = 1 })
    assert.is_nil(validate.sale { skuId = "5", name = "", price = 1, stock = 1 })
    assert.is_nil(validate.sale { skuId = "5", name = "x", price = 1 })
    assert.is_nil(validate.sale { skuId = "5", name = "x", price = 1, stock = -1 })
    assert.is_nil(validate.sale { skuId = "5", name = "x", price = 1, stock = 1, startsAt = 10, endsAt = 5 })
    assert.is_nil(validate.sale { skuId = "5", name = "x", price = 1, stock = 1, reservationTtlSec = 0 })
  end)
end)
