-- Fixed window aligned to the epoch. State (string "window:count", with a TTL).
-- Mirrors limiter.algorithms.fixed_window; all values are integers.  `defer`: as in
-- sliding_window.lua.
local function fixed_window(key, now, limit, window, cost, defer)
  local cur = math.floor(now / window)
  local reset = window - (now - cur * window)
  local count = 0
  local current = false  -- the stored state is of this window: its expiry stands
  local state = redis.call('GET', key)
  if state then
    local w, c = string.match(state, '^(%d+):(%d+)$')
    if tonumber(w) == cur then
      count = tonumber(c)
      current = true
    end
  end
  if cost > limit then
    return {0, math.max(0, limit - count), reset, -1, 3}
  end
  if count + cost <= limit then
    if cost > 0 then
      count = count + cost
      -- expires when the window ends, whichever write of the window sets it
      local value, px = string.format('%d:%d', cur, count), not current and int(reset + 1)
      if defer then
        return {1, limit - count, reset, -1, 0, value, px}
      end
      put(key, value, px)
    end
    return {1, limit - count, reset, -1, 0}
  end
  return {0, math.max(0, limit - count), reset, reset, 1}
end
