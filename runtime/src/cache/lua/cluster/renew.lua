-- Replaces a namespace's epoch after a lost invalidation (see redis.rs), carrying the
-- registry's mark — the longest reader wait — into the new epoch (see ../renew.lua)
-- and dropping the old epoch's registrations. KEYS[1]: the head. ARGV[1]: the fresh
-- epoch.
local H = KEYS[1]
local E = redis.call('HGET', H, 'e')
local mark = nil
if E and redis.call('HGET', H, '@') == E then mark = redis.call('HGET', H, 'w') end
for _, f in ipairs(redis.call('HKEYS', H)) do
  if string.sub(f, 1, 2) == 'r:' then redis.call('HDEL', H, f) end
end
redis.call('HSET', H, 'e', ARGV[1])
if mark then redis.call('HSET', H, '@', ARGV[1], 'w', mark) end
return 1
