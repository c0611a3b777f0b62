-- What writes made stale: bumps version counters (cached queries, memos) and table
-- generations (every row of a table), and deletes row entries with their leases and
-- every scope's copies.
-- ARGV: base, fresh epoch, number of counters, counters..., number of generations,
-- tables..., then table/key pairs of rows.
local b = base()
local i = 3
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
return 1
