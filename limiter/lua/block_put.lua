-- Stores a block record and, when enforced, its enforcement key, which the check script
-- honours. An existing enforcement key that outlives the new block is kept. The tenant's
-- block version moves, so that the limiter's local copy of blocks rereads them.
-- KEYS[1] = block records hash, KEYS[2] = enforcement key, KEYS[3] = block version
-- ARGV[1] = block id, ARGV[2] = record JSON, ARGV[3] = ttl ms, ARGV[4] = "1" to enforce
-- Returns the tenant's block version after the write (0 without KEYS[3]).
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '1' then
  local current = redis.call('PTTL', KEYS[2])
  if current ~= -1 and current < tonumber(ARGV[3]) then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  end
end
if KEYS[3] then
  return redis.call('INCR', KEYS[3])
end
return 0
