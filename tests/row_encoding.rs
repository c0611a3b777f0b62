//! The row cache stores rows by their columns, not by the model's `serde` impls: a
//! cache hit returns exactly the row PostgreSQL holds, whatever `#[serde(...)]`
//! attributes the model carries, and a model needs no serde derives to be cached.
//! On real PostgreSQL and Redis.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use uuid::Uuid;

/// The seed's profile, cached, with serde attributes that make its JSON form differ
/// from its columns: a skipped field, a renamed one, and one with its own serializer.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 60))]
struct SerdeQuirks {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    #[serde(rename = "login")]
    username: String,
    #[serde(skip)]
    avatar_url: Option<String>,
    #[table(generated)]
    #[serde(serialize_with = "shout")]
    status: String,
    #[table(generated)]
    created_at: DateTime<Utc>,
    #[table(generated)]
    updated_at: DateTime<Utc>,
}

/// A serializer that does not round-trip (as for a public API that formats a field).
fn shout<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&value.to_uppercase())
}

fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "enc{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of this test's own, with a row cache on the test kit's Redis.
async fn cached_db() -> Db {
    let config = CacheConfig::default()
        .prefix(unique_prefix())
        .deadline(Duration::from_secs(2));
    let cache =
        CacheService::redis(&tabula::testkit::redis_url().expect("redis"), config).expect("cache");
    let (_, url) = common::db_and_url().await;
    Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db")
}

/// Reads `key` twice through the cache (fill, then hit) and checks the hit against
/// what PostgreSQL holds.
async fn assert_hit_matches_database<M: Table + PartialEq + std::fmt::Debug>(db: &Db, key: M::Key) {
    let filled = db.read::<M>(key.clone()).await.expect("read (fill)");
    let hit = db.read::<M>(key.clone()).await.expect("read (hit)");
    let stored = db.read_uncached::<M>(key).await.expect("read_uncached");
    assert!(stored.is_some(), "the row exists in PostgreSQL");
    assert_eq!(
        filled, stored,
        "the read that filled the cache returns the stored row"
    );
    assert_eq!(
        hit, stored,
        "a cache hit returns exactly the row PostgreSQL holds"
    );
}

#[tokio::test]
async fn a_cache_hit_ignores_serde_skip_rename_and_serialize_with() {
    let db = cached_db().await;
    let row = db
        .create(NewSerdeQuirks {
            user_id: Uuid::new_v4(),
            username: "quirky".into(),
            avatar_url: Some("https://example.invalid/a.png".into()),
        })
        .await
        .expect("create");
    assert_hit_matches_database::<SerdeQuirks>(&db, row.id).await;
}
