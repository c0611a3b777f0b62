//! Caching: the [`CacheService`] (typed values, lists, sets, hashes with TTLs), the
//!  read-through row cache behind [`Db::read`](crate::Db::read),
//! cached queries and `#[cached]` functions.
//!
//! # The contract
//!
//! With Redis reachable, a read that starts after a write returned `Ok` never sees the
//! value from before the write, from any process:
//!
//! - Writes invalidate after their statement (after COMMIT inside a transaction, and
//!   not at all after a rollback), using the keys the statement itself returned, and
//!   the write with its invalidation runs to completion even if the caller's future
//!   is dropped half-way. A write whose outcome is unknown is invalidated at once and
//!   again when the database answers (see [`crate::db`]).
//! - A reader that misses takes a *lease* (a random token) in the same round trip as
//!   its GET, reads PostgreSQL, and fills only if its lease still stands — one Lua step
//!   on the server. An invalidation deletes the lease, so a reader that raced a writer
//!   drops its fill instead of caching the old row (Facebook's memcache leases).
//! - Query results and `#[cached]` results live under keys that contain per-table
//!   version counters; every write to a table bumps its counter, which invalidates all
//!   of them at once with no KEYS or SCAN.
//! - Foreign keys are followed: a write to a table also bumps the versions and the
//!   row *generation* of every table its `ON DELETE` / `ON UPDATE` actions (`CASCADE`,
//!   `SET NULL`, `SET DEFAULT`) can change, transitively, read from the catalog on
//!   first need. Triggers and raw SQL cannot be seen: call
//!   [`Db::invalidate`](crate::Db::invalidate) or
//!   [`Db::invalidate_table`](crate::Db::invalidate_table) after them.
//! - Rows are encoded by code generated over the model's columns (see
//!   [`crate::table::CacheCodec`]), never by the model's serde attributes; entries
//!   carry the hash of the model's shape, and an entry written by another build of the
//!   struct is a miss, never decoded.
//! - A miss caused by a cache error never fills; a fill larger than
//!   [`CacheConfig::max_value_bytes`] is skipped.
//! - An absence found by key is cached like a row (a *negative entry*: the model's
//!   shape and a hash of the row's name), under the same lease, for keys whose equality
//!   is exact (integers, `uuid`,
//!   `bool`): every write that can make the row exist names it (a create, upsert,
//!   restore), and `insert_many`, whose keys the database generates, drops the table's
//!   row generation. An absence found by a unique finder lives under the table's
//!   version: any write to the table drops it, whatever spelling it wrote.
//! - Staleness is opt-in and bounded, for memos and cached queries only: an entry with
//!   a `stale` window is served up to `ttl + stale` after it was computed while one
//!   caller refreshes it, and never after an invalidation (see `fresh.rs`). Tags are
//!   version counters like tables': [`CacheService::invalidate_tag`] drops every entry
//!   carrying one.
//!
//! # Namespaces
//!
//! Tabula's entries live under `{prefix}:t:{namespace}`: by default the namespace is the
//! identity of the database (its cluster's system identifier, name and oid, read at
//! connect), so two databases — tenants, staging and production, two test runs — never
//! share an entry on one Redis; [`CacheConfig::namespace`] (or
//! `TABULA_CACHE_NAMESPACE`) sets it explicitly. The key-value API of
//! [`CacheService`] lives under `{prefix}:u:`, apart from Tabula's own keys: no user
//! key can read or delete them. See the `cache/row.rs` source docs for the key layout.
//!
//! # Outages, and the exact staleness bound
//!
//! Every Redis call has a deadline ([`CacheConfig::deadline`], 50 ms by default). After
//! [`CacheConfig::failure_threshold`] consecutive failures a circuit breaker skips
//! Redis and lets one probe through per [`CacheConfig::probe_interval`]. Meanwhile a
//! read costs exactly what an uncached read costs (one query), writes succeed, and no
//! cache error reaches the caller of `Db`. A failed or slow GET or fill is a miss and
//! nothing more.
//!
//! An invalidation that could not be delivered is never dropped: the process becomes
//! *dirty* and a background probe tries Redis every probe interval; the first time it
//! answers, the *epoch* of every namespace the process used is replaced by a fresh
//! random value, orphaning every entry written before, in every process. Epochs are
//! random and set on first use, so after Redis loses its data (a restart without
//! persistence, `FLUSHALL`) no epoch comes back to a value an old entry was written
//! under. So, exactly: **a read may return a value older than a write that returned
//! `Ok` only if that write's invalidation was lost, and only until one probe interval
//! plus one deadline after Redis answers the writing process again** — whatever the
//! writer does meanwhile — **or, if the writing process dies before that, until the
//! entry's TTL.** Measured by the two-process torture test in `tests/torture.rs`
//! (Redis frozen 1 s mid-run, 100 ms probe interval): 0 stale reads out of about
//! 10,000 checked, inside or outside that window.
//!
//! Redis 7 or later (the protocol's scripts declare themselves with a Redis 7
//! shebang). On one Redis (with replicas if you like), a protocol step is one script
//! that builds its keys on the server from the epoch. On a Redis Cluster
//! ([`CacheService::redis_cluster`]) a script may touch only keys it declares, in one
//! slot: there a step is two — the namespace's head (epoch, generations, counters), then
//! each row's key, named from what the head answered — with the same guarantees (see
//! `cluster.rs` and the README's "Scaling out").
//!
//! # Which cache
//!
//! [`CacheService::redis`] is shared by every process on that Redis.
//! [`CacheService::in_memory`] is correct in one process only — nothing it holds is
//! seen or invalidated by another — so it is never a silent default:
//! [`Db::connect_from_env`](crate::Db::connect_from_env) uses Redis when `REDIS_URL`
//! is set, an in-process cache only when `TABULA_CACHE=memory`, and no cache
//! otherwise, and logs which.
//!
//! # The near tier
//!
//! [`CacheConfig::near`] puts an in-process tier in front of Redis: the row entries,
//! unique-finder mappings, cached query results and `#[cached]` results this process
//! read from Redis are mirrored locally (within a memory budget, evicted by size), and
//! a hit costs about a microsecond instead of a round trip. It stays coherent through
//! Redis itself: the connection speaks RESP3 with `CLIENT TRACKING ON BCAST PREFIX
//! {prefix}:t:`, so every change under Tabula's keys — by any process — is pushed to
//! it, and the push evicts the local copy. (Default tracking would be cheaper, but Redis
//! 7 does not track keys a Lua script reads without declaring them, and the protocol's
//! scripts resolve names on the server.) How each hazard is closed:
//!
//! - **The fill race.** A reply can carry a value read *before* a change whose push is
//!   handled *before* the reply is installed. Every invalidation is numbered and
//!   logged; a reply is installed only if nothing it depends on (its entry, the epoch,
//!   the table's generation or version counters it was resolved through) was logged
//!   after its request was sent.
//! - **This process's writes** evict their local entries before the write returns (and
//!   again after Redis answered): read-your-writes needs no push.
//! - **A lost connection** (killed, reset, timed out, replaced, or gone with the
//!   runtime that drove it) may have lost pushes: the tier is flushed, and replies in
//!   flight are refused. Each runtime reads through its own connection, and the tier
//!   answers a runtime only while *its* connection has tracking on.
//! - **A silent Redis** (paused, cut off without a reset): the tier answers only while
//!   Redis answered this runtime's connection within the last
//!   [`CacheConfig::deadline`]. A writer whose invalidation cannot be delivered
//!   returns only after its own deadline — so give every process the same deadline —
//!   and by then the tier is already asking Redis (and so PostgreSQL). A process that
//!   reads less often than once a deadline therefore asks Redis each time (the answer
//!   renews the tier); the tier pays off exactly where reads are frequent.
//! - **A Redis that cannot take writes** (out of memory, a failing save, a replica):
//!   the protocol's scripts declare that they write (a Redis 7 shebang), so Redis
//!   refuses them outright, and such errors count as an outage — reads go to
//!   PostgreSQL rather than to entries whose invalidations Redis is refusing.
//! - **A Redis restarted from a snapshot, or failed over**: a connection to a server
//!   with another `run_id` than the last one seen replaces every epoch first (as after
//!   a lost invalidation), so entries restored from before the restart are orphaned.
//! - **Another cache in this process** over the same Redis prefix: a write through any
//!   of them evicts every near tier of the process before it returns.
//! - **A push lost unnoticed** (which TCP should never allow): no value is served
//!   longer than [`CacheConfig::near_max_age`] (default: TTL − 5 s) after it, and the
//!   mirrors it was resolved through, were read from Redis, nor past its Redis TTL.
//!
//! So, exactly: **a near hit may return a value older than a write that returned `Ok`
//! in another process until that write's invalidation push has been read by this
//! process** — the time for Redis to send it and for this process's runtime to run the
//! connection that receives it. On an idle loopback the push usually arrives before the
//! write returns (p50 0.5 µs after it, p99 under 1 µs, worst of 10,000 6.5 µs —
//! `benches/near.rs`; an earlier run: p99 43 µs, worst 5 ms); on a
//! loaded 2-core machine an outside test measured reads started right after another
//! process's write returned seeing the old row in 3% of cases, for up to 9 ms. Beyond
//! that, the Redis tier's bound above holds (a lost invalidation arrives as a new
//! epoch, whose push flushes the tier), and a process cut off from Redis while the
//! writer is not serves its tier for at most one deadline. In the writing process, and
//! in every cache of it, there is no window. Not seen, and not covered: `SWAPDB` and
//! `DEBUG RELOAD` (flush Redis, or restart the processes, after them). Pushes also
//! arrive for this process's own script writes (`NOLOOP` does not cover scripts): they
//! cost traffic, never correctness.
//!
//! Models opt out with `#[table(cache(ttl = N, near = false))]`;
//! [`CacheService::near_stats`] reports hits, misses, evictions, invalidations, flushes
//! and bytes (also as metrics: `tabula_cache_events_total{event="near_hit" |
//! "near_miss" | "near_eviction" | "near_flush"}` and the gauge
//! `tabula_cache_near_bytes`).

pub(crate) mod backend;
#[cfg(feature = "cache")]
mod breaker;
#[cfg(feature = "cache")]
mod cluster;
pub(crate) mod fresh;
mod key;
pub(crate) mod memo;
mod memory;
#[cfg(feature = "cache")]
mod near;
#[cfg(feature = "cache")]
mod redis;
pub(crate) mod row;
mod verify;

pub use verify::VerifyStats;

pub use row::FillHook;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use self::backend::{Backend, Namespace};
use self::memory::MemoryBackend;
#[cfg(feature = "cache")]
use self::redis::RedisBackend;
use crate::error::{Error, Result};
use crate::monitor;

/// How the cache behaves.
///
/// ```
/// let config = tabula::cache::CacheConfig::default().prefix("myapp").deadline(std::time::Duration::from_millis(20));
/// assert_eq!(config.prefix, "myapp");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Prepended (with `:`) to every key, so applications can share a Redis.
    /// Letters, digits, `_`, `-` and `.` only. Default `tabula`.
    pub prefix: String,
    /// Deadline of every Redis call. Default 50 ms.
    pub deadline: Duration,
    /// Consecutive failures that open the circuit breaker. Default 3.
    pub failure_threshold: u32,
    /// How often an open breaker lets one probe through. Default 1 s.
    pub probe_interval: Duration,
    /// How long a reader's lease lives (it must cover one database read). Default 5 s.
    pub lease: Duration,
    /// The namespace of Tabula's entries (rows, queries, memos) under the prefix.
    /// Default `None`: the identity of the database the [`Db`](crate::Db) is connected
    /// to (its cluster's system identifier and the database's name and oid, read once
    /// at connect), so two databases on one Redis never share an entry. Set it to share
    /// entries deliberately, or to separate two handles on one database. From the
    /// environment: `TABULA_CACHE_NAMESPACE`.
    pub namespace: Option<String>,
    /// Values larger than this are not cached (counted as `too_large`), and the
    /// key-value API refuses them with [`Error::Validation`]. Default 1 MiB.
    pub max_value_bytes: usize,
    /// The memory budget, in bytes, of a *near tier*: an in-process mirror of the row
    /// entries, unique-finder mappings, cached queries and `#[cached]` results this
    /// process read from Redis, kept coherent by Redis's invalidation pushes (RESP3
    /// `CLIENT TRACKING`). A hit costs a hash lookup instead of a
    /// round trip. Default `None` (no near tier). See the [module docs](self) for its
    /// staleness bound; a model opts out with `#[table(cache(ttl = N, near = false))]`.
    /// From the environment: `TABULA_CACHE_NEAR` (bytes). Only for Redis caches.
    pub near: Option<u64>,
    /// The longest a near-tier value is served without asking Redis, however quiet
    /// the invalidation channel: a cap on staleness should a push ever be lost without
    /// the connection noticing. Default `None`: a few seconds below the entry's TTL
    /// (TTL − 5 s, at least half the TTL); a smaller value given here wins.
    pub near_max_age: Option<Duration>,
    /// For a `rediss://` URL: a PEM file of the root certificates to trust instead of
    /// the platform's (the `tls` feature).
    pub tls_root_cert: Option<std::path::PathBuf>,
    /// The fraction of row-cache hits (0 to 1) read again from PostgreSQL, off the
    /// caller's path, to measure how often the cache disagrees with the database: a
    /// live consistency check (see [`CacheService::verify_stats`] and the
    /// `tabula_cache_stale_total` counter). Each check is one more query by key.
    /// Default 0: none.
    pub verify_sample: f64,
    /// Functions (`schema.name`) that Row Level Security policies may call without
    /// keeping user-scoped reads out of the cache: functions whose result depends
    /// only on their arguments, the role and the settings — the JWT claims. A policy
    /// calling any other function that is not `IMMUTABLE` (or reading the clock)
    /// keeps its table's scoped reads uncached (see [`crate::auth`]). Default
    /// `auth.uid`, `auth.role`, `auth.jwt` — as Tabula's built-in migrations and
    /// Supabase define them, reading `request.jwt.claims`; trusted by name, so leave
    /// them out if yours read tables.
    pub policy_functions: Vec<String>,
    /// Cheaper writes (Redis only): writes to a table nothing caches — no row entry,
    /// cached query, memo or scoped copy depends on it — skip Redis entirely, and a
    /// write to a cached table costs its one invalidation round trip as before. Redis
    /// keeps a registry of the tables cache entries depend on; each writer keeps a
    /// snapshot of it, refreshed by every invalidation it sends and never trusted
    /// longer than this window. The price: the first time a table is cached (per
    /// epoch), nothing of it is filled for the window and a half — a writer holding an
    /// older snapshot might still skip it. Processes without the setting may share the
    /// namespace: once one with it has used it, they register and wait as readers too
    /// (its first use replaces the epoch, dropping what was cached unregistered).
    /// Default `None`: every write tells Redis.
    pub registry_window: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            prefix: "tabula".into(),
            deadline: Duration::from_millis(50),
            failure_threshold: 3,
            probe_interval: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            namespace: None,
            max_value_bytes: 1024 * 1024,
            near: None,
            near_max_age: None,
            tls_root_cert: None,
            verify_sample: 0.0,
            policy_functions: ["auth.uid", "auth.role", "auth.jwt"]
                .map(String::from)
                .to_vec(),
            registry_window: None,
        }
    }
}

impl CacheConfig {
    /// Sets [`CacheConfig::prefix`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`CacheConfig::namespace`] (letters, digits, `_`, `-`, `.`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets [`CacheConfig::max_value_bytes`].
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Sets [`CacheConfig::deadline`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets [`CacheConfig::probe_interval`].
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Puts a near tier of `budget` bytes in front of Redis (see
    /// [`CacheConfig::near`]).
    ///
    /// ```no_run
    /// use tabula::cache::{CacheConfig, CacheService};
    /// let cache = CacheService::redis("redis://127.0.0.1/", CacheConfig::default().near(64 << 20))?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn near(mut self, budget: u64) -> Self {
        self.near = Some(budget);
        self
    }

    /// Sets [`CacheConfig::tls_root_cert`].
    ///
    /// ```
    /// let config = tabula::CacheConfig::default().tls_root_cert("/etc/redis/ca.pem");
    /// assert!(config.tls_root_cert.is_some());
    /// ```
    pub fn tls_root_cert(mut self, pem_file: impl Into<std::path::PathBuf>) -> Self {
        self.tls_root_cert = Some(pem_file.into());
        self
    }

    /// Sets [`CacheConfig::near_max_age`].
    pub fn near_max_age(mut self, max_age: Duration) -> Self {
        self.near_max_age = Some(max_age);
        self
    }

    /// Sets [`CacheConfig::policy_functions`] (replacing the default list).
    ///
    /// ```
    /// let config = tabula::CacheConfig::default()
    ///     .policy_functions(["auth.uid", "auth.jwt", "app.current_org"]);
    /// assert_eq!(config.policy_functions.len(), 3);
    /// ```
    pub fn policy_functions<S: Into<String>>(
        mut self,
        functions: impl IntoIterator<Item = S>,
    ) -> Self {
        self.policy_functions = functions.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`CacheConfig::registry_window`] (at least 10 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = tabula::CacheConfig::default().registry_window(Duration::from_secs(1));
    /// assert_eq!(config.registry_window, Some(Duration::from_secs(1)));
    /// ```
    pub fn registry_window(mut self, window: Duration) -> Self {
        self.registry_window = Some(window.max(Duration::from_millis(10)));
        self
    }

    /// Sets [`CacheConfig::verify_sample`] (clamped to 0..=1).
    ///
    /// ```
    /// let config = tabula::cache::CacheConfig::default().verify_sample(0.01);
    /// assert_eq!(config.verify_sample, 0.01);
    /// ```
    pub fn verify_sample(mut self, fraction: f64) -> Self {
        self.verify_sample = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }
}

/// How long a newly registered table waits before it is filled (rule 8 of
/// `backend.rs`): the window writers trust a snapshot for, and half again for the
/// difference between the clocks that measure it (Redis's and each writer's).
#[cfg(feature = "cache")]
pub(crate) fn registry_wait(window: Duration) -> Duration {
    // Rounded up to whole milliseconds (the server's clock is read in them) and one
    // more, so that the margin survives the rounding on both sides.
    let wait = window.saturating_add(window / 2);
    Duration::from_millis(
        u64::try_from(wait.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(2),
    )
}

/// What the near tier has done, for tests and dashboards (also exported as metrics).
///
/// ```
/// let stats = tabula::cache::NearStats::default();
/// assert_eq!(stats.hits, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearStats {
    /// Lookups answered in-process.
    pub hits: u64,
    /// Lookups that went on to Redis.
    pub misses: u64,
    /// Values evicted to stay within the memory budget.
    pub evictions: u64,
    /// Names invalidated: pushes from Redis and this process's own writes.
    pub invalidations: u64,
    /// Whole-tier flushes (a connection lost or replaced, `FLUSHALL`).
    pub flushes: u64,
    /// Replies not installed because an invalidation raced them.
    pub refused: u64,
    /// Bytes held (names, values and per-entry overhead), at most the budget.
    pub bytes: u64,
    /// Values held.
    pub entries: u64,
}

/// Why a cache call did not happen; internal, mapped to [`Error::Cache`] by the public
/// API and swallowed (with a fallback to PostgreSQL) by the row cache.
#[derive(Debug)]
pub(crate) enum Fault {
    #[cfg(feature = "cache")]
    Redis(::redis::RedisError),
    #[cfg(feature = "cache")]
    Timeout,
    #[cfg(feature = "cache")]
    Unavailable,
    WrongType,
    /// A value the operation cannot work on.
    Value(&'static str),
    #[cfg(feature = "cache")]
    Config(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The driver's message names the command and the failure, never values.
            #[cfg(feature = "cache")]
            Fault::Redis(e) => write!(f, "redis: {}", e.kind_name()),
            #[cfg(feature = "cache")]
            Fault::Timeout => f.write_str("redis call timed out"),
            #[cfg(feature = "cache")]
            Fault::Unavailable => f.write_str("redis unavailable (circuit open)"),
            Fault::WrongType => f.write_str("key holds a value of another type"),
            Fault::Value(m) => f.write_str(m),
            #[cfg(feature = "cache")]
            Fault::Config(m) => f.write_str(m),
        }
    }
}

#[cfg(feature = "cache")]
trait KindName {
    fn kind_name(&self) -> String;
}

#[cfg(feature = "cache")]
impl KindName for ::redis::RedisError {
    fn kind_name(&self) -> String {
        let mut text = format!("{:?}", self.kind());
        if let Some(detail) = self.detail() {
            text.push_str(": ");
            text.extend(detail.chars().take(120));
        }
        text
    }
}

/// What the row cache holds for one key of a model, read without taking a lease or
/// filling anything ([`Db::cache_entry`](crate::Db::cache_entry); `tabula cache get`).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRow<M> {
    /// The shared entry.
    pub entry: CachedEntry<M>,
    /// The time the entry has left (`None`: no entry, or no expiry).
    pub ttl: Option<Duration>,
    /// Whether a reader holds the row's lease: it missed and its fill is on its way.
    pub leased: bool,
    /// How many user scopes keep their own copy of the row (Row Level Security).
    pub scoped_copies: u64,
}

/// The shared entry of a row ([`CachedRow::entry`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CachedEntry<M> {
    /// The row as it was cached.
    Row(M),
    /// A negative entry: the row was read as absent.
    Absent,
    /// No entry: the next read asks the database.
    Missing,
    /// An entry another shape of the model wrote (the model's columns changed since):
    /// this model's reads treat it as a miss.
    OtherShape,
}

impl From<Fault> for Error {
    fn from(fault: Fault) -> Self {
        match fault {
            #[cfg(feature = "cache")]
            Fault::Config(m) => Error::Config(m),
            #[cfg(feature = "cache")]
            Fault::Redis(e) => Error::Cache {
                message: format!("redis: {}", e.kind_name()),
                source: Some(Box::new(e)),
            },
            other => Error::cache(other.to_string()),
        }
    }
}

pub(crate) struct CacheInner {
    /// Shared by every view of one cache (the application's, and each database's).
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: CacheConfig,
    /// `{prefix}:u:` for the keys of this service's key-value API; a database's view
    /// (see `bound`) keeps the keys it stores (storage downloads) in its namespace.
    user_prefix: String,
    /// Where Tabula's own keys live: `{prefix}:t:{namespace}`.
    pub(crate) ns: Namespace,
    pub(crate) hooks: Arc<row::Hooks>,
    /// The staleness check's counters (see `verify.rs`), shared by every view.
    pub(crate) verify: Arc<verify::Verify>,
    /// The last snapshot of the registry of cached tables (rule 8 of `backend.rs`)
    /// and when it was asked for.
    pub(crate) registry: std::sync::Mutex<Option<row::Registry>>,
}

/// Every cache a `Db` of this process reads through, by the identity of its database.
/// A write through one handle invalidates all of them (see [`others_for_database`]), so
/// two handles on one database with different caches (another prefix, namespace or
/// backend) never serve each other's stale rows. Redis caches with the same prefix and
/// namespace count as one (see `same_namespace`). Entries go when their caches do.
static DATABASE_CACHES: std::sync::Mutex<Vec<(String, std::sync::Weak<CacheInner>)>> =
    std::sync::Mutex::new(Vec::new());

/// Records `cache` as one that holds rows of the database `identity`.
pub(crate) fn register_for_database(identity: &str, cache: &CacheService) {
    if let Ok(mut all) = DATABASE_CACHES.lock() {
        all.retain(|(_, weak)| weak.strong_count() > 0);
        let known = all.iter().any(|(id, weak)| {
            id == identity
                && weak
                    .upgrade()
                    .is_some_and(|other| CacheService { inner: other }.same_namespace(cache))
        });
        if !known {
            all.push((identity.to_owned(), Arc::downgrade(&cache.inner)));
        }
    }
}

/// Whether any cache of this process holds rows of the database `identity`.
pub(crate) fn has_caches_for_database(identity: &str) -> bool {
    DATABASE_CACHES.lock().is_ok_and(|all| {
        all.iter()
            .any(|(id, weak)| id == identity && weak.strong_count() > 0)
    })
}

/// The databases' views (see [`CacheService::bound`]) of the backend `cache` uses,
/// other than `cache`'s own namespace (one per namespace).
pub(crate) fn views_sharing_backend(cache: &CacheService) -> Vec<CacheService> {
    let Ok(all) = DATABASE_CACHES.lock() else {
        return Vec::new();
    };
    let mut found: Vec<CacheService> = Vec::new();
    for (_, weak) in all.iter() {
        if let Some(inner) = weak.upgrade() {
            let view = CacheService { inner };
            let shared = Arc::ptr_eq(&view.inner.backend, &cache.inner.backend);
            if shared
                && !view.same_namespace(cache)
                && !found.iter().any(|c| c.same_namespace(&view))
            {
                found.push(view);
            }
        }
    }
    found
}

/// The caches of the database `identity` other than `own` (one per namespace).
pub(crate) fn others_for_database(identity: &str, own: Option<&CacheService>) -> Vec<CacheService> {
    let Ok(all) = DATABASE_CACHES.lock() else {
        return Vec::new();
    };
    let mut found: Vec<CacheService> = Vec::new();
    for (id, weak) in all.iter() {
        if id != identity {
            continue;
        }
        if let Some(inner) = weak.upgrade() {
            let cache = CacheService { inner };
            let mine = own.is_some_and(|own| cache.same_namespace(own));
            if !mine && !found.iter().any(|c| c.same_namespace(&cache)) {
                found.push(cache);
            }
        }
    }
    found
}

/// A cache on Redis, or in-process when asked for; cheap to clone. See the
/// [module docs](self) for what it guarantees.
///
/// ```
/// # async fn run() -> tabula::Result<()> {
/// let cache = tabula::cache::CacheService::in_memory(Default::default())?;
/// cache.set("greeting", &"hello", Some(300)).await?;
/// assert_eq!(cache.get::<String>("greeting").await?.as_deref(), Some("hello"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheService {
    pub(crate) inner: Arc<CacheInner>,
}

impl fmt::Debug for CacheService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("backend", &self.inner.backend.kind())
            .field("prefix", &self.inner.config.prefix)
            .field("namespace", &self.inner.ns.base)
            .finish()
    }
}

const MAX_KEY_BYTES: usize = 1024;

fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "cache prefix `{}` must be 1-64 letters, digits, `_`, `-` or `.`",
            prefix.escape_debug()
        )))
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Cache {
        message: "cannot encode value".into(),
        source: Some(Box::new(e)),
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    // The message names the type and position, never the bytes.
    serde_json::from_slice(bytes).map_err(|e| {
        // No source: a decoder's message may quote the bytes.
        Error::cache(format!(
            "cached value does not decode as {}: line {} column {}",
            std::any::type_name::<T>(),
            e.line(),
            e.column()
        ))
    })
}

#[cfg(feature = "cache")]
/// The node URLs of `redis+cluster://{nodes}`: `host:port` separated by commas, the
/// first one's credentials (`user:password@`) applying to every node that names none.
fn cluster_nodes(nodes: &str) -> Vec<String> {
    let nodes = nodes.split('/').next().unwrap_or_default();
    let mut credentials = "";
    let mut urls = Vec::new();
    for (i, node) in nodes.split(',').filter(|n| !n.is_empty()).enumerate() {
        match node.rsplit_once('@') {
            Some((given, _)) => {
                if i == 0 {
                    credentials = given;
                }
                urls.push(format!("redis://{node}/"));
            }
            None if credentials.is_empty() => urls.push(format!("redis://{node}/")),
            None => urls.push(format!("redis://{credentials}@{node}/")),
        }
    }
    urls
}

/// The longest TTL: 100 years (a longer one is refused, not silently cut).
pub(crate) const MAX_TTL_SECONDS: u64 = 100 * 365 * 24 * 3600;

fn ttl(seconds: Option<u64>) -> Result<Option<Duration>> {
    match seconds {
        Some(0) => Err(Error::Validation(
            "a TTL of 0 seconds would expire at once; give None for no TTL".into(),
        )),
        Some(s) if s > MAX_TTL_SECONDS => Err(Error::Validation(format!(
            "a TTL of {s} seconds is over 100 years; give None for no TTL"
        ))),
        other => Ok(other.map(Duration::from_secs)),
    }
}

impl CacheService {
    fn build(backend: Arc<dyn Backend>, config: CacheConfig) -> Result<Self> {
        check_prefix(&config.prefix)?;
        if let Some(namespace) = &config.namespace {
            check_prefix(namespace)?;
        }
        let namespace = config.namespace.clone().unwrap_or_else(|| "app".into());
        let user_prefix = format!("{}:u:", config.prefix);
        Ok(CacheService::view(backend, config, &namespace, user_prefix))
    }

    fn view(
        backend: Arc<dyn Backend>,
        config: CacheConfig,
        namespace: &str,
        user_prefix: String,
    ) -> CacheService {
        let ns = Namespace::new(format!("{}:t:{namespace}", config.prefix));
        backend.register(&ns);
        CacheService {
            inner: Arc::new(CacheInner {
                backend,
                user_prefix,
                ns,
                config,
                hooks: Arc::default(),
                verify: Arc::default(),
                registry: std::sync::Mutex::default(),
            }),
        }
    }

    /// This cache as seen by the database `identity`: the same backend, Tabula's
    /// entries under the configured namespace or, by default, under the database's
    /// identity (see [`CacheConfig::namespace`]).
    pub(crate) fn bound(&self, identity: &str) -> CacheService {
        let namespace = self
            .inner
            .config
            .namespace
            .clone()
            .unwrap_or_else(|| identity.to_owned());
        let internal = format!("{}:t:{namespace}", self.inner.config.prefix);
        let mut view = CacheService::view(
            self.inner.backend.clone(),
            self.inner.config.clone(),
            &namespace,
            format!("{internal}:s:"),
        );
        if let Some(inner) = Arc::get_mut(&mut view.inner) {
            inner.hooks = self.inner.hooks.clone();
            inner.verify = self.inner.verify.clone();
        }
        view
    }

    /// Whether two services write Tabula's entries to the same place.
    ///
    /// Two Redis caches with the same prefix and namespace are taken to be one cache
    /// (clients of one server, reached perhaps by different routes); an in-process
    /// cache is only ever itself.
    pub(crate) fn same_namespace(&self, other: &CacheService) -> bool {
        let (mine, theirs) = (&self.inner.backend, &other.inner.backend);
        let same_place = if mine.is_shared() && theirs.is_shared() {
            mine.kind() == theirs.kind()
        } else {
            std::ptr::addr_eq(Arc::as_ptr(mine), Arc::as_ptr(theirs))
        };
        same_place && self.inner.ns == other.inner.ns
    }

    /// How this cache was configured.
    pub(crate) fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// A cache on the Redis at `url`. Nothing is sent until first use, so a Redis that
    /// is down now does not stop the application from starting. A URL
    /// `redis+cluster://host:port,host:port/` names nodes of a Redis Cluster (see
    /// [`redis_cluster`](Self::redis_cluster)); so `REDIS_URL` may name one too.
    /// Credentials given with the first node (`redis+cluster://:secret@a:7000,b:7001/`)
    /// apply to every node that names none.
    ///
    /// ```no_run
    /// let cache = tabula::cache::CacheService::redis("redis://127.0.0.1/", Default::default())?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    #[cfg(feature = "cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
    pub fn redis(url: &str, config: CacheConfig) -> Result<Self> {
        if let Some(nodes) = url.strip_prefix("redis+cluster://") {
            return CacheService::redis_cluster(&cluster_nodes(nodes), config);
        }
        let backend = RedisBackend::new(url, &config)?;
        CacheService::build(backend, config)
    }

    /// A cache on a Redis Cluster, given the URL of one or more of its nodes (the
    /// client learns the others, and follows slots as they move). Every protocol
    /// script touches one key: a namespace's epoch, table generations and version
    /// counters are one hash in its slot, and each row's entry, lease and scoped copies
    /// are one hash in a slot of its own, so rows spread over the cluster. A hit is one round trip (the rows are read under the names last
    /// resolved while the namespace's head confirms them), a miss two. No near tier on
    /// a cluster yet ([`CacheConfig::near`] is refused).
    ///
    /// ```no_run
    /// let nodes = ["redis://127.0.0.1:7000/".to_owned(), "redis://127.0.0.1:7001/".to_owned()];
    /// let cache = tabula::cache::CacheService::redis_cluster(&nodes, Default::default())?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    #[cfg(feature = "cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
    pub fn redis_cluster(urls: &[String], config: CacheConfig) -> Result<Self> {
        let backend = RedisBackend::cluster(urls, &config)?;
        CacheService::build(backend, config)
    }

    /// An in-process cache with the same API. It is right for one process only:
    /// nothing it holds is seen, or invalidated, by another process.
    ///
    /// ```
    /// let cache = tabula::cache::CacheService::in_memory(Default::default())?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn in_memory(config: CacheConfig) -> Result<Self> {
        if config.near.is_some() {
            return Err(Error::Config(
                "a near tier mirrors Redis; an in-process cache needs none (CacheConfig::near)"
                    .into(),
            ));
        }
        CacheService::build(Arc::new(MemoryBackend::default()), config)
    }

    /// The cache the environment asks for: Redis at `REDIS_URL` when it is set;
    /// otherwise an in-process cache only when `TABULA_CACHE=memory` (correct for a
    /// single process), and no cache at all by default — a cache that other processes
    /// cannot see would serve them stale rows. `TABULA_CACHE_NAMESPACE` sets
    /// [`CacheConfig::namespace`]. One log line says which cache is in use.
    ///
    /// ```
    /// let cache = tabula::cache::CacheService::from_env()?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn from_env() -> Result<Option<Self>> {
        let mut config = CacheConfig::default();
        if let Ok(namespace) = std::env::var("TABULA_CACHE_NAMESPACE") {
            config = config.namespace(namespace);
        }
        if let Ok(budget) = std::env::var("TABULA_CACHE_NEAR")
            && !budget.is_empty()
        {
            let bytes = budget.parse::<u64>().map_err(|_| {
                Error::Config(format!(
                    "TABULA_CACHE_NEAR must be the near tier's budget in bytes, not `{}`",
                    budget.escape_debug()
                ))
            })?;
            config = config.near(bytes);
        }
        let cache = match (std::env::var("REDIS_URL"), std::env::var("TABULA_CACHE")) {
            #[cfg(feature = "cache")]
            (Ok(url), _) => {
                tracing::info!("tabula cache: redis (REDIS_URL)");
                Some(CacheService::redis(&url, config)?)
            }
            #[cfg(not(feature = "cache"))]
            (Ok(_), _) => {
                return Err(Error::Config(
                    "REDIS_URL is set, but tabula was built without its `cache` feature \
                     (the Redis backend)"
                        .into(),
                ));
            }
            (Err(_), Ok(kind)) if kind == "memory" => {
                tracing::info!("tabula cache: in-process (TABULA_CACHE=memory), one process only");
                Some(CacheService::in_memory(config)?)
            }
            (Err(_), Ok(kind)) if !kind.is_empty() && kind != "none" => {
                return Err(Error::Config(crate::error::unknown_word(
                    "TABULA_CACHE",
                    &kind,
                    &["memory", "none"],
                )));
            }
            _ => {
                tracing::info!("tabula cache: none (set REDIS_URL, or TABULA_CACHE=memory)");
                None
            }
        };
        Ok(cache)
    }

    /// Whether this cache is backed by Redis (not in-process).
    pub fn is_redis(&self) -> bool {
        matches!(self.inner.backend.kind(), "redis" | "redis-cluster")
    }

    /// Whether the circuit breaker currently skips Redis.
    pub fn is_degraded(&self) -> bool {
        self.inner.backend.is_degraded()
    }

    /// What the near tier did so far (`None` without one; see [`CacheConfig::near`]).
    ///
    /// ```
    /// let cache = tabula::cache::CacheService::in_memory(Default::default())?;
    /// assert!(cache.near_stats().is_none());
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn near_stats(&self) -> Option<NearStats> {
        self.inner.backend.near_stats()
    }

    /// Installs (or with `None` removes) a hook run between a near tier's Redis reply
    /// and its install. Test support: it places an invalidation exactly there.
    #[doc(hidden)]
    pub fn set_near_hook(&self, hook: Option<FillHook>) {
        self.inner.backend.set_near_hook(hook);
    }

    /// Refuses a value over [`CacheConfig::max_value_bytes`]: sending it would cost
    /// more than the deadline allows, and a caller's oversized value must not look like
    /// an outage (and open the breaker for every user of the cache).
    fn check_size(&self, bytes: usize) -> Result<()> {
        let limit = self.inner.config.max_value_bytes;
        if bytes > limit {
            return Err(Error::Validation(format!(
                "a cache value of {bytes} bytes is over the limit of {limit} \
                 (CacheConfig::max_value_bytes)"
            )));
        }
        Ok(())
    }

    fn key(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::Validation(format!(
                "cache keys must be 1 to {MAX_KEY_BYTES} bytes"
            )));
        }
        Ok(format!("{}{key}", self.inner.user_prefix))
    }

    /// Runs one backend call of the key-value API, and records it.
    async fn recorded<T>(&self, op: &'static str, call: backend::Pending<'_, T>) -> Result<T> {
        let started = std::time::Instant::now();
        let result = call.await;
        monitor::record_cache(op, started, if result.is_ok() { "ok" } else { "error" });
        Ok(result?)
    }

    /// Stores `value` under `key`, for `ttl_seconds` (None: until deleted).
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl_seconds: Option<u64>,
    ) -> Result<()> {
        self.set_bytes(key, encode(value)?, ttl_seconds).await
    }

    /// Stores raw bytes (no serde), e.g. file contents.
    pub(crate) async fn set_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        ttl_seconds: Option<u64>,
    ) -> Result<()> {
        let (key, ttl) = (self.key(key)?, ttl(ttl_seconds)?);
        self.check_size(bytes.len())?;
        self.recorded("set", self.inner.backend.put(&key, bytes, ttl))
            .await
    }

    /// The value under `key`, if any.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get_bytes(key).await?.map(|b| decode(&b)).transpose()
    }

    /// A row's entry, read without a lease (see [`crate::Db::cache_entry`]).
    pub(crate) async fn row_peek(&self, table: &str, key: &str) -> Result<backend::RowPeek> {
        self.recorded(
            "row_peek",
            self.inner.backend.row_peek(&self.inner.ns, table, key),
        )
        .await
    }

    /// Raw bytes stored by [`set_bytes`](Self::set_bytes).
    pub(crate) async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key(key)?;
        self.recorded("get", self.inner.backend.get(&key)).await
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.key(key)?;
        self.recorded("delete", self.inner.backend.delete(&key))
            .await
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let key = self.key(key)?;
        self.recorded("exists", self.inner.backend.exists(&key))
            .await
    }

    /// Sets the TTL of an existing key; whether it existed.
    pub async fn expire(&self, key: &str, ttl_seconds: u64) -> Result<bool> {
        let key = self.key(key)?;
        let Some(ttl) = ttl(Some(ttl_seconds))? else {
            return Ok(false);
        };
        self.recorded("expire", self.inner.backend.expire(&key, ttl))
            .await
    }

    /// Adds `by` to the integer under `key` (0 when absent) and returns the new value.
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        let key = self.key(key)?;
        self.recorded("incr", self.inner.backend.incr(&key, by))
            .await
    }

    /// Appends `value` to the list under `key`; returns its length.
    pub async fn list_push<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<u64> {
        let (key, bytes) = (self.key(key)?, encode(value)?);
        self.check_size(bytes.len())?;
        self.recorded("list_push", self.inner.backend.list_push(&key, bytes))
            .await
    }

    /// Removes and returns the first element of the list under `key` (FIFO with
    /// [`list_push`](Self::list_push)).
    pub async fn list_pop<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let key = self.key(key)?;
        let bytes = self
            .recorded("list_pop", self.inner.backend.list_pop(&key))
            .await?;
        bytes.map(|b| decode(&b)).transpose()
    }

    /// Elements `start..=stop` of the list (negative indexes count from the end, as in
    /// Redis `LRANGE`).
    pub async fn list_range<T: DeserializeOwned>(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<T>> {
        let key = self.key(key)?;
        let items = self
            .recorded(
                "list_range",
                self.inner.backend.list_range(&key, start, stop),
            )
            .await?;
        items.iter().map(|b| decode(b)).collect()
    }

    /// Length of the list under `key`.
    pub async fn list_len(&self, key: &str) -> Result<u64> {
        let key = self.key(key)?;
        self.recorded("list_len", self.inner.backend.list_len(&key))
            .await
    }

    /// Adds members to the set under `key`; returns how many were new.
    pub async fn set_add<T: Serialize>(&self, key: &str, members: &[T]) -> Result<u64> {
        let key = self.key(key)?;
        let members = members.iter().map(encode).collect::<Result<Vec<_>>>()?;
        if members.is_empty() {
            return Ok(0);
        }
        self.check_size(members.iter().map(Vec::len).sum())?;
        self.recorded("set_add", self.inner.backend.set_add(&key, members))
            .await
    }

    /// Removes members from the set; returns how many were there.
    pub async fn set_remove<T: Serialize>(&self, key: &str, members: &[T]) -> Result<u64> {
        let key = self.key(key)?;
        let members = members.iter().map(encode).collect::<Result<Vec<_>>>()?;
        if members.is_empty() {
            return Ok(0);
        }
        self.recorded("set_remove", self.inner.backend.set_remove(&key, members))
            .await
    }

    /// Every member of the set (in no particular order).
    pub async fn set_members<T: DeserializeOwned>(&self, key: &str) -> Result<Vec<T>> {
        let key = self.key(key)?;
        let items = self
            .recorded("set_members", self.inner.backend.set_members(&key))
            .await?;
        items.iter().map(|b| decode(b)).collect()
    }

    /// Whether `member` is in the set.
    pub async fn set_is_member<T: Serialize + ?Sized>(
        &self,
        key: &str,
        member: &T,
    ) -> Result<bool> {
        let (key, member) = (self.key(key)?, encode(member)?);
        self.recorded(
            "set_is_member",
            self.inner.backend.set_is_member(&key, member),
        )
        .await
    }

    /// Sets `field` of the hash under `key`; whether it was new.
    pub async fn hash_set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        field: &str,
        value: &T,
    ) -> Result<bool> {
        let (key, value) = (self.key(key)?, encode(value)?);
        self.check_size(value.len() + field.len())?;
        self.recorded("hash_set", self.inner.backend.hash_set(&key, field, value))
            .await
    }

    /// `field` of the hash under `key`.
    pub async fn hash_get<T: DeserializeOwned>(&self, key: &str, field: &str) -> Result<Option<T>> {
        let key = self.key(key)?;
        let bytes = self
            .recorded("hash_get", self.inner.backend.hash_get(&key, field))
            .await?;
        bytes.map(|b| decode(&b)).transpose()
    }

    /// Every field of the hash under `key`.
    pub async fn hash_get_all<T: DeserializeOwned>(&self, key: &str) -> Result<HashMap<String, T>> {
        let key = self.key(key)?;
        let items = self
            .recorded("hash_get_all", self.inner.backend.hash_get_all(&key))
            .await?;
        items
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&v)?)))
            .collect()
    }

    /// Deletes `field` from the hash; whether it existed.
    pub async fn hash_delete(&self, key: &str, field: &str) -> Result<bool> {
        let key = self.key(key)?;
        self.recorded("hash_delete", self.inner.backend.hash_delete(&key, field))
            .await
    }

    /// Deletes every key matching the glob `pattern` (e.g. `profiles:*`, under this
    /// cache's prefix) with SCAN + UNLINK in batches — never KEYS, so Redis is not
    /// blocked. Returns how many keys were deleted. Not atomic: keys written meanwhile
    /// may survive. (Tabula's own row and query caches never need this: they use leases
    /// and version counters.)
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let pattern = self.key(pattern)?;
        self.recorded(
            "invalidate_pattern",
            self.inner.backend.delete_matching(&pattern),
        )
        .await
    }
}

#[cfg(all(test, feature = "cache"))]
mod cluster_url_tests {
    use super::cluster_nodes;

    #[test]
    fn the_first_nodes_credentials_apply_to_the_others() {
        assert_eq!(
            cluster_nodes(":pw@a:1,b:2,u:x@c:3/"),
            ["redis://:pw@a:1/", "redis://:pw@b:2/", "redis://u:x@c:3/"]
        );
        assert_eq!(cluster_nodes("a:1,b:2"), ["redis://a:1/", "redis://b:2/"]);
        assert!(cluster_nodes("/").is_empty());
    }
}
