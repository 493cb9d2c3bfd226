-- An API node's claim on its NODE_ID.  Order and reservation ids carry the
-- NODE_ID (core/ids.c), so two nodes with the same one can hand out the same
-- order id, and the order store would take two purchases for one order.  A
-- node therefore holds a lease on flashhost:node:<NODE_ID> in Redis, owned by
-- its host name (NODE_OWNER overrides it): a restarted node, or a pod that
-- replaces one of a StatefulSet, is the same owner and takes it back at once;
-- a node on another machine with the same NODE_ID is another owner.  (Two
-- instances on one machine with the same NODE_ID are not told apart.)  While another
-- owner holds it, this node refuses purchases (503), reports itself not ready
-- and logs who holds it, so the misconfiguration is loud and sells nothing
-- twice.  Until Redis first answers, the node does not know whether it may
-- sell, so it refuses as if the NODE_ID were held, and asks again at every
-- tick (TICK_MS); from then on it asks every RENEW_MS.  While Redis cannot be
-- asked the last answer stands: purchases need Redis anyway, and a lapsed
-- lease is taken back at the next renewal.  A node
-- never gives its NODE_ID up: one worker's reload or stop must not free it
-- while the others serve; it lapses TTL_MS after the last renewal.
local M = {}
M.__index = M

M.TTL_MS = 10000    -- a node that stops renewing frees its NODE_ID after this
M.RENEW_MS = 3000   -- renewals, well inside the TTL
M.TICK_MS = 100     -- how often tick() runs: the wait for the first answer at start
M.FIRST_WAIT_MS = 1000 -- how long await() lets a request wait for that answer

function M.key(node_id) return "flashhost:node:" .. node_id end

-- opts: redis, node_id, owner (the host name), lease (lib/stock.lease), log,
-- answered (optional: a core.event, set at Redis's first answer; await waits on it)
function M.new(opts)
  return setmetatable({ redis = opts.redis, key = M.key(opts.node_id), node_id = opts.node_id, owner = opts.owner,
    lease = opts.lease, log = opts.log, taken_by = nil, answered = false, asked_at = nil,
    first_answer = opts.answered }, M)
end

-- One take-or-renew: true (held) | false (another owner holds it) | nil, err.
function M:renew()
  local held, err = self.lease(self.redis, self.key, self.owner, M.TTL_MS)
  if held == 1 then
    if self.taken_by then self.log.info("NODE_ID claimed", { node_id = self.node_id, owner = self.owner }) end
    self.taken_by = nil
    return true
  end
  if held ~= 0 then return nil, err end
  local holder = self.redis:call("GET", self.key)
  self.taken_by = type(holder) == "string" and holder or "another node"
  self.log.error("NODE_ID is held by another node: refusing purchases, ids would collide",
    { node_id = self.node_id, owner = self.owner, holder = self.taken_by })
  return false
end

-- The periodic job (every TICK_MS): a renewal every RENEW_MS, and one at
-- every tick until Redis has answered once.
function M:tick(now)
  if self.answered and now - self.asked_at < M.RENEW_MS then return end
  self.asked_at = now
  if self:renew() ~= nil and not self.answered then
    self.answered = true
    if self.first_answer then self.first_answer:set(true) end
  end
end

-- nil when purchases may go on; else the reason they may not.
function M:refusal()
  if self.taken_by then return ("NODE_ID %d is held by %s"):format(self.node_id, self.taken_by) end
  if not self.answered then return ("NODE_ID %d is not claimed yet (Redis has not answered)"):format(self.node_id) end
  return nil
end

-- refusal(), after a wait of up to FIRST_WAIT_MS for Redis's first answer:
-- a request that arrives as the node starts waits for the claim as it would
-- for Redis itself, instead of being refused at once.  Yields only then.
function M:await()
  if not self.answered and self.first_answer then self.first_answer:wait(M.FIRST_WAIT_MS) end
  return self:refusal()
end

return M
