//! The cache contract (see `tabula::cache`) on real PostgreSQL, run against every cache
//! backend (Redis and in-process), and the cache service's data structures on both;
//! then what only Redis can do wrong (outages, a hung server).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabula::testkit::PrivateRedis;
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use uuid::Uuid;

/// The seed's profile with a row cache.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 300))]
struct Cached {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    #[table(unique)]
    username: String,
    avatar_url: Option<String>,
}

/// The same table through a struct of another shape (as after a deploy).
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 300))]
struct Reshaped {
    #[table(primary_key, generated)]
    id: Uuid,
    username: String,
    #[table(generated)]
    status: String,
}

fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cache with the default 50 ms deadline and a short probe interval, for the outage
/// tests.
fn redis_cache(url: &str) -> CacheService {
    let config = CacheConfig::default()
        .prefix(unique_prefix())
        .probe_interval(Duration::from_millis(200));
    CacheService::redis(url, config).expect("cache")
}

/// A cache on the shared test Redis with a generous deadline: these tests check the
/// contract, and a loaded CI machine must not turn a slow call into a "miss".
fn shared_redis() -> CacheService {
    let config = CacheConfig::default()
        .prefix(unique_prefix())
        .deadline(Duration::from_secs(2));
    CacheService::redis(&tabula::testkit::redis_url().expect("redis"), config).expect("cache")
}

/// Redis with a near tier in front (RESP3, broadcast tracking).
fn near_redis() -> CacheService {
    let config = CacheConfig::default()
        .prefix(unique_prefix())
        .deadline(Duration::from_secs(2))
        .near(1 << 20);
    CacheService::redis(&tabula::testkit::redis_url().expect("redis"), config).expect("cache")
}

/// A Redis Cluster of three masters (the test kit's, shared by this process).
fn cluster_redis() -> CacheService {
    let config = CacheConfig::default()
        .prefix(unique_prefix())
        .deadline(Duration::from_secs(2));
    let urls = tabula::testkit::redis_cluster_urls().expect("redis cluster");
    CacheService::redis_cluster(&urls, config).expect("cache")
}

/// The contract holds on every backend and tier: each contract test runs on Redis,
/// on Redis behind a near tier, in-process, and on a Redis Cluster.
fn backends() -> [CacheService; 4] {
    let memory = CacheConfig::default().prefix(unique_prefix());
    [
        shared_redis(),
        near_redis(),
        CacheService::in_memory(memory).expect("memory"),
        cluster_redis(),
    ]
}

async fn db_with(cache: CacheService) -> Db {
    let (_, url) = common::db_and_url().await;
    Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db")
}

fn new_cached(name: &str) -> NewCached {
    NewCached {
        user_id: Uuid::new_v4(),
        username: name.into(),
        avatar_url: None,
    }
}

/// Changes a row behind the cache's back, so a test can tell a cached answer from a
/// fresh one.
async fn poke(db: &Db, id: Uuid, avatar: &str) {
    let avatar = avatar.to_owned();
    db.with_client(async |c| {
        c.execute(
            "UPDATE profiles SET avatar_url = $1 WHERE id = $2",
            &[&avatar, &id],
        )
        .await?;
        Ok(())
    })
    .await
    .expect("poke");
}

async fn avatar(db: &Db, id: Uuid) -> Option<String> {
    db.read::<Cached>(id)
        .await
        .expect("read")
        .expect("row")
        .avatar_url
}

#[tokio::test]
async fn reads_are_served_from_the_cache_after_the_first() {
    for cache in [
        shared_redis(),
        CacheService::in_memory(CacheConfig::default()).expect("memory"),
    ] {
        let db = db_with(cache).await;
        let p = db.create(new_cached("cached")).await.expect("create");
        assert_eq!(avatar(&db, p.id).await, None); // fills
        poke(&db, p.id, "behind-the-back").await;
        assert_eq!(
            avatar(&db, p.id).await,
            None,
            "second read came from the cache"
        );
        let fresh = db
            .read_uncached::<Cached>(p.id)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(
            fresh.avatar_url.as_deref(),
            Some("behind-the-back"),
            "uncached read asks PostgreSQL"
        );
    }
}

#[tokio::test]
async fn every_kind_of_write_invalidates_the_row() {
    for cache in backends() {
        let db = db_with(cache).await;
        let p = db.create(new_cached("writes")).await.expect("create");
        let _ = avatar(&db, p.id).await;
        db.update::<Cached>(
            p.id,
            CachedPatch {
                avatar_url: Some(Some("a".into())),
                ..Default::default()
            },
        )
        .await
        .expect("update");
        assert_eq!(avatar(&db, p.id).await.as_deref(), Some("a"), "update");
        db.update_where(
            Cached::ID.eq(p.id),
            CachedPatch {
                avatar_url: Some(Some("b".into())),
                ..Default::default()
            },
        )
        .await
        .expect("update_where");
        assert_eq!(
            avatar(&db, p.id).await.as_deref(),
            Some("b"),
            "update_where"
        );
        db.upsert(
            NewCached {
                avatar_url: Some("c".into()),
                ..new_cached("writes")
            },
            Cached::USERNAME,
        )
        .await
        .expect("upsert");
        assert_eq!(avatar(&db, p.id).await.as_deref(), Some("c"), "upsert");
        db.delete_where(Cached::ID.eq(p.id))
            .await
            .expect("delete_where");
        assert_eq!(
            db.read::<Cached>(p.id).await.expect("read"),
            None,
            "delete_where"
        );
        let q = db.create(new_cached("deleted")).await.expect("create");
        let _ = avatar(&db, q.id).await;
        db.delete::<Cached>(q.id).await.expect("delete");
        assert_eq!(db.read::<Cached>(q.id).await.expect("read"), None, "delete");
    }
}

#[tokio::test]
async fn transactions_invalidate_after_commit_and_not_after_rollback() {
    for cache in backends() {
        let db = db_with(cache).await;
        let p = db.create(new_cached("tx")).await.expect("create");
        let _ = avatar(&db, p.id).await;
        let outside = db.clone();
        db.transaction(|tx| {
            let outside = outside.clone();
            async move {
                tx.update::<Cached>(
                    p.id,
                    CachedPatch {
                        avatar_url: Some(Some("committed".into())),
                        ..Default::default()
                    },
                )
                .await?;
                // Not committed yet: others still see (and may cache) the old row.
                assert_eq!(avatar(&outside, p.id).await, None);
                Ok(())
            }
        })
        .await
        .expect("commit");
        assert_eq!(avatar(&db, p.id).await.as_deref(), Some("committed"));

        let rolled: tabula::Result<()> = db
            .transaction(|tx| async move {
                tx.update::<Cached>(
                    p.id,
                    CachedPatch {
                        avatar_url: Some(Some("rolled-back".into())),
                        ..Default::default()
                    },
                )
                .await?;
                Err(tabula::Error::Validation("abort".into()))
            })
            .await;
        assert!(rolled.is_err());
        // The entry survived: a rollback invalidates nothing. Prove it by a change behind
        // the cache's back that the cached read does not see.
        poke(&db, p.id, "poked").await;
        assert_eq!(avatar(&db, p.id).await.as_deref(), Some("committed"));
    }
}

#[tokio::test]
async fn a_reader_paused_before_its_fill_cannot_cache_a_row_a_writer_changed() {
    for cache in backends() {
        let db = db_with(cache.clone()).await;
        let p = db.create(new_cached("race")).await.expect("create");
        let (at_fill_tx, at_fill_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let gates = Arc::new(std::sync::Mutex::new(Some((at_fill_tx, go_rx))));
        cache.set_fill_hook(Some(Arc::new(move || {
            let gates = gates.lock().ok().and_then(|mut g| g.take());
            Box::pin(async move {
                if let Some((at_fill, go)) = gates {
                    let _ = at_fill.send(());
                    let _ = go.await;
                }
            })
        })));
        let reader = {
            let db = db.clone();
            tokio::spawn(async move { db.read::<Cached>(p.id).await })
        };
        tokio::time::timeout(Duration::from_secs(10), at_fill_rx)
            .await
            .expect("reader reached its fill in time")
            .expect("reader reached its fill with the old row");
        db.update::<Cached>(
            p.id,
            CachedPatch {
                avatar_url: Some(Some("new".into())),
                ..Default::default()
            },
        )
        .await
        .expect("writer");
        go_tx.send(()).expect("release reader");
        let old = reader.await.expect("join").expect("read").expect("row");
        assert_eq!(old.avatar_url, None, "the reader read before the write");
        cache.set_fill_hook(None);
        assert_eq!(
            avatar(&db, p.id).await.as_deref(),
            Some("new"),
            "its fill was dropped: no stale entry"
        );
    }
}

#[tokio::test]
async fn cached_queries_are_invalidated_by_any_write_to_the_table() {
    for cache in backends() {
        let db = db_with(cache).await;
        let p = db.create(new_cached("q1")).await.expect("create");
        let names = || {
            db.query::<Cached>()
                .select(Cached::USERNAME)
                .order_by(Cached::USERNAME.asc())
                .cached(60)
                .all()
        };
        assert_eq!(names().await.expect("first"), ["q1"]);
        db.execute_batch(
            "INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), 'behind')",
        )
        .await
        .expect("raw");
        assert_eq!(
            names().await.expect("cached"),
            ["q1"],
            "served from the cache"
        );
        db.update::<Cached>(
            p.id,
            CachedPatch {
                username: Some("q2".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");
        assert_eq!(
            names().await.expect("after write"),
            ["behind", "q2"],
            "a write bumped the table's version"
        );
    }
}

#[tokio::test]
async fn an_entry_of_another_model_shape_is_never_decoded() {
    for cache in backends() {
        let db = db_with(cache).await;
        let p = db.create(new_cached("shape")).await.expect("create");
        let _ = avatar(&db, p.id).await; // cached in Cached's shape
        db.execute_batch(&format!(
            "UPDATE profiles SET username = 'renamed' WHERE id = '{}'",
            p.id
        ))
        .await
        .expect("raw");
        let other = db.read::<Reshaped>(p.id).await.expect("read").expect("row");
        assert_eq!(
            other.username, "renamed",
            "the other shape missed and read PostgreSQL"
        );
        assert_eq!(other.status, "active");
    }
}

#[tokio::test]
async fn warm_and_read_many_use_one_round_trip_each_way() {
    for cache in backends() {
        let db = db_with(cache).await;
        let rows = db
            .create_many((0..20).map(|i| new_cached(&format!("w{i}"))).collect())
            .await
            .expect("seed");
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        assert_eq!(db.warm::<Cached>(&ids).await.expect("warm"), 20);
        assert_eq!(
            db.warm::<Cached>(&ids).await.expect("warm again"),
            0,
            "all hits now"
        );
        poke(&db, ids[3], "behind").await;
        let mut keys = ids.clone();
        keys.push(Uuid::new_v4());
        let many = db.read_many::<Cached>(&keys).await.expect("read_many");
        assert_eq!(many.len(), 21);
        assert_eq!(
            many[3].as_ref().and_then(|r| r.avatar_url.clone()),
            None,
            "from the cache"
        );
        assert_eq!(many[7].as_ref().map(|r| r.id), Some(ids[7]));
        assert!(many[20].is_none(), "a missing key is None");
    }
}

#[tokio::test]
async fn a_dropped_read_leaves_no_entry_behind() {
    for cache in backends() {
        let db = db_with(cache.clone()).await;
        let p = db.create(new_cached("cancel")).await.expect("create");
        cache.set_fill_hook(Some(Arc::new(|| Box::pin(std::future::pending::<()>()))));
        let dropped =
            tokio::time::timeout(Duration::from_millis(100), db.read::<Cached>(p.id)).await;
        assert!(dropped.is_err(), "the read was dropped mid-fill");
        cache.set_fill_hook(None);
        poke(&db, p.id, "fresh").await;
        assert_eq!(
            avatar(&db, p.id).await.as_deref(),
            Some("fresh"),
            "nothing was cached by the dropped read"
        );
    }
}

#[tokio::test]
async fn stress_no_read_sees_a_value_older_than_the_last_completed_write() {
    for cache in backends() {
        let db = db_with(cache).await;
        let rows = db
            .create_many((0..200).map(|i| new_cached(&format!("s{i}"))).collect())
            .await
            .expect("seed");
        let ids: Arc<Vec<Uuid>> = Arc::new(rows.iter().map(|r| r.id).collect());
        // The last version each row's writer finished writing (its avatar is that number).
        let done: Arc<Vec<AtomicI64>> =
            Arc::new((0..ids.len()).map(|_| AtomicI64::new(-1)).collect());
        let stale = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..4usize {
            let (db, ids, done) = (db.clone(), ids.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                for step in 0..250i64 {
                    let row = (w + 4 * (step as usize * 7)) % ids.len();
                    let row = row - row % 4 + w; // each row has one writer
                    let version = done[row].load(Ordering::SeqCst) + 1;
                    let patch = CachedPatch {
                        avatar_url: Some(Some(version.to_string())),
                        ..Default::default()
                    };
                    db.update::<Cached>(ids[row], patch).await.expect("write");
                    done[row].store(version, Ordering::SeqCst);
                }
            }));
        }
        for r in 0..6usize {
            let (db, ids, done, stale) = (db.clone(), ids.clone(), done.clone(), stale.clone());
            tasks.push(tokio::spawn(async move {
                for step in 0..400usize {
                    let row = (r * 31 + step * 13) % ids.len();
                    let floor = done[row].load(Ordering::SeqCst);
                    let got = db
                        .read::<Cached>(ids[row])
                        .await
                        .expect("read")
                        .expect("row");
                    let seen: i64 = got
                        .avatar_url
                        .as_deref()
                        .map_or(-1, |v| v.parse().unwrap_or(-1));
                    if seen < floor {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(stale.load(Ordering::SeqCst), 0, "stale reads");
    }
}

#[tokio::test]
async fn redis_stopped_mid_workload_costs_no_request_and_the_cache_comes_back() {
    let redis = PrivateRedis::start().expect("redis");
    let cache = redis_cache(&redis.url());
    let db = db_with(cache.clone()).await;
    let p = db.create(new_cached("outage")).await.expect("create");
    let _ = avatar(&db, p.id).await;
    redis.stop();
    for i in 0..20 {
        let patch = CachedPatch {
            avatar_url: Some(Some(format!("down-{i}"))),
            ..Default::default()
        };
        db.update::<Cached>(p.id, patch)
            .await
            .expect("write while redis is down");
        assert_eq!(
            avatar(&db, p.id).await,
            Some(format!("down-{i}")),
            "read while redis is down"
        );
    }
    assert!(cache.is_degraded(), "the breaker opened");
    redis.restart().expect("restart");
    tokio::time::sleep(Duration::from_millis(300)).await; // one probe interval
    // The breaker probes on traffic: keep reading until Redis is used again.
    let started = Instant::now();
    loop {
        let seen = avatar(&db, p.id).await;
        assert_eq!(
            seen.as_deref(),
            Some("down-19"),
            "reads stay correct while recovering"
        );
        if !cache.is_degraded() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cache not used again within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = avatar(&db, p.id).await; // fill
    poke(&db, p.id, "behind").await;
    assert_eq!(
        avatar(&db, p.id).await.as_deref(),
        Some("down-19"),
        "served from the cache again"
    );
}

#[tokio::test]
async fn a_hung_redis_costs_one_deadline_per_call_and_serves_nothing_stale_after() {
    let redis = PrivateRedis::start().expect("redis");
    let cache = redis_cache(&redis.url());
    let db = db_with(cache.clone()).await;
    let p = db.create(new_cached("hung")).await.expect("create");
    let _ = avatar(&db, p.id).await; // cached: avatar None
    redis.pause();
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        let patch = CachedPatch {
            avatar_url: Some(Some(format!("while-hung-{i}"))),
            ..Default::default()
        };
        db.update::<Cached>(p.id, patch)
            .await
            .expect("write while hung");
        assert_eq!(avatar(&db, p.id).await, Some(format!("while-hung-{i}")));
        slowest = slowest.max(started.elapsed());
    }
    // Two cache calls per round (invalidate + read), each bounded by the 50 ms deadline,
    // plus two statements; the bound leaves room for a loaded machine, and is still far
    // from the 30 s a default pool checkout would wait.
    assert!(slowest < Duration::from_secs(1), "a round took {slowest:?}");
    redis.resume();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The entry cached before the hang still sits in Redis, but the epoch bump on
    // recovery orphaned it.
    let started = Instant::now();
    loop {
        assert_eq!(
            avatar(&db, p.id).await.as_deref(),
            Some("while-hung-9"),
            "never the pre-hang value"
        );
        if !cache.is_degraded() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!cache.is_degraded());
}

async fn structures(cache: &CacheService) {
    cache
        .set("k", &serde_json::json!({"a": 1}), Some(300))
        .await
        .expect("set");
    assert_eq!(
        cache.get::<serde_json::Value>("k").await.expect("get"),
        Some(serde_json::json!({"a": 1}))
    );
    assert!(cache.exists("k").await.expect("exists"));
    assert!(cache.delete("k").await.expect("delete"));
    assert!(!cache.exists("k").await.expect("exists"));
    assert_eq!(cache.get::<String>("k").await.expect("get"), None);
    assert_eq!(cache.incr("n", 5).await.expect("incr"), 5);
    assert_eq!(cache.incr("n", -2).await.expect("incr"), 3);
    assert_eq!(cache.get::<i64>("n").await.expect("get"), Some(3));

    assert_eq!(cache.list_push("queue", "item1").await.expect("push"), 1);
    assert_eq!(cache.list_push("queue", "item2").await.expect("push"), 2);
    assert_eq!(
        cache
            .list_range::<String>("queue", 0, -1)
            .await
            .expect("range"),
        ["item1", "item2"]
    );
    assert_eq!(cache.list_len("queue").await.expect("len"), 2);
    assert_eq!(
        cache
            .list_pop::<String>("queue")
            .await
            .expect("pop")
            .as_deref(),
        Some("item1")
    );
    assert_eq!(
        cache
            .list_pop::<String>("queue")
            .await
            .expect("pop")
            .as_deref(),
        Some("item2")
    );
    assert_eq!(cache.list_pop::<String>("queue").await.expect("pop"), None);

    assert_eq!(
        cache
            .set_add("uniqueUsers", &["user1", "user2", "user1"])
            .await
            .expect("sadd"),
        2
    );
    let mut users = cache
        .set_members::<String>("uniqueUsers")
        .await
        .expect("members");
    users.sort();
    assert_eq!(users, ["user1", "user2"]);
    assert!(
        cache
            .set_is_member("uniqueUsers", "user2")
            .await
            .expect("member")
    );
    assert_eq!(
        cache
            .set_remove("uniqueUsers", &["user2", "nobody"])
            .await
            .expect("srem"),
        1
    );
    assert!(
        !cache
            .set_is_member("uniqueUsers", "user2")
            .await
            .expect("member")
    );

    assert!(
        cache
            .hash_set("userPrefs", "theme", "dark")
            .await
            .expect("hset")
    );
    assert!(
        !cache
            .hash_set("userPrefs", "theme", "light")
            .await
            .expect("hset again")
    );
    assert_eq!(
        cache
            .hash_get::<String>("userPrefs", "theme")
            .await
            .expect("hget")
            .as_deref(),
        Some("light")
    );
    cache
        .hash_set("userPrefs", "lang", "en")
        .await
        .expect("hset");
    assert_eq!(
        cache
            .hash_get_all::<String>("userPrefs")
            .await
            .expect("hgetall")
            .len(),
        2
    );
    assert!(cache.hash_delete("userPrefs", "lang").await.expect("hdel"));
    assert_eq!(
        cache
            .hash_get::<String>("userPrefs", "lang")
            .await
            .expect("hget"),
        None
    );

    for i in 0..30 {
        cache
            .set(&format!("profiles:{i}"), &i, None)
            .await
            .expect("set");
    }
    cache.set("documents:1", &1, None).await.expect("set");
    assert_eq!(
        cache
            .invalidate_pattern("profiles:*")
            .await
            .expect("pattern"),
        30
    );
    assert!(cache.exists("documents:1").await.expect("exists"));

    cache
        .set("short", &"lived", Some(1))
        .await
        .expect("set ttl");
    cache.list_push("short-list", "x").await.expect("push");
    assert!(cache.expire("short-list", 1).await.expect("expire"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        cache.get::<String>("short").await.expect("get"),
        None,
        "TTL expired"
    );
    assert_eq!(
        cache.list_len("short-list").await.expect("len"),
        0,
        "expire applied"
    );

    let err = cache.set("zero", &1, Some(0)).await.expect_err("ttl 0");
    assert!(matches!(err, tabula::Error::Validation(_)));
    let err = cache.list_push("n", "x").await.expect_err("wrong type");
    assert!(matches!(err, tabula::Error::Cache { .. }), "{err:?}");
}

#[tokio::test]
async fn data_structures_work_the_same_on_redis_and_in_process() {
    structures(&shared_redis()).await;
    structures(&near_redis()).await;
    structures(&cluster_redis()).await;
    structures(
        &CacheService::in_memory(CacheConfig::default().prefix(unique_prefix())).expect("memory"),
    )
    .await;
}

#[tokio::test]
async fn a_unique_field_finder_is_cached_and_never_answers_with_the_wrong_row() {
    for cache in backends() {
        let db = db_with(cache).await;
        let p = db.create(new_cached("finder")).await.expect("create");
        // The first miss costs one query and fills the value → key mapping; the next
        // call reads the row by key, which fills the row entry.
        for _ in 0..2 {
            assert_eq!(
                Cached::by_username(&db, "finder").await.expect("find"),
                Some(p.clone())
            );
        }
        poke(&db, p.id, "behind").await;
        let cached = Cached::by_username(&db, "finder")
            .await
            .expect("find")
            .expect("row");
        assert_eq!(cached.avatar_url, None, "served from the cache");

        // The value moves to a new name: the old name finds nothing, the new one the row.
        db.update::<Cached>(
            p.id,
            CachedPatch {
                username: Some("renamed".into()),
                ..Default::default()
            },
        )
        .await
        .expect("rename");
        assert_eq!(
            Cached::by_username(&db, "finder").await.expect("old name"),
            None
        );
        let renamed = Cached::by_username(&db, "renamed")
            .await
            .expect("new name")
            .expect("row");
        assert_eq!(renamed.id, p.id);

        // Another row takes the old name: the stale mapping must not lead to the first row.
        let q = db
            .create(new_cached("finder"))
            .await
            .expect("reuse the name");
        assert_eq!(
            Cached::by_username(&db, "finder")
                .await
                .expect("reused")
                .map(|r| r.id),
            Some(q.id)
        );
        assert_eq!(
            Cached::by_username(&db, "nobody").await.expect("missing"),
            None
        );
    }
}

#[tokio::test]
async fn insert_many_invalidates_the_cached_queries_of_its_table() {
    for cache in backends() {
        let db = db_with(cache).await;
        let count = || {
            db.query::<Cached>()
                .select(Cached::USERNAME)
                .cached(60)
                .all()
        };
        assert!(count().await.expect("empty").is_empty());
        let copied = db
            .insert_many(vec![new_cached("c1"), new_cached("c2")])
            .await
            .expect("copy");
        assert_eq!(copied, 2);
        assert_eq!(
            count().await.expect("after copy").len(),
            2,
            "not the cached empty list"
        );
    }
}

/// Where Redis's semantics have corners, the in-process backend follows them: list
/// ranges past either end, INCR keeping a TTL, globs with escapes, reversed ranges and
/// malformed classes; TTLs too long for either are refused alike; and a caller's own
/// mistakes (INCR on text) are errors of that call, not an outage.
#[tokio::test]
async fn the_backends_agree_at_the_corners_of_the_api() {
    let [redis, near, memory, cluster] = backends();
    let both = [&redis, &near, &memory, &cluster];
    for cache in both {
        for v in ["a", "b", "c"] {
            cache.list_push("l", v).await.expect("push");
        }
        cache.set("n", &1, Some(1)).await.expect("set");
        assert_eq!(cache.incr("n", 1).await.expect("incr"), 2);
    }
    let ends = [i64::MIN, -10, -4, -3, -1, 0, 1, 2, 3, 10, i64::MAX];
    for start in ends {
        for stop in ends {
            let on = |c: &CacheService| {
                let c = c.clone();
                async move {
                    c.list_range::<String>("l", start, stop)
                        .await
                        .expect("range")
                }
            };
            let on_redis = on(&redis).await;
            assert_eq!(on_redis, on(&memory).await, "LRANGE {start} {stop}");
            assert_eq!(on_redis, on(&near).await, "LRANGE {start} {stop} (RESP3)");
        }
    }
    // TTLs past 100 years: refused by both, not cut short by one and kept by the other.
    for cache in both {
        for ttl in [u64::MAX, 18_446_744_073_709_552, 100 * 366 * 24 * 3600] {
            let refused = cache.set("far", &1, Some(ttl)).await;
            assert!(
                matches!(refused, Err(tabula::Error::Validation(_))),
                "{refused:?}"
            );
            let refused = cache.expire("n", ttl).await;
            assert!(
                matches!(refused, Err(tabula::Error::Validation(_))),
                "{refused:?}"
            );
        }
        cache
            .set("far", &1, Some(99 * 365 * 24 * 3600))
            .await
            .expect("a long TTL within the bound");
    }
    // A caller's mistakes do not open the breaker.
    for cache in both {
        cache.set("text", &"hello", None).await.expect("set");
        for _ in 0..10 {
            assert!(cache.incr("text", 1).await.is_err());
        }
        assert!(!cache.is_degraded(), "wrong-type errors opened the breaker");
        assert_eq!(cache.get::<i64>("n").await.expect("still served"), Some(2));
    }
    // Globs, each pattern over the same keys on both backends.
    let keys = [
        "a]b", "ab", "a[b", "a\\b", "aXb", "a-b", "xé", "x", "a*b", "a?b", "[", "]", "a^b", "kq",
    ];
    let patterns = [
        "a[\\]]b", "k[z-a]", "a[b", "x?", "a\\*b", "a[^]]b", "a[a-]b", "a\\", "*\\", "[]", "a[]b",
        "[^a-z]", "a?b", "*",
    ];
    for pattern in patterns {
        let mut outcomes = Vec::new();
        for cache in both {
            for key in keys {
                cache.set(key, &1, None).await.expect("set");
            }
            let deleted = cache.invalidate_pattern(pattern).await.expect("pattern");
            let mut left = Vec::new();
            for key in keys {
                if cache.exists(key).await.expect("exists") {
                    left.push(key);
                }
            }
            outcomes.push((deleted, left));
        }
        assert_eq!(
            outcomes[0], outcomes[2],
            "pattern {pattern:?}: redis, then memory"
        );
        assert_eq!(outcomes[0], outcomes[1], "pattern {pattern:?}: RESP3");
    }
    // INCR kept the 1 s TTL on both.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for cache in both {
        assert!(
            !cache.exists("n").await.expect("exists"),
            "the TTL survived INCR"
        );
    }
}

/// A value over `max_value_bytes` is refused by the key-value API before it is sent:
/// an oversized value is the caller's mistake, not an outage, and must not open the
/// breaker for every user of the cache.
#[tokio::test]
async fn an_oversized_value_is_refused_and_never_opens_the_breaker() {
    let small = |config: CacheConfig| config.prefix(unique_prefix()).max_value_bytes(1024);
    let redis = CacheService::redis(
        &tabula::testkit::redis_url().expect("redis"),
        small(CacheConfig::default()),
    )
    .expect("cache");
    let memory = CacheService::in_memory(small(CacheConfig::default())).expect("memory");
    for cache in [&redis, &memory] {
        let big = "x".repeat(4096);
        for _ in 0..5 {
            let refused = cache.set("big", &big, Some(60)).await;
            assert!(
                matches!(refused, Err(tabula::Error::Validation(_))),
                "{refused:?}"
            );
            assert!(cache.list_push("list", &big).await.is_err());
            assert!(cache.hash_set("hash", "f", &big).await.is_err());
            assert!(
                cache
                    .set_add("set", std::slice::from_ref(&big))
                    .await
                    .is_err()
            );
        }
        assert!(
            !cache.is_degraded(),
            "the caller's values opened the breaker"
        );
        assert!(!cache.exists("big").await.expect("exists"));
        cache
            .set("small", &"ok", Some(60))
            .await
            .expect("a value within the limit");
    }
}

/// `.cached()` keeps first, one, count, exists and keyset pages as it keeps `all`:
/// answered from the cache until a write to the table, on every backend.
#[tokio::test]
async fn every_cached_shape_is_served_from_the_cache_until_a_write() {
    for cache in backends() {
        let db = db_with(cache).await;
        let mut made = Vec::new();
        for i in 0..5 {
            made.push(
                db.create(new_cached(&format!("s{i}")))
                    .await
                    .expect("create"),
            );
        }
        let named = |n: &str| Cached::USERNAME.eq(n.to_owned());
        let count = || db.query::<Cached>().cached(60).count();
        let first = || {
            db.query::<Cached>()
                .order_by(Cached::USERNAME.asc())
                .cached(60)
                .first()
        };
        let one = || db.query::<Cached>().filter(named("s3")).cached(60).one();
        let exists = || {
            db.query::<Cached>()
                .filter(named("late"))
                .cached(60)
                .exists()
        };
        let page = |cursor: Option<tabula::Cursor>| {
            let db = db.clone();
            async move {
                db.query::<Cached>()
                    .order_by(Cached::USERNAME.asc())
                    .select(Cached::AVATAR_URL)
                    .cached(60)
                    .page(2, cursor.as_ref())
                    .await
                    .expect("page")
            }
        };
        assert_eq!(count().await.expect("count"), 5);
        assert_eq!(
            first().await.expect("first").map(|c| c.username),
            Some("s0".into())
        );
        assert_eq!(one().await.expect("one").avatar_url, None);
        assert!(!exists().await.expect("exists"));
        let page1 = page(None).await;
        let page2 = page(page1.next.clone()).await;
        assert_eq!((page1.items.len(), page2.items.len()), (2, 2));

        // Behind Tabula's back: every cached shape keeps its answer.
        db.execute_batch(
            "UPDATE profiles SET username = 'a' || username, avatar_url = 'poked';
             INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), 'late')",
        )
        .await
        .expect("behind the back");
        assert_eq!(count().await.expect("count"), 5, "count cached");
        assert_eq!(
            first().await.expect("first").map(|c| c.username),
            Some("s0".into()),
            "first cached"
        );
        assert_eq!(one().await.expect("one").avatar_url, None, "one cached");
        assert!(!exists().await.expect("exists"), "exists cached");
        assert_eq!(page(None).await.items, page1.items, "page cached");
        assert_eq!(
            page(page1.next.clone()).await.items,
            page2.items,
            "page after a cursor cached"
        );

        // A write through Tabula: every one of them misses.
        db.update(made[0].id, CachedPatch::default().username("z"))
            .await
            .expect("update");
        assert_eq!(count().await.expect("count"), 6);
        assert_eq!(
            first().await.expect("first").map(|c| c.username),
            Some("as1".into())
        );
        assert!(one().await.is_err(), "no s3 any more: NotFound");
        assert!(exists().await.expect("exists"));
        assert_eq!(page(None).await.items, vec![Some("poked".to_owned()); 2]);
    }
}
