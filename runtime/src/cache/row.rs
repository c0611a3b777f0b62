//! The cache protocol on the wire (scripts) and its use by [`Db`]: the read-through row
//! cache with leases, invalidation after writes, versioned keys for queries and memos.
//!
//! # Keys
//!
//! Under a namespace's base (`{prefix}:t:{namespace}`) and its current epoch `e`:
//!
//! - `{base}:{e}:r:{table}:{g}:{key}` — a row entry (16 hex digits of the model's
//!   shape, then the encoded row), `g` being the table's generation;
//! - `{base}:{e}:l:{table}:{g}:{key}` — the lease of a reader filling it;
//! - `{base}:{e}:g:{table}` — the table's generation: bumped when rows of the table
//!   changed that cannot be named (a cascade, an unknown outcome, `invalidate_table`);
//! - `{base}:{e}:v:{table}` — the table's version: bumped by every write to it (and by
//!   every cascade into it); part of the keys of cached queries (`q:`) and memos (`m:`);
//! - `{base}:epoch` — the epoch, random, replaced after an invalidation was lost.
//!
//! The scripts (in `lua/`, sharing `prelude.lua`) are the one statement of the
//! protocol; the in-process backend below follows the same rules step for step.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use super::memory::Map;
use super::{Backend, CacheService, MemValue};
use crate::monitor;

const PRELUDE: &str = include_str!("lua/prelude.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

static ROW_GET: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/row_get.lua")));
static ROW_FILL: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/row_fill.lua")));
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/invalidate.lua")));
static VERSIONED: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/versioned.lua")));

/// A pause inserted between a reader's database read and its fill — for tests that
/// need to place a write exactly there.
pub type FillHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Default)]
pub(crate) struct Hooks {
    before_fill: Mutex<Option<FillHook>>,
}

/// What a row lookup found.
pub(crate) enum Lookup {
    Hit(Vec<u8>),
    /// A miss; `Some(token)` when a lease was taken (the row may be filled), `None`
    /// when the cache failed (the row must not be filled).
    Miss(Option<String>),
}

pub(crate) fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}{:08x}", hasher.finish(), std::process::id())
}

fn millis(d: Duration) -> Vec<u8> {
    d.as_millis().to_string().into_bytes()
}

/// The in-process backend's names, the same as the scripts' (its epoch is fixed: it
/// cannot lose an invalidation).
struct MemKeys<'a>(&'a str);

impl MemKeys<'_> {
    fn base(&self) -> String {
        format!("{}:0", self.0)
    }

    fn row(&self, map: &mut Map<'_>, kind: &str, table: &str, key: &str) -> String {
        let generation = map
            .get_bytes(&format!("{}:g:{table}", self.base()))
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| "0".into());
        format!("{}:{kind}:{table}:{generation}:{key}", self.base())
    }

    fn incr(&self, map: &mut Map<'_>, name: &str) {
        let key = format!("{}:{name}", self.base());
        let next = map
            .get_bytes(&key)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok()?.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        map.set(&key, MemValue::Bytes(next.to_string().into_bytes()), None);
    }
}

impl CacheService {
    fn base(&self) -> &str {
        &self.inner.internal_prefix
    }

    /// The arguments every script starts with: the base and a fresh epoch.
    fn script_args(&self) -> (String, String) {
        (self.base().to_owned(), super::redis::fresh_epoch())
    }

    /// Installs (or with `None` removes) a hook run between a reader's database read
    /// and its fill. Test support: it makes the reader/writer race deterministic.
    #[doc(hidden)]
    pub fn set_fill_hook(&self, hook: Option<FillHook>) {
        if let Ok(mut slot) = self.inner.hooks.before_fill.lock() {
            *slot = hook;
        }
    }

    pub(crate) async fn before_fill(&self) {
        let hook = self
            .inner
            .hooks
            .before_fill
            .lock()
            .ok()
            .and_then(|h| h.clone());
        if let Some(hook) = hook {
            hook().await;
        }
    }

    fn event(&self, event: &'static str, n: u64) {
        if n > 0 {
            metrics::counter!(monitor::CACHE_EVENTS, "event" => event).increment(n);
        }
    }

    /// GET a row entry of `shape`; on a miss, take a lease.
    pub(crate) async fn row_get(&self, table: &str, key: &str, shape: &str) -> Lookup {
        let (mut values, token) = self
            .row_get_many(table, std::slice::from_ref(&key.to_owned()), shape)
            .await;
        match (values.pop().flatten(), token) {
            (Some(value), _) => Lookup::Hit(value),
            (None, token) => Lookup::Miss(token),
        }
    }

    /// Row entries of `table` at once; misses take a lease (one token for all). The
    /// token is `None` when the cache failed: nothing may be filled then.
    pub(crate) async fn row_get_many(
        &self,
        table: &str,
        keys: &[String],
        shape: &str,
    ) -> (Vec<Option<Vec<u8>>>, Option<String>) {
        let started = Instant::now();
        let token = token();
        let result = match &*self.inner.backend {
            Backend::Redis(r) => {
                let (base, fresh) = self.script_args();
                let lease = millis(self.inner.config.lease);
                let mut args: Vec<&[u8]> = vec![
                    base.as_bytes(),
                    fresh.as_bytes(),
                    table.as_bytes(),
                    token.as_bytes(),
                    &lease,
                    shape.as_bytes(),
                ];
                args.extend(keys.iter().map(|s| s.as_bytes()));
                match r
                    .script::<Vec<Option<Vec<u8>>>>(&ROW_GET, &[&self.inner.epoch_key], &args)
                    .await
                {
                    Ok(values) if values.len() == keys.len() => (values, Some(token)),
                    _ => (vec![None; keys.len()], None),
                }
            }
            Backend::Memory(m) => m.with(|map| {
                let names = MemKeys(self.base());
                let values = keys
                    .iter()
                    .map(|key| {
                        let entry = names.row(map, "r", table, key);
                        match map.get_bytes(&entry) {
                            Ok(Some(v)) if v.starts_with(shape.as_bytes()) => Some(v),
                            _ => {
                                let lease = names.row(map, "l", table, key);
                                map.set(
                                    &lease,
                                    MemValue::Bytes(token.clone().into_bytes()),
                                    Some(self.inner.config.lease),
                                );
                                None
                            }
                        }
                    })
                    .collect();
                (values, Some(token))
            }),
        };
        let hits = result.0.iter().filter(|v| v.is_some()).count() as u64;
        match result.1 {
            Some(_) => {
                self.event("hit", hits);
                self.event("miss", keys.len() as u64 - hits);
            }
            None => self.event("error", 1),
        }
        monitor::record_cache(
            "row_get",
            started,
            if result.1.is_some() { "ok" } else { "error" },
        );
        result
    }

    /// Fills the entries of `table` whose leases still hold `token`; returns how many
    /// were filled. Values over [`CacheConfig::max_value_bytes`](super::CacheConfig)
    /// are not cached. A failed fill is a miss, nothing more.
    pub(crate) async fn row_fill(
        &self,
        table: &str,
        token: &str,
        entries: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> u64 {
        let limit = self.inner.config.max_value_bytes;
        let too_large = entries.iter().filter(|(_, v)| v.len() > limit).count() as u64;
        self.event("too_large", too_large);
        let entries: Vec<&(String, Vec<u8>)> =
            entries.iter().filter(|(_, v)| v.len() <= limit).collect();
        if entries.is_empty() {
            return 0;
        }
        self.before_fill().await;
        let started = Instant::now();
        let filled = match &*self.inner.backend {
            Backend::Redis(r) => {
                let (base, fresh) = self.script_args();
                let ttl_ms = millis(ttl);
                let mut args: Vec<&[u8]> = vec![
                    base.as_bytes(),
                    fresh.as_bytes(),
                    table.as_bytes(),
                    token.as_bytes(),
                    &ttl_ms,
                ];
                for (key, value) in &entries {
                    args.push(key.as_bytes());
                    args.push(value);
                }
                r.script::<u64>(&ROW_FILL, &[&self.inner.epoch_key], &args)
                    .await
                    .unwrap_or(0)
            }
            Backend::Memory(m) => m.with(|map| {
                let names = MemKeys(self.base());
                let mut filled = 0;
                for (key, value) in &entries {
                    let lease = names.row(map, "l", table, key);
                    if map.get_bytes(&lease).ok().flatten().as_deref() == Some(token.as_bytes()) {
                        let entry = names.row(map, "r", table, key);
                        map.set(&entry, MemValue::Bytes(value.clone()), Some(ttl));
                        map.remove(&lease);
                        filled += 1;
                    }
                }
                filled
            }),
        };
        self.event("fill", filled);
        self.event("fill_rejected", entries.len() as u64 - filled);
        monitor::record_cache("row_fill", started, "ok");
        filled
    }

    /// Bumps `counters` and table `generations`, and deletes `rows` (table, key) with
    /// their leases. `false` when Redis could not be told: the backend is then dirty,
    /// and the lost invalidation is delivered as a new epoch as soon as Redis answers
    /// (see `redis.rs`).
    pub(crate) async fn invalidate(
        &self,
        counters: &[String],
        generations: &[String],
        rows: &[(String, String)],
    ) -> bool {
        if counters.is_empty() && generations.is_empty() && rows.is_empty() {
            return true;
        }
        let started = Instant::now();
        let ok = match &*self.inner.backend {
            Backend::Redis(r) => {
                let (base, fresh) = self.script_args();
                let (n, g) = (counters.len().to_string(), generations.len().to_string());
                let mut args: Vec<&[u8]> = vec![base.as_bytes(), fresh.as_bytes(), n.as_bytes()];
                args.extend(counters.iter().map(|c| c.as_bytes()));
                args.push(g.as_bytes());
                args.extend(generations.iter().map(|c| c.as_bytes()));
                for (table, key) in rows {
                    args.push(table.as_bytes());
                    args.push(key.as_bytes());
                }
                let mut delivered = r
                    .script::<i64>(&INVALIDATE, &[&self.inner.epoch_key], &args)
                    .await;
                if matches!(&delivered, Err(fault) if fault.is_broken_connection()) {
                    // A connection broken before this call (Redis restarted): deliver on
                    // a new one rather than flush every entry for it.
                    delivered = r
                        .script::<i64>(&INVALIDATE, &[&self.inner.epoch_key], &args)
                        .await;
                }
                let delivered = delivered.is_ok();
                if !delivered {
                    r.mark_dirty();
                }
                delivered
            }
            Backend::Memory(m) => m.with(|map| {
                let names = MemKeys(self.base());
                for counter in counters {
                    names.incr(map, counter);
                }
                for table in generations {
                    names.incr(map, &format!("g:{table}"));
                }
                for (table, key) in rows {
                    let entry = names.row(map, "r", table, key);
                    let lease = names.row(map, "l", table, key);
                    map.remove(&entry);
                    map.remove(&lease);
                }
                true
            }),
        };
        if !ok {
            self.event("invalidation_failed", 1);
            tracing::warn!(
                counters = counters.len(),
                rows = rows.len(),
                "cache invalidation not delivered; a new epoch replaces it when redis answers"
            );
        }
        monitor::record_cache("invalidate", started, if ok { "ok" } else { "error" });
        ok
    }

    /// Turns what writes touched (the seam `db` reports through, see [`Touched`])
    /// into key operations: the version of every table written and of every table a
    /// write cascades to; the generation of every table whose changed rows cannot be
    /// named (cascades, unknown outcomes); the entries of the rows named.
    pub(crate) async fn invalidate_writes(&self, writes: &[Touched]) -> bool {
        let (counters, generations) = touched_tables(writes);
        let rows: Vec<(String, String)> = writes
            .iter()
            .flat_map(|w| w.keys.iter().map(|k| (w.table.clone(), k.clone())))
            .collect();
        self.invalidate(&counters, &generations, &rows).await
    }

    /// The versions alone (for a cache that holds only memos of these tables).
    pub(crate) async fn invalidate_tables(&self, writes: &[Touched]) -> bool {
        let (counters, _) = touched_tables(writes);
        self.invalidate(&counters, &[], &[]).await
    }

    /// Resolves the versioned key `kind:<counters>:suffix` and GETs (or with `delete`,
    /// DELs) it. `None` when the cache failed.
    pub(crate) async fn versioned(
        &self,
        kind: &str,
        counters: &[String],
        suffix: &str,
        delete: bool,
    ) -> Option<(String, Option<Vec<u8>>)> {
        let started = Instant::now();
        let result = match &*self.inner.backend {
            Backend::Redis(r) => {
                let (base, fresh) = self.script_args();
                let n = counters.len().to_string();
                let mode: &[u8] = if delete { b"del" } else { b"get" };
                let mut args: Vec<&[u8]> = vec![
                    base.as_bytes(),
                    fresh.as_bytes(),
                    mode,
                    kind.as_bytes(),
                    n.as_bytes(),
                ];
                args.extend(counters.iter().map(|c| c.as_bytes()));
                args.push(suffix.as_bytes());
                if delete {
                    r.script::<(String, i64)>(&VERSIONED, &[&self.inner.epoch_key], &args)
                        .await
                        .ok()
                        .map(|(k, _)| (k, None))
                } else {
                    r.script::<(String, Option<Vec<u8>>)>(
                        &VERSIONED,
                        &[&self.inner.epoch_key],
                        &args,
                    )
                    .await
                    .ok()
                }
            }
            Backend::Memory(m) => Some(m.with(|map| {
                let names = MemKeys(self.base());
                let parts: Vec<String> = counters
                    .iter()
                    .map(|c| {
                        map.get_bytes(&format!("{}:{c}", names.base()))
                            .ok()
                            .flatten()
                            .and_then(|b| String::from_utf8(b).ok())
                            .unwrap_or_else(|| "0".into())
                    })
                    .collect();
                let key = format!("{}:{kind}:{}:{suffix}", names.base(), parts.join(","));
                if delete {
                    map.remove(&key);
                    (key, None)
                } else {
                    let value = map.get_bytes(&key).ok().flatten();
                    (key, value)
                }
            })),
        };
        let event = match &result {
            Some((_, Some(_))) => "hit",
            Some((_, None)) if !delete => "miss",
            Some(_) => "delete",
            None => "error",
        };
        self.event(event, 1);
        monitor::record_cache(
            "versioned",
            started,
            if result.is_some() { "ok" } else { "error" },
        );
        result
    }

    /// Stores a value under a key resolved by [`versioned`](Self::versioned). Safe
    /// without a lease: a write meanwhile bumped a counter, so this key is already one
    /// no reader will ask for. Values over the size limit are not cached.
    pub(crate) async fn versioned_fill(&self, key: &str, value: &[u8], ttl: Duration) {
        if value.len() > self.inner.config.max_value_bytes {
            self.event("too_large", 1);
            return;
        }
        match &*self.inner.backend {
            Backend::Redis(r) => {
                let _ = r
                    .call(async |c| {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(value)
                            .arg("PX")
                            .arg(ttl.as_millis() as u64)
                            .query_async::<()>(c)
                            .await
                    })
                    .await;
            }
            Backend::Memory(m) => {
                m.with(|map| map.set(key, MemValue::Bytes(value.to_vec()), Some(ttl)))
            }
        }
        self.event("fill", 1);
    }

    /// Bumps counters only (e.g. clearing every entry of a `#[cached]` function).
    pub(crate) async fn bump(&self, counters: &[String]) -> bool {
        self.invalidate(counters, &[], &[]).await
    }
}

/// What one write touched, as the cache is told: never cache keys, only names.
#[derive(Debug, Clone)]
pub(crate) struct Touched {
    /// The table written to ([`TableMeta::qualified_name`](crate::TableMeta::qualified_name)).
    pub(crate) table: String,
    /// The keys (as JSON text) of the rows it changed.
    pub(crate) keys: Vec<String>,
    /// Rows of the table changed that cannot be named.
    pub(crate) every_row: bool,
    /// The tables its foreign-key actions can change (their rows cannot be named).
    pub(crate) cascade_to: Vec<String>,
}

/// The version counters and generations writes touch, cascades included.
fn touched_tables(writes: &[Touched]) -> (Vec<String>, Vec<String>) {
    let mut counters: Vec<String> = Vec::new();
    let mut generations: Vec<String> = Vec::new();
    let add = |list: &mut Vec<String>, item: String| {
        if !list.contains(&item) {
            list.push(item);
        }
    };
    for write in writes {
        add(&mut counters, format!("v:{}", write.table));
        if write.every_row {
            add(&mut generations, write.table.clone());
        }
        for dependent in &write.cascade_to {
            add(&mut counters, format!("v:{dependent}"));
            add(&mut generations, dependent.clone());
        }
    }
    (counters, generations)
}

/// `v:<table>`: the version counter of a table.
pub(crate) fn table_counter(meta: &crate::TableMeta) -> String {
    format!("v:{}", meta.qualified_name())
}
