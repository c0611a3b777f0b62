//! The pool's faults, found by an outside attack on the pool of Tabula's own (round
//! 25): connect refusals and silent servers, one deadline per checkout, a caller gone
//! during a session reset, cancelled statements and the pool's size as the server
//! counts it, `min_idle` after a kill, and a handle that outlives its runtime. Each
//! failed before its fix.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::fixtures::uniq;
use common::sessions::{open_connections, terminate};
use common::{Profile, db_and_url, new_profile};
use tabula::{Db, DbConfig, Error};

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
/// connections) is reported promptly, as `Error::Connect` — "no connection could be
/// opened" (it was `Error::Connection`, a lost connection, which a read retried).
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

/// A connection given up mid-statement (its caller dropped) is closed, and keeps its
/// place until its socket closed (the background cancel keeps the client until the
/// cancel request went out): the server never sees more than `pool_size` sessions
/// of the pool (it saw 2 of a pool of 1 when the place went back at once).
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

// Round 26: the fixes of round 25, attacked again.

/// Statements of `name`'s sessions still running `marker`.
async fn running(watcher: &Db, name: &str, marker: &str) -> i64 {
    let (name, marker) = (name.to_owned(), format!("%{marker}%"));
    watcher
        .with_client(async move |c| {
            Ok(c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'active' AND query LIKE $2",
                &[&name, &marker],
            )
            .await?
            .get(0))
        })
        .await
        .expect("running")
}

mod net {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// `url` with its host and port replaced by a proxy on loopback `port`.
    pub(super) fn through(url: &str, port: u16) -> String {
        let config: tokio_postgres::Config = url.parse().expect("url");
        let user = config.get_user().expect("user").to_owned();
        let dbname = config.get_dbname().expect("dbname").to_owned();
        format!("postgres://{user}@127.0.0.1:{port}/{dbname}")
    }

    /// The loopback address of the PostgreSQL server `url` names.
    pub(super) fn server_addr(url: &str) -> std::net::SocketAddr {
        let config: tokio_postgres::Config = url.parse().expect("url");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A TCP proxy to the server; the next `dark` connections it accepts are held open
    /// and never answered (a server that accepted and hangs: frozen postmaster, a
    /// load balancer whose backend is gone, a host under swap).
    pub(super) struct DarkProxy {
        pub(super) port: u16,
        pub(super) dark: Arc<AtomicU32>,
        pub(super) accepted: Arc<AtomicU32>,
    }

    impl DarkProxy {
        pub(super) async fn start(target: std::net::SocketAddr) -> DarkProxy {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let dark = Arc::new(AtomicU32::new(0));
            let accepted = Arc::new(AtomicU32::new(0));
            let (d, a) = (dark.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((mut client, _)) = listener.accept().await {
                    a.fetch_add(1, Ordering::SeqCst);
                    let take = d
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if take {
                        held.push(client);
                        continue;
                    }
                    tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            });
            DarkProxy {
                port,
                dark,
                accepted,
            }
        }
    }
}

/// A statement given up mid-way keeps its place until its cancel request went out.
/// The cancel request opens a new connection to the server and waits for its answer
/// to the SSL request; a server that accepts that connection and never answers held
/// the place for ever (a pool of 1 refused every later caller). The cancel is now
/// bounded by the connect timeout, and the pool serves again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_never_answered_gives_the_place_back_within_the_connect_timeout() {
    let (_, url) = db_and_url().await;
    let proxy = net::DarkProxy::start(net::server_addr(&url)).await;
    let db = Db::connect_with(
        DbConfig::new(net::through(&url, proxy.port))
            .pool_size(1)
            .connect_timeout(Duration::from_secs(1))
            .checkout_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("db");
    let p = db.create(new_profile("cancel hang")).await.expect("create");
    let dark = proxy.dark.clone();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        db.with_client(async move |c| {
            // The next connection to the server (the cancel request) meets silence.
            dark.store(1, Ordering::SeqCst);
            c.batch_execute("SELECT pg_sleep(1) /* r26-cancel-hang */")
                .await?;
            Ok(())
        }),
    )
    .await;
    assert!(gave_up.is_err(), "the caller gives up");
    // Well past the connect timeout and the statement itself.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let read = db.read_uncached::<Profile>(p.id).await;
        outcomes.push(format!(
            "{:?} after {:?}",
            read.as_ref().map(|r| r.is_some()),
            started.elapsed()
        ));
    }
    eprintln!(
        "reads after the hung cancel: {outcomes:?}; proxy accepted {}",
        proxy.accepted.load(Ordering::SeqCst)
    );
    assert!(
        outcomes.iter().all(|o| o.starts_with("Ok(true)")),
        "a pool of 1 stays unusable while a cancel request hangs: {outcomes:?}"
    );
}

/// A checkout future dropped on a thread without a tokio runtime (the runtime that
/// drives the connections is alive): its statement is still cancelled, on the
/// connection's own runtime, and its place kept until then. Before, no cancel was
/// sent and the place went back at once: the statement ran on, next to the pool's
/// new connection (2 sessions of a pool of 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_dropped_off_its_runtime_is_still_cancelled_and_keeps_its_place() {
    let (_, url) = db_and_url().await;
    let name = uniq("offrt");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .application_name(name.clone()),
    )
    .await
    .expect("db");
    let watcher = Db::connect(&url).await.expect("watcher");
    let p = db.create(new_profile("off runtime")).await.expect("create");
    let mut fut = {
        let db = db.clone();
        Box::pin(async move {
            db.with_client(async |c| {
                Ok(c.batch_execute("SELECT pg_sleep(3) /* r26-offrt */")
                    .await?)
            })
            .await
        })
    };
    // Drive it until the statement is on the server, without dropping it.
    let first = tokio::time::timeout(Duration::from_millis(300), &mut fut).await;
    assert!(first.is_err(), "still running");
    std::thread::spawn(move || drop(fut))
        .join()
        .expect("drop thread");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read = db.read_uncached::<Profile>(p.id).await;
    let sessions = open_connections(&watcher, &name).await;
    let still = running(&watcher, &name, "r26-offrt").await;
    eprintln!("read {read:?}; sessions of the pool {sessions}; statement still running {still}");
    assert!(
        sessions <= 1 && still == 0,
        "pool_size 1: the server sees {sessions} sessions, the abandoned statement running: {still}"
    );
}

/// min_idle with connections slower to open than checkout_timeout (a far server,
/// TLS, a hook): the reaper's connects are bounded by connect_timeout, as no caller
/// waits for them (they were cut at checkout_timeout every second, and min_idle was
/// never reached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_is_filled_when_a_connect_outlasts_the_checkout_timeout() {
    let (_, url) = db_and_url().await;
    let name = uniq("slowfill");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(4)
            .min_idle(3)
            .application_name(name.clone())
            .checkout_timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_secs(5))
            .after_connect(|c| {
                Box::pin(async move {
                    c.batch_execute("SELECT pg_sleep(0.4)").await?;
                    Ok(())
                })
            }),
    )
    .await
    .expect("db");
    let watcher = Db::connect(&url).await.expect("watcher");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = open_connections(&watcher, &name).await;
    eprintln!("min_idle 3, after 4 s: {n} connections");
    drop(db);
    assert!(
        n >= 3,
        "min_idle 3 never reached: {n} connections after 4 s"
    );
}

/// The same for a caller that does not wait at all: the pool has room (pool_size 4,
/// one connection busy), and its connect is bounded by connect_timeout ("how long
/// opening a connection may take"), not checkout_timeout ("how long to wait for a
/// free connection"): it was PoolTimeout with 3 free places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_room_in_the_pool_waits_for_a_slow_connect_not_the_checkout_timeout() {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(4)
            .checkout_timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_secs(5))
            .after_connect(|c| {
                Box::pin(async move {
                    c.batch_execute("SELECT pg_sleep(0.4)").await?;
                    Ok(())
                })
            }),
    )
    .await
    .expect("db");
    let p = db.create(new_profile("room")).await.expect("create");
    let holder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.with_client(async |c| Ok(c.batch_execute("SELECT pg_sleep(1)").await?))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let read = db.read_uncached::<Profile>(p.id).await;
    let took = started.elapsed();
    holder.await.expect("join").expect("holder");
    eprintln!("read with room in the pool: {read:?} after {took:?}");
    assert!(matches!(read, Ok(Some(_))), "{read:?} after {took:?}");
}

/// Hostile settings through the public fields (the builder clamps them): a pool of
/// none is refused by name at connect, not a pool that times every call out; a
/// `min_idle` above the pool's size keeps the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_none_is_refused_and_min_idle_never_outgrows_the_size() {
    let (_, url) = db_and_url().await;
    let mut none = DbConfig::new(url.clone());
    none.pool_size = 0;
    match Db::connect_with(none).await {
        Err(Error::Config(message)) => assert!(message.contains("pool_size"), "{message}"),
        other => panic!("a pool of 0 connections: {other:?}"),
    }
    let name = uniq("minbig");
    let mut greedy = DbConfig::new(url.clone()).application_name(name.clone());
    greedy.pool_size = 2;
    greedy.min_idle = Some(50);
    let db = Db::connect_with(greedy).await.expect("db");
    let watcher = Db::connect(&url).await.expect("watcher");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let open = open_connections(&watcher, &name).await;
    assert!(
        open <= 2,
        "{open} connections for a pool of 2 asked to keep 50 idle"
    );
    assert!(
        db.read_uncached::<Profile>(uuid::Uuid::new_v4())
            .await
            .is_ok()
    );
}
