-- A unique value's mapping and the row it leads to, in one step (rule 7 in
-- backend.rs); what is missing takes a lease (none while the table is registered for
-- less than the window). ARGV: base, fresh epoch, window, table, token, lease ms,
-- shape, the mapping's name. Returns the epoch and the generation read (a
-- near tier mirrors them), then the mapping and its PTTL, then the row and its PTTL —
-- '' and 0 for what is missing (no row is looked for without a mapping).
local b = base()
local tbl, token, lease, shape, mapping = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local leases = registered(b, {tbl})
local g = redis.call('GET', b .. ':g:' .. tbl) or '0'
local prefix = tbl .. ':' .. g .. ':'
local m_name = b .. ':r:' .. prefix .. mapping
local m = redis.call('GET', m_name)
if not (m and string.sub(m, 1, 16) == shape) then
  if leases then redis.call('SET', b .. ':l:' .. prefix .. mapping, token, 'PX', lease) end
  return {E, g, '', 0, '', 0}
end
local key = string.sub(m, 17)
local r_name = b .. ':r:' .. prefix .. key
local row = redis.call('GET', r_name)
if row and string.sub(row, 1, 16) == shape then
  return {E, g, m, redis.call('PTTL', m_name), row, redis.call('PTTL', r_name)}
end
if leases then redis.call('SET', b .. ':l:' .. prefix .. key, token, 'PX', lease) end
return {E, g, m, redis.call('PTTL', m_name), '', 0}
