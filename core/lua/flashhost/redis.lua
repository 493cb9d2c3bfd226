-- flashhost.redis: a Redis client for tasks.
--
--   local redis = require "flashhost.redis"
--   local r = redis.connect { url = "redis://:secret@127.0.0.1:6379/0" }  -- never yields
--   r:wait_ready(1000)                      -- optional: true | nil, "timeout"
--   local v, err = r:call("GET", "k")       -- yields
--   r:load_library("lib/mylib.lua") -- a Redis Function library from a file
--   local a, err = r:fcall("status", { "k" }, { "x" })  -- yields
--
-- One connection per client, shared by every coroutine: calls from many tasks
-- are pipelined on it.  Every call answers one of
--   value                   the reply: string, number, array (a Lua table), or
--                           redis.null for a nil reply (also inside arrays); a
--                           nested error reply is { err = "ERR ..." }
--   false, "ERR ...", kind  Redis answered with an error reply; kind is its
--                           first word: "ERR", "WRONGTYPE", "NOSCRIPT", ...
--   nil, reason, kind       the transport failed: "not connected" (also while
--                           reconnecting: a call never waits for Redis to come
--                           back; kind not_connected), "timeout" (timeout),
--                           "connection lost" and "closed" (closed),
--                           "overloaded" (busy)
-- so code can tell "Redis said no" from "Redis is not there".  redis.null is
-- cjson.null (the NULL light userdata), as mysql.null.  Misuse (a bad
-- argument, a call outside a task, a call on a closed client) raises.
--
-- The client reconnects by itself, forever, with backoff (50 ms doubling to
-- 2 s, jittered).  Commands that would break a shared connection (MULTI/EXEC,
-- WATCH, SUBSCRIBE, MONITOR, SELECT, ...) raise: use a function instead, and the
-- URL for the database.  Blocking commands (BLPOP, ...) stall every coroutine
-- behind them; give them their own client.
--
-- A Redis Cluster (redis-cluster://host:port,host:port... or cluster = {...})
-- gets a client with this same API from flashhost/redis_cluster.lua; nothing
-- below changes for a single node.
local driver = require "flashhost.redis.driver"
local scripts = require "flashhost.redis_scripts"

-- driver.null is the NULL light userdata: cjson.null, mysql.null.
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
    _libs = scripts.new(),
    _connect_timeout = opts.connect_timeout_ms or 1000,
    url = M.redact(url),
  }, Client)
end

-- r:call(cmd, ...) -> value | false, msg, kind | nil, reason, kind.  Arguments are strings
-- or numbers (integers are sent without an exponent).  Yields.
function Client:call(...)
  return self._c:call(...)
end

-- r:wait_ready([ms]) -> true | nil, "timeout", "timeout".  Yields until connected, at most
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

-- Redis Functions: r:functions(name, source) and r:load_library(path)
-- register a library (flashhost/redis_scripts.lua); r:fcall runs one of its
-- functions.
scripts.install(Client)

-- Loads every registered library on this client's Redis.
local function load(self)
  local libs, version = self._libs, self._libs.version
  local ok, err, kind = scripts.load(function(...) return self._c:call(...) end, libs)
  if ok then self._loaded = version end
  return ok, err, kind
end

-- r:load_functions() -> true | nil, err, kind.  Yields: FUNCTION LOAD REPLACE
-- of every registered library now, e.g. in a start hook, so the first
-- requests do not each load it.
function Client:load_functions()
  local ok, err, kind = load(self)
  if not ok then return nil, err, kind end
  return true
end

local function fcall(self, cmd, name, keys, args)
  local argv, n = scripts.argv(cmd, name, keys, args, 3)
  if #self._libs.names == 0 then error("no redis function library registered (r:functions)", 3) end
  if self._loaded ~= self._libs.version then
    local ok, err, kind = load(self)
    if not ok then return ok, err, kind end
  end
  local c = self._c
  local res, err, kind = c:call(unpack(argv, 1, n))
  if res == false and scripts.missing(err) then
    local ok, lerr, lkind = load(self)
    if not ok then return ok, lerr, lkind end
    res, err, kind = c:call(unpack(argv, 1, n))
  end
  return res, err, kind
end

-- r:fcall(name, keys, args) -> as r:call.  Loads the libraries on first use and
-- again when Redis lost them (a restart with empty data, FUNCTION FLUSH), then
-- retries once.  keys and args are lists (no holes) of strings or numbers.
function Client:fcall(name, keys, args)
  return fcall(self, "FCALL", name, keys, args)
end

-- r:fcall_ro(name, keys, args): as r:fcall, for a function flagged no-writes.
function Client:fcall_ro(name, keys, args)
  return fcall(self, "FCALL_RO", name, keys, args)
end

return M
