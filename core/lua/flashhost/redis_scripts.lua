-- flashhost.redis_scripts: the Redis Function libraries of a client, shared by
-- flashhost.redis and flashhost.redis_cluster (not required directly).
--
--   r:functions(name, source)   registers a library; nothing is sent yet
--   r:load_library(path)        reads a library file and registers it under the
--                               name its first line declares (#!lua name=NAME)
--
-- The clients load every registered library with FUNCTION LOAD REPLACE on the
-- first FCALL (a cluster client: on each master it calls), and again when Redis
-- answers that a function does not exist (a restart with empty data, FUNCTION
-- FLUSH, a node that never had it), then send the call once more.
local M = {}

-- The name a library source declares: "#!lua name=NAME" on its first line.
function M.library_name(source)
  local first = source:match("^#![^\n]*")
  return first and first:match("^#!lua%s.-name=([%w_]+)")
end

-- The registry of a client: libraries by name, in registration order, and a
-- version that grows at every change, so a client knows what it has loaded.
function M.new()
  return { names = {}, sources = {}, version = 0 }
end

function M.register(libs, name, source, level)
  level = (level or 1) + 1
  if type(name) ~= "string" then error("library name must be a string", level) end
  if type(source) ~= "string" then error("library source must be a string", level) end
  local declared = M.library_name(source)
  if declared ~= name then
    error("library " .. name .. ": its first line must be '#!lua name=" .. name .. "'", level)
  end
  if libs.sources[name] == source then return end
  if not libs.sources[name] then libs.names[#libs.names + 1] = name end
  libs.sources[name] = source
  libs.version = libs.version + 1
end

-- Reads a library file; a missing or unreadable one raises (a broken
-- deployment must not start).  Returns its name and source.
function M.read(path, level)
  level = (level or 1) + 1
  if type(path) ~= "string" then error("load_library(path): a file name", level) end
  local f, err = io.open(path, "rb")
  if not f then error("redis library: " .. tostring(err), level) end
  local src = f:read("*a")
  f:close()
  if not src then error("redis library: cannot read " .. path, level) end
  local name = M.library_name(src)
  if not name then error("redis library " .. path .. ": its first line must be '#!lua name=NAME'", level) end
  return name, src
end

-- Sends FUNCTION LOAD REPLACE of every library through call (a driver or
-- client call).  Returns true, or the failing answer: false, msg, kind |
-- nil, reason, kind.
function M.load(call, libs)
  for _, name in ipairs(libs.names) do
    local res, err, kind = call("FUNCTION", "LOAD", "REPLACE", libs.sources[name])
    if not res then return res, err, kind end
  end
  return true
end

-- Redis's answer to an FCALL of a function it does not have.
function M.missing(err)
  return type(err) == "string" and err:find("^ERR Function not found") ~= nil
end

-- The command of an FCALL / FCALL_RO: argv and its length.  keys and args are
-- lists (no holes) of strings or numbers.
function M.argv(cmd, name, keys, args, level)
  level = (level or 1) + 1
  if type(name) ~= "string" then error("function name must be a string", level) end
  if keys ~= nil and type(keys) ~= "table" then error("keys must be a list", level) end
  if args ~= nil and type(args) ~= "table" then error("args must be a list", level) end
  local argv, n = { cmd, name, 0 }, 3
  if keys then
    argv[3] = #keys
    for i = 1, #keys do n = n + 1; argv[n] = keys[i] end
  end
  if args then
    for i = 1, #args do n = n + 1; argv[n] = args[i] end
  end
  return argv, n
end

-- The registration methods both clients share.
function M.install(Class)
  -- r:functions(name, source) -> the client.  Registers (or replaces) library
  -- `name`; source must start with "#!lua name=<name>".  Sends nothing.
  function Class:functions(name, source)
    M.register(self._libs, name, source, 2)
    return self
  end

  -- r:load_library(path) -> the client.  r:functions with a file's source.
  function Class:load_library(path)
    local name, src = M.read(path, 2)
    M.register(self._libs, name, src, 2)
    return self
  end
end

return M
