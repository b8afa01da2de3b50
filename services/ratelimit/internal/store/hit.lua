-- hit.lua: count one usage event as a hit of one (uid, service), once.
--
-- KEYS[1]  the event's dedup record for this service
-- KEYS[2]  the window HASH of even window indexes (w index, n count)
-- KEYS[3]  the window HASH of odd window indexes
-- ARGV[1]  the dedup record's lifetime in ms
-- ARGV[2]  now in ms; 0 uses Redis TIME
-- ARGV[3]  the interval in ms
-- ARGV[4]  the hits to add (the event's value, an integer from 0 to 1e15)
--
-- Returns 1 when counted, 0 when the event was counted before, 2 when
-- the hits are not such an integer or would take the window past 1e15,
-- the largest number allot keeps (nothing changed). Events are facts: the
-- count may pass the limit, and later checks are refused. The windows are
-- read before the record is set, and a refusal takes the record back, so
-- an event is counted with its record or not at all.

local c = redis.call('HMGET', KEYS[2], 'w', 'n')
local d = redis.call('HMGET', KEYS[3], 'w', 'n')
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end

local now = tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local interval = tonumber(ARGV[3])
local w = math.floor(now / interval)
local cur, stored = KEYS[2], c
if w % 2 == 1 then cur, stored = KEYS[3], d end

-- Integers of at most 16 digits, exact in Lua's doubles up to 2^53; the
-- count goes to Redis as the string, never as a Lua number (Redis writes
-- a long one in exponent form: 1e+15 on Redis 6).
local hits = ARGV[4]
local held = 0
if tonumber(stored[1]) == w then held = tonumber(stored[2]) or 0 end
if not string.match(hits, '^%d+$') or #hits > 16 or held + tonumber(hits) > 1000000000000000 then
  redis.call('DEL', KEYS[1])
  return 2
end

if tonumber(stored[1]) == w then
  redis.call('HINCRBY', cur, 'n', hits)
else
  redis.call('HSET', cur, 'w', w, 'n', hits)
  redis.call('PEXPIREAT', cur, (w + 2) * interval)
end
return 1
