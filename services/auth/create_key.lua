-- create_key.lua: store a new API key, refusing an id that exists, in one
-- step, so the record, its adjustments and the ids SET never disagree.
--
-- KEYS[1]   the key's record HASH
-- KEYS[2]   the key's adjustments HASH
-- KEYS[3]   the ids SET
-- ARGV[1]   the key id
-- ARGV[2]   the record's immutable part, JSON
-- ARGV[3]   revoked, ms (0: not revoked)
-- ARGV[4]   last used, ms (0: never)
-- ARGV[5..] the adjustments, in pairs: field, JSON
--
-- returns 1 created, or 0 when the id exists (nothing is written)

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
if ARGV[3] ~= '0' then
  redis.call('HSET', KEYS[1], 'revoked', ARGV[3])
end
if ARGV[4] ~= '0' then
  redis.call('HSET', KEYS[1], 'last_used', ARGV[4])
end
-- Ids are never reused, so nothing should be here; a leftover of a
-- removed key must not attach itself to a new one.
redis.call('DEL', KEYS[2])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
