//! Round 29: an outside attack on the fixes of round 28 (abandoning a transaction, the
//! statement canceller, the nested-transaction-still-open rule, the error classes of a
//! lost answer). Each `defect_*` test failed on the code it attacked, 3 of 3 runs, and
//! passes since its fix; the others held when written.

mod common;

use common::fixtures::{raw, uniq};
use common::tx::{
    CProfile, NewCProfile, Slot, avatar_in_db, cache_for_test, count_named, patch, row_is_free,
    slot, take,
};

use std::sync::Arc;
use std::time::Duration;

use common::{Profile, db_and_url, new_profile};
use futures_util::StreamExt;
use tabula::{Db, DbConfig, Error};

/// Sessions of this test's database (other than `watcher`'s own) in `state`.
async fn sessions(watcher: &tokio_postgres::Client, state: Option<&str>) -> i64 {
    let sql = match state {
        Some(_) => {
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state = $1"
        }
        None => {
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND $1::text IS NULL"
        }
    };
    watcher
        .query_one(sql, &[&state])
        .await
        .expect("activity")
        .get(0)
}

// ---- 1. COMMIT queued behind a stream that a clone opens after the body returned ----------

/// `TxHandle::take` (conn.rs): "Waits for a statement in flight (bounded by its deadline),
/// never for a stream or a `with_client` body that outlived the transaction's body".
/// README: "a stream or raw body of a spawned task that still holds the connection when
/// the body returns makes it `Misuse` too". A clone's statement holds the connection when
/// the body returns; a second clone's `stream()` is already queued on it. `take` checks
/// the stream/raw marks once, before queueing: it then waits behind the stream, which
/// its task keeps until it hears how the transaction ended — the transaction never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_commit_waits_for_ever_behind_a_stream_queued_when_the_body_returned() {
    let (_d, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(2)
            .statement_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("attack setup");
    db.create(new_profile(&uniq("q1")))
        .await
        .expect("attack setup");
    let name = uniq("queued");
    let (told_tx, told_rx) = tokio::sync::oneshot::channel::<()>();
    let told = slot(told_rx);
    let streamer: Slot<tokio::task::JoinHandle<tabula::Result<usize>>> =
        Arc::new(std::sync::Mutex::new(None));
    let st = streamer.clone();
    let n2 = name.clone();
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        db.transaction(move |tx| {
            let (told, st, name) = (told.clone(), st.clone(), n2.clone());
            async move {
                tx.create(new_profile(&name)).await?;
                // A clone's slow statement holds the connection.
                let slow = tx.clone();
                tokio::spawn(async move { slow.sql_rows("SELECT pg_sleep(1.5)", &[]).await });
                tokio::time::sleep(Duration::from_millis(400)).await;
                // Another clone asks for a stream: it queues on the connection.
                let s = tx.clone();
                let told = take(&told);
                let task = tokio::spawn(async move {
                    let mut rows = s.query::<Profile>().stream().await?;
                    let mut n = 0;
                    if rows.next().await.is_some() {
                        n += 1;
                    }
                    // Kept until the caller has the transaction's outcome.
                    let _ = tokio::time::timeout(Duration::from_secs(60), told).await;
                    drop(rows);
                    Ok(n)
                });
                *st.lock().expect("lock") = Some(task);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            }
        }),
    )
    .await;
    let waited = started.elapsed();
    let _ = told_tx.send(());
    let task = streamer.lock().expect("lock").take().expect("attack setup");
    let streamed = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(
        outcome.is_ok(),
        "the transaction did not end within {waited:?}: its COMMIT waits behind a stream a \
         clone opened after the body returned (the stream's task: {streamed:?})"
    );
}

// ---- 2. a scoped one-shot write whose COMMIT landed is a transient Timeout ---------------

/// Adds, on the test's database, a BEFORE UPDATE trigger and a deferred constraint
/// trigger that sleep `before` and `at_commit` seconds for rows whose avatar becomes
/// 'slow': the UPDATE is slow, and so is its COMMIT.
async fn slow_update_and_commit(url: &str, before: f64, at_commit: f64) {
    raw(url)
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION r29_slow_before() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.avatar_url = 'slow' THEN PERFORM pg_sleep({before}); END IF; RETURN NEW; END $$; \
             CREATE FUNCTION r29_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.avatar_url = 'slow' THEN PERFORM pg_sleep({at_commit}); END IF; RETURN NULL; END $$; \
             CREATE TRIGGER r29_before BEFORE UPDATE ON profiles FOR EACH ROW EXECUTE FUNCTION r29_slow_before(); \
             CREATE CONSTRAINT TRIGGER r29_commit AFTER UPDATE ON profiles DEFERRABLE INITIALLY DEFERRED \
             FOR EACH ROW EXECUTE FUNCTION r29_slow_commit();"
        ))
        .await
        .expect("triggers");
}

/// Waits until a session of the test's database runs COMMIT, then cuts the proxy's
/// replies.
async fn cut_during_commit(url: &str, proxy: &common::Proxy) -> bool {
    let watcher = raw(url).await;
    for _ in 0..1000 {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND state = 'active' AND query = 'COMMIT'",
                &[],
            )
            .await
            .expect("attack setup")
            .get(0);
        if n > 0 {
            proxy.cut_replies();
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// README, "What a failure means": "`Error::Timeout` means *nothing happened* and is safe
/// to retry (`is_transient()`)", and "never reports as failed (or retryable) a write that
/// may have landed". A user-scoped update (`db.as_user(u).update(..)`, no transaction of
/// the caller's) runs in a one-shot transaction of its own; its COMMIT reaches the server
/// and commits, and the answer is lost. The call reports `Timeout` — transient — and the
/// row's cache entry is left stale (a failure "touched nothing"), though the update is
/// committed. (`Timed` counts a scoped call as inside a transaction, `alone = false`,
/// while the one-shot transaction's COMMIT runs under the same deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_scoped_update_whose_commit_landed_is_a_transient_timeout_and_leaves_the_cache_stale()
 {
    let (_d, url) = db_and_url().await;
    slow_update_and_commit(&url, 0.5, 0.6).await;
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let via = Db::connect_with(
        DbConfig::new(common::through(&url, proxy.port))
            .pool_size(1)
            .statement_timeout(Duration::from_secs(2))
            .cache(cache_for_test()),
    )
    .await
    .expect("attack setup");
    let u = uuid::Uuid::new_v4();
    let p = via
        .create(NewCProfile {
            user_id: u,
            username: uniq("scoped"),
            avatar_url: Some("old".into()),
        })
        .await
        .expect("attack setup");
    assert_eq!(
        via.read::<CProfile>(p.id)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .avatar_url
            .as_deref(),
        Some("old")
    );
    let scoped = via.as_user(u);
    let (result, cut) = tokio::join!(
        scoped.update::<CProfile>(p.id, patch("slow")),
        cut_during_commit(&url, &proxy)
    );
    assert!(cut, "COMMIT was seen running");
    let in_db = avatar_in_db(&url, p.id).await;
    assert_eq!(
        in_db.as_deref(),
        Some("slow"),
        "the server committed the update ({result:?})"
    );
    let err = result.expect_err("the answer was lost");
    let cached = via
        .read::<CProfile>(p.id)
        .await
        .expect("attack setup")
        .expect("attack setup")
        .avatar_url;
    assert!(
        !err.is_transient() && cached.as_deref() == Some("slow"),
        "a committed scoped update is reported {err:?} (transient: {}), and the cache serves \
         {cached:?} where PostgreSQL holds Some(\"slow\")",
        err.is_transient()
    );
}

/// Control for the above: the same update in a scoped transaction of the caller's is
/// resolved by the commit protocol (`Ok`, the cache follows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_transaction_whose_commit_answer_was_lost_is_resolved_ok() {
    let (_d, url) = db_and_url().await;
    slow_update_and_commit(&url, 0.5, 0.6).await;
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let via = Db::connect_with(
        DbConfig::new(common::through(&url, proxy.port))
            .pool_size(1)
            .statement_timeout(Duration::from_secs(2))
            .cache(cache_for_test()),
    )
    .await
    .expect("attack setup");
    let u = uuid::Uuid::new_v4();
    let p = via
        .create(NewCProfile {
            user_id: u,
            username: uniq("scoped-tx"),
            avatar_url: Some("old".into()),
        })
        .await
        .expect("attack setup");
    assert_eq!(
        via.read::<CProfile>(p.id)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .avatar_url
            .as_deref(),
        Some("old")
    );
    let id = p.id;
    let scoped = via.as_user(u);
    let (result, cut) = tokio::join!(
        scoped.transaction(move |tx| async move { tx.update::<CProfile>(id, patch("slow")).await }),
        cut_during_commit(&url, &proxy)
    );
    assert!(cut);
    assert_eq!(avatar_in_db(&url, p.id).await.as_deref(), Some("slow"));
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        via.read::<CProfile>(p.id)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .avatar_url
            .as_deref(),
        Some("slow")
    );
}

// ---- 3. a dropped transaction whose clone keeps an idle stream ---------------------------

/// README: "A panic in the body, or its future dropped, rolls it back at once, even while
/// a clone of its handle lives on in a spawned task (that clone is then refused, and a
/// statement it has running is cancelled so its locks go now)". The clone holds an open
/// stream (its rows already sent, nothing running): the cancel request finds nothing to
/// cancel, the connection stays with the stream, and the transaction's row lock stays
/// until the task drops the stream — not "at once".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_dropped_transaction_keeps_its_lock_while_a_clone_holds_an_idle_stream() {
    let (db, url) = db_and_url().await;
    let p = db
        .create(new_profile(&uniq("idle-stream")))
        .await
        .expect("attack setup");
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let s = (slot(opened_tx), slot(opened_rx), slot(release_rx));
    let id = p.id;
    let given_up = tokio::time::timeout(
        Duration::from_millis(2000),
        db.transaction(move |tx| {
            let s = s.clone();
            async move {
                tx.update::<Profile>(
                    id,
                    common::ProfilePatch::default().avatar_url(Some("tx".into())),
                )
                .await?;
                let h = tx.clone();
                let (opened_tx, release_rx) = (take(&s.0), take(&s.2));
                tokio::spawn(async move {
                    let mut rows = h.query::<Profile>().stream().await.expect("stream");
                    let _ = rows.next().await;
                    let _ = opened_tx.send(());
                    let _ = tokio::time::timeout(Duration::from_secs(30), release_rx).await;
                    drop(rows);
                });
                let _ = take(&s.1).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
        }),
    )
    .await;
    assert!(given_up.is_err(), "the caller gave up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let free = row_is_free(&url, id, Duration::from_secs(3)).await;
    let _ = release_tx.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(avatar_in_db(&url, id).await, None, "nothing of it was kept");
    assert!(
        free.is_ok(),
        "the transaction's future was dropped 3.3 s ago and its row is still locked (a clone \
         holds an open stream): {free:?}"
    );
}

/// The same with a clone's `with_client` body between two statements (its first
/// statement done, the body awaiting something else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_panicking_transaction_keeps_its_lock_while_a_clones_raw_body_waits() {
    let (db, url) = db_and_url().await;
    let p = db
        .create(new_profile(&uniq("idle-raw")))
        .await
        .expect("attack setup");
    let (inside_tx, inside_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let s = (slot(inside_tx), slot(inside_rx), slot(release_rx));
    let id = p.id;
    let db2 = db.clone();
    let panicked = tokio::spawn(async move {
        db2.transaction(move |tx| {
            let s = s.clone();
            async move {
                tx.update::<Profile>(
                    id,
                    common::ProfilePatch::default().avatar_url(Some("tx".into())),
                )
                .await?;
                let h = tx.clone();
                let (inside_tx, release_rx) = (take(&s.0), take(&s.2));
                tokio::spawn(async move {
                    let _ = h
                        .with_client(async move |c| {
                            c.execute("SELECT 1", &[]).await?;
                            let _ = inside_tx.send(());
                            let _ = tokio::time::timeout(Duration::from_secs(30), release_rx).await;
                            Ok(())
                        })
                        .await;
                });
                let _ = take(&s.1).await;
                if !tx.in_transaction() {
                    return Ok(());
                }
                panic!("the body panics");
            }
        })
        .await
    })
    .await;
    assert!(panicked.expect_err("attack setup").is_panic());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let free = row_is_free(&url, id, Duration::from_secs(3)).await;
    let _ = release_tx.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(avatar_in_db(&url, id).await, None, "nothing of it was kept");
    assert!(
        free.is_ok(),
        "the transaction's body panicked 3.3 s ago and its row is still locked (a clone's raw \
         body holds the connection between statements): {free:?}"
    );
}

// ---- 4. the canceller never reaches another caller ---------------------------------------

/// A pool of one: transactions abandoned in each of the ways that send a cancel request
/// (dropped with a clone's stream open, ended with a clone's raw body still running, a
/// clone's statement waiting on a lock when the body panics), the holder letting go at
/// once; the next caller's statement on the same pool is never cancelled (57014).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_of_an_abandoned_transaction_never_hits_the_next_callers_statement() {
    let (_d, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(1)
            .checkout_timeout(Duration::from_secs(10))
            .statement_timeout(Duration::from_secs(10)),
    )
    .await
    .expect("attack setup");
    let p = db
        .create(new_profile(&uniq("cx")))
        .await
        .expect("attack setup");
    let id = p.id;
    for round in 0..12u32 {
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let s = (slot(held_tx), slot(held_rx));
        let way = round % 3;
        let body = db.transaction(move |tx| {
            let s = s.clone();
            async move {
                tx.update::<Profile>(
                    id,
                    common::ProfilePatch::default().avatar_url(Some("t".into())),
                )
                .await?;
                let h = tx.clone();
                let held_tx = take(&s.0);
                match way {
                    0 => {
                        tokio::spawn(async move {
                            let mut rows = h.query::<Profile>().stream().await.expect("stream");
                            let _ = rows.next().await;
                            let _ = held_tx.send(());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        });
                        let _ = take(&s.1).await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    1 => {
                        tokio::spawn(async move {
                            let _ = h
                                .with_client(async move |c| {
                                    let _ = held_tx.send(());
                                    c.execute("SELECT pg_sleep(0.05)", &[]).await?;
                                    Ok(())
                                })
                                .await;
                        });
                        let _ = take(&s.1).await;
                    }
                    _ => {
                        tokio::spawn(async move {
                            let _ = held_tx.send(());
                            let _ = h.sql_rows("SELECT pg_sleep(0.05)", &[]).await;
                        });
                        let _ = take(&s.1).await;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
                Ok(())
            }
        });
        let _ = tokio::time::timeout(Duration::from_millis(800), body).await;
        // The next caller, at once, on the pool's one connection slot.
        let innocent = db.sql_rows("SELECT pg_sleep(0.4), 1::int8", &[]).await;
        assert!(
            innocent.is_ok(),
            "round {round} (way {way}): another caller's statement failed: {innocent:?}"
        );
        let w = db
            .update::<Profile>(id, common::ProfilePatch::default().avatar_url(None))
            .await;
        assert!(w.is_ok(), "round {round}: {w:?}");
    }
    assert_eq!(avatar_in_db(&url, id).await, None);
}

// ---- 5. the nested-transaction-still-open rule: no false positives -----------------------

/// Savepoints run by spawned tasks and awaited through their JoinHandles, several in
/// sequence, one on a clone of a clone, one whose future a `select!` dropped before it
/// started (never polled): the transaction commits what they released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_awaited_through_join_handles_are_not_taken_for_open_ones() {
    let (db, url) = db_and_url().await;
    let names: Vec<String> = (0..4).map(|i| uniq(&format!("jh{i}"))).collect();
    let n = names.clone();
    let r = db
        .transaction(move |tx| {
            let n = n.clone();
            async move {
                for name in n.iter().take(3) {
                    let t = tx.clone().clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        t.transaction(move |sp| {
                            let name = name.clone();
                            async move { sp.create(new_profile(&name)).await.map(|_| ()) }
                        })
                        .await
                    })
                    .await
                    .expect("joined")?;
                }
                // Built, never polled: nothing opens.
                let never = tx.transaction(|sp| async move { sp.query::<Profile>().count().await });
                drop(never);
                // Finishes on its task right before the body returns.
                let t = tx.clone();
                let last = n[3].clone();
                let h = tokio::spawn(async move {
                    t.transaction(move |sp| {
                        let last = last.clone();
                        async move { sp.create(new_profile(&last)).await.map(|_| ()) }
                    })
                    .await
                });
                h.await.expect("joined")?;
                Ok(())
            }
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    for name in &names {
        assert_eq!(count_named(&url, name).await, 1, "{name}");
    }
}

/// A savepoint whose future a `select!` dropped half-way (its body waiting): the
/// transaction can only roll back — never `Ok`, nothing kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_dropped_half_way_leaves_only_rollback() {
    let (db, url) = db_and_url().await;
    let (a, b) = (uniq("outer"), uniq("inner"));
    let (a2, b2) = (a.clone(), b.clone());
    let r = db
        .transaction(move |tx| {
            let (a, b) = (a2.clone(), b2.clone());
            async move {
                tx.create(new_profile(&a)).await?;
                let sp = tx.transaction(move |sp| {
                    let b = b.clone();
                    async move {
                        sp.create(new_profile(&b)).await?;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(())
                    }
                });
                let gave_up = tokio::time::timeout(Duration::from_millis(300), sp).await;
                assert!(gave_up.is_err());
                Ok(())
            }
        })
        .await;
    assert!(matches!(r, Err(Error::TransactionAborted { .. })), "{r:?}");
    assert_eq!(count_named(&url, &a).await, 0);
    assert_eq!(count_named(&url, &b).await, 0);
}

// ---- 6. a future dropped while COMMIT is in flight ----------------------------------------

/// COMMIT runs in a task of its own: the caller dropping its future while COMMIT is on
/// the server (a deferred trigger makes it last) changes nothing — the update commits
/// and the cache answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_during_its_commit_still_commits_and_invalidates() {
    let (_d, url) = db_and_url().await;
    slow_update_and_commit(&url, 0.0, 0.8).await;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(2)
            .statement_timeout(Duration::from_secs(5))
            .cache(cache_for_test()),
    )
    .await
    .expect("attack setup");
    for round in 0..3 {
        let p = db
            .create(NewCProfile {
                user_id: uuid::Uuid::new_v4(),
                username: uniq("dc"),
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
        let id = p.id;
        let watcher = raw(&url).await;
        let fut =
            db.transaction(move |tx| async move { tx.update::<CProfile>(id, patch("slow")).await });
        let seen = async {
            loop {
                let n: i64 = watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                         AND pid <> pg_backend_pid() AND state = 'active' AND query = 'COMMIT'",
                        &[],
                    )
                    .await
                    .expect("attack setup")
                    .get(0);
                if n > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            r = fut => panic!("round {round}: ended before COMMIT was seen: {r:?}"),
            _ = seen => {}
        }
        // Dropped: COMMIT is on the server.
        let mut last = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let cached = db
                .read::<CProfile>(id)
                .await
                .expect("attack setup")
                .expect("attack setup")
                .avatar_url;
            if cached.as_deref() == Some("slow") {
                last = cached;
                break;
            }
            last = cached;
        }
        assert_eq!(
            avatar_in_db(&url, id).await.as_deref(),
            Some("slow"),
            "round {round}"
        );
        assert_eq!(
            last.as_deref(),
            Some("slow"),
            "round {round}: the cache is stale"
        );
    }
}

// ---- 7. leaks over many transactions ending in the new ways ------------------------------

/// 200 transactions ending as: a stream returned, a panic with a clone alive, a nested
/// transaction still open, the future dropped, a clone's stream held past the body.
/// Afterwards no session of the database is idle in a transaction, there are no more
/// sessions than the pool's size, and every pooled connection is usable at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_transactions_ending_the_new_ways_leak_nothing() {
    let (_d, url) = db_and_url().await;
    let pool = 3u32;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(pool)
            .checkout_timeout(Duration::from_secs(10))
            .statement_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("attack setup");
    let watcher = raw(&url).await;
    // The test kit's own handle keeps a session of its own.
    let baseline = sessions(&watcher, None).await;
    let p = db
        .create(new_profile(&uniq("leak")))
        .await
        .expect("attack setup");
    let id = p.id;
    let mut max_sessions = 0;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..200u32 {
        let way = i % 5;
        let db2 = db.clone();
        let run = tokio::spawn(async move {
            let fut = db2.transaction(move |tx| async move {
                tx.update::<Profile>(
                    id,
                    common::ProfilePatch::default().avatar_url(Some(format!("{i}"))),
                )
                .await?;
                match way {
                    0 => {
                        let rows = tx.query::<Profile>().stream().await?;
                        Ok(Some(rows))
                    }
                    1 => {
                        let h = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            let _ = h.query::<Profile>().count().await;
                        });
                        panic!("way 1 panics");
                    }
                    2 => {
                        let h = tx.clone();
                        tokio::spawn(async move {
                            h.transaction(|sp| async move {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                sp.query::<Profile>().count().await
                            })
                            .await
                        });
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok(None)
                    }
                    3 => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(None)
                    }
                    _ => {
                        let h = tx.clone();
                        let (o_tx, o_rx) = tokio::sync::oneshot::channel::<()>();
                        tokio::spawn(async move {
                            let mut rows = h.query::<Profile>().stream().await.expect("stream");
                            let _ = rows.next().await;
                            let _ = o_tx.send(());
                            tokio::time::sleep(Duration::from_millis(40)).await;
                        });
                        let _ = o_rx.await;
                        Ok(None)
                    }
                }
            });
            match tokio::time::timeout(Duration::from_millis(150), fut).await {
                Ok(Ok(_)) => "ok".to_owned(),
                Ok(Err(e)) => format!("{e:?}")
                    .split(['(', ' ', '{'])
                    .next()
                    .expect("attack setup")
                    .to_owned(),
                Err(_) => "dropped".to_owned(),
            }
        })
        .await;
        let key = match run {
            Ok(k) => format!("way{way}:{k}"),
            Err(e) if e.is_panic() => format!("way{way}:panic"),
            Err(e) => format!("way{way}:{e}"),
        };
        *outcomes.entry(key).or_default() += 1;
        let n = sessions(&watcher, None).await - baseline;
        max_sessions = max_sessions.max(n);
    }
    eprintln!("outcomes: {outcomes:?}");
    assert!(
        !outcomes.keys().any(|k| k.ends_with(":ok")),
        "none of these may commit: {outcomes:?}"
    );
    let mut idle_in_tx = -1;
    for _ in 0..50 {
        idle_in_tx = sessions(&watcher, Some("idle in transaction")).await;
        if idle_in_tx == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(idle_in_tx, 0, "sessions left idle in a transaction");
    assert!(
        max_sessions <= i64::from(pool) + 1,
        "up to {max_sessions} sessions for a pool of {pool}"
    );
    assert_eq!(avatar_in_db(&url, id).await, None, "none of them committed");
    let barrier = Arc::new(tokio::sync::Barrier::new(pool as usize));
    let mut held = Vec::new();
    for _ in 0..pool {
        let (db, barrier) = (db.clone(), barrier.clone());
        held.push(tokio::spawn(async move {
            db.transaction(move |tx| {
                let barrier = barrier.clone();
                async move {
                    tx.query::<Profile>().count().await?;
                    barrier.wait().await;
                    Ok(())
                }
            })
            .await
        }));
    }
    for h in held {
        tokio::time::timeout(Duration::from_secs(15), h)
            .await
            .expect("bounded")
            .expect("attack setup")
            .expect("a pooled connection was lost");
    }
    let mut after = 0;
    for _ in 0..50 {
        after = sessions(&watcher, None).await - baseline;
        if after <= i64::from(pool) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detail: Vec<String> = watcher
        .query(
            "SELECT coalesce(state, '-') || ' | ' || query || ' | ' || \
             (now() - coalesce(state_change, backend_start))::text FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type = 'client backend'",
            &[],
        )
        .await
        .expect("attack setup")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        after <= i64::from(pool),
        "{after} sessions for a pool of {pool} 5 s on: {detail:#?}"
    );
}

// ---- 8. futures cross tasks ---------------------------------------------------------------

fn is_send<T: Send>(t: T) -> T {
    t
}

/// Scoped one-shot writes, bulk writes and streams, and nested transactions of scoped
/// transactions, are `Send` futures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_one_shot_and_nested_futures_are_send() {
    let (db, url) = db_and_url().await;
    let u = uuid::Uuid::new_v4();
    let scoped = db.as_user(u);
    let s2 = scoped.clone();
    let name = uniq("send");
    let n2 = name.clone();
    let made = tokio::spawn(is_send(async move {
        let p = s2
            .create(common::NewProfile {
                user_id: u,
                username: n2.clone(),
                avatar_url: None,
            })
            .await?;
        s2.create_many(vec![common::NewProfile {
            user_id: u,
            username: format!("{n2}-b"),
            avatar_url: None,
        }])
        .await?;
        s2.update::<Profile>(
            p.id,
            common::ProfilePatch::default().avatar_url(Some("x".into())),
        )
        .await?;
        s2.with_client(async |c| Ok(c.execute("SELECT 1", &[]).await?))
            .await?;
        let n = s2
            .transaction_with(tabula::Isolation::RepeatableRead, move |tx| async move {
                let t = tx.clone();
                let inner = tokio::spawn(is_send(async move {
                    t.transaction(|sp| async move {
                        let mut rows = sp.query::<Profile>().stream().await?;
                        let mut n = 0;
                        while let Some(r) = rows.next().await {
                            r?;
                            n += 1;
                        }
                        Ok(n)
                    })
                    .await
                }))
                .await
                .expect("attack setup")?;
                Ok(inner)
            })
            .await?;
        Ok::<_, Error>(n)
    }))
    .await
    .expect("attack setup")
    .expect("attack setup");
    assert_eq!(made, 2);
    assert_eq!(count_named(&url, &name).await, 1);
}

// ---- 9. a stream opened on a silent network ----------------------------------------------

/// README, "Deadlines are the server's": "If no answer comes even a grace period later
/// (a silent network) … the statement is cancelled, its connection closed". `stream()`
/// runs its statement outside that deadline: with the server's answers lost, opening the
/// stream never returns (10 s for a deadline of 1 s + 0.5 s grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_opening_a_stream_on_a_silent_connection_never_returns() {
    let (_d, url) = db_and_url().await;
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let via = Db::connect_with(
        DbConfig::new(common::through(&url, proxy.port))
            .pool_size(1)
            .statement_timeout(Duration::from_secs(1)),
    )
    .await
    .expect("attack setup");
    via.create(new_profile(&uniq("silent")))
        .await
        .expect("attack setup");
    // Prepared and counted once: the connection is warm.
    let warm: Vec<_> = via
        .query::<Profile>()
        .stream()
        .await
        .expect("attack setup")
        .collect()
        .await;
    assert_eq!(warm.len(), 1);
    proxy.cut_replies();
    let started = std::time::Instant::now();
    let opened = tokio::time::timeout(Duration::from_secs(10), async {
        via.query::<Profile>().stream().await.map(|_| ())
    })
    .await;
    assert!(
        opened.is_ok(),
        "stream() on a connection whose answers are lost did not return within {:?} \
         (statement deadline 1 s, grace 0.5 s)",
        started.elapsed()
    );
}

/// Control: a read on the same silent connection is a `Timeout` within deadline and grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_silent_connection_is_a_timeout_not_outcome_unknown() {
    let (_d, url) = db_and_url().await;
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let via = Db::connect_with(
        DbConfig::new(common::through(&url, proxy.port))
            .pool_size(1)
            .statement_timeout(Duration::from_secs(1)),
    )
    .await
    .expect("attack setup");
    via.create(new_profile(&uniq("silent-read")))
        .await
        .expect("attack setup");
    assert_eq!(
        via.query::<Profile>().count().await.expect("attack setup"),
        1
    );
    proxy.cut_replies();
    let r = tokio::time::timeout(Duration::from_secs(10), via.query::<Profile>().count()).await;
    assert!(matches!(r, Ok(Err(Error::Timeout { .. }))), "{r:?}");
}

// ---- 10. a panic after a savepoint, a scoped raw body cancelled by the server -------------

/// A savepoint released, then the body panics: nothing of the transaction is kept, and
/// the row the savepoint wrote is not locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_after_a_released_savepoint_keeps_nothing() {
    let (db, url) = db_and_url().await;
    let (a, b) = (uniq("pa"), uniq("pb"));
    let (a2, b2) = (a.clone(), b.clone());
    let db2 = db.clone();
    let r = tokio::spawn(async move {
        db2.transaction(move |tx| {
            let (a, b) = (a2.clone(), b2.clone());
            async move {
                tx.create(new_profile(&a)).await?;
                tx.transaction(move |sp| {
                    let b = b.clone();
                    async move { sp.create(new_profile(&b)).await.map(|_| ()) }
                })
                .await?;
                if !a.is_empty() {
                    panic!("after the savepoint");
                }
                Ok(())
            }
        })
        .await
    })
    .await;
    assert!(r.expect_err("attack setup").is_panic());
    assert_eq!(count_named(&url, &a).await, 0);
    assert_eq!(count_named(&url, &b).await, 0);
    // The unique names are free again at once (no lock on the index entries).
    db.create(new_profile(&b)).await.expect("attack setup");
}

/// A scoped `with_client` body that wrote and then ran into the server's deadline: its
/// one-shot transaction rolled back, so `Timeout` (transient) is true — nothing kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_raw_body_cancelled_by_the_server_is_a_timeout_and_keeps_nothing() {
    let (_d, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(&url).statement_timeout(Duration::from_millis(400)))
        .await
        .expect("attack setup");
    let u = uuid::Uuid::new_v4();
    let name = uniq("scoped-raw");
    let n2 = name.clone();
    let r = db
        .as_user(u)
        .with_client(async move |c| {
            c.execute(
                "INSERT INTO profiles (user_id, username) VALUES ($1, $2)",
                &[&u, &n2],
            )
            .await?;
            c.execute("SELECT pg_sleep(2)", &[]).await?;
            Ok(())
        })
        .await;
    assert_eq!(count_named(&url, &name).await, 0);
    let e = r.expect_err("cancelled");
    assert!(
        matches!(e, Error::Timeout { .. }) && e.is_transient(),
        "{e:?}"
    );
}
