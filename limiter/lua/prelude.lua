-- Shared helpers. `int` formats a number as an integer string: Lua 5.1's tostring keeps only
-- 14 significant digits, which would corrupt large scaled counters.
local function int(x)
  return string.format('%d', x)
end

local function ceil_div(a, b)
  return math.floor((a + b - 1) / b)
end
