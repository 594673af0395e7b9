-- Token bucket of `limit` tokens refilled at `limit` per window. State (string
-- "level:last", with a TTL): the level in tokens x window_ms and the last refill time (ms).
-- Mirrors limiter.algorithms.token_bucket; all values are integers.  `defer`: as in
-- sliding_window.lua.
local function token_bucket(key, now, limit, window, cost, defer)
  local capacity = limit * window
  local level, last = capacity, now
  local state = redis.call('GET', key)
  if state then
    local l, t = string.match(state, '^(%d+):(%d+)$')
    level, last = tonumber(l), tonumber(t)
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
      -- the bucket is full again within a window of `last`: its expiry moves with it
      local value = string.format('%d:%d', level, last)
      if defer then
        return {1, math.floor(level / window), reset, -1, 0, value, int(window + 1)}
      end
      put(key, value, int(window + 1))
    end
    return {1, math.floor(level / window), reset, -1, 0}
  end
  return {0, math.floor(level / window), reset, ceil_div(need - level, limit), 1}
end
