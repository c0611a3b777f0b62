//! Pool and connection options on a real PostgreSQL: application name, an
//! after-connect hook (kept across session resets), connection lifetime and idle
//! limits, idle connections kept ahead, and the same settings from the URL.

mod common;

use std::time::Duration;

use common::sessions::open_connections;
use common::*;
use tabula::{Db, DbConfig, Error};

async fn backend(db: &Db) -> (i32, String, String) {
    db.with_client(async |c| {
        let row = c
            .query_one(
                "SELECT pg_backend_pid(), current_setting('application_name'), \
                        current_setting('search_path')",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1), row.get(2)))
    })
    .await
    .expect("session")
}

#[tokio::test]
async fn application_name_and_an_after_connect_hook_hold_on_every_connection() {
    let (_, url) = db_and_url().await;
    let plain = Db::connect(&url).await.expect("db");
    assert_eq!(backend(&plain).await.1, "tabula", "the default name");

    let hooked = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .application_name("billing-api")
            .after_connect(|c| {
                Box::pin(async move {
                    c.batch_execute("SET search_path TO storage, public")
                        .await?;
                    Ok(())
                })
            }),
    )
    .await
    .expect("db");
    for _ in 0..3 {
        // `with_client` resets the session (DISCARD ALL) after each body: the hook runs
        // again, so the setting holds for the next user of the connection.
        let (_, name, path) = backend(&hooked).await;
        assert_eq!(name, "billing-api");
        assert_eq!(path, "storage, public");
    }
    // The setting is in force for Tabula's own statements too: `buckets` resolves to
    // `storage.buckets` through the search path.
    let n: i64 = hooked
        .with_client(async |c| {
            Ok(c.query_one("SELECT count(*) FROM buckets", &[])
                .await?
                .get(0))
        })
        .await
        .expect("search_path in force");
    assert!(n >= 0);

    // A hook that fails fails the connection, with its error.
    let failing = Db::connect_with(DbConfig::new(url).after_connect(|c| {
        Box::pin(async move {
            c.batch_execute("SET no_such_setting_anywhere = 1").await?;
            Ok(())
        })
    }))
    .await;
    assert!(
        failing.is_err(),
        "a failing hook must not give a usable pool"
    );
}

#[tokio::test]
async fn a_hook_that_never_finishes_fails_the_connect_within_its_deadline() {
    let (_, url) = db_and_url().await;
    let started = std::time::Instant::now();
    let hung = Db::connect_with(
        DbConfig::new(url)
            .connect_timeout(Duration::from_millis(500))
            .after_connect(|_| Box::pin(std::future::pending())),
    )
    .await;
    assert!(matches!(hung, Err(Error::Connect(_))), "{hung:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_are_replaced_after_their_lifetime_and_closed_when_idle() {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .max_lifetime(Some(Duration::from_millis(600))),
    )
    .await
    .expect("db");
    let (first, _, _) = backend(&db).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (second, _, _) = backend(&db).await;
    assert_ne!(first, second, "a connection outlived its lifetime");

    let name = format!("idle-{}", std::process::id());
    let idle = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(2)
            .application_name(name.clone())
            .idle_timeout(Some(Duration::from_millis(400))),
    )
    .await
    .expect("db");
    backend(&idle).await;
    let watcher = Db::connect(&url).await.expect("watcher");
    assert!(open_connections(&watcher, &name).await >= 1);
    let mut closed = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if open_connections(&watcher, &name).await == 0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "idle connections were never closed");
}

#[tokio::test]
async fn min_idle_keeps_connections_open_ahead_of_demand() {
    let (_, url) = db_and_url().await;
    let name = format!("warm-{}", std::process::id());
    let _db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(5)
            .min_idle(3)
            .application_name(name.clone()),
    )
    .await
    .expect("db");
    let watcher = Db::connect(&url).await.expect("watcher");
    let mut open = 0i64;
    for _ in 0..50 {
        open = open_connections(&watcher, &name).await;
        if open >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        open >= 3,
        "{open} connections open, 3 kept idle were asked for"
    );
}

#[tokio::test]
async fn pool_settings_come_from_the_url_and_bad_ones_are_refused_by_name() {
    let (_, url) = db_and_url().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = DbConfig::new(format!(
        "{url}{sep}pool_size=3&pool_max_lifetime=0&pool_idle_timeout=90&statement_timeout=1500&application_name=from-url&connect_timeout=7"
    ));
    assert_eq!(config.pool_size, 3);
    assert_eq!(config.max_lifetime, None, "0 is for ever");
    assert_eq!(config.idle_timeout, Some(Duration::from_secs(90)));
    assert_eq!(config.statement_timeout, Duration::from_millis(1500));
    assert_eq!(config.connect_timeout, Duration::from_secs(7));
    assert_eq!(config.application_name, "from-url");
    let db = Db::connect_with(config)
        .await
        .expect("the url without our settings connects");
    let (_, name, _) = backend(&db).await;
    assert_eq!(name, "from-url");
    let timeout: String = db
        .with_client(async |c| Ok(c.query_one("SHOW statement_timeout", &[]).await?.get(0)))
        .await
        .expect("show");
    assert_eq!(timeout, "1500ms");

    let bad = Db::connect_with(DbConfig::new(format!("{url}{sep}pool_size=lots"))).await;
    match bad {
        Err(Error::Config(message)) => assert!(message.contains("pool_size"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // Numbers that cannot be meant: refused by name, not clamped into a pool that
    // opens connections until the process runs out of memory, nor a 1 ms deadline.
    for (setting, word) in [
        ("pool_size=99999999999", "pool_size"),
        ("pool_min_idle=4000000000", "pool_min_idle"),
        ("pool_size=0", "pool_size"),
        ("statement_timeout=0", "statement_timeout"),
    ] {
        match Db::connect_with(DbConfig::new(format!("{url}{sep}{setting}"))).await {
            Err(Error::Config(message)) => assert!(message.contains(word), "{message}"),
            other => panic!("{setting}: expected a configuration error, got {other:?}"),
        }
    }
    // In a key=value connection string a pool setting is PostgreSQL's to read, and it
    // refuses it: the error says where the setting belongs.
    match Db::connect_with(DbConfig::new("host=127.0.0.1 pool_size=3 dbname=x")).await {
        Err(Error::Config(message)) => assert!(message.contains("pool_size"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // The password never shows in the configuration's Debug output.
    let shown = format!("{:?}", DbConfig::new("postgres://app:s3cret@localhost/app"));
    assert!(!shown.contains("s3cret"), "{shown}");
}

/// A pooled connection that died while idle is found dead only when a statement is
/// sent on it. A read is tried again on a fresh connection (bounded by the pool size,
/// counted in `tabula_db_read_retries_total`); a write is not — its outcome is the
/// caller's to learn (`OutcomeUnknown`).
#[tokio::test]
async fn a_read_on_a_connection_that_died_idle_is_tried_again_and_a_write_is_not() {
    let (_, url) = common::db_and_url().await;
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let db = Db::connect_with(DbConfig::new(common::through(&url, proxy.port)).pool_size(1))
        .await
        .expect("db");
    let p = db
        .create(common::new_profile("retried"))
        .await
        .expect("create");

    proxy.close_on_next_request();
    let read = db
        .read::<common::Profile>(p.id)
        .await
        .expect("a read is tried again");
    assert_eq!(read.map(|r| r.username).as_deref(), Some("retried"));

    proxy.close_on_next_request();
    let write = db.create(common::new_profile("not retried")).await;
    // The client cannot tell whether the statement reached the server before the
    // connection closed: a write alone is reported as possibly applied (`attack_tx.rs`).
    assert!(
        matches!(write, Err(tabula::Error::OutcomeUnknown { .. })),
        "a write on a dead connection must fail, not be sent again: {write:?}"
    );
    // The pool recovers for what comes next.
    assert_eq!(common::count_profiles(&db).await, 1);
}

/// The pool's own accounting (Tabula's pool, no longer bb8's): callers that stop
/// waiting for a connection — dropped while queued, or while their connection was
/// being opened — give their place back, so the pool neither shrinks nor grows past
/// its size. With a permit lost per dropped caller, the last read here would time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_checkouts_give_their_place_back_and_the_size_holds() {
    let (_, url) = db_and_url().await;
    let name = format!("size-{}", std::process::id());
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(2)
            .application_name(name.clone())
            .checkout_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("db");
    // Both connections busy; callers queue behind them and give up.
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                db.with_client(async |c| Ok(c.batch_execute("SELECT pg_sleep(0.3)").await?))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        let gave_up = tokio::time::timeout(Duration::from_millis(5), backend_pid(&db)).await;
        assert!(gave_up.is_err(), "a queued caller got a busy connection");
    }
    for sleeper in sleepers {
        sleeper.await.expect("join").expect("sleep");
    }
    // Callers dropped while a connection of theirs was being opened: a fresh pool
    // opens one per caller, and each is given up at a different point of opening.
    let fresh = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(2)
            .application_name(name.clone()),
    )
    .await
    .expect("db");
    for step in 0..20u64 {
        let _ = tokio::time::timeout(Duration::from_micros(step * 150), backend_pid(&fresh)).await;
    }
    // Every place is back: as many callers as the pool's size get a connection at
    // once, and no more connections exist than the two pools' sizes.
    let both =
        futures_util::future::join_all((0..2).map(|_| {
            db.with_client(async |c| Ok(c.batch_execute("SELECT pg_sleep(0.05)").await?))
        }))
        .await;
    assert!(both.iter().all(Result::is_ok), "{both:?}");
    assert!(
        fresh
            .read_uncached::<Profile>(uuid::Uuid::new_v4())
            .await
            .is_ok()
    );
    let watcher = Db::connect(&url).await.expect("watcher");
    let open = open_connections(&watcher, &name).await;
    assert!(
        open <= 4,
        "{open} connections open, the two pools hold 2 each"
    );
}

/// Under a burst far larger than the pool, the server never sees more connections
/// than the pool's size, and every caller is served in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_never_opens_more_than_the_pool_size() {
    let (_, url) = db_and_url().await;
    let name = format!("burst-{}", std::process::id());
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(3)
            .application_name(name.clone())
            .checkout_timeout(Duration::from_secs(10)),
    )
    .await
    .expect("db");
    let watcher = Db::connect(&url).await.expect("watcher");
    let burst = futures_util::future::join_all((0..60).map(|_| {
        let db = db.clone();
        tokio::spawn(async move {
            db.with_client(async |c| Ok(c.batch_execute("SELECT pg_sleep(0.01)").await?))
                .await
        })
    }));
    let watch = async {
        let mut most = 0;
        for _ in 0..20 {
            most = most.max(open_connections(&watcher, &name).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        most
    };
    let (results, most) = tokio::join!(burst, watch);
    for result in results {
        result.expect("join").expect("served");
    }
    assert!(
        most <= 3,
        "{most} connections open at once, the pool holds 3"
    );
    assert!(most >= 1, "the watcher saw no connection at all");
}

async fn backend_pid(db: &Db) -> tabula::Result<i32> {
    db.with_client(async |c| Ok(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0)))
        .await
}
