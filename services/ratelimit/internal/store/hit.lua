-- hit.lua: count one usage event as a hit of one (uid, service), once.
--
-- KEYS[1]  the event's dedup record for this service
-- KEYS[2]  the window HASH of even window indexes (w index, n count)
-- KEYS[3]  the window HASH of odd window indexes
-- KEYS[4]  the rate limiter's epoch marker, when it guards its windows
--          (on a Redis Cluster the marker of the uid's hash slot)
-- ARGV[1]  the dedup record's lifetime in ms
-- ARGV[2]  the event's time in ms: when the usage stream stored it, so
--          a replay puts it in the window a live count did
-- ARGV[3]  the interval in ms
-- ARGV[4]  the hits to add (the event's value, an integer from 0 to 1e15)
--
-- Returns 1 when counted, 0 when the event was counted before, 2 when
-- the hits are not such an integer or would take the window past 1e15,
-- the largest number allot keeps (nothing changed); an error starting
-- LOST when the epoch marker is missing (nothing changed). Events are
-- facts: the count may pass the limit, and later checks are refused. The
-- windows are read before the record is set, and a refusal takes the
-- record back, so an event is counted with its record or not at all. An
-- event whose window a later one of the same parity has replaced (it
-- came more than an interval late) is counted into nothing: no check
-- reads that window any more.

-- The marker's seq, not the key: a rebuild marks the key while it runs.
if KEYS[4] and redis.call('HEXISTS', KEYS[4], 'seq') == 0 then
  return redis.error_reply('LOST the rate limiter epoch marker is missing: Redis lost the hit windows')
end

local c = redis.call('HMGET', KEYS[2], 'w', 'n')
local d = redis.call('HMGET', KEYS[3], 'w', 'n')
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end

local now = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local w = math.floor(now / interval)
local cur, stored = KEYS[2], c
if w % 2 == 1 then cur, stored = KEYS[3], d end
local held_w = tonumber(stored[1])
if held_w and held_w > w then
  return 1
end

-- Integers of at most 16 digits, exact in Lua's doubles up to 2^53; the
-- count goes to Redis as the string, never as a Lua number (Redis writes
-- a long one in exponent form: 1e+15 on Redis 6).
local hits = ARGV[4]
local held = 0
if held_w == w then held = tonumber(stored[2]) or 0 end
if not string.match(hits, '^%d+$') or #hits > 16 or held + tonumber(hits) > 1000000000000000 then
  redis.call('DEL', KEYS[1])
  return 2
end

if held_w == w then
  redis.call('HINCRBY', cur, 'n', hits)
else
  redis.call('HSET', cur, 'w', w, 'n', hits)
  redis.call('PEXPIREAT', cur, (w + 2) * interval)
end
return 1
