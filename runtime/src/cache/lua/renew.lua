-- Replaces a namespace's epoch after a lost invalidation (see redis.rs), carrying the
-- registry's mark — the longest reader wait — into the new epoch's registry: without
-- it a reader without a registry window would take leases at once, while a writer
-- with one may still skip the table on a snapshot taken before the reader registered
-- it (rule 8 in backend.rs). KEYS[1]: the epoch key. ARGV[1]: the namespace's base.
-- ARGV[2]: the fresh epoch.
local old = redis.call('GET', KEYS[1])
local mark = false
if old then mark = redis.call('HGET', ARGV[1] .. ':' .. old .. ':reg', '') end
redis.call('SET', KEYS[1], ARGV[2])
if mark then redis.call('HSET', ARGV[1] .. ':' .. ARGV[2] .. ':reg', '', mark) end
return 1
