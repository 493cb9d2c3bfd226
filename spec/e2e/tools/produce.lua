-- flashhost --run spec/e2e/tools/produce.lua TOPIC KEY VALUE
-- Produces one message (waiting for its delivery report) and prints "delivered".
local kafka = require "flashhost.kafka"
local topic, key, value = ...
local p = assert(kafka.producer { brokers = os.getenv("KAFKA_BROKERS") or "127.0.0.1:9092" })
assert(p:produce(topic, { key = key, value = value, headers = { trace_id = "spec-poison" } }))
print("delivered")
p:close()
