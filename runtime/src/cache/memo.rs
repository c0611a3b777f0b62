//! The runtime of `#[cached]`: memoized async functions.
//!
//! An entry's key is the function's name plus a hash of its arguments (as JSON), under
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
//! The cache used is the global one ([`CacheService::install_global`]; a `Db` built
//! with a cache installs it if none is). Without one, the body simply runs.

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
    fn counters(&self) -> Vec<String> {
        let mut counters = vec![format!("mv:{}", self.name)];
        counters.extend(self.tables.iter().map(|t| super::row::table_counter(t)));
        counters
    }
}

/// The key suffix of one call: the function's name and a hash of its arguments.
#[doc(hidden)]
pub fn memo_key<A: Serialize + ?Sized>(spec: &MemoSpec, args: &A) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(args).unwrap_or_default();
    let hash: String = sha2::Sha256::digest(&json)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}:{hash}", spec.name)
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

async fn lookup<S: MemoStore>(
    cache: &CacheService,
    spec: &MemoSpec,
    key: &str,
) -> (Option<S>, Option<String>) {
    match cache.versioned("m", &spec.counters(), key, false).await {
        Some((full, Some(bytes))) => match S::load(&bytes) {
            Some(value) => (Some(value), None),
            None => (None, Some(full)),
        },
        Some((full, None)) => (None, Some(full)),
        None => (None, None),
    }
}

/// Runs `body` unless its result is cached; see the [module docs](self).
#[doc(hidden)]
pub async fn memo<S: MemoStore>(spec: &MemoSpec, key: String, body: impl Future<Output = S>) -> S {
    let Some(cache) = CacheService::global() else {
        return body.await;
    };
    if let (Some(hit), _) = lookup::<S>(cache, spec, &key).await {
        return hit;
    }
    // Single flight: one caller per key runs the body; the others wait for it and take
    // its result (or, if it produced none worth keeping, look again and run it too).
    let flight = {
        let mut map = match flights().lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|_, weak| weak.strong_count() > 0);
        match map.get(&key).and_then(Weak::upgrade) {
            Some(flight) => flight,
            None => {
                let flight = Arc::new(Flight::default());
                map.insert(key.clone(), Arc::downgrade(&flight));
                flight
            }
        }
    };
    let _turn = flight.turn.lock().await;
    if let Some(value) = flight.result.get().and_then(|bytes| S::load(bytes)) {
        return value;
    }
    let (hit, full_key) = lookup::<S>(cache, spec, &key).await;
    if let Some(hit) = hit {
        return hit;
    }
    let value = body.await;
    if let Some(bytes) = value.store() {
        if let Some(full_key) = full_key {
            cache
                .versioned_fill(&full_key, &bytes, Duration::from_secs(spec.ttl))
                .await;
        }
        let _ = flight.result.set(bytes);
    }
    value
}

/// Drops the entry of one call.
#[doc(hidden)]
pub async fn memo_invalidate(spec: &MemoSpec, key: String) {
    if let Some(cache) = CacheService::global() {
        cache.versioned("m", &spec.counters(), &key, true).await;
    }
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
