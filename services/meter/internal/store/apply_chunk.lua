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
-- KEYS[S+2G+1]       the stream-position records (a ZSET), in stream mode
-- KEYS[S+2G+1 or +2] the epoch marker, when the meter guards its state (on a Redis
--                    Cluster the marker of the call's own hash slot)
-- ARGV[1]            S; ARGV[2..S+1]: each set's TTL in ms, set when events are recorded in it
-- then               C; per grant configuration, the count of its arguments, then
--                    metric, default limit, period, align, thresholds (percent)...
--                    (sent once, however many uids' grants of the metric the chunk holds)
-- then               G; per group: 'counter', 'gauge', or a grant's configuration (1..C)
-- then               W; per window, 3 arguments: the first and last set to check and
--                    the set to record in (the events of a chunk share a few)
-- then               E; per event, 6 arguments: group, window, dedup member, value,
--                    a grant's time in ms (0: Redis TIME, read once per chunk)
--                    or a counter's or gauge's field, and its stream sequence (0: none;
--                    negative: the message right after event e-1's in their stream
--                    partition, so the two make one run though their sequences are apart)
-- then               flags, summed: 1 return every grant's state (else only those with
--                    notices pending); 2 decide every counter event one by one (no
--                    HINCRBY of whole numbers: the tests' reference)
-- then               stream mode: 1 (0: off, and nothing more here); the ack floor
--                    (messages at or below it are duplicates: acked, so applied;
--                    records wholly at or below it are dropped, one run "0-<floor>"
--                    kept in their place; 0: none); the records' TTL in ms (a uid
--                    idle that long takes its along)
-- then               with the marker, the chunk's highest stream sequence
--
-- Stream mode dedups a redelivered message by its stream sequence, with no
-- record per event: the sequences a call applies are recorded as runs
-- "first-last" (scored by last) in a ZSET. The
-- ids of events are then only looked up (an authorized request's id is
-- still recorded, and counts an event of the same id as a duplicate), not
-- recorded: a publisher's repeat is the stream's duplicate window's job.
--
-- A missing marker (its seq) means Redis lost the meter's state (a
-- rebuild puts it back): nothing is applied and the script fails with LOST.
--
-- returns {events, groups}
--   events, one per event: 1 applied, or {1, crossed} applied and crossed
--   notice thresholds (each "percent|start|end|limit|used", joined by
--   ';'); 0 a duplicate, nothing changed; {-1, error} failed (a key of the wrong
--   type), nothing of it kept; {-2, held} refused: the value is not a
--   number the meter takes, or would take the counter or the grant's used
--   past 1e15 (numbers.lua); held is what it holds
--   groups, one per group: a grant's {used, limit, start, end, pending}
--   (start and end in ms, end 0: indefinite; pending: the notices not yet
--   confirmed, also when every event was a duplicate, so notices lost in a
--   crash are published again), when asked for every grant or when
--   notices are pending; otherwise 0

local S = tonumber(ARGV[1])
local pos = S + 2
local C = tonumber(ARGV[pos])
pos = pos + 1
local configs = {}
for c = 1, C do
  local n = tonumber(ARGV[pos])
  local cfg = {metric = ARGV[pos + 1], limit = ARGV[pos + 2], period = ARGV[pos + 3], align = ARGV[pos + 4],
    thresholds = {}, tn = {}}
  for j = 5, n do
    cfg.thresholds[#cfg.thresholds + 1] = ARGV[pos + j]
    cfg.tn[#cfg.tn + 1] = tonumber(ARGV[pos + j])
  end
  pos = pos + n + 1
  configs[c] = cfg
end
local G = tonumber(ARGV[pos])
pos = pos + 1
local groups = {}
for g = 1, G do
  local kind = ARGV[pos + g - 1]
  local grp = {style = kind, key = KEYS[S + 2 * g - 1], over = KEYS[S + 2 * g]}
  if kind ~= 'counter' and kind ~= 'gauge' then
    grp.style, grp.cfg = 'grant', configs[tonumber(kind)]
  end
  groups[g] = grp
end
pos = pos + G
local W = tonumber(ARGV[pos])
pos = pos + 1
local wlo, whi, wadd = {}, {}, {}
for w = 1, W do
  wlo[w], whi[w], wadd[w] = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  pos = pos + 3
end
-- The events, as parallel arrays (a table per event costs more).
local E = tonumber(ARGV[pos])
pos = pos + 1
local eg, ew, emember, evalue, ex, eseq, follows = {}, {}, {}, {}, {}, {}, {}
for e = 1, E do
  local o = pos + 6 * (e - 1)
  eg[e], ew[e], emember[e], evalue[e], ex[e] = tonumber(ARGV[o]), tonumber(ARGV[o + 1]), ARGV[o + 2], ARGV[o + 3], ARGV[o + 4]
  local q = tonumber(ARGV[o + 5])
  if q < 0 then
    -- The message right after event e-1's in their partition: one run.
    q = -q
    follows[e] = true
  end
  eseq[e] = q
end
pos = pos + 6 * E
local flags = tonumber(ARGV[pos])
local all_states, one_by_one = flags % 2 == 1, flags >= 2
pos = pos + 1
local stream_mode = ARGV[pos] == '1'
local floor, seqs_ttl = 0, nil
if stream_mode then
  floor, seqs_ttl = tonumber(ARGV[pos + 1]), ARGV[pos + 2]
  pos = pos + 3
else
  pos = pos + 1
end
local seqs_key = nil
local marker = KEYS[S + 2 * G + 1]
if stream_mode then
  seqs_key = marker
  marker = KEYS[S + 2 * G + 2]
end
-- The marker's seq, not the key: a rebuild marks the key before it
-- deletes anything, and state half rebuilt must take no events. Read
-- once: the raise at the end compares with it (nothing else in the call
-- writes the marker).
local marker_seq = nil
if marker then
  marker_seq = redis.call('HGET', marker, 'seq')
  if not marker_seq then
    return redis.error_reply('LOST the meter epoch marker is missing: Redis lost the state')
  end
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

-- seen[e]: event e was recorded before this chunk. In stream mode the
-- SETs hold only authorized requests' ids (and what an older meter
-- recorded), and most often do not exist: skip those.
local seen = {}
for i = 1, S do
  if not stream_mode or redis.call('EXISTS', KEYS[i]) == 1 then
    local idx, members = {}, {}
    for e = 1, E do
      local w = ew[e]
      if wlo[w] <= i and i <= whi[w] then
        idx[#idx + 1] = e
        members[#members + 1] = emember[e]
      end
    end
    if #members > 0 then
      local r = many('SMISMEMBER', KEYS[i], members)
      for j = 1, #r do
        if r[j] == 1 then seen[idx[j]] = true end
      end
    end
  end
end

-- In stream mode, every message at or below the consumer's ack floor was
-- acked, and a meter acks only what it applied (or refused): a delivery
-- of one that was held past its ack wait while another replica (or a
-- later delivery) applied and acked it is a duplicate, whatever records
-- were dropped since. The highest floor any call passed stays as the run
-- "0-<floor>", so a replica whose own floor is older sees it too.
-- Then the runs recorded that overlap the chunk's sequences. Runs are
-- disjoint but for that one, which has the lowest last sequence of all
-- (nothing else at or below the floor is kept), so in order of their
-- last sequence they are in order of their first too: read from the
-- first run ending at or after the chunk's lowest sequence until one
-- starts past its highest (a chunk of new messages reads none).
if stream_mode and floor > 0 then
  for e = 1, E do
    if eseq[e] > 0 and eseq[e] <= floor then seen[e] = true end
  end
end
if stream_mode then
  local lo, hi = nil, nil
  for e = 1, E do
    local q = eseq[e]
    if q > 0 then
      if lo == nil or q < lo then lo = q end
      if hi == nil or q > hi then hi = q end
    end
  end
  if lo then
    local firsts, lasts = {}, {}
    local offset, done = 0, false
    while not done do
      local page = redis.call('ZRANGEBYSCORE', seqs_key, lo, '+inf', 'LIMIT', offset, 256)
      done = #page < 256
      for _, run in ipairs(page) do
        local a, b = string.match(run, '^(%d+)-(%d+)$')
        if a and tonumber(a) > hi then
          done = true
          break
        end
        if a then
          firsts[#firsts + 1], lasts[#lasts + 1] = tonumber(a), tonumber(b)
        end
      end
      offset = offset + 256
    end
    if #firsts > 0 then
      for e = 1, E do
        local q = eseq[e]
        if q > 0 then
          for r = 1, #firsts do
            if firsts[r] <= q and q <= lasts[r] then
              seen[e] = true
              break
            end
          end
        end
      end
    end
  end
end

-- failed returns the error of a redis.pcall reply, or nil.
local function failed(r)
  if type(r) == 'table' and r.err then return r.err end
  return nil
end

-- Sums are kept as whole units and millionths (numbers.lua) while the
-- chunk runs, and written as plain decimals at the end.
local function add(w, m, vw, vm)
  w, m = w + vw, m + vm
  if m >= MICRO then w, m = w + 1, m - MICRO end
  if w > MAX_WHOLE or (w == MAX_WHOLE and m > 0) then return nil end
  return w, m
end

-- notified_all reports whether n marks every one of count thresholds.
local function notified_all(n, count)
  if count == 0 then return true end
  if n == '' then return false end
  local _, ones = string.gsub(n, '1', '')
  return ones >= count
end

-- load_grant reads a grant group's state and limit, once.
local function load_grant(grp)
  if grp.loaded or grp.err then return end
  local st = redis.pcall('HMGET', grp.key, 'u', 's', 'e', 'n', 'q')
  grp.err = failed(st)
  if grp.err then return end
  local cfg = grp.cfg
  local limit = redis.pcall('HGET', grp.over, cfg.metric)
  grp.err = failed(limit)
  if grp.err then return end
  grp.loaded, grp.limit, grp.dirty = true, limit or cfg.limit, {}
  grp.limit_n = tonumber(grp.limit)
  grp.uraw = st[1] or '0'
  grp.uw, grp.um = dec(st[1]) -- nil: what Redis holds is not a number
  grp.s, grp.e, grp.n, grp.q = st[2], tonumber(st[3]), st[4] or '', st[5] or ''
  grp.thresholds, grp.tn = cfg.thresholds, cfg.tn -- shared, never changed
  grp.all = notified_all(grp.n, #grp.tn)
end

-- field reads one field of a counter group, once.
local function field(grp, f)
  if not grp.w then grp.w, grp.m, grp.raw, grp.dirty = {}, {}, {}, {} end
  if grp.w[f] == nil then
    local r = redis.pcall('HGET', grp.key, f)
    local err = failed(r)
    if err then return err end
    local w, m = dec(r)
    grp.w[f], grp.m[f], grp.raw[f] = w or false, m, r or '0'
  end
  return nil
end

local now = nil

-- value_of is dec(v, true), remembered: a chunk's values repeat.
local vw_of, vm_of = {}, {}
local function value_of(v)
  local w = vw_of[v]
  if w == nil then
    local m
    w, m = dec(v, true)
    vw_of[v], vm_of[v] = w or false, m
  end
  if not w then return nil end
  return w, vm_of[v]
end

-- apply_one decides new event e against its group's state as this chunk
-- has left it: 1, {1, crossed}, {-1, error} or {-2, held}.
local function apply_one(grp, e)
  local f, value = ex[e], evalue[e]
  if grp.style == 'counter' then
    local err = field(grp, f)
    if err then return {-1, err} end
    local w, m = false, nil
    if grp.w[f] then
      local vw, vm = value_of(value)
      if vw then w, m = add(grp.w[f], grp.m[f], vw, vm) end
    end
    if not w then return {-2, grp.raw[f] or dec_string(grp.w[f], grp.m[f])} end
    grp.w[f], grp.m[f], grp.raw[f], grp.dirty[f] = w, m, nil, true
    return 1
  elseif grp.style == 'gauge' then
    if not dec_signed_ok(value) then return {-2, ''} end
    if grp.err == nil and not grp.vals then
      local t = redis.call('TYPE', grp.key)
      t = type(t) == 'table' and t.ok or t
      if t ~= 'hash' and t ~= 'none' then
        grp.err = 'WRONGTYPE Operation against a key holding the wrong kind of value'
      end
      grp.vals, grp.dirty = {}, {}
    end
    if grp.err then return {-1, grp.err} end
    grp.vals[f], grp.dirty[f] = value, true
    return 1
  end

  load_grant(grp)
  if grp.err then return {-1, grp.err} end
  if #grp.tn > 0 and not grp.limit_n then
    return {-1, 'the grant limit ' .. tostring(grp.limit) .. ' is not a number'}
  end
  local t = tonumber(f)
  if not t or t <= 0 then
    if now == nil then now = now_ms(0) end
    t = now
  end
  local cfg, d = grp.cfg, grp.dirty
  local fresh = not (grp.s and grp.e and (grp.e == 0 or t < grp.e))
  local uw, um, used = grp.uw, grp.um, grp.uraw
  local s, en, notified = grp.s, grp.e, grp.n
  if fresh then
    uw, um, used, notified = 0, 0, '0', ''
    s, en = period_bounds(cfg.period, cfg.align, t)
  end
  if not uw then return {-2, used} end
  local vw, vm = value_of(value)
  if not vw then return {-2, used} end
  local w, m = add(uw, um, vw, vm)
  if not w then return {-2, used} end
  if fresh then
    grp.s, grp.e, grp.n, grp.started = s, en, '', true
    grp.all = #grp.tn == 0
    d.s, d.e, d.n = true, true, true
  end
  grp.uw, grp.um, grp.uraw, d.u = w, m, nil, true
  if grp.all then return 1 end
  -- Below every threshold not yet notified, by a margin no rounding can
  -- cross: nothing to decide. Otherwise decide as cross() does, on the
  -- sum as the decimal Redis will hold.
  local approx, low = w + m / MICRO, nil
  for i = 1, #grp.tn do
    if string.sub(notified, i, i) ~= '1' then
      local b = grp.limit_n * grp.tn[i] / 100
      if low == nil or b < low then low = b end
    end
  end
  if low ~= nil and approx < low * (1 - 1e-9) then return 1 end
  local sum = dec_string(w, m)
  grp.uraw = sum
  local n, added = cross(sum, grp.limit, grp.thresholds, notified, s, en)
  if n ~= notified then
    grp.n, d.n = n, true
    grp.all = notified_all(n, #grp.tn)
  end
  if #added == 0 then return 1 end
  local q = grp.q
  if q ~= '' then q = q .. ';' end
  grp.q, d.q = q .. table.concat(added, ';'), true
  return {1, table.concat(added, ';')}
end

-- A counter's field whose events in this chunk all add whole numbers
-- takes one HINCRBY of their sum, with no read: every one of them is
-- applied, as one at a time would, when what the field held was a whole
-- number from 0 and the sum stays within 1e15 (a value is never
-- negative, so no partial sum passes the last). Otherwise (a fraction,
-- something else held, the sum too large: the increment is undone) the
-- field's events take the way below, one by one. An event found below to
-- repeat one applied earlier in the chunk is taken back out.
do
  local list = {}
  for e = 1, E do
    local grp = groups[eg[e]]
    if grp.style == 'counter' and not seen[e] and not one_by_one then
      local f = ex[e]
      if not grp.fast then grp.fast = {} end
      local st = grp.fast[f]
      if st == nil then
        st = {sum = 0}
        grp.fast[f] = st
        list[#list + 1] = {grp, f, st}
      end
      if st.sum then
        local w, m = value_of(evalue[e])
        if not w or m ~= 0 or st.sum + w > MAX_WHOLE then
          st.sum = false
        else
          st.sum = st.sum + w
        end
      end
    end
  end
  for _, it in ipairs(list) do
    local grp, f, st = it[1], it[2], it[3]
    if st.sum then
      local sum = string.format('%d', st.sum)
      local r = redis.pcall('HINCRBY', grp.key, f, sum)
      if type(r) == 'number' then
        if r <= MAX_WHOLE and r - st.sum >= 0 then
          st.ok, st.back = true, 0
        else
          redis.call('HINCRBY', grp.key, f, '-' .. sum)
        end
      end
    end
  end
end

-- fast_of is the state of event e's counter field when it was applied
-- by the HINCRBY above, or nil.
local function fast_of(grp, e)
  if grp.fast == nil then return nil end
  local st = grp.fast[ex[e]]
  if st and st.ok then return st end
  return nil
end

local out = {}
local recorded = {} -- set index -> members applied in this chunk
local applied = {} -- member -> true: applied in this chunk
local applied_seq = {} -- stream sequence -> true: applied in this chunk
local new_seqs = {}
local joins = {} -- stream sequence -> the one before it in its partition (Follows)
for e = 1, E do
  local grp = groups[eg[e]]
  local member = emember[e]
  if seen[e] or applied[member] or applied_seq[eseq[e]] then
    out[e] = 0
    if grp.style == 'grant' then load_grant(grp) end
    local st = not seen[e] and fast_of(grp, e)
    if st then st.back = st.back + value_of(evalue[e]) end
  else
    -- Every check comes before the first change to the group's state,
    -- so an event that fails leaves nothing of itself.
    local ok, res = true, 1
    if not fast_of(grp, e) then
      ok, res = pcall(apply_one, grp, e)
      if not ok then res = {-1, type(res) == 'table' and res.err or tostring(res)} end
    end
    out[e] = res
    if (res == 1 or (type(res) == 'table' and res[1] == 1)) and stream_mode and eseq[e] > 0 then
      applied_seq[eseq[e]] = true
      new_seqs[#new_seqs + 1] = eseq[e]
      if follows[e] then joins[eseq[e]] = eseq[e - 1] end
    elseif res == 1 or (type(res) == 'table' and res[1] == 1) then
      applied[member] = true
      local into = wadd[ew[e]]
      local r = recorded[into]
      if not r then
        r = {}
        recorded[into] = r
      end
      r[#r + 1] = member
    end
  end
end

-- Write what changed, once per key.
local states = {}
for g = 1, G do
  local grp = groups[g]
  local fields = {}
  if grp.style == 'grant' and grp.loaded then
    local used = grp.uraw or dec_string(grp.uw, grp.um)
    local d = grp.dirty
    if d.u then fields[#fields + 1], fields[#fields + 2] = 'u', used end
    if d.s then fields[#fields + 1], fields[#fields + 2] = 's', grp.s end
    if d.e then fields[#fields + 1], fields[#fields + 2] = 'e', grp.e end
    if d.n then fields[#fields + 1], fields[#fields + 2] = 'n', grp.n end
    if d.q then fields[#fields + 1], fields[#fields + 2] = 'q', grp.q end
    states[g] = 0
    if all_states or grp.q ~= '' then
      states[g] = {used, grp.limit, tonumber(grp.s) or 0, grp.e or 0, grp.q}
    end
  elseif grp.style == 'counter' then
    states[g] = 0
    for f in pairs(grp.dirty or {}) do
      fields[#fields + 1], fields[#fields + 2] = f, dec_string(grp.w[f], grp.m[f])
    end
  else
    states[g] = 0
    for f in pairs(grp.dirty or {}) do
      fields[#fields + 1], fields[#fields + 2] = f, grp.vals[f]
    end
  end
  if #fields > 0 then many('HSET', grp.key, fields) end
  for f, st in pairs(grp.fast or {}) do
    if st.ok and st.back > 0 then redis.call('HINCRBY', grp.key, f, string.format('-%d', st.back)) end
  end
  if grp.started then
    -- Ended state expires an hour after its end, so idle users cost
    -- nothing; an indefinite grant never does.
    if grp.e > 0 then
      redis.call('PEXPIREAT', grp.key, grp.e + 3600000)
    else
      redis.call('PERSIST', grp.key)
    end
  end
end
for i, members in pairs(recorded) do
  many('SADD', KEYS[i], members)
  redis.call('PEXPIRE', KEYS[i], ARGV[1 + i])
end
if stream_mode then
  if #new_seqs > 0 then
    table.sort(new_seqs)
    local zargs = {}
    local a, b = new_seqs[1], new_seqs[1]
    local function close_run()
      zargs[#zargs + 1], zargs[#zargs + 2] = b, string.format('%d-%d', a, b)
    end
    for i = 2, #new_seqs do
      local q = new_seqs[i]
      if q == b + 1 or joins[q] == b then
        b = q
      else
        close_run()
        a, b = q, q
      end
    end
    close_run()
    many('ZADD', seqs_key, zargs)
    redis.call('PEXPIRE', seqs_key, seqs_ttl)
  end
  if floor > 0 then
    local low = redis.call('ZRANGE', seqs_key, 0, 0, 'WITHSCORES')
    local held = 0
    if low[1] and string.sub(low[1], 1, 2) == '0-' then held = tonumber(low[2]) end
    if floor > held then
      redis.call('ZREMRANGEBYSCORE', seqs_key, '-inf', floor)
      redis.call('ZADD', seqs_key, floor, '0-' .. floor)
      redis.call('PEXPIRE', seqs_key, seqs_ttl)
    end
  end
end
if marker then
  local seq = tonumber(ARGV[pos])
  local held = tonumber(marker_seq) or 0
  if seq and seq > held then redis.call('HSET', marker, 'seq', ARGV[pos]) end
end
return {out, states}
