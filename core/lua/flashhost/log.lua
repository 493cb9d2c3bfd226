-- flashhost.log: JSON lines on stderr.  log.info("msg", {field = value})
local core = require "flashhost.core"
local cjson = require "cjson.safe"

local log = {}
local LEVELS = { debug = 0, info = 1, warn = 2, error = 3 }
local info = core.info()

local function write(level, msg, fields)
  if not core.log_enabled(LEVELS[level]) then return end
  local rec = { ts = core.now(), level = level, pid = info.pid, worker = info.worker_id, msg = tostring(msg) }
  if type(fields) == "table" then
    for k, v in pairs(fields) do
      if rec[k] == nil then rec[k] = type(v) == "table" and v or (type(v) == "number" or type(v) == "boolean") and v or tostring(v) end
    end
  end
  local line = cjson.encode(rec)
  if line then core.log_write(line) end
end

for name in pairs(LEVELS) do
  log[name] = function(msg, fields) write(name, msg, fields) end
end

return log
