-- Admin routes (ADMIN_PORT, 127.0.0.1 only): create or reset a sale,
-- reconcile a SKU, and the views they share with the public API.
local core = require "flashhost.core"
local validate = require "lib.validate"
local stock = require "lib.stock"
local answers = require "lib.answers"
local reconcile = require "lib.reconcile"
local queue_admin = require "lib.queue_admin"

local M = {}

-- The public view of a SKU from status.lua's answer.
function M.sku_view(sku, st, now)
  local s, c = st.sale, st.counts
  local startsAt, endsAt = tonumber(s.startsAt) or 0, tonumber(s.endsAt) or 0
  local status = "ACTIVE"
  if now < startsAt then status = "NOT_STARTED"
  elseif endsAt > 0 and now >= endsAt then status = "ENDED"
  elseif st.stock <= 0 then status = "SOLD_OUT" end
  return {
    skuId = sku, name = s.name, price = tonumber(s.price), initial = tonumber(s.initial),
    stock = st.stock, available = st.stock, reserved = c.reserved or 0, sold = c.sold or 0,
    canceled = c.canceled or 0, expired = c.expired or 0,
    startsAt = startsAt, endsAt = endsAt, status = status,
    perUserLimit = tonumber(s.perUserLimit), reservationTtlSec = tonumber(s.ttlSec),
  }
end

function M.routes(app, deps)
  local rules = deps.rules

  app:admin("POST", "/admin/v1/sales", function(req, ctx)
    local body, jerr = req:json()
    if not body then return answers.refusal(400, "INVALID_JSON", jerr) end
    local s, verr = validate.sale(body)
    if not s then return answers.refusal(400, "VALIDATION_ERROR", verr.message, { field = verr.field }) end
    if s.queue and not (deps.queue_ready and deps.queue_ready()) then
      return answers.refusal(409, "QUEUE_SECRET_MISSING", "a queued sale needs QUEUE_SECRET set on the API", { field = "queue" })
    end
    -- A reset cancels the sale's pending reservations: most of them first, in
    -- short steps, so that Redis is never held for the whole walk.
    local a, kind, detail = stock.cancel_before_reset(ctx.redis, s.skuId, req.id)
    local stepped = a
    if a then a, kind, detail = stock.create_sale(ctx.redis, s, req.id) end
    if a then a.canceled = a.canceled + stepped end
    if not a then
      if kind == "unavailable" then return answers.unavailable(rules, detail) end
      return answers.refusal(500, "INTERNAL", tostring(detail))
    end
    -- Bookkeeping beside the sale: the SKU list, a fresh set of the keys
    -- answered SOLD_OUT (sokeys), the in-process sold-out mark.  None of it
    -- can break the sale if it fails.
    ctx.redis:call("SADD", stock.SKU_SET, s.skuId)
    ctx.redis:call("DEL", stock.prefix(s.skuId) .. "sokeys")
    deps.sold_out:clear(s.skuId)
    -- The queue comes right after its sale; until then the sale refuses every
    -- purchase without a token (sale.lua stored queue = 1), so nothing slips by.
    local qok, qkind, qdetail = queue_admin.after_sale(ctx.redis, s)
    if not qok then
      ctx.log.warn("queue not set up", { sku = s.skuId, kind = qkind, err = qdetail })
      if qkind == "unavailable" then return answers.unavailable(rules, qdetail) end
      return answers.refusal(500, "INTERNAL", tostring(qdetail))
    end
    if deps.queue_cache then deps.queue_cache:forget(s.skuId) end
    if ctx.db then
      local _, derr = ctx.db:query(
        "INSERT INTO skus (id, name, price, initial_stock, starts_at, ends_at, per_user_limit, reservation_ttl_sec) " ..
        "VALUES (?, ?, ?, ?, FROM_UNIXTIME(? / 1000), IF(? = 0, NULL, FROM_UNIXTIME(? / 1000)), ?, ?) " ..
        "ON DUPLICATE KEY UPDATE name = VALUES(name), price = VALUES(price), initial_stock = VALUES(initial_stock), " ..
        "starts_at = VALUES(starts_at), ends_at = VALUES(ends_at), per_user_limit = VALUES(per_user_limit), " ..
        "reservation_ttl_sec = VALUES(reservation_ttl_sec)",
        s.skuId, s.name, s.price, s.stock, s.startsAt, s.endsAt, s.endsAt,
        s.perUserLimit or rules.per_user_limit, s.reservationTtlSec or rules.reservation_ttl_sec)
      if derr then ctx.log.warn("sale not recorded in MySQL", { sku = s.skuId, err = derr }) end
    end
    ctx.log.info("sale created", { sku = s.skuId, stock = s.stock, canceled = a.canceled, request_id = req.id })
    local sale = a.sale
    sale.canceledReservations = a.canceled
    sale.queue = s.queue and queue_admin.stats(ctx.redis, s.skuId) or nil
    return 201, sale
  end)

  app:admin("GET", "/admin/v1/sales", function(req, ctx)
    local skus = ctx.redis:call("SMEMBERS", stock.SKU_SET)
    if type(skus) ~= "table" then return answers.unavailable(rules) end
    table.sort(skus, function(a, b) return tonumber(a) < tonumber(b) end)
    local out = {}
    for _, sku in ipairs(skus) do
      local st = stock.status(ctx.redis, sku)
      if st and st.code == "OK" then
        local v = M.sku_view(sku, st, core.now())
        if st.sale.queue == "1" then v.queue = queue_admin.stats(ctx.redis, sku) end
        out[#out + 1] = v
      end
    end
    return 200, { sales = out }
  end)

  app:admin("GET", "/admin/v1/sales/:skuId/reconcile", function(req, ctx)
    local sku = validate.id_string(req.params.skuId, "skuId")
    if not sku then return answers.refusal(400, "VALIDATION_ERROR", "skuId must be digits") end
    local report, err = reconcile.sku(ctx.redis, ctx.db, sku)
    if not report then
      if tostring(err):find("^no sale") then return answers.refusal(404, "SKU_NOT_FOUND", err) end
      return answers.refusal(503, "SERVICE_UNAVAILABLE", err, nil, { ["Retry-After"] = "1" })
    end
    return 200, report
  end)
end

return M
