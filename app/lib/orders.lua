-- Order routes: read an order, pay it, cancel it.  Each handler reads
-- validate -> authorize -> act -> answer; where an order lives is
-- lib/order_store's business, what the client sees is lib/answers'.
local validate = require "lib.validate"
local stock = require "lib.stock"
local answers = require "lib.answers"
local store = require "lib.order_store"

local M = {}

local function not_found() return answers.refusal(404, "ORDER_NOT_FOUND", "no such order") end

-- Returns { sku, reservationId, row? } | nil, status, body
local function locate(ctx, orderId, rules)
  local loc, why, err = store.locate(ctx.redis, ctx.db, orderId)
  if loc then return loc end
  if why == "unavailable" then return nil, answers.unavailable(rules, err) end
  return nil, not_found()
end

-- What a pay or cancel answers when Redis no longer holds the reservation but
-- MySQL has the order: its final state as if Redis had answered, or, while
-- it is PENDING, RESERVATION_GONE (no stock is held to confirm or give back).
local FROM_ROW = { CONFIRMED = "ALREADY_CONFIRMED", CANCELED = "ALREADY_CANCELED", EXPIRED = "ALREADY_EXPIRED" }
local function change_from_row(orderId, row)
  return { code = FROM_ROW[row.status] or "RESERVATION_GONE", orderId = orderId,
    reservationId = row.reservation_id, status = row.status, quantity = tonumber(row.quantity) }
end

local function order_id(req)
  return validate.id_string(req.params.orderId, "orderId")
end

local function bad_id()
  return answers.refusal(400, "VALIDATION_ERROR", "orderId must be digits")
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
    local h, rerr = store.reservation(ctx.redis, loc.sku, loc.reservationId)
    local view
    if h then
      view = answers.order_view(id, loc, h)
    else
      -- Redis cannot show the reservation (gone, or Redis away): MySQL may
      -- hold the order even though the index led here.
      local row, derr = loc.row, nil
      if not row then row, derr = store.row(ctx.db, id) end
      if row then
        view = answers.order_row_view(id, row)
      elseif rerr or derr then
        return answers.unavailable(rules, derr or rerr)
      else
        return not_found()
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
        if not b then return answers.refusal(400, "INVALID_JSON", err) end
        body = b
      end
      if body.paymentRef ~= nil and (type(body.paymentRef) ~= "string" or #body.paymentRef > 128) then
        return answers.refusal(400, "VALIDATION_ERROR", "paymentRef must be a string of at most 128 characters")
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
        if not owner then return answers.refusal(400, "VALIDATION_ERROR", "userId must be digits") end
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
        if not row then row, derr = store.row(ctx.db, id) end
        if derr then return answers.unavailable(rules, derr) end
        if row and (owner == nil or tostring(row.user_id) == owner) then
          return answers.order_change(change_from_row(id, row), action)
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
