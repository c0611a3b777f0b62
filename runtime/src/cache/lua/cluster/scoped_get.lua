-- A user scope's copy of one row (rule 6 of backend.rs); a miss takes a lease when
-- ARGV[4] is '1'. KEYS[1]: the row. ARGV: token, lease ms, shape, '1' or '0', the
-- scope's field (its id and counter values). Returns the copy, or '' for a miss.
local now = now_ms()
local field = ARGV[5]
local v = live(redis.call('HGET', KEYS[1], field), now)
if v and string.sub(v, 1, 16) == ARGV[3] then return v end
-- Bounded (SCOPED_FIELDS in backend.rs): past it the row goes whole, which only makes
-- misses and refused fills.
if redis.call('HLEN', KEYS[1]) >= 512 then redis.call('DEL', KEYS[1]) end
if ARGV[4] == '1' then
  local lease = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'l,' .. field, (now + lease) .. '|' .. ARGV[1])
  extend(KEYS[1], lease)
end
return ''
