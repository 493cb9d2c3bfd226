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

return helpers
