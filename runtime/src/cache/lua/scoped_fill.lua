-- Fills a user scope's copies whose leases still hold the token (rule 6 in
-- backend.rs): a write since deleted the hash, or changed a counter and so the field.
-- ARGV: base, fresh epoch, window, table, token, ttl ms, scope, number of counters,
-- counters..., key/value pairs. Returns how many were filled.
local b = base()
local tbl, token, ttl = ARGV[4], ARGV[5], tonumber(ARGV[6])
local n = tonumber(ARGV[8])
local field = scoped_field(b, ARGV[7], 9, n)
local now = now_ms()
local filled = 0
for i = 9 + n, #ARGV, 2 do
  local name = row_key(b, 's', tbl, ARGV[i])
  if live(redis.call('HGET', name, 'l,' .. field), now) == token then
    redis.call('HSET', name, field, (now + ttl) .. '|' .. ARGV[i + 1])
    redis.call('HDEL', name, 'l,' .. field)
    if redis.call('PTTL', name) < ttl then redis.call('PEXPIRE', name, ttl) end
    filled = filled + 1
  end
end
return filled
