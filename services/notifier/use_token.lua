-- use_token.lua uses up a confirmation token and, the first time only,
-- records its address as the uid's confirmed one: checking and using are
-- one step, so a token verified twice at once is valid once.
--
-- KEYS[1] the token's used mark ({uid}:tok:<nonce>)
-- KEYS[2] the uid's confirmed address ({uid}:addr)
-- ARGV[1] how long to keep the used mark, ms (the token's remaining life and an hour)
-- ARGV[2] the token's email address
--
-- returns 1 when this call used the token, 0 when it was used already
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
