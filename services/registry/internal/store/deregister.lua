-- deregister.lua removes one registration before it expires, as a service
-- does when it stops. The entry goes at once, so finds no longer list it;
-- its expiry becomes now, so the reaper announces it (as expired) and
-- cleans up after it on its next pass, exactly as for a lapsed one.
--
-- KEYS[1]  the instance's entry STRING
-- KEYS[2]  the expiry ZSET, <name>:<id> -> expiry ms
-- KEYS[3]  the seq HASH, name -> sequence of its last change
-- ARGV[1]  <name>:<id>
-- ARGV[2]  now in ms; 0 uses Redis TIME
-- ARGV[3]  name
--
-- Returns the name's new sequence when a live registration was removed,
-- 0 when there was none (or it had already lapsed).

local now = tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
if redis.call('DEL', KEYS[1]) == 0 then
  return 0 -- already gone: the reaper announces it
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
return redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
