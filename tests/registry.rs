//! Cheaper writes (`CacheConfig::registry_window`): a write to a table nothing caches
//! skips Redis; a process that starts caching a table is seen by every writer before
//! its first fill; a registry lost while its epoch survives replaces the epoch. Each
//! "process" is a `CacheService` of its own (its own registry snapshot) on one Redis
//! namespace, as two application servers would be.

mod common;

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "cached_rows", cache(ttl = 300))]
struct CachedRow {
    #[table(primary_key)]
    id: i64,
    body: String,
}

/// A table nobody caches (no `cache(…)`, no cached query or memo over it).
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "log_lines")]
struct LogLine {
    #[table(primary_key)]
    id: i64,
    body: String,
}

const WINDOW: Duration = Duration::from_millis(300);

struct Setup {
    url: String,
    prefix: String,
    namespace: String,
}

impl Setup {
    async fn new() -> Setup {
        let (plain, url) = common::db_and_url().await;
        plain
            .execute_batch(
                "CREATE TABLE cached_rows (id int8 PRIMARY KEY, body text NOT NULL);
                 CREATE TABLE log_lines (id int8 PRIMARY KEY, body text NOT NULL);
                 INSERT INTO cached_rows VALUES (1, 'v0');",
            )
            .await
            .expect("schema");
        let unique = format!("{}x{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Setup {
            url,
            prefix: format!("reg{unique}"),
            namespace: format!("ns{unique}"),
        }
    }

    /// A "process": a handle with a Redis cache of its own on the shared namespace.
    async fn process(&self) -> Db {
        self.process_with(WINDOW).await
    }

    async fn process_with(&self, window: Duration) -> Db {
        let cache = CacheService::redis(
            &tabula::testkit::redis_url().expect("redis"),
            CacheConfig::default()
                .prefix(self.prefix.clone())
                .namespace(self.namespace.clone())
                .deadline(Duration::from_secs(2))
                .registry_window(window),
        )
        .expect("cache");
        Db::connect_with(DbConfig::new(self.url.clone()).cache(cache).pool_size(2))
            .await
            .expect("db")
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(tabula::testkit::redis_url().expect("redis"))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// The name of the current epoch's registry.
    async fn registry_key(&self) -> String {
        let base = format!("{}:t:{}", self.prefix, self.namespace);
        let epoch: String = redis::cmd("GET")
            .arg(format!("{base}:epoch"))
            .query_async(&mut self.redis().await)
            .await
            .expect("epoch");
        format!("{base}:{epoch}:reg")
    }
}

fn body(text: &str) -> CachedRowPatch {
    CachedRowPatch {
        body: Some(text.into()),
    }
}

async fn read_body(db: &Db) -> String {
    db.read::<CachedRow>(1)
        .await
        .expect("read")
        .expect("row")
        .body
}

#[test]
fn writes_to_a_table_nobody_caches_skip_redis_and_cached_ones_cost_one_round_trip() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (writer, reader) = runtime.block_on(async {
        let setup = Setup::new().await;
        // A window long enough for the measured writes, however slow the machine.
        let window = Duration::from_secs(30);
        let (writer, reader) = (
            setup.process_with(window).await,
            setup.process_with(window).await,
        );
        // The reader caches `cached_rows`: it registers the table.
        read_body(&reader).await;
        // The writer's first write tells Redis (it has no snapshot yet) and learns
        // the registry.
        writer
            .create(NewLogLine {
                id: 0,
                body: "first".into(),
            })
            .await
            .expect("first write");
        (writer, reader)
    });
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            for id in 1..=20 {
                writer
                    .create(NewLogLine {
                        id,
                        body: "line".into(),
                    })
                    .await
                    .expect("log write");
            }
            writer
                .update::<CachedRow>(1, body("v1"))
                .await
                .expect("cached write");
        })
    });
    let text = handle.render();
    let value = |labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value(&[
            "tabula_cache_events_total",
            r#"event="invalidation_skipped""#
        ]),
        20.0,
        "{text}"
    );
    assert_eq!(
        value(&[
            "tabula_cache_operation_seconds_count",
            r#"operation="invalidate""#
        ]),
        1.0,
        "only the write to the cached table went to Redis: {text}"
    );
    // And it invalidated: the reader sees it.
    runtime.block_on(async {
        assert_eq!(read_body(&reader).await, "v1");
    });
}

#[tokio::test]
async fn a_table_cached_for_the_first_time_is_seen_by_every_writer_before_its_first_fill() {
    let setup = Setup::new().await;
    let (writer, reader) = (setup.process().await, setup.process().await);
    // The writer's snapshot: nothing registered.
    writer
        .create(NewLogLine {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("snapshot");
    // Another process starts caching the table now, and the writer — trusting its
    // snapshot for the window — writes without telling Redis.
    assert_eq!(read_body(&reader).await, "v0");
    writer
        .update::<CachedRow>(1, body("v1"))
        .await
        .expect("write");
    assert_eq!(
        read_body(&reader).await,
        "v1",
        "the first reads of a newly cached table are not filled: a writer may not know yet"
    );
    // Past the wait, the table fills and is invalidated as any other: every writer's
    // snapshot is now younger than the registration.
    tokio::time::sleep(WINDOW * 2).await;
    for expected in ["v2", "v3"] {
        assert_ne!(read_body(&reader).await, expected);
        writer
            .update::<CachedRow>(1, body(expected))
            .await
            .expect("write");
        assert_eq!(read_body(&reader).await, expected);
        assert_eq!(
            read_body(&reader).await,
            expected,
            "and again, from the cache"
        );
    }
}

#[tokio::test]
async fn a_registry_lost_while_its_epoch_survives_replaces_the_epoch() {
    let setup = Setup::new().await;
    let (writer, reader) = (setup.process().await, setup.process().await);
    read_body(&reader).await;
    tokio::time::sleep(WINDOW * 2).await;
    assert_eq!(read_body(&reader).await, "v0");
    assert_eq!(read_body(&reader).await, "v0", "cached");
    // The registry goes (evicted, deleted by hand); the epoch and the entries stay.
    let key = setup.registry_key().await;
    let deleted: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut setup.redis().await)
        .await
        .expect("del");
    assert_eq!(deleted, 1, "{key}");
    // The writer refreshes its snapshot through a write elsewhere, then writes the
    // cached row — skipping it if the lost registry were believed.
    tokio::time::sleep(WINDOW * 2).await;
    writer
        .create(NewLogLine {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("refresh");
    writer
        .update::<CachedRow>(1, body("v1"))
        .await
        .expect("write");
    assert_eq!(
        read_body(&reader).await,
        "v1",
        "never the lost epoch's entry"
    );
}
