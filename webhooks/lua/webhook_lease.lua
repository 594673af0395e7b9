-- Leases due deliveries to a sender: their due time moves to the end of the lease, except
-- for a webhook that already has its cap of attempts in flight, whose deliveries are pushed
-- back a little instead, so one endpoint's backlog never holds up the others'.
-- KEYS[1] = due (sorted set), KEYS[2] = pending (hash); ARGV[1] = now, ARGV[2] = lease
-- until, ARGV[3] = defer until, ARGV[4] = limit, ARGV[5] = how many due ones to scan,
-- ARGV[6] = attempts in flight allowed per webhook, then pairs of (webhook id, attempts in
-- flight).
-- Returns the number deferred, then (id, record) pairs.  A delivery id is
-- "<webhook id>_<event id>", and event ids (UUIDs) have no "_".
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[5])
local limit, cap = tonumber(ARGV[4]), tonumber(ARGV[6])
local busy = {}
for i = 7, #ARGV, 2 do busy[ARGV[i]] = tonumber(ARGV[i + 1]) end
local reply, leased, deferred = {0}, 0, 0
for _, id in ipairs(due) do
  if leased >= limit then break end
  local hook = string.match(id, '^(.*)_') or id
  local n = busy[hook] or 0
  if n < cap then
    busy[hook] = n + 1
    leased = leased + 1
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(reply, id)
    table.insert(reply, redis.call('HGET', KEYS[2], id))
  else
    deferred = deferred + 1
    redis.call('ZADD', KEYS[1], ARGV[3], id)
  end
end
reply[1] = deferred
return reply
