-- The cleanup job: `flashhost app/cleanup.lua`.
--
-- Expires unpaid reservations past their expiry through the expire function
-- (stock returned exactly once, one `expired` event each, which the outbox
-- relay carries to the order worker).  Several instances may run: a Redis
-- lease lets one work at a time, and another takes over within the lease TTL
-- when the holder dies.  Expiry never scans: expire reads the SKU's
-- pending index ordered by expiry.
local application = require "flashhost.app"
local core = require "flashhost.core"
local redis_client = require "flashhost.redis"
local services = require "lib.services"
local stock = require "lib.stock"
local crypto = require "flashhost.crypto"
local Keeper = require "lib.queue_keeper"

local app = application.new("cleanup")

local LEASE_KEY = "cleanup:lease"
local LEASE_TTL_MS = tonumber(os.getenv("CLEANUP_LEASE_MS")) or 5000
local INTERVAL_MS = tonumber(os.getenv("CLEANUP_INTERVAL_MS")) or 250
local BATCH = 200
-- The waiting rooms' keeper steps this often; a status poll is at most this
-- plus the API's cache age behind.
local QUEUE_STEP_MS = tonumber(os.getenv("QUEUE_STEP_MS")) or 100

local m = services.install(app, { required = { redis = true } })

app:on_start(function(ctx)
  ctx.redis = redis_client.connect { url = os.getenv("REDIS_URL") }
  stock.register(ctx.redis, services.scripts_dir()) -- loaded by the ready step
  ctx.owner = ("%s:%d:%d"):format(ctx.info.hostname or "host", ctx.info.node_id, ctx.info.pid)
  ctx.dependencies = { redis = services.redis_check(ctx.redis) }
  ctx.keeper = Keeper.new { redis = ctx.redis, random = crypto.random_bytes, log = ctx.log,
    metrics = { admitted = m.queue_admitted, length = m.queue_length, wait = m.queue_wait } }
end)

-- One sweep: every SKU until nothing is due.  Returns the reservations expired.
local function sweep(ctx)
  local skus = ctx.redis:call("SMEMBERS", stock.SKU_SET)
  if type(skus) ~= "table" then return 0 end
  local total = 0
  for _, sku in ipairs(skus) do
    repeat
      local a, kind, err = stock.expire(ctx.redis, sku, BATCH)
      if not a then
        ctx.log.warn("expiry pass failed", { sku = sku, kind = kind, err = err })
        break
      end
      total = total + a.expired
    until not a.more or core.stopping()
  end
  return total
end

app:every(INTERVAL_MS, "expire-reservations", function(ctx)
  -- Only the lease holder works; the lease outlives a sweep comfortably.
  local held = stock.lease(ctx.redis, LEASE_KEY, ctx.owner, LEASE_TTL_MS)
  if held ~= 1 then
    ctx.leader = false
    return
  end
  if not ctx.leader then ctx.log.info("cleanup lease taken", { owner = ctx.owner }) end
  ctx.leader = true
  local n = sweep(ctx)
  if n > 0 then
    ctx.metrics.raw.expired:inc(nil, n)
    ctx.metrics.inventory("expire", n)
    ctx.log.info("reservations expired", { count = n })
  end
end)

-- The waiting rooms: only while this instance holds the cleanup lease.
app:every(QUEUE_STEP_MS, "queue-keeper", function(ctx)
  if ctx.leader then ctx.keeper:run() end
end)

app:on_stop(function(ctx)
  -- Hand the lease over at once instead of letting it lapse.
  if ctx.leader then stock.lease(ctx.redis, LEASE_KEY, ctx.owner, "release") end
end)

return app
