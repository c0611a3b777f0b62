-- What writes made stale: bumps version counters (cached queries, memos) and table
-- generations (every row of a table), and deletes row entries with their leases and
-- every scope's copies.
-- ARGV: base, fresh epoch, window, number of counters, counters..., number of
-- generations, tables..., then table/key pairs of rows.
-- Returns 1, then under a registry window the registered tables (the writer's new
-- snapshot, read in the same step).
local b = base()
local i = 4
local n = tonumber(ARGV[i])
for j = i + 1, i + n do redis.call('INCR', b .. ':' .. ARGV[j]) end
i = i + n + 1
n = tonumber(ARGV[i])
for j = i + 1, i + n do redis.call('INCR', b .. ':g:' .. ARGV[j]) end
i = i + n + 1
for j = i, #ARGV, 2 do
  redis.call('DEL', row_key(b, 'r', ARGV[j], ARGV[j + 1]), row_key(b, 'l', ARGV[j], ARGV[j + 1]),
    row_key(b, 's', ARGV[j], ARGV[j + 1]))
end
local out = {1}
if tonumber(ARGV[3]) > 0 then
  for _, t in ipairs(redis.call('HKEYS', b .. ':reg')) do
    if t ~= '' then out[#out + 1] = t end
  end
end
return out
