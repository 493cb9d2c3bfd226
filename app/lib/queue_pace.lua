-- The keeper's arithmetic, pure: how many tickets to admit in a step, the
-- admission rate actually measured, the shuffle of the pre-queue and the
-- wait-time quantiles.  Unit-tested in spec/unit/queue_pace_spec.lua.
local M = {}

M.MAX_STEP_SEC = 1 -- a keeper that paused does not make up for it in one burst

-- step(rate, dt_sec, carry) -> count, carry: admissions at `rate` per second
-- over dt, the fraction kept for the next step so that a rate of 0.5/s admits
-- one ticket every 2 s and 250/s at 10 steps a second admits 25 a step.
function M.step(rate, dt_sec, carry)
  if rate <= 0 or dt_sec <= 0 then return 0, carry or 0 end
  local allowance = (carry or 0) + rate * math.min(dt_sec, M.MAX_STEP_SEC)
  local n = math.floor(allowance + 1e-9)
  return n, allowance - n
end

-- A window of (time, admitted total) samples: the rate over the last `span` ms.
local Meter = {}
Meter.__index = Meter

function M.meter(span_ms) return setmetatable({ span = span_ms or 5000, samples = {} }, Meter) end

function Meter:add(t_ms, total)
  local s = self.samples
  s[#s + 1] = { t_ms, total }
  while #s > 2 and s[2][1] <= t_ms - self.span do table.remove(s, 1) end
end

-- Admissions per second measured over the window; nil before two samples.
function Meter:rate()
  local s = self.samples
  if #s < 2 then return nil end
  local a, b = s[1], s[#s]
  if b[1] <= a[1] then return nil end
  return (b[2] - a[2]) * 1000 / (b[1] - a[1])
end

-- A uniform integer in 1..n from a source of random bytes (rand(k) -> k bytes),
-- by rejection: no modulo bias.
local function uniform(next_u32, n)
  local limit = 4294967296 - 4294967296 % n
  while true do
    local u = next_u32()
    if u < limit then return u % n + 1 end
  end
end

-- A reader of unsigned 32-bit numbers over `rand`, fetched 4 KiB at a time.
function M.u32_source(rand)
  local buf, i = "", 1
  return function()
    if i + 3 > #buf then buf, i = rand(4096), 1 end
    local a, b, c, d = buf:byte(i, i + 3)
    i = i + 4
    return ((a * 256 + b) * 256 + c) * 256 + d
  end
end

-- shuffle(n, next_u32) -> { 1..n in a uniformly random order } (Fisher-Yates).
function M.shuffle(n, next_u32)
  local t = {}
  for i = 1, n do t[i] = i end
  for i = n, 2, -1 do
    local j = uniform(next_u32, i)
    t[i], t[j] = t[j], t[i]
  end
  return t
end

-- The order as redis-lua/queue.lua's queue_open takes it: 10 digits each.
function M.encode_order(t)
  local parts = {}
  for i, v in ipairs(t) do parts[i] = ("%010d"):format(v) end
  return table.concat(parts)
end

function M.decode_order(s)
  local t = {}
  for i = 1, #s / 10 do t[i] = tonumber(s:sub(i * 10 - 9, i * 10)) end
  return t
end

-- A bounded sample of recent waits (ms) and its quantiles.
local Waits = {}
Waits.__index = Waits

function M.waits(cap) return setmetatable({ cap = cap or 2000, list = {}, next = 1 }, Waits) end

function Waits:add(ms)
  self.list[self.next] = ms
  self.next = self.next % self.cap + 1
end

-- The q-quantile (0..1) of the sample, nearest rank; nil when empty.
function Waits:quantile(q)
  local n = #self.list
  if n == 0 then return nil end
  local s = {}
  for i = 1, n do s[i] = self.list[i] end
  table.sort(s)
  return s[math.max(1, math.ceil(q * n))]
end

-- Seconds until a ticket `ahead` places behind the serving one is admitted.
function M.eta_sec(ahead, rate)
  if not rate or rate <= 0 then return nil end
  return math.ceil((ahead + 1) / rate)
end

return M
