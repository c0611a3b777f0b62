//! Round 13: unique finders in one round trip, the registry of cached tables (cheaper
//! writes), and storage downloads through the row cache.
//!
//! Each "process" is a `Db` with a `CacheService` of its own on one Redis prefix and
//! namespace (as two application servers). Tests named `defect_*` each showed a defect
//! when written (round 13) and pass since its fix; the others held from the start.

mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tabula::storage::{BucketOptions, StorageService, UploadOptions};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Error, Table};
use uuid::Uuid;

// ------------------------------------------------------------------ models

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_users", cache(ttl = 300))]
struct User {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    handle: String,
    body: String,
}

/// `r13_soft` as a model with soft delete: deleted rows are not there.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_soft", cache(ttl = 300))]
struct SoftLive {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    handle: String,
    #[table(soft_delete)]
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The same table, the same columns, no soft delete (an admin view that sees every
/// row).
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_soft", cache(ttl = 300))]
struct SoftAll {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    handle: String,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_prices", cache(ttl = 300))]
struct Price {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    amount: Decimal,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_tags", cache(ttl = 300))]
struct Tag {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    label: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_docs", cache(ttl = 300))]
struct Doc {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    doc: serde_json::Value,
}

/// Never cached.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_parents")]
struct Parent {
    #[table(primary_key)]
    id: i64,
    name: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_children", cache(ttl = 300))]
struct Child {
    #[table(primary_key)]
    id: i64,
    parent: i64,
    body: String,
}

/// Never cached.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_logs")]
struct Log {
    #[table(primary_key)]
    id: i64,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_notes", cache(ttl = 300))]
struct Note {
    #[table(primary_key)]
    id: i64,
    team: i64,
    body: String,
}

/// Read by `r13_notes`' policy; never cached by itself.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r13_members")]
struct Member {
    #[table(primary_key)]
    id: i64,
    team: i64,
    user_id: Uuid,
}

const SCHEMA: &str = "
    CREATE TABLE r13_users (id int8 PRIMARY KEY, handle text NOT NULL UNIQUE, body text NOT NULL);
    CREATE TABLE r13_soft (id int8 PRIMARY KEY, handle text NOT NULL UNIQUE, deleted_at timestamptz);
    CREATE TABLE r13_prices (id int8 PRIMARY KEY, amount numeric NOT NULL UNIQUE);
    CREATE TABLE r13_docs (id int8 PRIMARY KEY, doc jsonb NOT NULL UNIQUE);
    CREATE TABLE r13_tags (id int8 PRIMARY KEY, label text NOT NULL UNIQUE);
    CREATE TABLE r13_parents (id int8 PRIMARY KEY, name text NOT NULL);
    CREATE TABLE r13_children (id int8 PRIMARY KEY,
        parent int8 NOT NULL REFERENCES r13_parents (id) ON DELETE CASCADE, body text NOT NULL);
    CREATE TABLE r13_logs (id int8 PRIMARY KEY, body text NOT NULL);
    CREATE TABLE r13_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
    CREATE TABLE r13_members (id int8 PRIMARY KEY, team int8 NOT NULL, user_id uuid NOT NULL);
    GRANT SELECT, INSERT, UPDATE, DELETE ON r13_notes, r13_members TO authenticated, anon;
    ALTER TABLE r13_notes ENABLE ROW LEVEL SECURITY;
    ALTER TABLE r13_members ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON r13_members USING (user_id = auth.uid());
    CREATE POLICY team ON r13_notes FOR SELECT
        USING (team IN (SELECT team FROM r13_members WHERE user_id = auth.uid()));
    INSERT INTO r13_users VALUES (1, 'a', 'v0'), (2, 'b', 'v0');
    INSERT INTO r13_parents VALUES (1, 'p1'), (2, 'p2');
    INSERT INTO r13_children VALUES (1, 1, 'c1'), (2, 2, 'c2');
";

// ------------------------------------------------------------------ set-up

const WINDOW: Duration = Duration::from_millis(300);

/// Past the wait of a newly registered table (1.5 × the window), with a margin.
async fn past_wait(window: Duration) {
    tokio::time::sleep(window * 2).await;
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Redis,
    Near,
    Memory,
}

struct Env {
    url: String,
    prefix: String,
    namespace: String,
    /// No cache: the oracle, and writes behind every cache's back.
    plain: Db,
}

impl Env {
    async fn new() -> Env {
        let (_, url) = common::db_and_url().await;
        let plain = Db::connect_with(DbConfig::new(url.clone()).pool_size(3))
            .await
            .expect("plain");
        plain.execute_batch(SCHEMA).await.expect("schema");
        let unique = format!("{}x{}", std::process::id(), Uuid::new_v4().simple());
        Env {
            url,
            prefix: format!("r13{unique}"),
            namespace: format!("ns{unique}"),
            plain,
        }
    }

    fn cache(&self, kind: Kind, window: Option<Duration>) -> CacheService {
        let mut config = CacheConfig::default()
            .prefix(self.prefix.clone())
            .namespace(self.namespace.clone())
            .deadline(Duration::from_secs(2));
        if let Some(window) = window {
            config = config.registry_window(window);
        }
        match kind {
            Kind::Redis => {
                CacheService::redis(&tabula::testkit::redis_url().expect("redis"), config)
            }
            Kind::Near => CacheService::redis(
                &tabula::testkit::redis_url().expect("redis"),
                config.near(8 << 20),
            ),
            Kind::Memory => CacheService::in_memory(config),
        }
        .expect("cache")
    }

    async fn with_cache(&self, cache: CacheService) -> Db {
        Db::connect_with(DbConfig::new(self.url.clone()).cache(cache).pool_size(3))
            .await
            .expect("db")
    }

    async fn process(&self, kind: Kind, window: Option<Duration>) -> Db {
        self.with_cache(self.cache(kind, window)).await
    }

    fn base(&self) -> String {
        format!("{}:t:{}", self.prefix, self.namespace)
    }

    /// Every key of this namespace whose name matches `pattern` (a glob after the base).
    async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = redis_conn().await;
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}{pattern}", self.base()))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("scan");
            out.extend(batch);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }

    async fn del(&self, keys: &[String]) -> i64 {
        if keys.is_empty() {
            return 0;
        }
        redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis_conn().await)
            .await
            .expect("del")
    }

    /// Redis loses everything of this prefix (a restart without persistence, seen
    /// from this namespace).
    async fn wipe(&self) -> i64 {
        let keys = self.keys("*").await;
        let mut all = keys;
        // The user-level keys (storage bytes) live under the prefix too.
        let mut conn = redis_conn().await;
        let extra: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("keys");
        all.extend(extra);
        all.sort();
        all.dedup();
        self.del(&all).await
    }

    async fn epoch_key(&self) -> String {
        format!("{}:epoch", self.base())
    }

    async fn registry_key(&self) -> String {
        let epoch: String = redis::cmd("GET")
            .arg(self.epoch_key().await)
            .query_async(&mut redis_conn().await)
            .await
            .expect("epoch");
        format!("{}:{epoch}:reg", self.base())
    }
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(tabula::testkit::redis_url().expect("redis"))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

fn handle(text: &str) -> UserPatch {
    UserPatch {
        handle: Some(text.into()),
        ..Default::default()
    }
}

fn body(text: &str) -> UserPatch {
    UserPatch {
        body: Some(text.into()),
        ..Default::default()
    }
}

/// What the database says the row holding `value` is.
async fn truth(plain: &Db, value: &str) -> Option<User> {
    plain
        .query::<User>()
        .filter(User::HANDLE.eq(value))
        .first()
        .await
        .expect("oracle")
}

async fn find(db: &Db, value: &str) -> Option<User> {
    User::by_handle(db, value).await.expect("by_handle")
}

/// The finder agrees with the database, twice (the second time from the cache).
async fn agrees(db: &Db, plain: &Db, value: &str, label: &str) {
    for round in 0..2 {
        assert_eq!(
            find(db, value).await,
            truth(plain, value).await,
            "{label}: by_handle({value:?}), round {round}"
        );
    }
}

fn sum(text: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ============================================================ unique finders

/// Value `a` moves from row 1 to row 2 (and `b` back to row 1) through another
/// process while this one has `a` cached (mapping and row).
async fn moved_value(kind: Kind, window: Option<Duration>) {
    let env = Env::new().await;
    let reader = env.process(kind, window).await;
    let writer = match kind {
        Kind::Memory => reader.clone(),
        _ => env.process(Kind::Redis, window).await,
    };
    let label = format!("{kind:?} window {window:?}");
    find(&reader, "a").await;
    if let Some(w) = window {
        past_wait(w).await;
    }
    agrees(&reader, &env.plain, "a", &label).await;
    agrees(&reader, &env.plain, "b", &label).await;
    writer.update::<User>(1, handle("tmp")).await.expect("away");
    writer.update::<User>(2, handle("a")).await.expect("to 2");
    writer.update::<User>(1, handle("b")).await.expect("to 1");
    if kind == Kind::Near {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(find(&reader, "a").await.map(|u| u.id), Some(2), "{label}");
    assert_eq!(find(&reader, "b").await.map(|u| u.id), Some(1), "{label}");
    agrees(&reader, &env.plain, "a", &label).await;
    agrees(&reader, &env.plain, "b", &label).await;
    agrees(&reader, &env.plain, "tmp", &label).await;
    // Deleted, then the value reused by a new row.
    writer.delete::<User>(2).await.expect("delete");
    if kind == Kind::Near {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agrees(&reader, &env.plain, "a", &label).await;
    writer
        .create(NewUser {
            id: 3,
            handle: "a".into(),
            body: "new".into(),
        })
        .await
        .expect("reuse");
    if kind == Kind::Near {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(find(&reader, "a").await.map(|u| u.id), Some(3), "{label}");
    agrees(&reader, &env.plain, "a", &label).await;
    // A body change behind the mapping: the row entry is dropped, the mapping stays.
    writer
        .update::<User>(3, body("changed"))
        .await
        .expect("body");
    if kind == Kind::Near {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        find(&reader, "a").await.map(|u| u.body),
        Some("changed".into()),
        "{label}"
    );
    agrees(&reader, &env.plain, "a", &label).await;
}

#[tokio::test]
async fn a_unique_value_moved_or_reused_by_another_process_is_followed_redis() {
    moved_value(Kind::Redis, None).await;
}

#[tokio::test]
async fn a_unique_value_moved_or_reused_by_another_process_is_followed_near() {
    moved_value(Kind::Near, None).await;
}

#[tokio::test]
async fn a_unique_value_moved_or_reused_in_process_is_followed_memory() {
    moved_value(Kind::Memory, None).await;
}

#[tokio::test]
async fn a_unique_value_moved_or_reused_by_another_process_is_followed_registry() {
    moved_value(Kind::Redis, Some(WINDOW)).await;
}

#[tokio::test]
async fn a_unique_value_moved_or_reused_by_another_process_is_followed_near_registry() {
    moved_value(Kind::Near, Some(WINDOW)).await;
}

/// The row a mapping leads to is evicted by hand (its entry only): the finder reads
/// the database, refills, and follows a later write.
#[tokio::test]
async fn a_mapping_whose_row_entry_is_gone_reads_the_database() {
    let env = Env::new().await;
    let (reader, writer) = (
        env.process(Kind::Redis, None).await,
        env.process(Kind::Redis, None).await,
    );
    agrees(&reader, &env.plain, "a", "warm").await;
    let rows = env.keys(":*:r:r13_users:*:1").await;
    assert_eq!(rows.len(), 1, "the row entry: {rows:?}");
    let mappings = env.keys(":*:r:r13_users:*:#handle:*").await;
    assert_eq!(mappings.len(), 1, "the mapping: {mappings:?}");
    env.del(&rows).await;
    agrees(&reader, &env.plain, "a", "row entry evicted").await;
    assert_eq!(env.keys(":*:r:r13_users:*:1").await.len(), 1, "refilled");
    env.del(&env.keys(":*:r:r13_users:*:1").await).await;
    writer.update::<User>(1, handle("z")).await.expect("rename");
    agrees(&reader, &env.plain, "a", "evicted, renamed").await;
    agrees(&reader, &env.plain, "z", "evicted, renamed").await;
    // The mapping evicted instead, then a move.
    env.del(&env.keys(":*:r:r13_users:*:#handle:*").await).await;
    agrees(&reader, &env.plain, "z", "mapping evicted").await;
}

/// A mapping that leads to a row entry written by hand with another row's bytes (a
/// corrupted or foreign entry): never answered.
#[tokio::test]
async fn a_mapping_pointing_at_another_rows_entry_is_not_trusted() {
    let env = Env::new().await;
    let reader = env.process(Kind::Redis, None).await;
    agrees(&reader, &env.plain, "a", "warm a").await;
    agrees(&reader, &env.plain, "b", "warm b").await;
    // Point a's mapping at row 2 (whose entry holds `b`).
    let mapping = env.keys(":*:r:r13_users:*:#handle:\"a\"").await;
    assert_eq!(mapping.len(), 1, "{mapping:?}");
    let mut conn = redis_conn().await;
    let entry: Vec<u8> = redis::cmd("GET")
        .arg(&mapping[0])
        .query_async(&mut conn)
        .await
        .expect("get");
    let mut forged = entry[..16].to_vec();
    forged.extend_from_slice(b"2");
    let _: () = redis::cmd("SET")
        .arg(&mapping[0])
        .arg(forged)
        .query_async(&mut conn)
        .await
        .expect("set");
    agrees(&reader, &env.plain, "a", "forged mapping").await;
}

/// Redis loses the namespace mid-run (every key of the prefix deleted), then writes
/// and reads go on: never an old answer.
async fn wiped(kind: Kind, window: Option<Duration>) {
    let env = Env::new().await;
    let (reader, writer) = (
        env.process(kind, window).await,
        env.process(Kind::Redis, window).await,
    );
    find(&reader, "a").await;
    if let Some(w) = window {
        past_wait(w).await;
    }
    agrees(&reader, &env.plain, "a", "warm").await;
    assert!(env.wipe().await > 0);
    writer.update::<User>(1, handle("z")).await.expect("rename");
    writer.update::<User>(2, handle("a")).await.expect("move");
    if kind == Kind::Near {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agrees(&reader, &env.plain, "a", "after wipe").await;
    agrees(&reader, &env.plain, "z", "after wipe").await;
    assert_eq!(
        reader
            .read::<User>(1)
            .await
            .expect("read")
            .map(|u| u.handle),
        Some("z".into())
    );
}

#[tokio::test]
async fn a_namespace_lost_mid_run_never_answers_old_entries_redis() {
    wiped(Kind::Redis, None).await;
}

#[tokio::test]
async fn a_namespace_lost_mid_run_never_answers_old_entries_near() {
    wiped(Kind::Near, None).await;
}

#[tokio::test]
async fn a_namespace_lost_mid_run_never_answers_old_entries_registry() {
    wiped(Kind::Redis, Some(WINDOW)).await;
}

/// Values that look like JSON, hold `:` or `#`, or spell a mapping's own name.
#[tokio::test]
async fn unique_values_of_every_shape_are_found_exactly() {
    let values: Vec<String> = vec![
        r#"{"a":1}"#.into(),
        "a:b".into(),
        "\"quoted\"".into(),
        "#handle:\"a\"".into(),
        "null".into(),
        "1".into(),
        "".into(),
        "ünï ☃ \u{0}x".replace('\u{0}', ""),
        "x".repeat(3000),
        " a".into(),
        "a ".into(),
    ];
    for kind in [Kind::Redis, Kind::Memory, Kind::Near] {
        let env = Env::new().await;
        let db = env.process(kind, None).await;
        for (i, value) in values.iter().enumerate() {
            let id = 100 + i as i64;
            db.create(NewUser {
                id,
                handle: value.clone(),
                body: "x".into(),
            })
            .await
            .expect("create");
        }
        for value in &values {
            agrees(&db, &env.plain, value, &format!("{kind:?}")).await;
        }
        // Each moved to a suffixed value: the old one is gone.
        for (i, value) in values.iter().enumerate() {
            db.update::<User>(100 + i as i64, handle(&format!("{value}~")))
                .await
                .expect("rename");
        }
        for value in &values {
            agrees(&db, &env.plain, value, &format!("{kind:?} renamed")).await;
            agrees(
                &db,
                &env.plain,
                &format!("{value}~"),
                &format!("{kind:?} new"),
            )
            .await;
        }
    }
}

/// A unique hit is one cache operation and no query.
fn hit_cost(kind: Kind) {
    let rt = runtime();
    let (env, db) = rt.block_on(async {
        let env = Env::new().await;
        let db = env.process(kind, None).await;
        for _ in 0..3 {
            find(&db, "a").await;
        }
        (env, db)
    });
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            assert_eq!(find(&db, "a").await.map(|u| u.id), Some(1));
        })
    });
    let text = handle.render();
    assert_eq!(
        sum(&text, &["tabula_cache_operation_seconds_count"]),
        1.0,
        "{kind:?}: {text}"
    );
    assert_eq!(
        sum(
            &text,
            &["tabula_db_operation_seconds_count", r#"source="db""#]
        ),
        0.0,
        "{kind:?}: {text}"
    );
    drop(env);
}

#[test]
fn a_unique_hit_costs_one_cache_operation_redis() {
    hit_cost(Kind::Redis);
}

#[test]
fn a_unique_hit_costs_one_cache_operation_memory() {
    hit_cost(Kind::Memory);
}

#[test]
fn a_unique_hit_costs_no_round_trip_near() {
    hit_cost(Kind::Near);
}

/// `numeric`: `1.0` finds the row holding `1.00`. Always the database's answer; and
/// what each lookup by that spelling costs. (Round 13 found it churned the cache — five
/// cache operations and a query every time; `numeric` finders, whose decoded values
/// may compare equal where PostgreSQL's do not, now ask the database alone.)
#[test]
fn a_numeric_unique_value_in_another_scale_is_looked_up_in_the_database_alone() {
    let rt = runtime();
    let (env, db) = rt.block_on(async {
        let env = Env::new().await;
        env.plain
            .execute_batch("INSERT INTO r13_prices VALUES (1, 1.00), (2, 2.5)")
            .await
            .expect("rows");
        let db = env.process(Kind::Redis, None).await;
        for spelling in ["1.0", "1", "1.00", "1.000", "2.50"] {
            let value = Decimal::from_str(spelling).expect("decimal");
            for _ in 0..2 {
                let got = Price::by_amount(&db, value).await.expect("find");
                let want = env
                    .plain
                    .query::<Price>()
                    .filter(Price::AMOUNT.eq(value))
                    .first()
                    .await
                    .expect("oracle");
                assert_eq!(got, want, "by_amount({spelling})");
            }
        }
        (env, db)
    });
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let value = Decimal::from_str("1.0").expect("decimal");
            assert_eq!(
                Price::by_amount(&db, value)
                    .await
                    .expect("find")
                    .map(|p| p.id),
                Some(1)
            );
        })
    });
    let text = handle.render();
    let ops = sum(&text, &["tabula_cache_operation_seconds_count"]);
    let queries = sum(
        &text,
        &["tabula_db_operation_seconds_count", r#"source="db""#],
    );
    drop(env);
    assert_eq!(
        (ops, queries),
        (0.0, 1.0),
        "by_amount(1.0) of a row holding 1.00, the third time: cache operations and \
         queries: {text}"
    );
}

/// Two models of one table with the same columns — one with soft delete, one without —
/// share a shape (`#[table(soft_delete)]` is not part of it): what one reads is served
/// to the other.
async fn soft_and_all(kind: Kind) {
    let env = Env::new().await;
    env.plain
        .execute_batch("INSERT INTO r13_soft VALUES (1, 'gone', now()), (2, 'here', NULL)")
        .await
        .expect("rows");
    let db = env.process(kind, None).await;
    // The admin view reads the deleted row (rightly), through the cache.
    assert!(
        SoftAll::by_handle(&db, "gone")
            .await
            .expect("all")
            .is_some()
    );
    assert!(db.read::<SoftAll>(1).await.expect("all").is_some());
    // The soft-delete model must not see it.
    let want = env
        .plain
        .query::<SoftLive>()
        .filter(SoftLive::HANDLE.eq("gone"))
        .first()
        .await
        .expect("oracle");
    assert_eq!(want, None, "oracle");
    assert_eq!(
        SoftLive::by_handle(&db, "gone").await.expect("live"),
        None,
        "{kind:?}: SoftLive::by_handle of a soft-deleted row"
    );
    assert_eq!(
        db.read::<SoftLive>(1).await.expect("live"),
        None,
        "{kind:?}: read::<SoftLive> of a soft-deleted row"
    );
}

#[tokio::test]
async fn defect_a_soft_delete_model_is_served_deleted_rows_another_model_cached_redis() {
    soft_and_all(Kind::Redis).await;
}

#[tokio::test]
async fn defect_a_soft_delete_model_is_served_deleted_rows_another_model_cached_memory() {
    soft_and_all(Kind::Memory).await;
}

/// The other way round: the soft-delete model caches the row's absence, and the model
/// that sees every row is told it does not exist.
#[tokio::test]
async fn defect_a_model_without_soft_delete_is_told_a_row_is_absent() {
    let env = Env::new().await;
    env.plain
        .execute_batch("INSERT INTO r13_soft VALUES (1, 'gone', now())")
        .await
        .expect("rows");
    let db = env.process(Kind::Redis, None).await;
    assert_eq!(db.read::<SoftLive>(1).await.expect("live"), None);
    assert_eq!(db.read::<SoftLive>(1).await.expect("live"), None);
    let want = env.plain.read::<SoftAll>(1).await.expect("oracle");
    assert!(want.is_some());
    assert_eq!(
        db.read::<SoftAll>(1).await.expect("all"),
        want,
        "read::<SoftAll> after SoftLive cached the row's absence"
    );
}

/// A reader's mapping fill races a write that moves the value away from the row it
/// read (the hook runs between its query and its fill).
#[tokio::test]
async fn a_value_moved_between_the_query_and_the_mapping_fill_is_not_trusted() {
    for window in [None, Some(WINDOW)] {
        let env = Env::new().await;
        let cache = env.cache(Kind::Redis, window);
        let reader = env.with_cache(cache.clone()).await;
        let writer = env.process(Kind::Redis, window).await;
        if let Some(w) = window {
            find(&reader, "x").await;
            past_wait(w).await;
        }
        let armed = Arc::new(AtomicBool::new(true));
        let (w, flag) = (writer.clone(), armed.clone());
        cache.set_fill_hook(Some(Arc::new(move || {
            let (w, flag) = (w.clone(), flag.clone());
            Box::pin(async move {
                if flag.swap(false, Ordering::SeqCst) {
                    w.update::<User>(1, handle("moved"))
                        .await
                        .expect("move away");
                }
            })
        })));
        assert_eq!(
            find(&reader, "a").await.map(|u| u.id),
            Some(1),
            "read before"
        );
        cache.set_fill_hook(None);
        assert!(!armed.load(Ordering::SeqCst), "the hook ran");
        agrees(
            &reader,
            &env.plain,
            "a",
            &format!("{window:?} after the race"),
        )
        .await;
        agrees(&reader, &env.plain, "moved", &format!("{window:?}")).await;
        writer
            .create(NewUser {
                id: 9,
                handle: "a".into(),
                body: "new".into(),
            })
            .await
            .expect("reuse");
        agrees(&reader, &env.plain, "a", &format!("{window:?} reused")).await;
    }
}

/// The row's fill (mapping there, row entry missing) races a write of the row.
#[tokio::test]
async fn a_row_changed_between_the_mapping_hit_and_the_row_fill_is_not_trusted() {
    let env = Env::new().await;
    let cache = env.cache(Kind::Redis, None);
    let reader = env.with_cache(cache.clone()).await;
    let writer = env.process(Kind::Redis, None).await;
    agrees(&reader, &env.plain, "a", "warm").await;
    writer
        .update::<User>(1, body("v1"))
        .await
        .expect("drop row entry");
    let armed = Arc::new(AtomicBool::new(true));
    let (w, flag) = (writer.clone(), armed.clone());
    cache.set_fill_hook(Some(Arc::new(move || {
        let (w, flag) = (w.clone(), flag.clone());
        Box::pin(async move {
            if flag.swap(false, Ordering::SeqCst) {
                w.update::<User>(1, handle("gone")).await.expect("rename");
                w.update::<User>(2, handle("a")).await.expect("move");
            }
        })
    })));
    let first = find(&reader, "a").await;
    cache.set_fill_hook(None);
    assert!(!armed.load(Ordering::SeqCst), "the hook ran");
    assert_eq!(first.map(|u| u.id), Some(1), "the read before the write");
    agrees(&reader, &env.plain, "a", "after").await;
    assert_eq!(find(&reader, "a").await.map(|u| u.id), Some(2));
    assert_eq!(
        reader
            .read::<User>(1)
            .await
            .expect("read")
            .map(|u| u.handle),
        Some("gone".into())
    );
}

/// Racing writers and readers across two processes, checked after they settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_moves_settle_on_the_databases_answer() {
    for window in [None, Some(Duration::from_millis(100))] {
        let env = Env::new().await;
        let (reader, writer) = (
            env.process(Kind::Redis, window).await,
            env.process(Kind::Redis, window).await,
        );
        if let Some(w) = window {
            find(&reader, "a").await;
            past_wait(w).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (db, stop) = (reader.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    for v in ["a", "b", "c"] {
                        let _ = User::by_handle(&db, v).await;
                    }
                }
            }));
        }
        for i in 0..40 {
            // Rotate a -> b -> c between rows 1 and 2 through a free value.
            let (from, to) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
            let name = ["a", "b", "c"][i % 3];
            let _ = writer.update::<User>(to, handle(&format!("t{i}"))).await;
            let _ = writer.update::<User>(from, handle(&format!("f{i}"))).await;
            let _ = writer.update::<User>(to, handle(name)).await;
        }
        stop.store(true, Ordering::SeqCst);
        for r in readers {
            r.await.expect("reader");
        }
        for v in ["a", "b", "c", "f39", "t39"] {
            agrees(&reader, &env.plain, v, &format!("{window:?} settled")).await;
            agrees(
                &writer,
                &env.plain,
                v,
                &format!("{window:?} settled, writer"),
            )
            .await;
        }
    }
}

/// `Model::by_<field>`, `Db::find_unique` and storage downloads are `Send` futures.
#[test]
fn finder_and_download_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let _check = |db: Db, storage: StorageService| {
        let f = User::by_handle(&db, "x");
        send(&f);
        let g = db.find_unique(User::HANDLE, "x".to_string());
        send(&g);
        let h = storage.download("b", "p");
        send(&h);
        let i = storage.object("b", "p");
        send(&i);
        let j = storage.download_file("b", "p");
        send(&j);
        let k = Price::by_amount(&db, Decimal::ONE);
        send(&k);
    };
}

// ============================================================ the registry

/// A cascade from a table nobody caches into one that is cached: the writer's snapshot
/// holds only the child; the cascade must still reach it.
#[tokio::test]
async fn a_cascade_from_an_uncached_parent_reaches_a_cached_child() {
    let env = Env::new().await;
    let (reader, writer) = (
        env.process(Kind::Redis, Some(WINDOW)).await,
        env.process(Kind::Redis, Some(WINDOW)).await,
    );
    reader.read::<Child>(1).await.expect("register");
    past_wait(WINDOW).await;
    assert!(reader.read::<Child>(1).await.expect("fill").is_some());
    assert!(reader.read::<Child>(1).await.expect("hit").is_some());
    // The writer's snapshot: children registered, parents and logs not.
    writer
        .create(NewLog {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("snapshot");
    writer.delete::<Parent>(1).await.expect("cascade");
    assert_eq!(
        reader.read::<Child>(1).await.expect("read"),
        None,
        "the cascade deleted the child"
    );
    // A raw-SQL cascade, invalidated by hand through the parent.
    assert!(reader.read::<Child>(2).await.expect("fill").is_some());
    writer
        .execute_batch("DELETE FROM r13_parents WHERE id = 2")
        .await
        .expect("raw");
    writer.invalidate::<Parent>(&[2]).await;
    assert_eq!(reader.read::<Child>(2).await.expect("read"), None);
}

/// A cached query over a table a writer with a stale snapshot writes, before and after
/// the wait.
#[tokio::test]
async fn a_cached_query_over_a_table_written_with_a_stale_snapshot_is_fresh() {
    let env = Env::new().await;
    let (reader, writer) = (
        env.process(Kind::Redis, Some(WINDOW)).await,
        env.process(Kind::Redis, Some(WINDOW)).await,
    );
    let bodies = |db: Db| async move {
        db.query::<User>()
            .order_by(User::ID.asc())
            .cached(60)
            .all()
            .await
            .expect("cached")
            .into_iter()
            .map(|u| u.body)
            .collect::<Vec<_>>()
    };
    // A snapshot without r13_users.
    writer
        .create(NewLog {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("snapshot");
    assert_eq!(bodies(reader.clone()).await, ["v0", "v0"]);
    writer
        .update::<User>(1, body("v1"))
        .await
        .expect("skipped write");
    assert_eq!(
        bodies(reader.clone()).await,
        ["v1", "v0"],
        "young: never filled"
    );
    past_wait(WINDOW).await;
    assert_eq!(bodies(reader.clone()).await, ["v1", "v0"]);
    assert_eq!(bodies(reader.clone()).await, ["v1", "v0"], "cached");
    writer.update::<User>(1, body("v2")).await.expect("write");
    assert_eq!(bodies(reader.clone()).await, ["v2", "v0"]);
}

/// A scoped read whose policy reads a table nothing else caches: a writer of that
/// table must not skip it once scoped copies depend on it.
#[tokio::test]
async fn a_scoped_copy_follows_a_write_to_its_policy_table() {
    let env = Env::new().await;
    let user = Uuid::new_v4();
    env.plain
        .execute_batch(&format!(
            "INSERT INTO r13_notes VALUES (1, 10, 'n1');
             INSERT INTO r13_members VALUES (1, 10, '{user}');"
        ))
        .await
        .expect("rows");
    let (reader, writer) = (
        env.process(Kind::Redis, Some(WINDOW)).await,
        env.process(Kind::Redis, Some(WINDOW)).await,
    );
    let scoped = reader.as_user(user);
    // A snapshot taken before anything is registered (within the window below).
    writer
        .create(NewLog {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("snapshot");
    assert!(scoped.read::<Note>(1).await.expect("read").is_some());
    writer.delete::<Member>(1).await.expect("skipped write");
    assert_eq!(
        scoped.read::<Note>(1).await.expect("read"),
        None,
        "young registration: the membership's deletion is seen"
    );
    writer
        .create(NewMember {
            id: 2,
            team: 10,
            user_id: user,
        })
        .await
        .expect("member again");
    past_wait(WINDOW).await;
    assert!(scoped.read::<Note>(1).await.expect("fill").is_some());
    assert!(scoped.read::<Note>(1).await.expect("hit").is_some());
    // A fresh snapshot (it holds the policy table now), then the membership goes.
    writer
        .create(NewLog {
            id: 2,
            body: "x".into(),
        })
        .await
        .expect("snapshot");
    writer.delete::<Member>(2).await.expect("write");
    assert_eq!(
        scoped.read::<Note>(1).await.expect("read"),
        None,
        "a membership deleted by a writer whose snapshot is fresh"
    );
    let cached = scoped
        .query::<Note>()
        .cached(60)
        .all()
        .await
        .expect("query");
    assert!(cached.is_empty(), "{cached:?}");
}

/// `Db::invalidate` / `invalidate_table` after raw SQL, with the registry on.
#[tokio::test]
async fn invalidations_by_hand_reach_registered_tables() {
    let env = Env::new().await;
    let (reader, writer) = (
        env.process(Kind::Redis, Some(WINDOW)).await,
        env.process(Kind::Redis, Some(WINDOW)).await,
    );
    find(&reader, "a").await;
    past_wait(WINDOW).await;
    agrees(&reader, &env.plain, "a", "warm").await;
    assert_eq!(
        reader.read::<User>(2).await.expect("r").map(|u| u.body),
        Some("v0".into())
    );
    writer
        .create(NewLog {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("snapshot");
    writer
        .execute_batch("UPDATE r13_users SET handle = 'q' WHERE id = 1")
        .await
        .expect("raw");
    writer.invalidate::<User>(&[1]).await;
    agrees(&reader, &env.plain, "a", "after invalidate").await;
    agrees(&reader, &env.plain, "q", "after invalidate").await;
    writer
        .execute_batch("UPDATE r13_users SET body = 'raw'")
        .await
        .expect("raw");
    writer.invalidate_table::<User>().await;
    assert_eq!(
        reader.read::<User>(2).await.expect("r").map(|u| u.body),
        Some("raw".into())
    );
    // A tag, bumped by hand.
    let tagged = |db: Db| async move {
        db.query::<User>()
            .order_by(User::ID.asc())
            .cached(60)
            .tag("t1")
            .all()
            .await
            .expect("tagged")
            .len()
    };
    assert_eq!(tagged(reader.clone()).await, 2);
    assert_eq!(tagged(reader.clone()).await, 2);
    writer
        .execute_batch("INSERT INTO r13_users VALUES (7, 'seven', 'x')")
        .await
        .expect("raw");
    writer.invalidate_tag("t1").await;
    assert_eq!(tagged(reader.clone()).await, 3);
}

/// The wait: a registration younger than 1.5 × the window fills nothing; one older
/// fills. Checked on the keys in Redis.
#[tokio::test]
async fn a_new_registration_fills_nothing_until_one_and_a_half_windows() {
    let window = Duration::from_millis(1000);
    let env = Env::new().await;
    let reader = env.process(Kind::Redis, Some(window)).await;
    let started = std::time::Instant::now();
    reader.read::<User>(1).await.expect("register");
    tokio::time::sleep((window * 12 / 10).saturating_sub(started.elapsed())).await;
    reader.read::<User>(1).await.expect("at 1.2");
    assert!(
        started.elapsed() < window * 14 / 10,
        "the check itself was late"
    );
    assert!(
        env.keys(":*:r:r13_users:*:1").await.is_empty(),
        "filled at 1.2 windows"
    );
    tokio::time::sleep((window * 17 / 10).saturating_sub(started.elapsed())).await;
    reader.read::<User>(1).await.expect("at 1.7");
    assert_eq!(
        env.keys(":*:r:r13_users:*:1").await.len(),
        1,
        "filled at 1.7"
    );
}

/// The writer's side of the boundary: a snapshot trusted for less than the window,
/// not a moment longer.
#[test]
fn a_writer_trusts_its_snapshot_for_the_window_only() {
    let window = Duration::from_millis(1000);
    let rt = runtime();
    let (env, writer) = rt.block_on(async {
        let env = Env::new().await;
        let writer = env.process(Kind::Redis, Some(window)).await;
        (env, writer)
    });
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let started = std::time::Instant::now();
            for id in 1..=2 {
                writer
                    .create(NewLog {
                        id,
                        body: "x".into(),
                    })
                    .await
                    .expect("log");
            }
            tokio::time::sleep((window * 8 / 10).saturating_sub(started.elapsed())).await;
            writer
                .create(NewLog {
                    id: 3,
                    body: "x".into(),
                })
                .await
                .expect("log");
            assert!(started.elapsed() < window * 95 / 100, "late");
            tokio::time::sleep((window * 11 / 10).saturating_sub(started.elapsed())).await;
            writer
                .create(NewLog {
                    id: 4,
                    body: "x".into(),
                })
                .await
                .expect("log");
        })
    });
    let text = handle.render();
    drop(env);
    assert_eq!(
        sum(
            &text,
            &[
                "tabula_cache_events_total",
                r#"event="invalidation_skipped""#
            ]
        ),
        2.0,
        "writes 2 and 3 skipped: {text}"
    );
    assert_eq!(
        sum(
            &text,
            &[
                "tabula_cache_operation_seconds_count",
                r#"operation="invalidate""#
            ]
        ),
        2.0,
        "writes 1 and 4 told Redis: {text}"
    );
}

/// A process without the registry and one with it on one namespace (round 13 found
/// the reader, which never registered, served the old row after the writer skipped its
/// table; now the first process with a window replaces the epoch, and every reader
/// registers and waits): never stale, whichever reads and writes, in any order.
#[tokio::test]
async fn mixed_registry_settings_never_serve_a_stale_row() {
    let env = Env::new().await;
    let (reader, writer) = (
        env.process(Kind::Redis, None).await,
        env.process(Kind::Redis, Some(WINDOW)).await,
    );
    assert_eq!(
        reader.read::<User>(1).await.expect("r").map(|u| u.body),
        Some("v0".into())
    );
    assert_eq!(
        reader.read::<User>(1).await.expect("r").map(|u| u.body),
        Some("v0".into())
    );
    writer
        .create(NewLog {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("snapshot");
    writer.update::<User>(1, body("v1")).await.expect("write");
    assert_eq!(
        reader.read::<User>(1).await.expect("r").map(|u| u.body),
        Some("v1".into())
    );
    // Past the wait, the reader without a window caches again, and the writer's
    // snapshot shows the table.
    tokio::time::sleep(WINDOW * 3).await;
    for version in ["v2", "v3"] {
        reader.read::<User>(1).await.expect("fill");
        writer
            .create(NewLog {
                id: if version == "v2" { 2 } else { 3 },
                body: "x".into(),
            })
            .await
            .expect("refresh");
        writer
            .update::<User>(1, body(version))
            .await
            .expect("write");
        assert_eq!(
            reader.read::<User>(1).await.expect("r").map(|u| u.body),
            Some(version.into())
        );
    }
}

/// A near tier behind the registry: fills after the wait, follows a writer.
#[tokio::test]
async fn a_near_tier_with_the_registry_follows_writes() {
    let env = Env::new().await;
    let (reader, writer) = (
        env.process(Kind::Near, Some(WINDOW)).await,
        env.process(Kind::Redis, Some(WINDOW)).await,
    );
    let read = |db: Db| async move { db.read::<User>(1).await.expect("r").map(|u| u.body) };
    writer
        .create(NewLog {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("stale snapshot");
    assert_eq!(read(reader.clone()).await, Some("v0".into()));
    writer.update::<User>(1, body("v1")).await.expect("skipped");
    assert_eq!(read(reader.clone()).await, Some("v1".into()));
    past_wait(WINDOW).await;
    for expected in ["v2", "v3"] {
        read(reader.clone()).await;
        read(reader.clone()).await;
        writer
            .update::<User>(1, body(expected))
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(read(reader.clone()).await, Some(expected.into()));
    }
}

/// The epoch key or the registry deleted by hand mid-run (evicted), with writers
/// holding snapshots of the old epoch.
#[tokio::test]
async fn an_epoch_or_registry_deleted_mid_run_serves_nothing_old() {
    for (what, kind) in [
        ("epoch", Kind::Redis),
        ("registry", Kind::Redis),
        ("both", Kind::Redis),
        ("epoch", Kind::Near),
        ("registry", Kind::Near),
    ] {
        let env = Env::new().await;
        let (reader, writer) = (
            env.process(kind, Some(WINDOW)).await,
            env.process(Kind::Redis, Some(WINDOW)).await,
        );
        find(&reader, "a").await;
        reader.read::<User>(2).await.expect("r");
        past_wait(WINDOW).await;
        agrees(&reader, &env.plain, "a", what).await;
        reader.read::<User>(2).await.expect("r");
        writer
            .create(NewLog {
                id: 1,
                body: "x".into(),
            })
            .await
            .expect("snapshot with users");
        let mut keys = Vec::new();
        if what != "registry" {
            keys.push(env.epoch_key().await);
        }
        if what != "epoch" {
            keys.push(env.registry_key().await);
        }
        assert_eq!(env.del(&keys).await, keys.len() as i64, "{what}");
        writer.update::<User>(1, handle("z")).await.expect("write");
        writer.update::<User>(2, body("v9")).await.expect("write");
        settle(kind).await;
        agrees(&reader, &env.plain, "a", what).await;
        agrees(&reader, &env.plain, "z", what).await;
        assert_eq!(
            reader.read::<User>(2).await.expect("r").map(|u| u.body),
            Some("v9".into()),
            "{what}"
        );
        // And past the new epoch's wait, writes still reach the reader.
        past_wait(WINDOW).await;
        agrees(&reader, &env.plain, "z", what).await;
        writer.update::<User>(1, handle("y")).await.expect("write");
        settle(kind).await;
        agrees(&reader, &env.plain, "z", what).await;
        agrees(&reader, &env.plain, "y", what).await;
    }
}

/// An in-process cache ignores the window (it is not shared): writes are never
/// skipped.
#[tokio::test]
async fn an_in_process_cache_with_a_registry_window_never_skips() {
    let env = Env::new().await;
    let db = env
        .process(Kind::Memory, Some(Duration::from_secs(30)))
        .await;
    db.create(NewLog {
        id: 1,
        body: "x".into(),
    })
    .await
    .expect("log");
    assert_eq!(
        db.read::<User>(1).await.expect("r").map(|u| u.body),
        Some("v0".into())
    );
    assert_eq!(
        db.read::<User>(1).await.expect("r").map(|u| u.body),
        Some("v0".into())
    );
    db.update::<User>(1, body("v1")).await.expect("write");
    assert_eq!(
        db.read::<User>(1).await.expect("r").map(|u| u.body),
        Some("v1".into())
    );
    agrees(&db, &env.plain, "a", "memory").await;
}

/// Unique finders under a young registration, against a writer whose snapshot is
/// older than the registration.
#[tokio::test]
async fn a_unique_finder_under_a_young_registration_follows_a_skipping_writer() {
    let env = Env::new().await;
    let (reader, writer) = (
        env.process(Kind::Redis, Some(WINDOW)).await,
        env.process(Kind::Redis, Some(WINDOW)).await,
    );
    writer
        .create(NewLog {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("stale snapshot");
    assert_eq!(find(&reader, "a").await.map(|u| u.id), Some(1));
    assert_eq!(find(&reader, "nobody").await, None);
    writer
        .update::<User>(1, handle("nobody"))
        .await
        .expect("skipped");
    agrees(&reader, &env.plain, "a", "young").await;
    agrees(&reader, &env.plain, "nobody", "young").await;
    past_wait(WINDOW).await;
    agrees(&reader, &env.plain, "a", "old").await;
    agrees(&reader, &env.plain, "nobody", "old").await;
    writer.update::<User>(1, handle("a")).await.expect("write");
    agrees(&reader, &env.plain, "a", "old, after").await;
    agrees(&reader, &env.plain, "nobody", "old, after").await;
}

// ============================================================ storage

const KEY: &[u8] = b"round thirteen signing key, 32+ bytes long";

fn opts(upsert: bool) -> UploadOptions {
    UploadOptions {
        content_type: "text/plain".into(),
        cache_control: "3600".into(),
        upsert,
        ..Default::default()
    }
}

struct Stores {
    one: StorageService,
    two: StorageService,
    db_two: Db,
    root: std::path::PathBuf,
}

impl Drop for Stores {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn stores(env: &Env, kind: Kind, window: Option<Duration>) -> Stores {
    let root = std::env::temp_dir().join(format!("r13-store-{}", Uuid::new_v4()));
    let db_one = env.process(kind, window).await;
    let db_two = env.process(Kind::Redis, window).await;
    let one = StorageService::local(db_one, &root, KEY, "http://files.invalid").expect("one");
    let two =
        StorageService::local(db_two.clone(), &root, KEY, "http://files.invalid").expect("two");
    two.create_bucket("bk", BucketOptions::default())
        .await
        .expect("bucket");
    Stores {
        one,
        two,
        db_two,
        root,
    }
}

async fn bytes_of(s: &StorageService, path: &str) -> Option<Vec<u8>> {
    match s.download_file("bk", path).await {
        Ok(b) => Some(b.to_vec()),
        Err(Error::NotFound { .. }) => None,
        Err(e) => panic!("download {path}: {e:?}"),
    }
}

async fn settle(kind: Kind) {
    if kind == Kind::Near {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One process has downloads cached; another overwrites, moves, copies, deletes,
/// renames the row behind the service, and deletes the bucket.
async fn downloads_follow(kind: Kind, window: Option<Duration>) {
    let env = Env::new().await;
    let s = stores(&env, kind, window).await;
    s.two
        .upload_file("bk", "a.txt", b"v1".to_vec(), opts(false))
        .await
        .expect("upload");
    bytes_of(&s.one, "a.txt").await;
    if let Some(w) = window {
        past_wait(w).await;
    }
    for _ in 0..3 {
        assert_eq!(bytes_of(&s.one, "a.txt").await.as_deref(), Some(&b"v1"[..]));
    }
    s.two
        .upload_file("bk", "a.txt", b"v2".to_vec(), opts(true))
        .await
        .expect("overwrite");
    settle(kind).await;
    assert_eq!(
        bytes_of(&s.one, "a.txt").await.as_deref(),
        Some(&b"v2"[..]),
        "{kind:?} {window:?}: overwrite"
    );
    assert_eq!(bytes_of(&s.one, "a.txt").await.as_deref(), Some(&b"v2"[..]));
    s.two.move_file("bk", "a.txt", "b.txt").await.expect("move");
    settle(kind).await;
    assert_eq!(
        bytes_of(&s.one, "a.txt").await,
        None,
        "{kind:?}: moved away"
    );
    assert_eq!(bytes_of(&s.one, "b.txt").await.as_deref(), Some(&b"v2"[..]));
    assert_eq!(bytes_of(&s.one, "b.txt").await.as_deref(), Some(&b"v2"[..]));
    s.two.copy_file("bk", "b.txt", "c.txt").await.expect("copy");
    settle(kind).await;
    assert_eq!(bytes_of(&s.one, "c.txt").await.as_deref(), Some(&b"v2"[..]));
    s.two.delete_files("bk", &["b.txt"]).await.expect("delete");
    settle(kind).await;
    assert_eq!(bytes_of(&s.one, "b.txt").await, None, "{kind:?}: deleted");
    // Same path again, other bytes.
    s.two
        .upload_file("bk", "b.txt", b"v3".to_vec(), opts(false))
        .await
        .expect("again");
    settle(kind).await;
    assert_eq!(bytes_of(&s.one, "b.txt").await.as_deref(), Some(&b"v3"[..]));
    // The row renamed through the Db of the other process.
    let object = s.one.object("bk", "c.txt").await.expect("object");
    s.db_two
        .update::<tabula::storage::FileObject>(
            object.id,
            tabula::storage::FileObjectPatch {
                name: Some("d.txt".into()),
                ..Default::default()
            },
        )
        .await
        .expect("rename");
    settle(kind).await;
    assert!(matches!(
        s.one.object("bk", "c.txt").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(s.one.object("bk", "d.txt").await.expect("d").id, object.id);
    // The bucket goes (its objects cascade).
    s.one.object("bk", "b.txt").await.expect("cached b");
    s.one.object("bk", "b.txt").await.expect("cached b");
    s.db_two
        .delete::<tabula::storage::Bucket>("bk".to_string())
        .await
        .expect("bucket delete");
    settle(kind).await;
    assert!(
        matches!(
            s.one.object("bk", "b.txt").await,
            Err(Error::NotFound { .. })
        ),
        "{kind:?} {window:?}: bucket deleted"
    );
    assert!(matches!(
        s.one.object("bk", "d.txt").await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn downloads_cached_in_one_process_follow_another_redis() {
    downloads_follow(Kind::Redis, None).await;
}

#[tokio::test]
async fn downloads_cached_in_one_process_follow_another_near() {
    downloads_follow(Kind::Near, None).await;
}

#[tokio::test]
async fn downloads_cached_in_one_process_follow_another_registry() {
    downloads_follow(Kind::Redis, Some(WINDOW)).await;
}

/// `delete_files` finds the object through the cache: after another process replaced
/// it (delete + new upload at the same path), the current object is the one deleted.
#[tokio::test]
async fn delete_files_with_a_cached_object_deletes_the_current_one() {
    let env = Env::new().await;
    let s = stores(&env, Kind::Redis, None).await;
    s.two
        .upload_file("bk", "a.txt", b"v1".to_vec(), opts(false))
        .await
        .expect("upload");
    let old = s.one.object("bk", "a.txt").await.expect("o");
    s.one.object("bk", "a.txt").await.expect("o");
    s.two.delete_files("bk", &["a.txt"]).await.expect("delete");
    s.two
        .upload_file("bk", "a.txt", b"v2".to_vec(), opts(false))
        .await
        .expect("again");
    assert_eq!(
        s.one.delete_files("bk", &["a.txt"]).await.expect("delete"),
        1
    );
    let left = env
        .plain
        .query::<tabula::storage::FileObject>()
        .all()
        .await
        .expect("left");
    assert!(left.is_empty(), "{left:?} (old id {})", old.id);
}

/// A download made and cached by the unscoped service is never served to a user the
/// policies hide the object from; the owner gets it.
#[tokio::test]
async fn a_cached_object_is_not_served_to_a_user_who_cannot_see_it() {
    let env = Env::new().await;
    let s = stores(&env, Kind::Redis, None).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    s.one
        .as_user(alice)
        .upload_file("bk", "alice.txt", b"secret".to_vec(), opts(false))
        .await
        .expect("alice uploads");
    for _ in 0..3 {
        assert_eq!(
            bytes_of(&s.one, "alice.txt").await.as_deref(),
            Some(&b"secret"[..])
        );
    }
    assert_eq!(
        bytes_of(&s.one.as_user(bob), "alice.txt").await,
        None,
        "bob"
    );
    assert_eq!(
        bytes_of(&s.two.as_user(bob), "alice.txt").await,
        None,
        "bob, two"
    );
    assert!(s.one.as_user(bob).object("bk", "alice.txt").await.is_err());
    assert_eq!(
        bytes_of(&s.one.as_user(alice), "alice.txt")
            .await
            .as_deref(),
        Some(&b"secret"[..])
    );
    // Alice deletes it through her scoped service; the unscoped cache follows.
    s.two
        .as_user(alice)
        .delete_files("bk", &["alice.txt"])
        .await
        .expect("delete");
    assert_eq!(bytes_of(&s.one, "alice.txt").await, None);
}

/// The signing module: "A download token therefore serves the object it was made for
/// and no later one at the same path". An overwrite (`upsert`) keeps the row's id.
#[tokio::test]
async fn defect_a_signed_download_url_serves_the_object_that_overwrote_its_own() {
    let env = Env::new().await;
    let s = stores(&env, Kind::Redis, None).await;
    s.two
        .upload_file("bk", "a.txt", b"v1".to_vec(), opts(false))
        .await
        .expect("upload");
    let url = s
        .one
        .create_signed_url("bk", "a.txt", 600)
        .await
        .expect("sign");
    let token = url.split("token=").nth(1).expect("token").to_owned();
    assert!(s.one.verify_download("bk", "a.txt", &token).await.is_ok());
    s.two
        .upload_file("bk", "a.txt", b"v2 replaced".to_vec(), opts(true))
        .await
        .expect("overwrite");
    let verified = s.one.verify_download("bk", "a.txt", &token).await;
    assert!(
        matches!(verified, Err(Error::PermissionDenied { .. })),
        "a token made for v1 after v2 overwrote it: {verified:?}"
    );
}

/// Raw SQL moves values behind every cache, then `invalidate_table` (a generation
/// bump): a near tier's mapping and row entries go with it.
#[tokio::test]
async fn invalidate_table_drops_mappings_everywhere() {
    for kind in [Kind::Redis, Kind::Near, Kind::Memory] {
        let env = Env::new().await;
        let reader = env.process(kind, None).await;
        let writer = match kind {
            Kind::Memory => reader.clone(),
            _ => env.process(Kind::Redis, None).await,
        };
        agrees(&reader, &env.plain, "a", "warm").await;
        agrees(&reader, &env.plain, "b", "warm").await;
        writer
            .execute_batch(
                "UPDATE r13_users SET handle = 'tmp' WHERE id = 1;
                 UPDATE r13_users SET handle = 'a' WHERE id = 2;
                 UPDATE r13_users SET handle = 'b' WHERE id = 1;",
            )
            .await
            .expect("raw swap");
        writer.invalidate_table::<User>().await;
        settle(kind).await;
        assert_eq!(find(&reader, "a").await.map(|u| u.id), Some(2), "{kind:?}");
        agrees(&reader, &env.plain, "a", &format!("{kind:?}")).await;
        agrees(&reader, &env.plain, "b", &format!("{kind:?}")).await;
    }
}

/// `holds` compares the row as Rust decoded it. A `jsonb` number past f64's precision
/// decodes lossily: after a write (raw SQL, invalidated by hand as documented) the
/// row no longer equals the value in PostgreSQL, but its lossy decoding still does —
/// and the finder answers the row the database no longer has under that value.
#[tokio::test]
async fn defect_a_lossy_jsonb_decoding_makes_a_stale_mapping_look_valid() {
    for kind in [Kind::Redis, Kind::Memory] {
        let env = Env::new().await;
        env.plain
            .execute_batch(r#"INSERT INTO r13_docs VALUES (1, '{"n": 10000000000000000000000}')"#)
            .await
            .expect("row");
        let db = env.process(kind, None).await;
        let value = serde_json::json!({"n": 1e22});
        let oracle = || async {
            env.plain
                .query::<Doc>()
                .filter(Doc::DOC.eq(value.clone()))
                .first()
                .await
                .expect("oracle")
                .map(|d| d.id)
        };
        for _ in 0..2 {
            assert_eq!(
                Doc::by_doc(&db, value.clone())
                    .await
                    .expect("find")
                    .map(|d| d.id),
                Some(1)
            );
        }
        assert_eq!(oracle().await, Some(1));
        db.execute_batch(
            r#"UPDATE r13_docs SET doc = '{"n": 10000000000000000000001}' WHERE id = 1"#,
        )
        .await
        .expect("raw");
        db.invalidate::<Doc>(&[1]).await;
        assert_eq!(
            oracle().await,
            None,
            "the database: no row holds the value now"
        );
        assert_eq!(
            Doc::by_doc(&db, value.clone())
                .await
                .expect("find")
                .map(|d| d.id),
            None,
            "{kind:?}: by_doc after the row's value changed"
        );
    }
}

/// The same with `numeric` past rust_decimal's 28 digits.
#[tokio::test]
async fn defect_a_lossy_numeric_decoding_makes_a_stale_mapping_look_valid() {
    let env = Env::new().await;
    env.plain
        .execute_batch("INSERT INTO r13_prices VALUES (1, 1.0000000000000000000000000000)")
        .await
        .expect("row");
    let db = env.process(Kind::Redis, None).await;
    let value = Decimal::from_str("1.0000000000000000000000000000").expect("decimal");
    let oracle = || async {
        env.plain
            .query::<Price>()
            .filter(Price::AMOUNT.eq(value))
            .first()
            .await
            .map(|p| p.map(|p| p.id))
    };
    for _ in 0..2 {
        assert_eq!(
            Price::by_amount(&db, value)
                .await
                .expect("find")
                .map(|p| p.id),
            Some(1)
        );
    }
    db.execute_batch(
        "UPDATE r13_prices SET amount = 1.00000000000000000000000000000001 WHERE id = 1",
    )
    .await
    .expect("raw");
    db.invalidate::<Price>(&[1]).await;
    let truth = oracle().await;
    eprintln!(
        "numeric: database says {truth:?}; uncached read {:?}",
        env.plain.read::<Price>(1).await
    );
    let got = Price::by_amount(&db, value).await.map(|p| p.map(|p| p.id));
    assert_eq!(
        format!("{got:?}"),
        format!("{truth:?}"),
        "by_amount after the row's value changed"
    );
}
