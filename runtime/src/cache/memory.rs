//! The in-process backend: the [`Backend`] operations and TTLs over a map behind one
//! mutex, each operation one critical section (so each is atomic, as the protocol in
//! `backend.rs` asks). It cannot lose an invalidation, so it needs no breaker and its
//! epoch is fixed; it serves one process only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Fault;
use super::backend::{
    Backend, Namespace, Pending, RowFill, RowGet, RowPeek, Stale, UniqueFound, Versioned,
};

#[derive(Debug, Clone)]
enum MemValue {
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

impl MemoryBackend {
    /// Runs `f` on the live map (expired entries removed first for the touched key).
    fn with<T>(&self, f: impl FnOnce(&mut Map<'_>) -> T) -> T {
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

struct Map<'a> {
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

    fn get(&mut self, key: &str) -> Option<&MemValue> {
        self.live(key).map(|e| &e.value)
    }

    fn get_bytes(&mut self, key: &str) -> Result<Option<Vec<u8>>, Fault> {
        match self.get(key) {
            None => Ok(None),
            Some(MemValue::Bytes(b)) => Ok(Some(b.clone())),
            Some(_) => Err(Fault::WrongType),
        }
    }

    /// Replaces the value under `key`, keeping its TTL (as Redis's INCRBY does).
    fn replace(&mut self, key: &str, value: MemValue) {
        match self.live(key) {
            Some(entry) => entry.value = value,
            None => self.set(key, value, None),
        }
    }

    /// A counter's value as text (`0` when absent), as the scripts read it.
    fn counter(&mut self, key: &str) -> String {
        self.get_bytes(key)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| "0".into())
    }

    fn incr_counter(&mut self, key: &str) {
        let next = self.counter(key).parse::<u64>().unwrap_or(0) + 1;
        self.set(key, MemValue::Bytes(next.to_string().into_bytes()), None);
    }

    fn set(&mut self, key: &str, value: MemValue, ttl: Option<Duration>) {
        // A TTL past what `Instant` can hold is as good as none.
        let expires = ttl.and_then(|t| self.now.checked_add(t));
        self.map.insert(key.to_owned(), Entry { value, expires });
    }

    fn remove(&mut self, key: &str) -> bool {
        self.live(key).is_some() && self.map.remove(key).is_some()
    }

    fn exists(&mut self, key: &str) -> bool {
        self.live(key).is_some()
    }

    fn expire(&mut self, key: &str, ttl: Duration) -> bool {
        let now = self.now;
        match self.live(key) {
            Some(entry) => {
                entry.expires = now.checked_add(ttl);
                true
            }
            None => false,
        }
    }

    /// The value under `key`, created empty with `make` if absent.
    fn entry(&mut self, key: &str, make: impl FnOnce() -> MemValue) -> &mut MemValue {
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
    fn modify<T>(&mut self, key: &str, absent: T, f: impl FnOnce(&mut MemValue) -> T) -> T {
        let result = match self.live(key) {
            Some(entry) => f(&mut entry.value),
            None => return absent,
        };
        self.drop_if_empty(key);
        result
    }

    /// Removes `key` if its collection became empty (as Redis does).
    fn drop_if_empty(&mut self, key: &str) {
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

    fn keys_matching(&mut self, pattern: &str) -> Vec<String> {
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

/// The protocol's names under the fixed epoch `0` (see `backend.rs`).
struct Names<'a>(&'a Namespace);

impl Names<'_> {
    fn base(&self) -> String {
        format!("{}:0", self.0.base)
    }

    fn row(&self, map: &mut Map<'_>, kind: &str, table: &str, key: &str) -> String {
        let generation = map.counter(&format!("{}:g:{table}", self.base()));
        format!("{}:{kind}:{table}:{generation}:{key}", self.base())
    }

    /// A scope's field (rule 6): its id, then the current values of its counters.
    fn scoped_field(&self, map: &mut Map<'_>, scope: &super::backend::Scoped) -> String {
        let mut field = scope.id.to_string();
        for counter in scope.counters.iter() {
            field.push(',');
            field.push_str(&map.counter(&format!("{}:{counter}", self.base())));
        }
        field
    }
}

impl Map<'_> {
    /// Rule 6 in this tier: the hash `s:…` lists the fields of a row's scoped copies,
    /// each stored (with its own TTL) under `{hash}|{field}`; deleting a row's copies
    /// deletes the fields it lists.
    fn scoped_slot(&mut self, hash: &str, field: &str) -> String {
        let fields = match self.entry(hash, || MemValue::Hash(HashMap::new())) {
            MemValue::Hash(fields) => fields,
            _ => return format!("{hash}|{field}"),
        };
        if fields.len() >= super::backend::SCOPED_FIELDS && !fields.contains_key(field) {
            let old: Vec<String> = fields.drain().map(|(f, _)| f).collect();
            for f in old {
                self.map.remove(&format!("{hash}|{f}"));
            }
        }
        if let Some(MemValue::Hash(fields)) = self.get_mut_value(hash) {
            fields.insert(field.to_owned(), Vec::new());
        }
        format!("{hash}|{field}")
    }

    /// Keeps a scoped row's field list at least as long as its newest field.
    fn outlive(&mut self, hash: &str, ttl: Duration) {
        let until = self.now.checked_add(ttl);
        if let Some(entry) = self.live(hash) {
            entry.expires = match (entry.expires, until) {
                (Some(old), Some(new)) => Some(old.max(new)),
                (_, until) => until,
            };
        }
    }

    fn get_mut_value(&mut self, key: &str) -> Option<&mut MemValue> {
        self.live(key).map(|e| &mut e.value)
    }

    /// Deletes every scoped copy of a row, with their leases.
    fn remove_scoped(&mut self, hash: &str) {
        if let Some(MemValue::Hash(fields)) = self.get_mut_value(hash) {
            let old: Vec<String> = fields.drain().map(|(f, _)| f).collect();
            for f in old {
                self.map.remove(&format!("{hash}|{f}"));
            }
        }
        self.map.remove(hash);
    }
}

/// An answer already there — after spending a unit of the task's cooperative budget,
/// so a task answered by this tier in a loop still lets its runtime's other tasks run
/// (a Redis call would have yielded).
fn ready<'a, T: Send + 'a>(result: Result<T, Fault>) -> Pending<'a, T> {
    Box::pin(async move {
        tokio::task::coop::consume_budget().await;
        result
    })
}

impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn row_get<'a>(
        &'a self,
        ns: &'a Namespace,
        get: RowGet<'a>,
    ) -> Pending<'a, Vec<Option<Vec<u8>>>> {
        ready(Ok(self.with(|map| {
            let names = Names(ns);
            if let Some(scope) = get.scope {
                let field = names.scoped_field(map, scope);
                return get
                    .keys
                    .iter()
                    .map(|key| {
                        let hash = names.row(map, "s", get.table, key);
                        let entry = format!("{hash}|{field}");
                        match map.get_bytes(&entry) {
                            Ok(Some(v)) if v.starts_with(get.shape.as_bytes()) => Some(v),
                            _ => {
                                let lease = map.scoped_slot(&hash, &format!("l,{field}"));
                                let token = MemValue::Bytes(get.token.as_bytes().to_vec());
                                map.set(&lease, token, Some(get.lease));
                                map.outlive(&hash, get.lease);
                                None
                            }
                        }
                    })
                    .collect();
            }
            get.keys
                .iter()
                .map(|key| {
                    let entry = names.row(map, "r", get.table, key);
                    match map.get_bytes(&entry) {
                        Ok(Some(v)) if v.starts_with(get.shape.as_bytes()) => Some(v),
                        _ => {
                            let lease = names.row(map, "l", get.table, key);
                            let token = MemValue::Bytes(get.token.as_bytes().to_vec());
                            map.set(&lease, token, Some(get.lease));
                            None
                        }
                    }
                })
                .collect()
        })))
    }

    fn row_peek<'a>(
        &'a self,
        ns: &'a Namespace,
        table: &'a str,
        key: &'a str,
    ) -> Pending<'a, RowPeek> {
        ready(Ok(self.with(|map| {
            let names = Names(ns);
            let entry_name = names.row(map, "r", table, key);
            let now = map.now;
            let entry = map.live(&entry_name).and_then(|e| match &e.value {
                MemValue::Bytes(b) => Some((b.clone(), e.expires.map(|t| t - now))),
                _ => None,
            });
            let leased = {
                let lease = names.row(map, "l", table, key);
                map.exists(&lease)
            };
            let hash = names.row(map, "s", table, key);
            let fields: Vec<String> = match map.get(&hash) {
                Some(MemValue::Hash(fields)) => fields.keys().cloned().collect(),
                _ => Vec::new(),
            };
            let scoped_copies = fields
                .iter()
                .filter(|f| !f.starts_with("l,") && map.exists(&format!("{hash}|{f}")))
                .count() as u64;
            RowPeek {
                entry,
                leased,
                scoped_copies,
            }
        })))
    }

    fn unique_get<'a>(&'a self, ns: &'a Namespace, get: RowGet<'a>) -> Pending<'a, UniqueFound> {
        ready(Ok(self.with(|map| {
            let names = Names(ns);
            let shape = get.shape.as_bytes();
            let token = || MemValue::Bytes(get.token.as_bytes().to_vec());
            let Some(mapping) = get.keys.first() else {
                return UniqueFound::Nothing;
            };
            let entry = names.row(map, "r", get.table, mapping);
            let found = match map.get_bytes(&entry) {
                Ok(Some(v)) if v.starts_with(shape) => v,
                _ => {
                    let lease = names.row(map, "l", get.table, mapping);
                    map.set(&lease, token(), Some(get.lease));
                    return UniqueFound::Nothing;
                }
            };
            let key =
                String::from_utf8_lossy(found.get(shape.len()..).unwrap_or_default()).into_owned();
            let row = names.row(map, "r", get.table, &key);
            match map.get_bytes(&row) {
                Ok(Some(v)) if v.starts_with(shape) => UniqueFound::Both(found, v),
                _ => {
                    let lease = names.row(map, "l", get.table, &key);
                    map.set(&lease, token(), Some(get.lease));
                    UniqueFound::Mapping(found)
                }
            }
        })))
    }

    fn row_fill<'a>(&'a self, ns: &'a Namespace, fill: RowFill<'a>) -> Pending<'a, u64> {
        ready(Ok(self.with(|map| {
            let names = Names(ns);
            let mut filled = 0;
            if let Some(scope) = fill.scope {
                let field = names.scoped_field(map, scope);
                for (key, value) in fill.entries {
                    let hash = names.row(map, "s", fill.table, key);
                    let lease = format!("{hash}|l,{field}");
                    if map.get_bytes(&lease).ok().flatten().as_deref()
                        == Some(fill.token.as_bytes())
                    {
                        let entry = map.scoped_slot(&hash, &field);
                        map.set(&entry, MemValue::Bytes(value.clone()), Some(fill.ttl));
                        map.outlive(&hash, fill.ttl);
                        map.remove(&lease);
                        filled += 1;
                    }
                }
                return filled;
            }
            for (key, value) in fill.entries {
                let lease = names.row(map, "l", fill.table, key);
                if map.get_bytes(&lease).ok().flatten().as_deref() == Some(fill.token.as_bytes()) {
                    let entry = names.row(map, "r", fill.table, key);
                    map.set(&entry, MemValue::Bytes(value.clone()), Some(fill.ttl));
                    map.remove(&lease);
                    filled += 1;
                }
            }
            filled
        })))
    }

    fn invalidate<'a>(
        &'a self,
        ns: &'a Namespace,
        stale: Stale<'a>,
    ) -> Pending<'a, Option<Vec<String>>> {
        self.with(|map| {
            let names = Names(ns);
            for counter in stale.counters {
                map.incr_counter(&format!("{}:{counter}", names.base()));
            }
            for table in stale.generations {
                map.incr_counter(&format!("{}:g:{table}", names.base()));
            }
            for (table, key) in stale.rows {
                let entry = names.row(map, "r", table, key);
                let lease = names.row(map, "l", table, key);
                let scoped = names.row(map, "s", table, key);
                map.remove(&entry);
                map.remove(&lease);
                map.remove_scoped(&scoped);
            }
        });
        // One process: nothing to register, every write is told (rule 8).
        ready(Ok(None))
    }

    fn versioned<'a>(
        &'a self,
        ns: &'a Namespace,
        name: Versioned<'a>,
        delete: bool,
    ) -> Pending<'a, (String, Option<Vec<u8>>, bool)> {
        ready(Ok(self.with(|map| {
            let base = Names(ns).base();
            let parts: Vec<String> = name
                .counters
                .iter()
                .map(|c| map.counter(&format!("{base}:{c}")))
                .collect();
            let key = format!("{base}:{}:{}:{}", name.kind, parts.join(","), name.suffix);
            if delete {
                map.remove(&key);
                (key, None, false)
            } else {
                let value = map.get_bytes(&key).ok().flatten();
                (key, value, true)
            }
        })))
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> Pending<'a, ()> {
        self.with(|map| map.set(key, MemValue::Bytes(value), ttl));
        ready(Ok(()))
    }

    fn get<'a>(&'a self, key: &'a str) -> Pending<'a, Option<Vec<u8>>> {
        ready(self.with(|map| map.get_bytes(key)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> Pending<'a, bool> {
        ready(Ok(self.with(|map| map.remove(key))))
    }

    fn exists<'a>(&'a self, key: &'a str) -> Pending<'a, bool> {
        ready(Ok(self.with(|map| map.exists(key))))
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> Pending<'a, bool> {
        ready(Ok(self.with(|map| map.expire(key, ttl))))
    }

    fn claim<'a>(&'a self, key: &'a str, ttl: Duration) -> Pending<'a, bool> {
        ready(Ok(self.with(|map| {
            if map.exists(key) {
                return false;
            }
            map.set(key, MemValue::Bytes(b"1".to_vec()), Some(ttl));
            true
        })))
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64) -> Pending<'a, i64> {
        ready(self.with(|map| {
            let current = match map.get_bytes(key)? {
                Some(b) => std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or(Fault::Value("value is not an integer"))?,
                None => 0,
            };
            let next = current
                .checked_add(by)
                .ok_or(Fault::Value("increment would overflow"))?;
            map.replace(key, MemValue::Bytes(next.to_string().into_bytes()));
            Ok(next)
        }))
    }

    fn list_push<'a>(&'a self, key: &'a str, value: Vec<u8>) -> Pending<'a, u64> {
        ready(self.with(
            |map| match map.entry(key, || MemValue::List(Default::default())) {
                MemValue::List(list) => {
                    list.push_back(value);
                    Ok(list.len() as u64)
                }
                _ => Err(Fault::WrongType),
            },
        ))
    }

    fn list_pop<'a>(&'a self, key: &'a str) -> Pending<'a, Option<Vec<u8>>> {
        ready(self.with(|map| {
            map.modify(key, Ok(None), |value| match value {
                MemValue::List(list) => Ok(list.pop_front()),
                _ => Err(Fault::WrongType),
            })
        }))
    }

    fn list_range<'a>(&'a self, key: &'a str, start: i64, stop: i64) -> Pending<'a, Vec<Vec<u8>>> {
        ready(self.with(|map| match map.get(key) {
            None => Ok(Vec::new()),
            Some(MemValue::List(list)) => {
                // As LRANGE: negative indexes count from the end; a start before the
                // first element is the first, a stop past the last is the last, and
                // an empty range (a stop still negative included) is empty.
                let len = list.len() as i64;
                let from = if start < 0 {
                    (len + start).max(0)
                } else {
                    start
                };
                let to = if stop < 0 {
                    len + stop
                } else {
                    stop.min(len - 1)
                };
                Ok(if from > to || from >= len {
                    Vec::new()
                } else {
                    list.iter()
                        .skip(from as usize)
                        .take((to - from + 1) as usize)
                        .cloned()
                        .collect()
                })
            }
            Some(_) => Err(Fault::WrongType),
        }))
    }

    fn list_len<'a>(&'a self, key: &'a str) -> Pending<'a, u64> {
        ready(self.with(|map| match map.get(key) {
            None => Ok(0),
            Some(MemValue::List(list)) => Ok(list.len() as u64),
            Some(_) => Err(Fault::WrongType),
        }))
    }

    fn set_add<'a>(&'a self, key: &'a str, members: Vec<Vec<u8>>) -> Pending<'a, u64> {
        ready(self.with(|map| {
            match map.entry(key, || MemValue::Set(Default::default())) {
                MemValue::Set(set) => Ok(members
                    .into_iter()
                    .filter(|m| set.insert(m.clone()))
                    .count() as u64),
                _ => Err(Fault::WrongType),
            }
        }))
    }

    fn set_remove<'a>(&'a self, key: &'a str, members: Vec<Vec<u8>>) -> Pending<'a, u64> {
        ready(self.with(|map| {
            map.modify(key, Ok(0), |value| match value {
                MemValue::Set(set) => Ok(members.iter().filter(|m| set.remove(*m)).count() as u64),
                _ => Err(Fault::WrongType),
            })
        }))
    }

    fn set_members<'a>(&'a self, key: &'a str) -> Pending<'a, Vec<Vec<u8>>> {
        ready(self.with(|map| match map.get(key) {
            None => Ok(Vec::new()),
            Some(MemValue::Set(set)) => Ok(set.iter().cloned().collect()),
            Some(_) => Err(Fault::WrongType),
        }))
    }

    fn set_is_member<'a>(&'a self, key: &'a str, member: Vec<u8>) -> Pending<'a, bool> {
        ready(self.with(|map| match map.get(key) {
            None => Ok(false),
            Some(MemValue::Set(set)) => Ok(set.contains(&member)),
            Some(_) => Err(Fault::WrongType),
        }))
    }

    fn hash_set<'a>(&'a self, key: &'a str, field: &'a str, value: Vec<u8>) -> Pending<'a, bool> {
        ready(self.with(
            |map| match map.entry(key, || MemValue::Hash(Default::default())) {
                MemValue::Hash(hash) => Ok(hash.insert(field.to_owned(), value).is_none()),
                _ => Err(Fault::WrongType),
            },
        ))
    }

    fn hash_get<'a>(&'a self, key: &'a str, field: &'a str) -> Pending<'a, Option<Vec<u8>>> {
        ready(self.with(|map| match map.get(key) {
            None => Ok(None),
            Some(MemValue::Hash(hash)) => Ok(hash.get(field).cloned()),
            Some(_) => Err(Fault::WrongType),
        }))
    }

    fn hash_get_all<'a>(&'a self, key: &'a str) -> Pending<'a, HashMap<String, Vec<u8>>> {
        ready(self.with(|map| match map.get(key) {
            None => Ok(HashMap::new()),
            Some(MemValue::Hash(hash)) => Ok(hash.clone()),
            Some(_) => Err(Fault::WrongType),
        }))
    }

    fn hash_delete<'a>(&'a self, key: &'a str, field: &'a str) -> Pending<'a, bool> {
        ready(self.with(|map| {
            map.modify(key, Ok(false), |value| match value {
                MemValue::Hash(hash) => Ok(hash.remove(field).is_some()),
                _ => Err(Fault::WrongType),
            })
        }))
    }

    fn delete_matching<'a>(&'a self, pattern: &'a str) -> Pending<'a, u64> {
        ready(Ok(self.with(|map| {
            let keys = map.keys_matching(pattern);
            keys.iter().filter(|k| map.remove(k)).count() as u64
        })))
    }
}

/// Matches `text` against a Redis glob exactly as Redis's own matcher does (its
/// `stringmatchlen`), malformed patterns included: `*`, `?`, `\` escapes, and classes
/// `[...]` with `^` negation, ranges (a reversed range is swapped), `\` escapes inside,
/// and an unclosed class running to the end of the pattern. Iterative but for `*`,
/// whose nesting is bounded, and a `*` that failed against the whole rest of the text
/// stops every outer `*` from trying longer matches (so no pattern is exponential).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let mut give_up = false;
    glob_from(pattern, text, &mut give_up, 0)
}

fn glob_from(mut p: &[u8], mut s: &[u8], give_up: &mut bool, nesting: usize) -> bool {
    // Redis bounds the recursion the same way.
    if nesting > 1000 {
        return false;
    }
    while let (Some(&head), Some(&c)) = (p.first(), s.first()) {
        match head {
            b'*' => {
                while p.get(1) == Some(&b'*') {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                for start in 0..s.len() {
                    if glob_from(&p[1..], &s[start..], give_up, nesting + 1) {
                        return true;
                    }
                    if *give_up {
                        return false;
                    }
                }
                *give_up = true;
                return false;
            }
            b'?' => {
                p = &p[1..];
            }
            b'[' => {
                p = &p[1..];
                let negate = p.first() == Some(&b'^');
                if negate {
                    p = &p[1..];
                }
                let mut hit = false;
                loop {
                    match p {
                        [b'\\', escaped, ..] => {
                            hit |= *escaped == c;
                            p = &p[2..];
                        }
                        [b']', ..] => {
                            p = &p[1..];
                            break;
                        }
                        // Unclosed: the class runs to the end of the pattern.
                        [] => break,
                        [low, b'-', high, ..] => {
                            let (low, high) = if low <= high {
                                (*low, *high)
                            } else {
                                (*high, *low)
                            };
                            hit |= (low..=high).contains(&c);
                            p = &p[3..];
                        }
                        [other, ..] => {
                            hit |= *other == c;
                            p = &p[1..];
                        }
                    }
                }
                if hit == negate {
                    return false;
                }
            }
            b'\\' if p.len() >= 2 => {
                if p[1] != c {
                    return false;
                }
                p = &p[2..];
            }
            literal => {
                if literal != c {
                    return false;
                }
                p = &p[1..];
            }
        }
        s = &s[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
        }
    }
    p.is_empty() && s.is_empty()
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
        // As Redis: reversed ranges swap, `\` escapes inside a class, an unclosed
        // class runs to the end, a trailing `\` is a literal.
        assert!(glob(b"k[z-a]", b"kq"));
        assert!(glob(b"a[\\]x]b", b"a]b"));
        assert!(glob(b"a[b", b"ab"));
        assert!(!glob(b"a[b", b"a[b"));
        assert!(glob(b"a[a-]b", b"ab"));
        assert!(!glob(b"a[a-]b", b"a-b"));
        assert!(glob(b"a\\", b"a\\"));
        assert!(
            !glob(b"*", b""),
            "as in Redis: no pattern matches an empty key"
        );
        assert!(!glob(b"?", b""));
        // A pathological pattern ends at once.
        let long = vec![b'a'; 4000];
        assert!(!glob(b"*a*a*a*a*a*a*a*a*a*a*a*a*b", &long));
    }
}
