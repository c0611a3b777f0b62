//! Round 13: `#[cached]` memos over a table, with the registry of cached tables on
//! (its own binary: the global memo cache is once per process).

mod common;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table, cached};
use uuid::Uuid;

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "m13_items")]
struct Item {
    #[table(primary_key)]
    id: i64,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "m13_logs")]
struct Log {
    #[table(primary_key)]
    id: i64,
    body: String,
}

const WINDOW: Duration = Duration::from_millis(300);

static PLAIN: OnceLock<Db> = OnceLock::new();
static RUNS: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 60, tables(Item))]
async fn bodies(key: u32) -> Vec<String> {
    let _ = key;
    RUNS.fetch_add(1, Ordering::SeqCst);
    PLAIN
        .get()
        .expect("plain")
        .query::<Item>()
        .order_by(Item::ID.asc())
        .all()
        .await
        .expect("query")
        .into_iter()
        .map(|i| i.body)
        .collect()
}

fn body(text: &str) -> ItemPatch {
    ItemPatch {
        body: Some(text.into()),
    }
}

/// A writer whose snapshot predates the memo's first lookup skips the table; the memo
/// is not filled until every such writer's snapshot has expired; past that, writes
/// reach it.
#[tokio::test]
async fn a_memo_over_a_table_follows_writers_with_old_and_new_snapshots() {
    let (_, url) = common::db_and_url().await;
    let plain = Db::connect_with(DbConfig::new(url.clone()).pool_size(2))
        .await
        .expect("plain");
    plain
        .execute_batch(
            "CREATE TABLE m13_items (id int8 PRIMARY KEY, body text NOT NULL);
             CREATE TABLE m13_logs (id int8 PRIMARY KEY, body text NOT NULL);
             INSERT INTO m13_items VALUES (1, 'v0');",
        )
        .await
        .expect("schema");
    assert!(PLAIN.set(plain).is_ok());
    let unique = format!("{}x{}", std::process::id(), Uuid::new_v4().simple());
    let config = || {
        CacheConfig::default()
            .prefix(format!("m13{unique}"))
            .namespace(format!("ns{unique}"))
            .deadline(Duration::from_secs(2))
            .registry_window(WINDOW)
    };
    let redis = tabula::testkit::redis_url().expect("redis");
    let global = CacheService::redis(&redis, config()).expect("global");
    assert!(global.install_global());
    // The writer: another process with its own cache on the namespace.
    let writer = Db::connect_with(
        DbConfig::new(url.clone())
            .cache(CacheService::redis(&redis, config()).expect("writer cache"))
            .pool_size(2),
    )
    .await
    .expect("writer");
    // A writer without a cache of its own (only the memo cache knows the table).
    let bare = Db::connect_with(DbConfig::new(url.clone()).pool_size(2))
        .await
        .expect("bare");

    writer
        .create(NewLog {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("snapshot without m13_items");
    assert_eq!(bodies(1).await, ["v0"]);
    writer.update::<Item>(1, body("v1")).await.expect("skipped");
    assert_eq!(bodies(1).await, ["v1"], "young: not filled");
    tokio::time::sleep(WINDOW * 2).await;
    assert_eq!(bodies(1).await, ["v1"]);
    let runs = RUNS.load(Ordering::SeqCst);
    assert_eq!(bodies(1).await, ["v1"]);
    assert_eq!(RUNS.load(Ordering::SeqCst), runs, "filled and hit");
    writer.update::<Item>(1, body("v2")).await.expect("write");
    assert_eq!(bodies(1).await, ["v2"]);
    assert_eq!(bodies(1).await, ["v2"]);
    // A fresh snapshot through the writer, then another write.
    writer
        .create(NewLog {
            id: 2,
            body: "x".into(),
        })
        .await
        .expect("snapshot");
    writer.update::<Item>(1, body("v3")).await.expect("write");
    assert_eq!(bodies(1).await, ["v3"]);
    assert_eq!(bodies(1).await, ["v3"]);
    // The cache-less handle writes: only the memo cache is told.
    bare.create(NewLog {
        id: 3,
        body: "x".into(),
    })
    .await
    .expect("snapshot through the memo cache");
    bare.update::<Item>(1, body("v4")).await.expect("write");
    assert_eq!(bodies(1).await, ["v4"]);
    bare.update::<Item>(1, body("v5")).await.expect("write");
    assert_eq!(bodies(1).await, ["v5"]);
}
