-- apply_chunk.lua applies a chunk of usage events in one call: each event
-- is decided in stream order exactly as if it were applied alone, but the
-- state each one changes is read once, kept here, and written once at the
-- end. A chunk of 100 events of one uid and metric costs one read and one
-- write of its counter, not a hundred of each; a script runs whole or not
-- at all, so no crash leaves a counter without its dedup records.
--
-- Dedup records are members of SETs, one per time bucket (the store's
-- dedup TTL wide): each event is checked against the buckets around its
-- time with one SMISMEMBER per set for the whole chunk, and recorded with
-- one SADD per set.
--
-- KEYS[1..S]         the dedup sets the chunk's events are checked against and recorded in
-- KEYS[S+2g-1]       group g's state: a grant's hash, or a counter's or gauge's values hash
-- KEYS[S+2g]         group g's overrides: the uid's grants hash (otherwise the state again)
-- KEYS[S+2G+1]       the epoch marker, when the meter guards its state
-- ARGV[1]            S; ARGV[2..S+1]: each set's TTL in ms, set when events are recorded in it
-- then               G; per group: style, the count of its arguments, then
--                    for a grant: metric, default limit, period, align, thresholds (percent)...
-- then               E; per event, 7 arguments: group, dedup member, first and last
--                    set to check, set to record in, value, and a grant's time in ms
--                    (0: Redis TIME, read once per chunk) or a counter's or gauge's field
-- then               with the marker, the chunk's highest stream sequence
--
-- A missing marker means Redis lost the meter's state (a rebuild puts it
-- back): nothing is applied and the script fails with LOST.
--
-- returns {events, groups}
--   events, one per event: {1} applied, for a grant {1, crossed, used,
--   start, end} (crossed: the notices this event crossed, each
--   "percent|start|end|limit|used", joined by ';'); {0} a
--   duplicate, nothing changed; {-1, error} failed (a key of the wrong
--   type), nothing of it kept; {-2, held} refused: the value is not a
--   number the meter takes, or would take the counter or the grant's used
--   past 1e15 (numbers.lua); held is what it holds
--   groups, one per group: a grant's {used, limit, start, end, pending}
--   (start and end in ms, end 0: indefinite; pending: the notices not yet
--   confirmed, also when every event was a duplicate, so notices lost in a
--   crash are published again), or 0

local S = tonumber(ARGV[1])
local pos = S + 2
local G = tonumber(ARGV[pos])
pos = pos + 1
local groups = {}
for g = 1, G do
  local n = tonumber(ARGV[pos + 1])
  local grp = {style = ARGV[pos], key = KEYS[S + 2 * g - 1], over = KEYS[S + 2 * g], args = {}}
  for j = 1, n do grp.args[j] = ARGV[pos + 1 + j] end
  pos = pos + n + 2
  groups[g] = grp
end
local E = tonumber(ARGV[pos])
pos = pos + 1
local evs = {}
for e = 1, E do
  local o = pos + 7 * (e - 1)
  evs[e] = {g = tonumber(ARGV[o]), member = ARGV[o + 1], lo = tonumber(ARGV[o + 2]),
    hi = tonumber(ARGV[o + 3]), add = tonumber(ARGV[o + 4]), value = ARGV[o + 5], x = ARGV[o + 6]}
end
pos = pos + 7 * E

local marker = KEYS[S + 2 * G + 1]
if marker and redis.call('EXISTS', marker) == 0 then
  return redis.error_reply('LOST the meter epoch marker is missing: Redis lost the state')
end

-- many calls cmd on key with the values of list, a thousand at a time
-- (Lua's stack bounds unpack), and returns the replies joined.
local function many(cmd, key, list)
  local out = {}
  for i = 1, #list, 1000 do
    local r = redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
    if type(r) == 'table' then
      for j = 1, #r do out[#out + 1] = r[j] end
    end
  end
  return out
end

-- seen[e]: event e was recorded before this chunk
local seen = {}
for i = 1, S do
  local idx, members = {}, {}
  for e = 1, E do
    local ev = evs[e]
    if ev.lo <= i and i <= ev.hi then
      idx[#idx + 1] = e
      members[#members + 1] = ev.member
    end
  end
  if #members > 0 then
    local r = many('SMISMEMBER', KEYS[i], members)
    for j = 1, #r do
      if r[j] == 1 then seen[idx[j]] = true end
    end
  end
end

-- failed returns the error of a redis.pcall reply, or nil.
local function failed(r)
  if type(r) == 'table' and r.err then return r.err end
  return nil
end

-- load_grant reads a grant group's state and limit, once.
local function load_grant(grp)
  if grp.st or grp.err then return end
  local st = redis.pcall('HMGET', grp.key, 'u', 's', 'e', 'n', 'q')
  grp.err = failed(st)
  if grp.err then return end
  local limit = redis.pcall('HGET', grp.over, grp.args[1])
  grp.err = failed(limit)
  if grp.err then return end
  grp.st, grp.limit, grp.dirty = st, limit or grp.args[2], {}
  grp.thresholds = {}
  for i = 5, #grp.args do grp.thresholds[#grp.thresholds + 1] = grp.args[i] end
end

-- field reads one field of a counter group, once; false when absent.
local function field(grp, f)
  if not grp.vals then grp.vals, grp.dirty = {}, {} end
  local v = grp.vals[f]
  if v == nil then
    local r = redis.pcall('HGET', grp.key, f)
    local err = failed(r)
    if err then return nil, err end
    v = r
    grp.vals[f] = v
  end
  return v
end

local now = nil

-- apply_one decides one new event against its group's state as this
-- chunk has left it.
local function apply_one(grp, ev)
  if grp.style == 'counter' then
    local held, err = field(grp, ev.x)
    if err then return {-1, err} end
    local sum = dec_add(held, ev.value)
    if not sum then return {-2, held or '0'} end
    grp.vals[ev.x], grp.dirty[ev.x] = sum, true
    return {1}
  elseif grp.style == 'gauge' then
    if not dec_signed_ok(ev.value) then return {-2, ''} end
    if grp.err == nil and not grp.vals then
      local t = redis.call('TYPE', grp.key)
      t = type(t) == 'table' and t.ok or t
      if t ~= 'hash' and t ~= 'none' then
        grp.err = 'WRONGTYPE Operation against a key holding the wrong kind of value'
      end
      grp.vals, grp.dirty = {}, {}
    end
    if grp.err then return {-1, grp.err} end
    grp.vals[ev.x], grp.dirty[ev.x] = ev.value, true
    return {1}
  end

  load_grant(grp)
  if grp.err then return {-1, grp.err} end
  local t = tonumber(ev.x)
  if not t or t <= 0 then
    if now == nil then now = now_ms(0) end
    t = now
  end
  local a = grp.args
  local used, s, e, notified, q, fresh = period_of(grp.st, a[3], a[4], t)
  local sum = dec_add(used, ev.value)
  if not sum then return {-2, used} end
  local st, d = grp.st, grp.dirty
  if fresh then
    st[2], st[3], st[4] = s, e, ''
    d.s, d.e, d.n, grp.started = true, true, true, true
  end
  st[1], d.u = sum, true
  local n, added = cross(sum, grp.limit, grp.thresholds, notified, s, e)
  if n ~= notified then st[4], d.n = n, true end
  if #added > 0 then
    if q ~= '' then q = q .. ';' end
    st[5], d.q = q .. table.concat(added, ';'), true
  end
  return {1, table.concat(added, ';'), sum, s, e}
end

local out = {}
local recorded = {} -- set index -> members applied in this chunk
local applied = {} -- member -> true: applied in this chunk
for e = 1, E do
  local ev = evs[e]
  local grp = groups[ev.g]
  if seen[e] or applied[ev.member] then
    out[e] = {0}
    if grp.style == 'grant' then load_grant(grp) end
  else
    local res = apply_one(grp, ev)
    out[e] = res
    if res[1] == 1 then
      applied[ev.member] = true
      local r = recorded[ev.add]
      if not r then
        r = {}
        recorded[ev.add] = r
      end
      r[#r + 1] = ev.member
    end
  end
end

-- Write what changed, once per key.
local states = {}
for g = 1, G do
  local grp = groups[g]
  local fields = {}
  if grp.style == 'grant' and grp.st then
    local st = grp.st
    for i, name in ipairs({'u', 's', 'e', 'n', 'q'}) do
      if grp.dirty[name] then
        fields[#fields + 1] = name
        fields[#fields + 1] = st[i]
      end
    end
    states[g] = {st[1] or '0', grp.limit, tonumber(st[2]) or 0, tonumber(st[3]) or 0, st[5] or ''}
  else
    states[g] = 0
    for f in pairs(grp.dirty or {}) do
      fields[#fields + 1] = f
      fields[#fields + 1] = grp.vals[f]
    end
  end
  if #fields > 0 then many('HSET', grp.key, fields) end
  if grp.started then
    -- Ended state expires an hour after its end, so idle users cost
    -- nothing; an indefinite grant never does.
    local e = tonumber(grp.st[3])
    if e > 0 then
      redis.call('PEXPIREAT', grp.key, e + 3600000)
    else
      redis.call('PERSIST', grp.key)
    end
  end
end
for i, members in pairs(recorded) do
  many('SADD', KEYS[i], members)
  redis.call('PEXPIRE', KEYS[i], ARGV[1 + i])
end
if marker then
  local seq = tonumber(ARGV[pos])
  local held = tonumber(redis.call('HGET', marker, 'seq')) or 0
  if seq and seq > held then redis.call('HSET', marker, 'seq', ARGV[pos]) end
end
return {out, states}
