-- Schedules a delivery's next attempt.  Only a delivery still queued is rescheduled: one
-- dropped meanwhile (its webhook deleted) stays dropped.
-- KEYS[1] = due (sorted set), KEYS[2] = pending (hash); ARGV[1] = delivery id, ARGV[2] = its
-- record, ARGV[3] = when the next attempt is due (epoch seconds).
-- Returns 1 if it was rescheduled, 0 if it was no longer queued.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
