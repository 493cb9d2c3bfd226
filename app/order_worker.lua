-- The order worker: `flashhost app/order_worker.lua`.
--
-- Consumes `reservations`, applies each batch to MySQL in one transaction
-- (idempotent upserts, lib/order_events.lua), publishes the resulting order
-- changes on `orders` (and confirmations on `payments`), and only then
-- commits the Kafka offsets.  A crash anywhere before the commit means the
-- batch comes again and changes nothing the second time.
--
-- While MySQL is down the batch is retried with backoff and nothing is
-- committed; a message that fails on its own (malformed, or refused by the
-- database) is retried a bounded number of times and then sent to
-- `order-dead-letter` with the reason, so one bad message never stops the line.
local application = require "flashhost.app"
local core = require "flashhost.core"
local timer = require "flashhost.timer"
local kafka = require "flashhost.kafka"
local mysql = require "flashhost.mysql"
local services = require "lib.services"
local events = require "lib.order_events"

local app = application.new("order_worker")

local BATCH = tonumber(os.getenv("ORDER_BATCH")) or 500
local MAX_ATTEMPTS = tonumber(os.getenv("ORDER_MAX_ATTEMPTS")) or 3
local DLQ = "order-dead-letter"

services.install(app, { required = { mysql = true, kafka = true } })

local function brokers() return os.getenv("KAFKA_BROKERS") or "127.0.0.1:9092" end

-- Static group membership: the same worker of the same node on the same host
-- asks for the same group.instance.id, so a worker restarted after a crash
-- (or a stop) takes its partitions back at once instead of waiting for the
-- dead member's session to time out.  A worker gone for good (scale-down)
-- hands its partitions over after SESSION_MS.  Hostname and NODE_ID both:
-- two live workers with one id would fence each other.
local SESSION_MS = tonumber(os.getenv("ORDER_SESSION_TIMEOUT_MS")) or 10000

local function instance_id(group)
  local info = core.info()
  return ("%s.%s.%s.n%d.w%d"):format(group, app.name, info.hostname or "host", info.node_id, info.worker_id)
end

-- Events per multi-row statement: a polled batch of purchase-batch messages
-- holds thousands of events, more than one statement's parameters (and a Lua
-- unpack) can carry.
local CHUNK = 500

-- Applies decoded events in one transaction: true | nil, err, kind
local function apply(ctx, evs)
  return ctx.db:transaction(function(tx)
    for first = 1, #evs, CHUNK do
      local part = #evs <= CHUNK and evs or { unpack(evs, first, math.min(#evs, first + CHUNK - 1)) }
      for _, st in ipairs(events.statements(part)) do
        local res, err, kind = tx:query(st[1], unpack(st[2]))
        if not res then return nil, err, kind end
      end
    end
    return true
  end)
end

-- The database is not there (down, restarting, too slow, every connection
-- busy): retry the batch later.  Any other kind is the server refusing the
-- statement (ER_DUP_ENTRY, ER_DATA_TOO_LONG, ...): look for the poison.
-- A lock wait that timed out is the server too busy, not a bad event.
local UNAVAILABLE = { timeout = true, closed = true, refused = true, busy = true, not_connected = true,
  ER_LOCK_WAIT_TIMEOUT = true }
local function connection_error(kind)
  return UNAVAILABLE[kind] == true
end

local function dlq_message(msg, reason)
  return {
    key = msg.key, value = msg.value,
    headers = { error = tostring(reason):sub(1, 500), source_topic = msg.topic,
      source_partition = tostring(msg.partition), source_offset = tostring(msg.offset),
      trace_id = msg.headers and msg.headers.trace_id or "" },
  }
end

-- Dead-letters { {msg =, why =}, ... } in one batch; true once all are
-- delivered, nil when the process is stopping first.
local function dead_letter_all(ctx, poison)
  while #poison > 0 do
    local out = {}
    for i, p in ipairs(poison) do out[i] = dlq_message(p.msg, p.why) end
    local _, errs = ctx.producer:produce_batch(DLQ, out)
    local left = {}
    for i, p in ipairs(poison) do
      if errs and errs[i] then
        left[#left + 1] = p
      else
        ctx.metrics.raw.dead:inc()
        ctx.log.error("message sent to the dead-letter topic", { reason = p.why, offset = p.msg.offset,
          partition = p.msg.partition, trace_id = p.msg.headers and p.msg.headers.trace_id })
      end
    end
    poison = left
    if #poison > 0 and not timer.sleep(1000) then return nil end
  end
  return true
end

local function dead_letter(ctx, msg, reason)
  return dead_letter_all(ctx, { { msg = msg, why = reason } })
end

-- Applies the events of one message alone (used to find the poison in a
-- failing batch): each event on its own, so the good ones of a message land;
-- a message with an event the database keeps refusing is dead-lettered once,
-- whole (its other events, already applied, change nothing when replayed).
-- Returns true when done, nil, err when the database went away meanwhile.
local function apply_one(ctx, msg, evs)
  local refused
  for _, ev in ipairs(evs) do
    for attempt = 1, MAX_ATTEMPTS do
      local ok, err, kind = apply(ctx, { ev })
      if ok then break end
      if connection_error(kind) then return nil, err end
      ctx.log.warn("event refused by the database", { attempt = attempt, err = err, event = ev.eventId })
      if attempt == MAX_ATTEMPTS then refused = err break end
      timer.sleep(100 * attempt)
    end
  end
  if refused then return dead_letter(ctx, msg, refused) end
  return true
end

local function publish(ctx, evs)
  local out, pays = {}, {}
  for _, e in ipairs(evs) do
    out[#out + 1] = events.order_message(e)
    if e.type == "confirmed" then pays[#pays + 1] = events.payment_message(e) end
  end
  local n, errs = ctx.producer:produce_batch("orders", out)
  if n ~= #out then return nil, "orders topic: " .. tostring(select(2, next(errs or {}))) end
  if #pays > 0 then
    n, errs = ctx.producer:produce_batch("payments", pays)
    if n ~= #pays then return nil, "payments topic: " .. tostring(select(2, next(errs or {}))) end
  end
  return true
end

-- Handles one polled batch until it is durable; returns true when the
-- offsets may be committed, nil when the process is stopping.
local function handle(ctx, msgs)
  local decoded, poison, plain = {}, {}, {}
  for _, msg in ipairs(msgs) do
    local evs, why = events.decode_all(msg.value)
    if evs then
      local trace = msg.headers and msg.headers.trace_id
      for _, ev in ipairs(evs) do
        ev.traceId = ev.traceId or trace
        plain[#plain + 1] = ev
      end
      decoded[#decoded + 1] = { msg = msg, evs = evs }
    else
      poison[#poison + 1] = { msg = msg, why = why }
    end
  end
  if not dead_letter_all(ctx, poison) then return nil end

  local backoff = 100
  while true do
    local ok, err, kind = apply(ctx, plain)
    if ok then break end
    if connection_error(kind) then
      -- MySQL is away: keep the batch, wait, try again (offsets stay uncommitted)
      ctx.log.warn("database unavailable; retrying the batch", { err = err, events = #plain, backoff_ms = backoff })
      if not timer.sleep(backoff) then return nil end
      backoff = math.min(backoff * 2, 5000)
    else
      -- something in the batch is refused: apply message by message to isolate it
      ctx.log.warn("batch refused; applying events one at a time", { err = err })
      for _, d in ipairs(decoded) do
        local one_ok, one_err = apply_one(ctx, d.msg, d.evs)
        while not one_ok do
          ctx.log.warn("waiting to apply event", { err = one_err })
          if not timer.sleep(backoff) then return nil end
          one_ok, one_err = apply_one(ctx, d.msg, d.evs)
        end
      end
      break
    end
  end
  local applied = {}
  for _, e in ipairs(plain) do applied[e.type] = (applied[e.type] or 0) + 1 end
  for t, n in pairs(applied) do ctx.metrics.raw.events:inc({ type = t, outcome = "applied" }, n) end
  -- the purchase request's id travels as trace_id: grep one id across every app's logs
  if core.log_enabled(0) then
    for _, e in ipairs(plain) do
      ctx.log.debug("event applied", { trace_id = e.traceId, event = e.eventId, order = e.orderId })
    end
  end

  local published, perr = publish(ctx, plain)
  while not published do
    ctx.log.warn("order events not published yet; retrying", { err = perr })
    if not timer.sleep(1000) then return nil end
    published, perr = publish(ctx, plain)
  end
  return true
end

local function consume(ctx)
  while not core.stopping() do
    local msgs, err, kind = ctx.consumer:poll(BATCH, 200)
    if not msgs and kind == "_FATAL" then
      -- librdkafka gives up on this handle for good, e.g. when another consumer
      -- joined under our group.instance.id and fenced us.  A new handle joins
      -- the group again (and fences that one in turn, if it is still there).
      ctx.log.error("kafka consumer failed for good; starting a new one", { err = err })
      ctx.consumer:close()
      ctx.consumer = nil
      while not ctx.consumer and timer.sleep(1000) do
        local c, cerr = ctx.new_consumer()
        if not c then ctx.log.error("cannot start a kafka consumer", { err = cerr }) end
        ctx.consumer = c
      end
      if not ctx.consumer then break end
    elseif not msgs then
      ctx.log.warn("poll failed", { err = err })
      if not timer.sleep(500) then break end
    elseif #msgs > 0 then
      if not handle(ctx, msgs) then break end
      local ok, cerr = ctx.consumer:commit(msgs)
      if not ok then ctx.log.warn("offset commit failed; the batch may be applied again (harmlessly)", { err = cerr }) end
    end
  end
  -- This task owns the clients: the generation drains once they are closed.
  if ctx.consumer then ctx.consumer:close() end
  ctx.producer:close()
  ctx.db:close()
end

-- consumer_lag: what this worker's partitions still hold, from librdkafka's
-- last fetch (no broker call); each worker owns other partitions, so the
-- workers' values add up.
app:every(1000, "consumer-lag", function(ctx)
  if core.stopping() or not ctx.consumer then return end
  for topic, n in pairs(ctx.consumer:lag() or {}) do
    ctx.metrics.raw.lag:set({ topic = topic }, n)
  end
end)

app:on_start(function(ctx)
  ctx.db = mysql.pool { database = services.database() }
  ctx.producer = kafka.producer { brokers = brokers() }
  local group = os.getenv("ORDER_GROUP") or "order-workers"
  ctx.new_consumer = function()
    return kafka.consumer {
      brokers = brokers(), group = group, topics = { "reservations" },
      instance_id = instance_id(group), config = { ["session.timeout.ms"] = SESSION_MS },
    }
  end
  ctx.consumer = ctx.new_consumer()
  ctx.dependencies = {
    mysql = function()
      local r, err = ctx.db:query("SELECT 1 AS ok")
      return r ~= nil, err
    end,
    kafka = function()
      local md, err = kafka.metadata(brokers(), 1000)
      return md ~= nil, err
    end,
  }
  core.spawn(consume, ctx)
end)

return app
