//! What Tabula records, read back through a real Prometheus recorder: cache events by
//! table, and a database-operation sample for every read — `source="db"` when
//! PostgreSQL answered, `source="cache"` or `"near"` when the cache did.

mod common;

use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, Serialize, Deserialize)]
#[table(name = "metered", cache(ttl = 60))]
struct Metered {
    #[table(primary_key)]
    id: i64,
    body: String,
}

/// The rendered metrics after `work` ran with a recorder of this thread's own.
fn render(work: impl FnOnce(&tokio::runtime::Runtime)) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || work(&runtime));
    handle.render()
}

fn has(text: &str, metric: &str, labels: &[&str]) -> bool {
    text.lines()
        .any(|line| line.starts_with(metric) && labels.iter().all(|label| line.contains(label)))
}

#[test]
fn cache_events_carry_their_table_and_every_read_its_source() {
    let text = render(|runtime| {
        runtime.block_on(async {
            let redis = tabula::testkit::redis_url().expect("redis");
            for cache in [
                CacheService::in_memory(CacheConfig::default()).expect("memory"),
                CacheService::redis(
                    &redis,
                    CacheConfig::default()
                        .prefix(format!("met{}", std::process::id()))
                        .near(1 << 20),
                )
                .expect("near"),
            ] {
                let (_, url) = common::db_and_url().await;
                let db = Db::connect_with(DbConfig::new(url).cache(cache))
                    .await
                    .expect("db");
                db.execute_batch("CREATE TABLE metered (id int8 PRIMARY KEY, body text NOT NULL)")
                    .await
                    .expect("table");
                db.create(NewMetered {
                    id: 1,
                    body: "b".into(),
                })
                .await
                .expect("create");
                for _ in 0..4 {
                    db.read::<Metered>(1).await.expect("read");
                    db.query::<Metered>()
                        .cached(60)
                        .count()
                        .await
                        .expect("count");
                }
            }
        });
    });
    let events = "tabula_cache_events_total";
    assert!(
        has(&text, events, &[r#"event="hit""#, r#"table="metered""#]),
        "{text}"
    );
    assert!(
        has(&text, events, &[r#"event="miss""#, r#"table="metered""#]),
        "{text}"
    );
    assert!(
        has(&text, events, &[r#"event="fill""#, r#"table="metered""#]),
        "{text}"
    );
    let reads = "tabula_db_operation_seconds_count";
    assert!(
        has(&text, reads, &[r#"source="db""#, r#"table="metered""#]),
        "{text}"
    );
    assert!(
        has(&text, reads, &[r#"operation="read""#, r#"source="cache""#]),
        "{text}"
    );
    assert!(
        has(&text, reads, &[r#"operation="read""#, r#"source="near""#]),
        "{text}"
    );
    assert!(
        has(&text, reads, &[r#"operation="count""#, r#"source="cache""#]),
        "{text}"
    );
}

#[derive(Table, Debug, Clone, Serialize, Deserialize)]
#[table(name = "spelled", schema = "public", cache(ttl = 60))]
struct Spelled {
    #[table(primary_key)]
    id: i64,
    body: String,
}

/// A model that spells its schema is one table in the read histogram: the reads the
/// cache answers carry the labels the database's answers carry (they were
/// `table="public.spelled"` beside `table="spelled"`, and a cached count was
/// `operation="query"` beside the database's `"count"`: split on every dashboard).
#[test]
fn a_schema_spelled_model_is_one_table_in_the_read_metrics() {
    let text = render(|runtime| {
        runtime.block_on(async {
            let cache = CacheService::in_memory(CacheConfig::default()).expect("memory");
            let (_, url) = common::db_and_url().await;
            let db = Db::connect_with(DbConfig::new(url).cache(cache))
                .await
                .expect("db");
            db.execute_batch("CREATE TABLE spelled (id int8 PRIMARY KEY, body text NOT NULL)")
                .await
                .expect("table");
            db.create(NewSpelled {
                id: 1,
                body: "b".into(),
            })
            .await
            .expect("create");
            for _ in 0..3 {
                db.read::<Spelled>(1).await.expect("read");
                db.query::<Spelled>()
                    .cached(60)
                    .count()
                    .await
                    .expect("count");
            }
        });
    });
    let reads = "tabula_db_operation_seconds_count";
    for source in ["db", "cache"] {
        for operation in ["read", "count"] {
            let source = format!(r#"source="{source}""#);
            let operation = format!(r#"operation="{operation}""#);
            assert!(
                has(&text, reads, &[&source, &operation, r#"table="spelled""#]),
                "{source} {operation}: {text}"
            );
        }
    }
    let split = text
        .lines()
        .any(|line| line.starts_with(reads) && line.contains("public.spelled"));
    assert!(!split, "{text}");
}

/// The staleness check's own reads are `operation="verify"`, not application reads, and
/// its second look at the cache is no hit: the hit ratio and the read counts stay the
/// application's.
#[test]
fn the_staleness_checks_reads_are_not_application_reads() {
    let text = render(|runtime| {
        runtime.block_on(async {
            let cache =
                CacheService::in_memory(CacheConfig::default().verify_sample(1.0)).expect("memory");
            let (_, url) = common::db_and_url().await;
            let db = Db::connect_with(DbConfig::new(url).cache(cache.clone()))
                .await
                .expect("db");
            db.execute_batch("CREATE TABLE metered (id int8 PRIMARY KEY, body text NOT NULL)")
                .await
                .expect("table");
            db.create(NewMetered {
                id: 1,
                body: "b".into(),
            })
            .await
            .expect("create");
            db.read::<Metered>(1).await.expect("fill");
            db.execute_batch("UPDATE metered SET body = 'behind'")
                .await
                .expect("behind the back");
            db.read::<Metered>(1).await.expect("one stale hit");
            // Let the check finish (read, grace period, second look, read).
            for _ in 0..100 {
                if cache.verify_stats().checked > 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(cache.verify_stats().stale, 1);
        });
    });
    let value = |labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("tabula_") && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let count = "tabula_db_operation_seconds_count";
    assert_eq!(
        value(&[count, r#"operation="read""#, r#"source="db""#]),
        1.0,
        "one application read hit the database: {text}"
    );
    assert_eq!(
        value(&[count, r#"operation="read""#, r#"source="cache""#]),
        1.0,
        "{text}"
    );
    assert_eq!(value(&[count, r#"operation="verify""#]), 2.0, "{text}");
    assert_eq!(
        value(&["tabula_cache_events_total", r#"event="hit""#]),
        1.0,
        "{text}"
    );
}

#[derive(Table, Debug, Clone, Serialize, Deserialize)]
#[table(name = "handles", cache(ttl = 60))]
struct Handle {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    name: String,
}

/// A unique finder answered by the cache costs one cache round trip (the value's
/// mapping and the row it leads to, in one script) and no database query, on both
/// backends — counted by the operations each records.
#[test]
fn a_unique_finder_hit_is_one_cache_round_trip() {
    let redis = tabula::testkit::redis_url().expect("redis");
    for cache in [
        CacheService::in_memory(CacheConfig::default()).expect("memory"),
        CacheService::redis(
            &redis,
            CacheConfig::default().prefix(format!("uniq{}", std::process::id())),
        )
        .expect("redis"),
    ] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let db = runtime.block_on(async {
            let (_, url) = common::db_and_url().await;
            let db = Db::connect_with(DbConfig::new(url).cache(cache))
                .await
                .expect("db");
            db.execute_batch(
                "CREATE TABLE handles (id int8 PRIMARY KEY, name text UNIQUE NOT NULL)",
            )
            .await
            .expect("table");
            db.create(NewHandle {
                id: 1,
                name: "ada".into(),
            })
            .await
            .expect("create");
            // The first call fills the mapping, the second the row.
            for _ in 0..2 {
                assert!(Handle::by_name(&db, "ada").await.expect("warm").is_some());
            }
            db
        });
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let found = Handle::by_name(&db, "ada").await.expect("hit");
                assert_eq!(found.map(|h| h.id), Some(1));
            })
        });
        let text = handle.render();
        let total = |metric: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(metric))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        assert_eq!(
            total("tabula_cache_operation_seconds_count"),
            1.0,
            "one cache operation: {text}"
        );
        assert!(
            has(
                &text,
                "tabula_cache_operation_seconds_count",
                &[r#"operation="unique_get""#]
            ),
            "{text}"
        );
        assert!(
            has(
                &text,
                "tabula_db_operation_seconds_count",
                &[r#"source="cache""#]
            ),
            "answered by the cache: {text}"
        );
        assert!(
            !has(
                &text,
                "tabula_db_operation_seconds_count",
                &[r#"source="db""#]
            ),
            "no database query: {text}"
        );
    }
}
