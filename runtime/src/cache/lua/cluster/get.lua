-- A versioned entry (rule 5 of backend.rs) and the milliseconds it has left.
-- KEYS: its resolved name. Returns {value or '', PTTL}.
return {redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1])}
