-- Resolves a versioned key (kind, the current values of its counters, suffix) and
-- GETs or DELs it. ARGV: base, fresh epoch, mode ('get' / 'del'), kind, number of
-- counters, counters..., suffix. Returns {key, deleted count} for 'del'; for 'get',
-- {key, value or '', milliseconds it has left, epoch, counter values...} (a near tier
-- mirrors the epoch and the counters; stored values are never empty).
local b = base()
local n = tonumber(ARGV[5])
local parts = {}
for i = 6, 5 + n do parts[#parts + 1] = redis.call('GET', b .. ':' .. ARGV[i]) or '0' end
local k = b .. ':' .. ARGV[4] .. ':' .. table.concat(parts, ',') .. ':' .. ARGV[6 + n]
if ARGV[3] == 'del' then return {k, redis.call('DEL', k)} end
local out = {k, redis.call('GET', k) or '', redis.call('PTTL', k), E}
for i = 1, n do out[#out + 1] = parts[i] end
return out
