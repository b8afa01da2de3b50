-- register.lua: register or renew one instance, refusing an id held by
-- another live service name, and tell whether anything changed.
--
-- KEYS[1]  the instance's entry STRING (ciphertext, PX ttl)
-- KEYS[2]  the expiry ZSET, <name>:<id> -> expiry ms
-- KEYS[3]  the ids HASH, id -> name
-- KEYS[4]  the last HASH, <name>:<id> -> current ciphertext
-- KEYS[5]  the created HASH, <name>:<id> -> first registration ms
-- KEYS[6]  the seq HASH, name -> sequence of its last change
-- ARGV[1]  name
-- ARGV[2]  id
-- ARGV[3]  the ciphertext (deterministic: the same instance seals alike)
-- ARGV[4]  ttl in ms
-- ARGV[5]  now in ms; 0 uses Redis TIME
--
-- Returns {status, detail, created, seq}: status 1 appeared, 2 changed, 0
-- renewed (a heartbeat, nothing changed), with detail the expiry in ms,
-- created when the instance first registered (ms) and seq the name's
-- sequence after this change (bumped unless renewed); or {-1, name} when
-- the id is held by another name whose registration is still live, with
-- detail that name. An id whose other name has expired (reaped or not)
-- is taken over; the reaper still reports the old one's expiry.

local now = tonumber(ARGV[5])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local name, id, ct, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local member = name .. ':' .. id

local owner = redis.call('HGET', KEYS[3], id)
if owner and owner ~= name then
  local score = redis.call('ZSCORE', KEYS[2], owner .. ':' .. id)
  if score and tonumber(score) > now then
    return {-1, owner}
  end
end

local prev = redis.call('HGET', KEYS[4], member)
local status = 0
if not prev then
  status = 1
elseif prev ~= ct then
  status = 2
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  -- Deregistered or lapsed and not yet reaped: finds stopped listing it,
  -- so coming back is an appearance, not a heartbeat.
  status = 1
end

local expiry = now + ttl
redis.call('SET', KEYS[1], ct, 'PX', ttl)
redis.call('ZADD', KEYS[2], expiry, member)
if owner ~= name then
  redis.call('HSET', KEYS[3], id, name)
end
if status ~= 0 then
  redis.call('HSET', KEYS[4], member, ct)
end
if status == 1 and not prev then
  redis.call('HSET', KEYS[5], member, now)
else
  redis.call('HSETNX', KEYS[5], member, now) -- one registered before created was kept
end
local seq = 0
if status ~= 0 then
  seq = redis.call('HINCRBY', KEYS[6], name, 1)
else
  seq = tonumber(redis.call('HGET', KEYS[6], name) or '0')
end
return {status, expiry, tonumber(redis.call('HGET', KEYS[5], member)), seq}
