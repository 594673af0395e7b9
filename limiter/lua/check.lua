-- Decides a batch of checks in one round trip, atomically.
-- ARGV[1] = now in ms, or "0" to use the server's clock; ARGV[2] = number of checks;
-- ARGV[3] = "1" to append the decisions to the event stream KEYS[1] (embedded mode), else "0";
-- ARGV[4] = the call's deadline in epoch ms of the server's clock, or "0" for none: a call
-- that starts later was given up on by its client (answered by the failure policy), so it
-- changes nothing and replies the error PASTDEADLINE (limiter.deadline).
-- Then per check: algorithm code (s|t|f), limit, window_ms, cost, number of block keys, and
-- when streaming, the check's stream.events.EntryCheck, encoded.
-- KEYS, per check: the counter key, then its block keys.
-- Returns five integers per check: allowed, remaining, reset_ms, retry_ms (-1: none), reason.
-- A policy's check of several windows has its algorithm code in upper case (S|T|F); after
-- its fields come n, the number of its further windows, and n pairs limit, window_ms; its
-- KEYS are the counters of all its windows, then its block keys.  Its windows are decided
-- together: if any denies, none is used.  It returns a sixth integer, the index (from 0) of
-- the window its five describe (limiter.algorithms.deciding_window picks the same), and its
-- stream entry the limit and the window (s) of that window.
local now = tonumber(ARGV[1])
local deadline = tonumber(ARGV[4])
if now == 0 or deadline > 0 then
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if deadline > 0 and clock > deadline then
    -- before any write: the counters and the stream stay as they are
    return redis.error_reply('PASTDEADLINE the call reached Redis ' .. int(clock - deadline)
      .. ' ms past its deadline')
  end
  if now == 0 then
    now = clock
  end
end
local streaming = ARGV[3] == '1'
local step = streaming and 6 or 5
local algorithms = {s = sliding_window, t = token_bucket, f = fixed_window,
  S = sliding_window, T = token_bucket, F = fixed_window}
local multi = {S = true, T = true, F = true}
-- the labels of limiter.algorithms.Reason, so that stream entries describe themselves
local reasons = {[0] = '"ok"', [1] = '"limit"', [2] = '"blocked"', [3] = '"cost_exceeds_limit"'}
local out = {}
local events = {}
local checks = tonumber(ARGV[2])
local first = streaming and 2 or 1

-- Blocks are rare: one EXISTS over every block key of the batch spares a PTTL per check.
local any_blocked = false
local block_keys = {}
local k, a = first, 5
for _ = 1, checks do
  local nblocks = tonumber(ARGV[a + 4])
  local n = multi[ARGV[a]] and tonumber(ARGV[a + step]) or 0
  for j = 1, nblocks do
    block_keys[#block_keys + 1] = KEYS[k + n + j]
  end
  k = k + 1 + n + nblocks
  a = a + step + (n > 0 and 1 + 2 * n or 0)
end
for i = 1, #block_keys, 4000 do  -- unpack() is bounded by Lua's stack
  local last = math.min(i + 3999, #block_keys)
  if redis.call('EXISTS', unpack(block_keys, i, last)) > 0 then
    any_blocked = true
    break
  end
end

k, a = first, 5
for c = 1, checks do
  local limit, window, cost = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local nblocks = tonumber(ARGV[a + 4])
  local n = multi[ARGV[a]] and tonumber(ARGV[a + step]) or 0
  local chosen = 0
  local blocked = -2
  if any_blocked then
    for j = 1, nblocks do
      local ttl = redis.call('PTTL', KEYS[k + n + j])
      if ttl == -1 or (ttl > blocked and blocked ~= -1) then
        blocked = ttl
      end
    end
  end
  local r
  if blocked ~= -2 then
    r = {0, 0, math.max(blocked, 0), blocked, 2}
  elseif n == 0 then
    r = algorithms[ARGV[a]](KEYS[k], now, limit, window, cost)
  else
    -- every window decided with its write deferred; written only if none denies
    local decide = algorithms[ARGV[a]]
    local rs = {}
    rs[1] = decide(KEYS[k], now, limit, window, cost, true)
    for j = 1, n do
      local p = a + step + 2 * j - 1
      rs[j + 1] = decide(KEYS[k + j], now, tonumber(ARGV[p]), tonumber(ARGV[p + 1]), cost, true)
    end
    local best, denied = 1, rs[1][1] == 0
    for j = 2, n + 1 do
      local o, b = rs[j], rs[best]
      if o[1] == 0 then
        if not denied then
          best, denied = j, true
        elseif b[4] ~= -1 and (o[4] == -1 or o[4] > b[4]) then
          best = j
        end
      elseif not denied and o[2] < b[2] then
        best = j
      end
    end
    if not denied then
      for j = 1, n + 1 do
        local w = rs[j]
        if w[6] then
          put(KEYS[k + j - 1], w[6], w[7])
        end
      end
    end
    r = rs[best]
    chosen = best - 1
  end
  for i = 1, 5 do
    out[#out + 1] = r[i]
  end
  if n > 0 then
    out[#out + 1] = chosen
  end
  if streaming then
    -- a stream.events.EntryDecision: the check, then the result in the order returned
    local decided = ''
    if n > 0 then
      local dl, dw = limit, window
      if chosen > 0 then
        local p = a + step + 2 * chosen - 1
        dl, dw = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
      end
      decided = ',' .. int(dl) .. ',' .. int(dw / 1000)
    end
    events[c] = '[' .. ARGV[a + 5] .. ',' .. (r[1] == 1 and 'true' or 'false') .. ','
      .. int(r[2]) .. ',' .. int(r[3]) .. ',' .. int(r[4]) .. ',' .. reasons[r[5]] .. decided
      .. ']'
  end
  k = k + 1 + n + nblocks
  a = a + step + (n > 0 and 1 + 2 * n or 0)
end
if streaming then
  -- one entry per batch (stream.events.ENTRY_TS, ENTRY_DECISIONS): the decision and its
  -- event are one atomic write
  redis.call('XADD', KEYS[1], '*', 'ts', int(now), 'd', '[' .. table.concat(events, ',') .. ']')
end
return out
