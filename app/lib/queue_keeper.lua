-- The waiting room's keeper: for every queued sale, shuffles the pre-queue
-- once the sale opens and then admits tickets at the operator's rate.  Runs in
-- app/cleanup.lua under the cleanup lease, so one keeper works at a time; the
-- Redis step also refuses a step computed from a stale reading (its `tick`),
-- so even two keepers for a moment do not admit twice.
local core = require "flashhost.core"
local store = require "lib.queue_store"
local pace = require "lib.queue_pace"

local M = {}
M.__index = M

-- new{ redis, random = fn(n) -> n random bytes, metrics = { admitted, length, wait } (optional), log }
function M.new(o)
  return setmetatable({ redis = o.redis, u32 = pace.u32_source(o.random), metrics = o.metrics, log = o.log,
    skus = {} }, M)
end

local WAIT_QUANTILES = { 0.5, 0.9, 0.99 }

local function sku_state(self, sku, gen)
  local s = self.skus[sku]
  if not s or s.gen ~= gen then
    s = { gen = gen, carry = 0, meter = pace.meter(5000), waits = pace.waits(2000) }
    self.skus[sku] = s
  end
  return s
end

-- The opening: a Fisher-Yates shuffle of the closed pre-queue from OpenSSL's
-- random source, written once by queue_open (which checks it is a permutation
-- of exactly the tickets that were in the pre-queue).
local function open(self, sku, q)
  local count = q.frozen == "1" and tonumber(q.preCount) or tonumber(q.tail)
  for _ = 1, 3 do
    local order = pace.encode_order(pace.shuffle(count, self.u32))
    local a, kind, err = store.open(self.redis, sku, count, order)
    if not a then return nil, kind, err end
    if a.code ~= "STALE" then
      if a.code == "OK" and self.log then self.log.info("queue opened", { sku = sku, pre_queue = count }) end
      return a
    end
    count = a.preCount -- a join closed the pre-queue meanwhile
  end
  return { code = "STALE" }
end

-- One step for one SKU.  -> the advance answer | nil, kind, err
function M:step_sku(sku, now_mono)
  local q, kind, err = store.state(self.redis, sku)
  if not q then return nil, kind, err end
  if q.code ~= "OK" then return q end
  local s = sku_state(self, sku, q.gen)
  if q.opened ~= "1" then
    if q.now < (tonumber(q.startsAt) or 0) then return { code = "NOT_DUE" } end
    local o
    o, kind, err = open(self, sku, q)
    if not o then return nil, kind, err end
    if o.code ~= "OK" and o.code ~= "ALREADY_OPEN" then return o end
  end
  local dt = s.last and (now_mono - s.last) / 1000 or 0
  s.last = now_mono
  local n
  n, s.carry = pace.step(tonumber(q.rate) or 0, dt, s.carry)
  local admitted_before = tonumber(q.admitted) or 0
  s.meter:add(q.now, admitted_before)
  local a
  a, kind, err = store.advance(self.redis, sku, n, tonumber(q.tick) or 0, s.meter:rate() or 0, 1000)
  if not a then return nil, kind, err end
  if a.code ~= "OK" then return a end
  if a.admitted < n then s.carry = 0 end -- nobody left to admit, or sold out: no credit piles up
  for _, w in ipairs(a.waitsMs) do s.waits:add(w) end
  local m = self.metrics
  if m then
    if a.admitted > 0 then m.admitted:inc({ sku = sku }, a.admitted) end
    m.length:set({ sku = sku }, a.length)
    for _, qq in ipairs(WAIT_QUANTILES) do
      local v = s.waits:quantile(qq)
      if v then m.wait:set({ sku = sku, quantile = tostring(qq) }, v / 1000) end
    end
  end
  return a
end

-- One pass over every queued sale.
function M:run()
  local skus = self.redis:call("SMEMBERS", store.SET)
  if type(skus) ~= "table" then return end
  local t = core.mono()
  for _, sku in ipairs(skus) do
    local a, kind, err = self:step_sku(sku, t)
    if not a and self.log then self.log.warn("queue step failed", { sku = sku, kind = kind, err = err }) end
    if core.stopping() then return end
  end
end

return M
