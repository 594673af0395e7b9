-- Appends decisions the failure policy answered (kept in a limiter's disk spool while Redis
-- was unreachable) to the decision stream, exactly once.
-- KEYS[1] = the decision stream; KEYS[2] = the high-water mark of one spool run (the
-- sequence number of the last record appended; absent: none yet).
-- ARGV[1] = the mark's time to live in seconds; then per record, in increasing sequence:
-- its sequence number, the decision time (epoch ms) and the entry's `d` (a JSON array of
-- stream.events.EntryDecision), the same fields the check script writes.
-- A record at or below the mark was appended by an earlier call whose acknowledgement the
-- limiter never saw (a crash or a lost reply): it is skipped.  The entries and the mark are
-- one atomic write.
-- Returns {records appended, the mark before the call, the mark after it}.
local mark = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = mark
local added = 0
for i = 2, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', KEYS[1], '*', 'ts', ARGV[i + 1], 'd', ARGV[i + 2])
    last = seq
    added = added + 1
  end
end
if last > mark then
  redis.call('SET', KEYS[2], last, 'EX', tonumber(ARGV[1]))
end
return {added, mark, last}
