-- Fills a user scope's copies of the rows of one slot whose leases still hold the
-- token (rule 6 of backend.rs). KEYS: the rows' scoped hashes. ARGV: token, ttl ms,
-- the scope's field, then one value per row. Returns how many were filled.
local token, ttl, field = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function live(v)
  if not v then return nil end
  local bar = string.find(v, '|', 1, true)
  if not bar then return nil end
  local expires = tonumber(string.sub(v, 1, bar - 1))
  if not expires or expires <= now then return nil end
  return string.sub(v, bar + 1)
end
local filled = 0
for i = 1, #KEYS do
  if live(redis.call('HGET', KEYS[i], 'l,' .. field)) == token then
    redis.call('HSET', KEYS[i], field, (now + ttl) .. '|' .. ARGV[3 + i])
    redis.call('HDEL', KEYS[i], 'l,' .. field)
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
    filled = filled + 1
  end
end
return filled
