//! Round 27 (an outside attack on transactions, the read hot path and hostile query
//! input). Each `defect_*` test failed on the code it attacked, 3 of 3 runs, and passes
//! since its fix; the others held when written.

mod common;

use common::fixtures::{raw, uniq};
use common::tx::{CProfile, CProfilePatch, NewCProfile, count_named};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{NewProfile, Profile, db_and_url, new_profile};
use futures_util::StreamExt;
use tabula::{Db, DbConfig, Error};

async fn short_deadline(url: &str, deadline: Duration) -> Db {
    Db::connect_with(DbConfig::new(url).statement_timeout(deadline))
        .await
        .expect("db with a short deadline")
}

// ---- 1. lost COMMIT when the transaction wrote only through the raw client ----------

/// The commit protocol learns the transaction id "in the same round trip as its first
/// write" — but a write made through `with_client` inside the transaction carries no
/// probe. When the connection dies before COMMIT, `resolve_lost_commit` finds no xid
/// and answers `Ok(())` ("the transaction never wrote") although it did, and nothing
/// was kept.
#[tokio::test]
async fn defect_raw_write_only_transaction_killed_before_commit_is_reported_ok() {
    let (db, url) = db_and_url().await;
    let killer = Arc::new(raw(&url).await);
    let name = uniq("rawonly");
    let n2 = name.clone();
    let result: tabula::Result<()> = db
        .transaction(move |tx| {
            let killer = killer.clone();
            let name = n2.clone();
            async move {
                let pid: i32 = tx
                    .with_client(async |c| {
                        c.execute(
                            "INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), $1)",
                            &[&name],
                        )
                        .await?;
                        Ok(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
                    })
                    .await?;
                killer
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .expect("terminate");
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            }
        })
        .await;
    let kept = count_named(&url, &name).await;
    assert_eq!(kept, 0, "the server aborted the transaction");
    assert!(
        result.is_err(),
        "Ok for a transaction whose only write (through with_client) was never kept"
    );
}

// ---- 2. a stream handed out of the transaction's body ---------------------------------

/// The stream holds the transaction's connection; the commit path then waits for the
/// connection for ever instead of failing with `Misuse` ("a statement … while a stream
/// from it is open, is `Error::Misuse` at once, not a deadlock").
#[tokio::test]
async fn defect_a_stream_returned_from_the_transaction_body_hangs_the_commit() {
    let (db, _url) = db_and_url().await;
    db.create(new_profile(&uniq("s"))).await.expect("seed");
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(|tx| async move { tx.query::<Profile>().stream().await }),
    )
    .await;
    let outcome =
        ended.expect("the transaction never ended: its COMMIT waits for the stream's connection");
    assert!(
        matches!(outcome, Err(Error::Misuse(_))),
        "a stream outliving its transaction's body is misuse, and the transaction rolls back: {:?}",
        outcome.map(|_| ())
    );
}

/// The same wait from the other side: `invalidate` inside the transaction while one of
/// its streams is open waits for the connection for ever (it is documented never to
/// fail, and statements there are `Misuse`).
#[tokio::test]
async fn defect_invalidate_while_a_stream_of_the_transaction_is_open_hangs() {
    let (db, _url) = db_and_url().await;
    let p = db.create(new_profile(&uniq("inv"))).await.expect("seed");
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(move |tx| async move {
            let mut rows = tx.query::<Profile>().stream().await?;
            let first = rows.next().await;
            tx.invalidate::<Profile>(&[p.id]).await;
            drop(rows);
            Ok(first.is_some())
        }),
    )
    .await;
    let outcome = ended.expect("invalidate waited for ever for the stream's connection");
    assert!(matches!(outcome, Ok(true)), "{outcome:?}");
}

/// And inside the transaction's own `with_client` body — the place where a raw write
/// is made and, as the docs of `invalidate` show, then invalidated by hand.
#[tokio::test]
async fn defect_invalidate_inside_the_transactions_with_client_body_deadlocks() {
    let (db, _url) = db_and_url().await;
    let p = db.create(new_profile(&uniq("inv2"))).await.expect("seed");
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(move |tx| async move {
            let tx2 = tx.clone();
            tx.with_client(async move |c| {
                c.execute(
                    "UPDATE profiles SET avatar_url = 'x' WHERE id = $1",
                    &[&p.id],
                )
                .await?;
                tx2.invalidate::<Profile>(&[p.id]).await;
                Ok(())
            })
            .await
        }),
    )
    .await;
    let outcome = ended.expect("invalidate inside with_client deadlocked the transaction");
    assert!(outcome.is_ok(), "{outcome:?}");
}

// ---- 3. Timeout ("nothing happened") for a with_client body that wrote --------------

/// `Error::Timeout` is documented as "nothing happened, safe to retry". A
/// `with_client` body whose first statement committed (autocommit) and whose second hit
/// the server's deadline is reported as `Error::Timeout` — a retry inserts again.
#[tokio::test]
async fn defect_with_client_body_that_wrote_then_timed_out_is_reported_as_timeout() {
    let (_db, url) = db_and_url().await;
    let db = short_deadline(&url, Duration::from_millis(300)).await;
    let name = uniq("rawto");
    let n2 = name.clone();
    let result = db
        .with_client(async move |c| {
            c.execute(
                "INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), $1)",
                &[&n2],
            )
            .await?;
            c.execute("SELECT pg_sleep(2)", &[]).await?;
            Ok(())
        })
        .await;
    let kept = count_named(&url, &name).await;
    assert_eq!(kept, 1, "the first statement committed");
    let err = result.expect_err("the body failed");
    assert!(
        !(matches!(err, Error::Timeout { .. }) && err.is_transient()),
        "reported as a transient Timeout (\"nothing happened, safe to retry\") although a \
         row was written: {err:?}"
    );
}

// ---- 4. a panicking body whose handle lives on in a spawned task ---------------------

/// "commit, or roll back on Err / panic": a body that gave a clone of its handle to a
/// spawned task and then panicked leaves the transaction open — locks held — for as
/// long as that task keeps the clone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_panicking_body_with_a_spawned_handle_keeps_its_locks() {
    let (db, url) = db_and_url().await;
    let p = db.create(new_profile(&uniq("lock"))).await.expect("seed");
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    let hold_rx = Arc::new(std::sync::Mutex::new(Some(hold_rx)));
    let db2 = db.clone();
    let outcome = tokio::spawn(async move {
        db2.transaction(move |tx| {
            let hold_rx = hold_rx.clone();
            async move {
                tx.update::<Profile>(
                    p.id,
                    common::ProfilePatch::default().avatar_url(Some("locked".into())),
                )
                .await?;
                let keep = tx.clone();
                let rx = hold_rx.lock().expect("lock").take();
                tokio::spawn(async move {
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    drop(keep);
                });
                panic!("the body panics");
                #[allow(unreachable_code)]
                Ok::<(), Error>(())
            }
        })
        .await
    })
    .await;
    assert!(outcome.is_err(), "the panic propagated");
    // Another session tries to lock the row the panicked transaction updated.
    let other = raw(&url).await;
    other
        .batch_execute("SET lock_timeout = '2s'")
        .await
        .expect("set");
    let locked = other
        .execute(
            "UPDATE profiles SET avatar_url = 'other' WHERE id = $1",
            &[&p.id],
        )
        .await;
    drop(hold_tx);
    assert!(
        locked.is_ok(),
        "the row is still locked by a transaction whose body panicked: {locked:?}"
    );
}

// ---- 5. a user-scoped handle made from a transaction's handle -----------------------

/// `tx.as_user(u)` inside a transaction: its statements run in a transaction of their
/// own, outside `tx` — a rollback of `tx` leaves them committed.
#[tokio::test]
async fn defect_as_user_on_a_transaction_handle_escapes_the_transaction() {
    let (db, url) = db_and_url().await;
    let user = uuid::Uuid::new_v4();
    let name = uniq("escape");
    let n2 = name.clone();
    let result: tabula::Result<()> = db
        .transaction(move |tx| {
            let name = n2.clone();
            async move {
                tx.as_user(user)
                    .create(NewProfile {
                        user_id: user,
                        username: name,
                        avatar_url: None,
                    })
                    .await?;
                Err(Error::Validation("roll the transaction back".into()))
            }
        })
        .await;
    assert!(result.is_err());
    assert_eq!(
        count_named(&url, &name).await,
        0,
        "a write made inside the transaction survived its rollback"
    );
}

// ---- 6. an autocommit write whose connection closed after the server committed -------

/// The username the handle reads for `id` (through its row cache).
async fn cached_name(db: &Db, id: uuid::Uuid) -> String {
    db.read::<CProfile>(id)
        .await
        .expect("read")
        .expect("the row exists")
        .username
}

mod net {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A proxy that, once armed, lets the next request of each open connection reach
    /// the server, swallows the server's answer and closes the client's socket: the
    /// server did the work, the client sees a closed connection.
    pub(crate) struct CloseAfterAnswer {
        pub(crate) port: u16,
        links: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
    }

    impl CloseAfterAnswer {
        pub(crate) async fn start(target: std::net::SocketAddr) -> CloseAfterAnswer {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let links: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Default::default();
            let registry = links.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        continue;
                    };
                    let armed = Arc::new(AtomicBool::new(false));
                    registry.lock().expect("lock").push(armed.clone());
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = sr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if armed.load(Ordering::SeqCst) {
                                let _ = cw.shutdown().await;
                                break;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            CloseAfterAnswer { port, links }
        }

        pub(crate) fn arm(&self) {
            for link in self.links.lock().expect("lock").iter() {
                link.store(true, Ordering::SeqCst);
            }
        }
    }
}

async fn cached_db_through(url: &str, port: u16) -> Db {
    let redis = tabula::testkit::redis_url().expect("redis");
    let cache = tabula::CacheService::redis(
        &redis,
        tabula::CacheConfig::default().prefix(uniq("c").replace('-', "x")),
    )
    .expect("cache");
    Db::connect_with(
        DbConfig::new(common::through(url, port))
            .pool_size(1)
            .statement_timeout(Duration::from_secs(2))
            .cache(cache),
    )
    .await
    .expect("db through the proxy")
}

/// "never reports as failed (or retryable) a write that may have landed": an UPDATE
/// the server committed, whose answer was lost with its connection, is
/// `Error::Connection` — `is_transient()` — and its row's cache entry is left as it
/// was (a write "known to have failed touched nothing").
#[tokio::test]
async fn defect_an_update_whose_connection_closed_after_commit_is_retryable_and_leaves_the_cache_stale()
 {
    let (db, url) = db_and_url().await;
    let proxy = net::CloseAfterAnswer::start(common::server_addr(&url)).await;
    let via = cached_db_through(&url, proxy.port).await;
    let p = via
        .create(NewCProfile {
            user_id: uuid::Uuid::new_v4(),
            username: uniq("lost"),
            avatar_url: Some("old".into()),
        })
        .await
        .expect("create");
    // Prepares the UPDATE on the one connection, and caches the row as it is after it.
    via.update::<CProfile>(
        p.id,
        CProfilePatch::default().avatar_url(Some("old".into())),
    )
    .await
    .expect("first update");
    let cached = via
        .read::<CProfile>(p.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(cached.avatar_url.as_deref(), Some("old"));
    proxy.arm();
    let result = via
        .update::<CProfile>(
            p.id,
            CProfilePatch::default().avatar_url(Some("new".into())),
        )
        .await;
    let in_db: Option<String> = raw(&url)
        .await
        .query_one("SELECT avatar_url FROM profiles WHERE id = $1", &[&p.id])
        .await
        .expect("row")
        .get(0);
    assert_eq!(
        in_db.as_deref(),
        Some("new"),
        "the server committed the update"
    );
    let err = result.expect_err("the answer was lost");
    let after = via
        .read::<CProfile>(p.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        after.avatar_url.as_deref(),
        Some("new"),
        "the cache still serves the row as it was before a committed update (error: {err:?})"
    );
    assert!(
        !err.is_transient(),
        "a write that landed is reported as transient (safe to retry): {err:?}"
    );
    drop(db);
}

// ---- 7. controls for the hangs above: the same bodies without the offending step ------

#[tokio::test]
async fn a_stream_read_to_its_end_inside_the_body_lets_the_transaction_commit() {
    let (db, _url) = db_and_url().await;
    db.create(new_profile(&uniq("s"))).await.expect("seed");
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(|tx| async move {
            let rows: Vec<_> = tx.query::<Profile>().stream().await?.collect().await;
            tx.create(new_profile(&uniq("after-stream"))).await?;
            Ok(rows.len())
        }),
    )
    .await
    .expect("ends")
    .expect("commits");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn invalidate_inside_a_transaction_outside_any_stream_or_raw_body_returns() {
    let (db, _url) = db_and_url().await;
    let p = db.create(new_profile(&uniq("inv3"))).await.expect("seed");
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(move |tx| async move {
            let rows: Vec<_> = tx.query::<Profile>().stream().await?.collect().await;
            tx.with_client(async |c| {
                c.execute(
                    "UPDATE profiles SET avatar_url = 'y' WHERE id = $1",
                    &[&p.id],
                )
                .await?;
                Ok(())
            })
            .await?;
            tx.invalidate::<Profile>(&[p.id]).await;
            Ok(rows.len())
        }),
    )
    .await;
    assert!(matches!(ended, Ok(Ok(1))), "{ended:?}");
}

// ---- 8. a nested transaction that reports Err while its writes are kept --------------

/// "A nested `transaction` is a savepoint: released on `Ok`, rolled back to on `Err`".
/// A nested body that returns a stream of its own handle: RELEASE is refused
/// (`Misuse`, the stream holds the connection), the nested call returns that error —
/// and the savepoint is neither released nor rolled back, so its write commits with
/// the outer transaction.
#[tokio::test]
async fn defect_a_nested_transaction_reported_as_failed_keeps_its_write() {
    let (db, url) = db_and_url().await;
    let name = uniq("nested-kept");
    let n2 = name.clone();
    let outcome = db
        .transaction(move |tx| {
            let name = n2.clone();
            async move {
                let nested = tx
                    .transaction(|sp| {
                        let name = name.clone();
                        async move {
                            sp.create(new_profile(&name)).await?;
                            sp.query::<Profile>().stream().await
                        }
                    })
                    .await;
                Ok(nested.map(|_| ()))
            }
        })
        .await;
    let nested = outcome.expect("the outer transaction commits");
    let kept = count_named(&url, &name).await;
    assert!(
        nested.is_ok() || kept == 0,
        "the nested transaction returned {nested:?}, yet its write was committed ({kept} row)"
    );
}

// ---- 9. a write from a spawned task that the commit overtakes -------------------------

/// A statement of the transaction that was already running when the body returned is
/// waited for and committed — but its cache invalidation is pushed after the commit
/// took the pending list, so the row cache keeps the row as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_spawned_write_committed_with_the_transaction_loses_its_invalidation() {
    let (_db, url) = db_and_url().await;
    let redis = tabula::testkit::redis_url().expect("redis");
    let cache = tabula::CacheService::redis(
        &redis,
        tabula::CacheConfig::default().prefix(uniq("c").replace('-', "x")),
    )
    .expect("cache");
    let db = Db::connect_with(DbConfig::new(&url).cache(cache))
        .await
        .expect("db");
    let p = db
        .create(NewCProfile {
            user_id: uuid::Uuid::new_v4(),
            username: uniq("spawned"),
            avatar_url: Some("before".into()),
        })
        .await
        .expect("create");
    assert_eq!(
        db.read::<CProfile>(p.id)
            .await
            .expect("attack setup")
            .expect("attack setup")
            .avatar_url
            .as_deref(),
        Some("before")
    );
    // A session of the test's own holds the row's lock, so the spawned UPDATE waits.
    let blocker = raw(&url).await;
    blocker.batch_execute("BEGIN").await.expect("attack setup");
    blocker
        .execute("SELECT 1 FROM profiles WHERE id = $1 FOR UPDATE", &[&p.id])
        .await
        .expect("attack setup");
    let watcher = raw(&url).await;
    let id = p.id;
    let db2 = db.clone();
    let url2 = url.clone();
    let tx_task = tokio::spawn(async move {
        db2.transaction(move |tx| {
            let url = url2.clone();
            async move {
                let t2 = tx.clone();
                let update = tokio::spawn(async move {
                    t2.update::<CProfile>(
                        id,
                        CProfilePatch::default().avatar_url(Some("after".into())),
                    )
                    .await
                });
                // The body returns once the spawned UPDATE waits on the row lock.
                let watcher = raw(&url).await;
                let mut waited = 0;
                loop {
                    let n: i64 = watcher
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                             AND query ILIKE '%update%'",
                            &[],
                        )
                        .await
                        .expect("attack setup")
                        .get(0);
                    if n > 0 {
                        break;
                    }
                    waited += 1;
                    assert!(waited < 500, "the spawned update never waited on the lock");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                drop(update);
                Ok(())
            }
        })
        .await
    });
    // The commit path is now queued behind the waiting UPDATE; let it through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.batch_execute("COMMIT").await.expect("attack setup");
    let committed = tokio::time::timeout(Duration::from_secs(10), tx_task)
        .await
        .expect("the transaction ends")
        .expect("no panic");
    let in_db: Option<String> = watcher
        .query_one("SELECT avatar_url FROM profiles WHERE id = $1", &[&id])
        .await
        .expect("attack setup")
        .get(0);
    if committed.is_ok() && in_db.as_deref() == Some("after") {
        let read = db
            .read::<CProfile>(id)
            .await
            .expect("attack setup")
            .expect("attack setup");
        assert_eq!(
            read.avatar_url.as_deref(),
            Some("after"),
            "the transaction returned Ok and PostgreSQL holds 'after', the cache serves 'before'"
        );
    } else {
        panic!("unexpected setup outcome: {committed:?}, in db {in_db:?}");
    }
}

// ---- 10. the read hot path under user scopes -------------------------------------------

fn owned(user: uuid::Uuid, name: &str) -> NewProfile {
    NewProfile {
        user_id: user,
        username: name.to_owned(),
        avatar_url: None,
    }
}

/// With one connection, reads alternate between two users and the service role; each
/// sees what its policy allows every time (after the first, statements are prepared
/// and the hot path would answer a read that had no setup pending).
#[tokio::test]
async fn scoped_reads_on_one_connection_never_run_with_another_scopes_rights() {
    let (_db, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(&url).pool_size(1))
        .await
        .expect("db");
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let pa = db.create(owned(a, &uniq("a"))).await.expect("attack setup");
    let pb = db.create(owned(b, &uniq("b"))).await.expect("attack setup");
    for round in 0..4 {
        let ua = db.as_user(a);
        assert_eq!(
            ua.read::<Profile>(pa.id)
                .await
                .expect("attack setup")
                .map(|p| p.id),
            Some(pa.id)
        );
        assert_eq!(
            ua.read::<Profile>(pb.id).await.expect("attack setup"),
            None,
            "round {round}"
        );
        assert_eq!(
            ua.query::<Profile>().count().await.expect("attack setup"),
            1,
            "round {round}"
        );
        assert_eq!(
            ua.read_many::<Profile>(&[pa.id, pb.id])
                .await
                .expect("attack setup")
                .into_iter()
                .flatten()
                .count(),
            1
        );
        assert_eq!(
            db.query::<Profile>().count().await.expect("attack setup"),
            2,
            "service role, round {round}"
        );
        assert_eq!(
            db.read::<Profile>(pb.id)
                .await
                .expect("attack setup")
                .map(|p| p.id),
            Some(pb.id)
        );
        assert_eq!(
            db.as_anon()
                .query::<Profile>()
                .count()
                .await
                .expect("attack setup"),
            0
        );
        let all = db
            .as_user(b)
            .query::<Profile>()
            .all()
            .await
            .expect("attack setup");
        assert_eq!(all.iter().map(|p| p.id).collect::<Vec<_>>(), [pb.id]);
        // A failing scoped read in between.
        let bad = db
            .as_user(a)
            .sql::<Profile>("SELECT * FROM profiles WHERE 1/0 = 1", &[])
            .await;
        assert!(bad.is_err());
        // A scoped read given up half-way.
        let _ = tokio::time::timeout(
            Duration::from_micros(50),
            db.as_user(a).query::<Profile>().all(),
        )
        .await;
    }
    // The one connection's session is the service role's again.
    let who: String = db
        .with_client(async |c| Ok(c.query_one("SELECT current_user::text", &[]).await?.get(0)))
        .await
        .expect("attack setup");
    assert!(!["authenticated", "anon"].contains(&who.as_str()), "{who}");
}

/// The same with a row cache: the service role fills the shared entry of b's row; a's
/// scoped read of it (hot path or cache) still answers the policy's `None`.
#[tokio::test]
async fn a_cached_row_filled_by_the_service_role_is_not_served_to_a_scope() {
    let (_db, url) = db_and_url().await;
    let redis = tabula::testkit::redis_url().expect("redis");
    let cache = tabula::CacheService::redis(
        &redis,
        tabula::CacheConfig::default().prefix(uniq("c").replace('-', "x")),
    )
    .expect("attack setup");
    let db = Db::connect_with(DbConfig::new(&url).pool_size(1).cache(cache))
        .await
        .expect("attack setup");
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let pb = db
        .create(NewCProfile {
            user_id: b,
            username: uniq("cb"),
            avatar_url: None,
        })
        .await
        .expect("attack setup");
    for _ in 0..3 {
        assert!(
            db.read::<CProfile>(pb.id)
                .await
                .expect("attack setup")
                .is_some()
        );
        assert_eq!(
            db.as_user(a)
                .read::<CProfile>(pb.id)
                .await
                .expect("attack setup"),
            None
        );
        assert!(
            db.as_user(b)
                .read::<CProfile>(pb.id)
                .await
                .expect("attack setup")
                .is_some()
        );
        assert_eq!(
            db.as_user(a)
                .query::<CProfile>()
                .cached(60)
                .count()
                .await
                .expect("attack setup"),
            0
        );
    }
}

// ---- 11. a read on the hot path stays bounded by the deadline on a silent network ----

#[tokio::test]
async fn a_prepared_read_on_a_silent_connection_times_out_within_deadline_and_grace() {
    let (db, url) = db_and_url().await;
    let p = db
        .create(new_profile(&uniq("silent")))
        .await
        .expect("attack setup");
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let via = Db::connect_with(
        DbConfig::new(common::through(&url, proxy.port))
            .pool_size(1)
            .statement_timeout(Duration::from_millis(300)),
    )
    .await
    .expect("attack setup");
    // Prepared on the one connection: the next read takes the hot path.
    for _ in 0..2 {
        assert!(
            via.read::<Profile>(p.id)
                .await
                .expect("attack setup")
                .is_some()
        );
    }
    proxy.cut_all();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), via.read::<Profile>(p.id))
        .await
        .expect("bounded");
    let took = started.elapsed();
    assert!(matches!(read, Err(Error::Timeout { .. })), "{read:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    // The scoped path too, on the connection opened since (its statements prepared).
    for _ in 0..2 {
        assert!(
            via.as_user(p.user_id)
                .read::<Profile>(p.id)
                .await
                .expect("attack setup")
                .is_some()
        );
    }
    proxy.cut_all();
    let scoped = tokio::time::timeout(
        Duration::from_secs(5),
        via.as_user(p.user_id).read::<Profile>(p.id),
    )
    .await
    .expect("bounded");
    assert!(matches!(scoped, Err(Error::Timeout { .. })), "{scoped:?}");
}

// ---- 12. a schema change between two reads of a prepared statement ----------------------

#[tokio::test]
async fn a_read_after_a_column_type_change_is_prepared_again_and_correct() {
    let (_db, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(&url).pool_size(1))
        .await
        .expect("attack setup");
    let p = db
        .create(NewProfile {
            user_id: uuid::Uuid::new_v4(),
            username: uniq("ddl"),
            avatar_url: Some("pic".into()),
        })
        .await
        .expect("attack setup");
    for _ in 0..2 {
        assert!(
            db.read::<Profile>(p.id)
                .await
                .expect("attack setup")
                .is_some()
        );
        assert_eq!(
            db.query::<Profile>().count().await.expect("attack setup"),
            1
        );
    }
    db.execute_batch("ALTER TABLE profiles ALTER COLUMN avatar_url TYPE varchar(100)")
        .await
        .expect("attack setup");
    let after = db
        .read::<Profile>(p.id)
        .await
        .expect("attack setup")
        .expect("attack setup");
    assert_eq!(after.avatar_url.as_deref(), Some("pic"));
    // Columns swapped by name: the prepared statement must follow the names.
    db.with_client(async |c| {
        c.batch_execute(
            "ALTER TABLE profiles RENAME COLUMN avatar_url TO tmp_col; \
             ALTER TABLE profiles ALTER COLUMN tmp_col TYPE text; \
             ALTER TABLE profiles ADD COLUMN avatar_url text; \
             UPDATE profiles SET avatar_url = 'swapped'",
        )
        .await?;
        Ok(())
    })
    .await
    .expect("attack setup");
    let after = db
        .read::<Profile>(p.id)
        .await
        .expect("attack setup")
        .expect("attack setup");
    assert_eq!(after.avatar_url.as_deref(), Some("swapped"));
    let listed = db.query::<Profile>().all().await.expect("attack setup");
    assert_eq!(listed[0].avatar_url.as_deref(), Some("swapped"));
    // Inside a transaction too.
    let in_tx = db
        .transaction(move |tx| async move { tx.read::<Profile>(p.id).await })
        .await
        .expect("attack setup")
        .expect("attack setup");
    assert_eq!(in_tx.avatar_url.as_deref(), Some("swapped"));
}

// ---- 13. hostile input on the builder and on batches -------------------------------------

#[derive(tabula::Table, Debug, Clone, PartialEq)]
#[table(name = "r27_nums")]
pub struct Num {
    #[table(primary_key)]
    pub id: i64,
    pub small: i32,
    pub x: f64,
    pub label: String,
}

const NUMS: &str = "CREATE TABLE r27_nums (id int8 PRIMARY KEY, small int4 NOT NULL, \
                    x float8 NOT NULL, label text NOT NULL UNIQUE)";

async fn nums_db() -> (Db, String) {
    let (db, url) = db_and_url().await;
    db.execute_batch(NUMS).await.expect("table");
    (db, url)
}

fn num(id: i64, x: f64, label: &str) -> NewNum {
    NewNum {
        id,
        small: (id % 1000) as i32,
        x,
        label: label.to_owned(),
    }
}

#[tokio::test]
async fn extremes_and_nan_filter_as_postgresql_orders_them() {
    let (db, _url) = nums_db().await;
    db.create_many(vec![
        num(i64::MIN, f64::NEG_INFINITY, "min"),
        num(i64::MAX, f64::INFINITY, "max"),
        num(0, f64::NAN, "nan"),
        num(1, -0.0, "negzero"),
    ])
    .await
    .expect("extremes insert");
    let q = || db.query::<Num>();
    assert_eq!(
        q().filter(Num::ID.gt(i64::MAX))
            .count()
            .await
            .expect("attack setup"),
        0
    );
    assert_eq!(
        q().filter(Num::ID.ge(i64::MIN))
            .count()
            .await
            .expect("attack setup"),
        4
    );
    assert_eq!(
        q().filter(Num::ID.between(i64::MAX, i64::MIN))
            .count()
            .await
            .expect("attack setup"),
        0
    );
    // PostgreSQL: NaN = NaN, and NaN is above every number, infinity included.
    assert_eq!(
        q().filter(Num::X.eq(f64::NAN))
            .count()
            .await
            .expect("attack setup"),
        1
    );
    assert_eq!(
        q().filter(Num::X.gt(f64::INFINITY))
            .count()
            .await
            .expect("attack setup"),
        1
    );
    assert_eq!(
        q().filter(Num::X.is_in([f64::NAN, 0.0]))
            .count()
            .await
            .expect("attack setup"),
        2
    );
    let ordered: Vec<String> = q()
        .select(Num::LABEL)
        .order_by(Num::X.asc())
        .all()
        .await
        .expect("attack setup");
    assert_eq!(ordered, ["min", "negzero", "max", "nan"]);
    let back = db
        .read::<Num>(0i64)
        .await
        .expect("attack setup")
        .expect("attack setup");
    assert!(back.x.is_nan());
    let first = q()
        .order_by(Num::ID.asc())
        .page(2, None)
        .await
        .expect("attack setup");
    assert_eq!(first.items.len(), 2);
    let second = q()
        .order_by(Num::ID.asc())
        .page(2, first.next.as_ref())
        .await
        .expect("attack setup");
    assert_eq!(
        second.items.iter().map(|n| n.id).collect::<Vec<_>>(),
        [1, i64::MAX]
    );
}

#[tokio::test]
async fn nul_bytes_and_huge_strings_are_typed_errors_not_panics() {
    let (db, _url) = db_and_url().await;
    let nul = db
        .query::<Profile>()
        .filter(Profile::USERNAME.eq("a\0b"))
        .all()
        .await;
    assert!(matches!(nul, Err(Error::Validation(_))), "{nul:?}");
    let created = db.create(new_profile("x\0y")).await;
    assert!(matches!(created, Err(Error::Validation(_))), "{created:?}");
    let like = db
        .query::<Profile>()
        .filter(Profile::USERNAME.like("%\0%"))
        .count()
        .await;
    assert!(like.is_err());
    // A username too large for its btree index: the server's error, nothing written.
    let huge = db.create(new_profile(&"é".repeat(2_000_000))).await;
    assert!(huge.is_err(), "an index row of 4 MB was accepted?");
    assert_eq!(common::count_profiles(&db).await, 0);
    // Odd Unicode survives the round trip.
    let odd = "\u{feff}\u{200d}👩‍👩‍👧\u{10ffff}\u{fffd}e\u{301}";
    let p = db.create(new_profile(odd)).await.expect("attack setup");
    let found = db
        .query::<Profile>()
        .filter(Profile::USERNAME.eq(odd))
        .one()
        .await
        .expect("attack setup");
    assert_eq!(found.id, p.id);
    assert_eq!(found.username, odd);
    // Nested and/or/not a few dozen deep still answers.
    let mut f = Profile::USERNAME.eq(odd);
    for i in 0..30 {
        f = match i % 3 {
            0 => f.and(Profile::USERNAME.ne("nope")),
            1 => f.or(Profile::USERNAME.eq("never")),
            _ => f.not().not(),
        };
    }
    assert_eq!(
        db.query::<Profile>()
            .filter(f)
            .count()
            .await
            .expect("attack setup"),
        1
    );
}

#[tokio::test]
async fn batches_of_zero_one_duplicate_and_many_rows() {
    let (db, _url) = nums_db().await;
    assert!(
        db.create_many(Vec::<NewNum>::new())
            .await
            .expect("attack setup")
            .is_empty()
    );
    assert_eq!(
        db.insert_many(Vec::<NewNum>::new())
            .await
            .expect("attack setup"),
        0
    );
    assert_eq!(
        db.create_many(vec![num(7, 1.0, "seven")])
            .await
            .expect("attack setup")
            .len(),
        1
    );
    // A key repeated inside one batch: nothing of the batch is written.
    let dup = db
        .create_many(vec![
            num(8, 1.0, "eight"),
            num(9, 1.0, "nine"),
            num(8, 1.0, "eight2"),
        ])
        .await;
    assert!(matches!(dup, Err(Error::UniqueViolation { .. })), "{dup:?}");
    let dup = db
        .insert_many(vec![num(10, 1.0, "ten"), num(10, 1.0, "ten2")])
        .await;
    assert!(matches!(dup, Err(Error::UniqueViolation { .. })), "{dup:?}");
    assert_eq!(db.query::<Num>().count().await.expect("attack setup"), 1);
    // 100,000 rows over several chunks; the duplicate is in the last chunk.
    let mut rows: Vec<NewNum> = (100..100_100)
        .map(|i| num(i, i as f64, &format!("n{i}")))
        .collect();
    rows.push(num(150, 0.0, "dup-of-150"));
    let failed = db.create_many(rows).await;
    assert!(
        matches!(failed, Err(Error::UniqueViolation { .. })),
        "{:?}",
        failed.map(|v| v.len())
    );
    assert_eq!(
        db.query::<Num>().count().await.expect("attack setup"),
        1,
        "half a batch was kept"
    );
    let rows: Vec<NewNum> = (100..100_100)
        .map(|i| num(i, i as f64, &format!("n{i}")))
        .collect();
    assert_eq!(
        db.create_many(rows).await.expect("attack setup").len(),
        100_000
    );
    let ids: Vec<i64> = (0..100_000).map(|i| i * 3 + 1).collect();
    let n = db
        .query::<Num>()
        .filter(Num::ID.is_in(ids))
        .count()
        .await
        .expect("attack setup");
    assert_eq!(
        n,
        (100..100_100).filter(|i| (i - 1) % 3 == 0).count() as i64 + 1
    );
    let deleted = db
        .delete_where::<Num>(Num::ID.is_in(Vec::<i64>::new()))
        .await
        .expect("attack setup");
    assert_eq!(deleted, 0, "an empty IN list deleted rows");
}

// ---- 14. a write that waited for a pooled connection past the statement deadline ------

/// `checkout_timeout` is "how long to wait for a free connection" (5 s by default) and
/// a pool that has none is `PoolTimeout`. With a short statement deadline the client's
/// deadline (deadline + grace) fires while the write still waits for its connection:
/// the write, which never left the process, is `OutcomeUnknown` (not transient: "may
/// have landed") — after 0.5 s, not the checkout timeout's 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_a_write_still_waiting_for_a_connection_is_reported_outcome_unknown() {
    let (_db, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(1)
            .statement_timeout(Duration::from_millis(300))
            .checkout_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("attack setup");
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(Some(release_rx)));
    let holder = db.clone();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let held_tx = Arc::new(std::sync::Mutex::new(Some(held_tx)));
    let holding = tokio::spawn(async move {
        holder
            .transaction(move |tx| {
                let release_rx = release_rx.clone();
                let held_tx = held_tx.clone();
                async move {
                    tx.query::<Profile>().count().await?;
                    if let Some(h) = held_tx.lock().expect("lock").take() {
                        let _ = h.send(());
                    }
                    let rx = release_rx.lock().expect("lock").take();
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    Ok(())
                }
            })
            .await
    });
    held_rx.await.expect("attack setup");
    let name = uniq("waited");
    let started = std::time::Instant::now();
    let result = db.create(new_profile(&name)).await;
    let waited = started.elapsed();
    let _ = release_tx.send(());
    holding.await.expect("attack setup").expect("attack setup");
    assert_eq!(count_named(&url, &name).await, 0, "it never ran");
    assert!(
        !matches!(result, Err(Error::OutcomeUnknown { .. })),
        "a write that never got a connection is OutcomeUnknown after {waited:?} \
         (checkout_timeout is 5 s): {result:?}"
    );
}

// ---- 15. deadlocks, serialization failures, concurrency on one handle ---------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_between_two_transactions_is_retried_and_both_commit_once() {
    let (db, url) = db_and_url().await;
    let a = db
        .create(new_profile(&uniq("da")))
        .await
        .expect("attack setup");
    let b = db
        .create(new_profile(&uniq("db")))
        .await
        .expect("attack setup");
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    let run = |first: uuid::Uuid, second: uuid::Uuid, tag: &'static str| {
        let db = db.clone();
        let barrier = barrier.clone();
        let attempts = attempts.clone();
        async move {
            db.transaction(move |tx| {
                let barrier = barrier.clone();
                let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    tx.sql_rows(
                        "UPDATE profiles SET avatar_url = coalesce(avatar_url, '') || $2 WHERE id = $1",
                        &[&first, &tag],
                    )
                    .await?;
                    if attempt < 2 {
                        barrier.wait().await;
                    }
                    tx.sql_rows(
                        "UPDATE profiles SET avatar_url = coalesce(avatar_url, '') || $2 WHERE id = $1",
                        &[&second, &tag],
                    )
                    .await?;
                    Ok(())
                }
            })
            .await
        }
    };
    let (r1, r2) = tokio::join!(
        tokio::spawn(run(a.id, b.id, "1")),
        tokio::spawn(run(b.id, a.id, "2"))
    );
    r1.expect("attack setup").expect("first commits");
    r2.expect("attack setup").expect("second commits");
    assert!(
        attempts.load(Ordering::SeqCst) >= 3,
        "one of them was retried"
    );
    let c = raw(&url).await;
    for id in [a.id, b.id] {
        let v: Option<String> = c
            .query_one("SELECT avatar_url FROM profiles WHERE id = $1", &[&id])
            .await
            .expect("attack setup")
            .get(0);
        let mut chars: Vec<char> = v.expect("attack setup").chars().collect();
        chars.sort();
        assert_eq!(
            chars,
            ['1', '2'],
            "each transaction's update landed exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_write_skew_is_retried_into_a_serial_outcome() {
    let (db, url) = db_and_url().await;
    // Two "on call" rows; each transaction takes one off call if another remains.
    let mk = |n: &str| NewProfile {
        user_id: uuid::Uuid::new_v4(),
        username: n.to_owned(),
        avatar_url: Some("oncall".into()),
    };
    db.create(mk("doc1")).await.expect("attack setup");
    db.create(mk("doc2")).await.expect("attack setup");
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let first_attempts = Arc::new(AtomicU32::new(0));
    let run = |me: &'static str| {
        let db = db.clone();
        let barrier = barrier.clone();
        let attempts = first_attempts.clone();
        async move {
            db.transaction_with(tabula::Isolation::Serializable, move |tx| {
                let barrier = barrier.clone();
                let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    let on = tx
                        .query::<Profile>()
                        .filter(Profile::AVATAR_URL.eq("oncall"))
                        .count()
                        .await?;
                    if attempt < 2 {
                        barrier.wait().await;
                    }
                    if on >= 2 {
                        tx.update_where::<Profile>(
                            Profile::USERNAME.eq(me),
                            common::ProfilePatch::default().avatar_url(Some("off".into())),
                        )
                        .await?;
                    }
                    Ok(on)
                }
            })
            .await
        }
    };
    let (r1, r2) = tokio::join!(tokio::spawn(run("doc1")), tokio::spawn(run("doc2")));
    r1.expect("attack setup").expect("commits");
    r2.expect("attack setup").expect("commits");
    let c = raw(&url).await;
    let on: i64 = c
        .query_one(
            "SELECT count(*) FROM profiles WHERE avatar_url = 'oncall'",
            &[],
        )
        .await
        .expect("attack setup")
        .get(0);
    assert_eq!(on, 1, "write skew: serializable let both go off call");
}

#[tokio::test]
async fn joined_statements_on_one_transaction_where_the_first_fails_are_never_ok() {
    let (db, url) = db_and_url().await;
    db.create(new_profile("taken")).await.expect("attack setup");
    let name = uniq("joined");
    let n2 = name.clone();
    let result = db
        .transaction(move |tx| {
            let name = n2.clone();
            async move {
                let (dup, fresh, count) = tokio::join!(
                    tx.create(new_profile("taken")),
                    tx.create(new_profile(&name)),
                    tx.query::<Profile>().count()
                );
                assert!(dup.is_err());
                // The body ignores the failures and returns Ok.
                let _ = (fresh, count);
                Ok(())
            }
        })
        .await;
    assert!(
        matches!(result, Err(Error::TransactionAborted { .. })),
        "{result:?}"
    );
    assert_eq!(count_named(&url, &name).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_moved_into_a_task_that_runs_after_the_end_is_misuse_and_writes_nothing() {
    let (db, url) = db_and_url().await;
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go_rx = Arc::new(std::sync::Mutex::new(Some(go_rx)));
    let name = uniq("late");
    let n2 = name.clone();
    let late = Arc::new(std::sync::Mutex::new(None));
    let late2 = late.clone();
    db.transaction(move |tx| {
        let go_rx = go_rx.clone();
        let name = n2.clone();
        let late = late2.clone();
        async move {
            let t2 = tx.clone();
            let rx = go_rx.lock().expect("lock").take();
            let task = tokio::spawn(async move {
                if let Some(rx) = rx {
                    let _ = rx.await;
                }
                t2.create(new_profile(&name)).await
            });
            *late.lock().expect("lock") = Some(task);
            Ok(())
        }
    })
    .await
    .expect("attack setup");
    let _ = go_tx.send(());
    let task = late.lock().expect("lock").take().expect("attack setup");
    let result = task.await.expect("attack setup");
    assert!(matches!(result, Err(Error::Misuse(_))), "{result:?}");
    assert_eq!(count_named(&url, &name).await, 0);
}

// ---- 16. a nested transaction's handle kept past its end -------------------------------

/// "While it runs, use its handle, not the outer one (`Misuse` otherwise)" and a handle
/// whose transaction ended is `Misuse`. A savepoint's handle kept after its savepoint
/// was released is refused — until another savepoint opens at the same depth: then it
/// is accepted, and its statement runs inside (and is rolled back with) a savepoint it
/// never belonged to, while reporting `Ok`.
#[tokio::test]
async fn defect_a_released_savepoints_handle_is_accepted_inside_a_later_savepoint() {
    let (db, url) = db_and_url().await;
    let name = uniq("stale-sp");
    let n2 = name.clone();
    let outcome = db
        .transaction(move |tx| {
            let name = n2.clone();
            async move {
                let kept = Arc::new(std::sync::Mutex::new(None::<Db>));
                let k2 = kept.clone();
                tx.transaction(move |sp1| {
                    let k2 = k2.clone();
                    async move {
                        *k2.lock().expect("lock") = Some(sp1.clone());
                        Ok(())
                    }
                })
                .await?;
                let stale = kept.lock().expect("lock").take().expect("attack setup");
                // Refused while no savepoint is open (as documented) …
                let refused = stale.query::<Profile>().count().await;
                assert!(matches!(refused, Err(Error::Misuse(_))), "{refused:?}");
                // … but accepted inside the next savepoint.
                let stale_write = tx
                    .transaction(move |_sp2| {
                        let stale = stale.clone();
                        let name = name.clone();
                        async move {
                            let w = stale.create(new_profile(&name)).await.map(|_| ());
                            Ok::<_, Error>(w)
                        }
                    })
                    .await?;
                Ok(stale_write)
            }
        })
        .await
        .expect("the transaction commits");
    assert!(
        matches!(outcome, Err(Error::Misuse(_))),
        "a statement on the handle of a savepoint released earlier was accepted: {outcome:?} \
         (rows written: {})",
        count_named(&url, &name).await
    );
}

// ---- 17. raw SQL through a scoped handle runs under the scope -----------------------------

#[tokio::test]
async fn raw_sql_and_bulk_writes_through_a_scoped_handle_obey_its_policies() {
    let (db, _url) = db_and_url().await;
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    db.create(owned(a, &uniq("ra")))
        .await
        .expect("attack setup");
    db.create(owned(b, &uniq("rb")))
        .await
        .expect("attack setup");
    db.create(owned(b, &uniq("rb2")))
        .await
        .expect("attack setup");
    let ua = db.as_user(a);
    let n: i64 = ua
        .sql_rows("SELECT count(*) FROM profiles", &[])
        .await
        .expect("attack setup")[0]
        .get(0);
    assert_eq!(n, 1);
    let who: String = ua
        .with_client(async |c| Ok(c.query_one("SELECT current_user::text", &[]).await?.get(0)))
        .await
        .expect("attack setup");
    assert_eq!(who, "authenticated");
    ua.execute_batch("UPDATE profiles SET avatar_url = 'scoped-batch'")
        .await
        .expect("attack setup");
    let touched = db
        .query::<Profile>()
        .filter(Profile::AVATAR_URL.eq("scoped-batch"))
        .count()
        .await
        .expect("attack setup");
    assert_eq!(
        touched, 1,
        "a scoped execute_batch changed rows of other users"
    );
    let patched = ua
        .update_where::<Profile>(
            Profile::AVATAR_URL
                .is_not_null()
                .or(Profile::AVATAR_URL.is_null()),
            common::ProfilePatch::default().avatar_url(Some("scoped-where".into())),
        )
        .await
        .expect("attack setup");
    assert_eq!(patched, 1);
    let deleted = ua
        .delete_where::<Profile>(Profile::USERNAME.ne(""))
        .await
        .expect("attack setup");
    assert_eq!(deleted, 1);
    assert_eq!(common::count_profiles(&db).await, 2);
    // A raw write in a scoped transaction, then a read of the service role on the same
    // pool: the service role sees every row again.
    ua.transaction(|tx| async move {
        tx.with_client(async |c| {
            c.batch_execute("SET LOCAL search_path TO pg_catalog")
                .await?;
            Ok(())
        })
        .await
    })
    .await
    .expect("attack setup");
    assert_eq!(
        db.query::<Profile>().count().await.expect("attack setup"),
        2
    );
}

// ---- 18. two databases sharing one Redis ----------------------------------------------------

#[tokio::test]
async fn two_databases_on_one_redis_never_answer_with_each_others_rows() {
    let (_d1, url1) = db_and_url().await;
    let (_d2, url2) = db_and_url().await;
    let redis = tabula::testkit::redis_url().expect("redis");
    let prefix = uniq("shared").replace('-', "x");
    let mk = |url: String| {
        let cache = tabula::CacheService::redis(
            &redis,
            tabula::CacheConfig::default().prefix(prefix.clone()),
        )
        .expect("attack setup");
        async move {
            Db::connect_with(DbConfig::new(url).cache(cache))
                .await
                .expect("attack setup")
        }
    };
    let (db1, db2) = (mk(url1.clone()).await, mk(url2.clone()).await);
    let id = uuid::Uuid::new_v4();
    for (url, name) in [(&url1, "in-one"), (&url2, "in-two")] {
        raw(url)
            .await
            .execute(
                "INSERT INTO profiles (id, user_id, username) VALUES ($1, gen_random_uuid(), $2)",
                &[&id, &name],
            )
            .await
            .expect("attack setup");
    }
    for _ in 0..2 {
        assert_eq!(cached_name(&db1, id).await, "in-one");
        assert_eq!(cached_name(&db2, id).await, "in-two");
    }
    db1.update::<CProfile>(
        id,
        CProfilePatch::default().username("one-changed".to_owned()),
    )
    .await
    .expect("attack setup");
    assert_eq!(cached_name(&db2, id).await, "in-two");
    assert_eq!(cached_name(&db1, id).await, "one-changed");
    let q1 = db1
        .query::<CProfile>()
        .select(CProfile::USERNAME)
        .cached(60)
        .all()
        .await
        .expect("attack setup");
    let q2 = db2
        .query::<CProfile>()
        .select(CProfile::USERNAME)
        .cached(60)
        .all()
        .await
        .expect("attack setup");
    assert_eq!(
        (q1, q2),
        (vec!["one-changed".to_owned()], vec!["in-two".to_owned()])
    );
}

/// The same through Tabula's own API: a procedure that commits its work in steps (a
/// batch job) and then outlives the statement deadline is `Error::Timeout` — "nothing
/// happened", transient — while its first step is committed.
#[tokio::test]
async fn defect_execute_batch_of_a_procedure_that_committed_then_timed_out_is_reported_as_timeout()
{
    let (db, url) = db_and_url().await;
    db.execute_batch(
        "CREATE PROCEDURE r27_steps(name text) LANGUAGE plpgsql AS $$ BEGIN \
           INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), name); \
           COMMIT; \
           PERFORM pg_sleep(2); \
         END $$",
    )
    .await
    .expect("attack setup");
    let short = short_deadline(&url, Duration::from_millis(300)).await;
    let name = uniq("proc");
    let result = short
        .execute_batch(&format!("CALL r27_steps('{name}')"))
        .await;
    assert_eq!(
        count_named(&url, &name).await,
        1,
        "the first step committed"
    );
    let err = result.expect_err("the call outlived the deadline");
    assert!(
        !(matches!(err, Error::Timeout { .. }) && err.is_transient()),
        "reported as a transient Timeout although the procedure committed a row: {err:?}"
    );
}

// ---- 19. futures that cross tasks are Send -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_bodies_holding_streams_savepoints_and_raw_calls_spawn() {
    let (db, _url) = db_and_url().await;
    db.create(new_profile(&uniq("send")))
        .await
        .expect("attack setup");
    let d = db.clone();
    let n = tokio::spawn(async move {
        d.transaction_with(tabula::Isolation::RepeatableRead, |tx| async move {
            let mut s = tx.query::<Profile>().stream().await?;
            let mut n = 0;
            while let Some(row) = s.next().await {
                row?;
                n += 1;
            }
            drop(s);
            let inner = tx
                .transaction(|sp| async move {
                    sp.with_client(async |c| {
                        Ok(c.query_one("SELECT 1::int8", &[]).await?.get::<_, i64>(0))
                    })
                    .await
                })
                .await?;
            let page = tx
                .query::<Profile>()
                .order_by(Profile::USERNAME.asc())
                .page(10, None)
                .await?;
            Ok(n + inner as usize + page.items.len())
        })
        .await
    })
    .await
    .expect("attack setup")
    .expect("attack setup");
    assert_eq!(n, 3);
    let scoped = db.as_user(uuid::Uuid::new_v4());
    let seen = tokio::spawn(async move {
        scoped
            .transaction(|tx| async move {
                let rows: Vec<_> = tx.query::<Profile>().stream().await?.collect().await;
                Ok(rows.len())
            })
            .await
    })
    .await
    .expect("attack setup")
    .expect("attack setup");
    assert_eq!(seen, 0, "a user with no rows streams none");
}
