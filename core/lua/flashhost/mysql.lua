-- flashhost.mysql: a small pool of MariaDB/MySQL connections for tasks.
--
--   local mysql = require "flashhost.mysql"
--   local db = mysql.pool { size = 4 }              -- no I/O yet
--   local rows, err = db:query("SELECT id, name FROM t WHERE id = ?", 42)
--   local res = db:query("INSERT INTO t (name) VALUES (?)", "x")  -- res.insert_id
--   local ok, err = db:transaction(function(tx)
--     assert(tx:query("UPDATE ..."))
--     return true
--   end)
--
-- Every call that talks to the server yields the calling task.  Errors of the
-- world come back as nil, "reason", kind; misuse (bad arguments, a wrong
-- number of parameters) raises.
--
-- Reasons look like "ER_DUP_ENTRY (1062): Duplicate entry 'x' for key 'PRIMARY'";
-- when the connection itself failed (server down or restarted, timeout) they
-- start with "connection lost: "; "pool timeout" when no connection became
-- free in time; "pool closed" after db:close().  The kind is what to test:
--   "timeout"   the statement or the connect ran out of time
--   "refused"   no connection could be made (server down, wrong host or password)
--   "closed"    the connection was lost, or the pool is closed
--   "busy"      no connection became free within pool_timeout_ms
--   "ER_..."    the server refused the statement: the error's name for the
--               codes in NAMES below, "ER_<number>" for any other.
-- The database has no default here: opts.database or MYSQL_DATABASE.
--
-- Connections are opened lazily, at most `size` of them.  One whose server
-- went away is dropped and the next caller opens a new one, so a restarted
-- server is picked up without recreating the pool.  A statement is never
-- re-sent by the pool: after "connection lost" it may or may not have run.
local driver = require "flashhost.mysql.driver"

local M = {}

-- SQL NULL, in results and as a parameter (the same value as cjson.null).
M.null = driver.null

-- Names for the error numbers an application is likely to meet.
local NAMES = {
  [1022] = "ER_DUP_KEY", [1040] = "ER_CON_COUNT_ERROR", [1044] = "ER_DBACCESS_DENIED_ERROR",
  [1045] = "ER_ACCESS_DENIED_ERROR", [1046] = "ER_NO_DB_ERROR", [1048] = "ER_BAD_NULL_ERROR",
  [1049] = "ER_BAD_DB_ERROR", [1050] = "ER_TABLE_EXISTS_ERROR", [1051] = "ER_BAD_TABLE_ERROR",
  [1053] = "ER_SERVER_SHUTDOWN", [1054] = "ER_BAD_FIELD_ERROR", [1062] = "ER_DUP_ENTRY",
  [1064] = "ER_PARSE_ERROR", [1136] = "ER_WRONG_VALUE_COUNT_ON_ROW", [1142] = "ER_TABLEACCESS_DENIED_ERROR",
  [1146] = "ER_NO_SUCH_TABLE", [1153] = "ER_NET_PACKET_TOO_LARGE", [1205] = "ER_LOCK_WAIT_TIMEOUT",
  [1213] = "ER_LOCK_DEADLOCK", [1264] = "ER_WARN_DATA_OUT_OF_RANGE", [1292] = "ER_TRUNCATED_WRONG_VALUE",
  [1317] = "ER_QUERY_INTERRUPTED", [1366] = "ER_TRUNCATED_WRONG_VALUE_FOR_FIELD",
  [1406] = "ER_DATA_TOO_LONG", [1451] = "ER_ROW_IS_REFERENCED_2", [1452] = "ER_NO_REFERENCED_ROW_2",
  [1644] = "ER_SIGNAL_EXCEPTION", [1690] = "ER_DATA_OUT_OF_RANGE", [1927] = "ER_CONNECTION_KILLED",
  [3024] = "ER_QUERY_TIMEOUT", [4025] = "ER_CONSTRAINT_FAILED",
  [2002] = "CR_CONNECTION_ERROR", [2003] = "CR_CONN_HOST_ERROR", [2005] = "CR_UNKNOWN_HOST",
  [2006] = "CR_SERVER_GONE_ERROR", [2008] = "CR_OUT_OF_MEMORY", [2013] = "CR_SERVER_LOST",
  [2014] = "CR_COMMANDS_OUT_OF_SYNC", [2026] = "CR_SSL_CONNECTION_ERROR", [2055] = "CR_SERVER_LOST_EXTENDED",
}

local function describe(msg, errno, sqlstate)
  if not errno or errno == 0 then return msg end
  local name = NAMES[errno]
  if name then return ("%s (%d): %s"):format(name, errno, msg) end
  return ("ERROR %d (%s): %s"):format(errno, sqlstate or "HY000", msg)
end

-- Client errors that mean "no connection could be made" or "it went away".
local REFUSED = { [2002] = true, [2003] = true, [2005] = true, [2026] = true }
local LOST = { [2006] = true, [2013] = true, [2055] = true }

-- The kind of a driver failure (see the top of this file).  The driver
-- answers a deadline with errno 0 and a message starting "timeout".
local function kind_of(msg, errno)
  if not errno or errno == 0 then
    return type(msg) == "string" and msg:find("^timeout") and "timeout" or "closed"
  end
  if REFUSED[errno] then return "refused" end
  if LOST[errno] then return "closed" end
  return NAMES[errno] or ("ER_" .. errno)
end
M.kind_of = kind_of

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local function positive(opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= "number" or v <= 0 then error(key .. " must be a positive number", 3) end
  return v
end

-- Runs one statement on c; nil, reason, kind on failure.
local function execute(c, stmt, timeout_ms)
  local res, msg, errno, sqlstate = c:query(stmt, timeout_ms)
  if res then return res end
  local reason, kind = describe(msg, errno, sqlstate), kind_of(msg, errno)
  if not c:alive() then
    reason = "connection lost: " .. reason
    -- a server error that came with the connection's end is about the connection
    if kind ~= "timeout" and kind ~= "refused" then kind = "closed" end
  end
  return nil, reason, kind
end

-- Expands the placeholders on c; nil, message on misuse, for the caller to
-- raise once the connection is safe.
local function format(c, sql, ...)
  local ok, stmt = pcall(c.format, c, sql, ...)
  if not ok then return nil, stmt end
  return stmt
end

-- Raises before the pool's bookkeeping changes: a call from outside a task
-- would otherwise fail half way, in the driver.
local function check_task()
  if not coroutine.isyieldable() then
    error("this call does I/O and must run inside a flashhost task (a handler, a hook or flashhost.spawn)", 3)
  end
end

local Pool = {}
Pool.__index = Pool

-- A waiter woken with SLOT may open a connection itself (one was dropped).
local SLOT = false

--[[
mysql.pool(opts) -> pool.  Returns at once; connections are opened on demand.
  host, port, user, password   default MYSQL_HOST (127.0.0.1), MYSQL_PORT (3306),
                               MYSQL_USER (flashuser), MYSQL_PASSWORD (flashpass)
  database                     required: opts.database, else MYSQL_DATABASE (raises if neither)
  size = 4                  most connections open at once
  connect_timeout_ms = 2000 opening one connection (name lookup, TCP, handshake)
  query_timeout_ms = 5000   one statement, from sending to the last row
  pool_timeout_ms           waiting for a free connection (default connect + query timeout)
]]
function M.pool(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("mysql.pool: options must be a table", 2) end
  local port = tonumber(opts.port or env("MYSQL_PORT", 3306))
  if not port then error("mysql.pool: bad port", 2) end
  local database = opts.database or env("MYSQL_DATABASE", nil)
  if type(database) ~= "string" or database == "" then
    error("mysql.pool: database is required (opts.database or MYSQL_DATABASE)", 2)
  end
  local connect_timeout = positive(opts, "connect_timeout_ms", 2000)
  local query_timeout = positive(opts, "query_timeout_ms", 5000)
  local idle = {}
  local self = setmetatable({
    cfg = {
      host = opts.host or env("MYSQL_HOST", "127.0.0.1"),
      port = port,
      user = opts.user or env("MYSQL_USER", "flashuser"),
      password = opts.password or env("MYSQL_PASSWORD", "flashpass"),
      database = database,
      timeout_ms = connect_timeout,
    },
    size = math.max(1, math.floor(positive(opts, "size", 4))),
    query_timeout_ms = query_timeout,
    pool_timeout_ms = positive(opts, "pool_timeout_ms", connect_timeout + query_timeout),
    idle = idle,       -- connections ready for use, most recently used last
    total = 0,         -- connections open or being opened, plus slots handed over
    waiters = { head = 1, tail = 0 },
    closed = false,
  }, Pool)
  -- Tables have no __gc in LuaJIT: a proxy closes the idle connections when
  -- the pool is collected (busy ones are closed by their own __gc).
  local proxy = newproxy(true)
  getmetatable(proxy).__gc = function()
    for i = #idle, 1, -1 do idle[i]:close(); idle[i] = nil end
  end
  self._gc = proxy
  return self
end

-- Hands `value` to the first caller still waiting; false if there is none.
function Pool:_wake_next(value)
  local q = self.waiters
  while q.head <= q.tail do
    local w = q[q.head]
    q[q.head] = nil
    q.head = q.head + 1
    if w and w:wake(value) then return true end
  end
  return false
end

-- A connection was dropped: its slot goes to a waiter, or becomes free.
function Pool:_free_slot()
  if self.closed or not self:_wake_next(SLOT) then self.total = self.total - 1 end
end

-- Opens a connection in a slot already counted in self.total.
function Pool:_open()
  local c, msg, errno, sqlstate = driver.connect(self.cfg)
  if not c then
    self:_free_slot()
    -- whatever the server said (access denied, unknown database), there is no connection
    local kind = kind_of(msg, errno) == "timeout" and "timeout" or "refused"
    return nil, ("connection lost: cannot connect to %s:%d: %s"):format(
      self.cfg.host, self.cfg.port, describe(msg, errno, sqlstate)), kind
  end
  if self.closed then
    c:close()
    self.total = self.total - 1
    return nil, "pool closed", "closed"
  end
  return c
end

function Pool:_acquire()
  if self.closed then return nil, "pool closed", "closed" end
  local idle = self.idle
  while #idle > 0 do
    local c = table.remove(idle)
    if c:alive() then return c end
    -- The server hung up while it sat idle (restart, wait_timeout): drop it.
    c:close()
    self.total = self.total - 1
  end
  if self.total < self.size then
    self.total = self.total + 1
    return self:_open()
  end
  local w = driver.waiter()
  local q = self.waiters
  q.tail = q.tail + 1
  q[q.tail] = w
  local ok, c = w:wait(self.pool_timeout_ms)
  if not ok then
    for i = q.head, q.tail do
      if q[i] == w then q[i] = false break end
    end
    return nil, "pool timeout", "busy"
  end
  if c == SLOT then return self:_open() end
  if c == nil then return nil, "pool closed", "closed" end
  return c
end

function Pool:_release(c)
  if self.closed or not c:alive() then
    c:close()
    self:_free_slot()
    return
  end
  if self:_wake_next(c) then return end
  self.idle[#self.idle + 1] = c
end

-- db:query(sql, ...) -> rows | { affected_rows = n, insert_id = n } | nil, reason, kind
-- Rows: an array of tables keyed by column name, values as strings (NULL as
-- mysql.null), and `rows.columns`, the column names in order.
function Pool:query(sql, ...)
  if type(sql) ~= "string" then error("query: sql must be a string", 2) end
  check_task()
  local c, err, kind = self:_acquire()
  if not c then return nil, err, kind end
  local stmt, ferr = format(c, sql, ...)
  if not stmt then
    self:_release(c)
    error(ferr, 2)
  end
  local res, qerr, qkind = execute(c, stmt, self.query_timeout_ms)
  self:_release(c)
  return res, qerr, qkind
end

local Tx = {}
Tx.__index = Tx

-- tx:query(sql, ...): as db:query, on the transaction's connection.
function Tx:query(sql, ...)
  local c = self._c
  if not c then error("the transaction is over", 2) end
  if type(sql) ~= "string" then error("query: sql must be a string", 2) end
  local stmt, ferr = format(c, sql, ...)
  if not stmt then error(ferr, 2) end
  return execute(c, stmt, self._timeout)
end

-- Ends a transaction that must not commit.  A connection whose ROLLBACK
-- failed cannot be trusted with the next caller: it is closed, not pooled.
local function rollback(c, timeout_ms)
  if not c:alive() then return end
  local _, err = execute(c, "ROLLBACK", timeout_ms)
  if err then c:close() end
end

--[[
db:transaction(fn) -> fn's values (true if it returned none) | nil, reason, kind
Runs fn(tx) between BEGIN and COMMIT on one connection; fn may yield in
tx:query.  If fn returns nil (usually nil, reason, kind: what tx:query
answered), or raises, the transaction is rolled back and transaction returns
nil, reason, kind (no kind when fn raised: that is a bug, not the world).
A failed BEGIN or COMMIT also answers nil, reason, kind.
]]
function Pool:transaction(fn)
  if type(fn) ~= "function" then error("transaction: fn must be a function", 2) end
  check_task()
  local c, err, kind = self:_acquire()
  if not c then return nil, err, kind end
  local timeout = self.query_timeout_ms
  local _, berr, bkind = execute(c, "BEGIN", timeout)
  if berr then
    self:_release(c)
    return nil, berr, bkind
  end
  local tx = setmetatable({ _c = c, _timeout = timeout }, Tx)
  local r = { n = 0 }
  local function collect(ok, ...)
    r.n = select("#", ...)
    for i = 1, r.n do r[i] = select(i, ...) end
    return ok
  end
  local ok = collect(pcall(fn, tx))
  tx._c = nil
  if not ok or (r.n >= 1 and r[1] == nil) then
    local reason = ok and (r[2] or "the transaction function returned nil") or r[1]
    local rkind = ok and r[3] or nil
    rollback(c, timeout)
    self:_release(c)
    return nil, reason, rkind
  end
  local _, cerr, ckind = execute(c, "COMMIT", timeout)
  if cerr then rollback(c, timeout) end
  self:_release(c)
  if cerr then return nil, cerr, ckind end
  if r.n == 0 then return true end
  return unpack(r, 1, r.n)
end

-- db:stats() -> { size, open, idle, waiting }
function Pool:stats()
  local q, waiting = self.waiters, 0
  for i = q.head, q.tail do if q[i] then waiting = waiting + 1 end end
  return { size = self.size, open = self.total, idle = #self.idle, waiting = waiting }
end

-- db:close(): closes the idle connections now and the busy ones when they
-- come back; callers waiting for a connection get nil, "pool closed".
function Pool:close()
  if self.closed then return end
  self.closed = true
  local idle = self.idle
  for i = #idle, 1, -1 do
    idle[i]:close()
    idle[i] = nil
    self.total = self.total - 1
  end
  while self:_wake_next(nil) do end
end

return M
