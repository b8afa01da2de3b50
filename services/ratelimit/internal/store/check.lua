-- check.lua decides one call: see check_one.lua, which is prepended, for
-- the keys, arguments and reply. A Redis Cluster runs it once per call
-- (the calls of a batch live in many slots); a single node runs
-- check_many.lua instead.
return check_one(KEYS, ARGV)
