//! The near tier: an in-process mirror of the Redis entries this process read, kept
//! coherent by Redis's own invalidation messages (RESP3 `CLIENT TRACKING` in broadcast
//! mode for every key under `{prefix}:t:`, on each connection; see `redis.rs`), so a
//! hot read costs a hash lookup instead of a round trip.
//!
//! # What is mirrored
//!
//! What a protocol script read from Redis — every change to it is pushed to this
//! process — under the exact Redis name:
//!
//! - *meta* mirrors: a namespace's epoch (`{base}:epoch`), a table's generation
//!   (`{base}:{e}:g:{table}`), version counters (`{base}:{e}:v:{table}`, memo
//!   counters). Each install gets a fresh *serial*;
//! - *values*: row entries and unique-finder mappings (`{base}:{e}:r:{table}:{g}:{key}`)
//!   and versioned entries (cached queries, memos), each with the serials of the
//!   mirrors its name was resolved through.
//!
//! A lookup resolves the name through the meta mirrors exactly as the scripts do, and
//! trusts a value only if those mirrors are the very ones (same serials) it was
//! installed under. So removing a mirror makes everything resolved through it
//! unreachable at once — even entries this process cannot name (a row whose table
//! generation it no longer knows), and even if the same value is mirrored again later.
//!
//! # The fill race, closed
//!
//! A reply can carry a value Redis read *before* a change whose invalidation this
//! process handles *before* the reply is installed (the race the Redis client-side
//! caching reference warns about). Every invalidation — a push, a write of this
//! process, a flush — is numbered and logged (as hashes of the names and tables it
//! touched). A request takes the current number before it is sent; its reply is
//! installed only if nothing it depends on was logged since (checked and installed
//! under the log's lock, which invalidations take too). A log that no longer reaches
//! back to the request's number refuses the install.
//!
//! # Failure
//!
//! A connection that drops, is replaced, misses a deadline, or ends with its runtime
//! may have lost pushes: the tier is flushed and everything in flight refused. The
//! tier answers a runtime only while that runtime's connection has tracking on and
//! answered within one deadline, and never while the circuit breaker is open. Every value also has a maximum age (see
//! [`CacheConfig::near_max_age`](super::CacheConfig::near_max_age)), counted from the
//! oldest of its mirrors, which caps staleness even if a push were lost unnoticed.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::NearStats;
use super::backend::Namespace;
use super::row::FillHook;

/// How many invalidations the log remembers; a request older than that is refused.
const LOG_CAPACITY: usize = 4096;

/// What an entry costs beyond its name and bytes (the map slot, the `Arc`, the times).
const ENTRY_OVERHEAD: u64 = 96;

/// A mirrored value.
struct Value {
    bytes: Box<[u8]>,
    /// The serials of the mirrors its name was resolved through.
    deps: Box<[u64]>,
    at: Instant,
    max_age: Duration,
}

/// A mirrored epoch, generation or counter.
#[derive(Clone)]
struct Meta {
    value: Box<str>,
    serial: u64,
    at: Instant,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Box<str>, Arc<Value>> for Weigh {
    fn weight(&self, name: &Box<str>, value: &Arc<Value>) -> u64 {
        (name.len() + value.bytes.len() + value.deps.len() * 8) as u64 + ENTRY_OVERHEAD
    }
}

/// Counts evictions by size.
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl quick_cache::Lifecycle<Box<str>, Arc<Value>> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _: &mut (), _: Box<str>, _: Arc<Value>) {
        self.0.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::monitor::CACHE_EVENTS, "event" => "near_eviction").increment(1);
    }
}

type Values =
    quick_cache::sync::Cache<Box<str>, Arc<Value>, Weigh, std::hash::RandomState, Evictions>;

/// Numbered invalidations, as hashes.
struct Log {
    /// The number of the last invalidation.
    seq: u64,
    /// Requests that started before this number are refused (a flush).
    floor: u64,
    recent: VecDeque<(u64, u64)>,
}

impl Log {
    fn record(&mut self, hash: u64) {
        self.seq += 1;
        if self.recent.len() == LOG_CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back((self.seq, hash));
    }

    /// Whether a request that started at `start` may install something that depends
    /// on `deps`.
    fn allows(&self, start: u64, deps: &[u64]) -> bool {
        if start < self.floor {
            return false;
        }
        if self.seq == start {
            return true;
        }
        // Every invalidation after `start` must still be in the log.
        match self.recent.front() {
            Some((oldest, _)) if *oldest <= start + 1 => {}
            _ => return false,
        }
        !self
            .recent
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > start)
            .any(|(_, hash)| deps.contains(hash))
    }
}

pub(crate) struct NearTier {
    values: Values,
    /// The weight of the largest value a shard of `values` can hold; a larger one is
    /// not installed (the map would only reject it).
    largest: u64,
    evictions: Evictions,
    meta: RwLock<HashMap<Box<str>, Meta>>,
    /// How many mirrors `meta` keeps at most (see `install_meta`).
    max_mirrors: usize,
    log: Mutex<Log>,
    serial: AtomicU64,
    max_age: Option<Duration>,
    hook: Mutex<Option<FillHook>>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    refused: AtomicU64,
}

fn hash(parts: &[&[u8]]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for part in parts {
        part.hash(&mut hasher);
    }
    hasher.finish()
}

/// The log token of "some row of `table` in `ns` changed" (own writes name rows
/// without knowing the generation their entries were resolved through).
fn table_token(ns: &Namespace, table: &str) -> u64 {
    hash(&[ns.base.as_bytes(), b"\0rows\0", table.as_bytes()])
}

/// The log token of "counter `counter` of `ns` changed".
fn counter_token(ns: &Namespace, counter: &str) -> u64 {
    hash(&[ns.base.as_bytes(), b"\0counter\0", counter.as_bytes()])
}

fn name_token(name: &str) -> u64 {
    hash(&[name.as_bytes()])
}

/// The default maximum age of a value with this TTL: a few seconds below it.
fn default_max_age(ttl: Duration) -> Duration {
    ttl.saturating_sub(Duration::from_secs(5)).max(ttl / 2)
}

impl NearTier {
    pub(crate) fn new(budget: u64, max_age: Option<Duration>) -> NearTier {
        let evictions = Evictions::default();
        let estimated = (budget / 512).clamp(64, 1 << 22) as usize;
        // The map splits its budget across shards: one per 4 MiB (at most 32), so a
        // small budget is one shard and a value can use all of it.
        let shards = (budget / (4 << 20)).clamp(1, 32).next_power_of_two() as usize;
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(budget)
            .shards(shards)
            .build();
        let values = match options {
            Ok(options) => quick_cache::sync::Cache::with_options(
                options,
                Weigh,
                std::hash::RandomState::new(),
                evictions.clone(),
            ),
            Err(_) => quick_cache::sync::Cache::with(
                estimated,
                budget,
                Weigh,
                std::hash::RandomState::new(),
                evictions.clone(),
            ),
        };
        let largest = budget / shards as u64;
        NearTier {
            values,
            largest,
            evictions,
            meta: RwLock::default(),
            // Twice the entries the budget is expected to hold: a mirror or two each.
            max_mirrors: (estimated * 2).max(1024),
            log: Mutex::new(Log {
                seq: 0,
                floor: 0,
                recent: VecDeque::new(),
            }),
            serial: AtomicU64::new(0),
            max_age,
            hook: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// How long a value read now may be served: a few seconds below its TTL (or the
    /// configured cap), and never past the time its Redis entry has `left`.
    fn max_age(&self, ttl: Duration, left: Option<Duration>) -> Duration {
        let default = default_max_age(ttl);
        let capped = self.max_age.map_or(default, |m| m.min(default));
        left.map_or(capped, |left| capped.min(left))
    }

    pub(crate) fn stats(&self) -> NearStats {
        NearStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.0.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            bytes: self.values.weight(),
            entries: self.values.len() as u64,
        }
    }

    /// The number a request takes before it is sent.
    pub(crate) fn begin(&self) -> u64 {
        self.lock_log().seq
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn meta_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Meta>> {
        self.meta.read().unwrap_or_else(|p| p.into_inner())
    }

    fn meta_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, Meta>> {
        self.meta.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything and refuses every reply in flight.
    pub(crate) fn flush(&self) {
        let mut log = self.lock_log();
        log.seq += 1;
        log.floor = log.seq;
        self.meta_write().clear();
        self.values.clear();
        drop(log);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::monitor::CACHE_EVENTS, "event" => "near_flush").increment(1);
    }

    /// A push: these names changed in Redis (`None`: everything did).
    pub(crate) fn invalidated(&self, names: Option<Vec<Vec<u8>>>) {
        let Some(names) = names else {
            self.flush();
            return;
        };
        let mut log = self.lock_log();
        let mut meta = self.meta_write();
        for name in &names {
            log.record(hash(&[name]));
            if let Ok(name) = std::str::from_utf8(name) {
                let was_epoch = meta.remove(name).is_some() && name.ends_with(":epoch");
                self.values.remove(name);
                // A new epoch orphans every mirror of the old one: drop them all.
                if was_epoch && let Some(base) = name.strip_suffix("epoch") {
                    meta.retain(|mirror, _| !mirror.starts_with(base));
                }
            }
        }
        drop((meta, log));
        self.invalidations
            .fetch_add(names.len() as u64, Ordering::Relaxed);
    }

    /// This process's own write, before its invalidation is sent and again after it
    /// answered: what it names is evicted and logged, so no reply in flight installs
    /// it, without waiting for Redis's push.
    pub(crate) fn own_write(
        &self,
        ns: &Namespace,
        counters: &[String],
        generations: &[String],
        rows: &[(String, String)],
    ) {
        let mut log = self.lock_log();
        let mut meta = self.meta_write();
        // With the epoch (and a table's generation) mirrored, the exact names are
        // logged: a reply resolved through other values depends on a mirror whose
        // change is logged too. Without them, a token that refuses every reply of
        // the table (or counter) in flight.
        let epoch = meta.get(ns.epoch_key.as_str()).map(|m| m.value.clone());
        for counter in counters {
            match &epoch {
                Some(e) => {
                    let name = format!("{}:{e}:{counter}", ns.base);
                    log.record(name_token(&name));
                    meta.remove(name.as_str());
                }
                None => log.record(counter_token(ns, counter)),
            }
        }
        for table in generations {
            match &epoch {
                Some(e) => {
                    let name = format!("{}:{e}:g:{table}", ns.base);
                    log.record(name_token(&name));
                    meta.remove(name.as_str());
                }
                None => log.record(table_token(ns, table)),
            }
        }
        for (table, key) in rows {
            let generation = epoch.as_ref().and_then(|e| {
                let g = meta.get(format!("{}:{e}:g:{table}", ns.base).as_str())?;
                Some(format!("{}:{e}:r:{table}:{}:{key}", ns.base, g.value))
            });
            match generation {
                Some(name) => {
                    log.record(name_token(&name));
                    self.values.remove(name.as_str());
                }
                // No entry of the table is reachable without the generation's mirror.
                None => log.record(table_token(ns, table)),
            }
        }
        drop((meta, log));
        let n = (counters.len() + generations.len() + rows.len()) as u64;
        self.invalidations.fetch_add(n, Ordering::Relaxed);
    }

    /// A name this process deleted itself (a versioned entry).
    pub(crate) fn own_delete(&self, name: &str) {
        let mut log = self.lock_log();
        log.record(name_token(name));
        self.values.remove(name);
        drop(log);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `value` and the mirrors it was resolved through are young enough.
    fn fresh(value: &Value, deps: &[&Meta], now: Instant) -> bool {
        let oldest = deps.iter().map(|d| d.at).fold(value.at, Instant::min);
        now.saturating_duration_since(oldest) <= value.max_age
    }

    /// Row lookups answered here; `out[i]` is set for each hit.
    pub(crate) fn rows(
        &self,
        ns: &Namespace,
        table: &str,
        shape: &str,
        keys: &[String],
        out: &mut [Option<Vec<u8>>],
    ) {
        let (mut hits, mut misses) = (0, keys.len() as u64);
        let meta = self.meta_read();
        if let Some(epoch) = meta.get(ns.epoch_key.as_str()) {
            let mut name = String::with_capacity(ns.base.len() + table.len() + 64);
            name.push_str(&ns.base);
            name.push(':');
            name.push_str(&epoch.value);
            name.push_str(":g:");
            name.push_str(table);
            if let Some(generation) = meta.get(name.as_str()) {
                name.truncate(ns.base.len() + 1 + epoch.value.len());
                name.push_str(":r:");
                name.push_str(table);
                name.push(':');
                name.push_str(&generation.value);
                name.push(':');
                let prefix = name.len();
                let now = Instant::now();
                let serials = [epoch.serial, generation.serial];
                for (key, slot) in keys.iter().zip(out.iter_mut()) {
                    name.truncate(prefix);
                    name.push_str(key);
                    let found = self.values.get(name.as_str()).filter(|v| {
                        *v.deps == serials
                            && v.bytes.starts_with(shape.as_bytes())
                            && Self::fresh(v, &[epoch, generation], now)
                    });
                    if let Some(v) = found {
                        *slot = Some(v.bytes.to_vec());
                        hits += 1;
                        misses -= 1;
                    }
                }
            }
        }
        drop(meta);
        self.count(hits, misses);
    }

    fn count(&self, hits: u64, misses: u64) {
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
        if hits > 0 {
            metrics::counter!(crate::monitor::CACHE_EVENTS, "event" => "near_hit").increment(hits);
        }
        if misses > 0 {
            metrics::counter!(crate::monitor::CACHE_EVENTS, "event" => "near_miss")
                .increment(misses);
        }
    }

    /// Installs (or refreshes) a mirror under the log's lock; its serial.
    ///
    /// At most `cap` mirrors are kept: one is installed per memo call's counter and per
    /// tag, however small the values, so past the bound every mirror but the epochs'
    /// goes (what was resolved through them is then a miss, and is read again).
    fn install_meta(
        meta: &mut HashMap<Box<str>, Meta>,
        serial: &AtomicU64,
        cap: usize,
        name: &str,
        value: &str,
        now: Instant,
    ) -> u64 {
        match meta.get_mut(name) {
            Some(m) if &*m.value == value => {
                m.at = now;
                m.serial
            }
            _ => {
                if meta.len() >= cap && !meta.contains_key(name) {
                    meta.retain(|mirror, _| mirror.ends_with(":epoch"));
                }
                let s = serial.fetch_add(1, Ordering::Relaxed) + 1;
                meta.insert(
                    name.into(),
                    Meta {
                        value: value.into(),
                        serial: s,
                        at: now,
                    },
                );
                s
            }
        }
    }

    /// Installs what a row lookup read from Redis (the epoch and generation its
    /// script used, and the entries it found), unless something it depends on was
    /// invalidated since `start`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install_rows(
        &self,
        start: u64,
        ns: &Namespace,
        table: &str,
        epoch: &str,
        generation: &str,
        found: &[(&String, &Vec<u8>, Option<Duration>)],
        ttl: Duration,
    ) {
        let g_name = format!("{}:{epoch}:g:{table}", ns.base);
        let prefix = format!("{}:{epoch}:r:{table}:{generation}:", ns.base);
        let mut deps = vec![
            name_token(&ns.epoch_key),
            name_token(&g_name),
            table_token(ns, table),
        ];
        let names: Vec<String> = found
            .iter()
            .map(|(k, _, _)| format!("{prefix}{k}"))
            .collect();
        deps.extend(names.iter().map(|n| name_token(n)));
        let log = self.lock_log();
        if !log.allows(start, &deps) {
            drop(log);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = Instant::now();
        let mut meta = self.meta_write();
        let e = Self::install_meta(
            &mut meta,
            &self.serial,
            self.max_mirrors,
            &ns.epoch_key,
            epoch,
            now,
        );
        let g = Self::install_meta(
            &mut meta,
            &self.serial,
            self.max_mirrors,
            &g_name,
            generation,
            now,
        );
        drop(meta);
        for (name, (_, bytes, left)) in names.into_iter().zip(found) {
            let value = Value {
                bytes: bytes.as_slice().into(),
                deps: Box::new([e, g]),
                at: now,
                max_age: self.max_age(ttl, *left),
            };
            self.put(name, value);
        }
        drop(log);
    }

    /// Stores a value (a replaced one is removed first: the map reports a replacement
    /// as an eviction, and only evictions by size are counted as such).
    fn put(&self, name: String, value: Value) {
        let name: Box<str> = name.into();
        let value = Arc::new(value);
        self.values.remove(&name);
        if quick_cache::Weighter::weight(&Weigh, &name, &value) > self.largest {
            return;
        }
        self.values.insert(name, value);
        metrics::gauge!("tabula_cache_near_bytes").set(self.values.weight() as f64);
    }

    /// A versioned entry answered here: its resolved name and value.
    pub(crate) fn versioned(
        &self,
        ns: &Namespace,
        kind: &str,
        counters: &[String],
        suffix: &str,
    ) -> Option<(String, Vec<u8>)> {
        let found = self.lookup_versioned(ns, kind, counters, suffix);
        self.count(found.is_some() as u64, found.is_none() as u64);
        found
    }

    fn lookup_versioned(
        &self,
        ns: &Namespace,
        kind: &str,
        counters: &[String],
        suffix: &str,
    ) -> Option<(String, Vec<u8>)> {
        let meta = self.meta_read();
        let epoch = meta.get(ns.epoch_key.as_str())?;
        let mut deps = Vec::with_capacity(counters.len() + 1);
        deps.push(epoch);
        let mut values = Vec::with_capacity(counters.len());
        let mut counter_name = String::new();
        for counter in counters {
            counter_name.clear();
            counter_name.push_str(&ns.base);
            counter_name.push(':');
            counter_name.push_str(&epoch.value);
            counter_name.push(':');
            counter_name.push_str(counter);
            let c = meta.get(counter_name.as_str())?;
            values.push(&*c.value);
            deps.push(c);
        }
        let name = format!(
            "{}:{}:{kind}:{}:{suffix}",
            ns.base,
            epoch.value,
            values.join(",")
        );
        let value = self.values.get(name.as_str())?;
        let serials_match = value.deps.len() == deps.len()
            && value.deps.iter().zip(&deps).all(|(s, d)| *s == d.serial);
        (serials_match && Self::fresh(&value, &deps, Instant::now()))
            .then(|| (name, value.bytes.to_vec()))
    }

    /// Installs what a versioned lookup read from Redis: the epoch and counter values
    /// its script used and, if there was one, the value under the resolved name.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install_versioned(
        &self,
        start: u64,
        ns: &Namespace,
        counters: &[String],
        epoch: &str,
        values: &[String],
        name: &str,
        found: Option<&[u8]>,
        ttl: Duration,
        left: Option<Duration>,
    ) {
        if values.len() != counters.len() {
            return;
        }
        let counter_names: Vec<String> = counters
            .iter()
            .map(|c| format!("{}:{epoch}:{c}", ns.base))
            .collect();
        let mut deps = vec![name_token(&ns.epoch_key), name_token(name)];
        deps.extend(counter_names.iter().map(|n| name_token(n)));
        deps.extend(counters.iter().map(|c| counter_token(ns, c)));
        let log = self.lock_log();
        if !log.allows(start, &deps) {
            drop(log);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = Instant::now();
        let mut meta = self.meta_write();
        let mut serials = vec![Self::install_meta(
            &mut meta,
            &self.serial,
            self.max_mirrors,
            &ns.epoch_key,
            epoch,
            now,
        )];
        for (counter, value) in counter_names.iter().zip(values) {
            serials.push(Self::install_meta(
                &mut meta,
                &self.serial,
                self.max_mirrors,
                counter,
                value,
                now,
            ));
        }
        drop(meta);
        if let Some(bytes) = found {
            let value = Value {
                bytes: bytes.into(),
                deps: serials.into(),
                at: now,
                max_age: self.max_age(ttl, left),
            };
            self.put(name.to_owned(), value);
        }
        drop(log);
    }

    /// Test support: a pause between a reply and its install.
    pub(crate) fn set_hook(&self, hook: Option<FillHook>) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    pub(crate) async fn before_install(&self) {
        let hook = self.hook.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(hook) = hook {
            hook().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_refuses_what_was_invalidated_since_and_what_it_forgot() {
        let mut log = Log {
            seq: 0,
            floor: 0,
            recent: VecDeque::new(),
        };
        log.record(1);
        let start = log.seq;
        assert!(log.allows(start, &[1, 2]));
        log.record(3);
        assert!(log.allows(start, &[1, 2]));
        log.record(2);
        assert!(!log.allows(start, &[1, 2]));
        for _ in 0..LOG_CAPACITY {
            log.record(9);
        }
        assert!(!log.allows(start, &[5]), "a log that forgot must refuse");
        log.floor = log.seq + 1;
        assert!(!log.allows(log.seq, &[]));
    }

    fn ns() -> Namespace {
        Namespace::new("p:t:n".into())
    }

    fn install(near: &NearTier, key: &str, bytes: usize) {
        let start = near.begin();
        let value = vec![b'0'; bytes];
        let key = key.to_owned();
        let ttl = Duration::from_secs(60);
        near.install_rows(
            start,
            &ns(),
            "items",
            "e",
            "0",
            &[(&key, &value, None)],
            ttl,
        );
    }

    #[test]
    fn the_budget_bounds_the_bytes_held_and_replacing_is_no_eviction() {
        let near = NearTier::new(64 * 1024, None);
        for round in 0..50 {
            install(&near, &(round % 10).to_string(), 200);
        }
        assert_eq!(near.stats().evictions, 0, "{:?}", near.stats());
        for key in 0..5_000 {
            install(&near, &key.to_string(), 200);
        }
        let stats = near.stats();
        assert!(stats.bytes <= 64 * 1024, "{stats:?}");
        assert!(stats.evictions > 4_000, "{stats:?}");
        let mut out = vec![None];
        near.rows(&ns(), "items", "0", &["4999".into()], &mut out);
        assert!(out[0].is_some(), "the newest entry is held");
    }

    #[test]
    fn an_invalidation_between_request_and_reply_refuses_the_install() {
        let near = NearTier::new(1 << 20, None);
        let start = near.begin();
        near.invalidated(Some(vec![b"p:t:n:e:r:items:0:7".to_vec()]));
        let value = vec![b'0'; 20];
        let key = "7".to_owned();
        let ttl = Duration::from_secs(60);
        near.install_rows(
            start,
            &ns(),
            "items",
            "e",
            "0",
            &[(&key, &value, None)],
            ttl,
        );
        let mut out = vec![None];
        near.rows(&ns(), "items", "0", &[key], &mut out);
        assert!(out[0].is_none());
        assert_eq!(near.stats().refused, 1);
    }

    #[test]
    fn the_default_maximum_age_is_a_few_seconds_below_the_ttl() {
        assert_eq!(
            default_max_age(Duration::from_secs(300)),
            Duration::from_secs(295)
        );
        assert_eq!(
            default_max_age(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
    }
}
