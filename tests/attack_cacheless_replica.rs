//! Round 41: read-your-writes of a cacheless handle with a read replica (the in-place
//! write path, runtime/src/db/write.rs `write_in_place`), standby replay paused.

mod common;

use std::time::Duration;

use tabula::migrate::{Migration, Migrator};
use tabula::{Db, DbConfig, Table};

use common::replicas::{Resume, TURN, set};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "notes")]
pub struct Note {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

async fn database() -> String {
    let migrator = Migrator::new(vec![Migration::new(
        1,
        "notes",
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL); \
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY notes_all ON notes USING (true) WITH CHECK (true); GRANT ALL ON notes TO authenticated;",
    )])
    .expect("migrator")
    .with_builtin();
    let set = tokio::task::spawn_blocking(set).await.expect("set");
    set.database(&migrator).await.expect("database")
}

async fn handle(name: &str) -> Db {
    let set = set();
    Db::connect_with(
        DbConfig::new(set.primary_url(name))
            .replica(set.replica_url(name))
            .statement_timeout(Duration::from_secs(2))
            .pool_size(2),
    )
    .await
    .expect("connect")
}

async fn body(db: &Db, id: i64) -> Option<String> {
    db.read::<Note>(id).await.expect("read").map(|n| n.body)
}

async fn on_primary(name: &str, id: i64) -> Option<String> {
    let (c, conn) = tokio_postgres::connect(&set().primary_url(name), tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    c.query_opt("SELECT body FROM notes WHERE id = $1", &[&id])
        .await
        .expect("q")
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_cacheless_writes_read_own_writes_while_replay_paused() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let db = handle(&name).await;
    db.create(NewNote {
        id: 1,
        body: "v1".into(),
    })
    .await
    .expect("create");
    set().caught_up().await.expect("caught up");
    set().pause_replay().await.expect("pause");
    let _resume = Resume;
    db.update::<Note>(
        1,
        NotePatch {
            body: Some("v2".into()),
        },
    )
    .await
    .expect("update");
    assert_eq!(
        body(&db, 1).await.as_deref(),
        Some("v2"),
        "update not read back"
    );
    db.create(NewNote {
        id: 2,
        body: "c".into(),
    })
    .await
    .expect("create 2");
    assert_eq!(
        body(&db, 2).await.as_deref(),
        Some("c"),
        "create not read back"
    );
    db.upsert(
        NewNote {
            id: 2,
            body: "u".into(),
        },
        Note::ID,
    )
    .await
    .expect("upsert");
    assert_eq!(
        body(&db, 2).await.as_deref(),
        Some("u"),
        "upsert not read back"
    );
    db.create_many(vec![NewNote {
        id: 3,
        body: "m".into(),
    }])
    .await
    .expect("create_many");
    assert_eq!(
        body(&db, 3).await.as_deref(),
        Some("m"),
        "create_many not read back"
    );
    db.transaction(|tx| async move {
        tx.update::<Note>(
            1,
            NotePatch {
                body: Some("tx".into()),
            },
        )
        .await?;
        Ok(())
    })
    .await
    .expect("tx");
    assert_eq!(
        body(&db, 1).await.as_deref(),
        Some("tx"),
        "transaction not read back"
    );
    let scoped = db.as_user(uuid::Uuid::new_v4());
    scoped
        .update::<Note>(
            1,
            NotePatch {
                body: Some("scoped".into()),
            },
        )
        .await
        .expect("scoped update");
    assert_eq!(
        body(&db, 1).await.as_deref(),
        Some("scoped"),
        "scoped update not read back by parent"
    );
    assert_eq!(
        body(&scoped, 1).await.as_deref(),
        Some("scoped"),
        "scoped update not read back"
    );
    db.delete::<Note>(3).await.expect("delete");
    assert_eq!(body(&db, 3).await, None, "delete not read back");
}

/// Creates dropped at many points while replay is paused: any row the primary has must
/// be read back through the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_dropped_cacheless_create_read_back_if_it_landed() {
    let _turn = TURN.lock().await;
    let name = database().await;
    let db = handle(&name).await;
    db.create(NewNote {
        id: 1000,
        body: "warm".into(),
    })
    .await
    .expect("warm");
    set().caught_up().await.expect("caught up");
    set().pause_replay().await.expect("pause");
    let _resume = Resume;
    let mut landed_dropped = 0;
    for i in 0..40i64 {
        let r = tokio::time::timeout(
            Duration::from_micros(200 + 100 * i as u64),
            db.create(NewNote {
                id: i,
                body: format!("b{i}"),
            }),
        )
        .await;
        let landed = on_primary(&name, i).await;
        if r.is_err() && landed.is_some() {
            landed_dropped += 1;
        }
        if let Some(b) = landed {
            assert_eq!(
                body(&db, i).await,
                Some(b),
                "row {i} on the primary not read back (dropped={})",
                r.is_err()
            );
        }
    }
    eprintln!("dropped creates that landed: {landed_dropped}");
}
