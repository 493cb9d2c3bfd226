-- The operators' side of the waiting room: each queued sale's figures, a
-- new admission rate, and the queue set up with its sale (lib/admin.lua).
local validate = require "lib.validate"
local answers = require "lib.answers"
local store = require "lib.queue_store"

local M = {}

-- The figures of one queue from queue_state's answer.
function M.view(st)
  local function n(f) return tonumber(st[f]) or 0 end
  return {
    enabled = true, length = n("tail") - n("serving"), joined = n("tail"), serving = n("serving"),
    admitted = n("admitted"), used = n("used"), expired = n("expired"),
    admitPerSec = n("rate"), measuredPerSec = n("measured"), tokenTtlSec = n("ttl"),
    preQueueSec = n("pre"), preQueue = n("preCount"), opened = st.opened == "1", soldOut = st.soldOut == "1",
  }
end

-- The figures of `sku`'s queue, nil when it has none (or Redis cannot say).
function M.stats(r, sku)
  local st = store.state(r, sku)
  if st and st.code == "OK" then return M.view(st) end
end

-- After sale.lua created or reset the sale: its queue, fresh, or none.
-- -> true | nil, kind, detail
function M.after_sale(r, s)
  if s.queue then
    local a, kind, detail = store.setup(r, s.skuId, s.queue)
    if not a then return nil, kind, detail end
    r:call("SADD", store.SET, s.skuId)
    return true
  end
  if r:call("SREM", store.SET, s.skuId) == 1 then store.drop(r, s.skuId) end
  return true
end

function M.routes(app, deps)
  local rules = deps.rules

  app:admin("GET", "/admin/v1/sales/:skuId/queue", function(req, ctx)
    local sku = validate.id_string(req.params.skuId, "skuId")
    if not sku then return answers.refusal(400, "VALIDATION_ERROR", "skuId must be digits") end
    local st, kind, detail = store.state(ctx.redis, sku)
    if not st then
      if kind == "unavailable" then return answers.unavailable(rules, detail) end
      return answers.internal()
    end
    if st.code ~= "OK" then return answers.refusal(404, "QUEUE_NOT_FOUND", "this SKU has no queued sale") end
    local v = M.view(st)
    v.skuId = sku
    return 200, v
  end)

  app:admin("POST", "/admin/v1/sales/:skuId/queue", function(req, ctx)
    local sku = validate.id_string(req.params.skuId, "skuId")
    if not sku then return answers.refusal(400, "VALIDATION_ERROR", "skuId must be digits") end
    local body, jerr = req:json()
    if not body then return answers.refusal(400, "INVALID_JSON", jerr) end
    local rate, verr = validate.admit_rate(type(body) == "table" and body.admitPerSec)
    if not rate then return answers.refusal(400, "VALIDATION_ERROR", verr.message, { field = verr.field }) end
    local a, kind, detail = store.rate(ctx.redis, sku, rate)
    if not a then
      if kind == "unavailable" then return answers.unavailable(rules, detail) end
      return answers.internal()
    end
    if a.code ~= "OK" then return answers.refusal(404, "QUEUE_NOT_FOUND", "this SKU has no queued sale") end
    ctx.log.info("queue rate set", { sku = sku, admit_per_sec = rate, request_id = req.id })
    local v = M.stats(ctx.redis, sku) or { admitPerSec = rate }
    v.skuId = sku
    return 200, v
  end)
end

return M
