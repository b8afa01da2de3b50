-- check_many.lua decides a whole batch of calls in one script call, on a
-- single Redis node (on a Cluster the calls of a batch live in many
-- slots, and check.lua runs once per call instead). check_one.lua is
-- prepended. The calls are decided in order, each as check.lua decides
-- it, so calls of the same (uid, service) see the ones before them; all
-- on one clock, read once. A call that fails (a key of the wrong type) is
-- reported and the others go on; it fails before its first write, so
-- nothing of it is kept.
--
-- KEYS     three per call, in order: as check.lua's KEYS
-- ARGV[1]  now in ms; 0 uses Redis TIME
-- ARGV[2..] six per call, in order: check.lua's ARGV[2..7] (interval,
--          mode, cost, grants field, configured limit, default grant)
--
-- Returns one reply per call: check.lua's, or {-1, error} for a call that
-- failed.

local now = now_ms(ARGV[1])
local out = {}
for i = 1, #KEYS / 3 do
  local ok, res = pcall(check_one, KEYS, ARGV, now, 3 * (i - 1), 6 * (i - 1))
  if ok then
    out[i] = res
  else
    out[i] = {-1, type(res) == 'table' and res.err or tostring(res)}
  end
end
return out
