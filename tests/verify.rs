//! The measured staleness rate (`CacheConfig::verify_sample`): a sample of row-cache
//! hits is read again from PostgreSQL; none disagrees under Tabula's own writes, and
//! every hit left stale by a write behind Tabula's back is counted — on Redis, behind
//! a near tier, and in-process.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabula::cache::VerifyStats;
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "checked", cache(ttl = 300))]
struct Checked {
    #[table(primary_key)]
    id: i64,
    body: String,
}

fn caches() -> Vec<CacheService> {
    static N: AtomicU64 = AtomicU64::new(0);
    let config = || {
        CacheConfig::default()
            .prefix(format!(
                "vfy{}x{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ))
            .verify_sample(1.0)
    };
    let redis = tabula::testkit::redis_url().expect("redis");
    vec![
        CacheService::redis(&redis, config()).expect("redis"),
        CacheService::redis(&redis, common::near(config())).expect("near"),
        CacheService::in_memory(config()).expect("memory"),
    ]
}

async fn db_with(cache: CacheService) -> Db {
    let (_, url) = common::db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    db.execute_batch("CREATE TABLE checked (id int8 PRIMARY KEY, body text NOT NULL)")
        .await
        .expect("table");
    db
}

/// Waits (up to 5 s) for the checks in flight to reach `checked`.
async fn settled(cache: &CacheService, checked: u64) -> VerifyStats {
    let started = Instant::now();
    loop {
        let stats = cache.verify_stats();
        if stats.checked >= checked || started.elapsed() > Duration::from_secs(5) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tabulas_own_writes_leave_no_stale_hit() {
    for cache in caches() {
        let db = db_with(cache.clone()).await;
        for id in 0..5 {
            db.create(NewChecked {
                id,
                body: "v0".into(),
            })
            .await
            .expect("create");
        }
        let mut hits = 0;
        for round in 1..=6 {
            for id in 0..5 {
                db.update(id, CheckedPatch::default().body(format!("v{round}")))
                    .await
                    .expect("update");
                db.read::<Checked>(id).await.expect("fill");
                let read = db.read::<Checked>(id).await.expect("hit").expect("row");
                assert_eq!(read.body, format!("v{round}"));
                hits += 1;
            }
        }
        // An absence, checked too.
        assert_eq!(db.read::<Checked>(99).await.expect("absent"), None);
        assert_eq!(db.read::<Checked>(99).await.expect("absent hit"), None);
        // Checks run a few at a time; a hit that finds them busy is not sampled.
        let stats = settled(&cache, hits + 1).await;
        assert!(stats.checked > 0, "hits were checked: {stats:?}");
        assert_eq!(
            stats.stale, 0,
            "no stale hit under Tabula's writes: {stats:?}"
        );
    }
}

#[tokio::test]
async fn a_write_behind_tabulas_back_is_counted_stale() {
    for cache in caches() {
        let db = db_with(cache.clone()).await;
        db.create(NewChecked {
            id: 1,
            body: "old".into(),
        })
        .await
        .expect("create");
        assert!(db.read::<Checked>(1).await.expect("fill").is_some());
        assert_eq!(db.read::<Checked>(2).await.expect("absent"), None);
        db.execute_batch(
            "UPDATE checked SET body = 'new' WHERE id = 1;
             INSERT INTO checked VALUES (2, 'sneaked in')",
        )
        .await
        .expect("behind the back");
        let before = cache.verify_stats();
        // Both hits are now stale: the row changed, the absent row exists.
        assert_eq!(
            db.read::<Checked>(1).await.expect("hit").map(|c| c.body),
            Some("old".into())
        );
        assert_eq!(db.read::<Checked>(2).await.expect("hit"), None);
        let stats = settled(&cache, before.checked + 2).await;
        assert_eq!(
            stats.stale,
            before.stale + 2,
            "both stale hits counted: {stats:?}"
        );
    }
}

/// A write racing the check (its row read from the cache just before it committed) is
/// not a stale hit: its invalidation lands within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_the_checks_are_not_counted_stale() {
    for cache in caches() {
        let db = db_with(cache.clone()).await;
        for id in 0..4 {
            db.create(NewChecked {
                id,
                body: "0".into(),
            })
            .await
            .expect("create");
        }
        let writer = {
            let db = db.clone();
            tokio::spawn(async move {
                for n in 1..=40 {
                    let id = n % 4;
                    db.update(id, CheckedPatch::default().body(n.to_string()))
                        .await
                        .expect("update");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() {
            for id in 0..4 {
                db.read::<Checked>(id).await.expect("read");
                reads += 1;
            }
        }
        writer.await.expect("writer");
        assert!(reads > 40, "the reader kept up: {reads}");
        settled(&cache, 1).await;
        // Every check in flight has had its grace period.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let stats = cache.verify_stats();
        assert!(stats.checked > 0, "{stats:?}");
        assert_eq!(stats.stale, 0, "racing writes counted as stale: {stats:?}");
    }
}

/// `read_many`'s hits are sampled as `read`'s are.
#[tokio::test]
async fn read_many_hits_are_checked_too() {
    let cache = CacheService::in_memory(CacheConfig::default().verify_sample(1.0)).expect("memory");
    let db = db_with(cache.clone()).await;
    db.create(NewChecked {
        id: 1,
        body: "old".into(),
    })
    .await
    .expect("create");
    db.read_many::<Checked>(&[1]).await.expect("fill");
    db.execute_batch("UPDATE checked SET body = 'new' WHERE id = 1")
        .await
        .expect("behind the back");
    let before = cache.verify_stats();
    let served = db.read_many::<Checked>(&[1]).await.expect("hit");
    assert_eq!(served[0].as_ref().map(|c| c.body.as_str()), Some("old"));
    let stats = settled(&cache, before.checked + 1).await;
    assert_eq!(stats.stale, before.stale + 1, "{stats:?}");
}
