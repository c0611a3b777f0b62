//! Round 33: a user-scoped handle's one-shot transaction (a scoped `with_client` body)
//! and what else the handle does inside it: invalidations by hand, cached reads,
//! streams, raw SQL, storage-free paths.
//!
//! Each `defect_*` test failed on the code it attacked, 3 of 3 runs, and passes since
//! its fix; the others held when written.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Error, Table};
use uuid::Uuid;

fn uniq(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "r33{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r33_plain", cache(ttl = 300))]
struct Plain {
    #[table(primary_key)]
    id: i64,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "r33_notes", cache(ttl = 300))]
struct Note {
    #[table(primary_key)]
    id: i64,
    owner: Uuid,
    body: String,
}

const SCHEMA: &str = "
    CREATE TABLE r33_plain (id int8 PRIMARY KEY, body text NOT NULL);
    CREATE TABLE r33_notes (id int8 PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
    GRANT SELECT, INSERT, UPDATE, DELETE ON r33_plain, r33_notes TO authenticated, anon;
    ALTER TABLE r33_notes ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON r33_notes USING (owner = auth.uid());
";

struct Env {
    /// With a Redis cache.
    db: Db,
    /// Without a cache: the oracle.
    plain: Db,
}

async fn env() -> Env {
    let (_, url) = common::db_and_url().await;
    let plain = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(3)
            .statement_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("plain");
    plain.execute_batch(SCHEMA).await.expect("schema");
    let cache = CacheService::redis(
        &tabula::testkit::redis_url().expect("redis"),
        CacheConfig::default().prefix(uniq("c")),
    )
    .expect("cache");
    let db = Db::connect_with(
        DbConfig::new(url)
            .cache(cache)
            .pool_size(4)
            .statement_timeout(Duration::from_secs(5))
            .checkout_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("cached db");
    Env { db, plain }
}

async fn plain_body(db: &Db, id: i64) -> String {
    db.with_client(async |c| {
        Ok(
            c.query_one("SELECT body FROM r33_plain WHERE id = $1", &[&id])
                .await?
                .get(0),
        )
    })
    .await
    .expect("oracle")
}

// ---- 1. an invalidation by hand inside a scoped call's `with_client` body -------------

/// `Db::invalidate` (runtime/src/db/write.rs): "Inside a transaction it waits for
/// COMMIT, as the transaction's own writes do." and `invalidate_now_or_at_commit`: "inside
/// a transaction after COMMIT, as the transaction's own writes; otherwise now".
///
/// A scoped handle's `with_client` body runs in the call's one-shot transaction
/// (db/conn.rs `in_scope`). The body updates a row with its raw client and asks the
/// scoped handle to invalidate it: the invalidation is applied at once (only `self.tx`
/// is looked at, not the task-local scoped transaction), before the body's COMMIT. A
/// reader between the two reads the old committed row and fills the cache with it;
/// after COMMIT the cache serves the old row for its whole TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_invalidate_in_a_scoped_raw_body_is_applied_before_its_commit() {
    let e = env().await;
    e.plain
        .execute_batch("INSERT INTO r33_plain VALUES (1, 'old')")
        .await
        .expect("attack setup");
    // Cached.
    assert_eq!(
        e.db.read::<Plain>(1i64)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .body,
        "old"
    );

    let scoped = e.db.as_user(Uuid::new_v4());
    let (s2, reader) = (scoped.clone(), e.db.clone());
    let seen = tokio::time::timeout(
        Duration::from_secs(30),
        scoped.with_client(async move |c| {
            c.execute("UPDATE r33_plain SET body = 'new' WHERE id = 1", &[])
                .await?;
            s2.invalidate::<Plain>(&[1]).await;
            // Another request reads the row meanwhile (the update is not committed).
            let seen = tokio::spawn(async move { reader.read::<Plain>(1i64).await })
                .await
                .expect("join")?;
            Ok(seen.map(|p| p.body))
        }),
    )
    .await
    .expect("ends")
    .expect("body");
    assert_eq!(
        seen.as_deref(),
        Some("old"),
        "the concurrent reader saw the committed row"
    );
    assert_eq!(plain_body(&e.plain, 1).await, "new", "the body committed");
    let after =
        e.db.read::<Plain>(1i64)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .body;
    assert_eq!(
        after, "new",
        "the cache serves the row as it was before the scoped call's COMMIT: the invalidation \
         asked for inside its with_client body was applied before COMMIT"
    );
}

/// The same with `invalidate_table` (a bulk change made by the body's raw SQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_invalidate_table_in_a_scoped_raw_body_is_applied_before_its_commit() {
    let e = env().await;
    e.plain
        .execute_batch("INSERT INTO r33_plain VALUES (1, 'old')")
        .await
        .expect("attack setup");
    assert_eq!(
        e.db.read::<Plain>(1i64)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .body,
        "old"
    );
    let scoped = e.db.as_user(Uuid::new_v4());
    let (s2, reader) = (scoped.clone(), e.db.clone());
    tokio::time::timeout(
        Duration::from_secs(30),
        scoped.with_client(async move |c| {
            c.execute("UPDATE r33_plain SET body = 'new'", &[]).await?;
            s2.invalidate_table::<Plain>().await;
            tokio::spawn(async move { reader.read::<Plain>(1i64).await })
                .await
                .expect("join")?;
            Ok(())
        }),
    )
    .await
    .expect("ends")
    .expect("body");
    assert_eq!(plain_body(&e.plain, 1).await, "new");
    let after =
        e.db.read::<Plain>(1i64)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .body;
    assert_eq!(after, "new", "stale after the scoped call's COMMIT");
}

/// Control: the same inside `db.transaction` holds (the invalidation waits for COMMIT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_in_a_transactions_raw_body_waits_for_commit() {
    let e = env().await;
    e.plain
        .execute_batch("INSERT INTO r33_plain VALUES (1, 'old')")
        .await
        .expect("attack setup");
    assert_eq!(
        e.db.read::<Plain>(1i64)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .body,
        "old"
    );
    let reader = e.db.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        e.db.transaction(move |tx| {
            let reader = reader.clone();
            async move {
                let t2 = tx.clone();
                tx.with_client(async move |c| {
                    c.execute("UPDATE r33_plain SET body = 'new' WHERE id = 1", &[])
                        .await?;
                    Ok(())
                })
                .await?;
                t2.invalidate::<Plain>(&[1]).await;
                tokio::spawn(async move { reader.read::<Plain>(1i64).await })
                    .await
                    .expect("join")?;
                Ok(())
            }
        }),
    )
    .await
    .expect("ends")
    .expect("tx");
    assert_eq!(
        e.db.read::<Plain>(1i64)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .body,
        "new"
    );
}

// ---- 2. a scoped cached read inside the scoped call's own `with_client` body ----------

/// `Db::row_cache` (runtime/src/db/cached.rs): reads go through the cache when "the
/// handle is not in a transaction (a transaction must see its own writes)"; and
/// `Db::with_client` (db/conn.rs): "Inside the body, a statement through the same
/// transaction or scoped handle is [`Error::Misuse`]".
///
/// Inside a scoped handle's own `with_client` body (its one-shot transaction), the body
/// updates the user's note with its raw client, then reads it through the scoped
/// handle: the scope's cached copy answers — the row as it was before the body's own
/// write — with `Ok`, where an uncached handle gets `Misuse`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_scoped_read_inside_its_own_raw_body_misses_the_bodys_write() {
    let e = env().await;
    let u = Uuid::new_v4();
    e.plain
        .execute_batch(&format!("INSERT INTO r33_notes VALUES (7, '{u}', 'old')"))
        .await
        .expect("attack setup");
    let scoped = e.db.as_user(u);
    // The scope's copy is cached (read twice: the second is a hit).
    for _ in 0..2 {
        assert_eq!(
            scoped
                .read::<Note>(7i64)
                .await
                .expect("attack setup")
                .expect("attack setup")
                .body,
            "old"
        );
    }
    let s2 = scoped.clone();
    let inner = tokio::time::timeout(
        Duration::from_secs(30),
        scoped.with_client(async move |c| {
            let n = c
                .execute("UPDATE r33_notes SET body = 'mine' WHERE id = 7", &[])
                .await?;
            assert_eq!(n, 1, "the policy lets the owner update");
            Ok(s2.read::<Note>(7i64).await.map(|n| n.map(|n| n.body)))
        }),
    )
    .await
    .expect("ends")
    .expect("body");
    // Without a cache the same read is Misuse (the control below).
    assert!(
        matches!(&inner, Err(Error::Misuse(_)))
            || inner.as_ref().ok() == Some(&Some("mine".into())),
        "a read through the scoped handle inside its own with_client body, after the body \
         updated the row in that transaction, answered {inner:?}: the cached copy from before \
         the body's own write"
    );
}

/// Control: the same without a cache is Misuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_uncached_read_inside_its_own_raw_body_is_misuse() {
    let e = env().await;
    let u = Uuid::new_v4();
    e.plain
        .execute_batch(&format!("INSERT INTO r33_notes VALUES (7, '{u}', 'old')"))
        .await
        .expect("attack setup");
    let scoped = e.plain.as_user(u);
    let s2 = scoped.clone();
    let inner = scoped
        .with_client(async move |_c| Ok(s2.read::<Note>(7i64).await.map(|n| n.map(|n| n.body))))
        .await
        .expect("body");
    assert!(matches!(&inner, Err(Error::Misuse(_))), "{inner:?}");
}

// ---- 3. other calls of the scoped handle inside its own body: refused, nothing kept ---

/// Streams, raw SQL, insert_many (the COPY path is INSERT for a scope), create_many
/// (several statements: a transaction of its own), execute_batch: each is Misuse and
/// nothing is kept when the body fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_calls_inside_their_own_raw_body_are_refused() {
    let e = env().await;
    let u = Uuid::new_v4();
    let scoped = e.db.as_user(u);
    let s2 = scoped.clone();
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        scoped.with_client(async move |_c| {
            let mut out = Vec::new();
            let stream = s2.query::<Note>().stream().await;
            out.push(match stream {
                Ok(mut s) => format!("stream: {:?}", s.next().await.map(|r| r.is_ok())),
                Err(e) => format!("stream: {e:?}"),
            });
            let n = |i: i64| NewNote {
                id: i,
                owner: u,
                body: "x".into(),
            };
            out.push(format!(
                "insert_many: {:?}",
                s2.insert_many(vec![n(1), n(2)]).await
            ));
            out.push(format!(
                "create_many: {:?}",
                s2.create_many(vec![n(3), n(4)]).await.map(|v| v.len())
            ));
            out.push(format!(
                "execute_batch: {:?}",
                s2.execute_batch("INSERT INTO r33_notes VALUES (5, auth.uid(), 'x')")
                    .await
            ));
            out.push(format!(
                "sql_rows: {:?}",
                s2.sql_rows(
                    "INSERT INTO r33_notes VALUES (6, auth.uid(), 'x') RETURNING id",
                    &[]
                )
                .await
                .map(|r| r.len())
            ));
            out.push(format!(
                "upsert: {:?}",
                s2.upsert(n(8), Note::ID).await.map(|r| r.id)
            ));
            out.push(format!(
                "update_where: {:?}",
                s2.update_where::<Note>(Note::ID.ge(0), NotePatch::default().body("y"))
                    .await
            ));
            Err::<Vec<String>, _>(Error::Misuse(out.join("\n")))
        }),
    )
    .await
    .expect("ends");
    let kept: i64 = e
        .plain
        .with_client(async |c| {
            Ok(c.query_one("SELECT count(*) FROM r33_notes", &[])
                .await?
                .get(0))
        })
        .await
        .expect("attack setup");
    let report = format!("{outcomes:?}");
    assert_eq!(kept, 0, "kept rows though the body failed: {report}");
    for line in report.split("\\n") {
        assert!(line.contains("Misuse"), "not refused: {line}");
    }
}
