//! The cache gives one answer per database, per user, per write: namespaces, memo keys
//! and scopes, single flight after writes, cascades, large values, outages.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabula::testkit::PrivateRedis;
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table, cached};
use uuid::Uuid;

use common::fixtures::{ident, redis};

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 300))]
struct Profile {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    username: String,
    avatar_url: Option<String>,
}

async fn connect(url: &str, cache: CacheService) -> Db {
    Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db")
}

/// A new profile of a fresh user, created through `db`.
async fn profile(db: &Db, username: &str) -> Profile {
    db.create(NewProfile {
        user_id: Uuid::new_v4(),
        username: username.into(),
        avatar_url: None,
    })
    .await
    .expect("create")
}

/// Renames the row `id` through `db` (a write Tabula invalidates for).
async fn rename(db: &Db, id: Uuid, to: impl Into<String>, what: &str) {
    db.update::<Profile>(
        id,
        ProfilePatch {
            username: Some(to.into()),
            ..Default::default()
        },
    )
    .await
    .expect(what);
}

/// The username of row `id` as `db` reads it (through its cache).
async fn username(db: &Db, id: Uuid) -> String {
    db.read::<Profile>(id)
        .await
        .expect("read")
        .expect("row")
        .username
}

async fn insert_profile(db: &Db, id: Uuid, username: &str) {
    let username = username.to_owned();
    db.with_client(async move |c| {
        c.execute(
            "INSERT INTO profiles (id, user_id, username) VALUES ($1, gen_random_uuid(), $2)",
            &[&id, &username],
        )
        .await?;
        Ok(())
    })
    .await
    .expect("insert");
}

// ---- 1. two databases on one Redis --------------------------------------------------

#[tokio::test]
async fn two_databases_on_one_redis_with_the_same_prefix_never_share_entries() {
    let prefix = ident("c");
    let (_, url_a) = common::db_and_url().await;
    let (_, url_b) = common::db_and_url().await;
    let a = connect(&url_a, redis(&prefix)).await;
    let b = connect(&url_b, redis(&prefix)).await;
    let id = Uuid::new_v4();
    insert_profile(&a, id, "tenant-a").await;
    insert_profile(&b, id, "tenant-b").await;
    let from_a = a.read::<Profile>(id).await.expect("read a").expect("row a");
    assert_eq!(from_a.username, "tenant-a");
    let from_b = b.read::<Profile>(id).await.expect("read b").expect("row b");
    assert_eq!(
        from_b.username, "tenant-b",
        "tenant b was served tenant a's row"
    );
    let q_a = a
        .query::<Profile>()
        .cached(60)
        .all()
        .await
        .expect("query a");
    let q_b = b
        .query::<Profile>()
        .cached(60)
        .all()
        .await
        .expect("query b");
    assert_eq!(q_a[0].username, "tenant-a");
    assert_eq!(
        q_b[0].username, "tenant-b",
        "a cached query crossed databases"
    );
}

#[tokio::test]
async fn an_explicit_namespace_separates_two_handles_on_one_database() {
    let prefix = ident("c");
    let (db, url) = common::db_and_url().await;
    let id = Uuid::new_v4();
    insert_profile(&db, id, "before").await;
    let one = connect(
        &url,
        CacheService::redis(
            &tabula::testkit::redis_url().expect("redis"),
            CacheConfig::default().prefix(&prefix).namespace("blue"),
        )
        .expect("cache"),
    )
    .await;
    let two = connect(
        &url,
        CacheService::redis(
            &tabula::testkit::redis_url().expect("redis"),
            CacheConfig::default().prefix(&prefix).namespace("green"),
        )
        .expect("cache"),
    )
    .await;
    assert_eq!(username(&one, id).await, "before");
    // Written behind both caches' backs: each namespace has its own entry.
    db.execute_batch(&format!(
        "UPDATE profiles SET username = 'after' WHERE id = '{id}'"
    ))
    .await
    .expect("update");
    assert_eq!(username(&two, id).await, "after");
    assert_eq!(username(&one, id).await, "before");
}

#[tokio::test]
async fn a_write_through_one_handle_invalidates_another_cache_over_the_same_database() {
    let (_, url) = common::db_and_url().await;
    // Two handles in one process, each with a cache of its own (another prefix); then
    // a writer with no cache at all, beside a reader with one, on both backends.
    let memory =
        CacheService::in_memory(CacheConfig::default().prefix(ident("c"))).expect("memory");
    let pairs = [
        (
            connect(&url, redis(&ident("c"))).await,
            connect(&url, redis(&ident("c"))).await,
        ),
        (
            Db::connect(&url).await.expect("uncached"),
            connect(&url, redis(&ident("c"))).await,
        ),
        (
            Db::connect(&url).await.expect("uncached"),
            connect(&url, memory).await,
        ),
    ];
    for (n, (writer, reader)) in pairs.iter().enumerate() {
        let row = profile(writer, &format!("before{n}")).await;
        let name = async || username(reader, row.id).await;
        assert_eq!(name().await, format!("before{n}"));
        rename(writer, row.id, format!("after{n}"), "update").await;
        assert_eq!(
            name().await,
            format!("after{n}"),
            "pair {n}: the reader's cache served the row from before the write"
        );
    }
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_reported_unknown_and_still_invalidated() {
    let prefix = ident("c");
    let (db, url) = common::db_and_url().await;
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    // The writer reaches PostgreSQL through a link whose answers the test can lose;
    // its cache (Redis) is reached directly, as is the reader's.
    let writer = Db::connect_with(
        DbConfig::new(common::through(&url, proxy.port))
            .statement_timeout(Duration::from_millis(300))
            .cache(redis(&prefix)),
    )
    .await
    .expect("writer");
    let reader = connect(&url, redis(&prefix)).await;
    let row = profile(&db, "before").await;
    // The same UPDATE once before the cut, so its statement is prepared on the
    // writer's connection and the next one goes out at once.
    rename(&writer, row.id, "before", "warm-up update").await;
    assert_eq!(username(&reader, row.id).await, "before");
    proxy.cut_replies(); // the UPDATE reaches the server and commits; its answer is lost
    let result = writer
        .update::<Profile>(
            row.id,
            ProfilePatch {
                username: Some("after".into()),
                ..Default::default()
            },
        )
        .await;
    let err = result.expect_err("no answer came");
    assert!(
        matches!(err, tabula::Error::OutcomeUnknown { .. }),
        "got {err:?}"
    );
    assert!(
        !err.is_transient(),
        "an unknown outcome must not invite a blind retry"
    );
    // It did land; the cache must not keep the old row.
    assert_eq!(
        db.read_uncached::<Profile>(row.id)
            .await
            .expect("db")
            .expect("row")
            .username,
        "after"
    );
    assert_eq!(
        username(&reader, row.id).await,
        "after",
        "a write of unknown outcome skipped its invalidation"
    );
}

// ---- 11. user keys never touch Tabula's own ------------------------------------------

#[tokio::test]
async fn user_keys_of_the_cache_service_cannot_reach_tabulas_entries() {
    let prefix = ident("c");
    let cache = redis(&prefix);
    let (_, url) = common::db_and_url().await;
    let db = connect(&url, cache.clone()).await;
    let row = profile(&db, "kept").await;
    db.read::<Profile>(row.id).await.expect("warm");
    // A user wiping "everything" wipes their own keys only.
    cache.set("mine", &1, None).await.expect("set");
    cache.invalidate_pattern("*").await.expect("wipe");
    assert_eq!(cache.get::<i32>("mine").await.expect("get"), None);
    let mut raw = redis::Client::open(tabula::testkit::redis_url().expect("redis"))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let internal: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut raw)
        .await
        .expect("keys");
    assert!(
        internal.iter().any(|k| k.contains(":r:")),
        "the row entry survived the user's wipe: {internal:?}"
    );
    // And no user key names an internal one.
    for key in &internal {
        let user_key = key.strip_prefix(&format!("{prefix}:")).expect("prefixed");
        assert!(
            cache
                .get::<serde_json::Value>(user_key)
                .await
                .ok()
                .flatten()
                .is_none(),
            "user key {user_key} reads an internal entry"
        );
    }
}

#[test]
fn without_redis_url_connect_from_env_uses_no_shared_cache_unless_asked() {
    // SAFETY-free: run in a child process so the environment is this test's own.
    if std::env::var("TABULA_ENV_CHILD").is_ok() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let db = Db::connect_from_env().await.expect("connect");
            let kind = match db.config().cache.as_ref() {
                None => "none".to_owned(),
                Some(c) if c.is_redis() => "redis".to_owned(),
                Some(_) => "memory".to_owned(),
            };
            println!("CACHE={kind}");
        });
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_, url) = rt.block_on(common::db_and_url());
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("exe"));
        cmd.arg("--exact")
            .arg("without_redis_url_connect_from_env_uses_no_shared_cache_unless_asked")
            .arg("--nocapture")
            .env("TABULA_ENV_CHILD", "1")
            .env("DATABASE_URL", &url)
            .env_remove("REDIS_URL")
            .env_remove("TABULA_CACHE");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("child");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(run(&[]).contains("CACHE=none"), "{}", run(&[]));
    let memory = run(&[("TABULA_CACHE", "memory")]);
    assert!(memory.contains("CACHE=memory"), "{memory}");
}

// ---- 3–6. #[cached] -------------------------------------------------------------------

fn install_memo_cache() -> CacheService {
    static CACHE: std::sync::OnceLock<CacheService> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let cache = redis(&format!("memo{}", std::process::id()));
            cache.install_global();
            cache
        })
        .clone()
}

static TUPLE_CALLS: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 60, name = "contract_tuple_keys")]
async fn sum_of(map: HashMap<(i32, i32), i32>) -> i32 {
    TUPLE_CALLS.fetch_add(1, Ordering::SeqCst);
    map.values().sum()
}

#[tokio::test]
async fn a_memo_key_that_cannot_be_built_bypasses_the_cache_instead_of_colliding() {
    install_memo_cache();
    let ten = HashMap::from([((1, 2), 10)]);
    let ninety_nine = HashMap::from([((3, 4), 99)]);
    assert_eq!(sum_of(ten).await, 10);
    assert_eq!(
        sum_of(ninety_nine).await,
        99,
        "two arguments shared one entry"
    );
}

struct ScopedService {
    db: Db,
}

impl ScopedService {
    #[cached(ttl = 60, name = "contract_visible_profiles", tables(Profile))]
    async fn visible(&self) -> tabula::Result<usize> {
        Ok(self
            .db
            .transaction(|tx| async move { tx.query::<Profile>().all().await })
            .await?
            .len())
    }
}

#[tokio::test]
async fn a_memo_computed_under_a_user_scope_is_never_served_to_another() {
    install_memo_cache();
    let (_, url) = common::db_and_url().await;
    let db = connect(&url, install_memo_cache()).await;
    let alice = Uuid::new_v4();
    let bob = Uuid::new_v4();
    for (user, name) in [(alice, "a1"), (alice, "a2"), (bob, "b1")] {
        db.create(NewProfile {
            user_id: user,
            username: name.into(),
            avatar_url: None,
        })
        .await
        .expect("create");
    }
    let as_alice = ScopedService {
        db: db.as_user(alice),
    };
    let as_bob = ScopedService {
        db: db.as_user(bob),
    };
    assert_eq!(as_alice.visible().await.expect("alice"), 2);
    assert_eq!(
        as_bob.visible().await.expect("bob"),
        1,
        "bob was served alice's memo"
    );
}

impl ScopedService {
    #[cached(ttl = 60, name = "contract_visible_by_stream", tables(Profile))]
    async fn visible_by_stream(&self) -> tabula::Result<usize> {
        use futures_util::StreamExt;
        self.db
            .transaction(|tx| async move {
                let mut rows = tx.query::<Profile>().stream().await?;
                let mut n = 0;
                while let Some(row) = rows.next().await {
                    row?;
                    n += 1;
                }
                Ok(n)
            })
            .await
    }
}

#[tokio::test]
async fn a_memo_streaming_under_a_user_scope_is_never_served_to_another() {
    install_memo_cache();
    let (_, url) = common::db_and_url().await;
    let db = connect(&url, install_memo_cache()).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (user, name) in [(alice, "a1"), (alice, "a2"), (bob, "b1")] {
        db.create(NewProfile {
            user_id: user,
            username: name.into(),
            avatar_url: None,
        })
        .await
        .expect("create");
    }
    let a = ScopedService {
        db: db.as_user(alice),
    }
    .visible_by_stream()
    .await
    .expect("alice");
    let b = ScopedService {
        db: db.as_user(bob),
    }
    .visible_by_stream()
    .await
    .expect("bob");
    assert_eq!((a, b), (2, 1), "bob was served alice's memo");
}

#[cached(ttl = 60, name = "contract_float")]
async fn describe(x: f64) -> String {
    format!("{x}")
}

#[cached(ttl = 60, name = "contract_option_option")]
async fn describe_option(x: Option<Option<i32>>) -> String {
    format!("{x:?}")
}

#[tokio::test]
async fn memo_arguments_json_cannot_tell_apart_get_their_own_entries() {
    install_memo_cache();
    assert_eq!(describe(f64::NAN).await, "NaN");
    assert_eq!(
        describe(f64::INFINITY).await,
        "inf",
        "infinity was served NaN's memo"
    );
    assert_eq!(describe_option(None).await, "None");
    assert_eq!(
        describe_option(Some(None)).await,
        "Some(None)",
        "Some(None) was served None's memo"
    );
}

static SLOW_CALLS: AtomicU32 = AtomicU32::new(0);

struct Reader {
    db: Db,
}

impl Reader {
    #[cached(ttl = 60, name = "contract_slow_username", tables(Profile))]
    async fn username(&self, id: Uuid) -> tabula::Result<Option<String>> {
        let n = SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
        let row = self.db.read_uncached::<Profile>(id).await?;
        if n == 0 {
            // The first computation read the row, then stalls past a write.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        Ok(row.map(|p| p.username))
    }
}

#[tokio::test]
async fn single_flight_never_hands_a_pre_write_value_to_a_call_that_began_after_the_write() {
    let cache = install_memo_cache();
    let (_, url) = common::db_and_url().await;
    let db = connect(&url, cache).await;
    let row = profile(&db, "old").await;
    let reader = Arc::new(Reader { db: db.clone() });
    let first = {
        let reader = reader.clone();
        tokio::spawn(async move { reader.username(row.id).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    rename(&db, row.id, "new", "update").await;
    // Begins after the write returned: must not join the stale computation.
    let after = reader.username(row.id).await.expect("after");
    assert_eq!(
        after.as_deref(),
        Some("new"),
        "joined a computation that began before the write"
    );
    let _ = first.await;
}

struct Counter {
    db: Db,
}

impl Counter {
    #[cached(ttl = 60, name = "contract_count_other_cache", tables(Profile))]
    async fn count(&self) -> tabula::Result<i64> {
        self.db.query::<Profile>().count().await
    }
}

#[tokio::test]
async fn a_write_through_a_handle_with_another_cache_invalidates_the_memos() {
    install_memo_cache();
    let (_, url) = common::db_and_url().await;
    // This handle's cache is not the one `#[cached]` uses.
    let other = connect(&url, redis(&ident("c"))).await;
    let counter = Counter { db: other.clone() };
    assert_eq!(counter.count().await.expect("count"), 0);
    profile(&other, "new").await;
    assert_eq!(
        counter.count().await.expect("count"),
        1,
        "the memo was never invalidated"
    );
}

// ---- 7. cascades ---------------------------------------------------------------------

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "cascade_parents", cache(ttl = 300))]
struct Parent {
    #[table(primary_key)]
    id: i64,
    name: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "cascade_children", cache(ttl = 300))]
struct Child {
    #[table(primary_key)]
    id: i64,
    parent_id: Option<i64>,
    note: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "cascade_grandchildren", cache(ttl = 300))]
struct Grandchild {
    #[table(primary_key)]
    id: i64,
    child_id: i64,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "cascade_adopted", cache(ttl = 300))]
struct Adopted {
    #[table(primary_key)]
    id: i64,
    parent_id: Option<i64>,
}

#[tokio::test]
async fn a_delete_that_cascades_invalidates_the_rows_and_queries_of_dependent_tables() {
    let (_, url) = common::db_and_url().await;
    let db = connect(&url, redis(&ident("c"))).await;
    db.execute_batch(
        "CREATE TABLE cascade_parents (id bigint PRIMARY KEY, name text NOT NULL);
         CREATE TABLE cascade_children (id bigint PRIMARY KEY,
             parent_id bigint REFERENCES cascade_parents ON DELETE CASCADE, note text NOT NULL);
         CREATE TABLE cascade_grandchildren (id bigint PRIMARY KEY,
             child_id bigint NOT NULL REFERENCES cascade_children ON DELETE CASCADE);
         CREATE TABLE cascade_adopted (id bigint PRIMARY KEY,
             parent_id bigint REFERENCES cascade_parents ON DELETE SET NULL);",
    )
    .await
    .expect("schema");
    db.create(NewParent {
        id: 1,
        name: "p".into(),
    })
    .await
    .expect("parent");
    db.create(NewChild {
        id: 10,
        parent_id: Some(1),
        note: "c".into(),
    })
    .await
    .expect("child");
    db.create(NewGrandchild {
        id: 100,
        child_id: 10,
    })
    .await
    .expect("grandchild");
    db.create(NewAdopted {
        id: 7,
        parent_id: Some(1),
    })
    .await
    .expect("adopted");
    // Warm every cache: rows and queries.
    assert!(db.read::<Child>(10).await.expect("read").is_some());
    assert!(db.read::<Grandchild>(100).await.expect("read").is_some());
    assert_eq!(
        db.read::<Adopted>(7)
            .await
            .expect("read")
            .expect("row")
            .parent_id,
        Some(1)
    );
    assert_eq!(
        db.query::<Child>().cached(60).all().await.expect("q").len(),
        1
    );

    db.delete::<Parent>(1).await.expect("delete parent");

    assert_eq!(
        db.read::<Child>(10).await.expect("read"),
        None,
        "a cascaded delete is served"
    );
    assert_eq!(
        db.read::<Grandchild>(100).await.expect("read"),
        None,
        "two levels down"
    );
    assert_eq!(
        db.read::<Adopted>(7)
            .await
            .expect("read")
            .expect("row")
            .parent_id,
        None,
        "ON DELETE SET NULL is served stale"
    );
    assert!(
        db.query::<Child>()
            .cached(60)
            .all()
            .await
            .expect("q")
            .is_empty()
    );
}

#[tokio::test]
async fn a_foreign_key_added_through_with_client_is_followed() {
    let (_, url) = common::db_and_url().await;
    let db = connect(&url, redis(&ident("c"))).await;
    db.execute_batch(
        "CREATE TABLE cascade_parents (id bigint PRIMARY KEY, name text NOT NULL);
         CREATE TABLE cascade_adopted (id bigint PRIMARY KEY, parent_id bigint);",
    )
    .await
    .expect("schema");
    db.create(NewParent {
        id: 1,
        name: "p".into(),
    })
    .await
    .expect("parent");
    db.create(NewAdopted {
        id: 7,
        parent_id: Some(1),
    })
    .await
    .expect("adopted");
    // A delete reads the foreign keys (none yet).
    db.create(NewParent {
        id: 2,
        name: "q".into(),
    })
    .await
    .expect("parent");
    db.delete::<Parent>(2).await.expect("delete");
    db.with_client(async |c| {
        c.batch_execute(
            "ALTER TABLE cascade_adopted ADD FOREIGN KEY (parent_id) \
             REFERENCES cascade_parents ON DELETE SET NULL",
        )
        .await?;
        Ok(())
    })
    .await
    .expect("alter");
    assert_eq!(
        db.read::<Adopted>(7)
            .await
            .expect("read")
            .expect("row")
            .parent_id,
        Some(1)
    );
    db.delete::<Parent>(1).await.expect("delete");
    assert_eq!(
        db.read::<Adopted>(7)
            .await
            .expect("read")
            .expect("row")
            .parent_id,
        None,
        "ON DELETE SET NULL served stale"
    );
}

#[tokio::test]
async fn explicit_invalidation_covers_what_tabula_cannot_see() {
    let (db, url) = common::db_and_url().await;
    let cached = connect(&url, redis(&ident("c"))).await;
    let id = Uuid::new_v4();
    insert_profile(&db, id, "before").await;
    cached.read::<Profile>(id).await.expect("warm");
    db.execute_batch(&format!(
        "UPDATE profiles SET username = 'after' WHERE id = '{id}'"
    ))
    .await
    .expect("behind the cache's back");
    cached.invalidate::<Profile>(&[id]).await;
    assert_eq!(username(&cached, id).await, "after");
    db.execute_batch(&format!(
        "UPDATE profiles SET username = 'again' WHERE id = '{id}'"
    ))
    .await
    .expect("again");
    cached.invalidate_table::<Profile>().await;
    assert_eq!(username(&cached, id).await, "again");
}

// ---- 8. a large value is a skipped fill, never a flush --------------------------------

#[tokio::test]
async fn a_value_too_large_to_fill_in_time_never_flushes_other_entries() {
    let prefix = ident("c");
    let (_, url) = common::db_and_url().await;
    let cache = CacheService::redis(
        &tabula::testkit::redis_url().expect("redis"),
        CacheConfig::default()
            .prefix(&prefix)
            .deadline(Duration::from_millis(50)),
    )
    .expect("cache");
    let db = connect(&url, cache).await;
    let small = profile(&db, "small").await;
    db.read::<Profile>(small.id).await.expect("warm small");
    // Behind the cache's back, so a flush of the cache would show.
    db.execute_batch(&format!(
        "UPDATE profiles SET username = 'changed' WHERE id = '{}'",
        small.id
    ))
    .await
    .expect("raw update");
    let big = db
        .create(NewProfile {
            user_id: Uuid::new_v4(),
            username: "big".into(),
            avatar_url: Some("x".repeat(24 * 1024 * 1024)),
        })
        .await
        .expect("big");
    for _ in 0..3 {
        let _ = db.read::<Profile>(big.id).await.expect("read big");
    }
    let _ = db.read::<Profile>(small.id).await.expect("after big");
    assert_eq!(
        username(&db, small.id).await,
        "small",
        "a slow fill flushed the whole cache (the small entry was orphaned)"
    );
}

// ---- 9. outages: the undelivered invalidation is delivered by a background probe ------

#[tokio::test]
async fn an_idle_writer_delivers_its_lost_invalidation_as_soon_as_redis_answers() {
    let redis_url = tabula::testkit::redis_url().expect("redis");
    let redis_port = redis_url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("port");
    let proxy =
        common::Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], redis_port))).await;
    let prefix = ident("c");
    let config = || {
        CacheConfig::default()
            .prefix(&prefix)
            .namespace("shared")
            .probe_interval(Duration::from_millis(100))
    };
    let (_, url) = common::db_and_url().await;
    // The writer reaches Redis through a link the test can cut; the reader directly.
    let writer = connect(
        &url,
        CacheService::redis(&format!("redis://127.0.0.1:{}/", proxy.port), config()).expect("c"),
    )
    .await;
    let reader = connect(&url, CacheService::redis(&redis_url, config()).expect("c")).await;
    let row = profile(&writer, "old").await;
    reader.read::<Profile>(row.id).await.expect("warm");
    proxy.cut_all(); // the writer's invalidation will be lost, not delayed
    rename(&writer, row.id, "new", "update succeeds without redis").await;
    // Positive control: the invalidation was lost, the reader's entry is stale now.
    assert_eq!(
        username(&reader, row.id).await,
        "old",
        "the invalidation was not lost: this test proves nothing"
    );
    // The writer goes idle; its new connections pass. Within a few probe intervals
    // its background probe delivers the lost invalidation.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        username(&reader, row.id).await,
        "new",
        "the reader is served the value from before the write after redis is back"
    );
}

#[tokio::test]
async fn epochs_never_repeat_after_redis_loses_its_data() {
    let redis = PrivateRedis::start().expect("redis");
    let prefix = ident("c");
    let config = CacheConfig::default()
        .prefix(&prefix)
        .namespace("e")
        .probe_interval(Duration::from_millis(50));
    let cache = CacheService::redis(&redis.url(), config).expect("cache");
    let (_, url) = common::db_and_url().await;
    let db = connect(&url, cache).await;
    let row = profile(&db, "x").await;
    db.read::<Profile>(row.id).await.expect("warm");
    let mut raw = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let epochs = |keys: Vec<String>| {
        keys.into_iter()
            .filter(|k| k.ends_with("epoch"))
            .collect::<Vec<_>>()
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .expect("keys");
    let epoch_key = epochs(keys)
        .pop()
        .expect("an epoch key exists once the cache is used");
    let before: String = redis::cmd("GET")
        .arg(&epoch_key)
        .query_async(&mut raw)
        .await
        .expect("get");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw)
        .await
        .expect("flush");
    db.read::<Profile>(row.id).await.expect("read after flush");
    let after: String = redis::cmd("GET")
        .arg(&epoch_key)
        .query_async(&mut raw)
        .await
        .expect("get");
    assert_ne!(
        before, after,
        "the epoch repeated after redis lost its data"
    );
}

// ---- 10. an unavailable cache costs no extra query ------------------------------------

/// The seed's profiles through a view that counts every row PostgreSQL reads for it
/// (a sequence is not transactional: every evaluation counts, at once).
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "counted_profiles", cache(ttl = 300))]
struct CountedProfile {
    #[table(primary_key)]
    id: Uuid,
    #[table(unique)]
    username: String,
}

async fn reads_so_far(db: &Db) -> i64 {
    db.with_client(async |c| {
        Ok(c.query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM profile_reads",
            &[],
        )
        .await?
        .get(0))
    })
    .await
    .expect("counter")
}

#[tokio::test]
async fn a_read_while_redis_is_paused_costs_exactly_one_query() {
    let redis = PrivateRedis::start().expect("redis");
    let (plain, url) = common::db_and_url().await;
    plain
        .execute_batch(
            "CREATE SEQUENCE profile_reads;
             CREATE VIEW counted_profiles AS
                 SELECT id, username FROM profiles WHERE nextval('profile_reads') > 0;",
        )
        .await
        .expect("view");
    let cache = CacheService::redis(
        &redis.url(),
        CacheConfig::default()
            .prefix(ident("c"))
            .deadline(Duration::from_millis(30)),
    )
    .expect("cache");
    let db = connect(&url, cache).await;
    let id = Uuid::new_v4();
    insert_profile(&plain, id, "one").await;
    // Positive control: with Redis up, the first read queries and the next are hits.
    let start = reads_so_far(&plain).await;
    db.read::<CountedProfile>(id)
        .await
        .expect("read")
        .expect("row");
    db.read::<CountedProfile>(id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        reads_so_far(&plain).await - start,
        1,
        "the second read was a hit"
    );
    redis.pause();
    let reads = 20;
    let before = reads_so_far(&plain).await;
    for _ in 0..reads {
        db.read::<CountedProfile>(id)
            .await
            .expect("read")
            .expect("row");
    }
    let after = reads_so_far(&plain).await;
    for _ in 0..reads {
        CountedProfile::by_username(&db, "one".to_owned())
            .await
            .expect("find")
            .expect("row");
    }
    let found = reads_so_far(&plain).await;
    redis.resume();
    assert_eq!(
        after - before,
        reads,
        "each read should cost exactly one query"
    );
    assert_eq!(
        found - after,
        reads,
        "each unique-finder read should cost exactly one query"
    );
}

// ---- keys with more than one spelling --------------------------------------------------

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "padded", cache(ttl = 300))]
struct Padded {
    #[table(primary_key)]
    code: String,
    version: i64,
}

/// A `char(4)` key matches `ab` and `ab  ` alike: a write through one spelling must
/// leave no entry under the other (the row's own) stale, and a read through another
/// spelling must not leave an entry no write would name.
#[tokio::test]
async fn a_key_written_in_one_spelling_is_not_read_stale_in_another() {
    let (db, url) = common::db_and_url().await;
    db.execute_batch("CREATE TABLE padded (code char(4) PRIMARY KEY, version bigint NOT NULL)")
        .await
        .expect("table");
    let db = connect(&url, redis(&ident("c"))).await;
    db.create(NewPadded {
        code: "ab".into(),
        version: 1,
    })
    .await
    .expect("create");
    let version = async |key: &str| {
        db.read::<Padded>(key.to_owned())
            .await
            .expect("read")
            .expect("row")
            .version
    };
    for spelling in ["ab  ", "ab", "ab "] {
        assert_eq!(version(spelling).await, 1);
        assert_eq!(version(spelling).await, 1);
    }
    let patch = |v: i64| PaddedPatch { version: Some(v) };
    db.update::<Padded>("ab".to_owned(), patch(2))
        .await
        .expect("update");
    for spelling in ["ab  ", "ab", "ab "] {
        assert_eq!(
            version(spelling).await,
            2,
            "read as {spelling:?} after update"
        );
    }
    db.delete::<Padded>("ab ".to_owned()).await.expect("delete");
    for spelling in ["ab  ", "ab", "ab "] {
        assert_eq!(
            db.read::<Padded>(spelling.to_owned()).await.expect("read"),
            None,
            "read as {spelling:?} after delete"
        );
    }
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "threads", cache(ttl = 300))]
struct Thread {
    #[table(primary_key)]
    id: i64,
    parent_id: Option<i64>,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "threads", schema = "public", cache(ttl = 300))]
struct PublicThread {
    #[table(primary_key)]
    id: i64,
    parent_id: Option<i64>,
}

/// A foreign key from a table to itself: deleting a row deletes its replies in the
/// same table, rows the write cannot name — the table's other rows are dropped too. And
/// a model that spells the table's schema out (`schema = "public"`) is the same table
/// to the cascades.
#[tokio::test]
async fn a_cascade_within_one_table_and_under_another_spelling_of_its_name_is_invalidated() {
    let (_, url) = common::db_and_url().await;
    let db = connect(&url, redis(&ident("c"))).await;
    db.execute_batch(
        "CREATE TABLE threads (id bigint PRIMARY KEY,
             parent_id bigint REFERENCES threads ON DELETE CASCADE);
         INSERT INTO threads VALUES (1, NULL), (2, 1), (3, 2), (4, NULL), (5, 4);",
    )
    .await
    .expect("schema");
    for id in 1..=5 {
        assert!(db.read::<Thread>(id).await.expect("read").is_some());
        assert!(db.read::<PublicThread>(id).await.expect("read").is_some());
    }
    db.delete::<Thread>(1).await.expect("delete the thread");
    for id in [2, 3] {
        assert_eq!(
            db.read::<Thread>(id).await.expect("read"),
            None,
            "reply {id}"
        );
        assert_eq!(db.read::<PublicThread>(id).await.expect("read"), None);
    }
    db.delete::<PublicThread>(4)
        .await
        .expect("delete through the other spelling");
    assert_eq!(db.read::<Thread>(5).await.expect("read"), None, "reply 5");
    assert_eq!(db.read::<PublicThread>(5).await.expect("read"), None);
}

/// Rule 8 on one Redis across an epoch replaced after a lost invalidation: a writer W
/// with a registry window holds a snapshot without the table; a reader R without one
/// has registered it (so takes no lease for one and a half windows). R loses an
/// invalidation, and its probe gives the namespace a new epoch — which must carry the
/// registry's mark, or R would take a lease at once and fill, and W's write (skipping
/// Redis on its snapshot) would leave R reading the old row.
#[tokio::test]
async fn a_new_epoch_after_a_lost_invalidation_keeps_the_registry_wait() {
    let redis_url = tabula::testkit::redis_url().expect("redis");
    let redis_port = redis_url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("port");
    let proxy =
        common::Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], redis_port))).await;
    let prefix = ident("c");
    let config = || {
        CacheConfig::default()
            .prefix(&prefix)
            .namespace("marked")
            .deadline(Duration::from_millis(300))
            .probe_interval(Duration::from_millis(100))
    };
    let (_, url) = common::db_and_url().await;
    let w = connect(
        &url,
        CacheService::redis(
            &redis_url,
            config().registry_window(Duration::from_secs(20)),
        )
        .expect("c"),
    )
    .await;
    let r = connect(
        &url,
        CacheService::redis(&format!("redis://127.0.0.1:{}/", proxy.port), config()).expect("c"),
    )
    .await;
    let other = profile(&w, "other").await;
    let row = profile(&w, "old").await;
    // W's invalidation starts the epoch with its mark; its snapshot: nothing cached.
    rename(&w, other.id, "other2", "w's first write").await;
    // R reads: registers the table, takes no lease.
    assert_eq!(username(&r, row.id).await, "old");
    let epoch_key = format!("{prefix}:t:marked:epoch");
    let mut raw = redis::Client::open(redis_url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let epoch: String = redis::cmd("GET")
        .arg(&epoch_key)
        .query_async(&mut raw)
        .await
        .expect("epoch");
    // R loses an invalidation (its write's), then its probe renews the epoch.
    proxy.cut_all();
    rename(&r, other.id, "other3", "r's write succeeds without redis").await;
    let mut renewed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now: String = redis::cmd("GET")
            .arg(&epoch_key)
            .query_async(&mut raw)
            .await
            .expect("epoch");
        if now != epoch {
            renewed = true;
            break;
        }
    }
    assert!(
        renewed,
        "the lost invalidation was not delivered: this proves nothing"
    );
    let _ = username(&r, row.id).await;
    let _ = username(&r, row.id).await;
    rename(&w, row.id, "new", "w's write").await;
    assert_eq!(username(&r, row.id).await, "new");
}

/// Rule 8 when the registry itself is lost (evicted, flushed by hand) while its epoch
/// survives: a reader without a window finds no mark and fills at once, and a writer
/// with one skips Redis on its snapshot. The writer's backend asks its namespaces for
/// their epoch once per probe interval, as every script does: the markless epoch is
/// replaced (what the reader filled is orphaned) and its snapshot voided, so the
/// reader reads the write within about one probe interval.
#[tokio::test]
async fn a_lost_registry_is_restored_by_the_writer_with_a_window() {
    let redis_url = tabula::testkit::redis_url().expect("redis");
    let prefix = ident("c");
    let config = || {
        CacheConfig::default()
            .prefix(&prefix)
            .namespace("kept")
            .deadline(Duration::from_secs(1))
            .probe_interval(Duration::from_millis(100))
    };
    let (_, url) = common::db_and_url().await;
    let w = connect(
        &url,
        CacheService::redis(
            &redis_url,
            config().registry_window(Duration::from_secs(20)),
        )
        .expect("c"),
    )
    .await;
    let r = connect(&url, CacheService::redis(&redis_url, config()).expect("c")).await;
    let other = profile(&w, "other").await;
    let row = profile(&w, "old").await;
    rename(&w, other.id, "other2", "w's first write").await;
    assert_eq!(username(&r, row.id).await, "old");
    let mut raw = redis::Client::open(redis_url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let epoch: String = redis::cmd("GET")
        .arg(format!("{prefix}:t:kept:epoch"))
        .query_async(&mut raw)
        .await
        .expect("epoch");
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:t:kept:{epoch}:reg"))
        .query_async(&mut raw)
        .await
        .expect("del");
    // R, finding no mark, fills at once; W's write skips Redis on its snapshot.
    let _ = username(&r, row.id).await;
    let _ = username(&r, row.id).await;
    rename(&w, row.id, "new", "w's write").await;
    let mut seen = username(&r, row.id).await;
    for _ in 0..20 {
        if seen == "new" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = username(&r, row.id).await;
    }
    assert_eq!(seen, "new", "still the old row a second after the write");
}
