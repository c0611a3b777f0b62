-- Fills the rows whose lease still holds the token: a write since the lease was
-- taken deleted it (or bumped the table's generation, or the epoch), and then the
-- fill is refused. ARGV: base, fresh epoch, window, table, token, ttl ms, key/value pairs...
-- Returns how many were filled.
local b = base()
local tbl, token, ttl = ARGV[4], ARGV[5], ARGV[6]
local filled = 0
for i = 7, #ARGV, 2 do
  local lease = row_key(b, 'l', tbl, ARGV[i])
  if redis.call('GET', lease) == token then
    redis.call('SET', row_key(b, 'r', tbl, ARGV[i]), ARGV[i + 1], 'PX', ttl)
    redis.call('DEL', lease)
    filled = filled + 1
  end
end
return filled
