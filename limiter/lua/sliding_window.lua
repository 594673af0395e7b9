-- Weighted two-window counter. State (string "window:count:previous", with a TTL).
-- Mirrors limiter.algorithms.sliding_window; all values are integers.  With `defer`, an
-- allowed use is not written: its value and time to live (`put`) come back as the 6th and 7th
-- values.
local function sliding_window(key, now, limit, window, cost, defer)
  local cur = math.floor(now / window)
  local elapsed = now - cur * window
  local count, previous = 0, 0
  local current = false  -- the stored state is of this window: its expiry stands
  local state = redis.call('GET', key)
  if state then
    local w, c, p = string.match(state, '^(%d+):(%d+):(%d+)$')
    w = tonumber(w)
    if w == cur then
      count, previous = tonumber(c), tonumber(p)
      current = true
    elseif w == cur - 1 then
      previous = tonumber(c)
    end
  end
  local used = count * window + previous * (window - elapsed)
  local capacity = limit * window
  local reset = window - elapsed
  local remaining = math.max(0, math.floor((capacity - used) / window))
  if cost > limit then
    return {0, remaining, reset, -1, 3}
  end
  if used + cost * window <= capacity then
    if cost > 0 then
      count = count + cost
      used = used + cost * window
      -- expires one window after this one ends, whichever write of the window sets it
      local value = string.format('%d:%d:%d', cur, count, previous)
      local px = not current and int(window + reset + 1)
      if defer then
        return {1, math.floor((capacity - used) / window), reset, -1, 0, value, px}
      end
      put(key, value, px)
    end
    return {1, math.floor((capacity - used) / window), reset, -1, 0}
  end
  local retry
  if count + cost <= limit then
    retry = reset - math.floor((limit - count - cost) * window / previous)
  else
    retry = reset + math.max(0, window - math.floor((limit - cost) * window / count))
  end
  return {0, remaining, reset, retry, 1}
end
