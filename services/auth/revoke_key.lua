-- revoke_key.lua: mark an API key revoked, keeping the first revocation
-- time when it is revoked again (a revocation is never moved later).
--
-- KEYS[1]  the key's record HASH
-- ARGV[1]  revoked at, ms
--
-- returns 1 revoked now, 2 already revoked (unchanged), 0 no such key

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HSETNX', KEYS[1], 'revoked', ARGV[1]) == 1 then
  return 1
end
return 2
