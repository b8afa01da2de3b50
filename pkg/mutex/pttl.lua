-- pttl: the lock's remaining time to live, only if the caller holds it.
--
-- KEYS[1]  the lock key: <prefix>lock:{<name>}
-- ARGV[1]  the holder's token
-- returns  the remaining time to live in milliseconds (>= 0, or -1 if someone
--          removed the expiry by hand); -3 when the key is gone or holds
--          another token (the caller no longer holds the lock).
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pttl', KEYS[1])
end
return -3
