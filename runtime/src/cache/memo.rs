//! The runtime of `#[cached]`: memoized async functions.
//!
//! An entry's key is the function's name plus a hash of its arguments, under
//! version counters: one of the function's own (bumped by `<fn>_clear`) and one per
//! table named in `tables(...)` (bumped by every write to that table), resolved on the
//! Redis server in the same round trip as the GET. So a write to a tied table, or a
//! clear, makes every older entry unreachable at once.
//!
//! For a function returning `Result`, only `Ok` values are cached; for any other return
//! type (`Option` included: `None` is cached too) the value is cached as returned.
//! Concurrent callers with the same key in one process run the body once: the first
//! runs it while the others wait, then take its result (even if the cache is down).
//!
//! Single flight joins only a computation keyed by the same table versions, so a call
//! that begins after a write never gets a value computed before it. A body that ran
//! any statement through a user-scoped handle (Row Level Security) produced an answer
//! for that user only: it is neither cached nor shared (work the body hands to a task
//! of its own with `tokio::spawn` is not seen: keep scoped work on the body's task, or
//! put the user in the arguments). Arguments whose `Serialize` fails bypass the cache
//! for that call; all others are keyed injectively (NaN, infinity, `None` and
//! `Some(None)` each get their own key). Both are counted in
//! `tabula_memo_bypass_total` and logged once per function.
//!
//! The cache used is the one installed with [`CacheService::install_global`] —
//! explicitly: connecting a `Db` installs nothing. Every `Db` write also bumps the
//! versions of the written tables in that cache when it is not the `Db`'s own, so a
//! memo is invalidated whichever handle writes. Without one, the body simply runs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::CacheService;
use crate::table::TableMeta;

/// What `#[cached]` knows about one function.
#[doc(hidden)]
#[derive(Debug)]
pub struct MemoSpec {
    /// `module::path::Type::function`.
    pub name: String,
    /// Seconds an entry lives.
    pub ttl: u64,
    /// Tables whose writes invalidate every entry.
    pub tables: &'static [&'static TableMeta],
    /// Seconds an expired entry may still be served while one caller refreshes it
    /// (`stale = N`; 0: never).
    pub stale: u64,
}

static GLOBAL: OnceLock<CacheService> = OnceLock::new();

/// One in-flight call per key: the turn to run it, and what the caller who ran it
/// produced (encoded), so the callers who waited need not ask the cache again.
#[derive(Default)]
struct Flight {
    turn: tokio::sync::Mutex<()>,
    result: OnceLock<Vec<u8>>,
}

type Flights = Mutex<HashMap<String, Weak<Flight>>>;

fn flights() -> &'static Flights {
    static FLIGHTS: OnceLock<Flights> = OnceLock::new();
    FLIGHTS.get_or_init(Default::default)
}

impl CacheService {
    /// Makes this the cache `#[cached]` functions use, unless one was installed before;
    /// returns whether it was installed.
    ///
    /// ```
    /// let cache = tabula::CacheService::in_memory(Default::default())?;
    /// cache.install_global();
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn install_global(&self) -> bool {
        GLOBAL.set(self.clone()).is_ok()
    }

    /// The cache `#[cached]` functions use, if one is installed.
    pub fn global() -> Option<&'static CacheService> {
        GLOBAL.get()
    }
}

impl MemoSpec {
    /// The function's counter, its tables', the call's tags', and the call's own
    /// (bumped by `<fn>_invalidate`: a computation that began before it then fills a
    /// key no reader asks for, instead of the one it deleted).
    fn counters(&self, tags: &[String], key: &str) -> Vec<String> {
        let mut counters = vec![format!("mv:{}", self.name)];
        counters.extend(self.tables.iter().map(|t| super::row::table_counter(t)));
        counters.extend(tags.iter().map(|t| super::fresh::tag_counter(t)));
        counters.push(call_counter(key));
        counters
    }

    /// Entries with a stale window are stamped (see `fresh.rs`): another kind.
    fn kind(&self) -> &'static str {
        if self.stale > 0 { "ms" } else { "m" }
    }

    fn how(&self) -> super::row::RowCache {
        super::row::RowCache::shared("-", Duration::from_secs(self.ttl), true)
    }
}

/// The key suffix of one call: the function's name and a hash of its arguments,
/// encoded injectively (see `cache/key.rs`: values JSON cannot tell apart — NaN and
/// infinity, `None` and `Some(None)` — get different keys). Empty when an argument's
/// `Serialize` impl fails: that call then bypasses the cache (see [`memo`]) instead of
/// sharing an entry with others.
#[doc(hidden)]
pub fn memo_key<A: Serialize + ?Sized>(spec: &MemoSpec, args: &A) -> String {
    use sha2::Digest;
    let Some(bytes) = super::key::key_bytes(args) else {
        return String::new();
    };
    let hash: String = sha2::Sha256::digest(&bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}:{hash}", spec.name)
}

tokio::task_local! {
    /// Set while a memoized body runs: whether it ran a statement under a user scope.
    static FRAME: Arc<std::sync::atomic::AtomicBool>;
}

/// Called by `Db` for every operation of a user-scoped handle: a memo whose body ran
/// one must not be shared (see [`memo`]).
pub(crate) fn note_scoped() {
    let _ = FRAME.try_with(|scoped| scoped.store(true, std::sync::atomic::Ordering::Release));
}

/// Whether the current task is running a memoized body: its reads fill a memo, so
/// they read the primary, never a replica that may lag (see `db/replica.rs`).
pub(crate) fn in_memo_body() -> bool {
    FRAME.try_with(|_| ()).is_ok()
}

fn bypass(reason: &'static str, name: &str) {
    metrics::counter!(crate::monitor::MEMO_BYPASS, "reason" => reason).increment(1);
    static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    if let Ok(mut logged) = LOGGED.lock()
        && !logged.iter().any(|n| n == name)
        && logged.len() < 1000
    {
        logged.push(name.to_owned());
        tracing::warn!(memo = name, reason, "#[cached] call not cached");
    }
}

/// How a return type is stored: `Result` keeps only `Ok`, everything else as is.
#[doc(hidden)]
pub trait MemoStore: Sized {
    fn store(&self) -> Option<Vec<u8>>;
    fn load(bytes: &[u8]) -> Option<Self>;
}

/// Wraps a plain return value.
#[doc(hidden)]
pub struct Plain<T>(pub T);

impl<T: Serialize + DeserializeOwned> MemoStore for Plain<T> {
    fn store(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(&self.0).ok()
    }
    fn load(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok().map(Plain)
    }
}

/// Wraps a `Result`: only `Ok` is stored.
#[doc(hidden)]
pub struct OkOnly<T, E>(pub Result<T, E>);

impl<T: Serialize + DeserializeOwned, E> MemoStore for OkOnly<T, E> {
    fn store(&self) -> Option<Vec<u8>> {
        self.0
            .as_ref()
            .ok()
            .and_then(|v| serde_json::to_vec(v).ok())
    }
    fn load(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok().map(|v| OkOnly(Ok(v)))
    }
}

/// The cached value of a call and whether it is fresh, and the versioned key it lives
/// under (`None`: the cache failed).
async fn lookup<S: MemoStore>(
    cache: &CacheService,
    spec: &MemoSpec,
    tags: &[String],
    key: &str,
    again: bool,
) -> (Option<(S, bool)>, Option<String>) {
    let counters = spec.counters(tags, key);
    let found = match again {
        false => {
            cache
                .versioned(spec.kind(), &counters, key, false, &spec.how())
                .await
        }
        true => {
            cache
                .versioned_again(spec.kind(), &counters, key, &spec.how())
                .await
        }
    };
    match found {
        Some((full, Some(bytes))) => {
            let (fresh, payload) = match spec.stale {
                0 => (true, &bytes[..]),
                _ => match super::fresh::read_stamp(&bytes) {
                    Some(read) => read,
                    None => return (None, Some(full)),
                },
            };
            (S::load(payload).map(|value| (value, fresh)), Some(full))
        }
        Some((full, None)) => (None, Some(full)),
        None => (None, None),
    }
}

/// Runs `body` unless its result is cached; see the [module docs](self).
#[doc(hidden)]
pub async fn memo<S: MemoStore>(
    spec: &MemoSpec,
    key: String,
    tags: Vec<String>,
    body: impl Future<Output = S>,
) -> S {
    let Some(cache) = CacheService::global() else {
        return body.await;
    };
    if key.is_empty() {
        bypass("key", &spec.name);
        return body.await;
    }
    let (hit, full_key) = lookup::<S>(cache, spec, &tags, &key, false).await;
    // A stale value is served unless this caller wins the refresh (see `fresh.rs`).
    let mut stale = None;
    let mut claim = None;
    if let Some((value, fresh)) = hit {
        claim = match (&full_key, fresh) {
            (Some(full), false) => cache.claim_refresh(full).await,
            _ => None,
        };
        if claim.is_none() {
            return value;
        }
        // Another caller may have refreshed it between this read and the claim.
        if let (Some(fresh), _) = lookup::<S>(cache, spec, &tags, &key, true).await
            && fresh.1
        {
            if let Some(claim) = claim {
                claim.release().await;
            }
            return fresh.0;
        }
        stale = Some(value);
    }
    let refreshing = stale.is_some();
    // The versioned key names the tables' versions this lookup saw; without it (the
    // cache is down) no computation can be shown to be recent enough to share.
    let Some(full_key) = full_key else {
        return run_body(spec, body).await.0;
    };
    // Single flight: one caller per versioned key runs the body; the others wait and
    // take its result. A call that starts after a write sees the bumped version, so it
    // never joins a computation that began before the write.
    let flight = {
        let mut map = match flights().lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|_, weak| weak.strong_count() > 0);
        match map.get(&full_key).and_then(Weak::upgrade) {
            Some(flight) => flight,
            None => {
                let flight = Arc::new(Flight::default());
                map.insert(full_key.clone(), Arc::downgrade(&flight));
                flight
            }
        }
    };
    let _turn = flight.turn.lock().await;
    if let Some(value) = flight.result.get().and_then(|bytes| S::load(bytes)) {
        return value;
    }
    let mut full_key = Some(full_key);
    if !refreshing {
        let (hit, again) = lookup::<S>(cache, spec, &tags, &key, true).await;
        if let Some((value, _)) = hit {
            return value;
        }
        full_key = again;
    }
    let (value, scoped) = run_body(spec, body).await;
    // The refresh is over, whatever its outcome: the next caller to find the entry
    // stale may claim the next one.
    if let Some(claim) = claim {
        claim.release().await;
    }
    if scoped {
        return value;
    }
    let stored = value.store();
    // A refresh that failed (an `Err`, not stored) serves the stale value it was to
    // replace: still within `ttl + stale` (stale-if-error).
    if let (None, Some(stale)) = (&stored, stale) {
        return stale;
    }
    if let Some(bytes) = stored {
        if let Some(full_key) = full_key {
            let ttl = Duration::from_secs(spec.ttl);
            match spec.stale {
                0 => {
                    cache
                        .versioned_fill(&full_key, &bytes, ttl, &spec.name)
                        .await
                }
                stale => {
                    let stamped = super::fresh::stamp(&bytes, ttl);
                    let kept = ttl.saturating_add(Duration::from_secs(stale));
                    cache
                        .versioned_fill(&full_key, &stamped, kept, &spec.name)
                        .await;
                }
            }
        }
        let _ = flight.result.set(bytes);
    }
    value
}

/// Runs a memoized body, noting whether it ran any statement under a user scope: such
/// a result depends on who asked, so it is never stored nor handed to another caller.
async fn run_body<S>(spec: &MemoSpec, body: impl Future<Output = S>) -> (S, bool) {
    let scoped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let value = FRAME.scope(scoped.clone(), body).await;
    let scoped = scoped.load(std::sync::atomic::Ordering::Acquire);
    if scoped {
        bypass("scoped", &spec.name);
    }
    (value, scoped)
}

/// Drops the entry of one call.
#[doc(hidden)]
pub async fn memo_invalidate(spec: &MemoSpec, key: String, tags: Vec<String>) {
    if key.is_empty() {
        return;
    }
    let _ = (spec, tags);
    if let Some(cache) = CacheService::global() {
        cache.bump(&[call_counter(&key)]).await;
    }
}

/// The counter of one call's entries.
fn call_counter(key: &str) -> String {
    format!("mk:{key}")
}

/// Drops every entry of the function.
#[doc(hidden)]
pub async fn memo_clear(spec: &MemoSpec) {
    if let Some(cache) = CacheService::global() {
        cache.bump(&[format!("mv:{}", spec.name)]).await;
    }
}

/// Compile-time check that a key argument is serializable.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[cached]` builds its key from the arguments, and `{Self}` is not `serde::Serialize`",
    label = "not serializable",
    note = "derive `Serialize` for it, or leave the argument out of the key with `skip(name)`"
)]
pub trait KeyArg {}

impl<T: Serialize + ?Sized> KeyArg for T {}

#[doc(hidden)]
pub fn assert_key_arg<T: KeyArg + ?Sized>() {}
