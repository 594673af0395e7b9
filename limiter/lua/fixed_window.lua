-- Fixed window aligned to the epoch. State (hash): a = window index, b = count.
-- Mirrors limiter.algorithms.fixed_window; all values are integers.
local function fixed_window(key, now, limit, window, cost)
  local cur = math.floor(now / window)
  local reset = window - (now - cur * window)
  local state = redis.call('HMGET', key, 'a', 'b')
  local count = 0
  if tonumber(state[1]) == cur then
    count = tonumber(state[2])
  end
  if cost > limit then
    return {0, math.max(0, limit - count), reset, -1, 3}
  end
  if count + cost <= limit then
    if cost > 0 then
      count = count + cost
      redis.call('HSET', key, 'a', int(cur), 'b', int(count))
      redis.call('PEXPIRE', key, int(reset + 1))
    end
    return {1, limit - count, reset, -1, 0}
  end
  return {0, math.max(0, limit - count), reset, reset, 1}
end
