-- The outbox relay: moves every SKU's outbox stream to the `reservations`
-- topic.  An entry is acknowledged (XACK + XDEL) only after Kafka's delivery
-- report says it is stored, so an event survives a crash of this process and
-- a Kafka outage: undelivered entries stay in the stream and in the consumer
-- group's pending list, and are sent again.
--
-- Every worker of every purchase node runs one relay; they share the work
-- through one Redis consumer group per stream ("relay").  A relay's consumer
-- name is stable (node + worker index), so after a restart it first re-sends
-- its own pending entries; entries left pending by a consumer that never came
-- back are claimed after `claim_idle_ms`.
local core = require "flashhost.core"
local timer = require "flashhost.timer"
local cjson = require "cjson.safe"
local stock = require "lib.stock"

local M = {}
M.GROUP = "relay"
M.TOPIC = "reservations"

local function fields_to_table(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- Reads entries of one stream: `id` is ">" (new) or "0" (our pending ones).
local function read(r, stream, consumer, id, count)
  local res, err = r:call("XREADGROUP", "GROUP", M.GROUP, consumer, "COUNT", count, "STREAMS", stream, id)
  if res == false and tostring(err):find("NOGROUP", 1, true) then
    r:call("XGROUP", "CREATE", stream, M.GROUP, "0", "MKSTREAM")
    return {}
  end
  if type(res) ~= "table" then return nil, err end
  local entries = res[1] and res[1][2] or {}
  local out = {}
  for _, e in ipairs(entries) do
    if type(e[2]) == "table" then out[#out + 1] = { id = e[1], fields = fields_to_table(e[2]) } end
  end
  return out
end

-- The Kafka message of one outbox entry.  An entry of a purchase_batch call
-- carries its reservations in one text, `events` (what their events share,
-- and a row each: redis-lua/README.md); that text goes out
-- as it is, one message for the whole batch, so the broker, the order worker
-- and this relay pay per batch what they used to pay per ticket.  The order
-- worker reads either form (lib/order_events.lua decode_all); a message that
-- does not decode reaches the dead letters whole.  Single events (confirm,
-- cancel, expire) stay one message each, keyed by their order.  Any event may
-- arrive before or after the others of its order: the worker's upserts make
-- the order of arrival irrelevant, so a batch may use the entry id as its key
-- and spread over the partitions.
local function message(entry)
  local f = entry.fields
  if f.events then
    return { key = entry.id, value = f.events,
      headers = { event_type = f.type or "reserved", event_id = "batch:" .. entry.id } }
  end
  return {
    key = f.orderId,
    value = cjson.encode(f),
    headers = { trace_id = f.traceId or "", event_id = f.eventId or "", event_type = f.type or "" },
  }
end

-- Sends entries, one message each, and acknowledges those delivered; returns
-- how many were delivered.  An undelivered entry stays pending and is sent
-- again: the order worker's upserts make a repeated event change nothing.
local function ship(ctx, stream, entries)
  if #entries == 0 then return 0 end
  local msgs = {}
  for i, entry in ipairs(entries) do msgs[i] = message(entry) end
  local t0 = core.mono()
  local ok_count, errors = ctx.producer:produce_batch(M.TOPIC, msgs)
  local elapsed = (core.mono() - t0) / 1000
  local acked = {}
  for i, entry in ipairs(entries) do
    if not (errors and errors[i]) then acked[#acked + 1] = entry.id end
  end
  if #acked > 0 then
    ctx.redis_relay:call("XACK", stream, M.GROUP, unpack(acked))
    ctx.redis_relay:call("XDEL", stream, unpack(acked))
    if ctx.metrics then ctx.metrics.raw.kafka:observe({ topic = M.TOPIC }, elapsed) end
  end
  if ok_count and ok_count < #msgs then
    local err
    for _, e in pairs(errors or {}) do err = e break end
    ctx.log.warn("outbox entries not delivered; they will be sent again",
      { stream = stream, failed = #msgs - ok_count, err = err })
  end
  return #acked
end

-- One pass over every SKU; returns how many entries moved.
function M.pass(ctx, state)
  local skus = ctx.redis_relay:call("SMEMBERS", stock.SKU_SET)
  if type(skus) ~= "table" then return 0 end
  local moved = 0
  for _, sku in ipairs(skus) do
    local stream = stock.prefix(sku) .. "outbox"
    -- after a restart, first what this consumer had read but not delivered
    local id = state.resumed[stream] and ">" or "0"
    local entries = read(ctx.redis_relay, stream, state.consumer, id, state.batch)
    if entries then
      if id == "0" and #entries < state.batch then state.resumed[stream] = true end
      moved = moved + ship(ctx, stream, entries)
    end
    if core.now() - (state.claimed[stream] or 0) > state.claim_idle_ms then
      state.claimed[stream] = core.now()
      local res = ctx.redis_relay:call("XAUTOCLAIM", stream, M.GROUP, state.consumer, state.claim_idle_ms, "0-0", "COUNT", state.batch)
      if type(res) == "table" and type(res[2]) == "table" and #res[2] > 0 then
        local claimed = {}
        for _, e in ipairs(res[2]) do
          if type(e[2]) == "table" then claimed[#claimed + 1] = { id = e[1], fields = fields_to_table(e[2]) } end
        end
        moved = moved + ship(ctx, stream, claimed)
      end
    end
  end
  return moved
end

-- Runs until the generation stops.  Idle passes sleep `idle_ms`.
function M.run(ctx, opts)
  opts = opts or {}
  local info = ctx.info
  local state = {
    consumer = ("node%d-w%d"):format(info.node_id, info.worker_id),
    batch = opts.batch or 500, claim_idle_ms = opts.claim_idle_ms or 30000,
    resumed = {}, claimed = {},
  }
  local idle_ms = opts.idle_ms or 20
  ctx.log.info("outbox relay started", { consumer = state.consumer })
  while not core.stopping() do
    local ok, moved = pcall(M.pass, ctx, state)
    if not ok then
      ctx.log.error("outbox relay pass failed", { err = moved })
      moved = 0
    end
    if moved == 0 and not timer.sleep(idle_ms) then break end
  end
end

return M
