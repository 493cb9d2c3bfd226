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
local GroupCommit = require "lib.group_commit"
local order_ids = require "lib.order_ids"
local orders = require "lib.orders"
local admin = require "lib.admin"
local services = require "lib.services"
local relay = require "lib.relay"
local node_claim = require "lib.node_claim"
local kafka = require "flashhost.kafka"
local mysql = require "flashhost.mysql"

local app = application.new("purchase")
local sold_out = SoldOut.new()
local auth_cfg
local shared
local send_batch -- one batch's ids and call (below)

app:on_validate(function(ctx)
  -- Refuse to start (or to reload) with unusable settings or a broken rules file.
  auth_cfg = auth.config()
  assert(type(rules.rate_limit) == "table" and type(rules.messages) == "table", "rules.lua is incomplete")
  assert(rules.max_quantity >= 1 and rules.max_quantity <= 10, "rules.max_quantity must be 1..10")
end)

-- Ready needs Redis and this node's own NODE_ID (lib/node_claim.lua).
services.install(app, { sku_gauges = true, required = { redis = true, node_id = true } })

app:on_start(function(ctx)
  ctx.rules = rules
  ctx.redis = redis_client.connect { url = os.getenv("REDIS_URL"), timeout_ms = tonumber(os.getenv("REDIS_TIMEOUT_MS")) or 1000 }
  -- registered only: the generation's ready step loads it before the first request
  stock.register(ctx.redis, services.scripts_dir())
  -- Group commit per SKU: attempts for one SKU that arrive while its call is
  -- in flight ride together in the next purchase_batch call, their ids named
  -- from one block (lib/order_ids), so one order index entry serves the batch.
  -- On one Redis the function writes it; a cluster keeps the index on other
  -- nodes, so the host writes it there (send_batch below).
  local with_index = not ctx.redis.cluster
  ctx.purchases = GroupCommit.new {
    -- a block names at most MAX_BATCH attempts
    max = math.min(rules.purchase_batch_max or order_ids.MAX_BATCH, order_ids.MAX_BATCH),
    send = function(sku, attempts) return send_batch(ctx.redis, sku, attempts, with_index) end,
    on_batch = function(_, n) ctx.metrics.batch(n) end,
  }
  -- MySQL: order lookups once the order worker wrote them, sale records, reconcile.
  ctx.db = mysql.pool { size = 2, database = services.database() }
  -- Order ids carry the NODE_ID: this node sells only while no other holds it.
  ctx.node_claim = node_claim.new { redis = ctx.redis, node_id = ctx.info.node_id, lease = stock.lease, log = ctx.log,
    owner = os.getenv("NODE_OWNER") or ctx.info.hostname or "host", answered = core.event() }
  ctx.dependencies = {
    redis = services.redis_check(ctx.redis),
    node_id = function()
      local why = ctx.node_claim:await()
      return why == nil, why
    end,
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

-- The NODE_ID lease, taken at start (no purchase before it is) and renewed
-- well inside its TTL.
app:every(node_claim.TICK_MS, "node-id-claim", function(ctx) ctx.node_claim:tick(core.mono()) end)

-- No stop hook closes ctx.redis or ctx.db: requests of this generation may
-- still be running when it is told to stop; the clients close when the
-- drained generation's Lua state is collected.

-- One purchase batch: its ids from a fresh block, then one purchase_batch call.
-- The order index (a block -> its SKU, lib/stock.index_key) lets the order
-- routes find a reservation from an order id.  On one Redis, purchase_batch
-- writes it with the reservations, so it exists before the answers do and an
-- immediate pay on any worker finds it.  On a cluster it lives on another
-- node than the SKU: the host writes it as the batch goes out and takes it
-- back when no attempt bought (ordering across nodes is not guaranteed there;
-- MySQL is the fallback).  An entry whose batch failed without an answer
-- stays: it may have bought.
function send_batch(r, sku, attempts, with_index)
  local block = core.id_block()
  order_ids.assign(block, attempts)
  if with_index then return stock.purchase_batch(r, sku, attempts, rules, true) end
  core.spawn(stock.write_index, r, block, sku, rules.reservation_ttl_sec)
  local list, kind, detail = stock.purchase_batch(r, sku, attempts, rules, false)
  local bought = false
  for _, a in ipairs(list or {}) do bought = bought or a.code == "OK" end
  if list and not bought then core.spawn(r.call, r, "HDEL", stock.index_key(block), block) end
  return list, kind, detail
end

-- Marks a SKU sold out in this worker, with the keys that must still reach
-- Redis.  One fetch per SKU at a time (sold_out:begin_fetch).
local function mark_sold_out(r, sku, remaining)
  local okkeys = stock.replayable_keys(r, sku, core.now())
  if not okkeys then
    sold_out:clear(sku) -- could not read them: no mark, the next SOLD_OUT tries again
    return
  end
  sold_out:mark(sku, remaining, okkeys, rules.sold_out_mark_ms, core.now())
end

app:post("/api/v1/flash/purchase", function(req, ctx)
  local t0 = core.mono()
  local body, jerr = req:json()
  if not body then
    return answers.refusal(400, "INVALID_JSON", jerr)
  end
  local p, verr = validate.purchase(body, rules.max_quantity)
  if not p then
    return answers.refusal(400, "VALIDATION_ERROR", verr.message, { field = verr.field })
  end
  local s, b = auth.require_user(auth_cfg, req, p.userId, jwt.verify_hs256, core.now())
  if s then return s, b end
  -- a queue token is checked here, from its signature alone; without one a
  -- queued sale is refused by the purchase function itself (no extra Redis call)
  s, b = shared.check_token(p, body, core.now())
  if s then return s, b end

  local remaining = sold_out:check(p.skuId, p.idempotencyKey, core.now())
  if remaining then
    ctx.metrics.purchase("sold_out", "memo")
    return answers.sold_out_body(remaining, rules, core.mono() - t0)
  end

  local taken = ctx.node_claim:await()
  if taken then
    ctx.metrics.purchase("error", "node_id")
    return answers.unavailable(rules, taken)
  end
  -- orderId and reservationId are named when the batch goes out (send_batch)
  local ids = { traceId = req.id }
  local t_redis = core.mono()
  local a, kind, detail = ctx.purchases:submit(p.skuId, { p = p, ids = ids })
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
    if p.queueTicket then shared.token_used(ctx, p) end
  elseif final.code == "SOLD_OUT" then
    if shared.queue_cache then shared.queue_cache:sold_out(p.skuId) end
    if sold_out:begin_fetch(p.skuId, core.now()) then core.spawn(mark_sold_out, ctx.redis, p.skuId, final.remaining) end
  end
  ctx.metrics.purchase(final.code == "OK" and "success" or "rejected", a.code == "REPLAY" and "replay" or final.code)
  if a.code == "NOT_STARTED" then a.now = core.now() end
  return answers.purchase(a, rules, core.mono() - t0)
end)

app:get("/api/v1/flash/skus/:skuId", function(req, ctx)
  local sku = validate.id_string(req.params.skuId, "skuId")
  if not sku then return answers.refusal(400, "VALIDATION_ERROR", "skuId must be digits") end
  local st, kind, detail = stock.status(ctx.redis, sku)
  if not st then
    if kind == "unavailable" then return answers.unavailable(rules, detail) end
    return answers.internal()
  end
  if st.code == "NO_SALE" then
    return answers.refusal(404, "SKU_NOT_FOUND", rules.messages.unknown_sku)
  end
  return 200, admin.sku_view(sku, st, core.now())
end)

-- Shared by the admin and queue routes (lib/queue.lua fills in the queue's hooks).
shared = {
  rules = rules, sold_out = sold_out,
  auth = function(req, user) return auth.require_user(auth_cfg, req, user, jwt.verify_hs256, core.now()) end,
}

orders.routes(app, {
  rules = rules, sold_out = sold_out, auth = shared.auth,
  subject = function(req) return auth.subject(auth_cfg, req, jwt.verify_hs256, core.now()) end,
})
admin.routes(app, shared)
require("lib.queue").routes(app, shared)
require("lib.live").routes(app, { rules = rules })

return app
