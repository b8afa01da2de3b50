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

-- SET NX both checks and records the event id. A write that fails after
-- it (a key of the wrong type) takes the record back, so nothing of the
-- event stays; for grants every read comes before the record.
--
-- apply_event is the whole of it for one event: k holds its three keys, a
-- its arguments as ARGV above, and now, when given, overrides a[4].
local function apply_event(k, a, now)
  local style = a[2]
  if style == 'counter' or style == 'gauge' then
    if not redis.call('SET', k[1], '1', 'NX', 'PX', a[1]) then
      return {0}
    end
    local r
    if style == 'counter' then
      r = add(k[2], a[5], a[3])
    else
      r = redis.pcall('HSET', k[2], a[5], a[3])
    end
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
  local _, s, e, notified, q = roll(k[2], st, a[7], a[8], now)
  local used = add(k[2], 'u', a[3])
  if type(used) == 'table' then error(used.err) end
  local n, added = cross(used, limit, thresholds, notified, s, e)
  if n ~= notified then redis.call('HSET', k[2], 'n', n) end
  q = record_notices(k[2], q, added)
  return {1, used, limit, s, e, q}
end
