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
//! The rules of the protocol are stated once, in `backend.rs`; each backend implements
//! them (Redis in `lua/`, the in-process backend in `memory.rs`). This file is the
//! service's side: tokens, size limits, metrics, and what a failure means.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::CacheService;
use super::backend::{RowFill, RowGet, Stale, Versioned};
use crate::monitor;

/// A pause inserted between a reader's database read and its fill — for tests that
/// need to place a write exactly there.
pub type FillHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Default)]
pub(crate) struct Hooks {
    before_fill: Mutex<Option<FillHook>>,
}

/// A snapshot of the registry of cached tables (rule 8 of `backend.rs`).
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) tables: Arc<std::collections::HashSet<String>>,
    /// When it was asked for (before the request left).
    pub(crate) asked: Instant,
    /// The tier's [`renewals`](super::backend::Backend::renewals) before it was asked:
    /// a server restarted (perhaps without the registry's mark) or an invalidation
    /// lost since, and it is not trusted.
    pub(crate) renewals: u64,
}

/// How entries of one kind are cached: their TTL, whether a near tier may answer, and
/// for a user scope's reads, whose copies (rule 6 of `backend.rs`).
#[derive(Debug, Clone)]
pub(crate) struct RowCache {
    /// The table as the database path's metrics name it (see [`crate::monitor`]): a
    /// read the cache answers is recorded under the same label.
    pub(crate) label: &'static str,
    pub(crate) ttl: Duration,
    pub(crate) near: bool,
    pub(crate) scope: Option<super::backend::Scoped>,
}

impl RowCache {
    /// Shared entries with this TTL and near-tier choice.
    pub(crate) fn shared(label: &'static str, ttl: Duration, near: bool) -> RowCache {
        RowCache {
            label,
            ttl,
            near,
            scope: None,
        }
    }
}

/// What a unique value's lookup found (see [`CacheService::unique_get`]).
pub(crate) enum UniqueLookup {
    /// The mapping's entry and the row entry it leads to.
    Both(Vec<u8>, Vec<u8>),
    /// The mapping's entry; the row's is missing (`Some(token)`: its lease was taken).
    Mapping(Vec<u8>, Option<String>),
    /// No mapping (`Some(token)`: its lease was taken; `None`: the cache failed).
    Miss(Option<String>),
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

impl CacheService {
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

    fn event(&self, event: &'static str, table: &str, n: u64) {
        if n > 0 {
            metrics::counter!(
                monitor::CACHE_EVENTS,
                "event" => event,
                "table" => table.to_owned()
            )
            .increment(n);
        }
    }

    /// GET a row entry of `shape`; on a miss, take a lease.
    pub(crate) async fn row_get(
        &self,
        table: &str,
        key: &str,
        shape: &str,
        how: &RowCache,
    ) -> Lookup {
        self.row_get_counted(table, key, shape, how, true).await
    }

    /// [`row_get`](Self::row_get), counted in the metrics or (the staleness check's
    /// second look) not.
    pub(crate) async fn row_get_counted(
        &self,
        table: &str,
        key: &str,
        shape: &str,
        how: &RowCache,
        count: bool,
    ) -> Lookup {
        let (mut values, token) = self
            .row_get_many_counted(
                table,
                std::slice::from_ref(&key.to_owned()),
                shape,
                how,
                count,
            )
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
        how: &RowCache,
    ) -> (Vec<Option<Vec<u8>>>, Option<String>) {
        self.row_get_many_counted(table, keys, shape, how, true)
            .await
    }

    async fn row_get_many_counted(
        &self,
        table: &str,
        keys: &[String],
        shape: &str,
        how: &RowCache,
        count: bool,
    ) -> (Vec<Option<Vec<u8>>>, Option<String>) {
        let started = Instant::now();
        let token = token();
        let answered_near = std::sync::atomic::AtomicBool::new(false);
        let get = RowGet {
            table,
            token: &token,
            lease: self.inner.config.lease,
            shape,
            keys,
            ttl: how.ttl,
            near: how.near && how.scope.is_none(),
            answered_near: &answered_near,
            scope: how.scope.as_ref(),
        };
        let result = match self.inner.backend.row_get(&self.inner.ns, get).await {
            Ok(values) => (values, Some(token)),
            Err(_) => (vec![None; keys.len()], None),
        };
        let hits = result.0.iter().filter(|v| v.is_some()).count() as u64;
        if !count {
            return result;
        }
        match result.1 {
            Some(_) => {
                self.event("hit", table, hits);
                self.event("miss", table, keys.len() as u64 - hits);
                // Every key answered: a read the database never saw.
                if hits == keys.len() as u64 && hits > 0 {
                    let near = answered_near.load(std::sync::atomic::Ordering::Relaxed);
                    let source = if near { "near" } else { "cache" };
                    monitor::record_cache_answer("read", how.label, started, source);
                }
            }
            None => self.event("error", table, 1),
        }
        monitor::record_cache(
            "row_get",
            started,
            if result.1.is_some() { "ok" } else { "error" },
        );
        result
    }

    /// A unique value's mapping and the row it leads to, in one round trip (rule 7 of
    /// `backend.rs`).
    pub(crate) async fn unique_get(
        &self,
        table: &str,
        mapping: &str,
        shape: &str,
        how: &RowCache,
    ) -> UniqueLookup {
        use super::backend::UniqueFound;
        let started = Instant::now();
        let token = token();
        let answered_near = std::sync::atomic::AtomicBool::new(false);
        let keys = [mapping.to_owned()];
        let get = RowGet {
            table,
            token: &token,
            lease: self.inner.config.lease,
            shape,
            keys: &keys,
            ttl: how.ttl,
            near: how.near,
            answered_near: &answered_near,
            scope: None,
        };
        let found = self.inner.backend.unique_get(&self.inner.ns, get).await;
        monitor::record_cache(
            "unique_get",
            started,
            if found.is_ok() { "ok" } else { "error" },
        );
        match found {
            Ok(UniqueFound::Both(mapping, row)) => {
                self.event("hit", table, 2);
                let near = answered_near.load(std::sync::atomic::Ordering::Relaxed);
                let source = if near { "near" } else { "cache" };
                monitor::record_cache_answer("read", how.label, started, source);
                UniqueLookup::Both(mapping, row)
            }
            Ok(UniqueFound::Mapping(mapping)) => {
                self.event("hit", table, 1);
                self.event("miss", table, 1);
                UniqueLookup::Mapping(mapping, Some(token))
            }
            Ok(UniqueFound::Nothing) => {
                self.event("miss", table, 1);
                UniqueLookup::Miss(Some(token))
            }
            Err(_) => {
                self.event("error", table, 1);
                UniqueLookup::Miss(None)
            }
        }
    }

    /// Fills the entries of `table` whose leases still hold `token`; returns how many
    /// were filled. Values over [`CacheConfig::max_value_bytes`](super::CacheConfig)
    /// are not cached. A failed fill is a miss, nothing more.
    pub(crate) async fn row_fill(
        &self,
        table: &str,
        token: &str,
        entries: &[(String, Vec<u8>)],
        how: &RowCache,
    ) -> u64 {
        let ttl = how.ttl.min(Duration::from_secs(super::MAX_TTL_SECONDS));
        let limit = self.inner.config.max_value_bytes;
        let too_large = entries.iter().filter(|(_, v)| v.len() > limit).count() as u64;
        self.event("too_large", table, too_large);
        let entries: Vec<&(String, Vec<u8>)> =
            entries.iter().filter(|(_, v)| v.len() <= limit).collect();
        if entries.is_empty() {
            return 0;
        }
        self.before_fill().await;
        let started = Instant::now();
        let fill = RowFill {
            table,
            token,
            ttl,
            entries: &entries,
            scope: how.scope.as_ref(),
        };
        let filled = self
            .inner
            .backend
            .row_fill(&self.inner.ns, fill)
            .await
            .unwrap_or(0);
        self.event("fill", table, filled);
        self.event("fill_rejected", table, entries.len() as u64 - filled);
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
        let renewals = self.inner.backend.renewals();
        let stale = Stale {
            counters,
            generations,
            rows,
        };
        let told = self.inner.backend.invalidate(&self.inner.ns, stale).await;
        let ok = told.is_ok();
        // The registry as of this step: a snapshot trusted for the window from
        // `started`, before the request left (rule 8 of `backend.rs`).
        if let Ok(Some(tables)) = told
            && let Ok(mut known) = self.inner.registry.lock()
        {
            *known = Some(Registry {
                tables: Arc::new(tables.into_iter().collect()),
                asked: started,
                renewals,
            });
        }
        if !ok {
            self.event("invalidation_failed", "-", 1);
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
        let Some(writes) = self.registered_only(writes) else {
            return true;
        };
        let (counters, generations) = touched_tables(&writes);
        let rows: Vec<(String, String)> = writes
            .iter()
            .flat_map(|w| w.keys.iter().map(|k| (w.table.clone(), k.clone())))
            .collect();
        self.invalidate(&counters, &generations, &rows).await
    }

    /// The versions alone (for a cache that holds only memos of these tables).
    pub(crate) async fn invalidate_tables(&self, writes: &[Touched]) -> bool {
        let Some(writes) = self.registered_only(writes) else {
            return true;
        };
        let (counters, _) = touched_tables(&writes);
        self.invalidate(&counters, &[], &[]).await
    }

    /// What of `writes` this cache must be told (rule 8 of `backend.rs`): without a
    /// registry window, or without a snapshot of the registry younger than it, all of
    /// it; otherwise only the tables registered — `None` when that is nothing, and
    /// the write costs no round trip.
    fn registered_only<'w>(
        &self,
        writes: &'w [Touched],
    ) -> Option<std::borrow::Cow<'w, [Touched]>> {
        let window = self.registry_window();
        let snapshot = window.and_then(|window| {
            let known = self.inner.registry.lock().ok()?;
            let known = known.as_ref()?;
            let current =
                known.asked.elapsed() < window && known.renewals == self.inner.backend.renewals();
            current.then(|| known.tables.clone())
        });
        // Without a window (or a snapshot young enough), the writes as they are: no
        // copy on the write path.
        let Some(tables) = snapshot else {
            return Some(std::borrow::Cow::Borrowed(writes));
        };
        let mut kept = Vec::new();
        for write in writes {
            let cascade_to: Vec<String> = write
                .cascade_to
                .iter()
                .filter(|t| tables.contains(*t))
                .cloned()
                .collect();
            if tables.contains(&write.table) {
                kept.push(Touched {
                    cascade_to,
                    ..write.clone()
                });
            } else if !cascade_to.is_empty() {
                kept.push(Touched {
                    table: write.table.clone(),
                    keys: Vec::new(),
                    every_row: false,
                    cascade_to,
                });
            }
        }
        if kept.is_empty() {
            self.event("invalidation_skipped", "-", 1);
            return None;
        }
        Some(std::borrow::Cow::Owned(kept))
    }

    /// The registry window, for a shared tier configured with one.
    fn registry_window(&self) -> Option<Duration> {
        self.inner
            .config
            .registry_window
            .filter(|_| self.inner.backend.is_shared())
    }

    /// Resolves the versioned key `kind:<counters>:suffix` and GETs (or with `delete`,
    /// DELs) it. `None` when the cache failed.
    pub(crate) async fn versioned(
        &self,
        kind: &str,
        counters: &[String],
        suffix: &str,
        delete: bool,
        how: &RowCache,
    ) -> Option<(String, Option<Vec<u8>>)> {
        self.versioned_counted(kind, counters, suffix, delete, how, true)
            .await
    }

    /// [`versioned`](Self::versioned) looking again for what a caller already counted
    /// as a miss (single flight's second look): not counted twice.
    pub(crate) async fn versioned_again(
        &self,
        kind: &str,
        counters: &[String],
        suffix: &str,
        how: &RowCache,
    ) -> Option<(String, Option<Vec<u8>>)> {
        self.versioned_counted(kind, counters, suffix, false, how, false)
            .await
    }

    async fn versioned_counted(
        &self,
        kind: &str,
        counters: &[String],
        suffix: &str,
        delete: bool,
        how: &RowCache,
        count: bool,
    ) -> Option<(String, Option<Vec<u8>>)> {
        let started = Instant::now();
        // The key holds the counters' values; their names go into it too, hashed, so
        // two entries under different counters (another tag, another table) never
        // share a key when the values happen to be equal.
        let suffix = format!("{suffix}#{}", counter_names_hash(counters));
        let name = Versioned {
            kind,
            counters,
            suffix: &suffix,
            ttl: how.ttl,
            near: how.near,
        };
        let found = self
            .inner
            .backend
            .versioned(&self.inner.ns, name, delete)
            .await;
        let event = match &found {
            Ok((_, Some(_), _)) => "hit",
            Ok((_, None, _)) if !delete => "miss",
            Ok(_) => "delete",
            Err(_) => "error",
        };
        let ok = found.is_ok();
        // A miss that may not be filled (a table registered too recently, rule 8):
        // answered as nothing to fill.
        let result = match found {
            Ok((key, value, fill)) if fill || delete || value.is_some() => Some((key, value)),
            _ => None,
        };
        if count {
            self.event(event, counters_label(counters), 1);
        }
        monitor::record_cache("versioned", started, if ok { "ok" } else { "error" });
        result
    }

    /// Stores a value under a key resolved by [`versioned`](Self::versioned). Safe
    /// without a lease: a write meanwhile bumped a counter, so this key is already one
    /// no reader will ask for. Values over the size limit are not cached.
    pub(crate) async fn versioned_fill(&self, key: &str, value: &[u8], ttl: Duration, label: &str) {
        let ttl = ttl.min(Duration::from_secs(super::MAX_TTL_SECONDS));
        if value.len() > self.inner.config.max_value_bytes {
            self.event("too_large", label, 1);
            return;
        }
        if value.is_empty() {
            return; // an empty value reads as a miss (see `lua/versioned.lua`)
        }
        let stored = self.inner.backend.put(key, value.to_vec(), Some(ttl)).await;
        if stored.is_err() {
            self.event("error", label, 1);
            return;
        }
        self.event("fill", label, 1);
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

/// FNV-1a over the counter names, in order (16 hex digits).
fn counter_names_hash(counters: &[String]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for name in counters {
        for byte in name.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// The `table` label of a versioned entry: its first counter's table or function.
fn counters_label(counters: &[String]) -> &str {
    counters.first().map_or("-", |first| {
        first
            .strip_prefix("v:")
            .or_else(|| first.strip_prefix("mv:"))
            .unwrap_or(first)
    })
}
