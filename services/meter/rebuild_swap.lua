-- rebuild_swap.lua puts a one-uid rebuild's state, replayed into a
-- scratch key space, in place of the uid's live state, in one step: a
-- rebuild killed before it leaves the live state whole, never half
-- replaced. The keys are the uid's (its hash tag) and, on a single Redis,
-- the dedup SETs every uid shares.
--
-- KEYS[1..D]                 live state keys to delete (grants, counters,
--                            gauges, stream-position records of the uid)
-- KEYS[D+1..D+R]             scratch keys to move ...
-- KEYS[D+R+1..D+2R]          ... onto these live names (RENAME keeps the TTL)
-- KEYS[D+2R+1..D+2R+U]       scratch dedup SETs whose members join ...
-- KEYS[D+2R+U+1..D+2R+2U]    ... these live ones (a new one takes the scratch TTL)
-- ARGV[1] D, ARGV[2] R, ARGV[3] U
--
-- returns D
local D, R, U = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, D do
  redis.call('DEL', KEYS[i])
end
for i = 1, R do
  redis.call('RENAME', KEYS[D + i], KEYS[D + R + i])
end
local base = D + 2 * R
for i = 1, U do
  local src, dst = KEYS[base + i], KEYS[base + U + i]
  local members = redis.call('SMEMBERS', src)
  if #members > 0 then
    local fresh = redis.call('EXISTS', dst) == 0
    for j = 1, #members, 1000 do
      redis.call('SADD', dst, unpack(members, j, math.min(j + 999, #members)))
    end
    local ttl = redis.call('PTTL', src)
    if fresh and ttl > 0 then redis.call('PEXPIRE', dst, ttl) end
  end
end
return D
