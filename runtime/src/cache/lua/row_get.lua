-- Reads row entries; each miss takes a lease in the same step (none while the
-- table's registration is younger than the registry window).
-- ARGV: base, fresh epoch, window, table, token, lease ms, shape, keys...
-- Returns the epoch and the table's generation it read (a near tier mirrors them),
-- then per key its value — '' for a miss (an entry is never empty: it starts with the
-- shape; and '' reads the same in RESP2 and RESP3, where a Lua false would not) — and
-- the milliseconds the entry has left (a near tier keeps no copy longer).
local b = base()
local tbl, token, lease, shape = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local leases = registered(b, {tbl})
local g = redis.call('GET', b .. ':g:' .. tbl) or '0'
local prefix = tbl .. ':' .. g .. ':'
local out = {E, g}
for i = 8, #ARGV do
  local name = b .. ':r:' .. prefix .. ARGV[i]
  local v = redis.call('GET', name)
  if v and string.sub(v, 1, 16) == shape then
    out[#out + 1] = v
    out[#out + 1] = redis.call('PTTL', name)
  else
    if leases then redis.call('SET', b .. ':l:' .. prefix .. ARGV[i], token, 'PX', lease) end
    out[#out + 1] = ''
    out[#out + 1] = 0
  end
end
return out
