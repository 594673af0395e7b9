-- Shared helpers. `int` formats a number as an integer string: Lua 5.1's tostring keeps only
-- 14 significant digits, which would corrupt large scaled counters.
local function int(x)
  return string.format('%d', x)
end

local function ceil_div(a, b)
  return math.floor((a + b - 1) / b)
end

-- Writes a counter's state; `px` is its time to live in ms, or false to keep the key's.
-- Sliding and fixed windows pass false for a state of the window the stored one belongs to:
-- every write of a window sets the same expiry instant (the window's end, plus one window
-- for a sliding one), which the window's first write set already; SET ... KEEPTTL costs
-- about half as much as SET ... PX, which also updates the key's expiry.
local function put(key, value, px)
  if px then
    redis.call('SET', key, value, 'PX', px)
  else
    redis.call('SET', key, value, 'KEEPTTL')
  end
end
