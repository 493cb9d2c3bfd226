-- flashhost.event: one task wakes the tasks waiting on it.
--
--   local ev = core.event()          -- or require("flashhost.event").new()
--   -- in some tasks:
--   local v, err = ev:wait(1000)     -- yields: the values of set, or nil, "timeout" / nil, "stopping"
--   -- in another:
--   ev:set("ready", 42)              -- never yields; every waiter gets "ready", 42
--
-- An event stays set: a wait after set returns the values at once, until
-- ev:clear() re-arms it.  Waiters are woken in the order they began waiting,
-- each on a later turn of the loop than the set (set never runs them inside
-- the caller).  A waiter that timed out is simply not woken again.
local timer = require "flashhost.timer"

local park, unpark = timer.park, timer.unpark
local pack = function(...) return { n = select("#", ...), ... } end

local Event = {}
Event.__index = Event

local M = {}

function M.new()
  return setmetatable({ waiters = {}, values = nil }, Event)
end

-- ev:wait([timeout_ms [, through_stop]]) -> the values given to set |
-- nil, "timeout" | nil, "stopping".  Without a timeout it waits until set or
-- until the generation stops; `through_stop` waits on through a stop (for a
-- share of work already under way, which will set the event; give it a
-- timeout all the same).
function Event:wait(timeout_ms, through_stop)
  local v = self.values
  if v then return unpack(v, 1, v.n) end
  local co, main = coroutine.running()
  if not co or main then error("event:wait must run inside a flashhost task", 2) end
  local w = self.waiters
  w[#w + 1] = co
  local r = pack(park(timeout_ms, through_stop))
  -- Woken by a timeout or a stop: leave the list, so a later set skips us.
  if not self.values or r[1] == nil then
    for i = #w, 1, -1 do
      if w[i] == co then table.remove(w, i) break end
    end
  end
  return unpack(r, 1, r.n)
end

-- ev:set(...) wakes every waiter with the values (nil counts as a value).
-- Returns the number of tasks woken.
function Event:set(...)
  self.values = pack(...)
  local w = self.waiters
  self.waiters = {}
  local n = 0
  for i = 1, #w do
    if unpark(w[i], ...) then n = n + 1 end
  end
  return n
end

-- ev:is_set() -> true once set (and not cleared).
function Event:is_set() return self.values ~= nil end

-- ev:clear(): later waits wait again.
function Event:clear() self.values = nil end

return M
