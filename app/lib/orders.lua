-- Order routes: read an order, pay it, cancel it.
-- An order is found through the Redis index order:<id> -> "sku:reservation"
-- (written right after the purchase) or, once the order worker wrote it, in MySQL.
-- MySQL also answers when the index is there but the reservation is not (a
-- Redis restarted from a repaired append-only file can have lost it).
local core = require "flashhost.core"
local validate = require "lib.validate"
local stock = require "lib.stock"
local answers = require "lib.answers"

local M = {}

local NOT_FOUND = { success = false, error = "ORDER_NOT_FOUND", message = "no such order" }

-- The order's row: row | nil (no row, or no database) | nil, err (could not ask)
local function mysql_row(ctx, orderId)
  if not ctx.db then return nil end
  local rows, err = ctx.db:query(
    "SELECT id, reservation_id, user_id, sku_id, quantity, unit_price, status, " ..
    "UNIX_TIMESTAMP(expires_at) * 1000 AS expires_ms FROM orders WHERE id = ?", orderId)
  if not rows then return nil, err end
  return rows[1]
end

-- Returns { sku, reservationId, row? } | nil, status, body
local function locate(ctx, orderId, rules)
  local ref, err = ctx.redis:call("GET", stock.order_key(orderId))
  if type(ref) == "string" then
    local sku, resId = ref:match("^(%d+):(%d+)$")
    if sku then return { sku = sku, reservationId = resId } end
  end
  local row, derr = mysql_row(ctx, orderId)
  if row then return { sku = row.sku_id, reservationId = row.reservation_id, row = row } end
  if ref == nil and (derr or not ctx.db) then return nil, answers.unavailable(rules, derr or err) end
  return nil, 404, NOT_FOUND
end

local function row_view(orderId, r)
  return { orderId = orderId, reservationId = r.reservation_id, skuId = r.sku_id, userId = r.user_id,
    quantity = tonumber(r.quantity), unitPrice = tonumber(r.unit_price), status = r.status,
    expiresAt = tonumber(r.expires_ms) and answers.iso(math.floor(tonumber(r.expires_ms))) or nil,
    source = "mysql" }
end

-- What a pay or cancel answers when Redis no longer holds the reservation but
-- MySQL has the order: its final state as if Redis had answered, or, while
-- it is PENDING, RESERVATION_GONE (no stock is held to confirm or give back).
local FROM_ROW = {
  pay = { CONFIRMED = "ALREADY_CONFIRMED", CANCELED = "ALREADY_CANCELED", EXPIRED = "ALREADY_EXPIRED" },
  cancel = { CONFIRMED = "ALREADY_CONFIRMED", CANCELED = "ALREADY_CANCELED", EXPIRED = "ALREADY_EXPIRED" },
}
local function change_from_row(orderId, row, action)
  return { code = FROM_ROW[action][row.status] or "RESERVATION_GONE", orderId = orderId,
    reservationId = row.reservation_id, status = row.status, quantity = tonumber(row.quantity) }
end

local function order_id(req)
  return validate.id_string(req.params.orderId, "orderId")
end

local function bad_id()
  return 400, { success = false, error = "VALIDATION_ERROR", message = "orderId must be digits" }
end

-- deps: { rules, sold_out, auth(req, user) -> nil | status, body,
--         subject(req) -> sub | true (no auth) | nil, status, body }
function M.routes(app, deps)
  local rules = deps.rules

  app:get("/api/v1/orders/:orderId", function(req, ctx)
    local id = order_id(req)
    if not id then return bad_id() end
    local loc, s, b = locate(ctx, id, rules)
    if not loc then return s, b end
    local res = ctx.redis:call("HGETALL", stock.prefix(loc.sku) .. "res:" .. loc.reservationId)
    local view
    if type(res) == "table" and #res > 0 then
      local h = {}
      for i = 1, #res, 2 do h[res[i]] = res[i + 1] end
      view = { orderId = id, reservationId = loc.reservationId, skuId = loc.sku, userId = h.userId,
        quantity = tonumber(h.quantity), unitPrice = tonumber(h.unitPrice), status = h.status,
        expiresAt = answers.iso(tonumber(h.expiresAt)), source = "redis" }
    else
      -- Redis cannot show the reservation (gone, or Redis away): MySQL may
      -- hold the order even though the index led here.
      local row, derr = loc.row, nil
      if not row then row, derr = mysql_row(ctx, id) end
      if row then
        view = row_view(id, row)
      elseif res == nil or derr then
        return answers.unavailable(rules, derr)
      else
        return 404, NOT_FOUND
      end
    end
    local as, ab = deps.auth(req, view.userId)
    if as then return as, ab end
    return 200, view
  end)

  local function change(action)
    return function(req, ctx)
      local id = order_id(req)
      if not id then return bad_id() end
      local body = {}
      if req.body ~= "" then
        local b, err = req:json()
        if not b then return 400, { success = false, error = "INVALID_JSON", message = err } end
        body = b
      end
      if body.paymentRef ~= nil and (type(body.paymentRef) ~= "string" or #body.paymentRef > 128) then
        return 400, { success = false, error = "VALIDATION_ERROR", message = "paymentRef must be a string of at most 128 characters" }
      end
      local loc, s, b = locate(ctx, id, rules)
      if not loc then return s, b end
      -- With authentication the owner is the token's subject; without it an
      -- optional userId in the body is checked against the buyer.
      local sub, ss, sb = deps.subject(req)
      if not sub then return ss, sb end
      local owner = sub ~= true and sub or nil
      if owner == nil and body.userId ~= nil then
        owner = validate.id_string(body.userId, "userId")
        if not owner then return 400, { success = false, error = "VALIDATION_ERROR", message = "userId must be digits" } end
      end
      local a, kind, detail
      if action == "pay" then
        a, kind, detail = stock.confirm(ctx.redis, loc.sku, loc.reservationId, body.paymentRef, owner, req.id)
      else
        a, kind, detail = stock.release(ctx.redis, loc.sku, loc.reservationId, "canceled", owner, req.id)
      end
      if not a then
        if kind == "unavailable" then return answers.unavailable(rules, detail) end
        ctx.log.error("order change failed", { request_id = req.id, err = detail })
        return answers.internal()
      end
      if a.code == "NOT_FOUND" then
        -- the index outlived the reservation: MySQL says what became of the order
        local row, derr = loc.row, nil
        if not row then row, derr = mysql_row(ctx, id) end
        if derr then return answers.unavailable(rules, derr) end
        if row and (owner == nil or tostring(row.user_id) == owner) then
          return answers.order_change(change_from_row(id, row, action), action)
        end
      end
      if a.code == "OK" or a.code == "ALREADY_EXPIRED" or a.code == "EXPIRED" then
        deps.sold_out:clear(loc.sku) -- stock came back: stop answering sold out from memory
      end
      if a.code == "OK" and action == "pay" then
        ctx.metrics.inventory("confirm")
      elseif a.code == "OK" then
        ctx.metrics.inventory("cancel")
      end
      return answers.order_change(a, action)
    end
  end

  app:post("/api/v1/orders/:orderId/pay", change("pay"))
  app:post("/api/v1/orders/:orderId/cancel", change("cancel"))
end

return M
