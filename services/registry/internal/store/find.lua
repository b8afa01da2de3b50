-- find.lua: the live instances, with their ciphertexts, in one read.
--
-- KEYS[1]  the expiry ZSET, <name>:<id> -> expiry ms
-- KEYS[2]  the last HASH, <name>:<id> -> current ciphertext
-- KEYS[3]  the created HASH, <name>:<id> -> first registration ms
-- KEYS[4]  the seq HASH, name -> sequence of its last change
-- ARGV[1]  now in ms; 0 uses Redis TIME
--
-- Returns {now, seqs, member1, expiry1, ciphertext1, created1 or false,
-- member2, ...} for every member expiring after now; a member without a
-- ciphertext is left out. seqs is the seq HASH as {name1, seq1, ...},
-- read with the entries, so a find is the state at those sequences.

local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local out = {now, redis.call('HGETALL', KEYS[4])}
if #live == 0 then
  return out
end
local members = {}
for i = 1, #live, 2 do
  members[#members + 1] = live[i]
end
local cts = redis.call('HMGET', KEYS[2], unpack(members))
local created = redis.call('HMGET', KEYS[3], unpack(members))
for i, m in ipairs(members) do
  if cts[i] then
    out[#out + 1] = m
    out[#out + 1] = live[2 * i]
    out[#out + 1] = cts[i]
    out[#out + 1] = created[i]
  end
end
return out
