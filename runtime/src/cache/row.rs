//! The cache protocol on the wire (scripts) and its use by [`Db`]: the read-through row
//! cache with leases, invalidation after writes, versioned keys for queries and memos.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use super::{Backend, CacheService, MemValue};
use crate::monitor;

/// Reads a row entry; on a miss, takes a lease in the same step.
/// KEYS: epoch. ARGV: base, suffix, token, lease ms, shape.
static ROW_GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local e = redis.call('GET', KEYS[1]) or '0'
local base = ARGV[1] .. ':' .. e
local v = redis.call('GET', base .. ':r:' .. ARGV[2])
if v and string.sub(v, 1, 16) == ARGV[5] then return {1, v} end
redis.call('SET', base .. ':l:' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
return {0, false}",
    )
});

/// The same for many rows: returns one value (or false) per suffix.
/// KEYS: epoch. ARGV: base, token, lease ms, shape, suffixes…
static ROW_GET_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local e = redis.call('GET', KEYS[1]) or '0'
local base = ARGV[1] .. ':' .. e
local out = {}
for i = 5, #ARGV do
  local v = redis.call('GET', base .. ':r:' .. ARGV[i])
  if v and string.sub(v, 1, 16) == ARGV[4] then
    out[i - 4] = v
  else
    redis.call('SET', base .. ':l:' .. ARGV[i], ARGV[2], 'PX', ARGV[3])
    out[i - 4] = false
  end
end
return out",
    )
});

/// Fills rows whose lease still holds `token`; returns how many were filled.
/// KEYS: epoch. ARGV: base, token, ttl ms, then suffix/value pairs.
static ROW_FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local e = redis.call('GET', KEYS[1]) or '0'
local base = ARGV[1] .. ':' .. e
local filled = 0
for i = 4, #ARGV, 2 do
  local lease = base .. ':l:' .. ARGV[i]
  if redis.call('GET', lease) == ARGV[2] then
    redis.call('SET', base .. ':r:' .. ARGV[i], ARGV[i + 1], 'PX', ARGV[3])
    redis.call('DEL', lease)
    filled = filled + 1
  end
end
return filled",
    )
});

/// Bumps version counters and deletes row entries with their leases.
/// KEYS: epoch. ARGV: base, number of counters, counters…, row suffixes…
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local e = redis.call('GET', KEYS[1]) or '0'
local base = ARGV[1] .. ':' .. e
local n = tonumber(ARGV[2])
for i = 3, 2 + n do redis.call('INCR', base .. ':' .. ARGV[i]) end
for i = 3 + n, #ARGV do
  redis.call('DEL', base .. ':r:' .. ARGV[i], base .. ':l:' .. ARGV[i])
end
return 1",
    )
});

/// Resolves a versioned key (its counters read on the server) and GETs or DELs it.
/// KEYS: epoch. ARGV: base, mode (get / del), kind, number of counters, counters…, suffix.
static VERSIONED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local e = redis.call('GET', KEYS[1]) or '0'
local base = ARGV[1] .. ':' .. e
local n = tonumber(ARGV[4])
local parts = {}
for i = 5, 4 + n do parts[#parts + 1] = redis.call('GET', base .. ':' .. ARGV[i]) or '0' end
local k = base .. ':' .. ARGV[3] .. ':' .. table.concat(parts, ',') .. ':' .. ARGV[5 + n]
if ARGV[2] == 'del' then return {k, redis.call('DEL', k)} end
return {k, redis.call('GET', k)}",
    )
});

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

fn token() -> String {
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

impl CacheService {
    fn base(&self) -> &str {
        &self.inner.internal_prefix
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
        metrics::counter!(monitor::CACHE_EVENTS, "event" => event).increment(n);
    }

    /// GET a row entry of `shape`; on a miss, take a lease.
    pub(crate) async fn row_get(&self, suffix: &str, shape: &str) -> Lookup {
        let started = Instant::now();
        let token = token();
        let lookup = match &self.inner.backend {
            Backend::Redis(r) => {
                let lease = millis(self.inner.config.lease);
                let args: [&[u8]; 5] = [
                    self.base().as_bytes(),
                    suffix.as_bytes(),
                    token.as_bytes(),
                    &lease,
                    shape.as_bytes(),
                ];
                match r
                    .script::<(i64, Option<Vec<u8>>)>(&ROW_GET, &[&self.inner.epoch_key], &args)
                    .await
                {
                    Ok((1, Some(value))) => Lookup::Hit(value),
                    Ok(_) => Lookup::Miss(Some(token)),
                    Err(_) => Lookup::Miss(None),
                }
            }
            Backend::Memory(m) => m.with(|map| {
                let key = format!("{}:0:r:{suffix}", self.base());
                match map.get_bytes(&key) {
                    Ok(Some(v)) if v.starts_with(shape.as_bytes()) => Lookup::Hit(v),
                    _ => {
                        let lease = format!("{}:0:l:{suffix}", self.base());
                        map.set(
                            &lease,
                            MemValue::Bytes(token.clone().into_bytes()),
                            Some(self.inner.config.lease),
                        );
                        Lookup::Miss(Some(token))
                    }
                }
            }),
        };
        let (event, outcome) = match &lookup {
            Lookup::Hit(_) => ("hit", "ok"),
            Lookup::Miss(Some(_)) => ("miss", "ok"),
            Lookup::Miss(None) => ("error", "error"),
        };
        self.event(event, 1);
        monitor::record_cache("row_get", started, outcome);
        lookup
    }

    /// Many row entries at once; misses take a lease (one token for all).
    pub(crate) async fn row_get_many(
        &self,
        suffixes: &[String],
        shape: &str,
    ) -> (Vec<Option<Vec<u8>>>, Option<String>) {
        let started = Instant::now();
        let token = token();
        let result = match &self.inner.backend {
            Backend::Redis(r) => {
                let lease = millis(self.inner.config.lease);
                let mut args: Vec<&[u8]> = vec![
                    self.base().as_bytes(),
                    token.as_bytes(),
                    &lease,
                    shape.as_bytes(),
                ];
                args.extend(suffixes.iter().map(|s| s.as_bytes()));
                match r
                    .script::<Vec<Option<Vec<u8>>>>(&ROW_GET_MANY, &[&self.inner.epoch_key], &args)
                    .await
                {
                    Ok(values) if values.len() == suffixes.len() => (values, Some(token)),
                    _ => (vec![None; suffixes.len()], None),
                }
            }
            Backend::Memory(m) => m.with(|map| {
                let values = suffixes
                    .iter()
                    .map(
                        |suffix| match map.get_bytes(&format!("{}:0:r:{suffix}", self.base())) {
                            Ok(Some(v)) if v.starts_with(shape.as_bytes()) => Some(v),
                            _ => {
                                let lease = format!("{}:0:l:{suffix}", self.base());
                                map.set(
                                    &lease,
                                    MemValue::Bytes(token.clone().into_bytes()),
                                    Some(self.inner.config.lease),
                                );
                                None
                            }
                        },
                    )
                    .collect();
                (values, Some(token))
            }),
        };
        let hits = result.0.iter().filter(|v| v.is_some()).count() as u64;
        self.event("hit", hits);
        self.event("miss", suffixes.len() as u64 - hits);
        monitor::record_cache(
            "row_get_many",
            started,
            if result.1.is_some() { "ok" } else { "error" },
        );
        result
    }

    /// Fills the entries whose leases still hold `token`; returns how many were filled.
    pub(crate) async fn row_fill(
        &self,
        token: &str,
        entries: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> u64 {
        if entries.is_empty() {
            return 0;
        }
        self.before_fill().await;
        let started = Instant::now();
        let filled = match &self.inner.backend {
            Backend::Redis(r) => {
                let ttl_ms = millis(ttl);
                let mut args: Vec<&[u8]> = vec![self.base().as_bytes(), token.as_bytes(), &ttl_ms];
                for (suffix, value) in entries {
                    args.push(suffix.as_bytes());
                    args.push(value);
                }
                r.script::<u64>(&ROW_FILL, &[&self.inner.epoch_key], &args)
                    .await
                    .unwrap_or(0)
            }
            Backend::Memory(m) => m.with(|map| {
                let mut filled = 0;
                for (suffix, value) in entries {
                    let lease = format!("{}:0:l:{suffix}", self.base());
                    if map.get_bytes(&lease).ok().flatten().as_deref() == Some(token.as_bytes()) {
                        map.set(
                            &format!("{}:0:r:{suffix}", self.base()),
                            MemValue::Bytes(value.clone()),
                            Some(ttl),
                        );
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

    /// Bumps `counters` and deletes `rows` (with their leases). `false` when Redis could
    /// not be told: the breaker is then dirty, and the epoch is bumped on recovery.
    pub(crate) async fn invalidate(&self, counters: &[String], rows: &[String]) -> bool {
        if counters.is_empty() && rows.is_empty() {
            return true;
        }
        let started = Instant::now();
        let ok = match &self.inner.backend {
            Backend::Redis(r) => {
                let n = counters.len().to_string();
                let mut args: Vec<&[u8]> = vec![self.base().as_bytes(), n.as_bytes()];
                args.extend(counters.iter().map(|c| c.as_bytes()));
                args.extend(rows.iter().map(|s| s.as_bytes()));
                r.script::<i64>(&INVALIDATE, &[&self.inner.epoch_key], &args)
                    .await
                    .is_ok()
            }
            Backend::Memory(m) => m.with(|map| {
                for counter in counters {
                    let key = format!("{}:0:{counter}", self.base());
                    let next = map
                        .get_bytes(&key)
                        .ok()
                        .flatten()
                        .and_then(|b| String::from_utf8(b).ok()?.parse::<u64>().ok())
                        .unwrap_or(0)
                        + 1;
                    map.set(&key, MemValue::Bytes(next.to_string().into_bytes()), None);
                }
                for suffix in rows {
                    map.remove(&format!("{}:0:r:{suffix}", self.base()));
                    map.remove(&format!("{}:0:l:{suffix}", self.base()));
                }
                true
            }),
        };
        if !ok {
            self.event("invalidation_failed", 1);
            tracing::warn!(
                counters = counters.len(),
                rows = rows.len(),
                "cache invalidation not delivered; the epoch will be bumped when redis is back"
            );
        }
        monitor::record_cache("invalidate", started, if ok { "ok" } else { "error" });
        ok
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
        let result = match &self.inner.backend {
            Backend::Redis(r) => {
                let n = counters.len().to_string();
                let mode: &[u8] = if delete { b"del" } else { b"get" };
                let mut args: Vec<&[u8]> =
                    vec![self.base().as_bytes(), mode, kind.as_bytes(), n.as_bytes()];
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
                let parts: Vec<String> = counters
                    .iter()
                    .map(|c| {
                        map.get_bytes(&format!("{}:0:{c}", self.base()))
                            .ok()
                            .flatten()
                            .and_then(|b| String::from_utf8(b).ok())
                            .unwrap_or_else(|| "0".into())
                    })
                    .collect();
                let key = format!("{}:0:{kind}:{}:{suffix}", self.base(), parts.join(","));
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
    /// no reader will ask for.
    pub(crate) async fn versioned_fill(&self, key: &str, value: &[u8], ttl: Duration) {
        match &self.inner.backend {
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

    /// Turns what writes touched (see `crate::db`'s invalidation seam) into key
    /// operations: the version counter of every table written, and the row entries
    /// of the rows named.
    pub(crate) async fn invalidate_writes(&self, writes: &[crate::db::Invalidation]) -> bool {
        let mut counters: Vec<String> = Vec::new();
        let mut rows = Vec::new();
        for write in writes {
            let counter = table_counter(write.table);
            if !counters.contains(&counter) {
                counters.push(counter);
            }
            let table = write.table.qualified_name();
            rows.extend(write.keys.iter().map(|key| format!("{table}:{key}")));
        }
        self.invalidate(&counters, &rows).await
    }

    /// Bumps counters only (e.g. clearing every entry of a `#[cached]` function).
    pub(crate) async fn bump(&self, counters: &[String]) -> bool {
        self.invalidate(counters, &[]).await
    }
}

/// `v:<table>`: the version counter of a table.
pub(crate) fn table_counter(meta: &crate::TableMeta) -> String {
    format!("v:{}", meta.qualified_name())
}

/// `<table>:<key as JSON>`: the row-cache name of a row (without epoch or shape).
pub(crate) fn row_suffix<M: crate::Table>(key: &M::Key) -> String {
    format!(
        "{}:{}",
        M::META.qualified_name(),
        serde_json::to_string(key).unwrap_or_default()
    )
}

/// Whether `row`'s column `index` still holds `wanted` (compared as the row cache
/// encodes the column, not through the model's serde).
fn holds<M: crate::Table, T: 'static>(row: &M, index: usize, wanted: &T) -> bool {
    row.cache_column_holds(index, wanted)
}

impl crate::Db {
    /// The cache of this handle, when reads of `M` go through it: the model declares
    /// `cache(ttl = …)`, a cache is configured, and the handle is not in a transaction
    /// (a transaction must see its own writes).
    fn row_cache<M: crate::Table>(&self) -> Option<(CacheService, Duration)> {
        let ttl = M::META.cache_ttl?;
        // Transactions must see their own writes; scoped handles must see only what
        // the policy shows them (see `crate::auth`).
        if self.tx.is_some() || self.scope.is_some() {
            return None;
        }
        let cache = self.shared.config.cache.clone()?;
        Some((cache, Duration::from_secs(ttl)))
    }

    /// [`Db::read`] through the row cache.
    pub(crate) async fn read_through<M: crate::Table>(
        &self,
        key: M::Key,
    ) -> crate::Result<Option<M>> {
        let Some((cache, ttl)) = self.row_cache::<M>() else {
            return self.read_uncached::<M>(key).await;
        };
        let suffix = row_suffix::<M>(&key);
        let shape = M::META.shape_hex();
        let token = match cache.row_get(&suffix, &shape).await {
            Lookup::Hit(bytes) => match bytes.get(16..).and_then(M::cache_decode) {
                Some(row) => return Ok(Some(row)),
                // Undecodable: a miss, and not ours to overwrite.
                None => None,
            },
            Lookup::Miss(token) => token,
        };
        let row = self.read_uncached::<M>(key).await?;
        if let (Some(row), Some(token)) = (&row, token)
            && let Some(encoded) = row.cache_encode()
        {
            let mut value = shape.into_bytes();
            value.extend(encoded);
            cache.row_fill(&token, &[(suffix, value)], ttl).await;
        }
        Ok(row)
    }

    /// The row whose unique `column` equals `value` (generated as `Model::by_<field>` for
    /// fields marked `#[table(unique)]`). With a row cache, the value maps to the row's
    /// key under a lease like any row, and the row itself comes from the row cache; a
    /// mapping is trusted only if the row it leads to still holds `value` — so a
    /// changed or reused value can never answer with the wrong row, and writes need no
    /// extra invalidation for it.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, #[table(unique)] pub slug: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let note: Option<Note> = Note::by_slug(&db, "hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn find_unique<M: crate::Table, T>(
        &self,
        column: crate::Column<M, T>,
        value: T,
    ) -> crate::Result<Option<M>>
    where
        T: crate::ColumnType + Clone + serde::Serialize,
    {
        let Some((cache, ttl)) = self.row_cache::<M>() else {
            return self.query::<M>().filter(column.eq(value)).first().await;
        };
        let meta = M::META;
        let wanted = serde_json::to_value(&value).unwrap_or_default();
        let suffix = format!(
            "{}#{}:{}",
            meta.qualified_name(),
            meta.columns[column.index()].name,
            wanted
        );
        let shape = meta.shape_hex();
        let mut lookup = cache.row_get(&suffix, &shape).await;
        if let Lookup::Hit(bytes) = &lookup {
            if let Some(key) = bytes
                .get(16..)
                .and_then(|b| serde_json::from_slice::<M::Key>(b).ok())
                && let Some(row) = self.read_through::<M>(key).await?
                && holds(&row, column.index(), &value)
            {
                return Ok(Some(row));
            }
            // A stale mapping: drop it, and take a lease to fill the right one.
            cache.invalidate(&[], std::slice::from_ref(&suffix)).await;
            lookup = cache.row_get(&suffix, &shape).await;
        }
        let token = match lookup {
            Lookup::Miss(token) => token,
            Lookup::Hit(_) => None,
        };
        // The key by the unique column, then the row through the row cache, so both
        // entries are warm after one miss.
        let key_column = crate::Column::<M, M::Key>::new(meta.primary_key, meta.key_column().name);
        let Some(key) = self
            .query::<M>()
            .select(key_column)
            .filter(column.eq(value.clone()))
            .first()
            .await?
        else {
            return Ok(None);
        };
        let Some(row) = self.read_through::<M>(key).await? else {
            return Ok(None); // deleted in between
        };
        if !holds(&row, column.index(), &value) {
            // The value moved in between: answer from PostgreSQL, cache nothing.
            return self.query::<M>().filter(column.eq(value)).first().await;
        }
        if let (Some(token), Ok(key)) = (token, serde_json::to_vec(row.key())) {
            let mut entry = shape.into_bytes();
            entry.extend(key);
            cache.row_fill(&token, &[(suffix, entry)], ttl).await;
        }
        Ok(Some(row))
    }

    /// Reads many rows by primary key: one cache round trip for all of them, one query
    /// for the misses, one round trip to fill them. The result lines up with `keys`.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, Clone)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let notes: Vec<Option<Note>> = db.read_many(&[1, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_many<M: crate::Table + Clone>(
        &self,
        keys: &[M::Key],
    ) -> crate::Result<Vec<Option<M>>> {
        Ok(self.read_many_counted(keys).await?.0)
    }

    /// Fills the row cache with these rows in one pipelined round trip (the seed's
    /// "cache warming"); returns how many entries were filled.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, Clone)] #[table(cache(ttl = 60))] #[derive(serde::Serialize, serde::Deserialize)]
    /// # pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.warm::<Note>(&[1, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn warm<M: crate::Table + Clone>(&self, keys: &[M::Key]) -> crate::Result<u64> {
        Ok(self.read_many_counted::<M>(keys).await?.1)
    }

    async fn read_many_counted<M: crate::Table + Clone>(
        &self,
        keys: &[M::Key],
    ) -> crate::Result<(Vec<Option<M>>, u64)> {
        if keys.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let cache = self.row_cache::<M>();
        let suffixes: Vec<String> = keys.iter().map(row_suffix::<M>).collect();
        let shape = M::META.shape_hex();
        let (cached, token) = match &cache {
            Some((cache, _)) => cache.row_get_many(&suffixes, &shape).await,
            None => (vec![None; keys.len()], None),
        };
        let mut out: Vec<Option<M>> = cached
            .iter()
            .map(|b| {
                b.as_ref()
                    .and_then(|b| b.get(16..))
                    .and_then(M::cache_decode)
            })
            .collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() {
            return Ok((out, 0));
        }
        let wanted: Vec<M::Key> = missing.iter().map(|i| keys[*i].clone()).collect();
        let found: std::collections::HashMap<String, M> = self
            .read_keys::<M>(wanted)
            .await?
            .into_iter()
            .map(|row| (row_suffix::<M>(row.key()), row))
            .collect();
        let mut fills = Vec::new();
        for i in missing {
            let Some(row) = found.get(&suffixes[i]) else {
                continue;
            };
            if token.is_some()
                && let Some(encoded) = row.cache_encode()
            {
                let mut value = shape.clone().into_bytes();
                value.extend(encoded);
                fills.push((suffixes[i].clone(), value));
            }
            out[i] = Some(row.clone());
        }
        let filled = match (&cache, &token) {
            (Some((cache, ttl)), Some(token)) => cache.row_fill(token, &fills, *ttl).await,
            _ => 0,
        };
        Ok((out, filled))
    }
}
