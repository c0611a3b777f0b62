-- Fills the rows of one slot whose lease still holds the token (rule 3 of
-- backend.rs). KEYS: entry, lease, entry, lease, ... ARGV: token, ttl ms, then one
-- value per row. Returns how many were filled.
local filled = 0
for i = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[i + 1]) == ARGV[1] then
    redis.call('SET', KEYS[i], ARGV[2 + (i + 1) / 2], 'PX', ARGV[2])
    redis.call('DEL', KEYS[i + 1])
    filled = filled + 1
  end
end
return filled
