-- reap.lua: remove expired instances, each only if it is really gone.
--
-- KEYS[1]  the expiry ZSET, <name>:<id> -> expiry ms
-- KEYS[2]  the last HASH, <name>:<id> -> last ciphertext
-- KEYS[3]  the ids HASH, id -> name
-- KEYS[4]  the created HASH, <name>:<id> -> first registration ms
-- KEYS[5]  the seq HASH, name -> sequence of its last change
-- KEYS[6..] the entry STRING of each member, in ARGV's order
-- ARGV[1]  now in ms; 0 uses Redis TIME
-- ARGV[2..] the members <name>:<id> to reap
--
-- A member is reaped when its entry key is gone and its expiry score is
-- still <= now (a heartbeat between the reaper's read and this script
-- renews both, and then the member stays). Reaping removes it from the
-- expiry ZSET, the last and created HASHes, and its id from the ids HASH unless the
-- id has passed to another name since.
--
-- Returns {member1, seq1, ...} for the members reaped, seq the name's
-- sequence after that member's removal.

local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local reaped = {}
for i = 2, #ARGV do
  local member = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and tonumber(score) <= now and redis.call('EXISTS', KEYS[i + 4]) == 0 then
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
    redis.call('HDEL', KEYS[4], member)
    local sep = string.find(member, ':', 1, true)
    local name, id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    if redis.call('HGET', KEYS[3], id) == name then
      redis.call('HDEL', KEYS[3], id)
    end
    reaped[#reaped + 1] = member
    reaped[#reaped + 1] = redis.call('HINCRBY', KEYS[5], name, 1)
  end
end
return reaped
