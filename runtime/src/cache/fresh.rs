//! Opt-in staleness and tags for memos and cached queries (never for the row cache,
//! which stays exact).
//!
//! **Stale-while-revalidate.** An entry kept with a `stale` window lives `ttl + stale`
//! in the cache and carries the time it stops being fresh (8 bytes, milliseconds since
//! the epoch by the writer's clock, before the value). Read fresh, it is a hit. Read
//! stale, one caller per entry — across processes sharing the cache: whoever creates
//! the entry's refresh claim first — recomputes it and gets the new value; every other
//! caller gets the stale value at once. So a value is at most `ttl + stale` old (plus
//! clock skew between processes), and a write to a table the entry depends on still
//! drops it at once: staleness covers expiry, never invalidation. Entries with and
//! without a window are kept under different kinds, so a deploy that changes the
//! window never misreads an entry.
//!
//! **Tags.** A tag is a version counter like a table's (`tg:<tag>`), part of the key
//! of every entry that carries it: [`CacheService::invalidate_tag`] bumps it, which
//! drops every such entry at once, in O(1).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::CacheService;

/// The counter of a tag.
pub(crate) fn tag_counter(tag: &str) -> String {
    format!("tg:{tag}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `payload` stamped fresh for `ttl` from now.
pub(crate) fn stamp(payload: &[u8], ttl: Duration) -> Vec<u8> {
    let until = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&until.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A stamped entry: whether it is still fresh, and its payload. `None` for bytes too
/// short to be one.
pub(crate) fn read_stamp(bytes: &[u8]) -> Option<(bool, &[u8])> {
    let (until, payload) = bytes.split_first_chunk::<8>()?;
    Some((now_ms() <= u64::from_le_bytes(*until), payload))
}

impl CacheService {
    /// Whether this caller is the one to refresh the stale entry `key` (the full key
    /// [`versioned`](Self::versioned) resolved). The claim is released when the
    /// refresh ends ([`release_refresh`](Self::release_refresh)); if its holder dies
    /// or is cancelled first, it lapses after the cache's lease time
    /// ([`CacheConfig::lease`](super::CacheConfig::lease)) and another caller refreshes.
    /// A cache that fails answers no: everyone is served the stale value.
    pub(crate) async fn claim_refresh(&self, key: &str) -> Option<RefreshClaim> {
        let claim = format!("{key}:refresh");
        let lease = self.inner.config.lease.max(Duration::from_millis(1));
        let won = self
            .inner
            .backend
            .claim(&claim, lease)
            .await
            .unwrap_or(false);
        won.then(|| RefreshClaim {
            cache: self.clone(),
            claim,
            released: false,
        })
    }

    /// Drops every memo and cached query carrying `tag` (given with `tags(...)` on a
    /// `#[cached]` function, or [`CachedQuery::tag`](crate::query::CachedQuery::tag)) in
    /// this cache — its own entries, and those of every database a `Db` of this
    /// process reads through it: one counter bumped per namespace, whatever the number
    /// of entries. [`Db::invalidate_tag`](crate::Db::invalidate_tag) also tells the
    /// other caches of its database and the memo cache.
    ///
    /// ```
    /// # async fn run() -> tabula::Result<()> {
    /// let cache = tabula::CacheService::in_memory(Default::default())?;
    /// cache.invalidate_tag("user:42").await;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) {
        self.bump_tag(tag).await;
        for view in super::views_sharing_backend(self) {
            view.bump_tag(tag).await;
        }
    }

    /// Bumps `tag` in this namespace only.
    pub(crate) async fn bump_tag(&self, tag: &str) {
        self.bump(&[tag_counter(tag)]).await;
    }
}

/// A won refresh claim. Released when the refresh ends; a caller cancelled before that
/// (its future dropped) releases it from a task, so the next caller to find the entry
/// stale refreshes at once instead of after the claim's lease.
pub(crate) struct RefreshClaim {
    cache: CacheService,
    claim: String,
    released: bool,
}

impl RefreshClaim {
    /// Ends the refresh.
    pub(crate) async fn release(mut self) {
        self.released = true;
        let _ = self.cache.inner.backend.delete(&self.claim).await;
    }
}

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cache, claim) = (self.cache.clone(), std::mem::take(&mut self.claim));
            runtime.spawn(async move {
                let _ = cache.inner.backend.delete(&claim).await;
            });
        }
    }
}
