-- adjust_key.lua: add an override (deny) or addition (allow) to an API
-- key, replacing the one of the same kind and pattern, and remove the
-- key's adjustments that have expired by now.
--
-- KEYS[1]  the key's record HASH
-- KEYS[2]  the key's adjustments HASH: field -> JSON with expires_ms
-- ARGV[1]  now, ms: adjustments expiring at or before it are removed
-- ARGV[2]  the adjustment's field, "allow:<pattern>" or "deny:<pattern>"
-- ARGV[3]  the adjustment, JSON
--
-- returns 1 added, 0 no such key (nothing is written)

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local now = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  -- An entry that does not decode is left alone: reading the key then
  -- fails, which refuses the key rather than dropping an override.
  local ok, a = pcall(cjson.decode, all[i + 1])
  if ok and type(a) == 'table' then
    local exp = tonumber(a['expires_ms'])
    if exp and exp <= now then
      redis.call('HDEL', KEYS[2], all[i])
    end
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
