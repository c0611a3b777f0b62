-- Keeps a namespace's registry mark for a process with a registry window (rule 8 in
-- backend.rs; see `keep_registry` in redis.rs): base() replaces an epoch whose
-- registry lost its mark, and sets the mark. Returns the epoch.
-- ARGV: base, fresh epoch, window (see prelude.lua).
base()
return E
