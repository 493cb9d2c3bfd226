-- flashhost.kafka: Kafka for tasks — an idempotent producer, a group
-- consumer with explicit commits, and topic administration.
--
--   local kafka = require "flashhost.kafka"
--   local p = kafka.producer{ brokers = "127.0.0.1:9092", config = { ["linger.ms"] = "5" } }
--   local ok, err = p:produce("orders", { key = id, value = json, headers = { trace_id = t } })
--   local ok_count, errors = p:produce_batch("orders", msgs)    -- errors[i] for msgs[i]
--
--   local c = kafka.consumer{ group = "order-workers", topics = { "reservations" } }
--   local msgs, err = c:poll(100, 1000)     -- { {topic, partition, offset, key, value, headers, timestamp}, ... }
--   ...make the work durable...
--   local ok, err = c:commit(msgs)
--
-- Every call that talks to Kafka yields the calling task and never blocks the
-- loop.  Failures of the outside world return nil, "reason" with librdkafka's
-- error text (e.g. "Local: Message timed out"); misuse raises.
--
-- brokers: "host:port,host:port" or a list; default $KAFKA_BROKERS, else
-- 127.0.0.1:9092.  `config` passes librdkafka properties through; the
-- properties the guarantees rest on (idempotence, acks=all, manual offsets)
-- are set last and cannot be overridden.
local drv = require "flashhost.kafka.driver"
local timer = require "flashhost.timer"
local core = require "flashhost.core"

local M = {}
M.DEFAULT_BROKERS = "127.0.0.1:9092"
M.librdkafka_version = drv.version()

-- How often a send retries while librdkafka's queue is full.
local QUEUE_FULL_RETRY_MS = 10

local function brokers_of(b, level)
  if b == nil then
    local env = os.getenv("KAFKA_BROKERS")
    return (env and env ~= "") and env or M.DEFAULT_BROKERS
  end
  if type(b) == "table" then return table.concat(b, ",") end
  if type(b) ~= "string" then error("brokers must be a string or a list of strings", level + 1) end
  return b
end

-- Copies `user` over `base`; values become strings (booleans too).
local function merge_conf(base, user, level)
  if user == nil then return base end
  if type(user) ~= "table" then error("config must be a table", level + 1) end
  for k, v in pairs(user) do
    if type(k) ~= "string" then error("config keys must be strings", level + 1) end
    local t = type(v)
    if t ~= "string" and t ~= "number" and t ~= "boolean" then
      error("config " .. k .. " must be a string, a number or a boolean", level + 1)
    end
    base[k] = tostring(v)
  end
  return base
end

local function check_opts(opts, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error("options must be a table", level + 1) end
  return opts
end

-- ---------------------------------------------------------------- producer

local Producer = {}
Producer.__index = Producer

-- kafka.producer{ brokers, config, message_timeout_ms = 30000,
--                 queue_full_wait_ms = 1000, close_timeout_ms = 5000, client_id }
-- -> producer | nil, err
-- message_timeout_ms bounds how long a message may wait for the brokers
-- (an outage shorter than that loses nothing); a produce waits at most that.
function M.producer(opts)
  opts = check_opts(opts, 2)
  local conf = merge_conf({
    ["bootstrap.servers"] = brokers_of(opts.brokers, 2),
    ["client.id"] = opts.client_id or "flashhost",
    ["linger.ms"] = "5",
    ["message.timeout.ms"] = tostring(opts.message_timeout_ms or 30000),
  }, opts.config, 2)
  conf["enable.idempotence"] = "true"
  conf["acks"] = "all"
  local p, err = drv.producer(conf, { close_timeout_ms = opts.close_timeout_ms })
  if not p then return nil, err end
  return setmetatable({ _p = p, _queue_full_wait_ms = opts.queue_full_wait_ms or 1000 }, Producer)
end

local BYTES = { string = true, number = true, ["nil"] = true }

-- Raises unless m is a message the driver will take.
local function check_msg(m, level)
  if type(m) ~= "table" then error("a message must be a table { key, value, headers, partition }", level + 1) end
  if not BYTES[type(m.key)] then error("message key must be a string", level + 1) end
  if not BYTES[type(m.value)] then error("message value must be a string", level + 1) end
  if m.partition ~= nil and type(m.partition) ~= "number" then error("message partition must be a number", level + 1) end
  if m.headers ~= nil then
    if type(m.headers) ~= "table" then error("message headers must be a table", level + 1) end
    for k, v in pairs(m.headers) do
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
        error("message headers must map names to strings", level + 1)
      end
    end
  end
  return m
end

-- p:produce_batch(topic, msgs) -> ok_count, errors, kinds
-- Queues every message, then yields once until all delivery reports are in.
-- errors[i] (sparse) says why msgs[i] was not delivered, kinds[i] its kind.
function Producer:produce_batch(topic, msgs)
  if type(topic) ~= "string" then error("topic must be a string", 2) end
  if type(msgs) ~= "table" then error("messages must be a list", 2) end
  local n = #msgs
  local errors, kinds = {}, {}
  if n == 0 then return 0, errors, kinds end
  -- Misuse is found before anything is sent: a batch goes out whole or not at all.
  for i = 1, n do check_msg(msgs[i], 2) end
  local b = self._p:batch(n)
  local deadline
  for i = 1, n do
    local m = msgs[i]
    local ok, err, kind = b:send(i, topic, m.key, m.value, m.headers, m.partition)
    -- A full queue empties as delivery reports come in: wait a little, but
    -- only queue_full_wait_ms in all for one batch.
    while not ok and kind == "busy" do
      deadline = deadline or core.mono() + self._queue_full_wait_ms
      if core.mono() >= deadline or not timer.sleep(QUEUE_FULL_RETRY_MS) then break end
      ok, err, kind = b:send(i, topic, m.key, m.value, m.headers, m.partition)
    end
    if not ok then errors[i], kinds[i] = err, kind end
  end
  local ok_count, report_errors, report_kinds = b:wait()
  for i, e in pairs(report_errors) do errors[i], kinds[i] = e, report_kinds[i] end
  return ok_count, errors, kinds
end

-- p:produce(topic, { key, value, headers = { name = value }, partition })
-- -> true | nil, err, kind   (yields until the delivery report)
function Producer:produce(topic, msg)
  check_msg(msg, 2)
  if type(topic) ~= "string" then error("topic must be a string", 2) end
  local ok_count, errors, kinds = self:produce_batch(topic, { msg })
  if ok_count == 1 then return true end
  return nil, errors[1] or "not delivered", kinds[1] or "closed"
end

-- p:flush(timeout_ms = 10000) -> true | nil, "timeout", "timeout"
function Producer:flush(timeout_ms)
  return self._p:flush(timeout_ms or 10000)
end

-- p:outq_len() -> messages not yet reported
function Producer:outq_len()
  return self._p:outq_len()
end

-- p:close(timeout_ms = 5000) -> true | nil, err
-- Flushes for at most timeout_ms, then purges what is left (its produce
-- calls answer with an error) and destroys the handle.
function Producer:close(timeout_ms)
  if self._closed then return true end
  self._closed = true
  self._p:flush(timeout_ms or 5000)
  return self._p:close()
end

-- ---------------------------------------------------------------- consumer

local Consumer = {}
Consumer.__index = Consumer

-- kafka.consumer{ brokers, group, topics = { ... }, config, max_buffered = 2000,
--                 close_timeout_ms = 10000, client_id, instance_id } -> consumer | nil, err
-- Starts from the earliest offset when the group has none committed.
-- instance_id makes the consumer a static member of its group (KIP-345): a
-- consumer that comes back under the same id within session.timeout.ms gets
-- its partitions back at once, with no rebalance.  The price: a static member
-- does not leave the group when it closes, so a consumer that stops for good
-- holds its partitions until its session times out.  Two live consumers with
-- one id fence each other: the id must be unique in the group.
function M.consumer(opts)
  opts = check_opts(opts, 2)
  if type(opts.group) ~= "string" or opts.group == "" then error("consumer needs a group", 2) end
  if type(opts.topics) ~= "table" or #opts.topics == 0 then error("consumer needs topics = { ... }", 2) end
  if opts.instance_id ~= nil and (type(opts.instance_id) ~= "string" or opts.instance_id == "") then
    error("instance_id must be a non-empty string", 2)
  end
  local conf = merge_conf({
    ["bootstrap.servers"] = brokers_of(opts.brokers, 2),
    ["group.id"] = opts.group,
    ["client.id"] = opts.client_id or "flashhost",
    ["auto.offset.reset"] = "earliest",
  }, opts.config, 2)
  if opts.instance_id then conf["group.instance.id"] = opts.instance_id end
  -- The caller commits after its work is durable (at-least-once).
  conf["enable.auto.commit"] = "false"
  conf["enable.auto.offset.store"] = "false"
  local c, err = drv.consumer(conf, opts.topics,
    { max_buffered = opts.max_buffered, close_timeout_ms = opts.close_timeout_ms })
  if not c then return nil, err end
  return setmetatable({ _c = c }, Consumer)
end

-- c:poll(max = 100, timeout_ms = 1000) -> msgs | nil, err
-- Yields until at least one message is there or the timeout (then {}).
function Consumer:poll(max, timeout_ms)
  return self._c:poll(max or 100, timeout_ms or 1000)
end

-- c:commit(msgs) -> true | nil, err
-- Commits, per partition, the highest offset among msgs + 1; yields until
-- the group coordinator answered.  Commit in the order messages were polled.
function Consumer:commit(msgs)
  if type(msgs) ~= "table" then error("commit expects a list of polled messages", 2) end
  local high = {}
  for _, m in ipairs(msgs) do
    if type(m) ~= "table" or type(m.topic) ~= "string" or type(m.partition) ~= "number"
        or type(m.offset) ~= "number" then
      error("commit expects messages returned by poll", 2)
    end
    local parts = high[m.topic]
    if not parts then parts = {} high[m.topic] = parts end
    if not parts[m.partition] or m.offset > parts[m.partition] then parts[m.partition] = m.offset end
  end
  local list = {}
  for topic, parts in pairs(high) do
    for partition, offset in pairs(parts) do list[#list + 1] = { topic, partition, offset + 1 } end
  end
  return self._c:commit(list)
end

-- c:assignment() -> { {topic = , partition = }, ... }
function Consumer:assignment()
  return self._c:assignment()
end

-- c:lag() -> { [topic] = messages behind } over this member's partitions, from
-- what librdkafka last saw (no broker round trip).
function Consumer:lag()
  return self._c:lag()
end

-- c:close() -> true: leaves the group (bounded; a static member does not
-- leave) and destroys the handle.
function Consumer:close()
  return self._c:close()
end

-- ---------------------------------------------------------------- admin

-- kafka.create_topics(brokers, { {name, partitions, replication = 1, config = {}}, ... },
--                     { timeout_ms = 15000 }) -> true, { name = "created" | "exists" } | nil, err
-- A topic that already exists counts as success (its settings are not changed).
function M.create_topics(brokers, topics, opts)
  opts = check_opts(opts, 2)
  if type(topics) ~= "table" or #topics == 0 then error("create_topics needs a list of topics", 2) end
  local list = {}
  for i, t in ipairs(topics) do
    if type(t) ~= "table" or type(t.name) ~= "string" then error("each topic needs a name", 2) end
    list[i] = {
      name = t.name,
      partitions = t.partitions or 1,
      replication = t.replication or 1,
      config = t.config and merge_conf({}, t.config, 2) or nil,
    }
  end
  local conf = { ["bootstrap.servers"] = brokers_of(brokers, 2), ["client.id"] = "flashhost-admin" }
  local res, err, kind = drv.create_topics(conf, list, opts.timeout_ms or 15000)
  if not res then return nil, err, kind end
  local status, failed = {}, {}
  for _, r in ipairs(res) do
    if not r.code then
      status[r.name] = "created"
    elseif r.code == "TOPIC_ALREADY_EXISTS" then
      status[r.name] = "exists"
    else
      failed[#failed + 1] = r.name .. ": " .. r.err
      failed.kind = failed.kind or r.code
    end
  end
  -- the first failed topic's error name is the kind
  if #failed > 0 then return nil, table.concat(failed, "; "), failed.kind end
  return true, status
end

-- kafka.metadata(brokers, timeout_ms = 5000)
-- -> { brokers = n, topics = { name = partitions } } | nil, err
function M.metadata(brokers, timeout_ms)
  local conf = { ["bootstrap.servers"] = brokers_of(brokers, 2), ["client.id"] = "flashhost-admin" }
  return drv.metadata(conf, timeout_ms or 5000)
end

return M
