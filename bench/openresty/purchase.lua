-- The purchase route of the OpenResty reference (bench/openresty/nginx.conf):
-- what a plain nginx + Lua service would do for POST /api/v1/flash/purchase,
-- so `make bench` can tell what flashhost's runtime and group commit are worth.
-- Same validation, rules and answers as flashhost (the pure modules of app/ are
-- loaded as they are), no in-process shortcuts, and one Redis call per request:
-- FCALL purchase_batch with ONE attempt, the order index written by the function
-- (redis-lua/README.md is the contract).
-- Not here: AUTH=jwt (the bench runs with AUTH=none) and the sold-out memo.
local cjson = require "cjson.safe"
local redis = require "nginx.redis" -- Debian's lua-nginx-redis: lua-resty-redis under this name
local validate = require "lib.validate"
local answers = require "lib.answers"
local stock = require "lib.stock"
local order_ids = require "lib.order_ids"
local rules = require "rules"

-- strict JSON like the app's bodies: no hex, Infinity or NaN
cjson.decode_invalid_numbers(false)

local M = {}
local cfg -- set by init(): redis_host, redis_port

function M.init(c)
  cfg = c
end

local function reply(status, body, headers)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  if headers then
    for k, v in pairs(headers) do ngx.header[k] = v end
  end
  ngx.print(type(body) == "string" and body or cjson.encode(body))
  return ngx.exit(status)
end

-- The first id of a block of 256 (lib/order_ids), unique per request across
-- workers without coordination, like the app's: ((milliseconds since 2024 *
-- 8 + worker) * 16 + a sequence that borrows the next millisecond when it
-- runs out) * 256.  Below 2^53 for some eight years: exact in a Lua number.
local EPOCH_MS = 1704067200000
local last_ms, seq = 0, 0
local function next_block()
  local ms = math.floor(ngx.now() * 1000) - EPOCH_MS
  if ms <= last_ms then
    ms, seq = last_ms, seq + 1
    if seq == 16 then ms, seq = ms + 1, 0 end
  else
    seq = 0
  end
  last_ms = ms
  return ("%d"):format(((ms * 8 + ngx.worker.id() % 8) * 16 + seq) * 256)
end

-- One attempt as a batch of one, the order index written by the function;
-- returns the answer of attempt 1.
local function fcall(red, p, ids)
  local k = "{sku:" .. p.skuId .. "}:"
  local rl = rules.rate_limit
  local res, err = red:fcall("purchase_batch", 8,
    k .. "sale", k .. "stock", k .. "counts", k .. "pending", k .. "outbox", k .. "sokeys",
    k .. "u:" .. p.userId, k .. "res:" .. ids.reservationId,
    1, rules.per_user_limit, rules.reservation_ttl_sec, rl.capacity, rl.refill_per_sec, "1",
    p.userId, p.quantity, p.idempotencyKey or "", p.userId .. "|" .. p.skuId .. "|" .. p.quantity,
    ids.reservationId, ids.orderId, ids.traceId)
  if not res then return res, err end
  local list = cjson.decode(res)
  if type(list) ~= "table" then return false, "unreadable answer" end
  local out, aerr = stock.batch_answers(list, { { p = p, ids = ids } })
  if not out then return false, aerr end
  return out[1]
end

function M.handle()
  local t0 = ngx.now()
  if ngx.req.get_method() ~= "POST" then
    return reply(405, { success = false, error = "METHOD_NOT_ALLOWED", message = "use POST" })
  end
  ngx.req.read_body()
  local body, jerr = cjson.decode(ngx.req.get_body_data() or "")
  if body == nil then
    return reply(400, { success = false, error = "INVALID_JSON", message = jerr })
  end
  local p, verr = validate.purchase(body, rules.max_quantity)
  if not p then
    return reply(400, { success = false, error = "VALIDATION_ERROR", message = verr.message, field = verr.field })
  end

  local red = redis:new()
  -- 0.27 has set_timeout only: any other name would be sent to Redis as a command
  red:set_timeout(1000)
  local ok, cerr = red:connect(cfg.redis_host, cfg.redis_port)
  if not ok then return reply(answers.unavailable(rules, cerr)) end
  local ids = { traceId = ngx.var.request_id }
  ids.orderId, ids.reservationId = order_ids.of_block(next_block(), 1)
  local a, err = fcall(red, p, ids)
  if a == nil then
    red:close() -- a network error leaves the connection in an unknown state
    ngx.log(ngx.WARN, "purchase not processed: ", err)
    return reply(answers.unavailable(rules, err))
  end
  red:set_keepalive(60000, 512)
  if a == false or type(a) ~= "table" then
    ngx.log(ngx.ERR, "purchase refused by Redis: ", err)
    return reply(answers.internal())
  end
  if a.code == "NOT_STARTED" then a.now = ngx.now() * 1000 end
  return reply(answers.purchase(a, rules, (ngx.now() - t0) * 1000))
end

return M
