//! The near tier (`CacheConfig::near`) on real Redis and PostgreSQL.
//!
//! The other process is a real one: this test binary run again as a child
//! (`near_writer_child`) that writes through a cache of its own over the same Redis,
//! prefix and database — so the only way this process learns of the write is Redis's
//! invalidation push. (Two caches inside one process also evict each other's near
//! entries directly; that has its own test.) `tests/torture.rs` runs reads and writes
//! in two OS processes at length.

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

/// How another process reaches the same database and cache.
struct Elsewhere {
    url: String,
    redis: String,
    prefix: String,
    deadline: Duration,
}

impl Elsewhere {
    /// Sets row `id` to `version` from a child process, through Tabula; returns once
    /// the child's write returned.
    async fn bump(&self, id: i64, version: i64) {
        let mut child = self.bump_and_stay(id, version, Duration::ZERO).await;
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("child");
        assert!(status.success(), "the writing process failed");
    }

    /// [`bump`](Self::bump), with the child staying alive for `stay` after its write
    /// returned (as a server process would: its background probe delivers what it
    /// could not).
    async fn bump_and_stay(&self, id: i64, version: i64, stay: Duration) -> std::process::Child {
        use std::io::BufRead;
        let spec = format!(
            "{}|{}|{}|{}|{id}|{version}|{}",
            self.url,
            self.redis,
            self.prefix,
            self.deadline.as_millis(),
            stay.as_millis()
        );
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["--exact", "near_writer_child", "--nocapture", "--quiet"])
                .env("TABULA_NEAR_WRITER", spec)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("child");
            let out = child.stdout.take().expect("stdout");
            let mut lines = std::io::BufReader::new(out).lines().map_while(Result::ok);
            let written = lines.any(|line| line.contains("written"));
            assert!(written, "the writing process did not write");
            // The rest of its output, until it exits.
            std::thread::spawn(move || lines.for_each(drop));
            child
        })
        .await
        .expect("join")
    }
}

#[test]
fn near_writer_child() {
    // Run only as a child of the tests below.
    let Ok(spec) = std::env::var("TABULA_NEAR_WRITER") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, redis, prefix, deadline, id, version, stay] = parts.as_slice() else {
        panic!("bad writer spec");
    };
    let deadline = Duration::from_millis(deadline.parse().expect("deadline"));
    let stay = Duration::from_millis(stay.parse().expect("stay"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = CacheConfig::default().prefix(*prefix).deadline(deadline);
        let cache = CacheService::redis(redis, config).expect("cache");
        let db = Db::connect_with(DbConfig::new(*url).cache(cache))
            .await
            .expect("db");
        bump(
            &db,
            id.parse().expect("id"),
            version.parse().expect("version"),
        )
        .await;
        println!("written");
        tokio::time::sleep(stay).await;
    });
}

/// A handle on a fresh database with a near tier, and the way another process reaches
/// the same database and cache.
async fn two(redis: &str, config: CacheConfig) -> (Db, Elsewhere) {
    let (first, url) = common::db_and_url().await;
    first.execute_batch(SCHEMA).await.expect("schema");
    let cache = CacheService::redis(redis, config.clone()).expect("cache");
    let db = Db::connect_with(DbConfig::new(&url).cache(cache))
        .await
        .expect("db");
    let elsewhere = Elsewhere {
        url,
        redis: redis.to_owned(),
        prefix: config.prefix.clone(),
        deadline: config.deadline,
    };
    (db, elsewhere)
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
    b.bump(1, 2).await;
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
    b.bump(1, 3).await;
    until("the push reached a", || stats(&a).invalidations > heard).await;
    assert_eq!(cached(&a).await, 3, "a served its old near query result");
}

/// Two caches over one Redis in one process: a write through one evicts the other's
/// near entries before it returns, as it does its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caches_in_one_process_evict_each_other_at_once() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = two(&redis, config(&prefix())).await;
    let cache = CacheService::redis(&redis, config(&b.prefix)).expect("cache");
    let writer = Db::connect_with(DbConfig::new(&b.url).cache(cache))
        .await
        .expect("db");
    create(&a, 1).await;
    for v in 2..60 {
        warm(&a, 1).await;
        bump(&writer, 1, v).await;
        assert_eq!(
            version(&a, 1).await,
            v,
            "the other cache served its old entry"
        );
    }
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
    b.bump(1, 2).await;
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
    b.bump(1, 2).await;
    assert_eq!(version(&a, 1).await, 2);
    // And the tier serves again on the new, tracked connection — coherently.
    warm(&a, 1).await;
    let heard = stats(&a).invalidations;
    b.bump(1, 3).await;
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
    // b's invalidation cannot be delivered: its write returns after one deadline, and
    // its process goes on (to deliver it as a new epoch once Redis answers).
    let mut writer = b.bump_and_stay(1, 2, Duration::from_secs(5)).await;
    assert_eq!(version(&a, 1).await, 2, "a read its near entry while deaf");
    redis.resume();
    // b's lost invalidation arrives as a new epoch within one probe interval and one
    // deadline after Redis answers it again (the documented bound; a loaded machine
    // gets a margin); from then on every read is fresh, and the tier comes back.
    let bound = Instant::now() + Duration::from_secs(3);
    while version(&a, 1).await != 2 {
        assert!(
            Instant::now() < bound,
            "the lost invalidation never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let _ = writer.kill();
    let _ = writer.wait();
}

#[tokio::test]
async fn the_budget_holds_under_a_workload_larger_than_it() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let budget = 16 * 1024;
    let (a, _) = two(&redis, config(&prefix()).near(budget)).await;
    let rows = 300;
    let new: Vec<NewItem> = (0..rows)
        .map(|id| NewItem {
            id,
            version: id,
            code: format!("code-{id}"),
        })
        .collect();
    a.create_many(new).await.expect("rows");
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

/// A tier filled through a runtime that has since ended — its connection, the one
/// that heard the pushes, went with it — is not served from another runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_filled_on_an_ended_runtime_is_not_served() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = two(&redis, config(&prefix())).await;
    // The row goes in behind the cache, so this runtime never opens a connection to
    // Redis: the filler's is the only one that ever heard anything.
    a.execute_batch("INSERT INTO near_items VALUES (1, 1, 'c1-1')")
        .await
        .expect("insert");
    let filler = a.clone();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(warm(&filler, 1));
        // The runtime ends here, and its connection with it.
    })
    .await
    .expect("filler");
    assert!(stats(&a).hits > 0);
    b.bump(1, 2).await;
    assert_eq!(
        version(&a, 1).await,
        2,
        "served a tier nobody was listening for"
    );
}

/// A read dropped while its reply waits to be installed (a deadline, a cancelled
/// request) installs nothing; a write elsewhere meanwhile is seen, and the tier
/// serves again after.
#[tokio::test]
async fn a_read_dropped_before_its_install_leaves_nothing_behind() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = two(&redis, config(&prefix())).await;
    create(&a, 1).await;
    version(&a, 1).await; // fills Redis; the next read of `a` is a Redis hit
    let arrived = Arc::new(tokio::sync::Notify::new());
    let cache = a.cache().expect("cache").clone();
    let hook = {
        let arrived = arrived.clone();
        Arc::new(move || {
            let arrived = arrived.clone();
            Box::pin(async move {
                arrived.notify_one();
                std::future::pending::<()>().await; // never installs
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        })
    };
    cache.set_near_hook(Some(hook));
    let reader = {
        let a = a.clone();
        tokio::spawn(async move { version(&a, 1).await })
    };
    arrived.notified().await;
    reader.abort();
    assert!(reader.await.is_err(), "the read was dropped");
    cache.set_near_hook(None);
    assert_eq!(
        stats(&a).entries,
        0,
        "a dropped read installed: {:?}",
        stats(&a)
    );
    b.bump(1, 2).await;
    assert_eq!(version(&a, 1).await, 2);
    warm(&a, 1).await;
    assert_eq!(version(&a, 1).await, 2);
}
