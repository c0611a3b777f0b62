//! Query results through the cache (`.cached(ttl)`): rows, the first or only row, a
//! count, whether any row matches, a keyset page — each kept under the table's version
//! counter, so any write to the table makes every cached result of it miss.

use std::future::Future;

use super::page::{Fetched, page_after};
use super::{Cursor, Decode, Page, Query, fetch, run_count};
use crate::error::{Error, Result};
use crate::sql::Bound;
use crate::table::{CacheCodec, CodecReader, Table, write_len};

/// A query whose result is cached; from [`Query::cached`].
#[must_use = "a query does nothing until .all() (or first, one, count, exists, page) runs it"]
pub struct CachedQuery<M, D> {
    pub(super) query: Query<M, D>,
    pub(super) ttl_seconds: u64,
    pub(super) stale_seconds: u64,
    pub(super) tags: Vec<String>,
}

impl<M: Table, D: Decode<M>> CachedQuery<M, D> {
    /// Serves the result for up to `seconds` after its TTL ran out while one caller
    /// (across processes sharing the cache) refreshes it — opt-in staleness, bounded
    /// by `ttl + seconds`; a write to the table still drops it at once. See
    /// [`crate::cache`].
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let total = db.query::<Note>().cached(60).stale(30).count().await?;
    /// # Ok(()) }
    /// ```
    pub fn stale(mut self, seconds: u64) -> Self {
        self.stale_seconds = seconds;
        self
    }

    /// Tags the cached result: [`Db::invalidate_tag`](crate::Db::invalidate_tag) drops
    /// every result carrying the tag, in one step.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub owner: i64 }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let mine = db.query::<Note>().filter(Note::OWNER.eq(7)).cached(60).tag("user:7").all().await?;
    /// db.invalidate_tag("user:7").await;
    /// # Ok(()) }
    /// ```
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// `fetch`'s result for the statement `bound`, from the cache when this exact
    /// statement (SQL and values) was answered since the table's last write. Under a
    /// user scope, from that scope's own entries. Inside a transaction, for a locking
    /// read, or without a cache, it is fetched every time.
    /// `operation`: the one the database path records for this call, so that a read
    /// the cache answers is counted under it too.
    async fn through<T, F>(
        &self,
        operation: &'static str,
        bound: &Bound<'static>,
        fetch: impl FnOnce() -> F,
        encode: impl FnOnce(&T) -> Option<Vec<u8>>,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        if self.ttl_seconds == 0 {
            return Err(Error::Validation(
                "a cached query needs a TTL of at least 1 second".into(),
            ));
        }
        let db = &self.query.db;
        let locking = self.query.lock.is_some();
        // Inside a user scope's one-shot call of this handle (its `with_client` body),
        // as inside a transaction: the call's own writes must be seen.
        let enclosed = crate::db::current_scoped_tx(db).is_some();
        let cache = match (&db.shared.cache, &db.tx) {
            // A locking read is about the rows as they are now: never from a cache.
            (Some(cache), None) if !locking && !enclosed => cache.clone(),
            _ => return fetch().await,
        };
        let meta = M::META;
        let scoped = match &db.scope {
            // A user scope's results are its own: named by the scope, and versioned by
            // the tables its policies read too (see `db/policy.rs`); not cacheable
            // under policies that read the clock or unknown functions.
            Some(scope) => match db.scoped_entries(scope, meta).await {
                Some(scoped) => Some(scoped),
                None => return fetch().await,
            },
            // A role that sees fewer rows than others (no grant, a policy) never shares
            // their results (see `Db::shared_reads_allowed`).
            None if db.shared_reads_allowed(meta).await => None,
            None => return fetch().await,
        };
        let started = std::time::Instant::now();
        let table = meta.qualified_name();
        // The TTL and the stale window are part of the entry's identity: a query
        // cached for 1 s is never answered by the entry of one cached for 300.
        let mut suffix = format!(
            "{}:{}:{}:{}:{}",
            meta.qualified_name(),
            meta.shape_hex(),
            bound.fingerprint(),
            self.ttl_seconds,
            self.stale_seconds
        );
        let mut counters = vec![crate::cache::row::table_counter(meta)];
        counters.extend(
            self.tags
                .iter()
                .map(|t| crate::cache::fresh::tag_counter(t)),
        );
        if let Some(scoped) = &scoped {
            suffix.push_str(":s");
            suffix.push_str(&scoped.id);
            counters.extend(scoped.counters.iter().cloned());
        }
        let how = crate::cache::row::RowCache::shared(
            meta.name,
            std::time::Duration::from_secs(self.ttl_seconds),
            meta.cache_near,
        );
        let stale = std::time::Duration::from_secs(self.stale_seconds);
        // Stamped entries (a stale window) are another kind (see `cache/fresh.rs`).
        let kind = if stale.is_zero() { "q" } else { "qs" };
        let found = cache.versioned(kind, &counters, &suffix, false, &how).await;
        let mut served = None;
        let mut claim = None;
        if let Some((key, Some(bytes))) = &found {
            let (fresh, payload) = match stale.is_zero() {
                true => (true, Some(&bytes[..])),
                false => match crate::cache::fresh::read_stamp(bytes) {
                    Some((fresh, payload)) => (fresh, Some(payload)),
                    None => (false, None),
                },
            };
            if let Some(value) = payload.and_then(&decode) {
                // Stale: served, unless this caller wins the refresh.
                if !fresh {
                    claim = cache.claim_refresh(key).await;
                }
                if claim.is_none() {
                    crate::monitor::record_cache_answer(operation, meta.name, started, "cache");
                    return Ok(value);
                }
                // Another caller may have refreshed it between this read and the
                // claim (and released its own): then there is nothing left to do.
                let again = cache.versioned_again(kind, &counters, &suffix, &how).await;
                let refreshed = match &again {
                    Some((_, Some(bytes))) => crate::cache::fresh::read_stamp(bytes)
                        .filter(|(fresh, _)| *fresh)
                        .and_then(|(_, payload)| decode(payload)),
                    _ => None,
                };
                if let Some(fresh) = refreshed {
                    if let Some(claim) = claim {
                        claim.release().await;
                    }
                    return Ok(fresh);
                }
                served = Some(value);
            }
        }
        let fetched = fetch().await;
        if let Some(claim) = claim {
            claim.release().await;
        }
        // A failed refresh serves the stale value (still within `ttl + stale`).
        let value = match (fetched, served) {
            (Ok(value), _) => value,
            (Err(_), Some(stale)) => return Ok(stale),
            (Err(e), None) => return Err(e),
        };
        // Not shared when a session opened meanwhile showed the handle's names to be
        // its own (see `Db::shared_reads_allowed`).
        if let Some((key, _)) = found
            && let Some(bytes) = encode(&value)
            && db.names_as_others(meta)
        {
            match stale.is_zero() {
                true => cache.versioned_fill(&key, &bytes, how.ttl, &table).await,
                false => {
                    let stamped = crate::cache::fresh::stamp(&bytes, how.ttl);
                    let kept = how.ttl.saturating_add(stale);
                    cache.versioned_fill(&key, &stamped, kept, &table).await;
                }
            }
        }
        Ok(value)
    }

    /// Every row, from the cache when this exact query (SQL and values) was answered
    /// since the table's last write.
    pub async fn all(self) -> Result<Vec<D::Output>> {
        let bound = self.query.bind()?;
        let db = self.query.db.clone();
        self.through(
            "query",
            &bound,
            || fetch::<M, D>(&db, &bound),
            |rows| D::encode_rows(rows),
            D::decode_rows,
        )
        .await
    }

    /// The first row, if any (adds `LIMIT 1`).
    pub async fn first(mut self) -> Result<Option<D::Output>> {
        self.query = self.query.limit(1);
        Ok(self.all().await?.into_iter().next())
    }

    /// Exactly one row: none is [`Error::NotFound`], more than one is
    /// [`Error::Validation`] — as [`Query::one`].
    pub async fn one(mut self) -> Result<D::Output> {
        self.query = self.query.limit(2);
        let mut rows = self.all().await?.into_iter();
        match (rows.next(), rows.next()) {
            (Some(row), None) => Ok(row),
            (None, _) => Err(Error::NotFound {
                table: M::META.name,
            }),
            (Some(_), Some(_)) => Err(Error::Validation(format!(
                "expected one row of `{}`, found more",
                M::META.name
            ))),
        }
    }

    /// How many rows match (honours limit and offset, as [`Query::count`]).
    pub async fn count(self) -> Result<i64> {
        self.query.no_lock("count")?;
        let bound = self.query.bind_count(true)?;
        let db = self.query.db.clone();
        self.through(
            "count",
            &bound,
            || run_count::<M>(&db, &bound),
            |n| Some(n.to_le_bytes().to_vec()),
            |bytes| bytes.try_into().ok().map(i64::from_le_bytes),
        )
        .await
    }

    /// Whether any row matches.
    pub async fn exists(mut self) -> Result<bool> {
        self.query = self.query.limit(1);
        Ok(self.count().await? > 0)
    }

    /// One keyset page, as [`Query::page`]: the cursor's values are part of what is
    /// cached, so each page is its own entry, and a write to the table drops them all.
    pub async fn page(self, size: u64, after: Option<&Cursor>) -> Result<Page<D::Output>> {
        let (keys, bound) = self.query.keyset_plan(size, after)?;
        let resumed = after.is_some();
        let fetched = self
            .through(
                "page",
                &bound,
                || {
                    self.query
                        .fetch_bound_keyset(&bound, size, keys.len(), resumed)
                },
                encode_fetched::<M, D>,
                decode_fetched::<M, D>,
            )
            .await?;
        Ok(page_after(&keys, resumed, fetched))
    }
}

/// A page's rows (as cached queries keep rows), whether more follow, and each row's key
/// texts.
fn encode_fetched<M: Table, D: Decode<M>>(fetched: &Fetched<D::Output>) -> Option<Vec<u8>> {
    let (items, more, texts) = fetched;
    let mut out = Vec::new();
    crate::table::write_bytes(&mut out, &D::encode_rows(items)?);
    more.encode(&mut out);
    write_len(&mut out, texts.len());
    for row in texts {
        row.encode(&mut out);
    }
    Some(out)
}

fn decode_fetched<M: Table, D: Decode<M>>(bytes: &[u8]) -> Option<Fetched<D::Output>> {
    let mut input = CodecReader::new(bytes);
    let items = D::decode_rows(input.bytes()?)?;
    let more = bool::decode(&mut input)?;
    let count = input.len_prefix()?;
    let mut texts = Vec::with_capacity(count);
    for _ in 0..count {
        texts.push(Vec::<Option<String>>::decode(&mut input)?);
    }
    input.finish()?;
    // Every row has its key texts, or the entry is not one this code wrote.
    (texts.len() == items.len()).then_some((items, more, texts))
}
