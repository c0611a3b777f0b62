-- Reads a user scope's copies of rows (rule 6 in backend.rs); each miss takes a lease
-- in the same step (none while a table is registered for less than the window). ARGV:
-- base, fresh epoch, window, table, token, lease ms, shape, scope, number of counters,
-- counters..., keys... Returns per key the value or '' (a miss).
local b = base()
local tbl, token, lease, shape = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local n = tonumber(ARGV[9])
local field = scoped_field(b, ARGV[8], 10, n)
local tables = counter_tables(10, n)
tables[#tables + 1] = tbl
local leases = registered(b, tables)
local now = now_ms()
local out = {}
for i = 10 + n, #ARGV do
  local name = row_key(b, 's', tbl, ARGV[i])
  local v = live(redis.call('HGET', name, field), now)
  if v and string.sub(v, 1, 16) == shape then
    out[#out + 1] = v
  else
    -- Bounded (SCOPED_FIELDS in backend.rs): past it the hash goes whole — entries
    -- and leases, which only makes misses and refused fills.
    if redis.call('HLEN', name) >= 512 then
      redis.call('DEL', name)
    end
    if leases then
      redis.call('HSET', name, 'l,' .. field, (now + lease) .. '|' .. token)
      if redis.call('PTTL', name) < lease then redis.call('PEXPIRE', name, lease) end
    end
    out[#out + 1] = ''
  end
end
return out
