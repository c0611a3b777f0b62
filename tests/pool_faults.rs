//! The pool's faults, found by an outside attack on the pool of Tabula's own (round
//! 25): connect refusals and silent servers, one deadline per checkout, a caller gone
//! during a session reset, cancelled statements and the pool's size as the server
//! counts it, `min_idle` after a kill, and a handle that outlives its runtime. Each
//! failed before its fix.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Profile, db_and_url, new_profile};
use tabula::{Db, DbConfig, Error};

fn uniq(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "r25-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connections open with `application_name` = `name`, as the server counts them.
async fn open_connections(watcher: &Db, name: &str) -> i64 {
    let name = name.to_owned();
    watcher
        .with_client(async move |c| {
            Ok(c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await?
            .get(0))
        })
        .await
        .expect("count")
}

async fn terminate(watcher: &Db, name: &str) -> i64 {
    let name = name.to_owned();
    watcher
        .with_client(async move |c| {
            Ok(c.query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await?
            .get(0))
        })
        .await
        .expect("terminate")
}

/// What a session carries that must never reach the next user of a pooled connection.
async fn session_state(db: &Db) -> (String, Option<String>, bool, String) {
    db.with_client(async |c| {
        let row = c
            .query_one(
                "SELECT current_user::text, current_setting('request.jwt.claims', true), \
                        current_setting('search_path')",
                &[],
            )
            .await?;
        // Outside a transaction block SAVEPOINT is refused: no transaction is open.
        let no_tx = c.batch_execute("SAVEPOINT r25_probe").await.is_err();
        Ok((row.get(0), row.get(1), no_tx, row.get(2)))
    })
    .await
    .expect("session state")
}

/// A connection that cannot be opened at checkout (the database refuses new
/// connections) is reported promptly, as `Error::Connect` — the variant documented
/// as "no connection could be opened", and what the bb8 pool reported.
#[tokio::test]
async fn a_connect_refused_at_checkout_is_error_connect_at_once() {
    let (admin_db, url) = db_and_url().await;
    let name = uniq("refuse");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(2)
            .application_name(name.clone())
            .checkout_timeout(Duration::from_secs(3)),
    )
    .await
    .expect("db");
    let p = db.create(new_profile("refused")).await.expect("create");
    let dbname: String = admin_db
        .with_client(async |c| {
            Ok(c.query_one("SELECT current_database()::text", &[])
                .await?
                .get(0))
        })
        .await
        .expect("name");
    // Refuse new connections to this database, then kill the pool's own.
    let admin_url = tabula::testkit::postgres_url().expect("admin url");
    let admin = Db::connect_with(DbConfig::new(admin_url).pool_size(1))
        .await
        .expect("admin");
    admin
        .execute_batch(&format!(
            "ALTER DATABASE \"{dbname}\" WITH ALLOW_CONNECTIONS false"
        ))
        .await
        .expect("refuse");
    terminate(&admin, &name).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let read = db.read_uncached::<Profile>(p.id).await;
    let read_took = started.elapsed();
    let started = Instant::now();
    let write = db.create(new_profile("refused2")).await;
    let write_took = started.elapsed();
    admin
        .execute_batch(&format!(
            "ALTER DATABASE \"{dbname}\" WITH ALLOW_CONNECTIONS true"
        ))
        .await
        .expect("allow");
    eprintln!("read: {read:?} in {read_took:?}\nwrite: {write:?} in {write_took:?}");
    assert!(
        read_took < Duration::from_secs(2),
        "read took {read_took:?}"
    );
    assert!(
        write_took < Duration::from_secs(2),
        "write took {write_took:?}"
    );
    assert!(matches!(read, Err(Error::Connect(_))), "read: {read:?}");
    assert!(matches!(write, Err(Error::Connect(_))), "write: {write:?}");
}

/// `with_client` resets the session after its body (DISCARD ALL, then the
/// after-connect hook again). A caller that gives up while the hook runs must not
/// leave a connection without the hook's settings in the pool.
#[tokio::test]
async fn a_caller_gone_during_the_session_reset_leaves_no_connection_without_its_settings() {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url).pool_size(1).after_connect(|c| {
        Box::pin(async move {
            // A hook of two round trips: something slow-ish, then the setting.
            c.batch_execute("SELECT pg_sleep(0.3)").await?;
            c.batch_execute("SET search_path TO hooked, public").await?;
            Ok(())
        })
    }))
    .await
    .expect("db");
    let (_, _, _, path) = session_state(&db).await;
    assert_eq!(
        path, "hooked, public",
        "hook in force on a fresh connection"
    );
    // The body ends at once; the caller gives up 150 ms later, while the hook's
    // pg_sleep is still running.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(150),
        db.with_client(async |c| Ok(c.batch_execute("SELECT 1").await?)),
    )
    .await;
    assert!(gave_up.is_err(), "expected the caller to give up mid-reset");
    let (_, _, _, path) = session_state(&db).await;
    assert_eq!(
        path, "hooked, public",
        "the pooled connection lost its after-connect setting"
    );
}

/// checkout_timeout: "How long to wait for a free connection". A caller that waited
/// almost all of it for a permit and then has to open a connection (the returned
/// one was closed) must not wait up to twice as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_and_opening_share_one_checkout_deadline() {
    let (_, url) = db_and_url().await;
    let opened = Arc::new(AtomicU32::new(0));
    let counter = opened.clone();
    let db = Db::connect_with(
        DbConfig::new(url)
            .pool_size(1)
            .checkout_timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(5))
            .after_connect(move |c| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    // Opening a connection is slow (a remote server, TLS, a hook).
                    if n > 0 {
                        c.batch_execute("SELECT pg_sleep(0.8)").await?;
                    }
                    Ok(())
                })
            }),
    )
    .await
    .expect("db");
    // The holder keeps the only connection 0.9 s and leaves it unusable (an open
    // transaction through the raw client: DISCARD ALL fails, it is closed).
    let holder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.with_client(async |c| {
                c.batch_execute("BEGIN").await?;
                tokio::time::sleep(Duration::from_millis(900)).await;
                Ok(())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let waited = db.read_uncached::<Profile>(uuid::Uuid::new_v4()).await;
    let took = started.elapsed();
    holder.await.expect("join").expect("holder");
    eprintln!("waiter: {waited:?} after {took:?}");
    assert!(
        took < Duration::from_millis(1300),
        "a caller with checkout_timeout = 1 s waited {took:?} for its connection ({waited:?})"
    );
}

/// min_idle: connections killed while idle are opened again ahead of demand.
#[tokio::test]
async fn min_idle_is_refilled_within_seconds_after_a_kill() {
    let (_, url) = db_and_url().await;
    let name = uniq("minidle");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(4)
            .min_idle(2)
            .application_name(name.clone()),
    )
    .await
    .expect("db");
    let watcher = Db::connect(&url).await.expect("watcher");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = open_connections(&watcher, &name).await;
    terminate(&watcher, &name).await;
    let started = Instant::now();
    let mut after = 0;
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = open_connections(&watcher, &name).await;
        if after >= 2 {
            break;
        }
    }
    eprintln!("before {before}, after {after} in {:?}", started.elapsed());
    assert_eq!(before, 2);
    assert!(after >= 2, "min_idle 2 not refilled within 5 s: {after}");
    drop(db);
}

/// A Db opened on one runtime, used on another after the first is gone: it works,
/// and its idle limit still closes idle connections.
#[test]
fn a_db_outlives_the_runtime_it_was_opened_on_and_still_reaps() {
    let (db, url, name) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let (_, url) = db_and_url().await;
            let name = uniq("rt");
            let db = Db::connect_with(
                DbConfig::new(url.clone())
                    .pool_size(2)
                    .application_name(name.clone())
                    .idle_timeout(Some(Duration::from_millis(400))),
            )
            .await
            .expect("db");
            db.create(new_profile("first rt")).await.expect("create");
            (db, url, name)
        })
    })
    .join()
    .expect("thread");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt2");
    rt.block_on(async {
        let watcher = Db::connect(&url).await.expect("watcher");
        for _ in 0..5 {
            let n = db
                .query::<Profile>()
                .all()
                .await
                .expect("query on the second runtime");
            assert_eq!(n.len(), 1);
        }
        db.create(new_profile("second rt")).await.expect("write");
        assert!(open_connections(&watcher, &name).await >= 1);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let left = open_connections(&watcher, &name).await;
        assert_eq!(
            left, 0,
            "idle_timeout 400 ms: {left} idle connections still open after 2 s"
        );
    });
}

/// A connection given up mid-statement (its caller dropped) is closed, and its place
/// is given back at once — before its socket is closed (the background cancel keeps
/// the client alive until the cancel request went out) and before the server's
/// backend is gone. The next caller opens another: the server sees more than
/// `pool_size` sessions of this pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_statement_keeps_its_place_until_its_connection_closed() {
    let (_, url) = db_and_url().await;
    let name = uniq("over");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .application_name(name.clone()),
    )
    .await
    .expect("db");
    let mut most = 0i64;
    for _ in 0..10 {
        let _ = tokio::time::timeout(
            Duration::from_millis(30),
            db.with_client(async |c| Ok(c.batch_execute("SELECT pg_sleep(0.5)").await?)),
        )
        .await;
        // Counted from inside the pool itself: its one connection, and any other.
        let n = open_connections(&db, &name).await;
        most = most.max(n);
    }
    assert!(
        most <= 1,
        "pool_size 1, the server saw {most} sessions of the pool at once"
    );
}

/// A listener that accepts TCP and never answers: the startup handshake hangs.
async fn dark_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((client, _)) = listener.accept().await {
            held.push(client);
        }
    });
    port
}

/// connect_timeout: "How long opening a connection may take". Against a server that
/// accepts the TCP connection but never answers the startup message, `Db::connect`
/// must fail within it (or at least within the checkout timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_the_startup_fails_the_connect_in_time() {
    let port = dark_listener().await;
    let started = Instant::now();
    let connected = tokio::time::timeout(
        Duration::from_secs(8),
        Db::connect_with(
            DbConfig::new(format!("postgres://app@127.0.0.1:{port}/app"))
                .connect_timeout(Duration::from_secs(1))
                .checkout_timeout(Duration::from_secs(2)),
        ),
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "connect: {:?} after {took:?}",
        connected.as_ref().map(|r| r.as_ref().err())
    );
    assert!(
        connected.is_ok(),
        "Db::connect still hanging after {took:?} (connect_timeout 1 s)"
    );
}
