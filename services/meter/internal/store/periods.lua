-- periods.lua is prepended to every script that rolls a grant period.
-- Times are Unix milliseconds, UTC. Lua numbers are doubles, exact for
-- integers below 2^53 (the year 287396).

local DAY = 86400000

-- days_from_civil and civil_from_days convert between a proleptic
-- Gregorian date and days since 1970-01-01 (Howard Hinnant's algorithms).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function next_month(y, m)
  if m == 12 then return y + 1, 1 end
  return y, m + 1
end

-- add_month returns the same day and time one month later, clamped to
-- the last day of a shorter month (Jan 31 -> Feb 28).
local function add_month(ms)
  local days = math.floor(ms / DAY)
  local tod = ms - days * DAY
  local y, m, d = civil_from_days(days)
  local ny, nm = next_month(y, m)
  local ay, am = next_month(ny, nm)
  local dim = days_from_civil(ay, am, 1) - days_from_civil(ny, nm, 1)
  if d > dim then d = dim end
  return days_from_civil(ny, nm, d) * DAY + tod
end

-- period_bounds returns the start and end of the period that begins at
-- now (rolling) or contains now (calendar). An end of 0 means never.
local function period_bounds(period, align, now)
  if period == 'indefinite' then return now, 0 end
  if align == 'calendar' then
    if period == 'hour' then
      local s = now - now % 3600000
      return s, s + 3600000
    end
    local days = math.floor(now / DAY)
    if period == 'day' then return days * DAY, (days + 1) * DAY end
    if period == 'week' then
      local s = days - (days + 3) % 7 -- ISO weeks start on Monday; day 0 was a Thursday
      return s * DAY, (s + 7) * DAY
    end
    local y, m = civil_from_days(days)
    local ny, nm = next_month(y, m)
    return days_from_civil(y, m, 1) * DAY, days_from_civil(ny, nm, 1) * DAY
  end
  if period == 'hour' then return now, now + 3600000 end
  if period == 'day' then return now, now + DAY end
  if period == 'week' then return now, now + 7 * DAY end
  return now, add_month(now)
end

local function now_ms(arg)
  local n = tonumber(arg)
  if n and n > 0 then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- period_of reads the current period of a grant from st, the hash as
-- HMGET u s e n q read it, without writing: it returns used, start, end,
-- notified, the pending notices (q) and fresh, true when the period has
-- ended or none began, so the next use starts one (start_period). Notices
-- decided but not yet published survive into the new period.
local function period_of(st, period, align, now)
  local e = tonumber(st[3])
  if st[2] and e and (e == 0 or now < e) then
    return st[1] or '0', tonumber(st[2]), e, st[4] or '', st[5] or '', false
  end
  local s, ne = period_bounds(period, align, now)
  return '0', s, ne, '', st[5] or '', true
end

-- start_period writes a new period of grant hash key, used from its
-- start. Ended state expires an hour after its end, so idle users cost
-- nothing.
local function start_period(key, used, s, e)
  redis.call('HSET', key, 'u', used, 's', s, 'e', e, 'n', '')
  if e > 0 then
    redis.call('PEXPIREAT', key, e + 3600000)
  else
    redis.call('PERSIST', key)
  end
end

-- record_use writes used, the grant's new total, starting the period
-- first when it is fresh.
local function record_use(key, used, s, e, fresh)
  if fresh then
    start_period(key, used, s, e)
  else
    redis.call('HSET', key, 'u', used)
  end
end

-- limit_of returns the uid's override of metric, or the default, as the
-- string Redis holds (returning a Lua number would truncate it).
local function limit_of(overrides, metric, default)
  local o = redis.call('HGET', overrides, metric)
  if o then return o end
  return default
end

-- cross marks each threshold (a percentage of limit) that used has
-- reached and that was not notified this period. notified is a string of
-- '0'/'1', one per threshold. It returns the new string and the notices
-- to publish, each "percent|start|end|limit|used".
local function cross(used_s, limit_s, thresholds, notified, s, e)
  local used, limit = tonumber(used_s), tonumber(limit_s)
  local n, added = {}, {}
  for i = 1, #thresholds do
    local was = string.sub(notified, i, i) == '1'
    n[i] = was and '1' or '0'
    if not was and used >= limit * tonumber(thresholds[i]) / 100 then
      n[i] = '1'
      added[#added + 1] = table.concat({thresholds[i], s, e, limit_s, used_s}, '|')
    end
  end
  return table.concat(n), added
end

-- record_notices appends new notices to the pending list q of key.
local function record_notices(key, q, added)
  if #added == 0 then return q end
  if q ~= '' then q = q .. ';' end
  q = q .. table.concat(added, ';')
  redis.call('HSET', key, 'q', q)
  return q
end
