-- A per-worker copy of each queue's counters, so that a status poll is
-- answered from memory: position = the ticket's place minus the serving
-- counter, as AWS's Virtual Waiting Room computes it.
--
-- Staleness: a copy is used for `refresh_ms` after it was read; the first
-- poll after that reads Redis again while the others keep the old copy until
-- that read is back.  So an answer is at most refresh_ms plus one Redis round
-- trip behind the keeper's last step (which itself runs every 100 ms).  While
-- Redis cannot be read, the old copy is used for at most `stale_max_ms`, then
-- polls answer 503.
--
-- The shuffled order of the pre-queue never changes once written, so it is
-- read once per queue generation and kept as ticket -> position.
local pace = require "lib.queue_pace"

local M = {}
M.__index = M

-- new{ fetch = fn(sku) -> state | nil, kind, detail, fetch_order = fn(sku) -> answer | nil, kind, detail,
--      refresh_ms = 250, stale_max_ms = 5000 }
function M.new(o)
  return setmetatable({ fetch = o.fetch, fetch_order = o.fetch_order, refresh_ms = o.refresh_ms or 250,
    stale_max_ms = o.stale_max_ms or 5000, entries = {} }, M)
end

local NUMBERS = { "serving", "tail", "preCount", "rate", "measured", "ttl", "startsAt", "endsAt",
  "admitted", "used", "expired", "stock", "length", "now" }

-- A Redis answer as numbers and booleans.
local function normalize(st)
  local q = { code = st.code, gen = st.gen }
  for _, f in ipairs(NUMBERS) do q[f] = tonumber(st[f]) or 0 end
  -- sold out as soon as the stock is gone, without waiting for the keeper's
  -- next step to set the flag (stock that comes back clears it again)
  q.opened, q.frozen = st.opened == "1", st.frozen == "1"
  q.soldOut = st.soldOut == "1" or (st.code == "OK" and q.stock <= 0)
  return q
end

-- get(sku, now) -> entry | nil, kind, detail.  entry.q is the normalized
-- state ({ code = "NO_SALE" | "NO_QUEUE" } when there is no queue: also kept,
-- so polls for a SKU without a queue do not reach Redis either).
function M:get(sku, now)
  local e = self.entries[sku]
  if e and (now - e.at < self.refresh_ms or e.refreshing) then return e end
  if e then e.refreshing = true end
  local st, kind, detail = self.fetch(sku)
  if not st then
    if e then
      e.refreshing = false
      if now - e.at < self.stale_max_ms then return e end
    end
    return nil, kind, detail
  end
  local q = normalize(st)
  local posof = e and e.q.gen == q.gen and e.posof or nil
  if q.code == "OK" and q.opened and q.preCount > 0 and not posof then
    local o, okind, odetail = self.fetch_order(sku)
    if not o then
      if e then e.refreshing = false end
      return nil, okind, odetail
    end
    if o.code == "OK" and o.gen == q.gen and o.opened then
      posof = {}
      for pos, seq in ipairs(pace.decode_order(o.order)) do posof[seq] = pos end
    end
  end
  local ne = { q = q, at = now, posof = posof, admitted = e and e.q.gen == q.gen and e.admitted or {} }
  self.entries[sku] = ne
  return ne
end

-- The purchase path saw SOLD_OUT: polls say so at once in this worker.
function M:sold_out(sku)
  local e = self.entries[sku]
  if e and e.q.code == "OK" then e.q.soldOut = true end
end

function M:forget(sku) self.entries[sku] = nil end

-- The position of ticket `seq` (nil: in the pre-queue, not yet shuffled).
function M.position(e, seq)
  local q = e.q
  if seq > q.preCount and q.frozen then return seq end
  if not q.opened then return nil end
  return e.posof and e.posof[seq]
end

return M
