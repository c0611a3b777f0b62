//! The in-process backend, used when no Redis URL is given: the same operations and
//! TTLs over a map behind one mutex. It cannot fail, so it needs no breaker or epoch;
//! it serves one process only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) enum MemValue {
    Bytes(Vec<u8>),
    List(VecDeque<Vec<u8>>),
    Set(HashSet<Vec<u8>>),
    Hash(HashMap<String, Vec<u8>>),
}

#[derive(Debug)]
struct Entry {
    value: MemValue,
    expires: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct MemoryBackend {
    map: Mutex<HashMap<String, Entry>>,
}

/// What a typed operation found under a key of another type.
pub(crate) struct WrongType;

impl MemoryBackend {
    /// Runs `f` on the live map (expired entries removed first for the touched key).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Map<'_>) -> T) -> T {
        let mut guard = match self.map.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut Map {
            map: &mut guard,
            now: Instant::now(),
        })
    }
}

pub(crate) struct Map<'a> {
    map: &'a mut HashMap<String, Entry>,
    now: Instant,
}

impl Map<'_> {
    fn live(&mut self, key: &str) -> Option<&mut Entry> {
        let expired = self
            .map
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|t| t <= self.now));
        if expired {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    pub(crate) fn get(&mut self, key: &str) -> Option<&MemValue> {
        self.live(key).map(|e| &e.value)
    }

    pub(crate) fn get_bytes(&mut self, key: &str) -> Result<Option<Vec<u8>>, WrongType> {
        match self.get(key) {
            None => Ok(None),
            Some(MemValue::Bytes(b)) => Ok(Some(b.clone())),
            Some(_) => Err(WrongType),
        }
    }

    pub(crate) fn set(&mut self, key: &str, value: MemValue, ttl: Option<Duration>) {
        let expires = ttl.map(|t| self.now + t);
        self.map.insert(key.to_owned(), Entry { value, expires });
    }

    pub(crate) fn remove(&mut self, key: &str) -> bool {
        self.live(key).is_some() && self.map.remove(key).is_some()
    }

    pub(crate) fn exists(&mut self, key: &str) -> bool {
        self.live(key).is_some()
    }

    pub(crate) fn expire(&mut self, key: &str, ttl: Duration) -> bool {
        let now = self.now;
        match self.live(key) {
            Some(entry) => {
                entry.expires = Some(now + ttl);
                true
            }
            None => false,
        }
    }

    /// The value under `key`, created empty with `make` if absent.
    pub(crate) fn entry(&mut self, key: &str, make: impl FnOnce() -> MemValue) -> &mut MemValue {
        if self.live(key).is_none() {
            self.map.insert(
                key.to_owned(),
                Entry {
                    value: make(),
                    expires: None,
                },
            );
        }
        match self.map.get_mut(key) {
            Some(entry) => &mut entry.value,
            None => unreachable!("inserted above"),
        }
    }

    /// Runs `f` on the value under `key` when there is one (`absent` otherwise), then
    /// removes the key if that emptied its collection, as Redis does.
    pub(crate) fn modify<T>(
        &mut self,
        key: &str,
        absent: T,
        f: impl FnOnce(&mut MemValue) -> T,
    ) -> T {
        let result = match self.live(key) {
            Some(entry) => f(&mut entry.value),
            None => return absent,
        };
        self.drop_if_empty(key);
        result
    }

    /// Removes `key` if its collection became empty (as Redis does).
    pub(crate) fn drop_if_empty(&mut self, key: &str) {
        let empty = match self.map.get(key).map(|e| &e.value) {
            Some(MemValue::List(l)) => l.is_empty(),
            Some(MemValue::Set(s)) => s.is_empty(),
            Some(MemValue::Hash(h)) => h.is_empty(),
            _ => false,
        };
        if empty {
            self.map.remove(key);
        }
    }

    pub(crate) fn keys_matching(&mut self, pattern: &str) -> Vec<String> {
        let now = self.now;
        self.map
            .iter()
            .filter(|(k, e)| {
                e.expires.is_none_or(|t| t > now) && glob(pattern.as_bytes(), k.as_bytes())
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Redis-style glob: `*`, `?`, `[...]` (with `^` negation and ranges), `\` escapes.
pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') => (0..=text.len()).any(|k| glob(&pattern[1..], &text[k..])),
        Some(b'?') => !text.is_empty() && glob(&pattern[1..], &text[1..]),
        Some(b'\\') if pattern.len() > 1 => {
            text.first() == Some(&pattern[1]) && glob(&pattern[2..], &text[1..])
        }
        Some(b'[') => {
            let Some(close) = pattern
                .iter()
                .skip(1)
                .position(|b| *b == b']')
                .map(|p| p + 1)
            else {
                return text.first() == Some(&b'[') && glob(&pattern[1..], &text[1..]);
            };
            let Some(c) = text.first() else { return false };
            let mut class = &pattern[1..close];
            let negate = class.first() == Some(&b'^');
            if negate {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= *c && *c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == *c;
                    i += 1;
                }
            }
            hit != negate && glob(&pattern[close + 1..], &text[1..])
        }
        Some(p) => text.first() == Some(p) && glob(&pattern[1..], &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"profiles:*", b"profiles:1"));
        assert!(!glob(b"profiles:*", b"documents:1"));
        assert!(glob(b"h?llo", b"hello"));
        assert!(glob(b"h[ae]llo", b"hallo"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-c]llo", b"hbllo"));
        assert!(glob(b"a\\*", b"a*"));
        assert!(!glob(b"a\\*", b"ab"));
    }
}
