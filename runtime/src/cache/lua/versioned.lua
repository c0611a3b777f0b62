-- Resolves a versioned key (kind, the current values of its counters, suffix) and
-- GETs or DELs it. ARGV: base, fresh epoch, window, mode ('get' / 'del'), kind, number
-- of counters, counters..., suffix. Returns {key, deleted count} for 'del'; for 'get',
-- {key, value or '', milliseconds it has left, epoch, 1 if it may be filled (0 while a
-- table of its counters is registered for less than the window), counter values...}
-- (a near tier mirrors the epoch and the counters; stored values are never empty).
local b = base()
local n = tonumber(ARGV[6])
local parts = {}
for i = 7, 6 + n do parts[#parts + 1] = redis.call('GET', b .. ':' .. ARGV[i]) or '0' end
local k = b .. ':' .. ARGV[5] .. ':' .. table.concat(parts, ',') .. ':' .. ARGV[7 + n]
if ARGV[4] == 'del' then return {k, redis.call('DEL', k)} end
local fill = 0
if registered(b, counter_tables(7, n)) then fill = 1 end
local out = {k, redis.call('GET', k) or '', redis.call('PTTL', k), E, fill}
for i = 1, n do out[#out + 1] = parts[i] end
return out
