-- acquire: take the lock if nobody holds it, and hand out the next fencing
-- token in the same step.
--
-- KEYS[1]  the lock key:  <prefix>lock:{<name>}
-- KEYS[2]  the fence key: <prefix>lock:{<name>}:fence
-- ARGV[1]  the new holder's random token
-- ARGV[2]  the lock's time to live, in milliseconds (>= 1)
-- returns  the fencing token, an integer >= 1, when the caller holds the
--          lock; otherwise -1 minus the current holder's remaining time to
--          live in milliseconds, so always <= -1 (exactly -1 when the key has
--          no expiry or is about to expire).
local holder = redis.call('get', KEYS[1])
if not holder then
  -- INCR before SET: if INCR fails (the fence key was overwritten with
  -- something that is not an integer) the script stops before the lock is
  -- taken, so no lock is left held by nobody.
  local fence = redis.call('incr', KEYS[2])
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return fence
end
if holder == ARGV[1] then
  -- The caller's own token: this call was sent again after its reply was
  -- lost (go-redis retries on network errors) and the first one took the
  -- lock. The counter cannot have moved since, so it is the caller's token.
  return tonumber(redis.call('get', KEYS[2]))
end
local pttl = redis.call('pttl', KEYS[1])
if pttl < 0 then
  pttl = 0
end
return -1 - pttl
