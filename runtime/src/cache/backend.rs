//! The one interface of a cache tier, and the one statement of the rules every tier
//! follows. [`CacheService`](super::CacheService) is written once over [`Backend`];
//! `redis.rs` (Lua scripts in `lua/`, one server step each) and `memory.rs` (one
//! mutex) implement it in full, and the contract tests in `tests/cache.rs` run against
//! both.
//!
//! # The protocol
//!
//! A namespace has a *base* (`{prefix}:t:{namespace}`) and an *epoch*; every name below
//! is under `{base}:{epoch}`. A tier that can lose an invalidation (Redis) keeps the
//! epoch in `{base}:epoch`, sets it to a fresh random value the first time it is
//! missing, and replaces it when an invalidation was lost (see `redis.rs`); a tier
//! that cannot lose one (in-process) uses the fixed epoch `0`.
//!
//! 1. **Rows.** The entry of row `key` of `table` is `r:{table}:{g}:{key}` and its
//!    lease `l:{table}:{g}:{key}`, where `g` is the table's generation (`g:{table}`,
//!    `0` when absent). An entry starts with the 16-digit shape of the model that wrote
//!    it.
//! 2. **Get** ([`Backend::row_get`]), atomically per call: for each key, the entry if
//!    it exists and starts with the reader's shape; otherwise the reader's token is
//!    stored as the key's lease (expiring after the lease time) and the answer is a
//!    miss.
//! 3. **Fill** ([`Backend::row_fill`]), atomically per call: for each (key, value),
//!    only if the key's lease still holds the reader's token: store the entry (with
//!    its TTL) and delete the lease. Count the entries stored.
//! 4. **Invalidate** ([`Backend::invalidate`]), atomically: increment each counter
//!    (`v:{table}`), increment each table's generation, delete each named row's entry
//!    and lease. An invalidation either happens or the tier reports a failure *and*
//!    guarantees it is delivered later (Redis: a new epoch).
//! 5. **Versioned keys** ([`Backend::versioned`]): `{kind}:{c1,c2,…}:{suffix}` with the
//!    current value of each counter (`0` when absent); the tier resolves the name and
//!    reads (or deletes) it in one step, and answers the resolved name, under which
//!    [`Backend::put`] later stores the value — no lease needed, since a write
//!    meanwhile changed a counter and so the name.
//!
//! 6. **Scoped rows** (Row Level Security): a user scope's copy of row `key` lives in
//!    the hash `s:{table}:{g}:{key}`, under the field `{scope},{c1},{c2},…` — the
//!    scope's id, then the current values of the version counters of the tables the
//!    table's policies read — with its lease under `l,` and that field. A field's value
//!    carries its own expiry. Get, fill and lease follow rules 2 and 3 within the hash;
//!    rule 4 deletes the whole hash with the row's entry, so a write drops every
//!    scope's copy at once, and a write to a table a policy reads changes the field
//!    name. A hash holds a bounded number of fields (past it, it is dropped whole).
//! 7. **Unique values** ([`Backend::unique_get`]): the entry of a unique value
//!    (`r:{table}:{g}:#{column}:{value}`) holds the shape and then the name of the
//!    row it maps to. One atomic step reads it and, when it is there, the row's entry
//!    it names; what is missing takes the reader's lease (rule 2) — the mapping's, or,
//!    with the mapping there, the row's.
//! 8. **The registry of cached tables** (only with
//!    [`CacheConfig::registry_window`](super::CacheConfig::registry_window), only
//!    on a shared tier): every epoch starts with a registry `reg` (a hash) whose
//!    field `''` holds the longest reader *wait* (the window and a half) of any
//!    process with a window that used the namespace. Once it is set, every lookup —
//!    of a process with a window or not — registers each table its entry depends on
//!    (the row's table, a scope's policy tables, the tables of a versioned name's `v:`
//!    counters) with the tier's clock, and takes no lease — and marks a versioned
//!    name as not to be filled — while a registration is younger than the wait. An
//!    invalidation by a process with a window answers the registered tables. Such a
//!    writer skips the tables not in a snapshot of the registry younger than its
//!    window, taken before it asked; so a writer that skipped a table committed
//!    before any reader of it took a lease. An epoch whose registry lacks the mark
//!    (lost, or used only without a window so far) is replaced by the first process
//!    with a window (rule 4's way of delivering what could not be); a process with a
//!    window asks each namespace it uses for its epoch once per probe interval, so a
//!    registry lost while it runs is replaced within one, and a snapshot it took
//!    before the tier learned of a loss (`Backend::renewals`) is not trusted. A new
//!    epoch made after a lost invalidation carries the mark.
//!
//! Every method's future may be dropped at any point without breaking these rules:
//! each is one atomic step on the tier.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::Fault;

/// A backend call in flight.
pub(crate) type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, Fault>> + Send + 'a>>;

/// Where one namespace's entries live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Namespace {
    /// `{prefix}:t:{namespace}`.
    pub(crate) base: String,
    /// `{base}:epoch`.
    pub(crate) epoch_key: String,
}

impl Namespace {
    pub(crate) fn new(base: String) -> Namespace {
        let epoch_key = format!("{base}:epoch");
        Namespace { base, epoch_key }
    }
}

/// A row lookup (rule 2).
pub(crate) struct RowGet<'a> {
    pub(crate) table: &'a str,
    pub(crate) token: &'a str,
    pub(crate) lease: Duration,
    pub(crate) shape: &'a str,
    pub(crate) keys: &'a [String],
    /// The TTL entries are filled with (a near tier's maximum age follows it).
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) ttl: Duration,
    /// Whether a near tier may answer (the model did not opt out).
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) near: bool,
    /// Set when a near tier answered every key (for the `source` of the read's sample).
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) answered_near: &'a std::sync::atomic::AtomicBool,
    /// A user scope's own copies (rule 6) instead of the shared entries.
    pub(crate) scope: Option<&'a Scoped>,
}

/// Whose copies of rows a scoped read uses (rule 6): the scope's id and the version
/// counters of the tables the table's policies read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scoped {
    /// 32 hex digits of a SHA-256 of the role and the claims.
    pub(crate) id: std::sync::Arc<str>,
    /// `v:{table}` of every table a policy of the table reads.
    pub(crate) counters: std::sync::Arc<[String]>,
}

/// The most fields a scoped row's hash holds (rule 6).
pub(crate) const SCOPED_FIELDS: usize = 512;

/// What a unique value's lookup found (rule 7).
pub(crate) enum UniqueFound {
    /// The mapping's entry and the row entry it leads to.
    Both(Vec<u8>, Vec<u8>),
    /// The mapping's entry; the row's is missing, and its lease was taken.
    Mapping(Vec<u8>),
    /// No mapping; its lease was taken.
    Nothing,
}

/// A fill under a lease (rule 3).
pub(crate) struct RowFill<'a> {
    pub(crate) table: &'a str,
    pub(crate) token: &'a str,
    pub(crate) ttl: Duration,
    pub(crate) entries: &'a [&'a (String, Vec<u8>)],
    /// A user scope's own copies (rule 6).
    pub(crate) scope: Option<&'a Scoped>,
}

/// What became stale (rule 4).
pub(crate) struct Stale<'a> {
    pub(crate) counters: &'a [String],
    pub(crate) generations: &'a [String],
    pub(crate) rows: &'a [(String, String)],
}

/// A versioned name (rule 5).
pub(crate) struct Versioned<'a> {
    pub(crate) kind: &'a str,
    pub(crate) counters: &'a [String],
    pub(crate) suffix: &'a str,
    /// The TTL the entry is stored with.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) ttl: Duration,
    /// Whether a near tier may answer.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) near: bool,
}

/// What a row's entry holds, read without taking a lease ([`Backend::row_peek`]).
#[derive(Debug, Default)]
pub(crate) struct RowPeek {
    /// The entry (shape first) and the time it has left (`None`: no expiry).
    pub(crate) entry: Option<(Vec<u8>, Option<Duration>)>,
    /// Whether a reader holds the row's lease (a fill is on its way).
    pub(crate) leased: bool,
    /// How many user scopes keep a copy of the row (rule 6).
    pub(crate) scoped_copies: u64,
}

/// A cache tier. Keys given to the data-structure operations are full names (the
/// service adds its prefixes); values are bytes.
pub(crate) trait Backend: Send + Sync + 'static {
    /// `redis` or `memory`, for logs and `Debug`.
    fn kind(&self) -> &'static str;
    /// Whether every process sees this tier (two shared tiers with the same namespace
    /// are one cache); an unshared tier is only ever itself.
    fn is_shared(&self) -> bool;
    /// Whether calls are currently skipped (a circuit breaker is open).
    fn is_degraded(&self) -> bool {
        false
    }
    /// What the near tier in front of this one did, if there is one.
    fn near_stats(&self) -> Option<super::NearStats> {
        None
    }
    /// Test support: a pause between a near tier's Redis reply and its install.
    fn set_near_hook(&self, _hook: Option<super::FillHook>) {}
    /// Tells the tier a namespace is in use (Redis replaces its epoch after a lost
    /// invalidation).
    fn register(&self, _namespace: &Namespace) {}
    /// How many times this tier learned that entries may have been lost or left
    /// stale (a lost invalidation, a restarted server): a registry snapshot taken
    /// before the last of them is not trusted (rule 8).
    fn renewals(&self) -> u64 {
        0
    }

    /// Rule 2: one value or miss per key, in order.
    fn row_get<'a>(
        &'a self,
        ns: &'a Namespace,
        get: RowGet<'a>,
    ) -> Pending<'a, Vec<Option<Vec<u8>>>>;
    /// The row `key` of `table` as rules 1 and 6 store it, read only: no lease is
    /// taken and nothing is registered (inspection, `tabula cache get`).
    fn row_peek<'a>(
        &'a self,
        ns: &'a Namespace,
        table: &'a str,
        key: &'a str,
    ) -> Pending<'a, RowPeek>;
    /// Rule 7: `get.keys` holds the mapping's name alone.
    fn unique_get<'a>(&'a self, ns: &'a Namespace, get: RowGet<'a>) -> Pending<'a, UniqueFound>;
    /// Rule 3: how many entries were stored.
    fn row_fill<'a>(&'a self, ns: &'a Namespace, fill: RowFill<'a>) -> Pending<'a, u64>;
    /// Rule 4. An `Err` means the invalidation will be delivered later (rule 4).
    /// Under a registry window (rule 8), the registered tables, read in the same step.
    fn invalidate<'a>(
        &'a self,
        ns: &'a Namespace,
        stale: Stale<'a>,
    ) -> Pending<'a, Option<Vec<String>>>;
    /// Rule 5: the resolved name, its value (always `None` with `delete`), and whether
    /// it may be filled (rule 8).
    fn versioned<'a>(
        &'a self,
        ns: &'a Namespace,
        name: Versioned<'a>,
        delete: bool,
    ) -> Pending<'a, (String, Option<Vec<u8>>, bool)>;

    /// Stores `value` under `key`, with a TTL if given.
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> Pending<'a, ()>;
    /// The bytes under `key`.
    fn get<'a>(&'a self, key: &'a str) -> Pending<'a, Option<Vec<u8>>>;
    /// Deletes `key`; whether it existed.
    fn delete<'a>(&'a self, key: &'a str) -> Pending<'a, bool>;
    /// Whether `key` exists.
    fn exists<'a>(&'a self, key: &'a str) -> Pending<'a, bool>;
    /// Sets the TTL of an existing key; whether it existed.
    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> Pending<'a, bool>;
    /// Creates `key` for `ttl` unless it exists; whether this call created it (one
    /// caller of many wins, across processes for a shared backend).
    fn claim<'a>(&'a self, key: &'a str, ttl: Duration) -> Pending<'a, bool>;
    /// Adds `by` to the integer under `key` (0 when absent).
    fn incr<'a>(&'a self, key: &'a str, by: i64) -> Pending<'a, i64>;
    /// Appends to a list; its new length.
    fn list_push<'a>(&'a self, key: &'a str, value: Vec<u8>) -> Pending<'a, u64>;
    /// Removes the first element of a list.
    fn list_pop<'a>(&'a self, key: &'a str) -> Pending<'a, Option<Vec<u8>>>;
    /// Elements `start..=stop` (negative: from the end), as Redis `LRANGE`.
    fn list_range<'a>(&'a self, key: &'a str, start: i64, stop: i64) -> Pending<'a, Vec<Vec<u8>>>;
    /// The length of a list.
    fn list_len<'a>(&'a self, key: &'a str) -> Pending<'a, u64>;
    /// Adds members to a set; how many were new.
    fn set_add<'a>(&'a self, key: &'a str, members: Vec<Vec<u8>>) -> Pending<'a, u64>;
    /// Removes members from a set; how many were there.
    fn set_remove<'a>(&'a self, key: &'a str, members: Vec<Vec<u8>>) -> Pending<'a, u64>;
    /// Every member of a set.
    fn set_members<'a>(&'a self, key: &'a str) -> Pending<'a, Vec<Vec<u8>>>;
    /// Whether `member` is in the set.
    fn set_is_member<'a>(&'a self, key: &'a str, member: Vec<u8>) -> Pending<'a, bool>;
    /// Sets a field of a hash; whether it was new.
    fn hash_set<'a>(&'a self, key: &'a str, field: &'a str, value: Vec<u8>) -> Pending<'a, bool>;
    /// A field of a hash.
    fn hash_get<'a>(&'a self, key: &'a str, field: &'a str) -> Pending<'a, Option<Vec<u8>>>;
    /// Every field of a hash.
    fn hash_get_all<'a>(&'a self, key: &'a str) -> Pending<'a, HashMap<String, Vec<u8>>>;
    /// Deletes a field of a hash; whether it existed.
    fn hash_delete<'a>(&'a self, key: &'a str, field: &'a str) -> Pending<'a, bool>;
    /// Deletes every key matching a Redis glob, in batches; how many.
    fn delete_matching<'a>(&'a self, pattern: &'a str) -> Pending<'a, u64>;
}
