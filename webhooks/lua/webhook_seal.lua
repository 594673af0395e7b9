-- Replaces a webhook's record by the same record with its secrets sealed, unless it was
-- changed (rotated, updated, deleted) since it was read: the change stands, and the record
-- is sealed the next time it is read.
-- KEYS[1] = the tenant's webhooks hash; ARGV[1] = webhook id; ARGV[2] = the record as read;
-- ARGV[3] = the sealed record.  Returns 1 if it was replaced, 0 if not.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
