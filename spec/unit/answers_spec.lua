local answers = require "app.lib.answers"
local rules = require "app.rules"

describe("answers.purchase", function()
  it("writes the 200 of a reservation as the JSON text of its table", function()
    local cjson = require "cjson"
    for _, a in ipairs {
      { code = "OK", reservationId = "386329313177239553", orderId = "386329313177239554", quantity = 2,
        expiresAt = 1796178885914, remaining = 9894751, unitPrice = 10 },
      { code = "OK", reservationId = "1", orderId = "2", quantity = 1, expiresAt = 1700000000123, remaining = 0 },
      { code = "OK", reservationId = 'odd "id"\\', orderId = "2", quantity = 1, expiresAt = 1, remaining = 1e15 },
    } do
      for _, elapsed in ipairs { 0.57365399971604, 3, 1e-7 } do
        local s, text, h = answers.purchase(a, rules, elapsed)
        local _, t = answers.purchase(a, rules, elapsed, true)
        t.processingTimeMs = elapsed
        assert.are.equal(200, s)
        assert.is_nil(h)
        assert.is_string(text)
        assert.are.same(t, cjson.decode(text))
        -- and number for number the text cjson would write
        assert.are.same(cjson.decode(cjson.encode(t)), cjson.decode(text))
      end
    end
    -- a field of an unusual type falls back to the table
    local _, b = answers.purchase({ code = "OK", reservationId = "1", orderId = "2", quantity = "1",
      expiresAt = 1, remaining = 1 }, rules, 1)
    assert.is_table(b)
  end)

  it("maps OK to 200 with the original response fields", function()
    local s, b, h = answers.purchase({ code = "OK", reservationId = "1", orderId = "2", quantity = 1,
      expiresAt = 1700000000123, remaining = 9 }, rules, 1.5, true)
    assert.are.equal(200, s)
    assert.is_true(b.success)
    assert.are.equal("1", b.reservationId)
    assert.are.equal("2", b.orderId)
    -- epoch ms, as the original API answers it (clients compute expiresAt - Date.now())
    assert.are.equal(1700000000123, b.expiresAt)
    assert.are.equal("2023-11-14T22:13:20.123Z", b.expiresAtIso)
    assert.are.equal(1.5, b.processingTimeMs)
    assert.is_string(b.message)
    assert.is_nil(h)
  end)

  it("marks replays and keeps the original status", function()
    local s, b, h = answers.purchase({ code = "REPLAY", result = { code = "SOLD_OUT", remaining = 0 } }, rules, 1)
    assert.are.equal(410, s)
    assert.are.equal("SOLD_OUT", b.error)
    assert.are.equal("true", h["Idempotent-Replayed"])
  end)

  it("sends the original API's remainingStock on SOLD_OUT and retryAfter seconds on 429", function()
    local _, b = answers.purchase({ code = "SOLD_OUT", remaining = 0 }, rules, 1)
    assert.are.equal(0, b.remainingStock)
    assert.are.equal(0, b.remaining)
    local s, r, h = answers.purchase({ code = "RATE_LIMITED", retryAfterMs = 1500 }, rules, 1)
    assert.are.equal(429, s)
    assert.are.equal(2, r.retryAfter)
    assert.are.equal(1500, r.retryAfterMs)
    assert.are.equal("2", h["Retry-After"])
  end)

  local cases = {
    { { code = "SOLD_OUT", remaining = 0 }, 410, "SOLD_OUT" },
    { { code = "ENDED", endsAt = 1 }, 410, "SALE_ENDED" },
    { { code = "NOT_STARTED", startsAt = 5000, now = 1000 }, 425, "SALE_NOT_STARTED" },
    { { code = "LIMIT_EXCEEDED", limit = 1, held = 1 }, 403, "PURCHASE_LIMIT_EXCEEDED" },
    { { code = "RATE_LIMITED", retryAfterMs = 1500 }, 429, "RATE_LIMITED" },
    { { code = "NO_SALE" }, 404, "SKU_NOT_FOUND" },
    { { code = "IDEMPOTENCY_KEY_REUSED" }, 409, "IDEMPOTENCY_KEY_REUSED" },
    { { code = "IDEMPOTENCY_MISMATCH" }, 422, "IDEMPOTENCY_KEY_MISMATCH" },
    { { code = "SOMETHING_NEW" }, 500, "INTERNAL" },
  }
  for _, c in ipairs(cases) do
    it("maps " .. c[1].code .. " to " .. c[2], function()
      local s, b = answers.purchase(c[1], rules, 1)
      assert.are.equal(c[2], s)
      assert.are.equal(c[3], b.error)
      assert.is_false(b.success)
    end)
  end

  it("sends Retry-After with 429 and 425, rounded up to whole seconds", function()
    local _, _, h = answers.purchase({ code = "RATE_LIMITED", retryAfterMs = 1500 }, rules, 1)
    assert.are.equal("2", h["Retry-After"])
    _, _, h = answers.purchase({ code = "NOT_STARTED", startsAt = 5000, now = 1000 }, rules, 1)
    assert.are.equal("4", h["Retry-After"])
  end)

  it("answers 503 with Retry-After when a dependency is down", function()
    local s, b, h = answers.unavailable(rules, "not connected")
    assert.are.equal(503, s)
    assert.are.equal("SERVICE_UNAVAILABLE", b.error)
    assert.are.equal(tostring(rules.retry_after_unavailable_sec), h["Retry-After"])
  end)
end)

describe("answers.order_change", function()
  it("treats a repeated pay as success and a pay after expiry as gone", function()
    assert.are.equal(200, (answers.order_change({ code = "ALREADY_CONFIRMED" }, "pay")))
    assert.are.equal(410, (answers.order_change({ code = "EXPIRED" }, "pay")))
    assert.are.equal(409, (answers.order_change({ code = "ALREADY_CONFIRMED" }, "cancel")))
    assert.are.equal(404, (answers.order_change({ code = "NOT_OWNER" }, "cancel")))
    local s, b = answers.order_change({ code = "OK", status = "CANCELED", orderId = "7" }, "cancel")
    assert.are.equal(200, s)
    assert.are.equal("CANCELED", b.status)
  end)
end)

describe("answers.sold_out_body", function()
  local cjson = require "cjson"
  it("is the same answer as purchase(SOLD_OUT), as a string", function()
    local s1, b1 = answers.purchase({ code = "SOLD_OUT", remaining = 0 }, rules, 0.25)
    local s2, text = answers.sold_out_body(0, rules, 0.25)
    assert.are.equal(s1, s2)
    assert.are.same(b1, cjson.decode(text))
    local _, again = answers.sold_out_body(0, rules, 1.5)
    assert.are.equal(1.5, cjson.decode(again).processingTimeMs)
  end)
end)
