-- expired.lua: the instances whose registration has run out, for the
-- reaper to decide on.
--
-- KEYS[1]  the expiry ZSET, <name>:<id> -> expiry ms
-- KEYS[2]  the last HASH, <name>:<id> -> last ciphertext
-- KEYS[3]  the created HASH, <name>:<id> -> first registration ms
-- ARGV[1]  now in ms; 0 uses Redis TIME
-- ARGV[2]  the most members to return
--
-- Returns {now, member1, expiry1, ciphertext1 or false, created1 or
-- false, ...}, oldest first, for members with expiry <= now.

local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {now}
for i = 1, #dead, 2 do
  out[#out + 1] = dead[i]
  out[#out + 1] = dead[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], dead[i])
  out[#out + 1] = redis.call('HGET', KEYS[3], dead[i])
end
return out
