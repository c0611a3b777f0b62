-- Fills one row if its lease still holds the token (rule 3 of backend.rs). KEYS[1]:
-- the row. ARGV: token, ttl ms, the entry. Returns 1 when filled.
local now = now_ms()
if live(redis.call('HGET', KEYS[1], 'l'), now) ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'r', (now + ttl) .. '|' .. ARGV[3])
redis.call('HDEL', KEYS[1], 'l')
extend(KEYS[1], ttl)
return 1
