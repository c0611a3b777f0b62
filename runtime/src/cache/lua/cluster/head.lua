-- A namespace's head on a Redis Cluster: its epoch, registry of cached tables, table
-- generations and version counters, four keys in the namespace's own slot (rules 4, 5
-- and 8 of backend.rs; the rows are elsewhere, see cluster.rs).
-- KEYS: epoch, registry (a hash: '@' the epoch it belongs to, '' the longest reader
-- wait, then table -> registration time), generations (hash), counters (hash).
-- ARGV[1]: a fresh epoch. ARGV[2]: this process's registry wait in ms (0: none).
-- ARGV[3]: 'read' (registers tables, answers whether leases may be taken), 'write'
-- (bumps first, answers the registered tables under a window) or 'peek' (writes
-- nothing; a namespace without an epoch answers {''}).
-- Then five lists, each its length and its items: counters to bump, tables whose
-- generation to bump, tables whose generation to answer, counters to answer, tables
-- to register. Returns {epoch, 1 or 0, generations..., counter values..., tables...}.
local mine = tonumber(ARGV[2])
local mode = ARGV[3]
local E = redis.call('GET', KEYS[1])
if mode == 'peek' and not E then return {''} end
local mark = nil
if E and redis.call('HGET', KEYS[2], '@') == E then mark = redis.call('HGET', KEYS[2], '') end
if mode ~= 'peek' then
  if not E or (mine > 0 and (not mark or tonumber(mark) == 0)) then
    E = ARGV[1]
    redis.call('SET', KEYS[1], E)
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], '@', E, '', ARGV[2])
    mark = ARGV[2]
  end
end
local WAIT = tonumber(mark or '0')
if mode ~= 'peek' and mine > WAIT then
  WAIT = mine
  redis.call('HSET', KEYS[2], '', ARGV[2])
end

local at = 4
local function list()
  local n = tonumber(ARGV[at])
  local items = {}
  for j = at + 1, at + n do items[#items + 1] = ARGV[j] end
  at = at + n + 1
  return items
end
local bump_counters, bump_tables, read_tables, read_counters, register =
  list(), list(), list(), list(), list()

for _, c in ipairs(bump_counters) do redis.call('HINCRBY', KEYS[4], c, 1) end
for _, t in ipairs(bump_tables) do redis.call('HINCRBY', KEYS[3], t, 1) end

local ok = 1
if mode == 'read' and WAIT > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for _, tbl in ipairs(register) do
    local since = redis.call('HGET', KEYS[2], tbl)
    if not since then
      redis.call('HSET', KEYS[2], tbl, now)
      ok = 0
    elseif now - tonumber(since) < WAIT then
      ok = 0
    end
  end
end

local out = {E, ok}
for _, t in ipairs(read_tables) do out[#out + 1] = redis.call('HGET', KEYS[3], t) or '0' end
for _, c in ipairs(read_counters) do out[#out + 1] = redis.call('HGET', KEYS[4], c) or '0' end
if mode == 'write' and mine > 0 then
  for _, t in ipairs(redis.call('HKEYS', KEYS[2])) do
    if t ~= '' and t ~= '@' then out[#out + 1] = t end
  end
end
return out
