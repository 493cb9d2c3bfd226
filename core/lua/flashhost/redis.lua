-- flashhost.redis: a Redis client for tasks.
--
--   local redis = require "flashhost.redis"
--   local r = redis.connect { url = "redis://:secret@127.0.0.1:6379/0" }  -- never yields
--   r:wait_ready(1000)                      -- optional: true | nil, "timeout"
--   local v, err = r:call("GET", "k")       -- yields
--
-- One connection per client, shared by every coroutine: calls from many tasks
-- are pipelined on it.  Every call answers one of
--   value             the reply: string, number, array (a Lua table), or
--                     redis.null for a nil reply (also inside arrays); a nested
--                     error reply is { err = "ERR ..." }
--   false, "ERR ..."  Redis answered with an error reply
--   nil, reason       the transport failed: "not connected" (also while
--                     reconnecting: a call never waits for Redis to come back),
--                     "timeout", "connection lost", "overloaded", "closed"
-- so code can tell "Redis said no" from "Redis is not there".  Misuse (a bad
-- argument, a call outside a task, a call on a closed client) raises.
--
-- The client reconnects by itself, forever, with backoff (50 ms doubling to
-- 2 s, jittered).  Commands that would break a shared connection (MULTI/EXEC,
-- WATCH, SUBSCRIBE, MONITOR, SELECT, ...) raise: use a script instead, and the
-- URL for the database.  Blocking commands (BLPOP, ...) stall every coroutine
-- behind them; give them their own client.
--
-- A Redis Cluster (redis-cluster://host:port,host:port... or cluster = {...})
-- gets a client with this same API from flashhost/redis_cluster.lua; nothing
-- below changes for a single node.
local driver = require "flashhost.redis.driver"

local M = { null = driver.null }

local DEFAULT_URL = "redis://127.0.0.1:6379"

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- parse_url("redis://[[user]:password@]host[:port][/db]") -> cfg | nil, err
function M.parse_url(url)
  local rest = type(url) == "string" and url:match("^redis://(.*)$")
  if not rest then return nil, "redis URL must look like redis://[[user]:password@]host[:port][/db]" end
  local cfg = { port = 6379, db = 0 }
  local userinfo, hostpart = rest:match("^(.*)@([^@]*)$")
  if not userinfo then hostpart = rest end
  if userinfo then
    local user, pass = userinfo:match("^([^:]*):(.*)$")
    if not user then user, pass = "", userinfo end -- redis://password@host, as some tools write it
    if user ~= "" then cfg.username = unescape(user) end
    if pass ~= "" then cfg.password = unescape(pass) end
  end
  local hostport, path = hostpart:match("^([^/]*)(.*)$")
  local host, port
  if hostport:sub(1, 1) == "[" then
    host, port = hostport:match("^%[([^%]]+)%]:?(%d*)$")
  else
    host, port = hostport:match("^([^:]+):?(%d*)$")
  end
  if not host then return nil, "bad host in redis URL " .. M.redact(url) end
  cfg.host = host
  if port ~= "" then cfg.port = tonumber(port) end
  if cfg.port < 1 or cfg.port > 65535 then return nil, "bad port in redis URL " .. M.redact(url) end
  if path ~= "" and path ~= "/" then
    local db = path:match("^/(%d+)$")
    if not db then return nil, "bad database in redis URL " .. M.redact(url) end
    cfg.db = tonumber(db)
  end
  return cfg
end

-- The URL without its password, for logs and error messages.
function M.redact(url)
  return (tostring(url):gsub("^(redis[%-%a]*://[^:@/]*):[^@]*@", "%1:***@"))
end

local Client = {}
Client.__index = Client

-- connect{ url, timeout_ms = 1000, connect_timeout_ms = 1000, max_pending = 10000 }
-- -> client.  Returns at once and connects in the background (never yields, so
-- it may run at app start).  url defaults to $REDIS_URL, then redis://127.0.0.1:6379.
-- A malformed URL or option raises: that is a configuration bug.
--
-- A Redis Cluster: url = "redis-cluster://[[user]:password@]host:port[,host:port...]",
-- or cluster = { "host:port", ... } (with password, username; refresh_gap_ms)
-- gives a client with the same API that follows the slot map and MOVED/ASK
-- redirections (flashhost/redis_cluster.lua).
function M.connect(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("redis.connect expects a table of options", 2) end
  local url = opts.url or os.getenv("REDIS_URL") or DEFAULT_URL
  if url == "" then url = DEFAULT_URL end
  if opts.cluster ~= nil or url:find("^redis%-cluster://") then
    local cluster = require("flashhost.redis_cluster").connect(opts, url)
    return cluster
  end
  local cfg, err = M.parse_url(url)
  if not cfg then error(err, 2) end
  local c = driver.new(cfg.host, cfg.port, cfg.db, opts.timeout_ms or 1000, opts.connect_timeout_ms or 1000,
    opts.max_pending or 10000, cfg.password, cfg.username)
  return setmetatable({
    _c = c,
    _scripts = {},
    _connect_timeout = opts.connect_timeout_ms or 1000,
    url = M.redact(url),
  }, Client)
end

-- r:call(cmd, ...) -> value | false, msg | nil, reason.  Arguments are strings
-- or numbers (integers are sent without an exponent).  Yields.
function Client:call(...)
  return self._c:call(...)
end

-- r:wait_ready([ms]) -> true | nil, "timeout".  Yields until connected, at most
-- ms (default: connect_timeout_ms).  Useful at start; calls never wait by themselves.
function Client:wait_ready(ms)
  return self._c:wait_ready(ms or self._connect_timeout)
end

-- r:status() -> "connected" | "connecting" | "disconnected", last error (or nil)
function Client:status()
  return self._c:status()
end

-- r:stats() -> { inflight, waiting, connects, losses, timeouts }
function Client:stats()
  return self._c:stats()
end

-- r:close(): calls in flight answer nil, "closed"; later calls raise.
function Client:close()
  return self._c:close()
end

-- r:script(name, source) registers a server-side script under a name; nothing
-- is sent until the first r:evalsha(name, ...).  Returns the client.
function Client:script(name, source)
  if type(name) ~= "string" then error("script name must be a string", 2) end
  if type(source) ~= "string" then error("script source must be a string", 2) end
  local s = self._scripts[name]
  if not s or s.source ~= source then self._scripts[name] = { source = source } end
  return self
end

-- r:load_scripts(dir, names) registers dir/<name>.lua for every name; a missing
-- or unreadable file raises (a broken deployment must not start).  Returns the
-- client.  Any client with r:script will do (the cluster client shares it).
function M.load_scripts(self, dir, names)
  if type(dir) ~= "string" or type(names) ~= "table" then
    error("load_scripts(dir, names): a folder and a list of script names", 2)
  end
  for _, name in ipairs(names) do
    local path = dir:gsub("/$", "") .. "/" .. name .. ".lua"
    local f, err = io.open(path, "rb")
    if not f then error("redis script " .. name .. ": " .. tostring(err), 2) end
    local src = f:read("*a")
    f:close()
    if not src then error("redis script " .. name .. ": cannot read " .. path, 2) end
    self:script(name, src)
  end
  return self
end
Client.load_scripts = M.load_scripts

-- SCRIPT LOAD; remembers the SHA1 Redis computed.
local function load_script(c, s)
  local sha, err = c:call("SCRIPT", "LOAD", s.source)
  if not sha then return sha, err end
  s.sha = sha
  return sha
end

-- r:evalsha(name, keys, args) -> as r:call.  Loads the script on first use and
-- again when Redis lost it (NOSCRIPT after a restart or SCRIPT FLUSH), then
-- retries once.  keys and args are lists (no holes) of strings or numbers.
function Client:evalsha(name, keys, args)
  local s = self._scripts[name]
  if not s then error("unknown redis script '" .. tostring(name) .. "' (register it with r:script)", 2) end
  local c = self._c
  if not s.sha then
    local sha, err = load_script(c, s)
    if not sha then return sha, err end
  end
  local argv, n = { "EVALSHA", s.sha, 0 }, 3
  if keys then
    argv[3] = #keys
    for i = 1, #keys do n = n + 1; argv[n] = keys[i] end
  end
  if args then
    for i = 1, #args do n = n + 1; argv[n] = args[i] end
  end
  local res, err = c:call(unpack(argv, 1, n))
  if res == false and err:sub(1, 8) == "NOSCRIPT" then
    local sha, lerr = load_script(c, s)
    if not sha then return sha, lerr end
    argv[2] = sha
    res, err = c:call(unpack(argv, 1, n))
  end
  return res, err
end

return M
