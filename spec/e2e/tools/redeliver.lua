-- flashhost --run spec/e2e/tools/redeliver.lua SKU
-- Produces every `reservations` message of one SKU a second time, as a broker
-- redelivery would, and prints "redelivered N" (N events: a purchase batch's
-- message is a JSON array of them).  Reads the topic from the
-- start with a fresh consumer group; stops once it has been idle for 2 s.
local kafka = require "flashhost.kafka"
local cjson = require "cjson.safe"

local sku = assert(..., "usage: redeliver.lua SKU")
local brokers = os.getenv("KAFKA_BROKERS") or "127.0.0.1:9092"
local consumer = assert(kafka.consumer { brokers = brokers, topics = { "reservations" },
  group = ("redeliver-%s-%d"):format(sku, require("flashhost.core").now()) })
local producer = assert(kafka.producer { brokers = brokers })

local copies, events, idle, deadline = {}, 0, 0, require("flashhost.core").now() + 60000
while idle < 10 and require("flashhost.core").now() < deadline do
  local msgs = assert(consumer:poll(500, 200))
  -- idle only counts once partitions are assigned: joining the group takes a few seconds
  local assigned = consumer:assignment()
  if #msgs > 0 then idle = 0 elseif assigned and next(assigned) then idle = idle + 1 end
  for _, m in ipairs(msgs) do
    local v = cjson.decode(m.value)
    local evs = type(v) == "table" and (v[1] and v or { v }) or {}
    if evs[1] and evs[1].skuId == sku then
      copies[#copies + 1] = { key = m.key, value = m.value, headers = m.headers }
      events = events + #evs
    end
  end
end
local n, errs = 0, nil
if #copies > 0 then n, errs = producer:produce_batch("reservations", copies) end
assert(n == #copies, ("%s of %d copies delivered: %s"):format(tostring(n), #copies, cjson.encode(errs or {})))
print("redelivered " .. events)
consumer:close()
producer:close()
