-- One row as stored, read only (Backend::row_peek). KEYS[1]: the row. Returns the
-- entry ('' when missing), the milliseconds it has left, 1 when a lease is held, and
-- how many scopes keep a live copy.
local now = now_ms()
local entry = redis.call('HGET', KEYS[1], 'r')
local copies = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local f = fields[i]
  if f ~= 'r' and f ~= 'l' and string.sub(f, 1, 2) ~= 'l,' and live(fields[i + 1], now) then
    copies = copies + 1
  end
end
local leased = 0
if live(redis.call('HGET', KEYS[1], 'l'), now) then leased = 1 end
return {live(entry, now) or '', left(entry, now), leased, copies}
