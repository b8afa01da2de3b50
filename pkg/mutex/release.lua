-- release: delete the lock only if the caller still holds it
-- (compare-and-delete, one atomic step).
--
-- KEYS[1]  the lock key: <prefix>lock:{<name>}
-- ARGV[1]  the holder's token
-- returns  1 when the lock was deleted; 0 when the key is gone or holds
--          another token (the caller no longer holds the lock).
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
