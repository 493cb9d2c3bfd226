-- status.lua: a consistent read of one SKU for the API, metrics and reconciliation.
-- KEYS: 1 sale, 2 stock, 3 counts, 4 pending, 5 outbox  (all {sku:S}:...)
-- ARGV: 1 "deep" to also sum the pending reservations' quantities (reconciliation
--       only: it walks every pending reservation); anything else reads in O(1).
-- Answer: {"code":"OK"|"NO_SALE", sale, stock, counts, pending, outbox[, pendingQuantity]}
-- Read-only; it is one script so that stock and counts come from the same moment.
local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then return cjson.encode({ code = 'NO_SALE' }) end
local sale = {}
for i = 1, #flat, 2 do sale[flat[i]] = flat[i + 1] end
local counts = { reserved = 0, sold = 0, canceled = 0, expired = 0 }
local c = redis.call('HGETALL', KEYS[3])
for i = 1, #c, 2 do counts[c[i]] = tonumber(c[i + 1]) end
local answer = {
  code = 'OK', sale = sale, stock = tonumber(redis.call('GET', KEYS[2])) or 0, counts = counts,
  pending = redis.call('ZCARD', KEYS[4]), outbox = redis.call('XLEN', KEYS[5]),
}
if ARGV[1] == 'deep' then
  -- Summed from the reservations themselves, so a reconciliation compares two
  -- independent records: counts and reservations.
  local prefix = string.match(KEYS[1], '^({sku:[^}]+}:)')
  local qty = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    qty = qty + (tonumber(redis.call('HGET', prefix .. 'res:' .. id, 'quantity')) or 0)
  end
  answer.pendingQuantity = qty
end
return cjson.encode(answer)
