//! Round 28: an outside attack on the fixes of round 27 (transactions, savepoints, the
//! write path's error classes, pending invalidations). Each `defect_*` test failed on
//! the code it attacked, 3 of 3 runs, and passes since its fix; the others held when
//! written.

mod common;

use common::fixtures::{raw, uniq};
use common::tx::{
    CProfile, NewCProfile, Slot, avatar_in_db, count_named, patch, row_is_free, slot, take,
};

use std::sync::Arc;
use std::time::Duration;

use common::{NewProfile, Profile, db_and_url, new_profile};
use futures_util::StreamExt;
use tabula::{Db, DbConfig, Error};

async fn cached_db(url: &str, pool: u32, deadline: Duration) -> Db {
    let redis = tabula::testkit::redis_url().expect("redis");
    let cache = tabula::CacheService::redis(
        &redis,
        tabula::CacheConfig::default().prefix(uniq("c").replace('-', "x")),
    )
    .expect("cache");
    Db::connect_with(
        DbConfig::new(url)
            .pool_size(pool)
            .statement_timeout(deadline)
            .cache(cache),
    )
    .await
    .expect("db")
}

// ---- 1. a savepoint still running when its transaction's body returns ------------------

/// "A nested `transaction` is a savepoint: released on `Ok`, rolled back to on `Err`."
/// The nested call runs in a task the body spawned; the body returns once the nested
/// write is done, and the transaction commits with the savepoint still open. The nested
/// body then returns `Err`: the nested call reports that error — yet its write is
/// committed (ROLLBACK TO finds the transaction ended; marking it abandoned is too late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_savepoint_still_open_when_the_body_returns_is_committed_though_it_reports_err() {
    let (db, url) = db_and_url().await;
    let name = uniq("sp-open");
    let (wrote_tx, wrote_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (wrote_tx, wrote_rx, go_rx) = (slot(wrote_tx), slot(wrote_rx), slot(go_rx));
    let nested_task: Slot<tokio::task::JoinHandle<tabula::Result<()>>> =
        Arc::new(std::sync::Mutex::new(None));
    let n2 = name.clone();
    let nt = nested_task.clone();
    let outer = db
        .transaction(move |tx| {
            let (name, wrote_tx, wrote_rx, go_rx, nt) = (
                n2.clone(),
                wrote_tx.clone(),
                wrote_rx.clone(),
                go_rx.clone(),
                nt.clone(),
            );
            async move {
                let t2 = tx.clone();
                let task = tokio::spawn(async move {
                    t2.transaction(move |sp| {
                        let (name, wrote_tx, go_rx) =
                            (name.clone(), wrote_tx.clone(), go_rx.clone());
                        async move {
                            sp.create(new_profile(&name)).await?;
                            let _ = take(&wrote_tx).send(());
                            let _ = take(&go_rx).await;
                            Err::<(), _>(Error::Validation("the nested work fails".into()))
                        }
                    })
                    .await
                });
                *nt.lock().expect("lock") = Some(task);
                let _ = take(&wrote_rx).await;
                Ok(())
            }
        })
        .await;
    let _ = go_tx.send(());
    let task = nested_task
        .lock()
        .expect("lock")
        .take()
        .expect("attack setup");
    let nested = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the nested call ends")
        .expect("no panic");
    let kept = count_named(&url, &name).await;
    assert!(
        !(outer.is_ok() && nested.is_err() && kept == 1),
        "the transaction returned {outer:?}, the nested transaction returned {nested:?} \
         (\"rolled back to on Err\") — and its write was committed ({kept} row)"
    );
}

// ---- 2. a released savepoint's handle opening a savepoint inside a later one -------------

/// "a savepoint's handle is refused outside its own savepoint, even in a later one at the
/// same depth" — a statement on it is refused there, but `transaction` on it is not: the
/// stale handle opens a savepoint of its own inside the later savepoint, and writes
/// through it are accepted and reported `Ok`.
#[tokio::test]
async fn defect_a_released_savepoints_handle_opens_a_savepoint_inside_a_later_one() {
    let (db, url) = db_and_url().await;
    let name = uniq("stale-nest");
    let n2 = name.clone();
    let outcome = db
        .transaction(move |tx| {
            let name = n2.clone();
            async move {
                let kept: Slot<Db> = Arc::new(std::sync::Mutex::new(None));
                let k2 = kept.clone();
                tx.transaction(move |sp1| {
                    let k2 = k2.clone();
                    async move {
                        *k2.lock().expect("lock") = Some(sp1.clone());
                        Ok(())
                    }
                })
                .await?;
                let stale = take(&kept);
                let direct = tx
                    .transaction({
                        let stale = stale.clone();
                        move |_sp2| {
                            let stale = stale.clone();
                            async move { Ok::<_, Error>(stale.query::<Profile>().count().await) }
                        }
                    })
                    .await?;
                assert!(matches!(direct, Err(Error::Misuse(_))), "the direct use is refused: {direct:?}");
                let nested = tx
                    .transaction(move |_sp3| {
                        let stale = stale.clone();
                        let name = name.clone();
                        async move {
                            let w = stale
                                .transaction(move |inner| {
                                    let name = name.clone();
                                    async move { inner.create(new_profile(&name)).await.map(|_| ()) }
                                })
                                .await;
                            Ok::<_, Error>(w)
                        }
                    })
                    .await?;
                Ok(nested)
            }
        })
        .await
        .expect("the transaction commits");
    assert!(
        matches!(outcome, Err(Error::Misuse(_))),
        "`transaction` on the handle of a savepoint released earlier was accepted inside a \
         later savepoint: {outcome:?} (rows written: {})",
        count_named(&url, &name).await
    );
}

// ---- 3. a stream / a raw body in a spawned task that outlives the body -------------------

/// "never for a stream or a `with_client` body that outlived the transaction's body: the
/// transaction is then abandoned, and its connection is closed — rolling it back — when
/// they let go of it" (conn.rs, `TxHandle::take`). The task lets go of its stream but keeps
/// its clone of the handle: the connection is never closed, the row lock stays, and the
/// pool's one connection is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_stream_in_a_spawned_task_keeps_the_transactions_lock_after_it_let_go() {
    let (_db, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(1)
            .checkout_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("attack setup");
    let p = db
        .create(new_profile(&uniq("strm")))
        .await
        .expect("attack setup");
    db.create(new_profile(&uniq("strm2")))
        .await
        .expect("attack setup");
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<()>();
    let (drop_tx, drop_rx) = tokio::sync::oneshot::channel::<()>();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let s = (
        slot(opened_tx),
        slot(opened_rx),
        slot(drop_rx),
        slot(dropped_tx),
        slot(release_rx),
    );
    let tasks: Slot<tokio::task::JoinHandle<()>> = Arc::new(std::sync::Mutex::new(None));
    let t2 = tasks.clone();
    let id = p.id;
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(move |tx| {
            let s = s.clone();
            let t2 = t2.clone();
            async move {
                tx.update::<Profile>(
                    id,
                    common::ProfilePatch::default().avatar_url(Some("tx".into())),
                )
                .await?;
                let handle = tx.clone();
                let (opened_tx, drop_rx, dropped_tx, release_rx) =
                    (take(&s.0), take(&s.2), take(&s.3), take(&s.4));
                let task = tokio::spawn(async move {
                    let mut rows = handle.query::<Profile>().stream().await.expect("stream");
                    let _ = rows.next().await;
                    let _ = opened_tx.send(());
                    let _ = drop_rx.await;
                    drop(rows);
                    let _ = dropped_tx.send(());
                    // The task goes on with other work, the handle still in scope.
                    let _ = release_rx.await;
                    drop(handle);
                });
                *t2.lock().expect("lock") = Some(task);
                let _ = take(&s.1).await;
                Ok(())
            }
        }),
    )
    .await
    .expect("the transaction ends");
    assert!(outcome.is_err(), "a stream outlived the body: {outcome:?}");
    let _ = drop_tx.send(());
    dropped_rx.await.expect("attack setup");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lock = row_is_free(&url, id, Duration::from_secs(2)).await;
    let pool = tokio::time::timeout(Duration::from_secs(5), db.query::<Profile>().count()).await;
    let _ = release_tx.send(());
    let task = tasks.lock().expect("lock").take().expect("attack setup");
    task.await.expect("attack setup");
    assert!(
        lock.is_ok() && matches!(pool, Ok(Ok(2))),
        "the stream was dropped, the transaction ({outcome:?}) still holds its row lock \
         ({lock:?}) and the pool's one connection (a read: {pool:?})"
    );
    assert_eq!(avatar_in_db(&url, id).await, None, "nothing of it was kept");
}

/// The same with a `with_client` body in the spawned task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_raw_body_in_a_spawned_task_keeps_the_transactions_lock_after_it_ended() {
    let (_db, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(1)
            .checkout_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("attack setup");
    let p = db
        .create(new_profile(&uniq("rawt")))
        .await
        .expect("attack setup");
    let (inside_tx, inside_rx) = tokio::sync::oneshot::channel::<()>();
    let (leave_tx, leave_rx) = tokio::sync::oneshot::channel::<()>();
    let (left_tx, left_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let s = (
        slot(inside_tx),
        slot(inside_rx),
        slot(leave_rx),
        slot(left_tx),
        slot(release_rx),
    );
    let tasks: Slot<tokio::task::JoinHandle<()>> = Arc::new(std::sync::Mutex::new(None));
    let t2 = tasks.clone();
    let id = p.id;
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(move |tx| {
            let s = s.clone();
            let t2 = t2.clone();
            async move {
                let handle = tx.clone();
                let (inside_tx, leave_rx, left_tx, release_rx) =
                    (take(&s.0), take(&s.2), take(&s.3), take(&s.4));
                let task = tokio::spawn(async move {
                    let r = handle
                        .with_client(async move |c| {
                            c.execute(
                                "UPDATE profiles SET avatar_url = 'raw' WHERE id = $1",
                                &[&id],
                            )
                            .await?;
                            let _ = inside_tx.send(());
                            let _ = leave_rx.await;
                            Ok(())
                        })
                        .await;
                    let _ = left_tx.send(());
                    let _ = release_rx.await;
                    drop((handle, r));
                });
                *t2.lock().expect("lock") = Some(task);
                let _ = take(&s.1).await;
                Ok(())
            }
        }),
    )
    .await
    .expect("the transaction ends");
    assert!(
        outcome.is_err(),
        "a raw body outlived the body: {outcome:?}"
    );
    let _ = leave_tx.send(());
    left_rx.await.expect("attack setup");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lock = row_is_free(&url, id, Duration::from_secs(2)).await;
    let pool = tokio::time::timeout(Duration::from_secs(5), db.query::<Profile>().count()).await;
    let _ = release_tx.send(());
    let task = tasks.lock().expect("lock").take().expect("attack setup");
    task.await.expect("attack setup");
    assert!(
        lock.is_ok() && matches!(pool, Ok(Ok(1))),
        "the raw body ended, the transaction ({outcome:?}) still holds its row lock \
         ({lock:?}) and the pool's one connection (a read: {pool:?})"
    );
    assert_eq!(avatar_in_db(&url, id).await, None, "nothing of it was kept");
}

// ---- 4. OutcomeUnknown for a transaction that rolled back ------------------------------

/// `Error::OutcomeUnknown`: "A write outside a transaction whose answer was lost … it may
/// or may not have been applied. Never retried by Tabula, and not transient". Inside a
/// transaction the raw body outlives the client's deadline (each of its statements within
/// the server's): the transaction rolls back — nothing can have been applied — and
/// reports `OutcomeUnknown`, not transient, so the caller is told to check before retrying
/// work that definitely did not happen.
#[tokio::test]
async fn defect_a_transaction_that_rolled_back_is_reported_outcome_unknown() {
    let (_db, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(&url).statement_timeout(Duration::from_millis(300)))
        .await
        .expect("attack setup");
    let name = uniq("rolled");
    let n2 = name.clone();
    let result: tabula::Result<()> = db
        .transaction(move |tx| {
            let name = n2.clone();
            async move {
                tx.with_client(async move |c| {
                    c.execute(
                        "INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), $1)",
                        &[&name],
                    )
                    .await?;
                    for _ in 0..4 {
                        c.execute("SELECT pg_sleep(0.2)", &[]).await?;
                    }
                    Ok(())
                })
                .await
            }
        })
        .await;
    assert_eq!(
        count_named(&url, &name).await,
        0,
        "the transaction never committed"
    );
    let err = result.expect_err("the body failed");
    assert!(
        !matches!(err, Error::OutcomeUnknown { .. }),
        "a transaction that rolled back (nothing applied) is reported as OutcomeUnknown \
         (\"may or may not have been applied\", not transient): {err:?}"
    );
}

// ---- 5. controls -----------------------------------------------------------------------

#[tokio::test]
async fn savepoints_three_deep_and_in_sequence_release_and_roll_back_as_documented() {
    let (db, url) = db_and_url().await;
    let names: Vec<String> = (0..6).map(|i| uniq(&format!("deep{i}"))).collect();
    let n = names.clone();
    db.transaction(move |tx| {
        let n = n.clone();
        async move {
            tx.create(new_profile(&n[0])).await?;
            let n1 = n.clone();
            tx.transaction(move |a| {
                let n = n1.clone();
                async move {
                    a.create(new_profile(&n[1])).await?;
                    let n2 = n.clone();
                    a.transaction(move |b| {
                        let n = n2.clone();
                        async move {
                            b.create(new_profile(&n[2])).await?;
                            let n3 = n.clone();
                            let failed = b
                                .transaction(move |c| {
                                    let n = n3.clone();
                                    async move {
                                        c.create(new_profile(&n[3])).await?;
                                        c.create(new_profile(&n[3])).await?; // duplicate
                                        Ok(())
                                    }
                                })
                                .await;
                            assert!(
                                matches!(failed, Err(Error::UniqueViolation { .. })),
                                "{failed:?}"
                            );
                            // b still usable after its child rolled back
                            b.create(new_profile(&n[4])).await?;
                            Ok(())
                        }
                    })
                    .await?;
                    a.query::<Profile>().count().await?;
                    Ok(())
                }
            })
            .await?;
            // Sequential savepoints at depth 1, the outer handle used between them.
            for i in 0..5 {
                let r = tx
                    .transaction(move |s| async move {
                        s.query::<Profile>().count().await?;
                        if i % 2 == 0 {
                            Err(Error::Validation("roll back".into()))
                        } else {
                            Ok(i)
                        }
                    })
                    .await;
                assert_eq!(r.is_ok(), i % 2 == 1);
                tx.query::<Profile>().count().await?;
            }
            tx.create(new_profile(&n[5])).await?;
            Ok(())
        }
    })
    .await
    .expect("commits");
    let kept: Vec<i64> = {
        let mut v = Vec::new();
        for n in &names {
            v.push(count_named(&url, n).await);
        }
        v
    };
    assert_eq!(kept, [1, 1, 1, 0, 1, 1]);
}

#[tokio::test]
async fn a_scoped_transaction_whose_body_scopes_again_to_the_same_user_runs_inside_it() {
    let (db, url) = db_and_url().await;
    let (u, v) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let name = uniq("same-scope");
    let n2 = name.clone();
    let r: tabula::Result<()> = db
        .as_user(u)
        .transaction(move |tx| {
            let name = n2.clone();
            async move {
                // Same user: accepted, inside the transaction.
                tx.as_user(u)
                    .create(NewProfile {
                        user_id: u,
                        username: name.clone(),
                        avatar_url: None,
                    })
                    .await?;
                let same = tx
                    .as_claims(serde_json::json!({"sub": u.to_string(), "role": "authenticated"}))?
                    .query::<Profile>()
                    .count()
                    .await;
                // Another user, anon, service claims: refused.
                let other = tx.as_user(v).query::<Profile>().count().await;
                assert!(matches!(other, Err(Error::Misuse(_))), "{other:?}");
                let anon = tx.as_anon().query::<Profile>().count().await;
                assert!(matches!(anon, Err(Error::Misuse(_))), "{anon:?}");
                let svc = tx
                    .as_claims(serde_json::json!({"role": "service_role"}))?
                    .create(new_profile(&format!("{name}-svc")))
                    .await;
                assert!(matches!(svc, Err(Error::Misuse(_))), "{svc:?}");
                let raw = tx
                    .as_user(v)
                    .with_client(async |c| Ok(c.execute("SELECT 1", &[]).await?))
                    .await;
                assert!(matches!(raw, Err(Error::Misuse(_))), "{raw:?}");
                let st = tx.as_user(v).query::<Profile>().stream().await.map(|_| ());
                assert!(matches!(st, Err(Error::Misuse(_))), "{st:?}");
                let sp = tx
                    .as_user(v)
                    .transaction(|s| async move { s.query::<Profile>().count().await })
                    .await;
                assert!(matches!(sp, Err(Error::Misuse(_))), "{sp:?}");
                // The same user in a savepoint of the scoped transaction.
                let inner = tx
                    .transaction(
                        move |s| async move { s.as_user(u).query::<Profile>().count().await },
                    )
                    .await?;
                assert_eq!(inner, 1);
                let _ = same;
                Err(Error::Validation("roll it all back".into()))
            }
        })
        .await;
    assert!(matches!(r, Err(Error::Validation(_))), "{r:?}");
    assert_eq!(
        count_named(&url, &name).await,
        0,
        "a write escaped the rollback"
    );
    assert_eq!(count_named(&url, &format!("{name}-svc")).await, 0);
}

/// A reader fills the row cache with the old row while the transaction's update is not
/// committed yet; after COMMIT the cache answers the new row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_refilling_the_old_row_before_commit_is_invalidated_after_it() {
    let (_d, url) = db_and_url().await;
    let db = cached_db(&url, 4, Duration::from_secs(5)).await;
    let p = db
        .create(NewCProfile {
            user_id: uuid::Uuid::new_v4(),
            username: uniq("refill"),
            avatar_url: Some("old".into()),
        })
        .await
        .expect("attack setup");
    let id = p.id;
    let reader = db.clone();
    db.transaction(move |tx| {
        let reader = reader.clone();
        async move {
            tx.update::<CProfile>(id, patch("new")).await?;
            tx.invalidate::<CProfile>(&[id]).await;
            tx.invalidate_tag("t").await;
            for _ in 0..3 {
                let seen = reader.read::<CProfile>(id).await?.expect("attack setup");
                assert_eq!(seen.avatar_url.as_deref(), Some("old"));
            }
            Ok(())
        }
    })
    .await
    .expect("attack setup");
    assert_eq!(
        db.read::<CProfile>(id)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .avatar_url
            .as_deref(),
        Some("new")
    );
}

/// Many clones of one handle writing at once from spawned tasks, joined before the body
/// returns: every write committed, every row's cache entry invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clones_writing_at_once_commit_together_and_invalidate_each_row() {
    let (_d, url) = db_and_url().await;
    let db = cached_db(&url, 4, Duration::from_secs(5)).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let p = db
            .create(NewCProfile {
                user_id: uuid::Uuid::new_v4(),
                username: uniq(&format!("m{i}")),
                avatar_url: Some("old".into()),
            })
            .await
            .expect("attack setup");
        assert_eq!(
            db.read::<CProfile>(p.id)
                .await
                .expect("attack setup")
                .expect("attack setup")
                .avatar_url
                .as_deref(),
            Some("old")
        );
        ids.push(p.id);
    }
    let ids2 = ids.clone();
    db.transaction(move |tx| {
        let ids = ids2.clone();
        async move {
            let mut tasks = Vec::new();
            for id in ids {
                let t = tx.clone();
                tasks.push(tokio::spawn(async move {
                    t.update::<CProfile>(id, patch("new")).await
                }));
            }
            for t in tasks {
                t.await.expect("attack setup")?;
            }
            Ok(())
        }
    })
    .await
    .expect("attack setup");
    for id in ids {
        assert_eq!(avatar_in_db(&url, id).await.as_deref(), Some("new"));
        assert_eq!(
            db.read::<CProfile>(id)
                .await
                .expect("attack setup")
                .expect("attack setup")
                .avatar_url
                .as_deref(),
            Some("new")
        );
    }
}

// ---- 6. a dropped transaction while a clone's statement waits on a lock ------------------

/// "A panic in the body, or its future dropped, rolls it back at once, even while a clone
/// of its handle lives on in a spawned task" (README, "What a failure means"). The
/// transaction updated row A; a clone in a spawned task updates row B, which a third
/// session holds. The caller gives up on the transaction (its future dropped, as a
/// request timeout does): row A stays locked until the third session lets go of B — the
/// connection is only dropped once the clone's statement ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_dropped_transaction_keeps_its_locks_while_a_clones_statement_waits() {
    let (db, url) = db_and_url().await;
    let a = db
        .create(new_profile(&uniq("la")))
        .await
        .expect("attack setup");
    let b = db
        .create(new_profile(&uniq("lb")))
        .await
        .expect("attack setup");
    let blocker = raw(&url).await;
    blocker.batch_execute("BEGIN").await.expect("attack setup");
    blocker
        .execute("SELECT 1 FROM profiles WHERE id = $1 FOR UPDATE", &[&b.id])
        .await
        .expect("attack setup");
    let (aid, bid) = (a.id, b.id);
    let url2 = url.clone();
    let given_up = tokio::time::timeout(
        Duration::from_millis(1500),
        db.transaction(move |tx| {
            let url = url2.clone();
            async move {
                tx.update::<Profile>(
                    aid,
                    common::ProfilePatch::default().avatar_url(Some("a".into())),
                )
                .await?;
                let t2 = tx.clone();
                tokio::spawn(async move {
                    let _ = t2
                        .update::<Profile>(
                            bid,
                            common::ProfilePatch::default().avatar_url(Some("b".into())),
                        )
                        .await;
                });
                // The body goes on with slow work of its own.
                let watcher = raw(&url).await;
                for _ in 0..500 {
                    let n: i64 = watcher
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                            &[],
                        )
                        .await
                        .expect("attack setup")
                        .get(0);
                    if n > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
        }),
    )
    .await;
    assert!(given_up.is_err(), "the caller gave up");
    let started = std::time::Instant::now();
    let free = row_is_free(&url, aid, Duration::from_secs(2)).await;
    let waited = started.elapsed();
    blocker
        .batch_execute("ROLLBACK")
        .await
        .expect("attack setup");
    assert!(
        free.is_ok(),
        "row A is still locked by a transaction whose future was dropped ({waited:?} later): {free:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(avatar_in_db(&url, aid).await, None);
    assert_eq!(avatar_in_db(&url, bid).await, None);
}

// ---- 7. select! dropping transactions at many points ------------------------------------

/// A transaction updating two cached rows, given up after 0..N yields or milliseconds.
/// After each: both rows equal (never half-committed), neither locked, the cache answers
/// what PostgreSQL holds, and the pool still has all its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_dropped_at_many_points_leave_no_lock_no_half_commit_no_stale_cache() {
    let (_d, url) = db_and_url().await;
    let pool = 3u32;
    let redis = tabula::testkit::redis_url().expect("redis");
    let cache = tabula::CacheService::redis(
        &redis,
        tabula::CacheConfig::default().prefix(uniq("c").replace('-', "x")),
    )
    .expect("attack setup");
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(pool)
            .checkout_timeout(Duration::from_secs(3))
            .cache(cache),
    )
    .await
    .expect("attack setup");
    let mk = |n: &str| NewCProfile {
        user_id: uuid::Uuid::new_v4(),
        username: uniq(n),
        avatar_url: Some("v0".into()),
    };
    let a = db.create(mk("sa")).await.expect("attack setup").id;
    let b = db.create(mk("sb")).await.expect("attack setup").id;
    let mut committed = 0;
    let mut dropped = 0;
    for i in 0..80u32 {
        // Warm the cache with the current rows.
        db.read::<CProfile>(a).await.expect("attack setup");
        db.read::<CProfile>(b).await.expect("attack setup");
        let v = format!("v{}", i + 1);
        let v2 = v.clone();
        let fut = db.transaction(move |tx| {
            let v = v2.clone();
            async move {
                tx.update::<CProfile>(a, patch(&v)).await?;
                let inner = tx
                    .transaction(|sp| {
                        let v = v.clone();
                        async move { sp.update::<CProfile>(b, patch(&v)).await }
                    })
                    .await?;
                tx.query::<CProfile>().count().await?;
                Ok(inner)
            }
        });
        let gave_up = if i < 40 {
            let n = i as usize;
            tokio::select! {
                r = fut => { r.expect("attack setup"); false }
                _ = async { for _ in 0..n { tokio::task::yield_now().await } } => true,
            }
        } else {
            let ms = u64::from(i - 40) * 3 / 4;
            let us = u64::from(i % 4) * 250;
            tokio::select! {
                r = fut => { r.expect("attack setup"); false }
                _ = tokio::time::sleep(Duration::from_micros(ms * 1000 + us)) => true,
            }
        };
        if gave_up {
            dropped += 1
        } else {
            committed += 1
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        for id in [a, b] {
            let free = row_is_free(&url, id, Duration::from_secs(2)).await;
            assert!(
                free.is_ok(),
                "round {i} (gave up: {gave_up}): row still locked: {free:?}"
            );
        }
        // Both rows in one snapshot.
        let both = raw(&url)
            .await
            .query_one(
                "SELECT (SELECT avatar_url FROM profiles WHERE id = $1), \
                        (SELECT avatar_url FROM profiles WHERE id = $2)",
                &[&a, &b],
            )
            .await
            .expect("attack setup");
        let (va, vb): (Option<String>, Option<String>) = (both.get(0), both.get(1));
        assert_eq!(
            va, vb,
            "round {i} (gave up: {gave_up}): half a transaction committed"
        );
        let mut seen = Vec::new();
        for _ in 0..30 {
            let ca = db
                .read::<CProfile>(a)
                .await
                .expect("attack setup")
                .expect("attack setup")
                .avatar_url;
            let cb = db
                .read::<CProfile>(b)
                .await
                .expect("attack setup")
                .expect("attack setup")
                .avatar_url;
            seen.push((ca.clone(), cb.clone()));
            if (ca.as_ref(), cb.as_ref()) == (va.as_ref(), va.as_ref()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            seen.last().cloned().expect("attack setup"),
            (va.clone(), va.clone()),
            "round {i} (gave up: {gave_up}): the cache serves a stale row for 3 s: {seen:?}"
        );
        if seen.len() > 1 {
            eprintln!(
                "round {i}: cache caught up after {} reads: {seen:?}",
                seen.len()
            );
        }
    }
    // Every connection of the pool is usable at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(pool as usize));
    let mut held = Vec::new();
    for _ in 0..pool {
        let (db, barrier) = (db.clone(), barrier.clone());
        held.push(tokio::spawn(async move {
            db.transaction(move |tx| {
                let barrier = barrier.clone();
                async move {
                    tx.query::<CProfile>().count().await?;
                    barrier.wait().await;
                    Ok(())
                }
            })
            .await
        }));
    }
    for h in held {
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("bounded")
            .expect("attack setup")
            .expect("a pooled connection was lost");
    }
    assert!(
        dropped > 10 && committed > 2,
        "dropped {dropped}, committed {committed}"
    );
}

// ---- 8. more controls -----------------------------------------------------------------------

/// `execute_batch` inside a transaction cancelled by the server's deadline: `Timeout`,
/// transient, and nothing of the transaction kept.
#[tokio::test]
async fn execute_batch_cancelled_at_the_deadline_inside_a_transaction_is_a_transient_timeout() {
    let (_d, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(&url).statement_timeout(Duration::from_millis(300)))
        .await
        .expect("attack setup");
    let name = uniq("eb");
    let n2 = name.clone();
    let r: tabula::Result<()> = db
        .transaction(move |tx| {
            let name = n2.clone();
            async move {
                tx.create(new_profile(&format!("{name}-first"))).await?;
                tx.execute_batch(&format!(
                    "INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), '{name}'); \
                     SELECT pg_sleep(2)"
                ))
                .await
            }
        })
        .await;
    assert_eq!(count_named(&url, &name).await, 0);
    assert_eq!(count_named(&url, &format!("{name}-first")).await, 0);
    let e = r.expect_err("cancelled");
    assert!(
        matches!(e, Error::Timeout { .. }) && e.is_transient(),
        "{e:?}"
    );
    // Outside a transaction the same is OutcomeUnknown (the first statement committed).
    let r = db
        .execute_batch(&format!(
            "INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), '{name}'); \
             SELECT pg_sleep(2)"
        ))
        .await;
    assert!(matches!(r, Err(Error::OutcomeUnknown { .. })), "{r:?}");
}

/// A savepoint that panics in a task the body spawned, with another clone of the
/// savepoint's handle alive: the panic reaches the body as a JoinError, the savepoint
/// is rolled back, the clone is refused, and the outer transaction commits the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_panicking_in_a_spawned_task_rolls_back_and_the_outer_transaction_commits() {
    let (db, url) = db_and_url().await;
    let (n1, n2) = (uniq("keep"), uniq("sp-panic"));
    let (k, p) = (n1.clone(), n2.clone());
    let leftover: Slot<Db> = Arc::new(std::sync::Mutex::new(None));
    let l2 = leftover.clone();
    db.transaction(move |tx| {
        let (k, p, l2) = (k.clone(), p.clone(), l2.clone());
        async move {
            tx.create(new_profile(&k)).await?;
            let t2 = tx.clone();
            let l3 = l2.clone();
            let joined = tokio::spawn(async move {
                t2.transaction(move |sp| {
                    let (p, l2) = (p.clone(), l3.clone());
                    async move {
                        sp.create(new_profile(&p)).await?;
                        *l2.lock().expect("lock") = Some(sp.clone());
                        if !p.is_empty() {
                            panic!("the nested body panics");
                        }
                        Ok(())
                    }
                })
                .await
            })
            .await;
            assert!(joined.expect_err("the task panicked").is_panic());
            let stale = take(&l2);
            let refused = stale.create(new_profile("never")).await;
            assert!(matches!(refused, Err(Error::Misuse(_))), "{refused:?}");
            tx.query::<Profile>().count().await?;
            Ok(())
        }
    })
    .await
    .expect("the outer transaction commits");
    assert_eq!(count_named(&url, &n1).await, 1);
    assert_eq!(count_named(&url, &n2).await, 0);
    assert_eq!(count_named(&url, "never").await, 0);
    drop(leftover);
}

/// `invalidate_tag` inside a transaction while one of its streams is open: returns at
/// once, and a tagged cached query answers the committed row after COMMIT (a reader
/// refilled it in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_while_a_stream_is_open_applies_after_commit() {
    let (_d, url) = db_and_url().await;
    let db = cached_db(&url, 4, Duration::from_secs(5)).await;
    db.create(new_profile(&uniq("tagged")))
        .await
        .expect("attack setup");
    let count = |db: Db| async move {
        db.query::<Profile>()
            .cached(60)
            .tag("people")
            .count()
            .await
            .expect("attack setup")
    };
    assert_eq!(count(db.clone()).await, 1);
    let reader = db.clone();
    let name = uniq("raw-ins");
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(move |tx| {
            let (reader, name) = (reader.clone(), name.clone());
            async move {
                tx.with_client(async |c| {
                    c.execute(
                        "INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), $1)",
                        &[&name],
                    )
                    .await?;
                    Ok(())
                })
                .await?;
                let mut rows = tx.query::<Profile>().stream().await?;
                let _ = rows.next().await;
                tx.invalidate_tag("people").await;
                drop(rows);
                assert_eq!(
                    reader
                        .query::<Profile>()
                        .cached(60)
                        .tag("people")
                        .count()
                        .await?,
                    1
                );
                Ok(())
            }
        }),
    )
    .await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    assert_eq!(
        count(db.clone()).await,
        2,
        "the tag was not dropped after COMMIT"
    );
}

/// After the server killed every idle connection of the pool: a read is tried again on a
/// fresh connection (Ok), and a write — which never reached a server — is not reported
/// `OutcomeUnknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_idle_connections_were_killed_reads_retry_and_writes_are_not_outcome_unknown() {
    let (_d, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(&url).pool_size(2))
        .await
        .expect("attack setup");
    let p = db
        .create(new_profile(&uniq("idle")))
        .await
        .expect("attack setup");
    // Both connections opened and idle.
    let (x, y) = tokio::join!(db.query::<Profile>().count(), db.query::<Profile>().count());
    x.expect("attack setup");
    y.expect("attack setup");
    let killer = raw(&url).await;
    let dbname: String = killer
        .query_one("SELECT current_database()::text", &[])
        .await
        .expect("attack setup")
        .get(0);
    killer
        .execute(
            "SELECT pg_terminate_backend(pid, 2000) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&dbname],
        )
        .await
        .expect("attack setup");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let read = db.read::<Profile>(p.id).await;
    assert!(matches!(read, Ok(Some(_))), "{read:?}");
    killer
        .execute(
            "SELECT pg_terminate_backend(pid, 2000) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&dbname],
        )
        .await
        .expect("attack setup");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let name = uniq("after-kill");
    let w = db.create(new_profile(&name)).await;
    assert!(
        !matches!(w, Err(Error::OutcomeUnknown { .. })),
        "{w:?} (kept: {})",
        count_named(&url, &name).await
    );
    let t = db
        .transaction(|tx| async move { tx.query::<Profile>().count().await })
        .await;
    assert!(t.is_ok(), "{t:?}");
}

/// Raw writes in a scoped one-shot call: committed when the body returns Ok, none kept
/// when it fails after writing; the policy applies.
#[tokio::test]
async fn raw_writes_in_a_scoped_one_shot_call_commit_or_roll_back_whole() {
    let (db, url) = db_and_url().await;
    let u = uuid::Uuid::new_v4();
    let (ok, failed, foreign) = (uniq("ok"), uniq("failed"), uniq("foreign"));
    let ins = "INSERT INTO profiles (user_id, username) VALUES ($1, $2)";
    let o = ok.clone();
    db.as_user(u)
        .with_client(async move |c| {
            c.execute(ins, &[&u, &o]).await?;
            Ok(())
        })
        .await
        .expect("attack setup");
    let f = failed.clone();
    let r = db
        .as_user(u)
        .with_client(async move |c| {
            c.execute(ins, &[&u, &f]).await?;
            c.execute("SELECT 1/0", &[]).await?;
            Ok(())
        })
        .await;
    assert!(r.is_err());
    let g = foreign.clone();
    let other = uuid::Uuid::new_v4();
    let r = db
        .as_user(u)
        .with_client(async move |c| {
            c.execute(ins, &[&other, &g]).await?;
            Ok(())
        })
        .await;
    assert!(
        r.is_err(),
        "the insert policy refuses another user's row: {r:?}"
    );
    assert_eq!(count_named(&url, &ok).await, 1);
    assert_eq!(count_named(&url, &failed).await, 0);
    assert_eq!(count_named(&url, &foreign).await, 0);
}

/// Futures of the transaction's raw paths cross tasks (Send), scoped and savepoint ones
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_paths_inside_scoped_transactions_and_savepoints_are_send() {
    let (db, _url) = db_and_url().await;
    let u = uuid::Uuid::new_v4();
    let scoped = db
        .as_claims(serde_json::json!({"sub": u.to_string(), "role": "authenticated"}))
        .expect("attack setup");
    let n = tokio::spawn(async move {
        scoped
            .transaction(move |tx| async move {
                let t = tx.clone();
                let a = tokio::spawn(async move {
                    t.execute_batch("SELECT 1").await?;
                    t.invalidate_tag("x").await;
                    t.invalidate_table::<CProfile>().await;
                    let r = t.sql_rows("SELECT 1::int8", &[]).await?;
                    let p: Vec<Profile> = t.sql("SELECT * FROM profiles", &[]).await?;
                    Ok::<_, Error>(r.len() + p.len())
                })
                .await
                .expect("attack setup")?;
                let t = tx.clone();
                let b = tokio::spawn(async move {
                    t.transaction(|sp| async move {
                        let s = sp.clone();
                        tokio::spawn(async move {
                            s.with_client(async |c| Ok(c.execute("SELECT 1", &[]).await?))
                                .await
                        })
                        .await
                        .expect("attack setup")
                    })
                    .await
                })
                .await
                .expect("attack setup")?;
                Ok(a as u64 + b)
            })
            .await
    })
    .await
    .expect("attack setup")
    .expect("attack setup");
    assert_eq!(n, 2);
}
