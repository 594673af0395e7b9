-- Changes a webhook's record in one step, so that concurrent changes of different fields
-- never undo each other (a read in Python and a write back would), and a rotation always
-- keeps the secret that was current when it ran.
-- KEYS[1] = the tenant's webhooks hash; ARGV[1] = webhook id; ARGV[2] = JSON object of the
-- fields to set; ARGV[3] = the new secret, or '' to keep the secret; ARGV[4] = until when
-- (epoch seconds) the replaced secret still signs.
-- Returns {record before, record after} as JSON, or false if there is no such webhook.
local before = redis.call('HGET', KEYS[1], ARGV[1])
if not before then
  return false
end
local hook = cjson.decode(before)
for name, value in pairs(cjson.decode(ARGV[2])) do
  hook[name] = value
end
if ARGV[3] ~= '' then
  hook['previous_secret'] = hook['secret']
  hook['previous_secret_expires_at'] = tonumber(ARGV[4])
  hook['secret'] = ARGV[3]
end
local after = cjson.encode(hook)
redis.call('HSET', KEYS[1], ARGV[1], after)
return {before, after}
