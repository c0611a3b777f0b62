//! Found from outside (round 19): read replicas, attacking round 18's fixes (real primary + hot standby).
//! Tests named `defect_*` failed before their fix.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tabula::migrate::{Migration, Migrator};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table, cached};

use common::replicas::{TURN, paused, set};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "notes")]
pub struct Note {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "sticky_notes")]
pub struct Sticky {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

/// `body` is `pg_is_in_recovery()`: "true" when the standby answered.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "whereami")]
pub struct Where {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

/// Like `whereami`, after sleeping 11.6 s.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "slow_where")]
pub struct SlowWhere {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "mid_where")]
pub struct MidWhere {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

fn migrator() -> Migrator {
    Migrator::new(vec![Migration::new(
        1,
        "r19",
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);
         CREATE TABLE sticky_notes (id bigint PRIMARY KEY, body text NOT NULL);
         -- A write a cancel request does not stop (as a commit waiting for a synchronous
         -- standby: cancelled, it is committed all the same).
         CREATE FUNCTION r19_sticky() RETURNS trigger LANGUAGE plpgsql AS $f$
           BEGIN
             BEGIN PERFORM pg_sleep(1.5);
             EXCEPTION WHEN query_canceled THEN PERFORM pg_sleep(1.5);
             END;
             RETURN NEW;
           END $f$;
         CREATE TRIGGER r19_sticky BEFORE INSERT ON sticky_notes
           FOR EACH ROW EXECUTE FUNCTION r19_sticky();
         CREATE FUNCTION r19_where(float8) RETURNS text LANGUAGE plpgsql VOLATILE AS $f$
           BEGIN PERFORM pg_sleep($1); RETURN pg_is_in_recovery()::text; END $f$;
         CREATE VIEW whereami AS SELECT 1::bigint AS id, r19_where(0) AS body;
         CREATE VIEW mid_where AS SELECT 1::bigint AS id, r19_where(1.4) AS body;
         CREATE VIEW slow_where AS SELECT 1::bigint AS id, r19_where(11.6) AS body;",
    )])
    .expect("migrator")
}

async fn database() -> String {
    let set = tokio::task::spawn_blocking(set).await.expect("set");
    set.database(&migrator()).await.expect("database")
}

fn config(name: &str) -> DbConfig {
    let set = set();
    DbConfig::new(set.primary_url(name))
        .replica(set.replica_url(name))
        .pool_size(2)
}

async fn plain(name: &str) -> Db {
    Db::connect_with(DbConfig::new(set().primary_url(name)).pool_size(2))
        .await
        .expect("plain")
}

async fn whereami(db: &Db) -> String {
    // A plain query (no row cache, which fills from the primary once a global cache
    // is installed).
    db.query::<Where>()
        .all()
        .await
        .expect("whereami")
        .into_iter()
        .map(|w| w.body)
        .next()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// 1. `#[cached]` bodies read the primary through a task-local flag: a body that hands
//    its read to another task (tokio::spawn) loses it — such a body reads through
//    `db.on_primary()` (documented; the defect's test now checks that path).
// ---------------------------------------------------------------------------------
// One per test (a Db belongs to its test's runtime); tests hold TURN.
static MEMO_READER: std::sync::Mutex<Option<Db>> = std::sync::Mutex::new(None);

fn memo_reader() -> Db {
    MEMO_READER.lock().expect("setup").clone().expect("reader")
}

fn install_cache() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let unique = format!(
            "r19m{}x{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let redis = tabula::testkit::redis_url().expect("redis");
        let global = CacheService::redis(
            &redis,
            CacheConfig::default()
                .prefix(unique.clone())
                .namespace(format!("ns{unique}")),
        )
        .expect("global");
        assert!(global.install_global());
    });
}

#[cached(ttl = 120, tables(Note))]
async fn memo_spawned(key: u32) -> String {
    let _ = key;
    let db = memo_reader().on_primary();
    tokio::spawn(async move { whereami(&db).await })
        .await
        .expect("join")
}

#[cached(ttl = 120, tables(Note))]
async fn memo_joined(key: u32) -> String {
    let _ = key;
    let db = &memo_reader();
    let (a, b) = tokio::join!(whereami(db), whereami(db));
    format!("{a},{b}")
}

#[cached(ttl = 120, tables(Note))]
async fn memo_inner(key: u32) -> String {
    let _ = key;
    whereami(&memo_reader()).await
}

#[cached(ttl = 120, tables(Note))]
async fn memo_outer(key: u32) -> String {
    let inner = memo_inner(key).await;
    let own = whereami(&memo_reader()).await;
    format!("{inner},{own}")
}

#[tokio::test]
async fn memo_bodies_read_the_primary_joined_and_nested() {
    let _turn = TURN.lock().await;
    let name = database().await;
    install_cache();
    let reader = Db::connect_with(config(&name)).await.expect("reader");
    *MEMO_READER.lock().expect("setup") = Some(reader);
    let db = &memo_reader();
    assert_eq!(
        whereami(db).await,
        "true",
        "control: plain reads use the standby"
    );
    let key = rand_key();
    assert_eq!(
        memo_joined(key).await,
        "false,false",
        "join! in a memo body"
    );
    assert_eq!(memo_outer(key).await, "false,false", "memo in a memo body");
}

#[tokio::test]
async fn defect_memo_body_that_spawns_its_read_reads_the_primary_through_on_primary() {
    let _turn = TURN.lock().await;
    let name = database().await;
    install_cache();
    let reader = Db::connect_with(config(&name)).await.expect("reader");
    *MEMO_READER.lock().expect("setup") = Some(reader);
    let db = &memo_reader();
    assert_eq!(
        whereami(db).await,
        "true",
        "control: plain reads use the standby"
    );
    let got = memo_spawned(rand_key()).await;
    assert_eq!(
        got, "false",
        "a #[cached] body whose read runs in a spawned task read the STANDBY: the memo is \
         filled from a replica that may lag (in_memo_body is a task-local)"
    );
}

fn rand_key() -> u32 {
    (uuid::Uuid::new_v4().as_u128() & 0xFFFF_FFFF) as u32
}

// ---------------------------------------------------------------------------------
// 2. A legitimately slow read on a healthy standby: longer than half the deadline,
//    within it. Tried again on the primary from scratch; with a deadline above 10 s
//    (grace capped at 5 s) the second try no longer fits the client's wait.
// ---------------------------------------------------------------------------------
#[tokio::test]
async fn defect_a_read_within_the_deadline_times_out_because_a_replica_is_configured() {
    let _turn = TURN.lock().await;
    let name = database().await;
    set().caught_up().await.expect("caught up");
    let deadline = Duration::from_secs(12);
    let without = Db::connect_with(
        DbConfig::new(set().primary_url(&name))
            .pool_size(2)
            .statement_timeout(deadline),
    )
    .await
    .expect("plain");
    let with = Db::connect_with(config(&name).statement_timeout(deadline))
        .await
        .expect("with replica");
    assert_eq!(
        whereami(&with).await,
        "true",
        "control: the standby answers"
    );
    let (a, b) = tokio::join!(
        async {
            let t = Instant::now();
            (without.read::<SlowWhere>(1).await, t.elapsed())
        },
        async {
            let t = Instant::now();
            (with.read::<SlowWhere>(1).await, t.elapsed())
        }
    );
    assert!(
        a.0.is_ok(),
        "control: the read fits the deadline on the primary: {a:?}"
    );
    assert!(
        b.0.is_ok(),
        "a read that takes 11.6 s under a 12 s deadline succeeds without a replica ({:?}) \
         but fails WITH a healthy replica configured after {:?}: {:?}",
        a.1,
        b.1,
        b.0
    );
}

// Below 10 s the second try fits, but the caller waits half the deadline longer than
// the read takes, the query runs twice, and the healthy standby is left out for 5 s.
#[tokio::test]
async fn defect_a_slow_read_on_a_healthy_replica_runs_twice_and_benches_it() {
    let _turn = TURN.lock().await;
    let name = database().await;
    set().caught_up().await.expect("caught up");
    let db = Db::connect_with(config(&name).statement_timeout(Duration::from_secs(2)))
        .await
        .expect("connect");
    assert_eq!(whereami(&db).await, "true", "control: the standby answers");
    // A 1.4 s read under a 2 s deadline.
    let t = Instant::now();
    let read = db.read::<MidWhere>(1).await;
    let took = t.elapsed();
    let after = whereami(&db).await;
    assert!(read.is_ok(), "{read:?}");
    assert!(
        took < Duration::from_millis(1900) && after == "true",
        "a 1.4 s read under a 2 s deadline on a healthy standby took {took:?} (answered by \
         in_recovery={:?}), and the next read went to {} (the standby is benched for 5 s)",
        read.map(|r| r.map(|w| w.body)),
        if after == "true" {
            "the standby"
        } else {
            "the PRIMARY"
        }
    );
}

// ---------------------------------------------------------------------------------
// 3. The identity check with a role that is not a superuser.
// ---------------------------------------------------------------------------------
async fn reader_role(name: &str) {
    let admin = plain(name).await;
    admin
        .execute_batch(
            "DO $$ BEGIN CREATE ROLE r19reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO r19reader;
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO r19reader;",
        )
        .await
        .expect("role");
    set().caught_up().await.expect("caught up");
}

#[tokio::test]
async fn a_standby_read_with_a_read_only_role_is_used() {
    let _turn = TURN.lock().await;
    let name = database().await;
    reader_role(&name).await;
    let set = set();
    let db = Db::connect_with(
        DbConfig::new(set.primary_url(&name))
            .replica(set.replica_url(&name).replace("postgres@", "r19reader@"))
            .pool_size(2),
    )
    .await
    .expect("connect");
    let standby_as_reader = Db::connect_with(
        DbConfig::new(set.replica_url(&name).replace("postgres@", "r19reader@")).pool_size(1),
    )
    .await
    .expect("the role logs in on the standby");
    assert_eq!(whereami(&standby_as_reader).await, "true");
    assert_eq!(
        whereami(&db).await,
        "true",
        "a genuine standby reached with a read-only role is never read (the identity \
         string compares '?' for the system identifier against the primary's number)"
    );
}

#[tokio::test]
async fn unprivileged_role_on_both_sides_connects_and_reads_the_standby() {
    let _turn = TURN.lock().await;
    let name = database().await;
    reader_role(&name).await;
    let set = set();
    let connected = Db::connect_with(
        DbConfig::new(set.primary_url(&name).replace("postgres@", "r19reader@"))
            .replica(set.replica_url(&name).replace("postgres@", "r19reader@"))
            .pool_size(2),
    )
    .await;
    let db = connected.expect("a non-superuser primary + replica connects");
    assert_eq!(whereami(&db).await, "true");
}

// ---------------------------------------------------------------------------------
// 4. A dropped write that commits AFTER the next read asked the primary's position:
//    the abandoned count is covered by a position taken before the commit.
// ---------------------------------------------------------------------------------
#[tokio::test]
async fn defect_dropped_write_that_commits_after_the_next_read_stays_unseen() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let primary = plain(&name).await;
    set().caught_up().await.expect("caught up");
    let db = Db::connect_with(config(&name)).await.expect("connect");
    assert_eq!(whereami(&db).await, "true", "warm: the standby is checked");
    let t0 = Instant::now();
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        db.execute_batch("INSERT INTO sticky_notes VALUES (1, 'sticky')"),
    )
    .await;
    assert!(dropped.is_err(), "the write was dropped");
    // The next read: asks the primary's position (the write has not committed yet).
    assert!(db.read::<Sticky>(1).await.expect("read").is_none());
    eprintln!(
        "after first read: token {} at {:?}",
        db.consistency_token(),
        t0.elapsed()
    );
    // Other traffic on the primary flushes the WAL past that position; the standby
    // replays it, then is held there.
    primary
        .create(NewNote {
            id: 99,
            body: "other traffic".into(),
        })
        .await
        .expect("other write");
    let resume = paused().await;
    eprintln!("paused at {:?}", t0.elapsed());
    let _ = db.read::<Sticky>(1).await.expect("read");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let landed = primary.read::<Sticky>(1).await.expect("primary").is_some();
    assert!(landed, "precondition: the dropped write committed");
    let seen = db.read::<Sticky>(1).await.expect("read").is_some();
    let token = db.consistency_token();
    eprintln!(
        "final: seen {seen} token {token} where {}",
        whereami(&db).await
    );
    drop(resume);
    assert!(
        seen,
        "READ-YOUR-WRITES: the handle's own dropped write committed (the primary has it) but \
         the handle reads the paused standby forever (token {token})"
    );
}

// ---------------------------------------------------------------------------------
// 5. Many concurrent reads while the standby hangs (SIGSTOP).
// ---------------------------------------------------------------------------------
fn standby_pids(data_dir: &str) -> Vec<i32> {
    let pid_file = std::fs::read_to_string(format!("{data_dir}/postmaster.pid")).expect("pid");
    let master: i32 = pid_file
        .lines()
        .next()
        .expect("setup")
        .trim()
        .parse()
        .expect("setup");
    let mut pids = vec![master];
    for entry in std::fs::read_dir("/proc").expect("setup").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat
            .rsplit_once(')')
            .map(|(_, r)| r.to_owned())
            .unwrap_or_default();
        let ppid: i32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == master {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pids: &[i32], sig: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status();
    }
}

struct Cont(Vec<i32>);
impl Drop for Cont {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

#[tokio::test]
async fn concurrent_reads_while_the_standby_hangs_are_served_within_the_deadline() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let set = set();
    let standby = Db::connect_with(DbConfig::new(set.replica_url("postgres")).pool_size(1))
        .await
        .expect("standby");
    let dir: String = standby
        .sql_rows("SELECT current_setting('data_directory')", &[])
        .await
        .expect("data dir")[0]
        .get(0);
    drop(standby);
    set.caught_up().await.expect("caught up");
    let deadline = Duration::from_secs(2);
    let db = Db::connect_with(config(&name).statement_timeout(deadline))
        .await
        .expect("connect");
    assert_eq!(whereami(&db).await, "true");
    let pids = standby_pids(&dir);
    signal(&pids, "-STOP");
    let _cont = Cont(pids);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150 * (i % 4))).await;
            let t = Instant::now();
            let r = db.read::<Where>(1).await;
            (t.elapsed(), r.map(|w| w.map(|w| w.body)))
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("join"));
    }
    let bad: Vec<_> = outcomes
        .iter()
        .filter(|(t, r)| *t > deadline || !matches!(r, Ok(Some(b)) if b == "false"))
        .collect();
    assert!(
        bad.is_empty(),
        "reads while the standby hangs: {outcomes:#?}"
    );
}

// ---------------------------------------------------------------------------------
// 6. Tokens and scoped handles: writes seen through at_least clones and as_user.
// ---------------------------------------------------------------------------------
#[tokio::test]
async fn token_and_clones_read_back_while_paused() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let writer = Db::connect_with(config(&name)).await.expect("writer");
    let reader = Db::connect_with(config(&name)).await.expect("reader");
    assert_eq!(whereami(&reader).await, "true");
    let _resume = paused().await;
    writer
        .create(NewNote {
            id: 7,
            body: "seven".into(),
        })
        .await
        .expect("create");
    let token = writer.consistency_token();
    let parsed: tabula::db::ConsistencyToken = token.to_string().parse().expect("token");
    let tokened = reader.at_least(parsed);
    assert!(
        tokened.read::<Note>(7).await.expect("read").is_some(),
        "token"
    );
    // The token-bearing clone must not lower the floor of later at_least calls.
    let lower = tokened.at_least(tabula::db::ConsistencyToken::NONE);
    assert!(
        lower.read::<Note>(7).await.expect("read").is_some(),
        "at_least(NONE) lowered it"
    );
    assert!(
        writer
            .at_least(tabula::db::ConsistencyToken::NONE)
            .read::<Note>(7)
            .await
            .expect("read")
            .is_some()
    );
    assert_eq!(
        tokened
            .query::<Note>()
            .filter(Note::ID.eq(7_i64))
            .count()
            .await
            .expect("count"),
        1
    );
}
