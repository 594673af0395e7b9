-- Decides a batch of checks in one round trip, atomically.
-- ARGV[1] = now in ms, or "0" to use the server's clock; ARGV[2] = number of checks; then
-- per check: algorithm code (s|t|f), limit, window_ms, cost, number of block keys.
-- KEYS, per check: the counter key, then its block keys.
-- Returns five integers per check: allowed, remaining, reset_ms, retry_ms (-1: none), reason.
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local algorithms = {s = sliding_window, t = token_bucket, f = fixed_window}
local out = {}
local k, a = 1, 3
for _ = 1, tonumber(ARGV[2]) do
  local limit, window, cost = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local nblocks = tonumber(ARGV[a + 4])
  local blocked = -2
  for j = 1, nblocks do
    local ttl = redis.call('PTTL', KEYS[k + j])
    if ttl == -1 or (ttl > blocked and blocked ~= -1) then
      blocked = ttl
    end
  end
  local r
  if blocked ~= -2 then
    r = {0, 0, math.max(blocked, 0), blocked, 2}
  else
    r = algorithms[ARGV[a]](KEYS[k], now, limit, window, cost)
  end
  for i = 1, 5 do
    out[#out + 1] = r[i]
  end
  k = k + 1 + nblocks
  a = a + 5
end
return out
