-- refresh: set a new time to live on the lock only if the caller still holds
-- it (compare-and-extend, one atomic step).
--
-- KEYS[1]  the lock key: <prefix>lock:{<name>}
-- ARGV[1]  the holder's token
-- ARGV[2]  the new time to live, in milliseconds (>= 1)
-- returns  1 when the expiry was set; 0 when the key is gone or holds another
--          token (the caller no longer holds the lock).
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
