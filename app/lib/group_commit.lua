-- Group commit per key (smart batching, as LMAX's disruptor and the hot-row
-- group update of AliSQL/PolarDB do it).  The first attempt for a key goes
-- out at once, alone.  While that call is in flight, later attempts for the
-- same key queue; when it comes back, everything queued (up to `max`) goes
-- out as ONE call.  At low load every batch is a batch of one and adds no
-- wait; under a stampede batches grow by themselves, and each call does the
-- per-key work (here: a SKU's sale, stock and counters) once for many.
--
--   local gc = GroupCommit.new { send = function(key, items) ... end, max = 128 }
--   local answer, kind, detail = gc:submit(sku, item)   -- yields
--
-- send(key, items) -> answers (one per item, same order) | nil, kind, detail.
-- It runs in the task of the batch's leader: the attempt at the head of the
-- batch.  A leader answers its own request once the call is back, and hands
-- the lead to the head of the queue first, so the next call goes out before
-- anyone's answer is written.  The new leader takes its batch when it runs (a
-- later turn of the loop): the attempts read in the meantime, in the same turn
-- as the answer, ride in that call instead of waiting for the one after.
--
-- No attempt waits longer than the call it rides in: the waits are bounded
-- by the Redis client's own deadline, and they are not cut short by a
-- reload (the old generation's in-flight batches finish and answer).
local M = {}
M.__index = M

-- A waiter that hears nothing for this long answers "unavailable": a guard
-- against a bug, never the normal way out (the Redis deadline is far shorter).
local GUARD_MS = 30000

-- opts: send (required), max (128), event (constructor, core.event),
--       on_batch(key, n) (optional, for metrics)
function M.new(opts)
  assert(type(opts.send) == "function", "group commit needs send(key, items)")
  return setmetatable({
    send = opts.send,
    max = opts.max or 128,
    event = opts.event or require("flashhost.core").event,
    on_batch = opts.on_batch,
    lanes = {}, -- key -> { queue = { slot... } } while a call for key is in flight
  }, M)
end

-- The slots queued in `lane`, up to max, in arrival order (at least the
-- caller's own, at the head).
local function take(self, lane)
  local q = lane.queue
  local n = math.min(#q, self.max)
  local batch = {}
  for i = 1, n do batch[i] = q[i] end
  if n == #q then
    lane.queue = {}
  else
    local rest = {}
    for i = n + 1, #q do rest[#rest + 1] = q[i] end
    lane.queue = rest
  end
  return batch
end

-- Sends one batch from the leader's task and answers every member; returns
-- the leader's own answer.  batch[1] is the leader's slot.
local function lead(self, key, lane, batch)
  local items = {}
  for i, slot in ipairs(batch) do items[i] = slot.item end
  if self.on_batch then self.on_batch(key, #batch) end
  local ok, answers, kind, detail = pcall(self.send, key, items)
  if not ok then answers, kind, detail = nil, "error", tostring(answers) end
  -- The next batch first: its leader sends it on the next turn of the loop,
  -- before the answers below are written; none queued: the key goes idle.
  local q = lane.queue
  if #q > 0 then q[1].ev:set("lead") else self.lanes[key] = nil end
  for i = 2, #batch do
    local ev = batch[i].ev
    if answers then ev:set("done", answers[i]) else ev:set("done", nil, kind, detail) end
  end
  if answers then return answers[1] end
  return nil, kind, detail
end

-- gc:submit(key, item) -> this item's answer | nil, kind, detail.  Yields.
function M:submit(key, item)
  local lane = self.lanes[key]
  if not lane then
    lane = { queue = {} }
    self.lanes[key] = lane
    return lead(self, key, lane, { { item = item } })
  end
  local slot = { item = item, ev = self.event() }
  lane.queue[#lane.queue + 1] = slot
  local what, answer, kind, detail = slot.ev:wait(GUARD_MS, true)
  -- our slot heads the queue: the batch is what is queued now
  if what == "lead" then return lead(self, key, lane, take(self, lane)) end
  if what == "done" then return answer, kind, detail end
  -- Unreachable unless a leader was lost: do not leave our slot to be sent
  -- later for a request that already answered.
  for i, s in ipairs(lane.queue) do
    if s == slot then table.remove(lane.queue, i) break end
  end
  return nil, "unavailable", "no answer from the batch in " .. GUARD_MS .. " ms"
end

return M
