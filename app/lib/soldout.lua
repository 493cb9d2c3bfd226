-- In-process sold-out marks.  Once Redis answers SOLD_OUT for a SKU, this
-- worker answers 410 from memory for a short while, so a sold-out stampede
-- costs no Redis round trip.  Idempotency keys that bought a ticket
-- (`okkeys`, fetched when the mark is set) still go to Redis, so a retry of a
-- successful purchase gets its stored answer back.  Returned stock clears the
-- mark: at once in the worker that released it, within `ttl_ms` elsewhere.
local M = {}
M.__index = M

function M.new()
  return setmetatable({ marks = {} }, M)
end

-- Returns the remaining stock (0) when the request can be refused from memory.
function M:check(sku, idem_key, now)
  local m = self.marks[sku]
  if not m then return nil end
  if now >= m.until_ms then
    self.marks[sku] = nil
    return nil
  end
  if idem_key and m.okkeys[idem_key] then return nil end
  return m.remaining
end

function M:mark(sku, remaining, okkeys, ttl_ms, now)
  local set = {}
  for _, k in ipairs(okkeys or {}) do set[k] = true end
  self.marks[sku] = { until_ms = now + ttl_ms, remaining = remaining or 0, okkeys = set }
end

function M:clear(sku)
  self.marks[sku] = nil
end

return M
