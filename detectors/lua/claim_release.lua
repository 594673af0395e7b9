-- Release a subject's action claim only if it is still the caller's: it may have expired
-- and been taken by another action meanwhile.
-- KEYS[1] the claim key; ARGV[1] the caller's token.  Returns 1 if released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
