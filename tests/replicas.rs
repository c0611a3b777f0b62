//! Read replicas on a real streaming standby (`testkit::ReplicaSet`: a primary and a
//! hot standby made by `pg_basebackup`): reads go to the standby, a handle reads its
//! own writes (and those of a token it was given) even while the standby's replay is
//! paused, the cache is never filled from the lagging standby, and a standby that is
//! down leaves reads to the primary.

mod common;

use std::time::{Duration, Instant};

use tabula::migrate::{Migration, Migrator};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

use common::replicas::{Resume, TURN, set};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "notes")]
pub struct Note {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "cached_notes", cache(ttl = 300))]
pub struct CachedNote {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

async fn database() -> String {
    let migrator = Migrator::new(vec![Migration::new(
        1,
        "notes",
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL); \
         CREATE TABLE cached_notes (id bigint PRIMARY KEY, body text NOT NULL);",
    )])
    .expect("migrator");
    let set = tokio::task::spawn_blocking(set).await.expect("set");
    set.database(&migrator).await.expect("database")
}

/// A handle on the primary with the standby as its replica (and `cache`).
async fn handle(name: &str, cache: Option<CacheService>) -> Db {
    let set = set();
    let mut config = DbConfig::new(set.primary_url(name))
        .replica(set.replica_url(name))
        .pool_size(2);
    if let Some(cache) = cache {
        config = config.cache(cache);
    }
    Db::connect_with(config).await.expect("connect")
}

async fn body(db: &Db, id: i64) -> Option<String> {
    db.read::<Note>(id).await.expect("read").map(|n| n.body)
}

#[tokio::test]
async fn reads_go_to_the_replica_and_a_writer_reads_its_own_writes() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let set = set();
    // Two processes, as far as consistency goes: each handle knows its own writes.
    let (reader, writer) = (handle(&name, None).await, handle(&name, None).await);
    writer
        .create(NewNote {
            id: 1,
            body: "v1".into(),
        })
        .await
        .expect("create");
    set.caught_up().await.expect("caught up");
    set.pause_replay().await.expect("pause");
    let _resume = Resume;

    writer
        .update::<Note>(
            1,
            NotePatch {
                body: Some("v2".into()),
            },
        )
        .await
        .expect("update");
    // The writer reads its write: the standby is behind it, so the primary answers.
    assert_eq!(body(&writer, 1).await.as_deref(), Some("v2"));
    let first = writer
        .query::<Note>()
        .filter(Note::ID.eq(1))
        .first()
        .await
        .expect("query")
        .map(|n| n.body);
    assert_eq!(first.as_deref(), Some("v2"));
    // The other handle reads the standby, which has not replayed the update: the
    // proof that its reads go there.
    assert_eq!(body(&reader, 1).await.as_deref(), Some("v1"));
    let count = reader
        .query::<Note>()
        .filter(Note::BODY.eq("v2"))
        .count()
        .await
        .expect("count");
    assert_eq!(count, 0, "the standby's answer");
    // Given the writer's token (a cookie), it reads the write.
    let token: tabula::db::ConsistencyToken = writer
        .consistency_token()
        .to_string()
        .parse()
        .expect("token");
    assert!(token > tabula::db::ConsistencyToken::NONE);
    assert_eq!(
        body(&reader.at_least(token), 1).await.as_deref(),
        Some("v2")
    );
    // Raw SQL and transactions count as writes too.
    writer
        .execute_batch("UPDATE notes SET body = 'v3' WHERE id = 1")
        .await
        .expect("raw update");
    assert_eq!(body(&writer, 1).await.as_deref(), Some("v3"));
    writer
        .transaction(|tx| async move {
            tx.update::<Note>(
                1,
                NotePatch {
                    body: Some("v4".into()),
                },
            )
            .await?;
            Ok(())
        })
        .await
        .expect("transaction");
    assert_eq!(body(&writer, 1).await.as_deref(), Some("v4"));
    assert_eq!(
        body(&reader, 1).await.as_deref(),
        Some("v1"),
        "still paused"
    );

    set.resume_replay().await.expect("resume");
    set.caught_up().await.expect("caught up");
    assert_eq!(body(&reader, 1).await.as_deref(), Some("v4"));
}

#[tokio::test]
async fn the_cache_is_never_filled_from_a_lagging_replica() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let set = set();
    let redis = tabula::testkit::redis_url().expect("redis");
    let prefix = format!("replicas{}", std::process::id());
    let cache =
        || CacheService::redis(&redis, CacheConfig::default().prefix(&prefix)).expect("cache");
    // Three processes on one cache: a writer, a reader with the replica, and one
    // without any replica that trusts what the cache holds.
    let writer = handle(&name, Some(cache())).await;
    let reader = handle(&name, Some(cache())).await;
    let plain = Db::connect_with(
        DbConfig::new(set.primary_url(&name))
            .cache(cache())
            .pool_size(2),
    )
    .await
    .expect("plain");
    writer
        .create(NewCachedNote {
            id: 1,
            body: "v1".into(),
        })
        .await
        .expect("create");
    set.caught_up().await.expect("caught up");
    set.pause_replay().await.expect("pause");
    let _resume = Resume;

    let read = async |db: &Db| {
        db.read::<CachedNote>(1)
            .await
            .expect("read")
            .map(|n| n.body)
    };
    assert_eq!(read(&reader).await.as_deref(), Some("v1"));
    writer
        .update::<CachedNote>(
            1,
            CachedNotePatch {
                body: Some("v2".into()),
            },
        )
        .await
        .expect("update");
    // The update dropped the entry; the reader's miss fills it again — from the
    // primary, never from the standby that still has v1.
    assert_eq!(read(&reader).await.as_deref(), Some("v2"));
    assert_eq!(read(&plain).await.as_deref(), Some("v2"));
    let listed = reader
        .query::<CachedNote>()
        .cached(60)
        .all()
        .await
        .expect("cached query");
    assert_eq!(listed[0].body, "v2");
    let found = reader
        .find_unique::<CachedNote, _>(CachedNote::BODY, "v2".to_owned())
        .await
        .expect("unique");
    assert!(found.is_some(), "the finder's fill read the primary");
    // An uncached read of the same rows through the reader still goes to the standby.
    let uncached = reader
        .query::<CachedNote>()
        .filter(CachedNote::ID.eq(1))
        .first()
        .await
        .expect("query")
        .map(|n| n.body);
    assert_eq!(uncached.as_deref(), Some("v1"), "the standby's answer");
}

#[tokio::test]
async fn a_replica_that_cannot_be_reached_leaves_reads_to_the_primary() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let set = set();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let db = Db::connect_with(
        DbConfig::new(set.primary_url(&name))
            .replica(format!("postgres://postgres@127.0.0.1:{nobody}/{name}"))
            .pool_size(2),
    )
    .await
    .expect("connect: a replica is not asked at connect");
    db.create(NewNote {
        id: 7,
        body: "here".into(),
    })
    .await
    .expect("create");
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(body(&db, 7).await.as_deref(), Some("here"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the unreachable replica is skipped, not waited for on every read: {:?}",
        started.elapsed()
    );
}

/// An application role, not a superuser, on a server where `pg_control_system()` is
/// not granted to it: the replica's identity check (which reads the system
/// identifier only where the role may) still connects, and its reads use the standby.
#[tokio::test]
async fn an_unprivileged_role_reads_the_replica() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let set = set();
    let admin = Db::connect_with(DbConfig::new(set.primary_url(&name)).pool_size(1))
        .await
        .expect("admin");
    admin
        .execute_batch(
            "DO $$ BEGIN CREATE ROLE app_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC;
             GRANT SELECT, INSERT, UPDATE ON notes TO app_reader;
             INSERT INTO notes VALUES (1, 'v1');",
        )
        .await
        .expect("role");
    set.caught_up().await.expect("caught up");
    let as_role = |url: String| url.replacen("postgres://postgres@", "postgres://app_reader@", 1);
    let db = Db::connect_with(
        DbConfig::new(as_role(set.primary_url(&name)))
            .replica(as_role(set.replica_url(&name)))
            .pool_size(2),
    )
    .await
    .expect("an unprivileged role connects with a replica");
    set.pause_replay().await.expect("pause");
    let _resume = Resume;
    admin
        .execute_batch("UPDATE notes SET body = 'v2' WHERE id = 1")
        .await
        .expect("update elsewhere");
    assert_eq!(
        body(&db, 1).await.as_deref(),
        Some("v1"),
        "the standby answered: the replica was accepted"
    );
    admin
        .execute_batch("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
        .await
        .expect("restore");
}
