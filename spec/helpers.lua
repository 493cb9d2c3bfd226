-- Helpers shared by the busted specs.
local helpers = {}

-- Redis. Specs that need a real redis-server connect to 127.0.0.1:$REDIS_PORT
-- (default 6379) and use database 9 only, so FLUSHDB there never touches app data.
helpers.REDIS_DB = 9

function helpers.redis()
  local port = tonumber(os.getenv('REDIS_PORT')) or 6379
  local ok, client = pcall(require('redis').connect, '127.0.0.1', port)
  if not ok then
    error('no redis-server on 127.0.0.1:' .. port .. ' (set REDIS_PORT): ' .. tostring(client), 2)
  end
  assert(client:select(helpers.REDIS_DB))
  return client
end

-- The runtime's specs (spec/integration, under flashhost --run) name the shared
-- server with REDIS_URL (default redis://127.0.0.1:6379): its URL on database 9.
function helpers.redis_url()
  local url = os.getenv('REDIS_URL') or 'redis://127.0.0.1:6379'
  return (url:gsub('/%d*$', '')) .. '/' .. helpers.REDIS_DB
end

-- For the runtime's specs: a flashhost.redis client on database 9, flushed,
-- with the app's Function library (redis-lua/) loaded.
function helpers.stock_redis()
  local r = require('flashhost.redis').connect { url = helpers.redis_url() }
  assert(r:wait_ready(3000))
  assert(r:call('FLUSHDB'))
  require('lib.stock').setup(r, 'redis-lua')
  return r
end

return helpers
