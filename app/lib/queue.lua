-- The waiting room of queued sales (public and admin routes).
--
--   POST /api/v1/flash/queue/:skuId/join {userId}   -> {ticket, state, position, ahead, ...}
--   GET  /api/v1/flash/queue/:skuId/status?ticket=  -> {ticket, state, ...}
--   GET  /queue/:skuId                              the waiting page
--   GET  /admin/v1/sales/:skuId/queue               the queue's figures
--   POST /admin/v1/sales/:skuId/queue {admitPerSec} a new pace, live
--
-- State lives in Redis (redis-lua/queue.lua); status polls are answered from
-- lib/queue_cache.lua's per-worker copy of the counters.  Tickets and tokens
-- are HMAC-signed with QUEUE_SECRET (lib/queue_token.lua): without it the
-- routes answer 503 and the admin API refuses to create a queued sale.
local core = require "flashhost.core"
local crypto = require "flashhost.crypto"
local validate = require "lib.validate"
local answers = require "lib.answers"
local store = require "lib.queue_store"
local qtoken = require "lib.queue_token"
local pace = require "lib.queue_pace"
local Cache = require "lib.queue_cache"
local page = require "lib.queue_page"

local M = {}

local refusal = answers.refusal

-- The signer from QUEUE_SECRET, or nil when it is not set.  A secret that is
-- set but too short raises: a weak key must not start serving.
function M.signer()
  local secret = os.getenv("QUEUE_SECRET")
  if not secret or secret == "" then return nil end
  return qtoken.new(secret, crypto)
end

local function unavailable(rules, detail) return answers.unavailable(rules, detail) end

local function no_secret()
  return refusal(503, "QUEUE_UNAVAILABLE", "the waiting room is not configured on this server (QUEUE_SECRET)")
end

local function ticket_of(query)
  return type(query) == "string" and query:match("^ticket=([^&]*)") or (query or ""):match("&ticket=([^&]*)")
end

-- How long a client should wait before polling again (Retry-After, seconds).
function M.poll_after(rules, view)
  local p = (rules.queue or {}).poll_sec or 2
  if view.state == "waiting" and view.etaSec and view.etaSec <= p then return 1 end
  if view.state == "waiting" and view.opensInSec then return math.max(1, math.min(p, view.opensInSec)) end
  return p
end

-- The answer for a ticket at `pos` (nil: in the pre-queue) given the counters.
function M.waiting_view(q, pos, now)
  if not pos then
    return { state = "waiting", preQueue = true, opensAt = q.startsAt,
      opensInSec = math.max(0, math.ceil((q.startsAt - now) / 1000)) }
  end
  local position = pos - q.serving
  local rate = q.measured > 0 and q.measured or q.rate
  return { state = "waiting", position = position, ahead = position - 1,
    etaSec = pace.eta_sec(position - 1, rate), admitPerSec = rate }
end

function M.routes(app, deps)
  local rules = deps.rules
  local signer
  local cache

  app:on_validate(function() signer = M.signer() end)
  app:on_start(function(ctx)
    local qr = rules.queue or {}
    cache = Cache.new {
      refresh_ms = qr.cache_ms or 250,
      fetch = function(sku) return store.state(ctx.redis, sku) end,
      fetch_order = function(sku) return store.order(ctx.redis, sku) end,
    }
    deps.queue_cache = cache
  end)

  -- Admitted: the token, signed here from the admission time Redis recorded
  -- (read once per ticket and worker; a client stops polling once admitted).
  local function admitted(ctx, sku, e, t, now)
    local a = e.admitted[t.seq]
    if not a then
      local kind, detail
      a, kind, detail = store.ticket(ctx.redis, sku, t.seq)
      if not a then return nil, kind, detail end
      if a.code ~= "OK" then return { state = "waiting", position = 0, ahead = 0, etaSec = 1 } end
      e.admitted[t.seq] = a
    end
    if a.state == "expired" or now >= a.expiresAt then
      return { state = "expired", message = "the admission was not used in time; the place went to the next in line" }
    end
    return { state = "admitted", token = signer.token(sku, t.user, t.gen, t.seq, a.expiresAt),
      expiresAt = a.expiresAt, used = a.state == "used" or nil }
  end

  -- The view of ticket t from the cached counters: -> view | nil, kind, detail
  local function view(ctx, sku, t, now)
    local e, kind, detail = cache:get(sku, now)
    if not e then return nil, kind, detail end
    local q = e.q
    if q.code ~= "OK" then return q end
    if t.gen ~= q.gen or t.seq > q.tail then
      return { state = "expired", message = "this ticket belongs to an earlier sale" }
    end
    if q.soldOut then return { state = "sold_out" } end
    local pos = Cache.position(e, t.seq)
    if pos and pos <= q.serving then return admitted(ctx, sku, e, t, now) end
    return M.waiting_view(q, pos, now)
  end

  local function not_found(code)
    if code == "NO_SALE" then return refusal(404, "SKU_NOT_FOUND", (rules.messages or {}).unknown_sku or "unknown SKU") end
    return refusal(404, "QUEUE_NOT_FOUND", "this sale has no waiting room")
  end

  -- One headers table per Retry-After value: the hot path allocates none
  -- (the runtime only sets X-Request-Id on it before sending).
  local header_sets = {}
  local function headers(secs)
    local h = header_sets[secs]
    if not h then
      h = { ["Retry-After"] = tostring(secs), ["Cache-Control"] = "no-store" }
      header_sets[secs] = h
    end
    return h
  end

  local function answer(ticket, v)
    local secs = M.poll_after(rules, v)
    if v.state == "waiting" and v.position then
      -- most polls: the JSON written directly, as cjson would, without a table
      return 200, ('{"success":true,"ticket":"%s","state":"waiting","position":%d,"ahead":%d,%s"admitPerSec":%.14g}')
        :format(ticket, v.position, v.ahead, v.etaSec and ('"etaSec":%d,'):format(v.etaSec) or "", v.admitPerSec),
        headers(secs)
    end
    v.success, v.ticket = true, ticket
    return 200, v, headers(secs)
  end

  -- Tickets already checked in this worker (a waiting browser sends the same
  -- one every few seconds): their signature is verified once.  Bounded: the
  -- map starts afresh past MAX_TICKETS entries.
  local MAX_TICKETS = 200000
  local checked, n_checked = {}, 0
  local function parse_ticket(sku, text)
    local per = checked[sku]
    local t = per and per[text]
    if t then return t end
    t = signer.parse_ticket(sku, text)
    if not t then return nil end
    if n_checked >= MAX_TICKETS then checked, n_checked = {}, 0 end
    per = checked[sku]
    if not per then per = {}; checked[sku] = per end
    per[text], n_checked = t, n_checked + 1
    return t
  end

  app:post("/api/v1/flash/queue/:skuId/join", function(req, ctx)
    local sku = validate.id_string(req.params.skuId, "skuId")
    if not sku then return refusal(400, "VALIDATION_ERROR", "skuId must be digits", { field = "skuId" }) end
    local body, jerr = req:json()
    if not body then return refusal(400, "INVALID_JSON", jerr) end
    if type(body) ~= "table" or body[1] ~= nil then return refusal(400, "VALIDATION_ERROR", "body must be a JSON object", { field = "body" }) end
    local user, verr = validate.id_string(body.userId, "userId")
    if not user then return refusal(400, "VALIDATION_ERROR", verr.message, { field = "userId" }) end
    local s, b = deps.auth(req, user)
    if s then return s, b end
    if not signer then return no_secret() end
    local a, kind, detail = store.join(ctx.redis, sku, user)
    if not a then
      if kind == "unavailable" then return unavailable(rules, detail) end
      return answers.internal()
    end
    if a.code == "NO_SALE" or a.code == "NO_QUEUE" then return not_found(a.code) end
    if a.code == "NOT_OPEN" then
      local wait = math.max(1, math.ceil((a.opensAt - a.now) / 1000))
      return refusal(425, "QUEUE_NOT_OPEN", "the waiting room opens at opensAt", { opensAt = a.opensAt },
        { ["Retry-After"] = tostring(wait) })
    end
    if a.code == "ENDED" then return refusal(410, "SALE_ENDED", (rules.messages or {}).sale_ended or "sale ended") end
    if a.code == "SOLD_OUT" then return 200, { success = true, state = "sold_out" }, { ["Retry-After"] = "60" } end
    local ticket = signer.ticket(sku, a.gen, a.seq, user)
    local t = { gen = a.gen, seq = a.seq, user = user }
    local now = core.now()
    local v
    if a.pos > 0 and a.pos <= a.serving then
      local e
      e, kind, detail = cache:get(sku, now)
      if not e then return unavailable(rules, detail) end
      v, kind, detail = admitted(ctx, sku, e, t, now)
      if not v then return unavailable(rules, detail) end
    else
      local q = { serving = a.serving, startsAt = a.startsAt, rate = 0, measured = 0 }
      local e = cache:get(sku, now) -- the measured rate, if known; a failure only loses the estimate
      if e and e.q.code == "OK" then q.rate, q.measured = e.q.rate, e.q.measured end
      v = M.waiting_view(q, a.pos > 0 and a.pos or nil, now)
    end
    return answer(ticket, v)
  end)

  app:get("/api/v1/flash/queue/:skuId/status", function(req, ctx)
    local sku = validate.id_string(req.params.skuId, "skuId")
    if not sku then return refusal(400, "VALIDATION_ERROR", "skuId must be digits", { field = "skuId" }) end
    if not signer then return no_secret() end
    local text = ticket_of(req.query)
    local t = text and parse_ticket(sku, text)
    if not t then
      return refusal(400, "QUEUE_TICKET_INVALID", "not a ticket of this SKU's waiting room", { field = "ticket" })
    end
    local v, kind, detail = view(ctx, sku, t, core.now())
    if not v then
      if kind == "unavailable" then return unavailable(rules, detail) end
      return answers.internal()
    end
    if v.code then return not_found(v.code) end
    return answer(text, v)
  end)

  app:get("/queue/:skuId", function(req)
    if not validate.id_string(req.params.skuId, "skuId") then
      return 404, "no such waiting room\n", { ["Content-Type"] = "text/plain; charset=utf-8" }
    end
    return 200, page, { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-store" }
  end)

  -- The purchase route's check of a queued sale's token.  -> nil (go on:
  -- p.idempotencyKey and p.queueTicket set when a token was given) | status, body
  function deps.check_token(p, body, now)
    local text = body.queueToken
    if text == nil then return nil end -- Redis refuses it if the sale is queued
    if not signer then return no_secret() end
    local t, code = signer.parse_token(p.skuId, p.userId, text, now)
    if not t then return refusal(403, code, "this queue token is not valid for this user and SKU, or it expired") end
    p.idempotencyKey = qtoken.idempotency_key(t)
    p.queueTicket = t
    return nil
  end

  -- After a purchase with a token: Redis learns the token was used (for the
  -- figures; the keeper also tells used from unused by the idempotency key).
  function deps.token_used(ctx, p)
    core.spawn(store.used, ctx.redis, p.skuId, p.queueTicket.seq)
  end

  deps.queue_ready = function() return signer ~= nil end
  require("lib.queue_admin").routes(app, deps)
end

return M
