-- The waiting room's Redis calls: one FCALL each of the queue_* functions of
-- the project's library (redis-lua/queue.lua, loaded by lib/stock.setup).
-- Every call answers the decoded JSON answer, or nil, kind, detail as
-- lib/stock.lua does ("unavailable": Redis could not be asked; "error": it
-- refused, a bug).
local stock = require "lib.stock"

local M = {}

M.SET = "flash:queued" -- the SKUs whose sale has a waiting room (the keeper walks it)

-- a function's JSON answer, or nil, "unavailable" | "error", detail (as lib/stock)
local decode = stock.decode

local function sale_key(sku) return { stock.prefix(sku) .. "sale" } end
local function call(r, name, sku, ...) return decode(r:fcall(name, sale_key(sku), { ... })) end
local function read(r, name, sku, ...) return decode(r:fcall_ro(name, sale_key(sku), { ... })) end

function M.setup(r, sku, q) return call(r, "queue_setup", sku, q.admitPerSec, q.tokenTtlSec, q.preQueueSec) end
function M.drop(r, sku) return r:fcall("queue_drop", sale_key(sku), {}) end
function M.join(r, sku, user) return call(r, "queue_join", sku, user) end
function M.state(r, sku) return read(r, "queue_state", sku) end
function M.order(r, sku) return read(r, "queue_order", sku) end
function M.ticket(r, sku, seq) return read(r, "queue_ticket", sku, seq) end
function M.open(r, sku, count, order) return call(r, "queue_open", sku, count, order) end
function M.advance(r, sku, count, tick, measured, limit)
  return call(r, "queue_advance", sku, count, tick, measured or 0, limit or 1000)
end
function M.used(r, sku, seq) return call(r, "queue_used", sku, seq) end
function M.rate(r, sku, rate) return call(r, "queue_rate", sku, rate) end

return M
