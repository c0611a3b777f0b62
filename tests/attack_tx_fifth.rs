//! Round 31: an outside attack on the fixes of round 30 (`SharedPlace` and the
//! stopper, `Progress`, the refused scoped write's ROLLBACK in a task of its own, the
//! task-local scoped transaction keyed by database and scope). Each `defect_*` test
//! failed on the code it attacked, 3 of 3 runs; the others held when written.

mod common;

use common::fixtures::{raw, uniq};
use common::tx::{cache_for_test, count_named};

use std::sync::Arc;
use std::time::Duration;

use common::db_and_url;
use tabula::{Db, DbConfig, Error};

// ---- 1. a scoped write inside the same scoped handle's `with_client` body ---------------

/// `Db::with_client` (db/conn.rs): "Inside the body, a statement through the same
/// transaction or scoped handle is [`Error::Misuse`] (the body holds its connection) —
/// use the raw client there." With a cache configured, a write runs in a task of its
/// own (`write_boxed`'s `tokio::spawn`), which does not see the task-local scoped
/// transaction: the scoped `create` opens a one-shot transaction of its own on another
/// connection and commits, though the body (and its transaction) then fails and rolls
/// back.
async fn scoped_create_inside_scoped_raw_body(cached: bool) -> (tabula::Result<()>, i64) {
    let (_d, url) = db_and_url().await;
    let mut config = DbConfig::new(&url)
        .pool_size(4)
        .statement_timeout(Duration::from_secs(5))
        .checkout_timeout(Duration::from_secs(5));
    if cached {
        config = config.cache(cache_for_test());
    }
    let db = Db::connect_with(config).await.expect("attack setup");
    let u = uuid::Uuid::new_v4();
    let scoped = db.as_user(u);
    let name = uniq("inner");
    let (s2, n2) = (scoped.clone(), name.clone());
    let outer: tabula::Result<()> = tokio::time::timeout(
        Duration::from_secs(30),
        scoped.with_client(async move |_c| {
            let inner = s2
                .create(common::NewProfile {
                    user_id: u,
                    username: n2,
                    avatar_url: None,
                })
                .await;
            match inner {
                Ok(_) => Err(Error::Misuse("inner create returned Ok".into())),
                Err(e) => Err(e),
            }
        }),
    )
    .await
    .expect("ends");
    let kept = count_named(&url, &name).await;
    (outer, kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_create_inside_its_own_raw_body_is_misuse_without_a_cache() {
    let (outer, kept) = scoped_create_inside_scoped_raw_body(false).await;
    assert_eq!(kept, 0, "{outer:?}");
    assert!(
        matches!(&outer, Err(Error::Misuse(m)) if !m.contains("returned Ok")),
        "{outer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_scoped_create_inside_its_own_raw_body_escapes_it_with_a_cache() {
    let (outer, kept) = scoped_create_inside_scoped_raw_body(true).await;
    assert_eq!(
        kept, 0,
        "the scoped create made inside the scoped handle's own with_client body committed on \
         another connection (the body then failed with {outer:?})"
    );
    assert!(
        matches!(&outer, Err(Error::Misuse(m)) if !m.contains("returned Ok")),
        "a statement through the same scoped handle inside its with_client body: {outer:?}"
    );
}

/// The same shape through `transaction`: a scoped handle's transaction opened inside
/// its own scoped `with_client` body is a savepoint of the body's call, refused while
/// the body holds the connection — it checked out a connection of its own and
/// committed, though the body's call then rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_transaction_inside_its_own_raw_body_is_misuse_and_keeps_nothing() {
    let (_d, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(&url).pool_size(4))
        .await
        .expect("db");
    let u = uuid::Uuid::new_v4();
    let scoped = db.as_user(u);
    let name = uniq("inner-tx");
    let (s2, n2) = (scoped.clone(), name.clone());
    let outer: tabula::Result<()> = tokio::time::timeout(
        Duration::from_secs(30),
        scoped.with_client(async move |_c| {
            s2.transaction(|tx| {
                let n2 = n2.clone();
                async move {
                    tx.create(common::NewProfile {
                        user_id: u,
                        username: n2,
                        avatar_url: None,
                    })
                    .await
                }
            })
            .await?;
            Err(Error::Validation(
                "the body fails after its inner transaction".into(),
            ))
        }),
    )
    .await
    .expect("ends");
    assert_eq!(count_named(&url, &name).await, 0, "{outer:?}");
    assert!(matches!(&outer, Err(Error::Misuse(_))), "{outer:?}");
}

// ---- 2. pool accounting after many abandoned transactions (SharedPlace) -----------------

/// slots.rs: "every connection that exists … holds one of `permits`' permits or sits on
/// `idle` — so at most `pool_size` exist". Transactions (pool of two) dropped while a
/// spawned clone's statement holds their connection: each place is given back once
/// (by the stopper or by the drop, not both). Afterwards three callers each hold a
/// connection for a second: exactly two get one, the third waits out its checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transactions_give_each_place_back_once() {
    let (_d, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(2)
            .statement_timeout(Duration::from_secs(5))
            .checkout_timeout(Duration::from_millis(600)),
    )
    .await
    .expect("attack setup");
    let mut clones = Vec::new();
    for round in 0..12u64 {
        let slot: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>> = Default::default();
        let s = slot.clone();
        let _ = tokio::time::timeout(
            Duration::from_millis(60 + (round % 4) * 20),
            db.transaction(move |tx| {
                let s = s.clone();
                async move {
                    tx.sql_rows("SELECT 1", &[]).await?;
                    let t = tx.clone();
                    *s.lock().expect("lock") = Some(tokio::spawn(async move {
                        let _ = t.sql_rows("SELECT pg_sleep(0.05)", &[]).await;
                    }));
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(())
                }
            }),
        )
        .await;
        if let Some(t) = slot.lock().expect("lock").take() {
            clones.push(t);
        }
    }
    for t in clones {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watcher = raw(&url).await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let d = db.clone();
        calls.push(tokio::spawn(async move {
            d.with_client(async |c| {
                c.batch_execute("SELECT pg_sleep(1.2)").await?;
                Ok(())
            })
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let busy: i64 = watcher
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'SELECT pg_sleep(1.2)%' AND state = 'active'",
            &[],
        )
        .await
        .expect("attack setup")
        .get(0);
    let mut ok = 0;
    let mut timed_out = 0;
    for c in calls {
        match c.await.expect("attack setup") {
            Ok(()) => ok += 1,
            Err(Error::PoolTimeout(_)) => timed_out += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(busy <= 2, "{busy} sessions at once on a pool of two");
    assert_eq!((ok, timed_out), (2, 1), "a pool of two served {ok} at once");
}
