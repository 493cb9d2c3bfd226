-- Static rules for every script of redis-lua/ (no redis-server needed).
local scripts = require 'spec.redis.scripts'

-- What a Redis script may read from the global scope; it may write none.
local ALLOWED = {
  KEYS = true, ARGV = true, redis = true, cjson = true, string = true, math = true, table = true,
  tonumber = true, tostring = true, type = true, error = true, ipairs = true, pairs = true,
  next = true, unpack = true, select = true, pcall = true,
}

local function globals(name)
  local p = assert(io.popen('luajit -bl ' .. scripts.root .. 'redis-lua/' .. name .. '.lua 2>&1'))
  local listing = p:read('*a')
  p:close()
  assert.matches('GGET', listing)  -- it compiled
  local used = {}
  for op, g in listing:gmatch('(G[GS]ET)%s+%d+%s+%d+%s+; "([^"]*)"') do used[#used + 1] = op .. ' ' .. g end
  return used
end

local function shared(name)
  return scripts.source(name):match('%-%- shared:begin.-%-%- shared:end\n')
end

describe('redis-lua scripts', function()
  for _, name in ipairs(scripts.NAMES) do
    it(name .. '.lua uses no globals but the Redis Lua API', function()
      for _, use in ipairs(globals(name)) do
        local op, g = use:match('(%S+) (%S+)')
        assert.are.equal('GGET', op, name .. ' writes global ' .. g)
        assert.is_true(ALLOWED[g], name .. ' reads global ' .. g)
      end
    end)

    it(name .. ".lua takes its clock from redis.call('TIME') only", function()
      local src = scripts.source(name)
      assert.matches("redis%.call%('TIME'%)", src)
      assert.is_nil(src:match('os%.'))
    end)
  end

  it('keeps the shared release block identical in confirm, release, expire and sale', function()
    local block = shared('release')
    assert.is_string(block)
    for _, name in ipairs({ 'confirm', 'expire', 'sale' }) do
      assert.are.equal(block, shared(name), name .. '.lua differs from release.lua')
    end
  end)
end)
