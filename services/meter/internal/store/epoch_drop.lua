-- epoch_drop.lua removes the epoch marker's seq when it still holds the
-- value the caller found below the consumer's ack floor: Redis holds an
-- older state than the meter applied, which is then handled as lost.
-- A marker that moved meanwhile (a rebuild, an apply) is kept.
--
-- KEYS[1] the epoch marker
-- ARGV[1] the seq it must still hold
--
-- returns 1 dropped, 0 kept
if redis.call('HGET', KEYS[1], 'seq') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'seq')
  return 1
end
return 0
