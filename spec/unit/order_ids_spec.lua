-- lib/order_ids: a batch's ids from one block, and an order id back to its
-- block and reservation, checked against exact 64-bit arithmetic (LuaJIT's
-- uint64_t) rather than against texts written out by hand.
local order_ids = require "lib.order_ids"
local ffi = require "ffi"

ffi.cdef "unsigned long long strtoull(const char *, char **, int);"
local function u64(s) return ffi.C.strtoull(s, nil, 10) end
local function text(v) return (tostring(v):gsub("ULL$", "")) end

describe("order ids", function()
  -- block starts where the last 9 digits are near their top, near the bottom,
  -- a 19-digit id near 2^63, and a short one
  local starts = { "1845652991999999744", "457000000000000256", "9223372036854775552", "999999744", "256" }

  it("names attempt i's order block + i - 1 and its reservation block + 128 + i - 1", function()
    for _, b in ipairs(starts) do
      assert.are.equal(0, tonumber(u64(b) % 256), b)
      for _, i in ipairs({ 1, 2, 64, 128 }) do
        local orderId, resId = order_ids.of_block(b, i)
        assert.are.equal(text(u64(b) + (i - 1)), orderId)
        assert.are.equal(text(u64(b) + 128 + (i - 1)), resId)
      end
    end
  end)

  it("leads every order of a block back to the block and its reservation", function()
    for _, b in ipairs(starts) do
      for i = 1, 128 do
        local orderId, resId = order_ids.of_block(b, i)
        local block, res = order_ids.locate(orderId)
        assert.are.equal(b, block)
        assert.are.equal(resId, res)
      end
    end
  end)

  it("is no order of a block for a reservation id, an id of before blocks or no id", function()
    local _, resId = order_ids.of_block("457000000000000256", 5)
    assert.is_nil(order_ids.locate(resId))
    assert.is_nil(order_ids.locate("457000000000000511"))
    assert.is_nil(order_ids.locate("12ab"))
    assert.is_nil(order_ids.locate(""))
    assert.is_nil(order_ids.locate(nil))
  end)

  it("assigns a batch's ids in order, and refuses what does not fit a block", function()
    local attempts = {}
    for i = 1, 3 do attempts[i] = { ids = { traceId = "t" } } end
    order_ids.assign("457000000000000256", attempts)
    assert.are.same({ "457000000000000256", "457000000000000257", "457000000000000258" },
      { attempts[1].ids.orderId, attempts[2].ids.orderId, attempts[3].ids.orderId })
    assert.are.equal("457000000000000386", attempts[3].ids.reservationId)
    local many = {}
    for i = 1, 129 do many[i] = { ids = {} } end
    assert.has_error(function() order_ids.assign("457000000000000256", many) end)
    assert.has_error(function() order_ids.of_block("457000000000000257", 1) end)
    assert.has_error(function() order_ids.of_block("457000000000000256", 129) end)
  end)
end)
