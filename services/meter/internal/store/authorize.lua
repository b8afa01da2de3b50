-- authorize.lua is the admission path: it checks the grant and records the
-- amount in one step, refusing past the limit. It is idempotent on the
-- request id, which shares the dedup records of usage events: an event
-- published with the same id as an authorized request counts once.
--
-- KEYS[1] the id's dedup record   KEYS[2] the uid's grant hash   KEYS[3] the uid's overrides
-- ARGV[1] dedup TTL, ms   ARGV[2] amount   ARGV[3] now, ms (0: Redis TIME)
-- ARGV[4] metric   ARGV[5] default limit   ARGV[6] period   ARGV[7] align
-- ARGV[8..] notify thresholds, percent
--
-- returns {status, used, limit, start, end, pending}
--   status: 1 allowed and recorded, 2 allowed earlier under this id (nothing
--   changed), 0 refused (nothing recorded)

local now = now_ms(ARGV[3])
local thresholds = {}
for i = 8, #ARGV do thresholds[#thresholds + 1] = ARGV[i] end

local st = redis.call('HMGET', KEYS[2], 'u', 's', 'e', 'n', 'q')
local used, s, e, notified, q = roll(KEYS[2], st, ARGV[6], ARGV[7], now)
local limit = limit_of(KEYS[3], ARGV[4], ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {2, used, limit, s, e, q}
end
if tonumber(used) + tonumber(ARGV[2]) > tonumber(limit) then
  return {0, used, limit, s, e, q}
end
used = add(KEYS[2], 'u', ARGV[2])
if type(used) == 'table' then error(used.err) end
local n, added = cross(used, limit, thresholds, notified, s, e)
if n ~= notified then redis.call('HSET', KEYS[2], 'n', n) end
q = record_notices(KEYS[2], q, added)
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return {1, used, limit, s, e, q}
