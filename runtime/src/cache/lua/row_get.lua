-- Reads row entries; each miss takes a lease in the same step.
-- ARGV: base, fresh epoch, table, token, lease ms, shape, keys...
-- Returns one value (or false) per key.
local b = base()
local tbl, token, lease, shape = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local g = redis.call('GET', b .. ':g:' .. tbl) or '0'
local prefix = tbl .. ':' .. g .. ':'
local out = {}
for i = 7, #ARGV do
  local v = redis.call('GET', b .. ':r:' .. prefix .. ARGV[i])
  if v and string.sub(v, 1, 16) == shape then
    out[i - 6] = v
  else
    redis.call('SET', b .. ':l:' .. prefix .. ARGV[i], token, 'PX', lease)
    out[i - 6] = false
  end
end
return out
