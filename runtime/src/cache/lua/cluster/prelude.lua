-- Shared by the row scripts of the cluster protocol (see cluster.rs), after the
-- single server's prelude (now_ms and live come from there). A row is one
-- hash (one key, so a slot being migrated moves it whole and a script never meets half
-- of a row): field 'r' its entry, 'l' its lease, '{scope},{counters}' a user scope's
-- copy and 'l,{scope},{counters}' that copy's lease. Every field's value is
-- '{expires ms}|{value}'; the key's own TTL is the longest of them.

-- The milliseconds a field has left (0 when none).
local function left(v, now)
  if not v then return 0 end
  local bar = string.find(v, '|', 1, true)
  local expires = bar and tonumber(string.sub(v, 1, bar - 1))
  if not expires or expires <= now then return 0 end
  return expires - now
end

-- Keeps the row's key at least `ms` longer.
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
