-- A throwaway Redis Cluster of masters on loopback for specs: redis-server in
-- cluster mode, one folder per node under $TMPDIR, joined with
-- `redis-cli --cluster create`.  Only os.execute and io.popen, so it works in
-- plain LuaJIT specs and inside `flashhost --run` alike (it blocks the caller
-- while it runs, which is fine before and after the tests).  Every wait is a
-- bounded poll.
--
--   local cluster = require "spec.support.redis_cluster"
--   local c = cluster.start()        -- ports from REDIS_CLUSTER_PORTS (default 27001,27002,27003)
--   cluster.owner(c, "{sku:1}:stock") -- the port of the master holding that key
--   cluster.stop(c)
local M = {}

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local rc = os.execute(cmd)
  return rc == 0 or rc == true
end

local function read(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

-- Polls fn every `step` seconds, at most `tries` times; returns its last value
-- or raises naming `what`.  Each try takes at least `step`, so the wait is
-- bounded by tries * step plus the time fn takes.
function M.poll(what, tries, step, fn)
  local last
  for i = 1, tries do
    local ok, v = pcall(fn)
    if ok and v then return v end
    last = v
    if i < tries then os.execute("sleep " .. step) end
  end
  error(("timed out waiting for %s (last: %s)"):format(what, tostring(last)), 2)
end

-- The ports: REDIS_CLUSTER_PORTS="27001,27002,27003" unless given.
function M.ports(list)
  local s = list or os.getenv("REDIS_CLUSTER_PORTS") or "27001,27002,27003"
  local out = {}
  for p in tostring(s):gmatch("%d+") do out[#out + 1] = tonumber(p) end
  assert(#out >= 3, "a cluster needs 3 masters: REDIS_CLUSTER_PORTS=" .. s)
  return out
end

local function dir_of(port) return (os.getenv("TMPDIR") or "/tmp") .. "/fh-redis-cluster-" .. port end

-- redis-cli -p port ARGS... -> its output (raw, trailing newline removed)
function M.cli(port, ...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = q(a) end
  return (read(("redis-cli -p %d %s"):format(port, table.concat(args, " "))):gsub("\n$", ""))
end

local function pid_of(port)
  local f = io.open(dir_of(port) .. "/redis.pid")
  if not f then return nil end
  local pid = f:read("*n")
  f:close()
  return pid
end

-- Our redis-server on that port (a pid file may be stale and its pid reused).
local function alive(pid, port)
  local f = pid and io.open("/proc/" .. pid .. "/cmdline")
  if not f then return false end
  local cmd = f:read("*a")
  f:close()
  return cmd:find("redis-server", 1, true) ~= nil and cmd:find(":" .. port, 1, true) ~= nil
end

-- SIGKILL one node, like a crash; waits until it is gone.
function M.kill(port)
  local pid = pid_of(port)
  if not alive(pid, port) then return end
  sh("kill -9 " .. pid .. " 2>/dev/null")
  M.poll("redis-server " .. pid .. " to die", 100, 0.05, function() return not alive(pid, port) end)
end

local function start_node(port)
  -- A node of an earlier run that died with its spec (its pid file says so).
  M.kill(port)
  local dir = dir_of(port)
  sh("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir))
  if M.cli(port, "PING") == "PONG" then error("something else listens on port " .. port) end
  assert(sh(("redis-server --port %d --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file %s " ..
    "--cluster-node-timeout 3000 --cluster-require-full-coverage no --save '' --appendonly no " ..
    "--dir %s --daemonize yes --pidfile %s --logfile %s")
    :format(port, q(dir .. "/nodes.conf"), q(dir), q(dir .. "/redis.pid"), q(dir .. "/redis.log"))),
    "cannot start redis-server on port " .. port)
end

-- CLUSTER NODES of `port` -> { [port] = { id =, master =, ranges = { {first, last}, ... } } }
function M.nodes(port)
  local out = {}
  for line in M.cli(port, "CLUSTER", "NODES"):gmatch("[^\n]+") do
    local f = {}
    for w in line:gmatch("%S+") do f[#f + 1] = w end
    local p = f[2] and tonumber(f[2]:match(":(%d+)@"))
    if p then
      local n = { id = f[1], master = f[3]:find("master", 1, true) ~= nil, ranges = {} }
      for i = 9, #f do
        local a, b = f[i]:match("^(%d+)%-(%d+)$")
        if not a then a = f[i]:match("^(%d+)$"); b = a end
        if a then n.ranges[#n.ranges + 1] = { tonumber(a), tonumber(b) } end
      end
      out[p] = n
    end
  end
  return out
end

function M.node_id(port) return M.cli(port, "CLUSTER", "MYID") end

-- The slot of a key, as Redis computes it.
function M.slot(port, key) return tonumber(M.cli(port, "CLUSTER", "KEYSLOT", key)) end

-- The port of the master that holds `slot` in the view of the first live node.
function M.slot_owner(c, slot)
  for _, asked in ipairs(c.ports) do
    if not c.down[asked] then
      for p, n in pairs(M.nodes(asked)) do
        for _, r in ipairs(n.ranges) do
          if slot >= r[1] and slot <= r[2] then return p end
        end
      end
      return nil
    end
  end
end

function M.owner(c, key) return M.slot_owner(c, M.slot(c.ports[1], key)) end

-- Every live node says cluster_state:ok and sees every slot on a master.
local function settled(c)
  for _, p in ipairs(c.ports) do
    if not c.down[p] then
      if not M.cli(p, "CLUSTER", "INFO"):find("cluster_state:ok", 1, true) then return false end
      local covered = 0
      for _, n in pairs(M.nodes(p)) do
        for _, r in ipairs(n.ranges) do covered = covered + r[2] - r[1] + 1 end
      end
      if covered ~= 16384 then return false end
    end
  end
  return true
end

function M.wait_settled(c)
  M.poll("the cluster to settle", 400, 0.05, function() return settled(c) end)
end

-- Starts the masters and makes them one cluster; returns { ports, down }.
function M.start(ports)
  local c = { ports = M.ports(ports), down = {} }
  local ok, err = pcall(function()
    for _, p in ipairs(c.ports) do start_node(p) end
    for _, p in ipairs(c.ports) do
      M.poll("redis-server on " .. p, 200, 0.05, function() return M.cli(p, "PING") == "PONG" end)
    end
    local addrs = {}
    for i, p in ipairs(c.ports) do addrs[i] = "127.0.0.1:" .. p end
    local out = read("redis-cli --cluster create " .. table.concat(addrs, " ") .. " --cluster-replicas 0 --cluster-yes")
    assert(out:find("All 16384 slots covered", 1, true), "redis-cli --cluster create failed:\n" .. out)
    M.wait_settled(c)
  end)
  if not ok then
    M.stop(c)
    error(err, 2)
  end
  return c
end

-- Moves `slot` with its keys from the master on `from` to the one on `to`,
-- the way redis-cli --cluster reshard does, and tells every live master.
function M.migrate_slot(c, slot, from, to)
  local from_id, to_id = M.node_id(from), M.node_id(to)
  assert(M.cli(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", from_id) == "OK")
  assert(M.cli(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", to_id) == "OK")
  M.move_keys(slot, from, to)
  M.assign_slot(c, slot, to)
end

-- MIGRATE every key of `slot` from one master to the other (the slot must be
-- MIGRATING there and IMPORTING here).
function M.move_keys(slot, from, to)
  for _ = 1, 1000 do
    local keys = {}
    for k in M.cli(from, "CLUSTER", "GETKEYSINSLOT", slot, 100):gmatch("[^\n]+") do keys[#keys + 1] = k end
    if #keys == 0 then return end
    local out = M.cli(from, "MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", unpack(keys))
    assert(out == "OK", "MIGRATE: " .. out)
  end
  error("slot " .. slot .. " never emptied")
end

-- CLUSTER SETSLOT slot NODE <the master on `to`> on every live master.
function M.assign_slot(c, slot, to)
  local to_id = M.node_id(to)
  for _, p in ipairs(c.ports) do
    if not c.down[p] then assert(M.cli(p, "CLUSTER", "SETSLOT", slot, "NODE", to_id) == "OK") end
  end
end

-- Kills one master for good (stop() does not restart it).
function M.kill_node(c, port)
  M.kill(port)
  c.down[port] = true
end

-- A plain (not cluster) redis-server on `port`, for the cases that need one.
function M.start_plain(port)
  M.kill(port)
  local dir = dir_of(port)
  sh("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir))
  if M.cli(port, "PING") == "PONG" then error("something else listens on port " .. port) end
  assert(sh(("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --dir %s --daemonize yes " ..
    "--pidfile %s --logfile %s"):format(port, q(dir), q(dir .. "/redis.pid"), q(dir .. "/redis.log"))),
    "cannot start redis-server on port " .. port)
  M.poll("redis-server on " .. port, 200, 0.05, function() return M.cli(port, "PING") == "PONG" end)
end

function M.stop_plain(port)
  M.kill(port)
  sh("rm -rf " .. q(dir_of(port)))
end

-- Stops every node and removes their folders.
function M.stop(c)
  if not c then return end
  for _, p in ipairs(c.ports) do
    local pid = pid_of(p)
    if alive(pid, p) then
      sh("kill -TERM " .. pid .. " 2>/dev/null")
      local gone = pcall(M.poll, "redis-server " .. pid .. " to exit", 100, 0.05, function() return not alive(pid, p) end)
      if not gone then M.kill(p) end
    end
    sh("rm -rf " .. q(dir_of(p)))
  end
end

return M
