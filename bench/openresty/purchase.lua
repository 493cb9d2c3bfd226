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

-- Ids unique per request across workers without coordination, like the
-- app's: milliseconds, worker, then a sequence that borrows the next
-- millisecond when it runs out.  18 digits, so a positive 64-bit id.
local last_ms, seq = 0, 0
local function next_id()
  local ms = math.floor(ngx.now() * 1000)
  if ms <= last_ms then
    ms, seq = last_ms, seq + 1
    if seq == 10000 then ms, seq = ms + 1, 0 end
  else
    seq = 0
  end
  last_ms = ms
  return ("%d%d%04d"):format(ms, ngx.worker.id() % 10, seq)
end

-- One attempt as a batch of one; returns the raw answer of attempt 1.
local function fcall(red, p, ids)
  local k = "{sku:" .. p.skuId .. "}:"
  local rl = rules.rate_limit
  -- the order index hash of the id, named as app/lib/stock.index_key names it
  local res, err = red:fcall("purchase_batch", 9,
    k .. "sale", k .. "stock", k .. "counts", k .. "pending", k .. "outbox", k .. "sokeys",
    k .. "u:" .. p.userId, k .. "res:" .. ids.reservationId, "orderidx:" .. ids.orderId:sub(1, -13),
    1, rules.per_user_limit, rules.reservation_ttl_sec, rl.capacity, rl.refill_per_sec, "1",
    p.userId, p.quantity, p.idempotencyKey or "", p.userId .. "|" .. p.skuId .. "|" .. p.quantity,
    ids.reservationId, ids.orderId, ids.traceId)
  if not res then return res, err end
  local list = cjson.decode(res)
  return type(list) == "table" and list[1] or nil, "unreadable answer"
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
  local ids = { reservationId = next_id(), orderId = next_id(), traceId = ngx.var.request_id }
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
