-- confirm.lua removes published notices from a grant's pending list.
--
-- KEYS[1] the uid's grant hash
-- ARGV[1..] notices exactly as apply.lua or authorize.lua returned them
--
-- returns the number of notices still pending

local q = redis.call('HGET', KEYS[1], 'q')
if not q or q == '' then return 0 end
local done = {}
for i = 1, #ARGV do done[ARGV[i]] = true end
local keep = {}
for entry in string.gmatch(q, '[^;]+') do
  if not done[entry] then keep[#keep + 1] = entry end
end
if #keep == 0 then
  redis.call('HDEL', KEYS[1], 'q')
else
  redis.call('HSET', KEYS[1], 'q', table.concat(keep, ';'))
end
return #keep
