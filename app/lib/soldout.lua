-- In-process sold-out marks.  Once Redis answers SOLD_OUT for a SKU, this
-- worker answers 410 from memory for a short while, so a sold-out stampede
-- costs no Redis round trip.  Idempotency keys whose stored answer is not
-- SOLD_OUT (`okkeys` here, fetched when the mark is set with
-- stock.replayable_keys: purchases, limit refusals) still go to Redis, so
-- their retries get their own stored answer.
--
-- When a mark runs out, one request (the probe) goes to Redis while the
-- others keep the old answer until the probe's answer is in: SOLD_OUT renews
-- the mark, anything else clears it.  So a stampede never turns into a burst
-- of Redis calls, and returned stock clears the mark within `ttl_ms` (at once
-- in the worker that released it).
local M = {}
M.__index = M

function M.new()
  return setmetatable({ marks = {}, fetching = {} }, M)
end

-- Returns the remaining stock (0) when the request can be refused from memory;
-- nil when it must go to Redis.
function M:check(sku, idem_key, now)
  local m = self.marks[sku]
  if not m then return nil end
  if idem_key and m.okkeys[idem_key] then return nil end
  if now < m.until_ms then return m.remaining end
  if not m.probing then
    m.probing = true -- this request asks Redis
    return nil
  end
  return m.remaining
end

-- After a Redis answer for `sku`: SOLD_OUT keeps (or will renew) the mark,
-- anything else means stock is back or the probe failed.
function M:answered(sku, sold_out)
  local m = self.marks[sku]
  if not m then return end
  if sold_out then return end
  self.marks[sku] = nil
end

-- The probe could not ask Redis: let the next request try.
function M:probe_failed(sku)
  local m = self.marks[sku]
  if m then m.probing = false end
end

-- True when the caller should fetch okkeys and call mark(); false while
-- another fetch for this SKU is in flight or the mark is fresh.
function M:begin_fetch(sku, now)
  local m = self.marks[sku]
  if self.fetching[sku] or (m and now < m.until_ms) then return false end
  self.fetching[sku] = true
  return true
end

function M:mark(sku, remaining, okkeys, ttl_ms, now)
  local set = {}
  for _, k in ipairs(okkeys or {}) do set[k] = true end
  self.fetching[sku] = nil
  self.marks[sku] = { until_ms = now + ttl_ms, remaining = remaining or 0, okkeys = set }
end

function M:clear(sku)
  self.marks[sku] = nil
  self.fetching[sku] = nil
end

return M
