-- Fills a user scope's copy of one row if its lease still holds the token (rule 6 of
-- backend.rs). KEYS[1]: the row. ARGV: token, ttl ms, the scope's field, the copy.
-- Returns 1 when filled.
local now = now_ms()
local field = ARGV[3]
if live(redis.call('HGET', KEYS[1], 'l,' .. field), now) ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], field, (now + ttl) .. '|' .. ARGV[4])
redis.call('HDEL', KEYS[1], 'l,' .. field)
extend(KEYS[1], ttl)
return 1
