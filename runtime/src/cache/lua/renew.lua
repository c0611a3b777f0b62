-- Replaces a namespace's epoch after a lost invalidation or a restarted server (see
-- redis.rs), carrying the registry's mark — the longest reader wait, or this
-- process's own when longer (a restart may have lost the mark) — into the new epoch's
-- registry: without it a reader without a registry window would take leases at once,
-- while a writer with one may still skip the table on a snapshot taken before the
-- reader registered it (rule 8 in backend.rs). KEYS[1]: the epoch key. ARGV[1]: the
-- namespace's base. ARGV[2]: the fresh epoch. ARGV[3]: this process's wait in ms.
local old = redis.call('GET', KEYS[1])
local mark = 0
if old then mark = tonumber(redis.call('HGET', ARGV[1] .. ':' .. old .. ':reg', '') or '0') end
if tonumber(ARGV[3]) > mark then mark = tonumber(ARGV[3]) end
redis.call('SET', KEYS[1], ARGV[2])
if mark > 0 then redis.call('HSET', ARGV[1] .. ':' .. ARGV[2] .. ':reg', '', mark) end
return 1
