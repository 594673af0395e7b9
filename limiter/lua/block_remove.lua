-- Removes a block record and its enforcement key if that key is this block's, and moves
-- the tenant's block version.
-- KEYS[1] = block records hash, KEYS[2] = enforcement key, KEYS[3] = block version
-- ARGV[1] = block id
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if KEYS[3] then
  redis.call('INCR', KEYS[3])
end
return removed
