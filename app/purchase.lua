-- The flash-sale API: `flashhost app/purchase.lua`.
--
-- Public (PORT): purchase, SKU status, orders (read, pay, cancel), health.
-- Admin (ADMIN_PORT, 127.0.0.1): create or reset a sale, reconcile, metrics.
-- Every stock change is one Redis Function call (redis-lua/); this file validates,
-- calls it, and turns its answer into HTTP.
local application = require "flashhost.app"
local core = require "flashhost.core"
local redis_client = require "flashhost.redis"
local jwt = require "flashhost.jwt"

local rules = require "rules"
local validate = require "lib.validate"
local stock = require "lib.stock"
local answers = require "lib.answers"
local auth = require "lib.auth"
local SoldOut = require "lib.soldout"
local orders = require "lib.orders"
local admin = require "lib.admin"
local services = require "lib.services"
local relay = require "lib.relay"
local kafka = require "flashhost.kafka"
local mysql = require "flashhost.mysql"

local app = application.new("purchase")
local sold_out = SoldOut.new()
local auth_cfg

app:on_validate(function(ctx)
  -- Refuse to start (or to reload) with unusable settings or a broken rules file.
  auth_cfg = auth.config()
  assert(type(rules.rate_limit) == "table" and type(rules.messages) == "table", "rules.lua is incomplete")
  assert(rules.max_quantity >= 1 and rules.max_quantity <= 10, "rules.max_quantity must be 1..10")
end)

services.install(app, { sku_gauges = true, required = { redis = true } })

app:on_start(function(ctx)
  ctx.rules = rules
  ctx.redis = redis_client.connect { url = os.getenv("REDIS_URL"), timeout_ms = tonumber(os.getenv("REDIS_TIMEOUT_MS")) or 1000 }
  stock.setup(ctx.redis, services.scripts_dir(), ctx.log)
  -- MySQL: order lookups once the order worker wrote them, sale records, reconcile.
  ctx.db = mysql.pool { size = 2, database = os.getenv("MYSQL_DATABASE") or "flash_sale" }
  ctx.dependencies = {
    redis = services.redis_check(ctx.redis),
    mysql = function()
      local r, err = ctx.db:query("SELECT 1 AS ok")
      return r ~= nil, err
    end,
  }
  if os.getenv("OUTBOX_RELAY") ~= "off" then
    local brokers = os.getenv("KAFKA_BROKERS") or "127.0.0.1:9092"
    ctx.producer = kafka.producer { brokers = brokers }
    -- its own connection: the relay's reads must not queue behind purchases
    ctx.redis_relay = redis_client.connect { url = os.getenv("REDIS_URL"), timeout_ms = 2000 }
    ctx.dependencies.kafka = function()
      local md, err = kafka.metadata(brokers, 1000)
      return md ~= nil, err
    end
    core.spawn(function()
      relay.run(ctx)
      ctx.producer:close()
      ctx.redis_relay:close()
    end)
  end
end)

-- No stop hook closes ctx.redis or ctx.db: requests of this generation may
-- still be running when it is told to stop; the clients close when the
-- drained generation's Lua state is collected.

-- The order index (order:<id> -> "sku:reservation") is written just before
-- the script, on the same connection, so Redis has it before the purchase
-- answer exists: a pay that follows on any worker finds it.  It starts with
-- a short life, which a successful purchase extends; a refused one leaves a
-- key that vanishes on its own.
local INDEX_FIRST_TTL = 60
local function index_order(r, orderId, sku, resId)
  r:call("SET", stock.order_key(orderId), sku .. ":" .. resId, "EX", INDEX_FIRST_TTL)
end

local function keep_index(r, orderId, ttl_sec)
  r:call("EXPIRE", stock.order_key(orderId), math.floor(ttl_sec) + 86400)
end

-- Marks a SKU sold out in this worker, with the keys that must still reach
-- Redis.  One fetch per SKU at a time (sold_out:begin_fetch).
local function mark_sold_out(r, sku, remaining)
  local okkeys = r:call("SMEMBERS", stock.prefix(sku) .. "okkeys")
  if type(okkeys) ~= "table" then
    sold_out:clear(sku) -- could not read them: no mark, the next SOLD_OUT tries again
    return
  end
  sold_out:mark(sku, remaining, okkeys, rules.sold_out_mark_ms, core.now())
end

app:post("/api/v1/flash/purchase", function(req, ctx)
  local t0 = core.mono()
  local body, jerr = req:json()
  if not body then
    return 400, { success = false, error = "INVALID_JSON", message = jerr }
  end
  local p, verr = validate.purchase(body, rules.max_quantity)
  if not p then
    return 400, { success = false, error = "VALIDATION_ERROR", message = verr.message, field = verr.field }
  end
  local s, b = auth.require_user(auth_cfg, req, p.userId, jwt.verify_hs256, core.now())
  if s then return s, b end

  local remaining = sold_out:check(p.skuId, p.idempotencyKey, core.now())
  if remaining then
    ctx.metrics.purchase("sold_out", "memo")
    return answers.sold_out_body(remaining, rules, core.mono() - t0)
  end

  local ids = { reservationId = core.id(), orderId = core.id(), traceId = req.id }
  core.spawn(index_order, ctx.redis, ids.orderId, p.skuId, ids.reservationId) -- queued before the script
  local t_redis = core.mono()
  local a, kind, detail = stock.purchase(ctx.redis, p, ids, rules)
  ctx.metrics.redis("purchase", (core.mono() - t_redis) / 1000)
  if not a then
    sold_out:probe_failed(p.skuId)
    ctx.log.warn("purchase not processed", { request_id = req.id, kind = kind, err = detail })
    ctx.metrics.purchase("error", kind)
    if kind == "unavailable" then return answers.unavailable(rules, detail) end
    return answers.internal()
  end
  local final = a.code == "REPLAY" and a.result or a
  sold_out:answered(p.skuId, final.code == "SOLD_OUT")
  if final.code == "OK" and a.code == "OK" then
    ctx.metrics.inventory("reserve", final.quantity)
    core.spawn(keep_index, ctx.redis, final.orderId, rules.reservation_ttl_sec)
  elseif final.code == "SOLD_OUT" and sold_out:begin_fetch(p.skuId, core.now()) then
    core.spawn(mark_sold_out, ctx.redis, p.skuId, final.remaining)
  end
  ctx.metrics.purchase(final.code == "OK" and "success" or "rejected", a.code == "REPLAY" and "replay" or final.code)
  if a.code == "NOT_STARTED" then a.now = core.now() end
  return answers.purchase(a, rules, core.mono() - t0)
end)

app:get("/api/v1/flash/skus/:skuId", function(req, ctx)
  local sku = validate.id_string(req.params.skuId, "skuId")
  if not sku then return 400, { success = false, error = "VALIDATION_ERROR", message = "skuId must be digits" } end
  local st, kind, detail = stock.status(ctx.redis, sku)
  if not st then
    if kind == "unavailable" then return answers.unavailable(rules, detail) end
    return answers.internal()
  end
  if st.code == "NO_SALE" then
    return 404, { success = false, error = "SKU_NOT_FOUND", message = rules.messages.unknown_sku }
  end
  return 200, admin.sku_view(sku, st, core.now())
end)

orders.routes(app, {
  rules = rules, sold_out = sold_out,
  auth = function(req, user) return auth.require_user(auth_cfg, req, user, jwt.verify_hs256, core.now()) end,
  subject = function(req) return auth.subject(auth_cfg, req, jwt.verify_hs256, core.now()) end,
})
admin.routes(app, { rules = rules, sold_out = sold_out })
require("lib.live").routes(app, { rules = rules })

return app
