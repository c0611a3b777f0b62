-- Resolves a versioned key (kind, the current values of its counters, suffix) and
-- GETs or DELs it. ARGV: base, fresh epoch, mode ('get' / 'del'), kind, number of
-- counters, counters..., suffix. Returns {key, value-or-deleted-count}.
local b = base()
local n = tonumber(ARGV[5])
local parts = {}
for i = 6, 5 + n do parts[#parts + 1] = redis.call('GET', b .. ':' .. ARGV[i]) or '0' end
local k = b .. ':' .. ARGV[4] .. ':' .. table.concat(parts, ',') .. ':' .. ARGV[6 + n]
if ARGV[3] == 'del' then return {k, redis.call('DEL', k)} end
return {k, redis.call('GET', k)}
