-- apply.lua records one usage event and updates its metric in one step, so
-- a crash can never leave one without the other. The dedup record is
-- written last: a script that fails half-way leaves the event unapplied
-- and its redelivery is applied in full.
--
-- KEYS[1] the event's dedup record
-- KEYS[2] the state: the uid's grant hash, or the counter/gauge values hash
-- KEYS[3] grants: the uid's overrides hash (otherwise any key of the same slot)
-- ARGV[1] dedup TTL, ms
-- ARGV[2] style: grant, counter or gauge
-- ARGV[3] value
-- ARGV[4] now, ms; 0 takes Redis TIME
-- counter, gauge:
--   ARGV[5] the field: the event's label set
-- grant:
--   ARGV[5] metric name   ARGV[6] default limit   ARGV[7] period   ARGV[8] align
--   ARGV[9..] notify thresholds, percent
--
-- returns {applied, used, limit, start, end, pending}
--   applied: 1 applied, 0 duplicate (nothing changed)
--   grants only: used, limit (strings), period start and end (ms; end 0:
--   indefinite), pending notices "percent|start|end|limit|used" joined by ';'
--   (also for a duplicate, so notices lost in a crash are published again)

if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[2] == 'grant' then
    return {0, '', '', 0, 0, redis.call('HGET', KEYS[2], 'q') or ''}
  end
  return {0}
end

local style = ARGV[2]
if style == 'counter' then
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[5], ARGV[3])
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return {1}
end
if style == 'gauge' then
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[3])
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return {1}
end

local now = now_ms(ARGV[4])
local thresholds = {}
for i = 9, #ARGV do thresholds[#thresholds + 1] = ARGV[i] end

local _, s, e, notified, q = roll(KEYS[2], ARGV[7], ARGV[8], now)
local used = redis.call('HINCRBYFLOAT', KEYS[2], 'u', ARGV[3])
local limit = limit_of(KEYS[3], ARGV[5], ARGV[6])
local n, added = cross(used, limit, thresholds, notified, s, e)
if n ~= notified then redis.call('HSET', KEYS[2], 'n', n) end
q = record_notices(KEYS[2], q, added)
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return {1, used, limit, s, e, q}
