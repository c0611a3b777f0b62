-- A user scope's copies of the rows of one slot (rule 6 of backend.rs); each miss
-- takes a lease when ARGV[4] is '1'. KEYS: the rows' scoped hashes. ARGV: token,
-- lease ms, shape, '1' or '0', the scope's field (its id and counter values).
-- Returns per row the value or '' (a miss).
local token, lease, shape, field = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function live(v)
  if not v then return nil end
  local bar = string.find(v, '|', 1, true)
  if not bar then return nil end
  local expires = tonumber(string.sub(v, 1, bar - 1))
  if not expires or expires <= now then return nil end
  return string.sub(v, bar + 1)
end
local out = {}
for i = 1, #KEYS do
  local v = live(redis.call('HGET', KEYS[i], field))
  if v and string.sub(v, 1, 16) == shape then
    out[#out + 1] = v
  else
    if redis.call('HLEN', KEYS[i]) >= 512 then redis.call('DEL', KEYS[i]) end
    if ARGV[4] == '1' then
      redis.call('HSET', KEYS[i], 'l,' .. field, (now + lease) .. '|' .. token)
      if redis.call('PTTL', KEYS[i]) < lease then redis.call('PEXPIRE', KEYS[i], lease) end
    end
    out[#out + 1] = ''
  end
end
return out
