//! The cache contract under load: two OS processes write and read shared rows through
//! Tabula's own API — row cache, cached queries, memos, a cascade — over two databases
//! on one Redis, while Redis is paused once. Every read is checked against the version
//! its writer had acknowledged *before* the read began (recorded in PostgreSQL after
//! the write returned): anything older is stale. Stale reads are allowed only inside
//! the documented bound after an outage; a negative control shows the check fires when
//! writes bypass Tabula.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabula::testkit::PrivateRedis;
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table, cached};

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "t_items", cache(ttl = 300))]
struct Item {
    #[table(primary_key)]
    id: i64,
    version: i64,
    #[table(unique)]
    code: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "t_parts", cache(ttl = 300))]
struct Part {
    #[table(primary_key)]
    id: i64,
    item_code: String,
}

const SCHEMA: &str = "
    CREATE TABLE t_items (id bigint PRIMARY KEY, version bigint NOT NULL, code text NOT NULL UNIQUE);
    CREATE TABLE t_parts (id bigint PRIMARY KEY,
        item_code text NOT NULL REFERENCES t_items (code) ON UPDATE CASCADE);
    CREATE TABLE t_acks (id bigint PRIMARY KEY, version bigint NOT NULL);
    CREATE TABLE t_stale (at timestamptz NOT NULL DEFAULT clock_timestamp(), kind text NOT NULL,
        id bigint NOT NULL, seen bigint NOT NULL, acked bigint NOT NULL, read_started timestamptz NOT NULL);
    CREATE TABLE t_reads (n bigint NOT NULL);
    CREATE TABLE t_outage (started timestamptz, resumed timestamptz);
";

/// Rows per writer task; each row has exactly one writer, so its versions only grow.
const ROWS_PER_WRITER: i64 = 4;
const WRITERS: i64 = 2;
const READERS: usize = 4;
const PROCESSES: i64 = 2;

/// A memo over both databases: memos are keyed by function and arguments only, so
/// the database (the tenant) is an argument, as the `#[cached]` docs ask.
struct Memo {
    db: Db,
    tenant: String,
}

impl Memo {
    async fn version(&self, id: i64) -> tabula::Result<Option<i64>> {
        self.version_of(&self.tenant, id).await
    }

    #[cached(ttl = 60, name = "torture_version", tables(Item))]
    async fn version_of(&self, tenant: &str, id: i64) -> tabula::Result<Option<i64>> {
        let _ = tenant;
        Ok(self.db.read_uncached::<Item>(id).await?.map(|i| i.version))
    }
}

fn cache(redis: &str, prefix: &str, near: bool) -> CacheService {
    let mut config = CacheConfig::default()
        .prefix(prefix)
        .deadline(Duration::from_millis(100))
        .probe_interval(Duration::from_millis(100));
    if near {
        config = config.near(8 << 20);
    }
    CacheService::redis(redis, config).expect("cache")
}

/// One process's work on one database: writers bump their own rows (through Tabula,
/// or behind its back for the negative control) and acknowledge; readers check.
/// `pause`: between a writer's rounds (longer with near tiers, so that entries live
/// long enough between writes to be answered in-process at all).
async fn work(db: Db, tenant: String, process: i64, seconds: u64, bypass: bool, pause: Duration) {
    let memo = Arc::new(Memo {
        db: db.clone(),
        tenant,
    });
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let first = (process * WRITERS + w) * ROWS_PER_WRITER;
            let mut version = 1;
            while Instant::now() < stop {
                version += 1;
                for id in first..first + ROWS_PER_WRITER {
                    let code = format!("c{id}-{version}");
                    let written = if bypass {
                        let code = code.clone();
                        db.with_client(async move |c| {
                            c.execute(
                                "UPDATE t_items SET version = $2, code = $3 WHERE id = $1",
                                &[&id, &version, &code],
                            )
                            .await?;
                            Ok(())
                        })
                        .await
                    } else {
                        db.update::<Item>(
                            id,
                            ItemPatch {
                                version: Some(version),
                                code: Some(code),
                            },
                        )
                        .await
                        .map(|_| ())
                    };
                    if written.is_err() {
                        continue; // a write that failed acknowledges nothing
                    }
                    db.with_client(async move |c| {
                        c.execute(
                            "INSERT INTO t_acks VALUES ($1, $2) ON CONFLICT (id) DO UPDATE \
                             SET version = GREATEST(t_acks.version, EXCLUDED.version)",
                            &[&id, &version],
                        )
                        .await?;
                        Ok(())
                    })
                    .await
                    .expect("ack");
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    for r in 0..READERS {
        let (db, memo) = (db.clone(), memo.clone());
        tasks.push(tokio::spawn(async move {
            let rows = PROCESSES * WRITERS * ROWS_PER_WRITER;
            let mut n: i64 = r as i64;
            let mut reads = 0i64;
            while Instant::now() < stop {
                n += 1;
                let id = n % rows;
                // The acknowledged version and the time the read starts, both from
                // PostgreSQL, before any cached read.
                let (acked, started): (i64, chrono::DateTime<chrono::Utc>) = db
                    .with_client(async move |c| {
                        let row = c
                            .query_one(
                                "SELECT coalesce((SELECT version FROM t_acks WHERE id = $1), 0), clock_timestamp()",
                                &[&id],
                            )
                            .await?;
                        Ok((row.get(0), row.get(1)))
                    })
                    .await
                    .expect("ack read");
                let mut seen = Vec::new();
                if let Ok(Some(item)) = db.read::<Item>(id).await {
                    seen.push(("row", item.version));
                    // The cascade: the part's code follows its item's (ON UPDATE CASCADE).
                    if let Ok(Some(part)) = db.read::<Part>(id).await {
                        let v = part
                            .item_code
                            .rsplit('-')
                            .next()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        seen.push(("cascade", v));
                    }
                }
                if let Ok(items) = db
                    .query::<Item>()
                    .filter(Item::ID.eq(id))
                    .cached(60)
                    .all()
                    .await
                    && let Some(item) = items.first()
                {
                    seen.push(("query", item.version));
                }
                if let Ok(Some(v)) = memo.version(id).await {
                    seen.push(("memo", v));
                }
                reads += seen.len() as i64;
                for (kind, version) in seen {
                    if version < acked {
                        let kind = kind.to_owned();
                        db.with_client(async move |c| {
                            c.execute(
                                "INSERT INTO t_stale (kind, id, seen, acked, read_started) VALUES ($1, $2, $3, $4, $5)",
                                &[&kind, &id, &version, &acked, &started],
                            )
                            .await?;
                            Ok(())
                        })
                        .await
                        .expect("record");
                    }
                }
            }
            db.with_client(async move |c| {
                c.execute("INSERT INTO t_reads VALUES ($1)", &[&reads]).await?;
                Ok(())
            })
            .await
            .expect("reads");
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
}

async fn prepare(db: &Db) {
    db.execute_batch(SCHEMA).await.expect("schema");
    let rows = PROCESSES * WRITERS * ROWS_PER_WRITER;
    for id in 0..rows {
        db.create(NewItem {
            id,
            version: 1,
            code: format!("c{id}-1"),
        })
        .await
        .expect("item");
        db.create(NewPart {
            id,
            item_code: format!("c{id}-1"),
        })
        .await
        .expect("part");
    }
}

/// (stale reads outside the allowed window, stale reads inside it, reads checked)
async fn verdict(db: &Db, bound: Duration) -> (i64, i64, i64) {
    let bound_ms = bound.as_millis() as f64;
    db.with_client(async move |c| {
        let row = c
            .query_one(
                "SELECT
                   (SELECT count(*) FROM t_stale s WHERE NOT EXISTS (SELECT 1 FROM t_outage o
                      WHERE s.read_started BETWEEN o.started AND o.resumed + make_interval(secs => $1::float8 / 1000.0))),
                   (SELECT count(*) FROM t_stale),
                   (SELECT coalesce(sum(n), 0)::bigint FROM t_reads)",
                &[&bound_ms],
            )
            .await?;
        Ok((row.get(0), row.get::<_, i64>(1), row.get(2)))
    })
    .await
    .expect("verdict")
}

#[test]
fn torture_child() {
    // Run only as a child of the torture test below.
    let Ok(spec) = std::env::var("TABULA_TORTURE_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [process, near, redis, prefix, seconds, urls @ ..] = parts.as_slice() else {
        panic!("bad child spec");
    };
    let near = *near == "near";
    let process: i64 = process.parse().expect("process");
    let seconds: u64 = seconds.parse().expect("seconds");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let memo_cache = cache(redis, prefix, near);
        let mut work_items = Vec::new();
        for url in urls {
            let db = Db::connect_with(DbConfig::new(*url).pool_size(6).cache(memo_cache.clone()))
                .await
                .expect("db");
            if let Some(cache) = db.cache() {
                cache.install_global();
            }
            let tenant = url.rsplit('/').next().unwrap_or_default().to_owned();
            let pause = Duration::from_millis(if near { 150 } else { 5 });
            work_items.push(tokio::spawn(work(
                db, tenant, process, seconds, false, pause,
            )));
        }
        for item in work_items {
            item.await.expect("work");
        }
        if near {
            let stats = memo_cache.near_stats().expect("a near tier");
            println!("process {process}: near tier {stats:?}");
            assert!(
                stats.hits > 10,
                "the near tier answered too little to be tested: {stats:?}"
            );
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_two_databases_and_a_redis_pause_read_nothing_stale() {
    torture(false).await;
}

/// The same with a near tier in each process: rows, queries and memos answered
/// in-process, kept coherent by invalidation pushes — and the pause, which stops the
/// pushes, flushes the tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_near_tiers_two_processes_read_nothing_stale() {
    torture(true).await;
}

async fn torture(near: bool) {
    let redis = PrivateRedis::start().expect("redis");
    let prefix = format!("torture{}{near}", std::process::id());
    let (a, url_a) = common::db_and_url().await;
    let (b, url_b) = common::db_and_url().await;
    prepare(&a).await;
    prepare(&b).await;
    let seconds = 6;
    let children: Vec<_> = (0..PROCESSES)
        .map(|process| {
            std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["--exact", "torture_child", "--nocapture"])
                .env(
                    "TABULA_TORTURE_CHILD",
                    format!(
                        "{process}|{}|{}|{prefix}|{seconds}|{url_a}|{url_b}",
                        if near { "near" } else { "redis" },
                        redis.url()
                    ),
                )
                .spawn()
                .expect("child")
        })
        .collect();
    // Redis freezes for a second in the middle of the run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = async |db: &Db, sql: &'static str| {
        db.execute_batch(sql).await.expect("outage mark");
    };
    mark(
        &a,
        "INSERT INTO t_outage (started) VALUES (clock_timestamp())",
    )
    .await;
    mark(
        &b,
        "INSERT INTO t_outage (started) VALUES (clock_timestamp())",
    )
    .await;
    redis.pause();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.resume();
    mark(&a, "UPDATE t_outage SET resumed = clock_timestamp()").await;
    mark(&b, "UPDATE t_outage SET resumed = clock_timestamp()").await;
    for mut child in children {
        assert!(
            child.wait().expect("wait").success(),
            "a child process failed"
        );
    }
    // The documented bound after an outage: one probe interval and one deadline, plus
    // the lease (a fill already in flight when Redis froze) — with a margin for a
    // loaded machine.
    let bound = Duration::from_millis(100 + 100 + 500);
    for (name, db) in [("a", &a), ("b", &b)] {
        let (outside, inside, reads) = verdict(db, bound).await;
        println!(
            "database {name}: {reads} cached reads checked, {inside} stale inside the outage bound, {outside} outside"
        );
        let detail: Vec<String> = db
            .with_client(async |c| {
                Ok(c.query(
                    "SELECT s.kind || ' id=' || s.id || ' seen=' || s.seen || ' acked=' || s.acked || ' at+' || \
                     round(extract(epoch FROM s.read_started - o.started) * 1000) || 'ms (resumed at +' || \
                     round(extract(epoch FROM o.resumed - o.started) * 1000) || 'ms)' FROM t_stale s, t_outage o ORDER BY s.read_started",
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
            })
            .await
            .expect("detail");
        for line in detail {
            println!("  stale: {line}");
        }
        assert!(reads > 1000, "too few reads to mean anything: {reads}");
        assert_eq!(
            outside, 0,
            "database {name}: stale reads outside the outage bound"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_the_check_sees_writes_that_bypass_tabula() {
    let (db, url) = common::db_and_url().await;
    prepare(&db).await;
    let cache = cache(
        &tabula::testkit::redis_url().expect("redis"),
        &format!("tortureneg{}", std::process::id()),
        false,
    );
    let db = Db::connect_with(DbConfig::new(url).pool_size(6).cache(cache))
        .await
        .expect("db");
    static ONCE: AtomicU64 = AtomicU64::new(0);
    ONCE.fetch_add(1, Ordering::Relaxed);
    work(
        db.clone(),
        "negative".into(),
        0,
        2,
        true,
        Duration::from_millis(5),
    )
    .await;
    let (outside, _, reads) = verdict(&db, Duration::ZERO).await;
    println!("negative control: {reads} reads, {outside} stale");
    assert!(
        outside > 0,
        "writes behind the cache's back went unnoticed: the check is blind"
    );
}
