-- flashhost.kafka against a real broker at $KAFKA_BROKERS (default 127.0.0.1:9092).
-- Runs inside the runtime:
--   flashhost --run /usr/bin/busted --ignore-lua -o TAP spec/integration/kafka_spec.lua
-- Topic and group names are unique per run, so runs never see each other's data.
local kafka = require "flashhost.kafka"
local core = require "flashhost.core"
local timer = require "flashhost.timer"

local BROKERS = os.getenv("KAFKA_BROKERS")
if not BROKERS or BROKERS == "" then BROKERS = "127.0.0.1:9092" end
local RUN = core.id()

local function name(what) return ("spec-%s-%s"):format(what, RUN) end

-- Polls `c` until `n` messages came or `ms` passed; returns what came and
-- the last error poll reported (a topic created a moment ago may briefly be
-- unknown to the consumer: that is reported, then it works).
local function collect(c, n, ms)
  local got, last_err = {}, nil
  local deadline = core.mono() + ms
  while #got < n and core.mono() < deadline do
    local msgs, err = c:poll(500, 500)
    if not msgs then last_err = err end
    for _, m in ipairs(msgs or {}) do got[#got + 1] = m end
  end
  return got, last_err
end

-- Polls for `ms` more and returns whatever arrives (expected: nothing).
local function extra(c, ms)
  return collect(c, math.huge, ms)
end

local function wait_for(cond, ms)
  local deadline = core.mono() + ms
  while not cond() do
    if core.mono() > deadline then return false end
    timer.sleep(10)
  end
  return true
end

local function by_offset(a, b)
  if a.partition ~= b.partition then return a.partition < b.partition end
  return a.offset < b.offset
end

local function create(topic, partitions)
  local ok, err = kafka.create_topics(BROKERS, { { name = topic, partitions = partitions } })
  assert(ok, err)
end

describe("flashhost.kafka", function()
  local producer

  setup(function()
    local md, err = kafka.metadata(BROKERS, 10000)
    assert(md, ("no Kafka broker at %s (set KAFKA_BROKERS): %s"):format(BROKERS, tostring(err)))
    producer = assert(kafka.producer{ brokers = BROKERS })
  end)

  teardown(function()
    if producer then assert.is_true(producer:close(5000)) end
  end)

  it("creates topics idempotently and reports them in the metadata", function()
    local topics = {
      { name = name("admin-a"), partitions = 6, config = { ["retention.ms"] = 3600000 } },
      { name = name("admin-b"), partitions = 1, replication = 1 },
    }
    local ok, status = kafka.create_topics(BROKERS, topics)
    assert.is_true(ok, status)
    assert.same({ [topics[1].name] = "created", [topics[2].name] = "created" }, status)
    ok, status = kafka.create_topics(BROKERS, topics)
    assert.is_true(ok, status)
    assert.same({ [topics[1].name] = "exists", [topics[2].name] = "exists" }, status)

    local md = assert(kafka.metadata(BROKERS, 10000))
    assert.is_true(md.brokers >= 1)
    assert.equal(6, md.topics[topics[1].name])
    assert.equal(1, md.topics[topics[2].name])
  end)

  it("refuses a bad topic definition with an error, not a hang", function()
    local ok, err = kafka.create_topics(BROKERS, { { name = name("bad"), partitions = 1,
      config = { ["cleanup.policy"] = "no-such-policy" } } })
    assert.is_nil(ok)
    assert.matches(name("bad"), err, 1, true)
  end)

  it("delivers 1,000 messages from 20 coroutines with keys, values and headers intact", function()
    local topic = name("bulk")
    create(topic, 6)
    local TASKS, PER = 20, 50
    local done, failures = 0, {}
    for t = 1, TASKS do
      core.spawn(function()
        for s = 1, PER do
          local i = (t - 1) * PER + s
          local ok, err = producer:produce(topic, {
            key = "task" .. t,
            value = ("value-%d-%s"):format(i, ("x"):rep(i % 37)),
            headers = { trace_id = "trace-" .. i, seq = tostring(s) },
          })
          if not ok then failures[#failures + 1] = err end
        end
        done = done + 1
      end)
    end
    assert.is_true(wait_for(function() return done == TASKS end, 30000), "producers did not finish")
    assert.same({}, failures)
    assert.is_true(producer:flush(5000))

    local c = assert(kafka.consumer{ brokers = BROKERS, group = name("bulk-group"), topics = { topic } })
    local got = collect(c, TASKS * PER, 30000)
    local extra_msgs = extra(c, 500)
    assert.is_true(c:close())
    assert.equal(TASKS * PER, #got)
    assert.equal(0, #extra_msgs)

    local seen, last_seq = {}, {}
    table.sort(got, by_offset)
    for _, m in ipairs(got) do
      assert.equal(topic, m.topic)
      assert.is_number(m.offset)
      assert.is_number(m.timestamp)
      local i = tonumber(m.value:match("^value%-(%d+)%-"))
      assert.is_not_nil(i, m.value)
      assert.is_nil(seen[i], "duplicate " .. i)
      seen[i] = true
      local t = math.floor((i - 1) / PER) + 1
      assert.equal("task" .. t, m.key)
      assert.equal(("value-%d-%s"):format(i, ("x"):rep(i % 37)), m.value)
      assert.equal("trace-" .. i, m.headers.trace_id)
      -- one key, one partition: a task's messages arrive in the order it sent them
      local seq = tonumber(m.headers.seq)
      assert.is_true(seq > (last_seq[m.key] or 0), "out of order for " .. m.key)
      last_seq[m.key] = seq
    end
  end)

  it("produce_batch answers per message", function()
    local topic = name("batch")
    create(topic, 3)
    local msgs = {}
    for i = 1, 10 do msgs[i] = { key = "k" .. i, value = "v" .. i } end
    msgs[4].partition = 99        -- no such partition
    msgs[7].partition = 2         -- an explicit, valid one
    local ok_count, errors = producer:produce_batch(topic, msgs)
    assert.equal(9, ok_count)
    assert.is_string(errors[4])
    assert.matches("partition", errors[4]:lower(), 1, true)
    for i = 1, 10 do
      if i ~= 4 then assert.is_nil(errors[i]) end
    end

    local c = assert(kafka.consumer{ brokers = BROKERS, group = name("batch-group"), topics = { topic } })
    local got = collect(c, 9, 20000)
    assert.is_true(c:close())
    assert.equal(9, #got)
    for _, m in ipairs(got) do
      if m.key == "k7" then assert.equal(2, m.partition) end
      assert.are_not.equal("k4", m.key)
    end
  end)

  it("a committed batch is not delivered again to the group", function()
    local topic, group = name("commit"), name("commit-group")
    create(topic, 3)
    local msgs = {}
    for i = 1, 30 do msgs[i] = { key = "c" .. i, value = "old-" .. i } end
    assert.equal(30, (producer:produce_batch(topic, msgs)))

    local a = assert(kafka.consumer{ brokers = BROKERS, group = group, topics = { topic } })
    local got = collect(a, 30, 20000)
    assert.equal(30, #got)
    assert.is_true(a:commit(got))
    assert.is_true(a:close())

    -- New messages after the commit: the next member must see exactly these.
    for i = 1, 5 do msgs[i] = { key = "n" .. i, value = "new-" .. i } end
    for i = 6, 30 do msgs[i] = nil end
    assert.equal(5, (producer:produce_batch(topic, msgs)))
    local b = assert(kafka.consumer{ brokers = BROKERS, group = group, topics = { topic } })
    local again = collect(b, 5, 20000)
    local more = extra(b, 1000)
    assert.is_true(b:close())
    assert.equal(5, #again)
    assert.equal(0, #more)
    for _, m in ipairs(again) do assert.matches("^new%-", m.value) end
  end)

  it("commits while a backlog fills the consumer's buffer", function()
    local topic, group = name("backlog"), name("backlog-group")
    create(topic, 1)
    local msgs = {}
    for i = 1, 300 do msgs[i] = { key = "b" .. i, value = "v" .. i } end
    assert.equal(300, (producer:produce_batch(topic, msgs)))
    -- a buffer far smaller than the backlog: the commit result must still
    -- reach us while unread messages wait in front of it
    local c = assert(kafka.consumer{ brokers = BROKERS, group = group, topics = { topic }, max_buffered = 20 })
    -- lag: once fetching started, the backlog shows; at the end it is gone
    assert.is_true(wait_for(function() return (c:lag()[topic] or 0) > 0 end, 20000))
    local seen = 0
    local deadline = core.now() + 20000
    while seen < 300 and core.now() < deadline do
      local got = assert(c:poll(10, 1000))
      if #got > 0 then
        assert.is_true(c:commit(got))
        seen = seen + #got
      end
    end
    assert.equal(0, c:lag()[topic] or 0)
    assert.is_true(c:close())
    assert.equal(300, seen)
  end)

  it("an uncommitted batch is delivered again to the next member", function()
    local topic, group = name("redeliver"), name("redeliver-group")
    create(topic, 1)
    local msgs = {}
    for i = 1, 20 do msgs[i] = { key = "r" .. i, value = "r" .. i } end
    assert.equal(20, (producer:produce_batch(topic, msgs)))

    local a = assert(kafka.consumer{ brokers = BROKERS, group = group, topics = { topic } })
    local got = collect(a, 20, 20000)
    assert.equal(20, #got)
    table.sort(got, by_offset)
    local first_half = { unpack(got, 1, 10) }
    assert.is_true(a:commit(first_half))   -- offsets 0..9 done; 10..19 not
    assert.is_true(a:close())

    local b = assert(kafka.consumer{ brokers = BROKERS, group = group, topics = { topic } })
    local again = collect(b, 10, 20000)
    local more = extra(b, 1000)
    assert.is_true(b:close())
    assert.equal(10, #again)
    assert.equal(0, #more)
    table.sort(again, by_offset)
    for k, m in ipairs(again) do
      assert.equal(got[10 + k].offset, m.offset)
      assert.equal(got[10 + k].value, m.value)
    end
  end)

  it("shares partitions between two members and loses nothing across the rebalance", function()
    local topic, group = name("rebalance"), name("rebalance-group")
    create(topic, 4)
    local msgs = {}
    for i = 1, 40 do msgs[i] = { key = "b" .. i, value = tostring(i) } end
    assert.equal(40, (producer:produce_batch(topic, msgs)))

    local a = assert(kafka.consumer{ brokers = BROKERS, group = group, topics = { topic },
      config = { ["fetch.wait.max.ms"] = 50 } })
    assert.is_true(wait_for(function() return #a:assignment() == 4 end, 20000), "a got no partitions")
    local b = assert(kafka.consumer{ brokers = BROKERS, group = group, topics = { topic } })
    local seen, total = {}, 0
    local deadline = core.mono() + 30000
    local function take(c)
      local got = c:poll(100, 200) or {}
      for _, m in ipairs(got) do
        if not seen[m.value] then total = total + 1 end
        seen[m.value] = true
      end
      assert.is_true(c:commit(got))
    end
    while (total < 40 or #a:assignment() == 0 or #b:assignment() == 0) and core.mono() < deadline do
      take(a)
      take(b)
    end
    assert.equal(40, total)
    assert.is_true(#a:assignment() >= 1 and #b:assignment() >= 1, "both members own partitions")
    assert.is_true(a:close())
    assert.is_true(b:close())

    local c = assert(kafka.consumer{ brokers = BROKERS, group = group, topics = { topic } })
    assert.is_true(wait_for(function() return #c:assignment() == 4 end, 20000))
    assert.equal(0, #extra(c, 1000))
    assert.is_true(c:close())
  end)

  it("poll returns an empty array promptly on timeout", function()
    local topic = name("quiet")
    create(topic, 1)
    local c = assert(kafka.consumer{ brokers = BROKERS, group = name("quiet-group"), topics = { topic } })
    for _ = 1, 3 do
      local t0 = core.mono()
      local msgs, err = c:poll(10, 300)
      local elapsed = core.mono() - t0
      assert.same({}, msgs, err)
      assert.is_true(elapsed >= 250 and elapsed < 1000, "poll took " .. elapsed .. " ms")
    end
    local t0 = core.mono()
    assert.same({}, (c:poll(10, 0)))
    assert.is_true(core.mono() - t0 < 50)
    assert.is_true(c:close())
    assert.has_error(function() c:poll(1, 1) end)
  end)

  it("producing to a missing topic fails within the message timeout", function()
    local p = assert(kafka.producer{ brokers = BROKERS, message_timeout_ms = 1500 })
    local t0 = core.mono()
    local ok, err = p:produce(name("missing"), { key = "k", value = "v" })
    local elapsed = core.mono() - t0
    assert.is_nil(ok)
    assert.is_string(err)
    assert.is_true(err:find("timed out", 1, true) ~= nil or err:find("Unknown topic", 1, true) ~= nil, err)
    assert.is_true(elapsed < 5000, "took " .. elapsed .. " ms")
    assert.is_true(p:close(1000))
    assert.has_error(function() p:produce("x", { value = "v" }) end)
  end)

  it("raises on misuse", function()
    assert.has_error(function() kafka.consumer{ brokers = BROKERS, topics = { "t" } } end)
    assert.has_error(function() kafka.producer{ brokers = BROKERS, config = { ["no.such.property"] = "1" } } end)
    assert.has_error(function() producer:produce(42, { value = "v" }) end)
    assert.has_error(function() producer:produce("t", "not a table") end)
    assert.has_error(function()
      producer:produce_batch("t", { { value = "fine" }, { value = "v", headers = { n = {} } } })
    end)
    assert.has_error(function() producer:produce("t", { value = {} }) end)
    assert.has_error(function() producer:produce("t", { value = "v", partition = "0" }) end)
  end)
end)
