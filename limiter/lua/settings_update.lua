-- Changes some of a tenant's settings in one step, so that concurrent changes of different
-- settings never undo each other (a read in Python and a write back would).
-- KEYS[1] = tenants hash; ARGV[1] = tenant; ARGV[2] = JSON object of changes, where null
-- removes the setting.  Returns the settings as stored, as JSON.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local settings = {}
if raw then
  settings = cjson.decode(raw)
end
for name, value in pairs(cjson.decode(ARGV[2])) do
  if value == cjson.null then
    settings[name] = nil
  else
    settings[name] = value
  end
end
-- an empty Lua table encodes as {} (an object), as the readers expect
local stored = cjson.encode(settings)
redis.call('HSET', KEYS[1], ARGV[1], stored)
return stored
