-- Reads one row's entry for inspection: no lease, no registration, and a namespace
-- without an epoch gets none (nothing is cached in it).
-- ARGV: base, fresh epoch (unused), window (unused), table, key.
-- Returns the entry ('' when missing), its PTTL, 1 when a lease is held, and how many
-- scopes keep a live copy of the row (rule 6).
local e = redis.call('GET', KEYS[1])
if not e then return {'', -2, 0, 0} end
local b = ARGV[1] .. ':' .. e
local tbl, key = ARGV[4], ARGV[5]
local entry = row_key(b, 'r', tbl, key)
local v = redis.call('GET', entry) or ''
local ttl = redis.call('PTTL', entry)
local leased = redis.call('EXISTS', row_key(b, 'l', tbl, key))
local copies = 0
local fields = redis.call('HGETALL', row_key(b, 's', tbl, key))
local now = now_ms()
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) ~= 'l,' and live(fields[i + 1], now) then copies = copies + 1 end
end
return {v, ttl, leased, copies}
