-- The waiting room's Redis calls: one FCALL of redis-lua/queue.lua each.
-- Every call answers the decoded JSON answer, or nil, kind, detail as
-- lib/stock.lua does ("unavailable": Redis could not be asked; "error": it
-- refused, a bug).
local cjson = require "cjson.safe"
local stock = require "lib.stock"

local M = {}

M.LIBRARY = "queue" -- redis-lua/queue.lua
M.SET = "flash:queued" -- the SKUs whose sale has a waiting room (the keeper walks it)

local sources = {}

local function source(dir)
  if not sources[dir] then
    local path = dir:gsub("/$", "") .. "/" .. M.LIBRARY .. ".lua"
    local f, err = io.open(path, "rb")
    if not f then error("redis function library " .. M.LIBRARY .. ": " .. tostring(err), 2) end
    sources[dir] = f:read("*a")
    f:close()
  end
  return sources[dir]
end

-- load(redis, dir): FUNCTION LOAD REPLACE of the library; true | nil, err.
function M.load(redis, dir)
  local res, err = redis:call("FUNCTION", "LOAD", "REPLACE", source(dir))
  if not res then return nil, err end
  redis._queue_dir = dir
  return true
end

local function decode(res, err)
  if res == nil then return nil, "unavailable", err end
  if res == false then return nil, "error", err end
  local v = cjson.decode(res)
  if type(v) ~= "table" then return nil, "error", "unreadable function answer" end
  return v
end

-- One FCALL on the SKU's sale hash.  A Redis that lost its functions (a
-- restart without persistence, FUNCTION FLUSH) gets the library again, once.
local function fcall(redis, cmd, name, sku, ...)
  local key = stock.prefix(sku) .. "sale"
  local res, err = redis:call(cmd, name, 1, key, ...)
  if res == false and tostring(err):find("Function not found", 1, true) and redis._queue_dir then
    local ok, lerr = M.load(redis, redis._queue_dir)
    if not ok then return nil, lerr end
    res, err = redis:call(cmd, name, 1, key, ...)
  end
  return res, err
end

function M.setup(r, sku, q)
  return decode(fcall(r, "FCALL", "queue_setup", sku, q.admitPerSec, q.tokenTtlSec, q.preQueueSec))
end
function M.drop(r, sku) return fcall(r, "FCALL", "queue_drop", sku) end
function M.join(r, sku, user) return decode(fcall(r, "FCALL", "queue_join", sku, user)) end
function M.state(r, sku) return decode(fcall(r, "FCALL_RO", "queue_state", sku)) end
function M.order(r, sku) return decode(fcall(r, "FCALL_RO", "queue_order", sku)) end
function M.ticket(r, sku, seq) return decode(fcall(r, "FCALL_RO", "queue_ticket", sku, seq)) end
function M.open(r, sku, count, order) return decode(fcall(r, "FCALL", "queue_open", sku, count, order)) end
function M.advance(r, sku, count, tick, measured, limit)
  return decode(fcall(r, "FCALL", "queue_advance", sku, count, tick, measured or 0, limit or 1000))
end
function M.used(r, sku, seq) return decode(fcall(r, "FCALL", "queue_used", sku, seq)) end
function M.rate(r, sku, rate) return decode(fcall(r, "FCALL", "queue_rate", sku, rate)) end

return M
