-- epoch_raise.lua raises the epoch marker's seq to a stream sequence the
-- meter acked without applying (an event refused before the apply
-- script), so that the marker never trails what the consumer acked. A
-- missing marker (Redis lost the state) stays missing.
--
-- KEYS[1] the epoch marker
-- ARGV[1] the sequence
--
-- returns 1 raised, 0 left as it was
local held = redis.call('HGET', KEYS[1], 'seq')
if held and tonumber(held) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1])
  return 1
end
return 0
