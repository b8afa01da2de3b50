-- apply_event.lua records one usage event and updates its metric in one step, so
-- a crash can never leave one without the other: a script runs whole or
-- not at all, and a script that fails does so before its first write, so
-- the redelivery of its event is applied in full.
--
-- KEYS[1] the event's dedup record
-- KEYS[2] the state: the uid's grant hash, or the counter/gauge values hash
-- KEYS[3] grants: the uid's overrides hash (otherwise any key of the same slot)
-- ARGV[1] dedup TTL, ms
-- ARGV[2] style: grant, counter or gauge
-- ARGV[3] value
-- ARGV[4] the time the grant period is judged by, ms: the time the stream
--         stored the event (so a replay rolls the same periods); 0 takes Redis TIME
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
-- or {-2, held} when the value is not a number the meter takes, or would
-- take the counter or the grant's used past 1e15 (numbers.lua): nothing
-- changed; held is what the counter or used holds.

-- SET NX both checks and records the event id. Every read that could fail
-- (a key of the wrong type) comes before it or takes the record back, and
-- so does a refusal, so nothing of a failed or refused event stays.
--
-- apply_event is the whole of it for one event: k holds its three keys, a
-- its arguments as ARGV above, and now, when given, overrides a[4].
local function apply_event(k, a, now)
  local style = a[2]
  if style == 'counter' then
    if not redis.call('SET', k[1], '1', 'NX', 'PX', a[1]) then
      return {0}
    end
    local held = redis.pcall('HGET', k[2], a[5])
    if type(held) == 'table' and held.err then
      redis.call('DEL', k[1])
      error(held.err)
    end
    local sum = dec_add(held, a[3])
    if not sum then
      redis.call('DEL', k[1])
      return {-2, held or '0'}
    end
    redis.call('HSET', k[2], a[5], sum)
    return {1}
  elseif style == 'gauge' then
    if not redis.call('SET', k[1], '1', 'NX', 'PX', a[1]) then
      return {0}
    end
    if not dec_signed_ok(a[3]) then
      redis.call('DEL', k[1])
      return {-2, ''}
    end
    local r = redis.pcall('HSET', k[2], a[5], a[3])
    if type(r) == 'table' and r.err then
      redis.call('DEL', k[1])
      error(r.err)
    end
    return {1}
  end

  now = now or now_ms(a[4])
  local thresholds = {}
  for i = 9, #a do thresholds[#thresholds + 1] = a[i] end

  local st = redis.call('HMGET', k[2], 'u', 's', 'e', 'n', 'q')
  local limit = limit_of(k[3], a[5], a[6])
  if not redis.call('SET', k[1], '1', 'NX', 'PX', a[1]) then
    return {0, '', '', 0, 0, st[5] or ''}
  end
  local used, s, e, notified, q, fresh = period_of(st, a[7], a[8], now)
  local sum = dec_add(used, a[3])
  if not sum then
    redis.call('DEL', k[1])
    return {-2, used}
  end
  record_use(k[2], sum, s, e, fresh)
  local n, added = cross(sum, limit, thresholds, notified, s, e)
  if n ~= notified then redis.call('HSET', k[2], 'n', n) end
  q = record_notices(k[2], q, added)
  return {1, sum, limit, s, e, q}
end
