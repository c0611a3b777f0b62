-- Shared by every script: the namespace's current epoch. A namespace seen for the
-- first time (or after Redis lost its data) gets the fresh random epoch the caller
-- sent, so an epoch never comes back to a value old entries were written under.
-- KEYS[1]: the epoch key. ARGV[1]: the namespace's base. ARGV[2]: a fresh epoch.
-- After base(), E is the epoch (scripts that feed a near tier return it).
local E
local function base()
  E = redis.call('GET', KEYS[1])
  if not E then
    E = ARGV[2]
    redis.call('SET', KEYS[1], E)
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
