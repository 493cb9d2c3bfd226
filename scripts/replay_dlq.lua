-- flashhost --run scripts/replay_dlq.lua [--dry-run] [--max N]   (or scripts/replay-dlq)
-- Puts dead letters back: every message of `order-dead-letter` not replayed yet
-- is produced again to the topic it came from (header source_topic, else
-- `reservations`) with its key and value, then its offset is committed, so a
-- second run replays nothing twice.  Stops at the first dead letter newer than
-- the run itself, or when the topic has been idle for 2 s.
-- Fix the cause first (a schema change, a bug): a message that fails again
-- comes back to the dead-letter topic with the new error.
local kafka = require "flashhost.kafka"

local dry, max = false, math.huge
local args = { ... }
local i = 1
while args[i] do
  if args[i] == "--dry-run" then dry = true
  elseif args[i] == "--max" then i = i + 1; max = tonumber(args[i]) or error("--max needs a number")
  else io.stderr:write("usage: replay-dlq [--dry-run] [--max N]\n") os.exit(64) end
  i = i + 1
end

local brokers = os.getenv("KAFKA_BROKERS") or "127.0.0.1:9092"
local consumer = kafka.consumer { brokers = brokers, group = "dlq-replay", topics = { "order-dead-letter" } }
local producer = kafka.producer { brokers = brokers }
local replayed, idle_polls = 0, 0
local core = require "flashhost.core"
local started = core.now()
local deadline = started + 120000 -- joining the group, then at most this long
-- Only what was dead before this run: a replayed message that fails again
-- comes back as a new dead letter, and must not be chased.
local caught_up = false

while not caught_up and replayed < max and idle_polls < 10 and core.now() < deadline do
  local msgs, err = consumer:poll(math.min(100, max - replayed), 200)
  if not msgs then io.stderr:write("replay-dlq: ", tostring(err), "\n") os.exit(2) end
  if #msgs == 0 then
    -- idle only counts once partitions are assigned: joining takes seconds
    local assigned = consumer:assignment()
    if assigned and next(assigned) then idle_polls = idle_polls + 1 end
  else
    idle_polls = 0
    local done = {}
    for _, m in ipairs(msgs) do
      if (m.timestamp or 0) >= started then
        caught_up = true
        break
      end
      done[#done + 1] = m
      local topic = m.headers and m.headers.source_topic or "reservations"
      print(("%s offset %d key %s -> %s (error was: %s)"):format(m.topic, m.offset, tostring(m.key), topic,
        m.headers and m.headers.error or "?"))
      if not dry then
        local ok, perr = producer:produce(topic, { key = m.key, value = m.value,
          headers = { trace_id = m.headers and m.headers.trace_id or "", replayed_from = "order-dead-letter" } })
        if not ok then io.stderr:write("replay-dlq: produce failed: ", tostring(perr), "\n") os.exit(2) end
      end
      replayed = replayed + 1
    end
    -- commit what was replayed; a newer message stays for a later run
    if not dry and #done > 0 then assert(consumer:commit(done)) end
  end
end
print(("%s %d dead letter(s)"):format(dry and "would replay" or "replayed", replayed))
consumer:close()
producer:close()
