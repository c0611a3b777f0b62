-- Row entries of one slot (rule 2 of backend.rs): each miss takes the reader's lease
-- in the same step when ARGV[4] is '1'. KEYS: entry, lease, entry, lease, ...
-- ARGV: token, lease ms, shape, '1' or '0'. Returns per row its value ('' for a miss)
-- and the milliseconds it has left.
local out = {}
for i = 1, #KEYS, 2 do
  local v = redis.call('GET', KEYS[i])
  if v and string.sub(v, 1, 16) == ARGV[3] then
    out[#out + 1] = v
    out[#out + 1] = redis.call('PTTL', KEYS[i])
  else
    if ARGV[4] == '1' then redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2]) end
    out[#out + 1] = ''
    out[#out + 1] = 0
  end
end
return out
