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
-- labels.  A snapshot is at most `publish` interval old (1 s); a scrape also
-- publishes its own worker, so no scrape ever saw more than a snapshot holds.
--
-- A worker replaced after a crash starts from zero, but counters must not go
-- backwards: the new process (same worker id, same master) takes over the
-- counters and histograms of the snapshot its predecessor left and goes on
-- adding them to its own.  The predecessor's gauges are dropped.
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
  return setmetatable({ kind = kind, name = name, labels = label_names or {}, cache = {}, cached = 0 }, Metric)
end

-- Gauges whose value is read from a shared source at scrape time (the same
-- in every process, e.g. a SKU's stock in Redis): a scrape reports the
-- scraping process's own fresh value; the other processes' snapshots, which
-- would add up to N times the value, are left out.
local shared = {}

function M.counter(name, help, labels) return define("counter", name, help, labels) end
-- opts.shared: see above.
function M.gauge(name, help, labels, opts)
  if opts and opts.shared then shared[name] = true end
  return define("gauge", name, help, labels)
end
function M.histogram(name, help, labels, buckets)
  return define("histogram", name, help, labels, buckets or DEFAULT_BUCKETS)
end

-- The sample of a series, looked up once per distinct set of label values: a
-- hot route would otherwise escape and join the same strings, and the store
-- format and look up the series name, on every request.  A tree keyed by each
-- label's value in turn holds the store's slot (the sample's index; the
-- family's is the metric's own).  A family with more than MAX_CACHED distinct
-- series stops caching new ones and updates those by name (its memory stays
-- bounded if a label ever carries unbounded values).
local MAX_CACHED = 10000
local function slot_of(self, labels)
  local names = self.labels
  local n = #names
  local node = self.cache
  if n == 0 or not labels then
    -- the series without labels: kept apart from the tree, where "" is a value
    local s = self.bare
    if not s then
      s, self.family = store.slot(self.name, "")
      self.bare = s
    end
    return s
  end
  for i = 1, n - 1 do
    local v = labels[names[i]]
    if v == nil then v = "" end
    local nxt = node[v]
    if not nxt then
      if self.cached >= MAX_CACHED then return nil end
      nxt = {}
      node[v] = nxt
    end
    node = nxt
  end
  local v = labels[names[n]]
  if v == nil then v = "" end
  local s = node[v]
  if s then return s end
  if self.cached >= MAX_CACHED then return nil end
  s, self.family = store.slot(self.name, label_string(names, labels))
  node[v] = s
  self.cached = self.cached + 1
  return s
end

function Metric:inc(labels, by)
  local s = slot_of(self, labels)
  if s then store.add_at(s, by or 1) else store.add(self.name, label_string(self.labels, labels), by or 1) end
end
function Metric:set(labels, v)
  local s = slot_of(self, labels)
  if s then store.set_at(s, v) else store.set(self.name, label_string(self.labels, labels), v) end
end
function Metric:observe(labels, v)
  local s = slot_of(self, labels)
  if s then store.observe_at(s, self.family, v) else store.observe(self.name, label_string(self.labels, labels), v) end
end

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
      elseif line:sub(1, 1) == "#" then -- any other comment
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

-- The text without the shared gauges' lines (HELP, TYPE and samples).
local function without_shared(text)
  if next(shared) == nil then return text end
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local name = line:match("^# %u+ ([%w_:]+)") or line:match("^([%w_:]+)")
    if not (name and shared[name]) then out[#out + 1] = line end
  end
  return #out > 0 and table.concat(out, "\n") .. "\n" or ""
end

local function snapshot_path() return ("%s/worker-%d.prom"):format(M.dir(), core.info().worker_id) end
-- First line of a snapshot: whose it is, so a worker takes over only what a
-- predecessor under the same master wrote (FH_METRICS_DIR may outlive a master).
local function owner_line() return ("# flashhost master %d\n"):format(core.info().master_pid) end

-- The counter and histogram lines of a Prometheus text (gauges dropped).
local function monotonic_only(text)
  local kinds = {}
  for name, kind in text:gmatch("# TYPE ([%w_:]+) (%a+)") do kinds[name] = kind end
  local function kind_of(name)
    if kinds[name] then return kinds[name] end
    for _, suffix in ipairs { "_bucket", "_sum", "_count" } do
      if name:sub(-#suffix) == suffix and kinds[name:sub(1, #name - #suffix)] == "histogram" then return "histogram" end
    end
  end
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local name = line:match("^# %u+ ([%w_:]+)") or line:match("^([%w_:]+)")
    local kind = name and kind_of(name)
    if kind == "counter" or kind == "histogram" then out[#out + 1] = line end
  end
  return #out > 0 and M.merge({ table.concat(out, "\n") }) or ""
end

-- What this process carries over from the worker it replaced; decided once
-- per process (the store outlives reloads), before its first snapshot
-- overwrites the predecessor's.
local function inherited()
  local carried = store.carried()
  if carried then return carried end
  carried = ""
  local f = io.open(snapshot_path())
  if f then
    local text = f:read("*a")
    f:close()
    if text:sub(1, #owner_line()) == owner_line() then carried = monotonic_only(text) end
  end
  store.carry(carried)
  return carried
end

-- Writes this worker's snapshot (cheap: tmpfs).
local made_dir
function M.publish()
  local dir = M.dir()
  if made_dir ~= dir then
    core.mkdir(dir)
    made_dir = dir
  end
  local carried = inherited()
  write_atomic(snapshot_path(), owner_line() .. without_shared(M.render()) .. carried)
end

-- Every worker's samples summed, this worker's fresh.
function M.render_all()
  local dir = M.dir()
  local me = core.info().worker_id
  M.publish()
  local texts = { M.render(), inherited() }
  for i = 0, 63 do
    if i ~= me then
      local f = io.open(("%s/worker-%d.prom"):format(dir, i))
      if f then texts[#texts + 1] = without_shared(f:read("*a")); f:close() end
    end
  end
  local f = io.open(dir .. "/master.prom")
  if f then texts[#texts + 1] = f:read("*a"); f:close() end
  return M.merge(texts)
end

-- ------------------------------------------------------------ reading back

-- One sample line: name, labels, value | nil.  Label values may hold escaped
-- quotes, commas and braces.
local function parse_line(line)
  local name, i = line:match("^([%w_:]+)()")
  if not name then return nil end
  local labels = {}
  if line:sub(i, i) == "{" then
    i = i + 1
    while true do
      local close = line:match("^%s*}()", i)
      if close then i = close break end
      local k, j = line:match("^%s*([%w_]+)%s*=%s*\"()", i)
      if not k then return nil end
      local v = {}
      while true do
        local c = line:sub(j, j)
        if c == "" then return nil end
        if c == "\\" then
          local n = line:sub(j + 1, j + 1)
          v[#v + 1] = n == "n" and "\n" or n
          j = j + 2
        elseif c == '"' then
          j = j + 1
          break
        else
          v[#v + 1] = c
          j = j + 1
        end
      end
      labels[k] = table.concat(v)
      i = line:match("^%s*,()", j) or j
    end
  end
  local word = line:match("^%s+(%S+)", i)
  if not word then return nil end
  local value = tonumber(word)
  if value == nil then
    if word == "+Inf" then value = math.huge
    elseif word == "-Inf" then value = -math.huge
    elseif word == "NaN" then value = 0 / 0
    else return nil end
  end
  return name, labels, value
end

-- Parses Prometheus text into a list of samples { name =, labels = {k = v}, value = }
-- (comments skipped, unreadable lines skipped).
function M.parse(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local name, labels, value = parse_line(line)
      if name then out[#out + 1] = { name = name, labels = labels, value = value } end
    end
  end
  return out
end

-- Every worker's samples summed, as a list (see M.parse).
function M.samples()
  return M.parse(M.render_all())
end

local function matches(labels, want)
  for k, v in pairs(want or {}) do
    if labels[k] ~= tostring(v) then return false end
  end
  return true
end

-- Sum of the samples called `name` whose labels include every `match` pair.
function M.sum(samples, name, match)
  local total = 0
  for _, s in ipairs(samples) do
    if s.name == name and matches(s.labels, match) then total = total + s.value end
  end
  return total
end

-- The q-quantile (0..1) of cumulative histogram buckets { {le = upper bound,
-- count = observations <= le}, ... } (any order, with le = math.huge for
-- +Inf), interpolated linearly inside the bucket as Prometheus's
-- histogram_quantile does.  nil when there are no observations.  Above the
-- highest finite bound it answers that bound.
function M.quantile(q, buckets)
  local b = {}
  for i, x in ipairs(buckets) do b[i] = { le = x.le, count = x.count } end
  table.sort(b, function(x, y) return x.le < y.le end)
  if #b == 0 or b[#b].le ~= math.huge then return nil end
  for i = 2, #b do -- counts merged from several sources may step back a little
    if b[i].count < b[i - 1].count then b[i].count = b[i - 1].count end
  end
  local total = b[#b].count
  if total <= 0 then return nil end
  if q <= 0 then return 0 end
  if q >= 1 then return #b > 1 and b[#b - 1].le or nil end
  local rank = q * total
  local i = 1
  while b[i].count < rank do i = i + 1 end
  if b[i].le == math.huge then return #b > 1 and b[#b - 1].le or nil end
  local lo, below = 0, 0
  if i > 1 then lo, below = b[i - 1].le, b[i - 1].count end
  local inside = b[i].count - below
  if inside <= 0 then return b[i].le end
  return lo + (b[i].le - lo) * ((rank - below) / inside)
end

-- The buckets of histogram `name` summed over the series whose labels include
-- every `match` pair: { {le =, count =}, ... } for M.quantile.
function M.buckets(samples, name, match)
  local by_le = {}
  for _, s in ipairs(samples) do
    if s.name == name .. "_bucket" and s.labels.le and matches(s.labels, match) then
      local le = s.labels.le == "+Inf" and math.huge or tonumber(s.labels.le)
      if le then by_le[le] = (by_le[le] or 0) + s.value end
    end
  end
  local out = {}
  for le, count in pairs(by_le) do out[#out + 1] = { le = le, count = count } end
  table.sort(out, function(x, y) return x.le < y.le end)
  return out
end

-- histogram_quantile over the matching series of `name`; nil without observations.
function M.histogram_quantile(samples, name, q, match)
  return M.quantile(q, M.buckets(samples, name, match))
end

return M
