-- authorize.lua is the admission path: it checks the grant and records the
-- amount in one step, refusing past the limit. It is idempotent on the
-- request id, which shares the dedup records of usage events
-- (apply_chunk.lua): an event published with the same id as an authorized
-- request counts once.
--
-- KEYS[1] the uid's grant hash   KEYS[2] the uid's overrides
-- KEYS[3..] the dedup sets the id is checked against
-- ARGV[1] the TTL of the set recorded in, ms   ARGV[2] amount
-- ARGV[3] now, ms (0: Redis TIME)   ARGV[4] metric   ARGV[5] default limit
-- ARGV[6] period   ARGV[7] align   ARGV[8] the dedup member
-- ARGV[9] the set to record in (1: KEYS[3])   ARGV[10..] notify thresholds, percent
--
-- returns {status, used, limit, start, end, pending}
--   status: 1 allowed and recorded, 2 allowed earlier under this id (nothing
--   changed), 0 refused (nothing changed: a period that would start now
--   starts with the first amount allowed)
-- The amount and the sum are exact (numbers.lua); an amount that is not a
-- number the meter takes, or a sum past 1e15, is refused.

local now = now_ms(ARGV[3])
local thresholds = {}
for i = 10, #ARGV do thresholds[#thresholds + 1] = ARGV[i] end

local st = redis.call('HMGET', KEYS[1], 'u', 's', 'e', 'n', 'q')
local used, s, e, notified, q, fresh = period_of(st, ARGV[6], ARGV[7], now)
local limit = limit_of(KEYS[2], ARGV[4], ARGV[5])
for i = 3, #KEYS do
  if redis.call('SISMEMBER', KEYS[i], ARGV[8]) == 1 then
    return {2, used, limit, s, e, q}
  end
end
local sum = dec_add(used, ARGV[2])
if not sum or dec_above(sum, limit) then
  return {0, used, limit, s, e, q}
end
record_use(KEYS[1], sum, s, e, fresh)
local n, added = cross(sum, limit, thresholds, notified, s, e)
if n ~= notified then redis.call('HSET', KEYS[1], 'n', n) end
q = record_notices(KEYS[1], q, added)
local set = KEYS[2 + tonumber(ARGV[9])]
redis.call('SADD', set, ARGV[8])
redis.call('PEXPIRE', set, ARGV[1])
return {1, sum, limit, s, e, q}
