-- One row as stored, read only (Backend::row_peek). KEYS: entry, lease, scoped hash
-- (one slot). Returns the entry ('' when missing), its PTTL, 1 when a lease is held,
-- and how many scopes keep a live copy.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local copies = 0
local fields = redis.call('HGETALL', KEYS[3])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) ~= 'l,' then
    local v = fields[i + 1]
    local bar = string.find(v, '|', 1, true)
    local expires = bar and tonumber(string.sub(v, 1, bar - 1))
    if expires and expires > now then copies = copies + 1 end
  end
end
return {redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1]),
  redis.call('EXISTS', KEYS[2]), copies}
