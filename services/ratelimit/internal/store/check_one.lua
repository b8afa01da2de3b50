-- check_one.lua: one rate-limit decision for one (uid, service), checked
-- and recorded in one step. check.lua (one decision per call) and
-- check_many.lua (a batch per call) are this file with a few lines after
-- it.
--
-- check_one(keys, args, now, ko, ao) decides one call; keys and args are
-- check.lua's KEYS and ARGV, or check_many.lua's, whose call i has its
-- keys at ko = 3 * (i - 1) and its arguments at ao = 6 * (i - 1) (read
-- in place: no tables a call, 5 % of a check's Redis time, measured by
-- BenchmarkCheckMany); check.lua passes neither, and both are 0:
--
-- keys[ko+1]  the window HASH of even window indexes (w index, n count)
-- keys[ko+2]  the window HASH of odd window indexes
-- keys[ko+3]  the uid's grants HASH (overrides)
-- args[1]  now in ms; 0 uses Redis TIME, the one clock of every replica
-- args[ao+2]  the interval in ms
-- args[ao+3]  the mode: "fixed" or "sliding"
-- args[ao+4]  the cost; 0 peeks: it consumes nothing and tells whether a
--          call of cost 1 would pass
-- args[ao+5]  the grants field that overrides this limit ("ratelimit_<service>",
--          or "ratelimit" for the uid's own limit)
-- args[ao+6]  the configured limit, or -1 for none: then the uid's
--          "ratelimit" grant applies
-- args[ao+7]  the default "ratelimit" grant
-- now      when not nil, the time in ms, overriding args[1]
--
-- Returns {allowed (1|0), limit, remaining, reset_after_ms, retry_after_ms,
-- used}: used is the window's count after the call (sliding: the
-- weighted estimate, rounded up).
--
-- The window index w = floor(now / interval) is stored with its count, so
-- a key left from an older window of the same parity is recognized and
-- counts as empty. A window's key expires one interval after the window
-- ends (sliding mode reads it as the previous window until then), never
-- earlier; the expiry is set by the window's first call, so later calls
-- make one write. A refused call changes nothing, and a call that fails
-- (a key of the wrong type) fails before its first write.

-- now_ms returns arg (ms) as a number, or Redis TIME in ms when it is 0.
local function now_ms(arg)
  local now = tonumber(arg)
  if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end

local function check_one(keys, args, now, ko, ao)
  ko, ao = ko or 0, ao or 0
  now = now or now_ms(args[1])
  local interval = tonumber(args[ao + 2])
  local sliding = args[ao + 3] == 'sliding'
  local cost = tonumber(args[ao + 4])

  local over = redis.call('HMGET', keys[ko + 3], args[ao + 5], 'ratelimit')
  local limit = tonumber(over[1])
  if limit == nil then
    limit = tonumber(args[ao + 6])
    if limit < 0 then
      limit = tonumber(over[2]) or tonumber(args[ao + 7])
    end
  end
  limit = math.floor(limit)
  if limit < 0 then limit = 0 end

  local w = math.floor(now / interval)
  local elapsed = now - w * interval
  local cur, prev = keys[ko + 1], keys[ko + 2]
  -- Not "cur, prev = prev, cur": miniredis's Lua (gopher-lua) gets that
  -- swap of two locals wrong, and the dev store must answer as Redis does.
  if w % 2 == 1 then cur, prev = keys[ko + 2], keys[ko + 1] end

  local n = 0
  local c = redis.call('HMGET', cur, 'w', 'n')
  local fresh = tonumber(c[1]) ~= w -- no call of this window yet
  if not fresh then n = tonumber(c[2]) or 0 end
  local p = 0
  if sliding then
    local pv = redis.call('HMGET', prev, 'w', 'n')
    if tonumber(pv[1]) == w - 1 then p = tonumber(pv[2]) or 0 end
  end

  -- The weighted count p*(interval-elapsed)/interval + n, compared scaled by
  -- interval so the test is exact in integers (below 2^53: a limit under
  -- 3e10 a 5-minute window). p is 0 in fixed mode, and then the counts
  -- are compared as they are, exact up to the largest limit, 1e15.
  local function fits(extra)
    if p == 0 then return n + extra <= limit end
    return p * (interval - elapsed) + (n + extra) * interval <= limit * interval
  end

  local want = cost
  if want == 0 then want = 1 end
  local allowed = fits(want)
  if allowed and cost > 0 then
    n = n + cost
    -- Counts go to Redis as strings: Redis writes a long Lua number in
    -- exponent form (1e+15 from 15 digits on Redis 6, from 18 on Redis
    -- 7), which HINCRBY then refuses.
    if fresh then
      -- The first call of the window: (re)start the key and its expiry.
      redis.call('HSET', cur, 'w', w, 'n', string.format('%d', n))
      redis.call('PEXPIREAT', cur, (w + 2) * interval)
    else
      redis.call('HINCRBY', cur, 'n', string.format('%d', cost))
    end
  end

  local remaining, used = limit - n, n
  if p > 0 then
    local scaled = p * (interval - elapsed) + n * interval
    remaining = math.floor((limit * interval - scaled) / interval)
    used = math.ceil(scaled / interval)
  end
  if remaining < 0 then remaining = 0 end
  local reset_after = (w + 1) * interval - now

  local retry = 0
  if not allowed then
    if want > limit or not sliding then
      retry = reset_after
    elseif n + want <= limit then
      -- Wait until the previous window's weight has decayed enough.
      retry = math.ceil(interval - (limit - n - want) * interval / p) - elapsed
    else
      -- Wait for the next window, then for this one's weight to decay.
      retry = reset_after + math.ceil(interval - (limit - want) * interval / n)
    end
    if retry < 1 then retry = 1 end
  end

  local a = 0
  if allowed then a = 1 end
  return {a, limit, remaining, reset_after, retry, used}
end
