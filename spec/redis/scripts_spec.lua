-- Static rules for the library of redis-lua/ (no redis-server needed).
local scripts = require 'spec.redis.scripts'

-- What a Redis function may read from the global scope; it may write none.
local ALLOWED = {
  redis = true, cjson = true, string = true, math = true, table = true,
  tonumber = true, tostring = true, type = true, error = true, ipairs = true, pairs = true,
  next = true, unpack = true, select = true, pcall = true,
}

-- The global reads and writes of the library as loaded (its files joined: one
-- file alone would show the others' helpers as globals).
local function globals()
  local path = os.tmpname()
  local f = assert(io.open(path, 'wb'))
  f:write(scripts.source())
  f:close()
  local p = assert(io.popen('luajit -bl ' .. path .. ' 2>&1'))
  local listing = p:read('*a')
  p:close()
  os.remove(path)
  assert.matches('GGET', listing)  -- it compiled
  local used = {}
  for op, g in listing:gmatch('(G[GS]ET)%s+%d+%s+%d+%s+; "([^"]*)"') do used[#used + 1] = op .. ' ' .. g end
  return used
end

describe('the library of redis-lua/', function()
  local src = scripts.source()

  it('is one library named flashhost', function()
    assert.are.equal('#!lua name=flashhost\n', src:match('^[^\n]*\n'))
  end)

  it('uses no globals but the Redis Lua API (KEYS and ARGV neither: functions get them as arguments)', function()
    for _, use in ipairs(globals()) do
      local op, g = use:match('(%S+) (%S+)')
      assert.are.equal('GGET', op, 'writes global ' .. g)
      assert.is_true(ALLOWED[g], 'reads global ' .. g)
    end
  end)

  it("takes its clock from redis.call('TIME') only, in one place", function()
    local _, n = src:gsub("redis%.call%('TIME'%)", '')
    assert.are.equal(1, n)
    assert.is_nil(src:match('os%.'))
  end)

  it('registers every function the app calls, status as read-only', function()
    local names = {}
    for name in src:gmatch("redis%.register_function%('([%w_]+)'") do names[#names + 1] = name end
    for name in src:gmatch("redis%.register_function{ function_name = '([%w_]+)'") do names[#names + 1] = name end
    table.sort(names)
    local want = { unpack(scripts.FUNCTIONS) }
    table.sort(want)
    assert.are.same(want, names)
    assert.matches("function_name = 'status', callback = status, flags = { 'no%-writes' }", src)
  end)

  it('gives stock back in one place only: the release step every function shares', function()
    local _, n = src:gsub("redis%.call%('INCRBY'", '')
    assert.are.equal(1, n)
  end)
end)
