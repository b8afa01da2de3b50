-- apply_many.lua applies a whole chunk of usage events in one call, on a
-- single Redis node (on a Cluster, the events of one chunk live in many
-- slots, and apply.lua runs once per event instead). apply_event.lua is
-- prepended. Each event is applied as by apply.lua; one that fails is
-- reported and the others go on.
--
-- KEYS three per event, in order: dedup record, state, overrides; then,
--      when the meter guards its state, the epoch marker (keys.MeterEpoch)
-- ARGV[1] the number of events; then per event: the count of its
--         arguments, then its arguments as apply.lua's ARGV; then, with the
--         marker, the highest stream sequence of the chunk
--
-- With the marker: a missing marker means Redis lost the meter's state
-- (a rebuild puts it back): nothing is applied and the script fails with
-- LOST; otherwise the marker's seq is raised to the chunk's.
--
-- Each grant event is judged by its own time (its ARGV[4]); those with
-- none share one reading of Redis TIME.
--
-- returns one reply per event, as apply.lua's, or {-1, error} for an event
-- that failed (with nothing of it kept)

local n_events = tonumber(ARGV[1])
local marker = KEYS[3 * n_events + 1]
if marker and redis.call('EXISTS', marker) == 0 then
  return redis.error_reply('LOST the meter epoch marker is missing: Redis lost the state')
end

-- Redis TIME, read once for the grant events that carry no time of their own
local now = nil
local out = {}
local pos = 2
for i = 1, n_events do
  local n = tonumber(ARGV[pos])
  local a = {}
  for j = 1, n do a[j] = ARGV[pos + j] end
  pos = pos + n + 1
  local t = nil
  if a[2] == 'grant' then
    t = tonumber(a[4])
    if not t or t <= 0 then
      if now == nil then now = now_ms(0) end
      t = now
    end
  end
  local ok, res = pcall(apply_event, {KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]}, a, t)
  if ok then
    out[i] = res
  else
    out[i] = {-1, type(res) == 'table' and res.err or tostring(res)}
  end
end
if marker then
  local seq = tonumber(ARGV[pos])
  local held = tonumber(redis.call('HGET', marker, 'seq')) or 0
  if seq and seq > held then redis.call('HSET', marker, 'seq', ARGV[pos]) end
end
return out
