//! Transactions: commit, rollback on error / panic / cancellation, retry of
//! serialization failures, and replacement of dead connections.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use tabula::{Db, DbConfig, Error, Isolation};

#[tokio::test]
async fn ok_commits_every_write() {
    let db = db().await;
    let (a, b) = db
        .transaction(|tx| async move {
            assert!(tx.in_transaction());
            let a = tx.create(new_profile("tx-a")).await?;
            let b = tx.create(new_profile("tx-b")).await?;
            Ok((a, b))
        })
        .await
        .expect("transaction");
    assert!(db.read::<Profile>(a.id).await.expect("read").is_some());
    assert!(db.read::<Profile>(b.id).await.expect("read").is_some());
}

#[tokio::test]
async fn err_rolls_back_and_leaves_no_row() {
    let db = db().await;
    let result: tabula::Result<()> = db
        .transaction(|tx| async move {
            tx.create(new_profile("rolled-back")).await?;
            tx.create(new_profile("rolled-back")).await?; // unique violation
            Ok(())
        })
        .await;
    assert!(
        matches!(result, Err(Error::UniqueViolation { .. })),
        "got {result:?}"
    );
    assert_eq!(count_profiles(&db).await, 0);
}

#[tokio::test]
async fn a_panic_inside_the_transaction_rolls_it_back() {
    let db = Db::connect_with(DbConfig::new(db_and_url().await.1).pool_size(1))
        .await
        .expect("db");
    let inner = db.clone();
    let task = tokio::spawn(async move {
        let _: tabula::Result<()> = inner
            .transaction(|tx| async move {
                tx.create(new_profile("panicked")).await?;
                panic!("boom inside the transaction");
            })
            .await;
    });
    assert!(task.await.is_err(), "the task panicked");
    // Pool of one: if the connection came back mid-transaction we would see our own row.
    assert_eq!(count_profiles(&db).await, 0);
    db.create(new_profile("after-panic"))
        .await
        .expect("pool still works");
    assert_eq!(count_profiles(&db).await, 1);
}

#[tokio::test]
async fn a_cancelled_transaction_never_returns_its_connection_mid_transaction() {
    let db = Db::connect_with(DbConfig::new(db_and_url().await.1).pool_size(1))
        .await
        .expect("db");
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        db.transaction(|tx| async move {
            tx.create(new_profile("cancelled")).await?;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }),
    )
    .await;
    assert!(cancelled.is_err(), "the transaction future was dropped");
    assert_eq!(count_profiles(&db).await, 0, "the insert was rolled back");
    let in_tx: bool = db
        .with_client(async |c| {
            let row = c
                .query_one("SELECT txid_current_if_assigned() IS NOT NULL", &[])
                .await?;
            Ok(row.get(0))
        })
        .await
        .expect("query");
    assert!(!in_tx, "a fresh connection is not inside any transaction");
}

#[tokio::test]
async fn serialization_failures_are_retried_until_both_succeed() {
    let db = db().await;
    let attempts = Arc::new(AtomicU32::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let run = |name: &'static str| {
        let (db, attempts, barrier) = (db.clone(), attempts.clone(), barrier.clone());
        async move {
            db.transaction_with(Isolation::Serializable, |tx| {
                let (attempts, barrier) = (attempts.clone(), barrier.clone());
                async move {
                    let first = attempts.fetch_add(1, Ordering::SeqCst) < 2;
                    let seen = count_profiles(&tx).await;
                    if first {
                        // Both have read before either writes: a read/write cycle.
                        barrier.wait().await;
                    }
                    tx.create(new_profile(&format!("{name}-{seen}"))).await?;
                    Ok(seen)
                }
            })
            .await
        }
    };
    let (a, b) = tokio::join!(run("a"), run("b"));
    let (a, b) = (a.expect("a commits"), b.expect("b commits"));
    assert!(
        attempts.load(Ordering::SeqCst) >= 3,
        "one of them was retried"
    );
    let mut seen = [a, b];
    seen.sort();
    assert_eq!(
        seen,
        [0, 1],
        "the retried one saw the other's row: serial order"
    );
    assert_eq!(count_profiles(&db).await, 2);
}

#[tokio::test]
async fn conflicts_that_outlast_the_attempts_are_reported_as_conflict() {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url).transaction_attempts(2))
        .await
        .expect("db");
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    let result: tabula::Result<()> = db
        .transaction(move |tx| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tx.execute_batch("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$")
                    .await
            }
        })
        .await;
    match result {
        Err(Error::Conflict {
            sqlstate,
            attempts: n,
        }) => {
            assert_eq!(sqlstate, "40001");
            assert_eq!(n, 2);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_killed_by_the_server_is_replaced_not_reused() {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(2))
        .await
        .expect("db");
    let p = db.create(new_profile("survivor")).await.expect("create");
    let killer = Db::connect(&url).await.expect("killer");
    let killed: i64 = killer
        .with_client(async |c| {
            let row = c
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
        .expect("terminate");
    assert!(killed >= 1, "the pool's connection was terminated");
    for _ in 0..3 {
        let read = db.read::<Profile>(p.id).await.expect("read after the kill");
        assert_eq!(read.map(|r| r.id), Some(p.id));
    }
}

#[tokio::test]
async fn a_pool_checkout_has_a_deadline() {
    let (_, url) = db_and_url().await;
    let config = DbConfig::new(url)
        .pool_size(1)
        .checkout_timeout(Duration::from_millis(100));
    let db = Db::connect_with(config).await.expect("db");
    let holder = db.clone();
    let opened = Arc::new(tokio::sync::Notify::new());
    let signal = opened.clone();
    let hold = tokio::spawn(async move {
        holder
            .transaction(|_tx| {
                let signal = signal.clone();
                async move {
                    signal.notify_one();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Ok(())
                }
            })
            .await
    });
    opened.notified().await; // the one connection is now held by the transaction
    let started = std::time::Instant::now();
    let err = db
        .read::<Profile>(uuid::Uuid::new_v4())
        .await
        .expect_err("pool exhausted");
    assert!(matches!(err, Error::PoolTimeout(_)), "got {err:?}");
    assert!(err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn a_connection_lost_before_commit_is_resolved_as_not_committed_and_not_retried() {
    let (_, url) = db_and_url().await;
    let db = Db::connect(&url).await.expect("db");
    let killer = Db::connect(&url).await.expect("killer");
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    let result: tabula::Result<()> = db
        .transaction(move |tx| {
            let (killer, counted) = (killer.clone(), counted.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tx.create(new_profile("maybe-committed")).await?;
                let pid: i32 = tx
                    .with_client(async |c| {
                        Ok(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
                    })
                    .await?;
                // The server kills this transaction's connection just before COMMIT.
                killer
                    .with_client(async |c| {
                        c.execute("SELECT pg_terminate_backend($1)", &[&pid])
                            .await?;
                        Ok(())
                    })
                    .await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            }
        })
        .await;
    // The server is asked what became of the transaction: it was aborted, so the
    // error is the lost connection itself (nothing was kept), not "unknown".
    assert!(
        matches!(result, Err(Error::Connection(_))),
        "got {result:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "never retried blindly");
    assert!(!Error::CommitOutcomeUnknown.is_transient());
    // The pool replaced the dead connection.
    assert_eq!(
        count_profiles(&db).await,
        0,
        "this time the transaction did not commit"
    );
}
