-- status.lua: a consistent read of one SKU for the API and for reconciliation.
-- KEYS: 1 sale, 2 stock, 3 counts, 4 pending, 5 outbox  (all {sku:S}:...)
-- Answer: {"code":"OK"|"NO_SALE", sale, stock, counts, pending, pendingQuantity, outbox}
-- Read-only; it is one script so that stock and counts come from the same moment.
local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then return cjson.encode({ code = 'NO_SALE' }) end
local sale = {}
for i = 1, #flat, 2 do sale[flat[i]] = flat[i + 1] end
local counts = { reserved = 0, sold = 0, canceled = 0, expired = 0 }
local c = redis.call('HGETALL', KEYS[3])
for i = 1, #c, 2 do counts[c[i]] = tonumber(c[i + 1]) end
-- The pending quantities are summed from the reservations themselves, so a
-- reconciliation compares two independent records: counts and reservations.
local prefix = string.match(KEYS[1], '^({sku:[^}]+}:)')
local pendingQty, ids = 0, redis.call('ZRANGE', KEYS[4], 0, -1)
for _, id in ipairs(ids) do
  pendingQty = pendingQty + (tonumber(redis.call('HGET', prefix .. 'res:' .. id, 'quantity')) or 0)
end
return cjson.encode({
  code = 'OK', sale = sale, stock = tonumber(redis.call('GET', KEYS[2])) or 0, counts = counts,
  pending = #ids, pendingQuantity = pendingQty, outbox = redis.call('XLEN', KEYS[5]),
})
