-- Shared by every script: the namespace's current epoch. A namespace seen for the
-- first time (or after Redis lost its data) gets the fresh random epoch the caller
-- sent, so an epoch never comes back to a value old entries were written under.
-- KEYS[1]: the epoch key. ARGV[1]: the namespace's base. ARGV[2]: a fresh epoch.
-- ARGV[3]: this process's registry wait in ms (CacheConfig::registry_window; 0: none).
-- After base(), E is the epoch (scripts that feed a near tier return it) and WAIT the
-- namespace's registry wait.
--
-- Every epoch starts with its registry of cached tables ('{base}:{E}:reg', a hash of
-- table -> the server time it was first cached) whose field '' is the longest wait of
-- any process with a registry window: once one has used the namespace, every reader —
-- with a window or not — registers what it caches and waits, so writers that skip
-- unregistered tables are safe beside processes without a window. An epoch without
-- that mark (lost with the registry, or only ever used without a window) is replaced
-- when the first process with a window uses it: entries cached unregistered go with it.
local E
local WAIT = 0
local function base()
  E = redis.call('GET', KEYS[1])
  local mine = tonumber(ARGV[3])
  local mark = nil
  if E then mark = redis.call('HGET', ARGV[1] .. ':' .. E .. ':reg', '') end
  if not E or (mine > 0 and (not mark or tonumber(mark) == 0)) then
    E = ARGV[2]
    redis.call('SET', KEYS[1], E)
    mark = tostring(mine)
    redis.call('HSET', ARGV[1] .. ':' .. E .. ':reg', '', mark)
  end
  WAIT = tonumber(mark or '0')
  if mine > WAIT then
    WAIT = mine
    redis.call('HSET', ARGV[1] .. ':' .. E .. ':reg', '', ARGV[3])
  end
  return ARGV[1] .. ':' .. E
end

-- The name of a row entry (and, with 'l', of its lease): the table's generation is
-- part of it, so bumping the generation drops every row of the table at once.
local function row_key(b, kind, tbl, key)
  local g = redis.call('GET', b .. ':g:' .. tbl) or '0'
  return b .. ':' .. kind .. ':' .. tbl .. ':' .. g .. ':' .. key
end

-- The server's clock in milliseconds (scoped entries carry their own expiry).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A scoped hash field's value, '{expires ms}|{value}', while it has time left.
local function live(v, now)
  if not v then return nil end
  local bar = string.find(v, '|', 1, true)
  if not bar then return nil end
  local expires = tonumber(string.sub(v, 1, bar - 1))
  if not expires or expires <= now then return nil end
  return string.sub(v, bar + 1)
end

-- A scope's field: its id, then the current values of the n counters from ARGV[first].
local function scoped_field(b, scope, first, n)
  local parts = {scope}
  for i = first, first + n - 1 do
    parts[#parts + 1] = redis.call('GET', b .. ':' .. ARGV[i]) or '0'
  end
  return table.concat(parts, ',')
end

-- Registers the tables an entry depends on (rule 8 in backend.rs) and answers whether
-- every one was registered at least the window ago — only then may a reader take a
-- lease or fill: a writer's snapshot of the registry is never older than the window,
-- so every writer that could still skip such a table committed before this read.
local function registered(b, tables)
  local window = WAIT
  if window <= 0 then return true end
  local now = now_ms()
  local old = true
  for _, t in ipairs(tables) do
    local at = redis.call('HGET', b .. ':reg', t)
    if not at then
      redis.call('HSET', b .. ':reg', t, now)
      old = false
    elseif now - tonumber(at) < window then
      old = false
    end
  end
  return old
end

-- The tables of version counters ('v:{table}'); other counters (tags, memo calls) are
-- bumped by hand, never skipped.
local function counter_tables(first, n)
  local tables = {}
  for i = first, first + n - 1 do
    if string.sub(ARGV[i], 1, 2) == 'v:' then tables[#tables + 1] = string.sub(ARGV[i], 3) end
  end
  return tables
end
