-- flashhost.redis_cluster: the Redis client of flashhost.redis for a Redis
-- Cluster.  Not required directly: redis.connect returns one for
--
--   redis.connect { url = "redis-cluster://[[user]:password@]host:port,host:port,..." }
--   redis.connect { cluster = { "127.0.0.1:7000", "127.0.0.1:7001" }, password = ... }
--
-- (REDIS_URL may hold the cluster form, so apps run unchanged).  The client
-- has the API of a single-node client (call, fcall, fcall_ro, functions,
-- load_library, load_functions, wait_ready, status, stats, close) and the same
-- three-way answers, plus masters(), node_of(key) and call_node(addr, ...).
--
-- How it works.  One single-node client (one shared, pipelined connection)
-- per master, and the slot map (CLUSTER SLOTS, asked of any node that is up).
-- A command goes to the master of its first key's slot: CRC16 of the key, or
-- of its {hash tag}, modulo 16384.  The first key is argument 2 for most
-- commands, the first KEY of EVAL/EVALSHA/FCALL, the first stream of
-- XREAD/XREADGROUP, argument 3 of XGROUP/XINFO/OBJECT/MEMORY; commands with
-- no key (PING, SCRIPT, INFO, an EVALSHA with no KEYS, ...) go to any master
-- that is up.  A multi-key command must keep its keys in one slot (hash tags),
-- else Redis answers CROSSSLOT.
--
-- Redirections, followed inside the call:
--   MOVED slot addr   the slot lives elsewhere now: the map learns it at once,
--                     the command is sent again there, and a fresh CLUSTER
--                     SLOTS is asked for in the background (at most one every
--                     refresh_gap_ms, default 200).
--   ASK slot addr     the slot is being migrated and this key already left:
--                     ASKING and the command go to addr back to back on its
--                     connection (driver call_asking), the map is unchanged.
--   TRYAGAIN          a multi-key command (a script) during a migration finds
--                     some of its keys on each side: sent again every 20 ms
--                     until timeout_ms, then nil, "slot migrating", "busy".
--   CLUSTERDOWN       nil, "cluster down", "not_connected" (Redis is not usable
--                     for this slot; like a lost connection, not a refusal).
-- At most 5 redirections per call, then the last error reply is answered.
-- Function libraries are per node (masters do not share them): each master
-- gets them with FUNCTION LOAD REPLACE before its first FCALL, and a node that
-- answers "Function not found" gets them again before the call is resent.
--
-- A master that is down answers nil, "not connected", "not_connected" for its slots at once
-- (its client reconnects by itself) while the others keep working; transport
-- failures also ask for a fresh slot map, so a failover is picked up.
local driver = require "flashhost.redis.driver"
-- Not circular: flashhost.redis only requires this module inside connect.
local redis = require "flashhost.redis"
local core = require "flashhost.core"
local timer = require "flashhost.timer"
local log = require "flashhost.log"
local scripts = require "flashhost.redis_scripts"
local bit = require "bit"

local band, bxor, lshift, rshift = bit.band, bit.bxor, bit.lshift, bit.rshift
local byte, find, sub, floor, fmt = string.byte, string.find, string.sub, math.floor, string.format

local M = { null = driver.null, SLOTS = 16384 }

local MAX_REDIRECTS = 5
local TRYAGAIN_MS = 20

-- ---- key slots -------------------------------------------------------------

-- CRC16/XMODEM (poly 0x1021, init 0), the checksum Redis Cluster hashes keys with.
local CRC = {}
for i = 0, 255 do
  local c = lshift(i, 8)
  for _ = 1, 8 do
    c = band(band(c, 0x8000) ~= 0 and bxor(lshift(c, 1), 0x1021) or lshift(c, 1), 0xffff)
  end
  CRC[i] = c
end

local function crc16(s, i, j)
  local c = 0
  for k = i, j do
    c = band(bxor(lshift(c, 8), CRC[bxor(rshift(c, 8), byte(s, k))]), 0xffff)
  end
  return c
end
M.crc16 = function(s) return crc16(s, 1, #s) end

-- key_slot(key) -> 0..16383.  Only the part between the first "{" and the
-- next "}" counts when it is not empty, so "{sku:7}:stock" and "{sku:7}:sale"
-- share a slot.  Numbers are keys written the way the driver sends them.
local function key_slot(key)
  if type(key) == "number" then
    key = (key == floor(key) and key > -9.2e18 and key < 9.2e18) and fmt("%d", key) or fmt("%.17g", key)
  end
  local s = find(key, "{", 1, true)
  if s then
    local e = find(key, "}", s + 1, true)
    if e and e > s + 1 then return band(crc16(key, s + 1, e - 1), 0x3fff) end
  end
  return band(crc16(key, 1, #key), 0x3fff)
end
M.key_slot = key_slot

-- Where the first key of a command is.  Absent: argument 2.
local KEYLESS, EVAL, STREAMS, ARG3, REFUSED = 1, 2, 3, 4, 5
local KIND = {}
local function kinds(kind, names)
  for name in names:gmatch("%S+") do KIND[name] = kind; KIND[name:lower()] = kind end
end
kinds(KEYLESS, [[PING ECHO INFO SCRIPT CLUSTER DBSIZE FLUSHDB FLUSHALL TIME CLIENT CONFIG COMMAND
  KEYS SCAN RANDOMKEY WAIT LASTSAVE SAVE BGSAVE BGREWRITEAOF SLOWLOG LATENCY DEBUG FUNCTION
  PUBLISH PUBSUB ACL ROLE AUTH LOLWUT MODULE SHUTDOWN]])
kinds(EVAL, "EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO")
kinds(STREAMS, "XREAD XREADGROUP")
kinds(ARG3, "XGROUP XINFO OBJECT MEMORY")
-- They change the state of a connection every task shares.
kinds(REFUSED, "ASKING READONLY READWRITE")

-- A wrong argument type is left for the driver to raise about.
local function slot_of(v)
  local t = type(v)
  if t == "string" or t == "number" then return key_slot(v) end
  return nil
end

-- The slot of a command's first key, or nil when it has none.
local function command_slot(argv, n)
  local kind = KIND[argv[1]]
  if kind == nil then
    return slot_of(argv[2])
  elseif kind == KEYLESS then
    return nil
  elseif kind == EVAL then
    local nk = tonumber(argv[3])
    if nk and nk >= 1 then return slot_of(argv[4]) end
    return nil
  elseif kind == STREAMS then
    for i = 2, n - 1 do
      local a = argv[i]
      if type(a) == "string" and a:upper() == "STREAMS" then return slot_of(argv[i + 1]) end
    end
    return nil
  elseif kind == ARG3 then
    return slot_of(argv[3])
  end
  error("redis: " .. tostring(argv[1]) .. " is not allowed on a cluster client's shared connections", 3)
end

-- ---- addresses ---------------------------------------------------------------

-- "host:port" or "[v6]:port" -> host, port | nil
local function split_addr(a)
  if type(a) ~= "string" then return nil end
  local host, port = a:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = a:match("^(.+):(%d+)$") end
  port = tonumber(port)
  if not host or host == "" or not port or port < 1 or port > 65535 then return nil end
  return host, port
end

-- parse_url("redis-cluster://[[user]:password@]host:port[,host:port...][/]")
-- -> { seeds = { "host:port", ... }, username?, password? } | nil, err
function M.parse_url(url)
  local rest = type(url) == "string" and url:match("^redis%-cluster://(.*)$")
  if not rest then
    return nil, "redis cluster URL must look like redis-cluster://[[user]:password@]host:port[,host:port...]"
  end
  local cfg = { seeds = {} }
  local userinfo, hosts = rest:match("^(.*)@([^@]*)$")
  if not userinfo then hosts = rest end
  if userinfo then
    local unescape = function(s) return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)) end
    local user, pass = userinfo:match("^([^:]*):(.*)$")
    if not user then user, pass = "", userinfo end
    if user ~= "" then cfg.username = unescape(user) end
    if pass ~= "" then cfg.password = unescape(pass) end
  end
  -- A cluster has only database 0: accept "/" or "/0", nothing else.
  hosts = hosts:gsub("/0?$", "")
  for a in (hosts .. ","):gmatch("([^,]*),") do
    if not split_addr(a) then return nil, "bad host:port '" .. a .. "' in redis cluster URL " .. redis.redact(url) end
    cfg.seeds[#cfg.seeds + 1] = a
  end
  return cfg
end

-- ---- the client ---------------------------------------------------------------

local Cluster = {}
Cluster.__index = Cluster

local function closed_error(level) error("redis client is closed", level + 1) end

-- The node of an address, made (connecting in the background) the first time.
-- Only live nodes are in _nodes: a node the map dropped is closed and removed.
local function node_at(self, host, port)
  local addr = host .. ":" .. port
  local n = self._nodes[addr]
  if n then return n end
  local o = self._opts
  n = {
    addr = addr, host = host, port = port, fresh = true,
    c = driver.new(host, port, 0, o.timeout_ms, o.connect_timeout_ms, o.max_pending, o.password, o.username),
  }
  self._nodes[addr] = n
  return n
end

-- A node made moments ago is still making its first connection: a command
-- for it waits for that attempt (a redirection to a new master, the first
-- calls after start) instead of failing.  Only the first attempt: afterwards
-- a node that is down answers "not connected" at once.
local function settle(self, n)
  local deadline = core.mono() + self._opts.connect_timeout_ms
  while n.fresh and not n.closed do
    local st, last = n.c:status()
    if st == "connected" or last ~= nil or core.mono() >= deadline then break end
    -- wait_ready returns as soon as the node is up; the slice notices a failed attempt
    n.c:wait_ready(10)
  end
  n.fresh = false
end

local function up(n) return n.c:status() == "connected" end

-- Any master that is up (for commands without a key), else a seed that is up,
-- else a fresh node (its first connection may still come), else nil.
local function any_node(self)
  for _, n in ipairs(self._masters) do if up(n) then return n end end
  for _, a in ipairs(self._seeds) do
    local n = self._nodes[a]
    if n and up(n) then return n end
  end
  for _, n in pairs(self._nodes) do if n.fresh then return n end end
  return nil
end

-- ---- slot map ---------------------------------------------------------------

-- CLUSTER SLOTS from the first node that answers; installs the new map.
-- Returns true, or nil and why.
local function refresh(self)
  local cands, seen = {}, {}
  local function add(n) if n and not seen[n] and not n.closed then seen[n] = true; cands[#cands + 1] = n end end
  for _, n in ipairs(self._masters) do add(n) end
  for _, a in ipairs(self._seeds) do add(self._nodes[a] or node_at(self, split_addr(a))) end
  for _, n in ipairs(cands) do if n.fresh then settle(self, n) end end
  local res, err, from
  for _, n in ipairs(cands) do
    if self._closed then return nil, "closed" end
    if up(n) then
      res, err = n.c:call("CLUSTER", "SLOTS")
      if type(res) == "table" then from = n; break end
      -- Once per distinct answer: a node without cluster mode refuses every time.
      if res == false and err ~= self._refused then
        self._refused = err
        log.error("redis cluster: CLUSTER SLOTS refused", { node = n.addr, err = err })
      end
      err = n.addr .. ": " .. tostring(err)
    end
  end
  if self._closed then return nil, "closed" end -- closed while we asked: make no nodes
  if not from then
    self._map_err = err or "no cluster node is reachable"
    return nil, self._map_err
  end
  local slots, masters, in_map = {}, {}, {}
  for _, r in ipairs(res) do
    local first, last, m = tonumber(r[1]), tonumber(r[2]), r[3]
    if first and last and type(m) == "table" and first >= 0 and last < M.SLOTS then
      -- A node that does not know its own address says "" or "?": it is the one we asked.
      local host = m[1]
      if type(host) ~= "string" or host == "" or host == "?" then host = from.host end
      local n = node_at(self, host, tonumber(m[2]))
      if not in_map[n] then in_map[n] = true; masters[#masters + 1] = n end
      for s = first + 1, last + 1 do slots[s] = n end
    end
  end
  local changed, old = 0, self._slots
  for s = 1, M.SLOTS do if old[s] ~= slots[s] then changed = changed + 1 end end
  self._slots, self._masters, self._map_err = slots, masters, nil
  self._refreshes = self._refreshes + 1
  -- Nodes that are neither masters nor seeds any more (a removed node) are
  -- closed: their client would reconnect forever.  A task still waiting on
  -- one gets "closed" and is routed again by the new map.
  local seeds = {}
  for _, a in ipairs(self._seeds) do seeds[a] = true end
  for addr, n in pairs(self._nodes) do
    if not in_map[n] and not seeds[addr] then
      self._nodes[addr] = nil
      n.closed = true
      n.c:close()
    end
  end
  if changed > 0 then
    local names = {}
    for i, n in ipairs(masters) do names[i] = n.addr end
    log.info("redis cluster: slot map", { masters = table.concat(names, ","), slots_changed = changed, from = from.addr })
  end
  return true
end

local function refresh_task(self)
  repeat
    self._refresh_again = false
    -- at least 1 ms apart even with refresh_gap_ms = 0: an attempt with every
    -- node down ends without yielding, and wait_ready asks again at once
    local wait = self._last_refresh + math.max(self._opts.refresh_gap_ms, 1) - core.mono()
    if wait > 0 and not timer.sleep(wait) then break end -- the generation stops
    if self._closed then break end
    self._last_refresh = core.mono()
    local ok, err = pcall(refresh, self)
    if not ok then log.error("redis cluster: slot map refresh failed", { err = tostring(err) }) end
    -- wake wait_ready's tasks: each attempt, with a map or without one
    local round = self._refreshed
    self._refreshed = core.event()
    round:set(true)
  until not self._refresh_again or self._closed
  self._refreshing = false
end

-- Asks for a new slot map in the background.  Debounced: one task at a time,
-- at most one CLUSTER SLOTS every refresh_gap_ms, and a request that comes
-- while one runs makes it run once more.
function Cluster:_refresh_soon()
  if self._closed then return end
  if self._refreshing then self._refresh_again = true; return end
  self._refreshing = true
  if not core.spawn(refresh_task, self) then self._refreshing = false end
end

-- ---- commands -----------------------------------------------------------------

-- Loads the client's libraries on one node; remembers it there.
local function load_libs(node, libs)
  local version = libs.version
  local ok, err, kind = scripts.load(function(...) return node.c:call(...) end, libs)
  if ok then node.loaded = version end
  return ok, err, kind
end

-- Sends argv[1..n] to the master of `slot` (any master when nil) and follows
-- the cluster's answers.  `libs`: argv is an FCALL, so the node must have the
-- client's function libraries (loaded there when needed).
local function exec(self, slot, argv, n, libs)
  local node = slot and self._slots[slot + 1] or any_node(self)
  local asking, redirects, missing, deadline = false, 0, 0, nil
  while true do
    -- closed by another task while this one waited: nothing may make nodes now
    if self._closed then return nil, "closed", "closed" end
    if node and node.fresh then settle(self, node) end
    if self._closed then return nil, "closed", "closed" end
    if node and node.closed then
      -- the map dropped it while we waited: ask the map again
      node = self._nodes[node.addr] or (slot and self._slots[slot + 1]) or any_node(self)
      asking = false
    end
    if not node then return nil, "not connected", "not_connected" end
    local c = node.c
    if libs and node.loaded ~= libs.version then
      local ok, lerr, lkind = load_libs(node, libs)
      if not ok then
        if ok == nil then self:_refresh_soon() end
        return ok, lerr, lkind
      end
    end
    local res, err, kind
    if asking then res, err, kind = c:call_asking(unpack(argv, 1, n)) else res, err, kind = c:call(unpack(argv, 1, n)) end
    if res then return res end
    if res == nil then
      if err == "closed" and node.closed and not self._closed and redirects < MAX_REDIRECTS then
        redirects = redirects + 1
      else
        if err == "not connected" or err == "connection lost" then self:_refresh_soon() end
        return nil, err, kind
      end
    else
      local b = byte(err, 1)
      if b == 77 and sub(err, 1, 6) == "MOVED " and redirects < MAX_REDIRECTS then    -- M
        local s, addr = err:match("^MOVED (%d+) (%S+)")
        local host, port = split_addr(addr)
        if not host then return res, err, kind end
        redirects, self._moved = redirects + 1, self._moved + 1
        node, asking = node_at(self, host, port), false
        self._slots[tonumber(s) + 1] = node
        log.debug("redis cluster: MOVED", { slot = s, to = addr })
        self:_refresh_soon()
      elseif b == 65 and sub(err, 1, 4) == "ASK " and redirects < MAX_REDIRECTS then  -- A
        local host, port = split_addr(err:match("^ASK %d+ (%S+)"))
        if not host then return res, err, kind end
        redirects, self._ask = redirects + 1, self._ask + 1
        node, asking = node_at(self, host, port), true
      elseif b == 69 and libs and missing < 2 and scripts.missing(err) then             -- E
        -- This node lost the library (restart, FUNCTION FLUSH) or never had it.
        missing = missing + 1
        local ok, lerr, lkind = load_libs(node, libs)
        if not ok then return ok, lerr, lkind end
      elseif b == 84 and sub(err, 1, 8) == "TRYAGAIN" then                              -- T
        self._tryagain = self._tryagain + 1
        deadline = deadline or core.mono() + self._opts.timeout_ms
        if core.mono() + TRYAGAIN_MS > deadline or not timer.sleep(TRYAGAIN_MS) then
          return nil, "slot migrating", "busy"
        end
        if self._closed then return nil, "closed", "closed" end
        node, asking = slot and self._slots[slot + 1] or any_node(self), false
      elseif b == 67 and sub(err, 1, 11) == "CLUSTERDOWN" then                          -- C
        self:_refresh_soon()
        return nil, "cluster down", "not_connected"
      else
        return res, err, kind
      end
    end
  end
end

-- r:call(cmd, ...) -> value | false, msg, kind | nil, reason, kind.  Yields.
function Cluster:call(...)
  if self._closed then closed_error(2) end
  local n = select("#", ...)
  if n < 1 then error("bad argument #1 to 'call' (command expected)", 2) end
  local argv = { ... }
  return exec(self, command_slot(argv, n), argv, n, nil)
end

-- r:call_node(addr, cmd, ...): the command to one node ("host:port" as
-- masters() lists it), no redirection followed: for per-node work such as
-- SCRIPT FLUSH or DBSIZE.  An address the client does not know raises.
function Cluster:call_node(addr, ...)
  if self._closed then closed_error(2) end
  local n = self._nodes[addr]
  if not n then error("redis cluster: no node " .. tostring(addr), 2) end
  if n.fresh then settle(self, n) end
  return n.c:call(...)
end

-- r:masters() -> { "host:port", ... } of the current slot map (empty before
-- the first CLUSTER SLOTS answered).
function Cluster:masters()
  local out = {}
  for i, n in ipairs(self._masters) do out[i] = n.addr end
  return out
end

-- r:node_of(key) -> "host:port" of the master that holds key's slot in the
-- current map, or nil when the map does not know it yet.
function Cluster:node_of(key)
  local n = self._slots[key_slot(key) + 1]
  return n and n.addr
end

-- r:wait_ready([ms]) -> true | nil, "timeout", "timeout".  Yields until the
-- slot map is known and every master in it is connected, at most ms
-- (default: connect_timeout_ms).  Calls never wait by themselves.  No
-- polling: the refresh task sets the event of its round when an attempt
-- ends (with a map or without one: then we ask again, at the task's pace),
-- and each master's client wakes its own waiters when it connects.
function Cluster:wait_ready(ms)
  if self._closed then closed_error(2) end
  ms = ms or self._opts.connect_timeout_ms
  if type(ms) ~= "number" or ms < 0 then error("bad argument #1 to 'wait_ready' (must be >= 0)", 2) end
  local deadline = core.mono() + ms
  while #self._masters == 0 do
    local left = deadline - core.mono()
    if left <= 0 then return nil, "timeout", "timeout" end
    local round = self._refreshed
    self:_refresh_soon()
    -- nil: the deadline passed, or the generation stops
    if not round:wait(left) then return nil, "timeout", "timeout" end
  end
  for _, n in ipairs(self._masters) do
    local left = deadline - core.mono()
    if n.closed or not n.c:wait_ready(left > 0 and left or 0) then return nil, "timeout", "timeout" end
  end
  return true
end

-- r:status() -> "connected" (map known, every master up) | "connecting"
-- (no map yet) | "disconnected", and a reason when not connected.
function Cluster:status()
  if self._closed then return "disconnected", "closed" end
  if #self._masters == 0 then
    local last
    for _, a in ipairs(self._seeds) do
      local n = self._nodes[a]
      local _, err = n and n.c:status()
      last = last or err
    end
    return "connecting", self._map_err or last
  end
  local down = {}
  for _, n in ipairs(self._masters) do
    local st, err = n.c:status()
    if st ~= "connected" then down[#down + 1] = n.addr .. ": " .. (err or st) end
  end
  if #down == 0 then return "connected", nil end
  return "disconnected", table.concat(down, "; ")
end

-- r:stats() -> the single-node counters summed over the nodes, and
-- { nodes, masters, moved, ask, tryagain, refreshes }.
function Cluster:stats()
  local t = { inflight = 0, waiting = 0, connects = 0, losses = 0, timeouts = 0 }
  local nodes = 0
  for _, n in pairs(self._nodes) do
    nodes = nodes + 1
    if not self._closed then
      for k, v in pairs(n.c:stats()) do t[k] = (t[k] or 0) + v end
    end
  end
  t.nodes, t.masters = nodes, #self._masters
  t.moved, t.ask, t.tryagain, t.refreshes = self._moved, self._ask, self._tryagain, self._refreshes
  return t
end

-- r:close(): calls in flight answer nil, "closed"; later calls raise.
function Cluster:close()
  if self._closed then return end
  self._closed = true
  for _, n in pairs(self._nodes) do
    n.closed = true
    n.c:close()
  end
end

-- Function libraries: registered as in flashhost.redis, loaded per master.
scripts.install(Cluster)

-- r:load_functions() -> true | nil, err.  Yields: loads every registered
-- library on every master of the slot map (waiting for the map and the
-- masters at most connect_timeout_ms), e.g. in a start hook.  A master that
-- joins later, or loses them, gets them at its first FCALL.
function Cluster:load_functions()
  if self._closed then closed_error(2) end
  local ok, err = self:wait_ready()
  if not ok then return nil, err end
  for _, node in ipairs(self._masters) do
    local res, lerr = load_libs(node, self._libs)
    if not res then return nil, node.addr .. ": " .. tostring(lerr) end
  end
  return true
end

local function fcall(self, cmd, name, keys, args)
  if self._closed then closed_error(3) end
  local argv, n = scripts.argv(cmd, name, keys, args, 3)
  if #self._libs.names == 0 then error("no redis function library registered (r:functions)", 3) end
  return exec(self, keys and keys[1] ~= nil and slot_of(keys[1]) or nil, argv, n, self._libs)
end

-- r:fcall(name, keys, args) / r:fcall_ro(...): routed by keys[1] (any master
-- without keys); as flashhost.redis.
function Cluster:fcall(name, keys, args) return fcall(self, "FCALL", name, keys, args) end
function Cluster:fcall_ro(name, keys, args) return fcall(self, "FCALL_RO", name, keys, args) end

-- connect(opts, url): see flashhost.redis.connect.  opts.cluster (a
-- list of "host:port") wins over the URL; opts.password / opts.username go
-- with it.  Misuse raises; never yields.
function M.connect(opts, url)
  local cfg
  if opts.cluster ~= nil then
    if type(opts.cluster) ~= "table" or #opts.cluster == 0 then
      error("redis.connect: cluster must be a list of \"host:port\"", 3)
    end
    cfg = { seeds = {}, password = opts.password, username = opts.username }
    for i, a in ipairs(opts.cluster) do
      if not split_addr(a) then error("redis.connect: bad cluster address " .. tostring(a), 3) end
      cfg.seeds[i] = a
    end
    url = "redis-cluster://" .. table.concat(cfg.seeds, ",")
  else
    local err
    cfg, err = M.parse_url(url)
    if not cfg then error(err, 3) end
  end
  local o = {
    timeout_ms = opts.timeout_ms or 1000,
    connect_timeout_ms = opts.connect_timeout_ms or 1000,
    max_pending = opts.max_pending or 10000,
    refresh_gap_ms = opts.refresh_gap_ms or 200,
    password = cfg.password, username = cfg.username,
  }
  for _, k in ipairs { "timeout_ms", "connect_timeout_ms", "max_pending", "refresh_gap_ms" } do
    if type(o[k]) ~= "number" or o[k] < (k == "refresh_gap_ms" and 0 or 1) then
      error("redis.connect: bad " .. k, 3)
    end
  end
  local self = setmetatable({
    url = redis.redact(url), cluster = true,
    _opts = o, _nodes = {}, _masters = {}, _slots = {}, _libs = scripts.new(),
    _seeds = {}, _closed = false,
    _refreshing = false, _refresh_again = false, _last_refresh = -math.huge,
    _refreshed = core.event(),
    _moved = 0, _ask = 0, _tryagain = 0, _refreshes = 0,
  }, Cluster)
  for i, a in ipairs(cfg.seeds) do
    local host, port = split_addr(a)
    self._seeds[i] = node_at(self, host, port).addr
  end
  self:_refresh_soon()
  return self
end

return M
