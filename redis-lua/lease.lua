-- lease.lua: a lease held by one owner at a time, renewed by its holder.
-- KEYS: 1 the lease key.  ARGV: 1 owner, 2 ttl ms (renew/take) or "release".
-- Answer: 1 when the caller holds the lease after the call, else 0.
-- A holder that dies stops renewing; the lease lapses after ttl and another
-- instance takes it over.
local holder = redis.call('GET', KEYS[1])
if ARGV[2] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
local ttl = tonumber(ARGV[2])
if not ttl or ttl < 1 then return redis.error_reply('ERR flashhost lease: ttl must be >= 1 ms') end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  return 1
end
return 0
