-- Decides a batch of checks in one round trip, atomically.
-- ARGV[1] = now in ms, or "0" to use the server's clock; ARGV[2] = number of checks;
-- ARGV[3] = "1" to append the decisions to the event stream KEYS[1] (embedded mode), else "0";
-- ARGV[4] = the call's deadline in epoch ms of the server's clock, or "0" for none: a call
-- that starts later was given up on by its client (answered by the failure policy), so it
-- changes nothing and replies the error PASTDEADLINE (limiter.deadline).
-- ARGV[5] = the number of shapes, then each shape: algorithm code (s|t|f), limit, window_ms,
-- cost, number of block keys, n (the number of a policy's further windows, 0 for a check of
-- one window) and n pairs limit, window_ms.  A batch's checks mostly share a few shapes:
-- each is sent and read once.
-- Then per check: its shape's index (from 1), and when streaming, the check's
-- stream.events.EntryCheck, encoded.
-- KEYS, per check: the counter key of each of its windows, then its block keys.
-- Returns five integers per check: allowed, remaining, reset_ms, retry_ms (-1: none), reason.
-- A policy's check of several windows (n > 0) is decided on all of them together: if any
-- denies, none is used.  It returns a sixth integer, the index (from 0) of the window its
-- five describe (limiter.algorithms.deciding_window picks the same), and its stream entry
-- the limit and the window (s) of that window.
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
local per_check = streaming and 2 or 1
local algorithms = {s = sliding_window, t = token_bucket, f = fixed_window}
-- the labels of limiter.algorithms.Reason, so that stream entries describe themselves
local reasons = {[0] = '"ok"', [1] = '"limit"', [2] = '"blocked"', [3] = '"cost_exceeds_limit"'}
local out, o = {}, 0
local events = {}
local checks = tonumber(ARGV[2])
local first = streaming and 2 or 1

-- shape: {decide, limit, window, cost, block keys, n, {{limit, window} of each further one}}
local shapes = {}
local a = 6
for i = 1, tonumber(ARGV[5]) do
  local n = tonumber(ARGV[a + 5])
  local further = {}
  for j = 1, n do
    further[j] = {tonumber(ARGV[a + 4 + 2 * j]), tonumber(ARGV[a + 5 + 2 * j])}
  end
  shapes[i] = {algorithms[ARGV[a]], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
    tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), n, further}
  a = a + 6 + 2 * n
end
local checks_at = a

-- Blocks are rare: one EXISTS over every block key of the batch spares a PTTL per check.
local any_blocked = false
local block_keys, b = {}, 0
local k = first
for _ = 1, checks do
  local shape = shapes[tonumber(ARGV[a])]
  local n, nblocks = shape[6], shape[5]
  for j = k + n + 1, k + n + nblocks do
    b = b + 1
    block_keys[b] = KEYS[j]
  end
  k = k + 1 + n + nblocks
  a = a + per_check
end
for i = 1, b, 4000 do  -- unpack() is bounded by Lua's stack
  if redis.call('EXISTS', unpack(block_keys, i, math.min(i + 3999, b))) > 0 then
    any_blocked = true
    break
  end
end

k, a = first, checks_at
for c = 1, checks do
  local shape = shapes[tonumber(ARGV[a])]
  local decide, limit, window, cost = shape[1], shape[2], shape[3], shape[4]
  local nblocks, n = shape[5], shape[6]
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
    r = decide(KEYS[k], now, limit, window, cost)
  else
    -- every window decided with its write deferred; written only if none denies
    local further = shape[7]
    local rs = {}
    rs[1] = decide(KEYS[k], now, limit, window, cost, true)
    for j = 1, n do
      rs[j + 1] = decide(KEYS[k + j], now, further[j][1], further[j][2], cost, true)
    end
    local best, denied = 1, rs[1][1] == 0
    for j = 2, n + 1 do
      local w, d = rs[j], rs[best]
      if w[1] == 0 then
        if not denied then
          best, denied = j, true
        elseif d[4] ~= -1 and (w[4] == -1 or w[4] > d[4]) then
          best = j
        end
      elseif not denied and w[2] < d[2] then
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
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = r[1], r[2], r[3], r[4], r[5]
  o = o + 5
  if n > 0 then
    o = o + 1
    out[o] = chosen
  end
  if streaming then
    -- a stream.events.EntryDecision: the check, then the result in the order returned
    local decided = ''
    if n > 0 then
      local dl, dw = limit, window
      if chosen > 0 then
        dl, dw = shape[7][chosen][1], shape[7][chosen][2]
      end
      decided = ',' .. int(dl) .. ',' .. int(dw / 1000)
    end
    events[c] = '[' .. ARGV[a + 1] .. ',' .. (r[1] == 1 and 'true' or 'false') .. ','
      .. int(r[2]) .. ',' .. int(r[3]) .. ',' .. int(r[4]) .. ',' .. reasons[r[5]] .. decided
      .. ']'
  end
  k = k + 1 + n + nblocks
  a = a + per_check
end
if streaming then
  -- one entry per batch (stream.events.ENTRY_TS, ENTRY_DECISIONS): the decision and its
  -- event are one atomic write
  redis.call('XADD', KEYS[1], '*', 'ts', int(now), 'd', '[' .. table.concat(events, ',') .. ']')
end
return out
