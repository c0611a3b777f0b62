-- Replaces a namespace's epoch after a lost invalidation or a restarted master (see
-- redis.rs), carrying the registry's mark — the longest reader wait, or this
-- process's own when longer — into the new epoch (see ../renew.lua), and dropping the
-- old epoch's registrations. KEYS[1]: the head. ARGV[1]: the fresh epoch. ARGV[2]:
-- this process's wait in ms.
local H = KEYS[1]
local E = redis.call('HGET', H, 'e')
local mark = 0
if E and redis.call('HGET', H, '@') == E then mark = tonumber(redis.call('HGET', H, 'w') or '0') end
if tonumber(ARGV[2]) > mark then mark = tonumber(ARGV[2]) end
for _, f in ipairs(redis.call('HKEYS', H)) do
  if string.sub(f, 1, 2) == 'r:' then redis.call('HDEL', H, f) end
end
redis.call('HSET', H, 'e', ARGV[1])
if mark > 0 then redis.call('HSET', H, '@', ARGV[1], 'w', mark) end
return 1
