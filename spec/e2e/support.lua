-- Support for end-to-end specs: start flashhost processes, talk HTTP to them
-- over real sockets (lua-socket, blocking, one request at a time), poll for
-- conditions with a deadline, stop processes and check how they ended.
local socket = require "socket"
local cjson = require "cjson"

local M = {}

M.BIN = os.getenv("FLASHHOST_BIN") or "build/flashhost"
M.ROOT = os.getenv("FH_REPO") or "."

function M.sleep(s) socket.sleep(s) end
function M.now() return socket.gettime() end

-- Polls fn until it returns a truthy value or `timeout` seconds pass.
function M.wait_for(what, fn, timeout)
  local deadline = M.now() + (timeout or 10)
  local last
  repeat
    local ok, v = pcall(fn)
    if ok and v then return v end
    last = v
    M.sleep(0.02)
  until M.now() > deadline
  error(("timed out waiting for %s (last: %s)"):format(what, tostring(last)), 2)
end

-- Runs a shell command: its output (stdout and stderr) and exit code.
function M.sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return (out:gsub("rc=%d+%s*$", "")), rc
end

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.q = shell_quote

-- below the kernel's ephemeral range (32768+), so an outgoing connection
-- cannot be holding the port we pick
local next_port = 20000 + (tonumber(tostring(os.time()):sub(-3)) or 0) * 7 % 8000
-- A port nobody listens on and that can be bound now, distinct for each call.
function M.free_port()
  for _ = 1, 500 do
    next_port = next_port + 1
    if next_port >= 32000 then next_port = 20000 end
    local c = socket.tcp()
    c:settimeout(0.05)
    local listening = c:connect("127.0.0.1", next_port)
    c:close()
    if not listening then
      local b = socket.bind("127.0.0.1", next_port)
      if b then
        b:close()
        return next_port
      end
    end
  end
  error("no free port")
end

-- Starts `flashhost ARGS...` with env; returns a process table {pid, port, admin, log}.
function M.start(args, env, opts)
  opts = opts or {}
  local port, admin = opts.port or M.free_port(), opts.admin or M.free_port()
  local log = os.tmpname()
  local envs = { "PORT=" .. port, "ADMIN_PORT=" .. admin, "HOST=127.0.0.1", "LOG_LEVEL=" .. (opts.log_level or "info") }
  for k, v in pairs(env or {}) do envs[#envs + 1] = k .. "=" .. shell_quote(v) end
  local parts = {}
  for _, a in ipairs(args) do parts[#parts + 1] = shell_quote(a) end
  local cmd = ("cd %s && env %s %s %s >%s 2>&1 & echo $!"):format(shell_quote(M.ROOT), table.concat(envs, " "),
    shell_quote(M.BIN), table.concat(parts, " "), shell_quote(log))
  local p = io.popen(cmd)
  local pid = tonumber(p:read("*l"))
  p:close()
  local proc = { pid = pid, port = port, admin = admin, log = log }
  if opts.wait ~= false then
    M.wait_for("flashhost to answer on " .. port, function()
      if not M.alive(pid) then error("flashhost exited: " .. M.read_log(proc)) end
      local s = M.request(port, "GET", opts.wait_path or "/health")
      return s == 200
    end, opts.timeout or 15)
  end
  return proc
end

function M.read_log(proc)
  local f = io.open(proc.log)
  if not f then return "" end
  local t = f:read("*a")
  f:close()
  return t
end

-- True while the process exists and is not a zombie.
function M.alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("*a")
  f:close()
  return stat:match("^%d+ %b() (%a)") ~= "Z"
end

function M.signal(pid, sig) os.execute(("kill -%s %d 2>/dev/null"):format(sig, pid)) end

-- SIGKILL a master and its workers, master first so it cannot replace them.
function M.kill_all(proc)
  local kids = M.children(proc.pid)
  M.signal(proc.pid, "KILL")
  for _, c in ipairs(kids) do M.signal(c, "KILL") end
  for _, c in ipairs(M.children(proc.pid)) do M.signal(c, "KILL") end
end

-- Child pids of a process (the workers of a master).
function M.children(pid)
  local out = {}
  local p = io.popen("pgrep -P " .. pid)
  for line in p:lines() do out[#out + 1] = tonumber(line) end
  p:close()
  return out
end

function M.stop(proc, timeout)
  if not proc or not M.alive(proc.pid) then return end
  M.signal(proc.pid, "TERM")
  local ok = pcall(M.wait_for, "exit", function() return not M.alive(proc.pid) end, timeout or 15)
  if not ok then M.signal(proc.pid, "KILL") end
  for _, c in ipairs(M.children(proc.pid)) do M.signal(c, "KILL") end
  if os.getenv("KEEP_LOGS") then print("log kept: " .. proc.log) else os.remove(proc.log) end
end

-- One HTTP/1.1 request on a fresh connection: status, body, headers | nil, err
function M.request(port, method, path, body, headers, timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 5)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then c:close() return nil, err end
  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: 127.0.0.1", "Connection: close" }
  if type(body) == "table" then body = cjson.encode(body) end
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or ""))
  local resp, rerr, partial = c:receive("*a")
  c:close()
  resp = resp or partial
  if not resp or resp == "" then return nil, rerr or "empty response" end
  local status = tonumber(resp:match("^HTTP/1%.1 (%d+)"))
  local head, rbody = resp:match("^(.-)\r\n\r\n(.*)$")
  local hdrs = {}
  for k, v in (head or ""):gmatch("\r\n([^:]+): ([^\r]*)") do hdrs[k:lower()] = v end
  return status, rbody, hdrs
end

-- request + JSON decoding of the body.
function M.json(port, method, path, body, headers)
  local s, b, h = M.request(port, method, path, body, headers)
  if not s then return nil, b end
  local ok, v = pcall(cjson.decode, b)
  return s, ok and v or b, h
end

local function parse_wrk(text)
  local r = { raw = text }
  r.requests = tonumber(text:match("(%d+) requests in")) or 0
  r.non2xx = tonumber(text:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  r.rps = tonumber(text:match("Requests/sec:%s+([%d%.]+)")) or 0
  local c, rd, w, t = text:match("Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  r.socket_errors = (tonumber(c) or 0) + (tonumber(rd) or 0) + (tonumber(w) or 0) + (tonumber(t) or 0)
  return r
end

local function wrk_cmd(url, secs, conns, script, env)
  local vars = {}
  for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. shell_quote(tostring(v)) end
  table.sort(vars)
  return ("%s wrk -t2 -c%d -d%ds %s %s"):format(table.concat(vars, " "), conns or 20, secs,
    script and ("-s " .. shell_quote(script)) or "", shell_quote(url))
end

-- Runs wrk for `secs` seconds; returns { requests, non2xx, socket_errors, rps, raw }.
function M.wrk(url, secs, conns, script)
  local p = io.popen(wrk_cmd(url, secs, conns, script) .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return parse_wrk(out)
end

-- A Redis script (EVAL it with the outbox stream as KEYS[1]) that counts the
-- events in a SKU's outbox: an entry of a purchase_batch call carries its
-- reservations in `events` (a row each), other entries are one each.
M.COUNT_OUTBOX_EVENTS = [[
local n = 0
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local f, list = e[2], nil
  for i = 1, #f, 2 do if f[i] == 'events' then list = f[i + 1] end end
  -- a purchase batch's entry: a row per reservation (an older one: an array of events)
  local batch = list and cjson.decode(list)
  n = n + (batch and #(batch.rows or batch) or 1)
end
return n]]

-- Starts wrk in the background; returns a handle whose :result() waits for it.
-- env: variables for the wrk script (e.g. bench/wrk/purchase.lua's SKUS).
function M.wrk_async(url, secs, conns, script, env)
  local out = os.tmpname()
  local p = io.popen(wrk_cmd(url, secs, conns, script, env) .. " >" .. shell_quote(out) .. " 2>&1 & echo $!")
  local pid = tonumber(p:read("*l"))
  p:close()
  return {
    pid = pid,
    result = function()
      M.wait_for("wrk to finish", function() return not M.alive(pid) end, secs + 30)
      local f = io.open(out)
      local text = f:read("*a")
      f:close()
      os.remove(out)
      return parse_wrk(text)
    end,
  }
end

-- A scratch folder with files { ["name"] = "content" }; returns its path.
function M.scratch(files)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. shell_quote(dir))
  for name, content in pairs(files or {}) do M.write(dir .. "/" .. name, content) end
  return dir
end

function M.write(path, content)
  os.execute("mkdir -p " .. shell_quote(path:match("^(.*)/[^/]+$")))
  local f = assert(io.open(path .. ".tmp", "w"))
  f:write(content)
  f:close()
  assert(os.rename(path .. ".tmp", path)) -- atomic: a reload never reads half a file
end

function M.count(hay, needle)
  local n, i = 0, 1
  while true do
    local s, e = hay:find(needle, i, true)
    if not s then return n end
    n, i = n + 1, e + 1
  end
end

return M
