-- Token bucket of `limit` tokens refilled at `limit` per window. State (hash):
-- a = level in tokens x window_ms, b = last refill time (ms).
-- Mirrors limiter.algorithms.token_bucket; all values are integers.
local function token_bucket(key, now, limit, window, cost)
  local capacity = limit * window
  local state = redis.call('HMGET', key, 'a', 'b')
  local level, last = tonumber(state[1]), tonumber(state[2])
  if level == nil then
    level, last = capacity, now
  else
    if now > last then
      level = level + (now - last) * limit
      last = now
    end
    level = math.min(capacity, level)
  end
  local reset = ceil_div(capacity - level, limit)
  if cost > limit then
    return {0, math.floor(level / window), reset, -1, 3}
  end
  local need = cost * window
  if level >= need then
    if cost > 0 then
      level = level - need
      reset = ceil_div(capacity - level, limit)
      redis.call('HSET', key, 'a', int(level), 'b', int(last))
      redis.call('PEXPIRE', key, int(window + 1))
    end
    return {1, math.floor(level / window), reset, -1, 0}
  end
  return {0, math.floor(level / window), reset, ceil_div(need - level, limit), 1}
end
