-- touch_key.lua: record when an API key last connected, never moving it
-- back, and never creating a record for an id that has none.
--
-- KEYS[1]  the key's record HASH
-- ARGV[1]  connected at, ms
--
-- returns 1 recorded, 0 no such key or a later time is already there

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'last_used') or '0') or 0
if tonumber(ARGV[1]) <= cur then
  return 0
end
redis.call('HSET', KEYS[1], 'last_used', ARGV[1])
return 1
