//! The database path never misreports an outcome: aborted transactions, savepoints,
//! server-side deadlines, commits whose answer was lost, re-entrant calls, claims under
//! `standard_conforming_strings = off`, and session state left by the escape hatch.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tabula::{Db, DbConfig, Error};

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    client
}

async fn usernames(db: &Db) -> Vec<String> {
    db.with_client(async |c| {
        Ok(
            c.query("SELECT username FROM profiles ORDER BY username", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        )
    })
    .await
    .expect("usernames")
}

// ---- 1. aborted transactions and savepoints ----------------------------------------

#[tokio::test]
async fn a_transaction_whose_statement_failed_is_an_error_even_if_the_body_returns_ok() {
    let db = db().await;
    let result = db
        .transaction(|tx| async move {
            tx.create(new_profile("kept?")).await?;
            // The body handles the error, but PostgreSQL has aborted the transaction.
            let dup = tx.create(new_profile("kept?")).await;
            assert!(matches!(dup, Err(Error::UniqueViolation { .. })), "{dup:?}");
            Ok("looks fine")
        })
        .await;
    assert!(
        matches!(result, Err(Error::TransactionAborted { .. })),
        "a rolled-back transaction was reported as {result:?}"
    );
    assert!(usernames(&db).await.is_empty(), "nothing was committed");
}

#[tokio::test]
async fn a_nested_transaction_is_a_savepoint_whose_error_leaves_the_outer_usable() {
    let db = db().await;
    let result = db
        .transaction(|tx| async move {
            tx.create(new_profile("a")).await?;
            let nested = tx
                .transaction(|inner| async move {
                    inner.create(new_profile("inner-ok")).await?;
                    inner.create(new_profile("a")).await // unique violation
                })
                .await;
            assert!(
                matches!(nested, Err(Error::UniqueViolation { .. })),
                "{nested:?}"
            );
            // The outer transaction is still usable after the savepoint rolled back.
            tx.create(new_profile("b")).await?;
            let committed = tx
                .transaction(|inner| async move { inner.create(new_profile("c")).await })
                .await?;
            Ok(committed.username)
        })
        .await;
    assert_eq!(result.expect("outer commits"), "c");
    assert_eq!(usernames(&db).await, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_panic_in_a_nested_transaction_rolls_back_to_its_savepoint_and_propagates() {
    let db = db().await;
    let inner_db = db.clone();
    let task = tokio::spawn(async move {
        inner_db
            .transaction(|tx| async move {
                tx.create(new_profile("outer")).await?;
                tx.transaction(|inner| async move {
                    inner.create(new_profile("doomed")).await?;
                    if inner.in_transaction() {
                        panic!("boom in the savepoint");
                    }
                    Ok(())
                })
                .await
            })
            .await
    });
    assert!(task.await.is_err(), "the panic propagates");
    assert!(
        usernames(&db).await.is_empty(),
        "the whole transaction rolled back"
    );
}

// ---- 2. deadlines are enforced by the server ---------------------------------------

async fn short_deadline_db(url: &str, deadline: Duration) -> Db {
    Db::connect_with(DbConfig::new(url).pool_size(2).statement_timeout(deadline))
        .await
        .expect("db")
}

#[tokio::test]
async fn an_update_blocked_past_its_deadline_is_cancelled_on_the_server_and_never_lands() {
    let (db, url) = db_and_url().await;
    let row = db.create(new_profile("locked")).await.expect("create");
    let fast = short_deadline_db(&url, Duration::from_millis(300)).await;

    let mut holder = raw(&url).await;
    let lock = holder.transaction().await.expect("begin");
    lock.execute(
        "SELECT 1 FROM profiles WHERE id = $1 FOR UPDATE",
        &[&row.id],
    )
    .await
    .expect("lock");

    let patch = ProfilePatch {
        username: Some("changed".into()),
        ..Default::default()
    };
    let err = fast
        .update::<Profile>(row.id, patch)
        .await
        .expect_err("blocked past the deadline");
    assert!(matches!(err, Error::Timeout { .. }), "got {err:?}");
    assert!(
        err.is_transient(),
        "a cancelled write is known not to have happened"
    );

    // The server no longer waits on the lock: the statement was cancelled there.
    let started = Instant::now();
    let waiting: i64 = loop {
        let n: i64 = raw(&url)
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        if n == 0 || started.elapsed() > Duration::from_secs(2) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(waiting, 0, "a statement still waits on the row lock");
    println!(
        "lock wait ended {:?} after the error was returned",
        started.elapsed()
    );
    lock.commit().await.expect("release");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = db.read_uncached::<Profile>(row.id).await.expect("read");
    assert_eq!(
        now.expect("row").username,
        "locked",
        "the timed-out update landed later"
    );
}

#[tokio::test]
async fn a_create_that_times_out_on_a_unique_index_inserts_nothing() {
    let (db, url) = db_and_url().await;
    let fast = short_deadline_db(&url, Duration::from_millis(300)).await;
    let mut holder = raw(&url).await;
    let pending = holder.transaction().await.expect("begin");
    pending
        .execute(
            "INSERT INTO profiles (user_id, username) VALUES (gen_random_uuid(), 'taken')",
            &[],
        )
        .await
        .expect("insert");
    let err = fast
        .create(new_profile("taken"))
        .await
        .expect_err("waits on the other transaction's index entry");
    assert!(matches!(err, Error::Timeout { .. }), "got {err:?}");
    pending.rollback().await.expect("rollback");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        usernames(&db).await.is_empty(),
        "the create reported as timed out inserted its row later"
    );
}

#[tokio::test]
async fn a_statement_left_running_does_not_delay_the_next_caller() {
    let (_, url) = db_and_url().await;
    let fast = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(1)
            .statement_timeout(Duration::from_millis(300)),
    )
    .await
    .expect("db");
    let slow = fast
        .with_client(async |c| {
            c.batch_execute("SELECT pg_sleep(3)").await?;
            Ok(())
        })
        .await;
    // The caller's own SQL may have committed before the server cancelled it: not a
    // plain timeout (see `attack_tx.rs`).
    assert!(
        matches!(slow, Err(Error::OutcomeUnknown { .. })),
        "got {slow:?}"
    );
    let started = Instant::now();
    fast.read::<Profile>(uuid::Uuid::new_v4())
        .await
        .expect("the next caller is served");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the next caller waited {:?}",
        started.elapsed()
    );
}

/// A statement whose first use on the connection is still being *prepared* when its
/// answers stop coming (the deadline gives up on it) leaves the transaction in doubt:
/// the body may swallow the error, but the transaction is never `Ok`.
#[tokio::test]
async fn a_statement_given_up_while_it_was_prepared_aborts_its_transaction() {
    let (db, url) = db_and_url().await;
    let kept = db.create(new_profile("kept")).await.expect("row");
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let via = Db::connect_with(
        DbConfig::new(common::through(&url, proxy.port))
            .pool_size(1)
            .statement_timeout(Duration::from_millis(300)),
    )
    .await
    .expect("db through the proxy");
    let proxy = Arc::new(proxy);
    let cutter = proxy.clone();
    let result: tabula::Result<()> = via
        .transaction(move |tx| {
            let cutter = cutter.clone();
            async move {
                tx.create(new_profile("first")).await?;
                cutter.cut_replies();
                // `delete` was never used on this connection: it is prepared first.
                let lost = tx.delete::<Profile>(kept.id).await;
                assert!(lost.is_err(), "no answer can have come: {lost:?}");
                Ok(()) // the body swallows the error
            }
        })
        .await;
    assert!(
        result.is_err(),
        "Ok for a transaction with an abandoned statement"
    );
    assert!(
        !usernames(&db).await.contains(&"first".to_owned()),
        "nothing of it was kept"
    );
}

// ---- 3. a commit whose answer is lost is resolved -----------------------------------

#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_resolved_with_the_server_and_reported_ok() {
    let (db, url) = db_and_url().await;
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let via = Db::connect_with(
        DbConfig::new(common::through(&url, proxy.port))
            .statement_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("db through the proxy");
    let proxy = Arc::new(proxy);
    let cutter = proxy.clone();
    let result = via
        .transaction(move |tx| {
            let cutter = cutter.clone();
            async move {
                let row = tx.create(new_profile("landed")).await?;
                cutter.cut_replies(); // COMMIT reaches the server; its answer never comes back
                Ok(row.username)
            }
        })
        .await;
    assert_eq!(
        result.expect("the commit landed and the server says so"),
        "landed"
    );
    assert_eq!(usernames(&db).await, ["landed"]);
}

/// A transaction's first write.
#[derive(Clone, Copy)]
enum FirstWrite {
    /// `create`: its pipeline carries the transaction-id probe.
    Insert,
    /// `insert_many`: a COPY, which cannot; it asks behind it.
    Copy,
}

/// Runs a transaction that writes, then has its backend killed before COMMIT.
async fn killed_before_commit(first: FirstWrite) -> (tabula::Result<()>, Db) {
    let (db, url) = db_and_url().await;
    let killer = Arc::new(raw(&url).await);
    let result: tabula::Result<()> = db
        .transaction(move |tx| {
            let killer = killer.clone();
            async move {
                match first {
                    FirstWrite::Insert => drop(tx.create(new_profile("never")).await?),
                    FirstWrite::Copy => {
                        tx.insert_many(vec![new_profile("never1"), new_profile("never2")])
                            .await?;
                    }
                }
                let pid: i32 = tx
                    .with_client(async |c| {
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
    (result, db)
}

#[tokio::test]
async fn a_connection_killed_before_commit_is_resolved_as_not_committed() {
    let (result, db) = killed_before_commit(FirstWrite::Insert).await;
    let err = result.expect_err("the transaction cannot have committed");
    assert!(
        !matches!(err, Error::CommitOutcomeUnknown),
        "the outcome is known (the server aborted it): {err:?}"
    );
    assert!(usernames(&db).await.is_empty());
}

/// The same when the transaction's only write is a COPY (`insert_many`), which cannot
/// carry the transaction-id probe in its pipeline: it asks behind it, so a COMMIT whose
/// connection died is still resolved, never taken for a transaction that wrote nothing.
#[tokio::test]
async fn a_copy_only_transaction_killed_before_commit_is_not_ok() {
    let (result, db) = killed_before_commit(FirstWrite::Copy).await;
    assert!(usernames(&db).await.is_empty(), "the server aborted it");
    assert!(result.is_err(), "Ok for a transaction that kept nothing");
}

// ---- 4. re-entrancy -------------------------------------------------------------------

#[tokio::test]
async fn a_statement_on_a_transaction_from_inside_its_with_client_is_a_misuse_error() {
    let db = db().await;
    let started = Instant::now();
    let result = db
        .transaction(|tx| async move {
            let again = tx.clone();
            tx.with_client(async move |_c| again.read::<Profile>(uuid::Uuid::new_v4()).await)
                .await
        })
        .await;
    assert!(matches!(result, Err(Error::Misuse(_))), "got {result:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "it deadlocked");
}

#[tokio::test]
async fn a_statement_on_a_scoped_handle_from_inside_its_with_client_is_a_misuse_error() {
    let db = db().await;
    let user = db.as_user(uuid::Uuid::new_v4());
    let again = user.clone();
    let started = Instant::now();
    let result = user
        .with_client(async move |_c| again.read::<Profile>(uuid::Uuid::new_v4()).await)
        .await;
    assert!(matches!(result, Err(Error::Misuse(_))), "got {result:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "it deadlocked");
}

#[tokio::test]
async fn joined_statements_on_one_transaction_both_run() {
    let db = db().await;
    let result = db
        .transaction(|tx| async move {
            let (a, b) = tokio::join!(tx.create(new_profile("j1")), tx.create(new_profile("j2")));
            Ok((a?, b?))
        })
        .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(usernames(&db).await, ["j1", "j2"]);
}

#[test]
fn public_futures_stay_small() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(db());
    let id = uuid::Uuid::new_v4();
    let sizes = [
        ("read", std::mem::size_of_val(&db.read::<Profile>(id))),
        (
            "create",
            std::mem::size_of_val(&db.create(new_profile("x"))),
        ),
        (
            "create_many",
            std::mem::size_of_val(&db.create_many(vec![new_profile("x")])),
        ),
        (
            "insert_many",
            std::mem::size_of_val(&db.insert_many(vec![new_profile("x")])),
        ),
        (
            "update",
            std::mem::size_of_val(&db.update::<Profile>(id, ProfilePatch::default())),
        ),
        ("delete", std::mem::size_of_val(&db.delete::<Profile>(id))),
        (
            "query().all()",
            std::mem::size_of_val(&db.query::<Profile>().all()),
        ),
        (
            "transaction",
            std::mem::size_of_val(&db.transaction(|_tx| async move { Ok(()) })),
        ),
        (
            "with_client",
            std::mem::size_of_val(&db.with_client(async |_c| Ok(()))),
        ),
    ];
    for (name, size) in sizes {
        println!("{name}: {size} bytes");
    }
    for (name, size) in sizes {
        assert!(size <= 2048, "the future of `{name}` is {size} bytes");
    }
}

/// A future may be built outside any runtime and handed to one later: building it
/// reads no clock and arms no timer (a deadline armed at construction panicked here,
/// with no runtime to register its timer with).
#[test]
fn futures_built_outside_a_runtime_run_on_one() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(db());
    let created = rt
        .block_on(db.create(new_profile("built-outside")))
        .expect("create");
    // Outside `block_on`: no runtime is entered on this thread.
    assert!(tokio::runtime::Handle::try_current().is_err());
    let read = db.read::<Profile>(created.id);
    let listed = db.query::<Profile>().all();
    let uncached = db.read_uncached::<Profile>(created.id);
    let (read, listed, uncached) = rt.block_on(async { tokio::join!(read, listed, uncached) });
    assert_eq!(
        read.expect("read").map(|p| p.username),
        Some("built-outside".into())
    );
    assert_eq!(listed.expect("query").len(), 1);
    assert!(uncached.expect("read_uncached").is_some());
}

#[test]
fn a_create_inside_with_client_fits_a_small_stack() {
    let handle = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let db = db().await;
                let other = db.clone();
                db.with_client(async move |_c| other.create(new_profile("deep")).await)
                    .await
                    .expect("create inside with_client");
            });
        })
        .expect("thread");
    assert!(handle.join().is_ok(), "overflowed a 1 MiB stack");
}

// ---- 8. claims are bound, never spliced ------------------------------------------------

#[tokio::test]
async fn claims_survive_standard_conforming_strings_off() {
    let (db, url) = db_and_url().await;
    let dbname = url.rsplit('/').next().expect("dbname").to_owned();
    db.execute_batch(&format!(
        "ALTER DATABASE \"{dbname}\" SET standard_conforming_strings = off"
    ))
    .await
    .expect("alter");
    let fresh = Db::connect(&url).await.expect("db");
    let off: String = fresh
        .with_client(async |c| {
            Ok(c.query_one("SHOW standard_conforming_strings", &[])
                .await?
                .get(0))
        })
        .await
        .expect("show");
    assert_eq!(off, "off", "the setting is off for this test");
    let attacker = uuid::Uuid::new_v4();
    let victim = uuid::Uuid::new_v4();
    let forged = format!("{attacker}\\\",\\\"sub\\\":\\\"{victim}");
    let claims = serde_json::json!({ "sub": forged, "role": "authenticated" });
    let scoped = fresh.as_claims(claims.clone()).expect("claims");
    let seen: serde_json::Value = scoped
        .transaction(|tx| async move {
            tx.with_client(async |c| {
                let text: String = c
                    .query_one("SELECT current_setting('request.jwt.claims', true)", &[])
                    .await?
                    .get(0);
                Ok(serde_json::from_str(&text).unwrap_or_default())
            })
            .await
        })
        .await
        .expect("scoped read");
    assert_eq!(
        seen, claims,
        "the claims the server saw differ from those given"
    );
}

// ---- 9. the escape hatch leaves no session state behind --------------------------------

#[tokio::test]
async fn a_session_setting_made_through_with_client_does_not_reach_the_next_user() {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(&url).pool_size(1))
        .await
        .expect("db");
    let show = async |db: &Db| -> String {
        db.with_client(async |c| Ok(c.query_one("SHOW application_name", &[]).await?.get(0)))
            .await
            .expect("show")
    };
    let before = show(&db).await;
    // Positive control: inside one call the setting holds.
    let inside: String = db
        .with_client(async |c| {
            c.batch_execute("SET application_name = 'leaked'").await?;
            Ok(c.query_one("SHOW application_name", &[]).await?.get(0))
        })
        .await
        .expect("set");
    assert_eq!(inside, "leaked");
    assert_eq!(
        show(&db).await,
        before,
        "a session SET reached the next user"
    );
    // The same through a transaction's with_client (a plain SET outlives COMMIT).
    db.transaction(|tx| async move {
        tx.with_client(async |c| Ok(c.batch_execute("SET application_name = 'leaked'").await?))
            .await
    })
    .await
    .expect("tx");
    assert_eq!(show(&db).await, before, "a SET inside a transaction leaked");
    // And the connection still works for typed calls afterwards.
    db.create(new_profile("after")).await.expect("create");
}

// ---- found by an outside attack ---------------------------------------------------

#[tokio::test]
async fn a_nested_transaction_dropped_half_way_makes_the_transaction_roll_back() {
    let db = db().await;
    let outcome = db
        .transaction(|tx| async move {
            let abandoned = tokio::time::timeout(
                Duration::from_millis(200),
                tx.transaction(|sp| async move {
                    sp.create(new_profile("abandoned")).await?;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Ok(())
                }),
            )
            .await;
            assert!(abandoned.is_err(), "the nested body timed out");
            Ok(())
        })
        .await;
    assert!(
        matches!(outcome, Err(Error::TransactionAborted { .. })),
        "got {outcome:?}"
    );
    assert!(
        usernames(&db).await.is_empty(),
        "the abandoned savepoint's write was committed"
    );
}

#[tokio::test]
async fn a_second_nested_transaction_beside_an_open_one_is_a_misuse_error() {
    let db = db().await;
    let outcome = db
        .transaction(|tx| async move {
            let (a, b) = tokio::join!(
                tx.transaction(|sp| async move {
                    sp.create(new_profile("join-a")).await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(())
                }),
                tx.transaction(|sp| async move {
                    sp.create(new_profile("join-b")).await?;
                    Ok(())
                }),
            );
            Ok((a.is_ok(), b))
        })
        .await;
    let (a_ok, b) = outcome.expect("the outer transaction commits");
    assert!(a_ok, "the first nested transaction runs");
    assert!(matches!(b, Err(Error::Misuse(_))), "got {b:?}");
    assert_eq!(
        usernames(&db).await,
        ["join-a"],
        "each nested call kept its promise"
    );
}

#[tokio::test]
async fn a_transaction_ended_through_the_raw_client_is_never_reported_as_ok() {
    let db = db().await;
    let outcome = db
        .transaction(|tx| async move {
            tx.create(new_profile("raw-rolled-back")).await?;
            tx.with_client(async |c| Ok(c.batch_execute("ROLLBACK").await?))
                .await?;
            Ok(())
        })
        .await;
    assert!(matches!(outcome, Err(Error::Misuse(_))), "got {outcome:?}");
    assert!(usernames(&db).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_from_a_task_spawned_inside_with_client_is_misuse_not_a_hang() {
    let db = db().await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        db.transaction(|tx| async move {
            let inner = tx.clone();
            tx.with_client(async move |_c| {
                tokio::spawn(async move { inner.query::<Profile>().count().await })
                    .await
                    .expect("join")
            })
            .await
        }),
    )
    .await;
    assert!(
        matches!(outcome, Ok(Err(Error::Misuse(_)))),
        "{outcome:?} after {:?}",
        started.elapsed()
    );
}

/// A model over a table the database does not have.
#[derive(tabula::Table, Debug, Clone)]
#[table(name = "no_such_table")]
struct Missing {
    #[table(primary_key)]
    id: i64,
}

/// A statement PostgreSQL refuses at prepare time (a missing table) is an answer, not
/// a lost connection: the connection serves on instead of being replaced each time —
/// and inside a transaction the refusal aborts it, with the server's SQLSTATE.
#[tokio::test]
async fn a_statement_refused_at_prepare_time_keeps_its_connection() {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url).pool_size(1))
        .await
        .expect("db");
    let pid = async || -> i32 {
        db.with_client(async |c| Ok(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0)))
            .await
            .expect("pid")
    };
    let before = pid().await;
    for _ in 0..3 {
        let err = db.query::<Missing>().all().await.expect_err("no table");
        assert_eq!(err.sqlstate(), Some("42P01"), "{err:?}");
    }
    assert_eq!(
        pid().await,
        before,
        "the connection was replaced after a refusal"
    );
    let aborted: tabula::Result<()> = db
        .transaction(|tx| async move {
            tx.create(new_profile("inside")).await?;
            let _ = tx.read::<Missing>(1).await; // refused; the body swallows it
            Ok(())
        })
        .await;
    match aborted {
        Err(Error::TransactionAborted { sqlstate }) => {
            assert_eq!(sqlstate.as_deref(), Some("42P01"))
        }
        other => panic!("expected TransactionAborted, got {other:?}"),
    }
    assert!(usernames(&db).await.is_empty(), "nothing of it was kept");
}
