//! Round 41: dropped futures, deadlines, transactions and sizes on the in-place write
//! path of a cacheless handle (runtime/src/db/write.rs `write_in_place`).

mod common;

use std::time::{Duration, Instant};

use common::db_and_url;
use common::fixtures::{raw, uniq};
use common::tx::{CProfile, NewCProfile, count_named, patch, until_lock_wait};
use tabula::{Db, DbConfig, Error};

async fn plain(url: &str, pool: u32, deadline: Duration) -> Db {
    Db::connect_with(
        DbConfig::new(url)
            .pool_size(pool)
            .statement_timeout(deadline)
            .checkout_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("plain handle")
}

fn new_row(name: &str) -> NewCProfile {
    NewCProfile {
        user_id: uuid::Uuid::new_v4(),
        username: name.to_owned(),
        avatar_url: None,
    }
}

async fn lock_row(url: &str, id: uuid::Uuid) -> tokio_postgres::Client {
    let locker = raw(url).await;
    locker.batch_execute("BEGIN").await.expect("begin");
    locker
        .query("SELECT 1 FROM profiles WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .expect("lock");
    locker
}

async fn avatar(url: &str, id: uuid::Uuid) -> Option<String> {
    raw(url)
        .await
        .query_one("SELECT avatar_url FROM profiles WHERE id = $1", &[&id])
        .await
        .expect("row")
        .get(0)
}

/// A blocked update on a pool of one, its future dropped by a client-side timeout; the
/// lock is released later. The update must not land (its statement cancelled), and
/// the pool of one must serve the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_dropped_blocked_update_never_lands_and_pool_of_one_recovers() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 1, Duration::from_secs(5)).await;
    let row = db.create(new_row(&uniq("drop"))).await.expect("create");
    let locker = lock_row(&url, row.id).await;
    let probe_url = url.clone();
    let dropped = tokio::time::timeout(Duration::from_secs(6), async {
        tokio::select! {
            r = db.update::<CProfile>(row.id, patch("dropped")) => Some(r),
            () = until_lock_wait(&probe_url) => None,
        }
    })
    .await
    .expect("select ends");
    assert!(
        dropped.is_none(),
        "the update should still wait: {dropped:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    locker.batch_execute("COMMIT").await.expect("release");
    let t = Instant::now();
    let next = tokio::time::timeout(
        Duration::from_secs(8),
        db.update::<CProfile>(row.id, patch("next")),
    )
    .await
    .expect("next call on a pool of one hangs");
    next.expect("next call on a pool of one fails");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "next call took {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(avatar(&url, row.id).await.as_deref(), Some("next"));
    // The dropped update never lands afterwards either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        avatar(&url, row.id).await.as_deref(),
        Some("next"),
        "dropped update landed later"
    );
}

/// The server's deadline on a blocked update: `Error::Timeout`, and it never commits
/// once the lock goes; the pool of one serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_blocked_update_past_statement_timeout_is_timeout_and_never_lands() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 1, Duration::from_millis(400)).await;
    let row = db.create(new_row(&uniq("to"))).await.expect("create");
    let locker = lock_row(&url, row.id).await;
    let r = tokio::time::timeout(
        Duration::from_secs(8),
        db.update::<CProfile>(row.id, patch("late")),
    )
    .await
    .expect("update returns");
    assert!(matches!(r, Err(Error::Timeout { .. })), "got {r:?}");
    locker.batch_execute("COMMIT").await.expect("release");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        avatar(&url, row.id).await,
        None,
        "a Timeout write committed"
    );
    db.update::<CProfile>(row.id, patch("after"))
        .await
        .expect("pool of one usable after Timeout");
}

/// Creates dropped after 0..N polls at many points: every create reported Ok exists
/// exactly once; a dropped one exists at most once; the pool of one still works and
/// no connection is leaked (server sessions of the handle ≤ 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_creates_dropped_at_every_point_no_loss_no_dup_no_leak() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 1, Duration::from_secs(3)).await;
    let mut acked = Vec::new();
    let mut dropped = Vec::new();
    for i in 0..60u64 {
        let name = uniq(&format!("d{i}"));
        let f = db.create(new_row(&name));
        match tokio::time::timeout(Duration::from_micros(i * 150), f).await {
            Ok(r) => {
                r.expect("create");
                acked.push(name);
            }
            Err(_) => dropped.push(name),
        }
    }
    let last = tokio::time::timeout(Duration::from_secs(8), db.create(new_row(&uniq("last"))))
        .await
        .expect("pool of one hangs after dropped creates");
    last.expect("pool of one fails after dropped creates");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in &acked {
        assert_eq!(count_named(&url, n).await, 1, "acked {n}");
    }
    for n in &dropped {
        assert!(count_named(&url, n).await <= 1, "dropped {n} duplicated");
    }
    let sessions: i64 = raw(&url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'tabula'",
            &[],
        )
        .await
        .expect("sessions")
        .get(0);
    assert!(sessions <= 2, "sessions of a pool of one: {sessions}");
    eprintln!("acked {} dropped {}", acked.len(), dropped.len());
}

/// On a pool of one, the outer handle writes while its transaction holds the only
/// connection: it must end (PoolTimeout or Misuse), not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_outer_write_inside_transaction_on_pool_of_one_ends() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 1, Duration::from_secs(3)).await;
    let outer = db.clone();
    let name = uniq("outer");
    let n2 = name.clone();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        db.transaction(|tx| {
            let (outer, n2) = (outer.clone(), n2.clone());
            async move {
                tx.create(new_row(&format!("{n2}-in"))).await?;
                let inner = outer.create(new_row(&n2)).await;
                eprintln!("outer write inside tx: {inner:?}");
                inner.map(|_| ())
            }
        }),
    )
    .await
    .expect("outer write inside a transaction on a pool of one hangs");
    assert!(r.is_err(), "got {r:?}");
    assert_eq!(count_named(&url, &name).await, 0);
    assert_eq!(count_named(&url, &format!("{name}-in")).await, 0);
    db.create(new_row(&uniq("after")))
        .await
        .expect("pool usable after");
}

/// A panic in a transaction body after a write rolls it back, on a pool of one, and the
/// pool serves the next call; a nested savepoint that fails leaves the outer usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_panic_after_write_rolls_back_and_savepoint_recovers() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 1, Duration::from_secs(3)).await;
    let name = uniq("panic");
    let (d2, n2) = (db.clone(), name.clone());
    let joined = tokio::spawn(async move {
        d2.transaction(|tx| {
            let n2 = n2.clone();
            async move {
                tx.create(new_row(&n2)).await?;
                if !n2.is_empty() {
                    panic!("boom");
                }
                Ok(())
            }
        })
        .await
    })
    .await;
    assert!(joined.is_err(), "the panic propagates");
    assert_eq!(
        count_named(&url, &name).await,
        0,
        "panicked transaction committed"
    );
    let dup = uniq("dup");
    db.create(new_row(&dup))
        .await
        .expect("pool usable after panic");
    let kept = uniq("kept");
    let (k2, d3) = (kept.clone(), dup.clone());
    db.transaction(|tx| {
        let (k2, d3) = (k2.clone(), d3.clone());
        async move {
            let mine = tx.create(new_row(&k2)).await?;
            let r = tx
                .transaction(|sp| {
                    let d3 = d3.clone();
                    async move { sp.create(new_row(&d3)).await }
                })
                .await;
            assert!(matches!(r, Err(Error::UniqueViolation { .. })), "{r:?}");
            tx.update::<CProfile>(mine.id, patch("after-sp")).await?;
            Ok(())
        }
    })
    .await
    .expect("outer transaction commits after failed savepoint");
    assert_eq!(count_named(&url, &kept).await, 1);
}

/// A 30,000-row create_many (two chunks) with a duplicate in the second chunk: none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_create_many_unique_violation_in_second_chunk_is_all_or_nothing() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 2, Duration::from_secs(15)).await;
    let tag = uniq("cm");
    let mut rows: Vec<NewCProfile> = (0..30_000)
        .map(|i| new_row(&format!("{tag}-{i}")))
        .collect();
    rows[25_000].username = format!("{tag}-3");
    let r = db.create_many(rows).await;
    assert!(
        matches!(r, Err(Error::UniqueViolation { .. })),
        "{:?}",
        r.as_ref().map(Vec::len)
    );
    let n: i64 = raw(&url)
        .await
        .query_one(
            "SELECT count(*) FROM profiles WHERE username LIKE $1",
            &[&format!("{tag}-%")],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "create_many left a partial batch");
}

/// A 50,000-row create_many dropped mid-way: all or nothing, and the pool of one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_dropped_create_many_is_all_or_nothing() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 1, Duration::from_secs(15)).await;
    let tag = uniq("cmd");
    let rows: Vec<NewCProfile> = (0..50_000)
        .map(|i| new_row(&format!("{tag}-{i}")))
        .collect();
    let r = tokio::time::timeout(Duration::from_millis(300), db.create_many(rows)).await;
    eprintln!("dropped create_many finished: {}", r.is_ok());
    let next = tokio::time::timeout(Duration::from_secs(10), db.create(new_row(&uniq("n"))))
        .await
        .expect("pool of one hangs after dropped create_many");
    next.expect("pool of one fails after dropped create_many");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n: i64 = raw(&url)
        .await
        .query_one(
            "SELECT count(*) FROM profiles WHERE username LIKE $1",
            &[&format!("{tag}-%")],
        )
        .await
        .expect("count")
        .get(0);
    assert!(n == 0 || n == 50_000, "partial create_many: {n}");
}

/// Hostile values through the in-place path: NUL is refused cleanly, Unicode and 20 KB
/// strings round-trip, an empty patch returns the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_hostile_values_in_place() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 1, Duration::from_secs(5)).await;
    let nul = db.create(new_row("a\0b")).await;
    assert!(nul.is_err(), "NUL accepted: {nul:?}");
    let uni = format!(
        "{}-é🦀\u{202e}'; DROP TABLE profiles;--{}",
        uniq("u"),
        "x".repeat(20_000)
    );
    let row = db.create(new_row(&uni)).await.expect("unicode create");
    assert_eq!(row.username, uni);
    let same = db
        .update::<CProfile>(row.id, common::tx::CProfilePatch::default())
        .await
        .expect("empty patch");
    assert_eq!(same.username, uni);
    let missing = db
        .update::<CProfile>(uuid::Uuid::new_v4(), patch("x"))
        .await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    let gone = db.delete::<CProfile>(uuid::Uuid::new_v4()).await;
    assert!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");
    db.create(new_row(&uniq("ok"))).await.expect("pool usable");
}

/// Every public write future of a cacheless handle is Send (spawned) and ≤ 2048 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_write_futures_send_and_small() {
    let (_d, url) = db_and_url().await;
    let db = plain(&url, 2, Duration::from_secs(5)).await;
    let mut sizes = Vec::new();
    let d = db.clone();
    let f = async move { d.create(new_row(&uniq("s"))).await };
    sizes.push(("create(spawned)", std::mem::size_of_val(&f)));
    let row = tokio::spawn(f).await.expect("join").expect("create");
    let c = db.create(new_row(&uniq("s2")));
    sizes.push(("create", std::mem::size_of_val(&c)));
    drop(c);
    let cm = db.create_many(vec![new_row(&uniq("m1")), new_row(&uniq("m2"))]);
    sizes.push(("create_many", std::mem::size_of_val(&cm)));
    drop(cm);
    let u = db.update::<CProfile>(row.id, patch("s"));
    sizes.push(("update", std::mem::size_of_val(&u)));
    drop(u);
    let up = db.upsert(new_row(&row.username), CProfile::USERNAME);
    sizes.push(("upsert", std::mem::size_of_val(&up)));
    drop(up);
    let dl = db.delete::<CProfile>(row.id);
    sizes.push(("delete", std::mem::size_of_val(&dl)));
    drop(dl);
    let d = db.clone();
    let id = row.id;
    tokio::spawn(async move { d.update::<CProfile>(id, patch("sp")).await })
        .await
        .expect("join")
        .expect("update");
    let d = db.clone();
    let name = row.username.clone();
    tokio::spawn(async move { d.upsert(new_row(&name), CProfile::USERNAME).await })
        .await
        .expect("join")
        .expect("upsert");
    let d = db.clone();
    tokio::spawn(async move { d.create_many(vec![new_row(&uniq("m3"))]).await })
        .await
        .expect("join")
        .expect("create_many");
    let d = db.clone();
    tokio::spawn(async move { d.delete::<CProfile>(id).await })
        .await
        .expect("join")
        .expect("delete");
    eprintln!("{sizes:?}");
    for (name, size) in sizes {
        assert!(size <= 2048, "{name} future is {size} bytes");
    }
}

/// A create whose answer is lost (replies cut after it goes out) on a cacheless handle:
/// the row landed, so the error must be `OutcomeUnknown`, never `Timeout`; and the pool
/// of one serves the next call on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_lost_answer_of_landed_create_is_outcome_unknown() {
    let (_d, url) = db_and_url().await;
    let proxy = common::Proxy::start(common::server_addr(&url)).await;
    let db = plain(
        &common::through(&url, proxy.port),
        1,
        Duration::from_millis(600),
    )
    .await;
    db.create(new_row(&uniq("warm"))).await.expect("warm");
    proxy.cut_replies();
    let name = uniq("lost");
    let r = tokio::time::timeout(Duration::from_secs(10), db.create(new_row(&name)))
        .await
        .expect("create with lost answer ends");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let landed = count_named(&url, &name).await;
    eprintln!("lost answer: {r:?}, landed {landed}");
    if landed == 1 {
        assert!(
            matches!(r, Err(Error::OutcomeUnknown { .. })),
            "landed but reported {r:?}"
        );
    } else {
        assert!(r.is_err(), "not landed but Ok");
    }
    let next = tokio::time::timeout(Duration::from_secs(8), db.create(new_row(&uniq("next"))))
        .await
        .expect("pool of one hangs after a lost answer");
    next.expect("pool of one fails after a lost answer");
}
