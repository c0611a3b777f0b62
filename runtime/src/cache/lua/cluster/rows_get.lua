-- One row's entry (rule 2 of backend.rs); a miss takes the reader's lease in the same
-- step when ARGV[4] is '1'. KEYS[1]: the row. ARGV: token, lease ms, shape, '1' or
-- '0'. Returns the entry, or '' for a miss.
local now = now_ms()
local v = live(redis.call('HGET', KEYS[1], 'r'), now)
if v and string.sub(v, 1, 16) == ARGV[3] then return v end
if ARGV[4] == '1' then
  local lease = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'l', (now + lease) .. '|' .. ARGV[1])
  extend(KEYS[1], lease)
end
return ''
