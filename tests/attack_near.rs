//! Round 44: the near tier against writes in another process, negative entries,
//! unique finders, tags, table invalidations, memos, FLUSHALL, a restarted Redis and a
//! stalled connection.
//!
//! The other process is this test binary run again (`near_child`), writing through a
//! cache of its own over the same Redis, prefix and database: the only way this
//! process hears of its writes is Redis's invalidation push.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabula::cache::NearStats;
use tabula::testkit::PrivateRedis;
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table, cached};

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r44_items", cache(ttl = 300))]
struct Item {
    #[table(primary_key)]
    id: i64,
    version: i64,
    #[table(unique)]
    code: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r44_big", cache(ttl = 300))]
struct Big {
    #[table(primary_key)]
    id: i64,
    body: String,
}

const SCHEMA: &str = "CREATE TABLE r44_big (id bigint PRIMARY KEY, body text NOT NULL); CREATE TABLE r44_items (id bigint PRIMARY KEY, version bigint NOT NULL, code text NOT NULL UNIQUE)";

fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "r44n{}x{}",
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

/// The other process: what it runs, over which database, Redis and prefix.
struct Elsewhere {
    url: String,
    redis: String,
    prefix: String,
    deadline: Duration,
}

impl Elsewhere {
    /// Runs `op` on row `id` (with `version`) in a child process; returns once the
    /// child's write returned Ok.
    async fn run(&self, op: &str, id: i64, version: i64) {
        let spec = format!(
            "{}|{}|{}|{}|{op}|{id}|{version}",
            self.url,
            self.redis,
            self.prefix,
            self.deadline.as_millis(),
        );
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["--exact", "near_child", "--nocapture", "--quiet"])
                .env("R44_CHILD", spec)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("child")
        })
        .await
        .expect("join");
        assert!(status.success(), "the child process failed ({op})");
    }
}

#[test]
fn near_child() {
    let Ok(spec) = std::env::var("R44_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, redis, prefix, deadline, op, id, version] = parts.as_slice() else {
        panic!("bad child spec");
    };
    let deadline = Duration::from_millis(deadline.parse().expect("deadline"));
    let id: i64 = id.parse().expect("id");
    let version: i64 = version.parse().expect("version");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = CacheConfig::default().prefix(*prefix).deadline(deadline);
        let cache = CacheService::redis(redis, config).expect("cache");
        if *op == "memo_bump" {
            assert!(cache.install_global(), "child global");
        }
        let db = Db::connect_with(DbConfig::new(*url).cache(cache))
            .await
            .expect("db");
        match *op {
            "bump" | "memo_bump" => bump(&db, id, version).await,
            "create" => create_v(&db, id, version).await,
            "recreate" => {
                db.delete::<Item>(id).await.expect("delete");
                create_v(&db, id, version).await;
            }
            "recode" => {
                db.update::<Item>(
                    id,
                    ItemPatch {
                        version: Some(version),
                        code: Some(format!("new{id}-{version}")),
                    },
                )
                .await
                .expect("recode");
            }
            "behind_then_invalidate_table" => {
                db.execute_batch(&format!(
                    "UPDATE r44_items SET version = {version} WHERE id = {id}"
                ))
                .await
                .expect("raw update");
                db.invalidate_table::<Item>().await;
            }
            "behind_then_invalidate" => {
                db.execute_batch(&format!(
                    "UPDATE r44_items SET version = {version} WHERE id = {id}"
                ))
                .await
                .expect("raw update");
                db.invalidate::<Item>(&[id]).await;
            }
            "tag" => db.invalidate_tag(&format!("r44tag{id}")).await,
            other => panic!("unknown op {other}"),
        }
        println!("written");
    });
}

async fn setup(redis: &str, config: CacheConfig) -> (Db, Elsewhere) {
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

async fn create_v(db: &Db, id: i64, version: i64) {
    db.create(NewItem {
        id,
        version,
        code: format!("c{id}-{version}"),
    })
    .await
    .expect("create");
}

async fn read(db: &Db, id: i64) -> Option<i64> {
    db.read::<Item>(id).await.expect("read").map(|i| i.version)
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

/// Reads until a read of `id` is answered by the near tier.
async fn warm(db: &Db, id: i64) {
    for _ in 0..6 {
        let before = stats(db).hits;
        read(db, id).await;
        if stats(db).hits > before {
            return;
        }
    }
    panic!("the near tier never answered: {:?}", stats(db));
}

/// Waits (at most 5 s) for `a` to have heard more invalidations than `heard`.
async fn heard_more(db: &Db, heard: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(db).invalidations <= heard && stats(db).flushes == 0 {
        assert!(
            Instant::now() < deadline,
            "no push arrived: {:?}",
            stats(db)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Pushes come in batches; let the rest of this one land.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

// ---------------------------------------------------------------- negative entries

/// An absence cached (Redis and near) in this process; another process creates the
/// row; once its push is read, the absence is never served.
#[tokio::test]
async fn holds_a_near_negative_entry_is_dropped_by_a_create_elsewhere() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = setup(&redis, config(&prefix())).await;
    for _ in 0..6 {
        assert_eq!(read(&a, 7).await, None);
    }
    assert!(
        stats(&a).hits > 0,
        "the absence is served near: {:?}",
        stats(&a)
    );
    let heard = stats(&a).invalidations;
    b.run("create", 7, 3).await;
    heard_more(&a, heard).await;
    for _ in 0..5 {
        assert_eq!(read(&a, 7).await, Some(3), "a served its cached absence");
    }
}

/// Delete and re-create with the same key, in another process, while this one holds
/// the row near; then again while it holds the absence.
#[tokio::test]
async fn holds_delete_and_recreate_elsewhere_is_seen() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = setup(&redis, config(&prefix())).await;
    create_v(&a, 1, 1).await;
    for round in 2..6 {
        warm(&a, 1).await;
        let heard = stats(&a).invalidations;
        b.run("recreate", 1, round).await;
        heard_more(&a, heard).await;
        assert_eq!(read(&a, 1).await, Some(round), "round {round}");
    }
}

// ---------------------------------------------------------------- unique finders

/// A unique finder's mapping held near; another process moves the row to another
/// code: the old code finds nothing and the new one finds the row.
#[tokio::test]
async fn holds_a_near_unique_mapping_follows_a_recode_elsewhere() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = setup(&redis, config(&prefix())).await;
    create_v(&a, 1, 1).await;
    // The new code's absence is cached too.
    for _ in 0..4 {
        assert!(Item::by_code(&a, "c1-1").await.expect("by code").is_some());
        assert!(
            Item::by_code(&a, "new1-2")
                .await
                .expect("by code")
                .is_none()
        );
    }
    let heard = stats(&a).invalidations;
    b.run("recode", 1, 2).await;
    heard_more(&a, heard).await;
    for _ in 0..3 {
        let old = Item::by_code(&a, "c1-1").await.expect("by old code");
        assert_eq!(old, None, "the old code still finds the row");
        let new = Item::by_code(&a, "new1-2").await.expect("by new code");
        assert_eq!(new.map(|i| i.version), Some(2), "the new code's absence");
    }
}

// ---------------------------------------------------------------- invalidate / tags

#[tokio::test]
async fn holds_invalidate_table_elsewhere_reaches_the_near_tier() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = setup(&redis, config(&prefix())).await;
    create_v(&a, 1, 1).await;
    warm(&a, 1).await;
    let heard = stats(&a).invalidations;
    b.run("behind_then_invalidate_table", 1, 9).await;
    heard_more(&a, heard).await;
    assert_eq!(read(&a, 1).await, Some(9));
}

#[tokio::test]
async fn holds_invalidate_keys_elsewhere_reaches_the_near_tier() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = setup(&redis, config(&prefix())).await;
    create_v(&a, 1, 1).await;
    warm(&a, 1).await;
    let heard = stats(&a).invalidations;
    b.run("behind_then_invalidate", 1, 8).await;
    heard_more(&a, heard).await;
    assert_eq!(read(&a, 1).await, Some(8));
}

/// A tagged cached query held near; a raw write behind the cache and
/// `invalidate_tag` in another process.
#[tokio::test]
async fn holds_invalidate_tag_elsewhere_reaches_the_near_tier() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, b) = setup(&redis, config(&prefix())).await;
    create_v(&a, 1, 1).await;
    let q = async |db: &Db| {
        db.query::<Item>()
            .filter(Item::ID.eq(1))
            .cached(300)
            .tag("r44tag1")
            .all()
            .await
            .expect("query")[0]
            .version
    };
    for _ in 0..4 {
        assert_eq!(q(&a).await, 1);
    }
    let hits = stats(&a).hits;
    assert_eq!(q(&a).await, 1);
    assert!(stats(&a).hits > hits, "the query is answered near");
    // Behind the cache: the cached query still says 1.
    a.execute_batch("UPDATE r44_items SET version = 4 WHERE id = 1")
        .await
        .expect("raw");
    assert_eq!(q(&a).await, 1, "control: the query is cached");
    let heard = stats(&a).invalidations;
    b.run("tag", 1, 0).await;
    heard_more(&a, heard).await;
    assert_eq!(q(&a).await, 4, "a served its old tagged result");
}

// ---------------------------------------------------------------- memos

static MEMO_CALLS: AtomicU64 = AtomicU64::new(0);

/// The row's version, memoized over the table.
#[cached(ttl = 300, tables(Item), skip(db))]
async fn memo_version(db: &Db, id: i64) -> Option<i64> {
    MEMO_CALLS.fetch_add(1, Ordering::SeqCst);
    db.read_uncached::<Item>(id)
        .await
        .expect("read")
        .map(|i| i.version)
}

/// The global cache (a near tier) of this test binary, and its prefix.
fn global() -> (&'static CacheService, String) {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX
        .get_or_init(|| {
            let p = prefix();
            let redis = tabula::testkit::redis_url().expect("redis");
            let cache = CacheService::redis(&redis, config(&p)).expect("cache");
            assert!(cache.install_global());
            p
        })
        .clone();
    (CacheService::global().expect("global"), prefix)
}

/// A memo over `r44_items` held near in this process; another process (with its own
/// global cache on the same Redis and prefix) writes the table through Tabula.
#[tokio::test]
async fn holds_a_near_memo_is_dropped_by_a_write_elsewhere() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (global, prefix) = global();
    let (_, url) = common::db_and_url().await;
    let a = Db::connect_with(DbConfig::new(&url).cache(global.clone()))
        .await
        .expect("db");
    a.execute_batch(SCHEMA).await.expect("schema");
    create_v(&a, 1, 1).await;
    for _ in 0..4 {
        assert_eq!(memo_version(&a, 1).await, Some(1));
    }
    let near = || global.near_stats().expect("near");
    let hits = near().hits;
    assert_eq!(memo_version(&a, 1).await, Some(1));
    assert!(
        near().hits > hits,
        "the memo is answered near: {:?}",
        near()
    );
    let heard = near().invalidations;
    let b = Elsewhere {
        url,
        redis,
        prefix,
        deadline: Duration::from_secs(2),
    };
    b.run("memo_bump", 1, 2).await;
    let until = Instant::now() + Duration::from_secs(5);
    while near().invalidations <= heard {
        assert!(Instant::now() < until, "no push: {:?}", near());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(memo_version(&a, 1).await, Some(2), "a served its old memo");
}

// ---------------------------------------------------------------- outages

/// FLUSHALL while the near tier holds a row; then a write behind the cache (nothing
/// invalidates it): the flushed Redis has no entry, so neither may the near tier.
#[tokio::test]
async fn holds_flushall_empties_the_near_tier() {
    let redis = PrivateRedis::start().expect("redis");
    let (a, _) = setup(&redis.url(), config(&prefix())).await;
    create_v(&a, 1, 1).await;
    warm(&a, 1).await;
    let flushes = stats(&a).flushes;
    let client = redis::Client::open(redis.url()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw)
        .await
        .expect("flushall");
    let until = Instant::now() + Duration::from_secs(5);
    while stats(&a).flushes == flushes {
        assert!(Instant::now() < until, "no flush: {:?}", stats(&a));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.execute_batch("UPDATE r44_items SET version = 5 WHERE id = 1")
        .await
        .expect("raw");
    assert_eq!(read(&a, 1).await, Some(5));
}

/// Redis stopped while the near tier holds a row; a write behind the cache meanwhile;
/// Redis back, empty: nothing old is served, and reads during the outage are fresh.
#[tokio::test]
async fn holds_a_restarted_redis_serves_nothing_old() {
    let redis = PrivateRedis::start().expect("redis");
    let config = config(&prefix())
        .deadline(Duration::from_millis(300))
        .probe_interval(Duration::from_millis(100));
    let (a, _) = setup(&redis.url(), config).await;
    create_v(&a, 1, 1).await;
    warm(&a, 1).await;
    redis.stop();
    a.execute_batch("UPDATE r44_items SET version = 2 WHERE id = 1")
        .await
        .expect("raw");
    let t = Instant::now();
    assert_eq!(
        read(&a, 1).await,
        Some(2),
        "served near while Redis is down"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    redis.restart().expect("restart");
    for _ in 0..20 {
        assert_eq!(read(&a, 1).await, Some(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// This process's Redis connection stalls (a partition: nothing in or out) while
/// another process, not cut off, writes: after one deadline the near tier no longer
/// answers, a read costs at most about two deadlines, and nothing old is read.
#[tokio::test]
async fn holds_a_stalled_connection_bounds_the_near_tier() {
    let redis = PrivateRedis::start().expect("redis");
    let addr: std::net::SocketAddr = redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("addr");
    let proxy = common::Proxy::start(addr).await;
    let deadline = Duration::from_millis(300);
    let through = format!("redis://127.0.0.1:{}/", proxy.port);
    let cfg = config(&prefix()).deadline(deadline);
    let (a, mut b) = setup(&through, cfg).await;
    b.redis = redis.url();
    create_v(&a, 1, 1).await;
    warm(&a, 1).await;
    proxy.cut_all();
    b.run("bump", 1, 2).await;
    tokio::time::sleep(deadline + Duration::from_millis(50)).await;
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(read(&a, 1).await, Some(2), "a stale row after one deadline");
        assert!(
            t.elapsed() < 3 * deadline + Duration::from_millis(300),
            "a read took {:?}",
            t.elapsed()
        );
    }
}

// ---------------------------------------------------------------- memory

/// Rows larger than the whole budget, and many more keys than fit: no panic, every
/// read right, the bytes held within the budget.
#[tokio::test]
async fn holds_huge_rows_and_many_keys_stay_within_the_budget() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let budget = 256 * 1024;
    let (a, _) = setup(&redis, config(&prefix()).near(budget)).await;
    let big = "x".repeat(600 * 1024);
    a.create(NewBig {
        id: 0,
        body: big.clone(),
    })
    .await
    .expect("big");
    let rows: Vec<NewBig> = (1..3_000)
        .map(|id| NewBig {
            id,
            body: format!("{id}-{}", "y".repeat(200)),
        })
        .collect();
    a.create_many(rows).await.expect("rows");
    for _ in 0..2 {
        let got = a.read::<Big>(0).await.expect("read").expect("row");
        assert_eq!(got.body.len(), big.len());
        for id in 1..3_000 {
            let row = a.read::<Big>(id).await.expect("read").expect("row");
            assert!(row.body.starts_with(&format!("{id}-")));
        }
    }
    let s = stats(&a);
    assert!(s.bytes <= budget, "{s:?}");
    assert!(s.evictions > 0, "{s:?}");
}

/// `near_max_age`: "the longest a near-tier value is served without asking Redis,
/// however quiet" — the first read after it is not a near hit.
#[tokio::test]
async fn holds_near_max_age_caps_a_quiet_entry() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let cfg = config(&prefix()).near_max_age(Duration::from_millis(400));
    let (a, _) = setup(&redis, cfg).await;
    create_v(&a, 1, 1).await;
    warm(&a, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = stats(&a).hits;
    assert_eq!(read(&a, 1).await, Some(1));
    assert_eq!(stats(&a).hits, hits, "served near past its maximum age");
}

/// This process recodes a row whose unique mapping it holds near: the old code finds
/// nothing at once, the new one finds the row.
#[tokio::test]
async fn holds_own_recode_drops_the_near_mapping_at_once() {
    let redis = tabula::testkit::redis_url().expect("redis");
    let (a, _) = setup(&redis, config(&prefix())).await;
    create_v(&a, 1, 1).await;
    for v in 2..12 {
        let old = format!("c1-{}", v - 1);
        for _ in 0..3 {
            let found = Item::by_code(&a, &old).await.expect("by code");
            assert_eq!(found.map(|i| i.version), Some(v - 1));
        }
        bump(&a, 1, v).await;
        assert_eq!(Item::by_code(&a, &old).await.expect("old"), None, "v{v}");
        let new = Item::by_code(&a, &format!("c1-{v}")).await.expect("new");
        assert_eq!(new.map(|i| i.version), Some(v));
    }
}
