//! The near tier (`CacheConfig::near`) on real Redis and PostgreSQL.
//!
//! "Two processes" here are two `Db`s, each with its own `CacheService::redis`: its own
//! Redis connection, its own near tier, nothing shared in-process. They are what two OS
//! processes are to each other: the same prefix and namespace make them one Redis
//! cache, so a write through one never touches the other's tier directly (`Db` tells
//! other caches of the same database only when they are *different* caches) — the only
//! way it learns of the write is Redis's invalidation push. `tests/torture.rs` runs the
//! same with real OS processes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabula::cache::NearStats;
use tabula::testkit::PrivateRedis;
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "near_items", cache(ttl = 300))]
struct Item {
    #[table(primary_key)]
    id: i64,
    version: i64,
    #[table(unique)]
    code: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "near_items", cache(ttl = 300, near = false))]
struct FarItem {
    #[table(primary_key)]
    id: i64,
    version: i64,
    code: String,
}

const SCHEMA: &str = "CREATE TABLE near_items (id bigint PRIMARY KEY, version bigint NOT NULL, code text NOT NULL UNIQUE)";

fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "near{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(prefix: &str) -> CacheConfig {
    CacheConfig::default()
        .prefix(prefix)
        .deadline(Duration::from_secs(2))
        .near(4 << 20)
}

/// Two handles on one fresh database, each with its own Redis connection and tier.
async fn two(redis: &str, config: CacheConfig) -> (Db, Db) {
    let (first, url) = common::db_and_url().await;
    first.execute_batch(SCHEMA).await.expect("schema");
    let open = async || {
        let cache = CacheService::redis(redis, config.clone()).expect("cache");
        Db::connect_with(DbConfig::new(&url).cache(cache))
            .await
            .expect("db")
    };
    (open().await, open().await)
}

fn stats(db: &Db) -> NearStats {
    db.cache()
        .and_then(|c| c.near_stats())
        .expect("a near tier")
}

async fn create(db: &Db, id: i64) {
    db.create(NewItem {
        id,
        version: 1,
        code: format!("c{id}-1"),
    })
    .await
    .expect("create");
}

async fn version(db: &Db, id: i64) -> i64 {
    db.read::<Item>(id)
        .await
        .expect("read")
        .expect("row")
        .version
}

async fn bump(db: &Db, id: i64, version: i64) {
    db.update::<Item>(
        id,
        ItemPatch {
            version: Some(version),
            code: Some(format!("c{id}-{version}")),
        },
    )
    .await
    .expect("update");
}

/// Reads until the near tier answers (a miss fills Redis, a Redis hit installs).
async fn warm(db: &Db, id: i64) {
    for _ in 0..5 {
        let before = stats(db).hits;
        version(db, id).await;
        if stats(db).hits > before {
            return;
        }
    }
    panic!("the near tier never answered: {:?}", stats(db));
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_write_in_one_process_evicts_the_others_near_entry() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = two(&redis, config(&prefix())).await;
    create(&a, 1).await;
    warm(&a, 1).await;
    let hits = stats(&a).hits;
    assert_eq!(version(&a, 1).await, 1);
    assert_eq!(stats(&a).hits, hits + 1, "answered in-process");

    let heard = stats(&a).invalidations;
    bump(&b, 1, 2).await;
    until("the push reached a", || stats(&a).invalidations > heard).await;
    assert_eq!(version(&a, 1).await, 2, "a served its old near entry");
    // And the unique finder's mapping and a cached query follow as well.
    let by_code = Item::by_code(&a, "c1-2").await.expect("by code");
    assert_eq!(by_code.map(|i| i.version), Some(2));
    let cached = async |db: &Db| {
        db.query::<Item>()
            .filter(Item::ID.eq(1))
            .cached(60)
            .all()
            .await
            .expect("query")[0]
            .version
    };
    for _ in 0..3 {
        assert_eq!(cached(&a).await, 2);
    }
    let heard = stats(&a).invalidations;
    bump(&b, 1, 3).await;
    until("the push reached a", || stats(&a).invalidations > heard).await;
    assert_eq!(cached(&a).await, 3, "a served its old near query result");
}

#[tokio::test]
async fn a_process_reads_its_own_write_at_once() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, _) = two(&redis, config(&prefix())).await;
    create(&a, 1).await;
    for v in 2..20 {
        warm(&a, 1).await;
        bump(&a, 1, v).await;
        // No waiting for the push: the write evicted its own entry before returning.
        assert_eq!(version(&a, 1).await, v);
    }
}

/// The race the Redis client-side caching reference warns about, placed exactly: a
/// reply carrying the old row waits while the invalidation of that row arrives; the
/// reply must not be installed.
#[tokio::test]
async fn a_reply_overtaken_by_an_invalidation_is_not_installed() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = two(&redis, config(&prefix())).await;
    create(&a, 1).await;
    version(&a, 1).await; // fills Redis; the next read of `a` is a Redis hit

    let (arrived, go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let cache = a.cache().expect("cache").clone();
    let hook = {
        let (arrived, go) = (arrived.clone(), go.clone());
        Arc::new(move || {
            let (arrived, go) = (arrived.clone(), go.clone());
            Box::pin(async move {
                arrived.notify_one();
                go.notified().await;
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        })
    };
    cache.set_near_hook(Some(hook));
    let reader = {
        let a = a.clone();
        tokio::spawn(async move { version(&a, 1).await })
    };
    arrived.notified().await; // the old row is in hand, not yet installed
    let heard = stats(&a).invalidations;
    bump(&b, 1, 2).await;
    until("the push reached a", || stats(&a).invalidations > heard).await;
    go.notify_one();
    assert_eq!(
        reader.await.expect("reader"),
        1,
        "it began before the write"
    );
    cache.set_near_hook(None);
    assert!(stats(&a).refused >= 1, "{:?}", stats(&a));
    assert_eq!(version(&a, 1).await, 2, "the overtaken reply was installed");
}

#[tokio::test]
async fn a_killed_connection_flushes_the_tier_and_nothing_stale_is_read_after() {
    let redis = PrivateRedis::start().expect("redis");
    let (a, b) = two(&redis.url(), config(&prefix())).await;
    create(&a, 1).await;
    warm(&a, 1).await;
    let flushes = stats(&a).flushes;
    let client = redis::Client::open(redis.url()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut raw)
        .await
        .expect("kill");
    until("a noticed", || stats(&a).flushes > flushes).await;
    assert_eq!(stats(&a).entries, 0, "{:?}", stats(&a));
    bump(&b, 1, 2).await;
    assert_eq!(version(&a, 1).await, 2);
    // And the tier serves again on the new, tracked connection — coherently.
    warm(&a, 1).await;
    let heard = stats(&a).invalidations;
    bump(&b, 1, 3).await;
    until("the push reached a", || stats(&a).invalidations > heard).await;
    assert_eq!(version(&a, 1).await, 3);
}

#[tokio::test]
async fn while_redis_is_paused_the_tier_is_not_used() {
    let redis = PrivateRedis::start().expect("redis");
    let config = config(&prefix())
        .deadline(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(100));
    let (a, b) = two(&redis.url(), config).await;
    create(&a, 1).await;
    warm(&a, 1).await;
    redis.pause();
    // b's invalidation cannot be delivered: its write returns after one deadline.
    bump(&b, 1, 2).await;
    assert_eq!(version(&a, 1).await, 2, "a read its near entry while deaf");
    redis.resume();
    // b's lost invalidation arrives as a new epoch; the tier comes back.
    let back = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(version(&a, 1).await, 2);
        let before = stats(&a).hits;
        assert_eq!(version(&a, 1).await, 2);
        if stats(&a).hits > before {
            break;
        }
        assert!(
            Instant::now() < back,
            "the tier never came back: {:?}",
            stats(&a)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_budget_holds_under_a_workload_larger_than_it() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let budget = 16 * 1024;
    let (a, b) = two(&redis, config(&prefix()).near(budget)).await;
    let rows = 300;
    let new: Vec<NewItem> = (0..rows)
        .map(|id| NewItem {
            id,
            version: id,
            code: format!("code-{id}"),
        })
        .collect();
    b.create_many(new).await.expect("rows");
    for _ in 0..3 {
        for id in 0..rows {
            assert_eq!(version(&a, id).await, id);
        }
    }
    let s = stats(&a);
    assert!(s.bytes <= budget, "{s:?}");
    assert!(s.evictions > 0, "{s:?}");
    assert!(s.entries < rows as u64, "{s:?}");
}

#[tokio::test]
async fn a_model_that_opts_out_is_never_answered_in_process() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, _) = two(&redis, config(&prefix())).await;
    create(&a, 1).await;
    warm(&a, 1).await; // the opt-out is per model: `Item` is answered here
    let before = stats(&a);
    for _ in 0..5 {
        let far = a.read::<FarItem>(1).await.expect("read").expect("row");
        assert_eq!(far.version, 1);
    }
    let after = stats(&a);
    assert_eq!((after.hits, after.misses), (before.hits, before.misses));
}

#[tokio::test]
async fn a_near_tier_is_refused_where_it_cannot_work() {
    let memory = CacheService::in_memory(CacheConfig::default().near(1024));
    assert!(matches!(memory, Err(tabula::Error::Config(_))));
    let zero = CacheService::redis("redis://127.0.0.1/", CacheConfig::default().near(0));
    assert!(matches!(zero, Err(tabula::Error::Config(_))));
}
