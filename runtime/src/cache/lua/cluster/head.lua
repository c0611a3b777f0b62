-- A namespace's head on a Redis Cluster: one hash in the namespace's own slot (one
-- key, so a migration of its slot never splits it) holding the epoch 'e', the epoch
-- the registry belongs to '@', the longest reader wait 'w', the registry 'r:{table}'
-- (rule 8 of backend.rs), table generations 'g:{table}' and version counters
-- 'v:{counter}' (rules 4 and 5; the rows are elsewhere, see cluster.rs).
-- KEYS[1]: the head. ARGV[1]: a fresh epoch. ARGV[2]: this process's registry wait in
-- ms (0: none). ARGV[3]: 'read' (registers tables, answers whether leases may be
-- taken), 'write' (bumps first; under a window answers the registered tables) or
-- 'peek' (writes nothing; a namespace without an epoch answers {''}).
-- Then five lists, each its length and its items: counters to bump, tables whose
-- generation to bump, tables whose generation to answer, counters to answer, tables
-- to register. Returns {epoch, 1 or 0, generations..., counter values..., tables...}.
local H = KEYS[1]
local mine = tonumber(ARGV[2])
local mode = ARGV[3]
local E = redis.call('HGET', H, 'e')
if mode == 'peek' and not E then return {''} end
local mark = nil
if E and redis.call('HGET', H, '@') == E then mark = redis.call('HGET', H, 'w') end
if mode ~= 'peek' then
  if not E or (mine > 0 and (not mark or tonumber(mark) == 0)) then
    -- A new epoch starts with a registry of its own.
    E = ARGV[1]
    for _, f in ipairs(redis.call('HKEYS', H)) do
      if string.sub(f, 1, 2) == 'r:' then redis.call('HDEL', H, f) end
    end
    redis.call('HSET', H, 'e', E, '@', E, 'w', ARGV[2])
    mark = ARGV[2]
  end
end
local WAIT = tonumber(mark or '0')
if mode ~= 'peek' and mine > WAIT then
  WAIT = mine
  redis.call('HSET', H, 'w', ARGV[2])
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

for _, c in ipairs(bump_counters) do redis.call('HINCRBY', H, 'v:' .. c, 1) end
for _, t in ipairs(bump_tables) do redis.call('HINCRBY', H, 'g:' .. t, 1) end

local ok = 1
if mode == 'read' and WAIT > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for _, tbl in ipairs(register) do
    local since = redis.call('HGET', H, 'r:' .. tbl)
    if not since then
      redis.call('HSET', H, 'r:' .. tbl, now)
      ok = 0
    elseif now - tonumber(since) < WAIT then
      ok = 0
    end
  end
end

local out = {E, ok}
for _, t in ipairs(read_tables) do out[#out + 1] = redis.call('HGET', H, 'g:' .. t) or '0' end
for _, c in ipairs(read_counters) do out[#out + 1] = redis.call('HGET', H, 'v:' .. c) or '0' end
if mode == 'write' and mine > 0 then
  for _, f in ipairs(redis.call('HKEYS', H)) do
    if string.sub(f, 1, 2) == 'r:' then out[#out + 1] = string.sub(f, 3) end
  end
end
return out
