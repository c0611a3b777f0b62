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
