-- flashhost --run scripts/topics.lua
-- Creates the Kafka topics of the system on $KAFKA_BROKERS (default
-- 127.0.0.1:9092).  Safe to run again: a topic that exists is left as it is
-- (a different partition count is reported, never changed: that would move
-- keys to other partitions and break per-order ordering).
-- KAFKA_REPLICATION (default 1) sets the replication factor of new topics;
-- use 3 on a real cluster.  Exits 0 when every topic is there.
local kafka = require "flashhost.kafka"
local timer = require "flashhost.timer"

local DAY = 24 * 3600 * 1000
local brokers = os.getenv("KAFKA_BROKERS")
if not brokers or brokers == "" then brokers = "127.0.0.1:9092" end
local replication = tonumber(os.getenv("KAFKA_REPLICATION") or "") or 1
local min_isr = replication >= 3 and "2" or "1"

-- Event topics keep a week: long enough to rebuild MySQL from them after an
-- incident, short enough to bound the disk.  Dead letters wait a month for an
-- operator to fix the cause and replay them (scripts/replay_dlq.lua).
local function config(retention_ms)
  return {
    ["cleanup.policy"] = "delete",
    ["retention.ms"] = tostring(retention_ms),
    ["min.insync.replicas"] = min_isr,
    -- the producers are idempotent with acks=all; never fall back to a replica
    -- that missed writes
    ["unclean.leader.election.enable"] = "false",
  }
end

local TOPICS = {
  { name = "reservations", partitions = 6, config = config(7 * DAY) },
  { name = "orders", partitions = 6, config = config(7 * DAY) },
  { name = "payments", partitions = 3, config = config(7 * DAY) },
  { name = "order-dead-letter", partitions = 1, config = config(30 * DAY) },
}
for _, t in ipairs(TOPICS) do t.replication = replication end

local ok, status = kafka.create_topics(brokers, TOPICS, { timeout_ms = 30000 })
if not ok then
  io.stderr:write(("topics: cannot create topics on %s: %s\n"):format(brokers, tostring(status)))
  os.exit(1)
end

-- A new topic can take a moment to show up in the metadata.
local md, err
for _ = 1, 10 do
  md, err = kafka.metadata(brokers, 10000)
  local all = md ~= nil
  for _, t in ipairs(TOPICS) do all = all and md.topics[t.name] ~= nil end
  if all then break end
  timer.sleep(500)
end
if not md then
  io.stderr:write(("topics: created, but cannot read them back: %s\n"):format(tostring(err)))
  os.exit(1)
end
local rc = 0
for _, t in ipairs(TOPICS) do
  local have = md.topics[t.name]
  local note = ""
  if not have then
    note, rc = " (not visible in the metadata yet)", 1
  elseif have ~= t.partitions then
    note = (" (has %d partitions, %d wanted: left as it is)"):format(have, t.partitions)
  end
  print(("topics: %-18s %-7s %d partitions%s"):format(t.name, status[t.name], have or t.partitions, note))
end
os.exit(rc)
