//! Found from outside (round 18): read replicas (a real primary + hot standby from `testkit::ReplicaSet`).
//! Tests named `defect_*` failed before their fix.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tabula::db::ConsistencyToken;
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
#[table(name = "slow_notes")]
pub struct SlowNote {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "slow_view")]
pub struct SlowView {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

fn migrator() -> Migrator {
    Migrator::new(vec![Migration::new(
        1,
        "r18",
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);
         CREATE TABLE slow_notes (id bigint PRIMARY KEY, body text NOT NULL);
         CREATE FUNCTION r18_slow() RETURNS trigger LANGUAGE plpgsql AS $f$
           BEGIN PERFORM pg_sleep(0.4); RETURN NEW; END $f$;
         CREATE TRIGGER r18_slow BEFORE INSERT ON slow_notes
           FOR EACH ROW EXECUTE FUNCTION r18_slow();
         CREATE VIEW slow_view AS SELECT n.id, n.body FROM notes n, (SELECT pg_sleep(3)) s;",
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

// ---------------------------------------------------------------------------------
// 1. The write's WAL position is asked on a connection checked out AFTER the write's
//    own connection went back to the pool (`note_write(None)`, write.rs:332/366). Tried:
//    another caller queued for the single connection. With bb8 the position query got
//    the released connection first (it did not hand it to the queued waiter). The pool
//    of Tabula's own is first come, first served: the position query waits past its
//    checkout timeout, and the write counts as one whose position is unknown — the
//    next read asks for it, and reads the primary until it is known (failed with the
//    stale standby's answer before that).
// ---------------------------------------------------------------------------------
#[tokio::test]
async fn write_floor_survives_a_busy_pool() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let db = Db::connect_with(
        config(&name)
            .pool_size(1)
            .checkout_timeout(Duration::from_millis(800)),
    )
    .await
    .expect("connect");
    let _resume = paused().await;

    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            db.create(NewSlowNote {
                id: 1,
                body: "new".into(),
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A read-only transaction queued for the single connection; it holds it 1.5 s.
    let other = {
        let db = db.clone();
        tokio::spawn(async move {
            db.transaction(|tx| async move {
                tx.query::<Note>().count().await?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(())
            })
            .await
        })
    };
    let created = writer.await.expect("join");
    assert!(created.is_ok(), "the create says it landed: {created:?}");
    other.await.expect("join").expect("transaction");
    let seen = db.read::<SlowNote>(1).await.expect("read");
    assert!(
        seen.is_some(),
        "READ-YOUR-WRITES BROKEN: create returned Ok, the same handle reads None \
         (token now {}); the standby answered",
        db.consistency_token()
    );
}

// A caller that drops a write's future (a request timeout) after the statement
// committed but before the WAL position was asked: without a cache, `write_boxed` runs
// the write and `note_write` in the caller's future (write.rs:328-333), and raw SQL
// (`sql_rows`, raw.rs:93-94, likewise `sql`, `execute_batch`, `with_client`) always
// does, cache or not. The row landed; the handle that wrote it reads the standby.
// Swept over deadlines around the write's duration (a BEFORE INSERT trigger sleeps
// 0.4 s); each attempt on a fresh handle (no earlier floor).
#[tokio::test]
async fn defect_dropped_write_future_leaves_its_committed_row_unseen() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let primary = plain(&name).await;
    let _resume = paused().await;
    let mut hits = Vec::new();
    let mut id = 100_i64;
    'sweep: for round in 0..3 {
        for ms in 398..416_u64 {
            for raw in [false, true] {
                id += 1;
                let db = Db::connect_with(config(&name)).await.expect("connect");
                let deadline = Duration::from_millis(ms);
                let outcome = if raw {
                    tokio::time::timeout(
                        deadline,
                        db.sql_rows(
                            "INSERT INTO slow_notes VALUES ($1, 'raw') RETURNING id",
                            &[&id],
                        ),
                    )
                    .await
                    .map(|r| r.map(|_| ()))
                } else {
                    tokio::time::timeout(
                        deadline,
                        db.create(NewSlowNote {
                            id,
                            body: "crud".into(),
                        }),
                    )
                    .await
                    .map(|r| r.map(|_| ()))
                };
                if outcome.is_ok() {
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let landed = primary
                    .read::<SlowNote>(id)
                    .await
                    .expect("primary")
                    .is_some();
                if !landed {
                    continue;
                }
                let seen = db.read::<SlowNote>(id).await.expect("read").is_some();
                if !seen {
                    hits.push(format!("round {round} deadline {ms} ms raw={raw} id={id}"));
                    if hits.len() >= 2 {
                        break 'sweep;
                    }
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "READ-YOUR-WRITES BROKEN: a write that committed (its future dropped) is invisible \
         to the handle that wrote it (the paused standby answered): {hits:#?}"
    );
}

// ---------------------------------------------------------------------------------
// 2. `#[cached]` memos are filled by whatever their body reads: through a handle with
//    a replica, from the lagging standby, after the write that invalidated the memo.
// ---------------------------------------------------------------------------------
static MEMO_READER: OnceLock<Db> = OnceLock::new();

#[cached(ttl = 120, tables(Note))]
async fn memo_bodies(key: u32) -> Vec<String> {
    let _ = key;
    MEMO_READER
        .get()
        .expect("reader")
        .query::<Note>()
        .order_by(Note::ID.asc())
        .all()
        .await
        .expect("query")
        .into_iter()
        .map(|n| n.body)
        .collect()
}

#[tokio::test]
async fn defect_memo_filled_from_a_lagging_replica_after_a_write() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let unique = format!(
        "r18m{}x{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let redis = tabula::testkit::redis_url().expect("redis");
    let conf = || {
        CacheConfig::default()
            .prefix(unique.clone())
            .namespace(format!("ns{unique}"))
            .registry_window(Duration::from_millis(300))
    };
    let global = CacheService::redis(&redis, conf()).expect("global");
    assert!(global.install_global());
    // "Process" A writes; "process" B serves the memo through its replica handle.
    let writer =
        Db::connect_with(config(&name).cache(CacheService::redis(&redis, conf()).expect("cache")))
            .await
            .expect("writer");
    let reader =
        Db::connect_with(config(&name).cache(CacheService::redis(&redis, conf()).expect("cache")))
            .await
            .expect("reader");
    assert!(MEMO_READER.set(reader).is_ok());
    writer
        .create(NewNote {
            id: 1,
            body: "v1".into(),
        })
        .await
        .expect("create");
    set().caught_up().await.expect("caught up");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(memo_bodies(1).await, ["v1"]);
    assert_eq!(memo_bodies(1).await, ["v1"]);

    let resume = paused().await;
    writer
        .update::<Note>(
            1,
            NotePatch {
                body: Some("v2".into()),
            },
        )
        .await
        .expect("update");
    // The write dropped the memo; B recomputes it (from the standby) — twice, past the
    // registry window, so that it is filled.
    let during = memo_bodies(1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = memo_bodies(1).await;
    drop(resume);
    set().caught_up().await.expect("caught up");
    let after = memo_bodies(1).await;
    assert_eq!(
        after,
        ["v2"],
        "STALE MEMO: after the write and the standby caught up, the memo still serves \
         the pre-write value it was filled with from the lagging standby (during pause: {during:?})"
    );
}

// ---------------------------------------------------------------------------------
// 3. A replica URL naming another database (same schema) is used silently.
// ---------------------------------------------------------------------------------
#[tokio::test]
async fn defect_replica_of_another_database_answers_silently() {
    let _turn = TURN.lock().await;
    let mine = database().await;
    let other = database().await;
    plain(&mine)
        .await
        .create(NewNote {
            id: 1,
            body: "mine".into(),
        })
        .await
        .expect("mine");
    plain(&other)
        .await
        .create(NewNote {
            id: 1,
            body: "OTHER DATABASE".into(),
        })
        .await
        .expect("other");
    set().caught_up().await.expect("caught up");
    let set = set();
    let connected = Db::connect_with(
        DbConfig::new(set.primary_url(&mine))
            .replica(set.replica_url(&other))
            .pool_size(2),
    )
    .await;
    let Ok(db) = connected else {
        return; // refused at connect: a clear error, fine
    };
    match db.read::<Note>(1).await {
        Err(_) => {} // refused: fine
        Ok(row) => assert_eq!(
            row.map(|n| n.body).as_deref(),
            Some("mine"),
            "WRONG DATA: reads of database `{mine}` answered from database `{other}`"
        ),
    }
}

// ---------------------------------------------------------------------------------
// 4. A recovery conflict on the standby cancels a read that the primary would answer.
// ---------------------------------------------------------------------------------
#[tokio::test]
async fn defect_recovery_conflict_fails_a_read_the_primary_could_answer() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let set = set();
    let standby = Db::connect_with(DbConfig::new(set.replica_url("postgres")).pool_size(1))
        .await
        .expect("standby");
    standby
        .execute_batch("ALTER SYSTEM SET max_standby_streaming_delay = '200ms'")
        .await
        .expect("alter system on the standby");
    standby
        .sql_rows("SELECT pg_reload_conf()", &[])
        .await
        .expect("reload");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writer = plain(&name).await;
    writer
        .create(NewNote {
            id: 1,
            body: "x".into(),
        })
        .await
        .expect("create");
    set.caught_up().await.expect("caught up");
    let reader = Db::connect_with(config(&name)).await.expect("reader");
    let read = tokio::spawn(async move { reader.query::<SlowView>().all().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer
        .transaction(|tx| async move {
            tx.execute_batch("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
                .await
        })
        .await
        .expect("lock");
    let result = read.await.expect("join");
    let _ = standby
        .execute_batch("ALTER SYSTEM RESET max_standby_streaming_delay")
        .await;
    let _ = standby.sql_rows("SELECT pg_reload_conf()", &[]).await;
    assert!(
        result.is_ok(),
        "a read routed to the standby failed by recovery conflict (not retried on the primary): {:?} / sqlstate {:?}",
        result.as_ref().err().map(|e| e.to_string()),
        result
            .as_ref()
            .err()
            .and_then(|e| e.sqlstate().map(str::to_owned))
    );
}

// ---------------------------------------------------------------------------------
// 5. A standby that stops answering (SIGSTOP: a network partition, a hung host).
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
async fn defect_a_hung_standby_fails_reads_instead_of_leaving_them_to_the_primary() {
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
    plain(&name)
        .await
        .create(NewNote {
            id: 5,
            body: "here".into(),
        })
        .await
        .expect("create");
    set.caught_up().await.expect("caught up");
    let db = Db::connect_with(config(&name).statement_timeout(Duration::from_secs(3)))
        .await
        .expect("connect");
    // Warm: the replica pool holds an idle connection.
    assert!(db.read::<Note>(5).await.expect("read").is_some());
    let pids = standby_pids(&dir);
    signal(&pids, "-STOP");
    let _cont = Cont(pids);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(20), db.read::<Note>(5)).await;
        outcomes.push((started.elapsed(), format!("{result:?}")));
    }
    let failed = outcomes
        .iter()
        .any(|(t, r)| !r.contains("here") || *t > Duration::from_secs(2));
    assert!(
        !failed,
        "reads while the standby hangs (each should be served by the primary, fast): {outcomes:#?}"
    );
}

// ---------------------------------------------------------------------------------
// 6. Tokens: hostile strings.
// ---------------------------------------------------------------------------------
#[test]
fn tokens_never_panic_on_hostile_strings() {
    for text in [
        "",
        "/",
        "//",
        "0/0/",
        "\u{0}/0",
        "é/é",
        "ffffffffff/0",
        "0/ffffffffff",
        "\u{FF11}/0",
        "1/ 2",
        "0x1/0",
        "-1/0",
        "FFFFFFFF/FFFFFFFF",
        "1/2\n",
        "🙂/🙂",
        "12345678/12345678",
    ] {
        let parsed = std::panic::catch_unwind(|| text.parse::<ConsistencyToken>());
        assert!(parsed.is_ok(), "panic on {text:?}");
        if let Ok(Err(e)) = parsed {
            assert!(matches!(e, tabula::Error::Validation(_)), "{text:?}: {e:?}");
        }
    }
}

// PostgreSQL's pg_lsn rejects a sign; the token parser accepts `+1/+2` (u64's
// from_str_radix takes a leading '+'), so a token does not round-trip its text.
#[test]
fn defect_token_accepts_signed_parts() {
    let parsed = "+1/+2".parse::<ConsistencyToken>();
    assert!(
        parsed.is_err(),
        "`+1/+2` accepted as {:?} (displays as {})",
        parsed,
        parsed.as_ref().map(|t| t.to_string()).unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------------
// 7. Control: many kinds of writes, then reads through clones, while replay is paused.
// ---------------------------------------------------------------------------------
#[tokio::test]
async fn every_kind_of_write_is_read_back_while_replay_is_paused() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let db = Db::connect_with(config(&name)).await.expect("connect");
    let other = plain(&name).await;
    let _resume = paused().await;
    let clone = db.clone();
    let count = async |db: &Db, body: &str| {
        db.query::<Note>()
            .filter(Note::BODY.eq(body.to_owned()))
            .count()
            .await
            .expect("count")
    };

    db.create_many(vec![
        NewNote {
            id: 10,
            body: "many".into(),
        },
        NewNote {
            id: 11,
            body: "many".into(),
        },
    ])
    .await
    .expect("create_many");
    assert_eq!(count(&clone, "many").await, 2, "create_many");

    db.insert_many(vec![NewNote {
        id: 20,
        body: "copy".into(),
    }])
    .await
    .expect("insert_many");
    assert_eq!(count(&clone, "copy").await, 1, "insert_many");

    db.upsert(
        NewNote {
            id: 20,
            body: "upserted".into(),
        },
        Note::ID,
    )
    .await
    .expect("upsert");
    assert_eq!(count(&clone, "upserted").await, 1, "upsert");

    db.update_where(
        Note::BODY.eq("many".to_owned()),
        NotePatch {
            body: Some("bulk".into()),
        },
    )
    .await
    .expect("update_where");
    assert_eq!(count(&clone, "bulk").await, 2, "update_where");

    db.delete_where(Note::ID.eq(10_i64))
        .await
        .expect("delete_where");
    assert!(
        clone.read::<Note>(10).await.expect("read").is_none(),
        "delete_where"
    );

    let _: Vec<Note> = db
        .sql(
            "UPDATE notes SET body = 'raw' WHERE id = 11 RETURNING *",
            &[],
        )
        .await
        .expect("sql");
    assert_eq!(count(&clone, "raw").await, 1, "sql");

    db.with_client(async |c| {
        c.execute("INSERT INTO notes VALUES (30, 'client')", &[])
            .await?;
        Ok(())
    })
    .await
    .expect("with_client");
    assert_eq!(count(&clone, "client").await, 1, "with_client");

    db.transaction(|tx| async move {
        tx.transaction(|inner| async move {
            inner
                .create(NewNote {
                    id: 40,
                    body: "nested".into(),
                })
                .await?;
            Ok(())
        })
        .await
    })
    .await
    .expect("nested");
    assert_eq!(count(&clone, "nested").await, 1, "nested transaction");

    // A failed write, then a write by another handle, then a token.
    assert!(
        db.create(NewNote {
            id: 40,
            body: "dup".into()
        })
        .await
        .is_err()
    );
    other
        .create(NewNote {
            id: 50,
            body: "elsewhere".into(),
        })
        .await
        .expect("other create");
    let token: ConsistencyToken = other.consistency_token();
    assert_eq!(token, ConsistencyToken::NONE, "no replicas: no token");
}
