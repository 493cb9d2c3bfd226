local events = require "app.lib.order_events"
local cjson = require "cjson"

-- The one event of a message holding a single event.
local function decode(value)
  local evs, why = events.decode_all(value)
  if not evs then return nil, why end
  assert.are.equal(1, #evs)
  return evs[1]
end

local function ev(t, extra)
  local e = { type = t, eventId = "10:" .. t, reservationId = "10", orderId = "20", userId = "30", skuId = "1",
    quantity = "2", unitPrice = "19.9", expiresAt = "1700000000000", ts = "1700000000000", traceId = "tr" }
  for k, v in pairs(extra or {}) do e[k] = v end
  return cjson.encode(e)
end

describe("order events", function()
  it("decodes a reserved event", function()
    local e = assert(decode(ev("reserved")))
    assert.are.equal("PENDING", e.status)
    assert.are.equal(2, e.quantity)
    assert.are.equal(19.9, e.unitPrice)
  end)

  it("refuses poison messages with a reason", function()
    for _, bad in ipairs { "not json", ev("shipped"), ev("reserved", { orderId = "x1" }),
      ev("reserved", { quantity = "0" }), ev("reserved", { userId = "1; DROP TABLE orders" }) } do
      local e, why = decode(bad)
      assert.is_nil(e)
      assert.is_string(why)
    end
  end)

  it("decodes an older purchase batch's message: a JSON array of events, in order", function()
    local one, two = cjson.decode(ev("reserved")), cjson.decode(ev("reserved", { reservationId = "11", orderId = "21" }))
    local evs = assert(events.decode_all(cjson.encode { one, two }))
    assert.are.equal(2, #evs)
    assert.are.same({ "20", "21" }, { evs[1].orderId, evs[2].orderId })
    assert.are.same({ 2, 2 }, { evs[1].quantity, evs[2].quantity })
    assert.are.equal("PENDING", evs[2].status)
    -- a single event object is a list of one
    local single = assert(events.decode_all(ev("confirmed")))
    assert.are.equal(1, #single)
    assert.are.equal("CONFIRMED", single[1].status)
  end)

  it("decodes a purchase batch's reserved message: shared fields once, a row per reservation", function()
    local msg = cjson.encode { type = "reserved", skuId = "1", ts = "1700000000000", unitPrice = "19.9",
      status = "PENDING", expiresAt = "1700000300000",
      rows = { { "10", "20", "30", "2", "tr-a" }, { "11", "21", "31", "1", "tr-b" } } }
    local evs = assert(events.decode_all(msg))
    assert.are.equal(2, #evs)
    assert.are.same({ type = "reserved", eventId = "11:reserved", reservationId = "11", orderId = "21", userId = "31",
      skuId = "1", quantity = 1, unitPrice = 19.9, expiresAt = 1700000300000, ts = "1700000000000", traceId = "tr-b",
      status = "PENDING" }, evs[2])
    assert.are.same({ "20", 2, "tr-a" }, { evs[1].orderId, evs[1].quantity, evs[1].traceId })
    -- the same statements as the two events sent one by one
    local one = { assert(decode(cjson.encode(events.expand(cjson.decode(msg))[1]))),
      assert(decode(cjson.encode(events.expand(cjson.decode(msg))[2]))) }
    assert.are.same(events.statements(one), events.statements(evs))
  end)

  it("refuses a batch's reserved message whole when a row is poison", function()
    local function msg(rows, t)
      return cjson.encode { type = t or "reserved", skuId = "1", ts = "1", unitPrice = "1", expiresAt = "1", rows = rows }
    end
    local many = {}
    for i = 1, 1001 do many[i] = { tostring(i), "20", "30", "1", "t" } end
    for _, bad in ipairs { msg(many), msg({ { "10", "20", "30", "1", "t" }, { "x", "21", "31", "1", "t" } }),
      msg({ { "10", "20", "30", "0", "t" } }), msg({ "10" }), msg({}), msg("rows"),
      msg({ { "10", "20", "30", "1", "t" } }, "confirmed") } do
      local evs, why = events.decode_all(bad)
      assert.is_nil(evs, bad)
      assert.is_string(why)
    end
  end)

  it("refuses a batch message whole when any event in it is poison", function()
    local good = cjson.decode(ev("reserved"))
    for _, bad in ipairs { cjson.encode { good, cjson.decode(ev("reserved", { orderId = "x" })) },
      cjson.encode { good, "text" }, "[]", "[1,2]", "{}" } do
      local evs, why = events.decode_all(bad)
      assert.is_nil(evs, bad)
      assert.is_string(why)
    end
    local many = {}
    for i = 1, 1001 do many[i] = good end
    assert.is_nil((events.decode_all(cjson.encode(many))))
  end)

  it("upserts orders so that any arrival order ends in the final status", function()
    local stmts = events.statements { assert(decode(ev("confirmed"))), assert(decode(ev("reserved"))) }
    local sql = stmts[1][1]
    assert.truthy(sql:find("ON DUPLICATE KEY UPDATE status = IF(status = 'PENDING', VALUES(status), status)", 1, true))
    assert.are.equal(18, #stmts[1][2]) -- 9 values per event
    assert.are.equal("CONFIRMED", stmts[1][2][7])
  end)

  it("writes items for reservations, payments for confirmations, audit for every event", function()
    local stmts = events.statements {
      assert(decode(ev("reserved"))), assert(decode(ev("confirmed"))), assert(decode(ev("expired", { reservationId = "11", orderId = "21" }))) }
    local kinds = {}
    for _, s in ipairs(stmts) do kinds[#kinds + 1] = s[1]:match("INTO ([%w_]+)") end
    assert.are.same({ "orders", "order_items", "payments", "inventory_audit" }, kinds)
    local audit = stmts[4][2]
    assert.are.same({ "20", "1", "reserved", -2, "10:reserved" }, { unpack(audit, 1, 5) })
    assert.are.same({ "20", "1", "confirmed", 0, "10:confirmed" }, { unpack(audit, 6, 10) })
    assert.are.same({ "21", "1", "expired", 2, "10:expired" }, { unpack(audit, 11, 15) })
    for _, s in ipairs(stmts) do
      local _, n = s[1]:gsub("%?", "")
      assert.are.equal(n, #s[2], "placeholders match parameters in " .. s[1]:sub(1, 40))
    end
  end)
end)
