-- flashhost.metrics: counters, gauges and histograms in Prometheus text format,
-- aggregated over the worker processes of one flashhost.
--
--   local metrics = require "flashhost.metrics"
--   local hits = metrics.counter("hits_total", "Hits.", { "route" })
--   hits:inc({ route = "/x" })
--   metrics.render_all()   -- every worker's samples, summed
--
-- Each worker keeps its samples in Lua tables and publishes a text snapshot
-- to a file in a per-master folder on tmpfs (FH_METRICS_DIR, default
-- /dev/shm/flashhost-<master pid>); a scrape renders its own worker
-- fresh, reads the others' snapshots and sums samples with equal names and
-- labels.  A snapshot is at most `publish` interval old (1 s).
local core = require "flashhost.core"

local store = require "flashhost.metrics.store"

local M = {}

local DEFAULT_BUCKETS = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5 }
M.DEFAULT_BUCKETS = DEFAULT_BUCKETS

local function escape(v)
  return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

-- Label values in declaration order: {a="x",b="y"} without the braces.
local function label_string(names, labels)
  if #names == 0 or not labels then return "" end
  local parts = {}
  for i, n in ipairs(names) do
    local v = labels[n]
    parts[i] = n .. '="' .. escape(v == nil and "" or v) .. '"'
  end
  return table.concat(parts, ",")
end
M.label_string = label_string

local Metric = {}
Metric.__index = Metric

-- Samples live in C (flashhost.metrics.store), so they outlive a reload; a
-- definition repeated by the next generation finds the same family.
local function define(kind, name, help, label_names, buckets)
  store.define(name, kind, help, buckets)
  return setmetatable({ kind = kind, name = name, labels = label_names or {} }, Metric)
end

function M.counter(name, help, labels) return define("counter", name, help, labels) end
function M.gauge(name, help, labels) return define("gauge", name, help, labels) end
function M.histogram(name, help, labels, buckets)
  return define("histogram", name, help, labels, buckets or DEFAULT_BUCKETS)
end

function Metric:inc(labels, by) store.add(self.name, label_string(self.labels, labels), by or 1) end
function Metric:set(labels, v) store.set(self.name, label_string(self.labels, labels), v) end
function Metric:observe(labels, v) store.observe(self.name, label_string(self.labels, labels), v) end

-- This process's samples as Prometheus text.
M.render = store.render

local function fmt(v)
  if v % 1 == 0 and math.abs(v) < 1e15 then return ("%d"):format(v) end
  return ("%.9g"):format(v)
end

-- Sums several Prometheus texts: samples with the same name and labels add up,
-- HELP/TYPE lines are kept once, families keep their first-seen order.
function M.merge(texts)
  local families, fam_order, meta = {}, {}, {}
  local function family_of(sample)
    local base = sample:match("^([%w_:]+)")
    for _, suffix in ipairs { "_bucket", "_sum", "_count" } do
      local stem = base:sub(1, #base - #suffix)
      if base:sub(-#suffix) == suffix and meta[stem] then return stem end
    end
    return base
  end
  for _, text in ipairs(texts) do
    for line in text:gmatch("[^\n]+") do
      local kind, fname = line:match("^# (%u+) ([%w_:]+)")
      if kind then
        meta[fname] = meta[fname] or {}
        meta[fname][kind] = meta[fname][kind] or line
        if not families[fname] then families[fname] = { order = {}, values = {} }; fam_order[#fam_order + 1] = fname end
      else
        local series, value = line:match("^(.-)%s+(%S+)$")
        if series then
          local fname = family_of(series)
          local f = families[fname]
          if not f then f = { order = {}, values = {} }; families[fname] = f; fam_order[#fam_order + 1] = fname end
          if f.values[series] == nil then f.order[#f.order + 1] = series end
          f.values[series] = (f.values[series] or 0) + (tonumber(value) or 0)
        end
      end
    end
  end
  local out = {}
  for _, fname in ipairs(fam_order) do
    local mt = meta[fname] or {}
    if mt.HELP then out[#out + 1] = mt.HELP end
    if mt.TYPE then out[#out + 1] = mt.TYPE end
    local f = families[fname]
    for _, series in ipairs(f.order) do out[#out + 1] = series .. " " .. fmt(f.values[series]) end
  end
  return table.concat(out, "\n") .. "\n"
end

-- Where this process group's snapshots live (the master removes it at exit).
function M.dir()
  local d = os.getenv("FH_METRICS_DIR")
  if d and d ~= "" then return d end
  return ("/dev/shm/flashhost-%d"):format(core.info().master_pid)
end

local function write_atomic(path, text)
  local tmp = path .. ".tmp"
  local f = io.open(tmp, "w")
  if not f then return false end
  f:write(text)
  f:close()
  return os.rename(tmp, path)
end

-- Writes this worker's snapshot (cheap: tmpfs).
local made_dir
function M.publish()
  local dir = M.dir()
  if made_dir ~= dir then
    core.mkdir(dir)
    made_dir = dir
  end
  write_atomic(("%s/worker-%d.prom"):format(dir, core.info().worker_id), M.render())
end

-- Every worker's samples summed, this worker's fresh.
function M.render_all()
  local dir = M.dir()
  local me = core.info().worker_id
  local texts = { M.render() }
  for i = 0, 63 do
    if i ~= me then
      local f = io.open(("%s/worker-%d.prom"):format(dir, i))
      if f then texts[#texts + 1] = f:read("*a"); f:close() end
    end
  end
  local f = io.open(dir .. "/master.prom")
  if f then texts[#texts + 1] = f:read("*a"); f:close() end
  return M.merge(texts)
end

return M
