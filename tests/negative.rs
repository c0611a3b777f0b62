//! Negative entries: a read by key (or by a unique column) that finds no row caches
//! the absence, under the same lease as a row, on every backend and tier — and every
//! write that can make the row exist drops it: create, create_many, insert_many,
//! upsert, restore, update (a unique value), update_where, from this handle or another.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "keyed", cache(ttl = 300))]
struct Keyed {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    name: String,
    #[table(soft_delete)]
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

const SCHEMA: &str =
    "CREATE TABLE keyed (id int8 PRIMARY KEY, name text NOT NULL UNIQUE, deleted_at timestamptz)";

fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "neg{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Each backend twice over: the cache of a first handle, and the cache of a second
/// handle on the same database — for Redis another service with the same prefix (as
/// another process would have), in-process the same service.
fn pairs() -> Vec<(CacheService, CacheService)> {
    let redis = tabula::testkit::redis_url().expect("redis");
    let config = |p: &str| {
        CacheConfig::default()
            .prefix(p)
            .deadline(Duration::from_secs(2))
    };
    let (plain, near) = (prefix(), prefix());
    let memory = CacheService::in_memory(config(&prefix())).expect("memory");
    vec![
        (
            CacheService::redis(&redis, config(&plain)).expect("redis"),
            CacheService::redis(&redis, config(&plain)).expect("redis"),
        ),
        (
            CacheService::redis(&redis, common::near(config(&near))).expect("near"),
            CacheService::redis(&redis, common::near(config(&near))).expect("near"),
        ),
        (memory.clone(), memory),
    ]
}

async fn handles(a: CacheService, b: CacheService) -> (Db, Db) {
    let (_, url) = common::db_and_url().await;
    let first = Db::connect_with(DbConfig::new(url.clone()).cache(a))
        .await
        .expect("first handle");
    let second = Db::connect_with(DbConfig::new(url).cache(b))
        .await
        .expect("second handle");
    first.execute_batch(SCHEMA).await.expect("schema");
    (first, second)
}

fn new(id: i64, name: &str) -> NewKeyed {
    NewKeyed {
        id,
        name: name.into(),
    }
}

/// A row put in behind Tabula's back: a cached absence keeps hiding it.
async fn sneak_in(db: &Db, id: i64, name: &str) {
    db.execute_batch(&format!(
        "INSERT INTO keyed (id, name) VALUES ({id}, '{name}')"
    ))
    .await
    .expect("insert behind the back");
}

async fn sneak_out(db: &Db, id: i64) {
    db.execute_batch(&format!("DELETE FROM keyed WHERE id = {id}"))
        .await
        .expect("delete behind the back");
}

#[tokio::test]
async fn an_absence_is_cached_and_every_create_drops_it() {
    for (a, b) in pairs() {
        let (first, second) = handles(a, b).await;
        // Cached: a row that appears behind Tabula's back stays hidden.
        assert_eq!(first.read::<Keyed>(7).await.expect("read"), None);
        sneak_in(&first, 7, "ghost").await;
        assert_eq!(
            first.read::<Keyed>(7).await.expect("read"),
            None,
            "the absence was cached"
        );
        assert_eq!(
            Keyed::by_name(&first, "ghost")
                .await
                .expect("by name")
                .map(|k| k.id),
            Some(7),
            "a finder that never looked is not fooled"
        );
        sneak_out(&first, 7).await;

        // A create through the other handle: the next read sees it.
        second.create(new(7, "seven")).await.expect("create");
        assert_eq!(
            first.read::<Keyed>(7).await.expect("read").map(|k| k.name),
            Some("seven".into())
        );

        // The same for create_many, insert_many (COPY) and upsert.
        for id in [8, 9, 10] {
            assert_eq!(first.read::<Keyed>(id).await.expect("read"), None);
        }
        second
            .create_many(vec![new(8, "eight")])
            .await
            .expect("create_many");
        second
            .insert_many(vec![new(9, "nine")])
            .await
            .expect("insert_many");
        second
            .upsert(new(10, "ten"), Keyed::ID)
            .await
            .expect("upsert");
        for id in [8, 9, 10] {
            assert!(
                first.read::<Keyed>(id).await.expect("read").is_some(),
                "row {id} after its write"
            );
        }
        // read_many caches the absences it finds, and a create drops them too.
        let many = first.read_many::<Keyed>(&[7, 11]).await.expect("many");
        assert_eq!(
            many.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false]
        );
        sneak_in(&first, 11, "ghost11").await;
        assert_eq!(
            first.read::<Keyed>(11).await.expect("read"),
            None,
            "cached by read_many"
        );
        sneak_out(&first, 11).await;
        second.create(new(11, "eleven")).await.expect("create");
        assert!(first.read_many::<Keyed>(&[11]).await.expect("many")[0].is_some());
    }
}

#[tokio::test]
async fn a_finder_caches_absence_until_a_write_gives_a_row_the_value() {
    for (a, b) in pairs() {
        let (first, second) = handles(a, b).await;
        let lookup = |name: &'static str| {
            let first = first.clone();
            async move {
                Keyed::by_name(&first, name)
                    .await
                    .expect("by name")
                    .map(|k| k.id)
            }
        };
        assert_eq!(lookup("ada").await, None);
        second.create(new(1, "ada")).await.expect("create");
        assert_eq!(lookup("ada").await, Some(1), "create");

        assert_eq!(lookup("grace").await, None);
        second
            .update(1, KeyedPatch::default().name("grace"))
            .await
            .expect("update");
        assert_eq!(lookup("grace").await, Some(1), "update to the value");
        assert_eq!(lookup("ada").await, None, "the old value is free");

        assert_eq!(lookup("hopper").await, None);
        second
            .update_where(Keyed::ID.eq(1), KeyedPatch::default().name("hopper"))
            .await
            .expect("update_where");
        assert_eq!(lookup("hopper").await, Some(1), "update_where to the value");

        // Soft delete, then restore: the absence cached in between goes.
        second.delete::<Keyed>(1).await.expect("soft delete");
        assert_eq!(first.read::<Keyed>(1).await.expect("read"), None);
        assert_eq!(lookup("hopper").await, None);
        second.restore::<Keyed>(1).await.expect("restore");
        assert!(
            first.read::<Keyed>(1).await.expect("read").is_some(),
            "restore"
        );
        assert_eq!(lookup("hopper").await, Some(1), "restore");
    }
}

/// The race the lease settles: a reader finds no row, a create commits and
/// invalidates, then the reader fills — the fill is refused, so the next read sees
/// the row.
#[tokio::test]
async fn a_create_between_a_readers_miss_and_its_fill_wins() {
    for (a, b) in pairs() {
        let hooked = a.clone();
        let (first, second) = handles(a, b).await;
        let armed = Arc::new(AtomicBool::new(true));
        let (writer, flag) = (second.clone(), armed.clone());
        hooked.set_fill_hook(Some(Arc::new(move || {
            let (writer, flag) = (writer.clone(), flag.clone());
            Box::pin(async move {
                if flag.swap(false, Ordering::SeqCst) {
                    writer
                        .create(new(5, "racer"))
                        .await
                        .expect("create in the gap");
                }
            })
        })));
        assert_eq!(
            first.read::<Keyed>(5).await.expect("read"),
            None,
            "read before the create"
        );
        hooked.set_fill_hook(None);
        assert!(!armed.load(Ordering::SeqCst), "the hook ran");
        assert_eq!(
            first.read::<Keyed>(5).await.expect("read").map(|k| k.name),
            Some("racer".into()),
            "the stale absence was not filled"
        );
    }
}
