//! `#[cached]` on functions and methods, on real Redis and PostgreSQL.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table, cached};
use uuid::Uuid;

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles")]
struct Profile {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    username: String,
    avatar_url: Option<String>,
}

/// One Redis-backed global cache for this test binary (`#[cached]` uses the global).
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let url = tabula::testkit::redis_url().expect("redis");
        let prefix = format!("memo{}", std::process::id());
        let cache = CacheService::redis(
            &url,
            CacheConfig::default()
                .prefix(prefix)
                .deadline(std::time::Duration::from_secs(2)),
        )
        .expect("cache");
        assert!(cache.install_global());
    });
}

async fn db() -> Db {
    install();
    let (_, url) = common::db_and_url().await;
    let cache = CacheService::global().expect("global cache").clone();
    Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db")
}

struct UserService {
    db: Db,
    calls: AtomicU32,
}

impl UserService {
    /// The seed's `@CacheService.cache(300) getUserProfile`.
    #[cached(ttl = 300, tables(Profile))]
    async fn user_profile(&self, id: Uuid) -> tabula::Result<Option<Profile>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.db.read_uncached::<Profile>(id).await
    }

    #[cached(ttl = 300, skip(trace))]
    async fn double(&self, n: i64, trace: &str) -> i64 {
        let _ = trace;
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        n * 2
    }

    #[cached(ttl = 300)]
    async fn fails(&self, n: i64) -> Result<i64, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if n < 0 { Err("negative".into()) } else { Ok(n) }
    }
}

static FREE_CALLS: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 300, name = "free_square")]
async fn square(n: u32) -> Option<u32> {
    FREE_CALLS.fetch_add(1, Ordering::SeqCst);
    (n > 0).then_some(n * n)
}

fn service(db: Db) -> UserService {
    UserService {
        db,
        calls: AtomicU32::new(0),
    }
}

#[tokio::test]
async fn a_method_result_is_cached_until_a_write_to_its_table() {
    let db = db().await;
    let s = service(db.clone());
    let p = db
        .create(NewProfile {
            user_id: Uuid::new_v4(),
            username: "memo".into(),
            avatar_url: None,
        })
        .await
        .expect("create");
    let first = s.user_profile(p.id).await.expect("first").expect("row");
    let again = s.user_profile(p.id).await.expect("again").expect("row");
    assert_eq!(first, again);
    assert_eq!(s.calls.load(Ordering::SeqCst), 1, "second call was a hit");
    db.update::<Profile>(
        p.id,
        ProfilePatch {
            username: Some("renamed".into()),
            ..Default::default()
        },
    )
    .await
    .expect("write to a tied table");
    let after = s.user_profile(p.id).await.expect("after").expect("row");
    assert_eq!(after.username, "renamed");
    assert_eq!(s.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_receiver_is_not_part_of_the_key_and_skipped_arguments_are_not_either() {
    let db = db().await;
    let (a, b) = (service(db.clone()), service(db));
    assert_eq!(a.double(21_000_001, "x").await, 42_000_002);
    assert_eq!(b.double(21_000_001, "y").await, 42_000_002);
    assert_eq!(
        a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn only_ok_is_cached_for_a_result() {
    let s = service(db().await);
    let n = 7_000_000 + i64::from(std::process::id() % 1000);
    assert!(s.fails(-n).await.is_err());
    assert!(s.fails(-n).await.is_err());
    assert_eq!(s.calls.load(Ordering::SeqCst), 2, "errors are not cached");
    assert_eq!(s.fails(n).await, Ok(n));
    assert_eq!(s.fails(n).await, Ok(n));
    assert_eq!(s.calls.load(Ordering::SeqCst), 3, "Ok is cached");
}

#[tokio::test]
async fn concurrent_callers_with_one_key_run_the_body_once() {
    let s = Arc::new(service(db().await));
    let n = 9_000_000 + i64::from(std::process::id() % 1000);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.double(n, "t").await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("join"), n * 2);
    }
    assert_eq!(s.calls.load(Ordering::SeqCst), 1, "single flight");
}

#[tokio::test]
async fn free_functions_cache_none_and_can_be_invalidated_or_cleared() {
    let _db = db().await;
    let before = FREE_CALLS.load(Ordering::SeqCst);
    assert_eq!(square(0).await, None);
    assert_eq!(square(0).await, None, "None is cached");
    assert_eq!(square(12).await, Some(144));
    assert_eq!(square(12).await, Some(144));
    assert_eq!(FREE_CALLS.load(Ordering::SeqCst) - before, 2);
    square_invalidate(12).await;
    assert_eq!(square(12).await, Some(144));
    assert_eq!(
        FREE_CALLS.load(Ordering::SeqCst) - before,
        3,
        "one entry dropped"
    );
    assert_eq!(square(0).await, None);
    assert_eq!(
        FREE_CALLS.load(Ordering::SeqCst) - before,
        3,
        "the other kept"
    );
    square_clear().await;
    assert_eq!(square(0).await, None);
    assert_eq!(square(12).await, Some(144));
    assert_eq!(
        FREE_CALLS.load(Ordering::SeqCst) - before,
        5,
        "all entries dropped"
    );
}
