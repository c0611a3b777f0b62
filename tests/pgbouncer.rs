//! Through a real PgBouncer in transaction pooling mode (`?pgbouncer=true`): many
//! client connections share two server connections, so consecutive requests of one
//! client land on different servers. Named prepared statements break there (the
//! negative control shows it); Tabula's unnamed statements do not — CRUD, queries,
//! transactions and Row Level Security scopes, under concurrency.

mod common;

use std::sync::Arc;

use tabula::testkit::PgBouncer;
use tabula::{Db, DbConfig, Error};
use uuid::Uuid;

use common::{NewProfile, Profile, ProfilePatch};

/// The database of `url`'s name.
fn database_name(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap_or_default();
    path.split('?').next().unwrap_or_default().to_owned()
}

async fn through(bouncer: &PgBouncer, url: &str, transaction_pooling: bool) -> Db {
    let via = bouncer.url(&database_name(url));
    Db::connect_with(
        DbConfig::new(via)
            .transaction_pooling(transaction_pooling)
            .pool_size(8),
    )
    .await
    .expect("through pgbouncer")
}

/// One client's work: every kind of statement, each checked.
async fn work(db: Db, rounds: usize) -> Result<(), Error> {
    let user = Uuid::new_v4();
    for round in 0..rounds {
        let p = db
            .create(NewProfile {
                user_id: user,
                username: format!("u{user}-{round}"),
                avatar_url: None,
            })
            .await?;
        let read = db.read::<Profile>(p.id).await?.expect("the row");
        assert_eq!(read.username, p.username);
        let updated = db
            .update::<Profile>(
                p.id,
                ProfilePatch {
                    avatar_url: Some(Some(format!("a{round}"))),
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(
            updated.avatar_url.as_deref(),
            Some(format!("a{round}").as_str())
        );
        let mine = db
            .query::<Profile>()
            .filter(Profile::USER_ID.eq(user))
            .all()
            .await?;
        assert_eq!(mine.len(), 2 * round + 1);
        // A transaction: both writes or neither, on one server connection throughout.
        let failed = db
            .transaction(|tx| async move {
                tx.update::<Profile>(
                    p.id,
                    ProfilePatch {
                        username: Some("never".into()),
                        ..Default::default()
                    },
                )
                .await?;
                Err::<(), _>(Error::Validation("roll back".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            db.read::<Profile>(p.id).await?.expect("row").username,
            p.username
        );
        // A transaction that commits — its commit check included — on whichever server
        // connection the pooler gives it.
        let committed = db
            .transaction(|tx| async move {
                tx.update::<Profile>(
                    p.id,
                    ProfilePatch {
                        avatar_url: Some(Some(format!("committed {round}"))),
                        ..Default::default()
                    },
                )
                .await
            })
            .await?;
        assert_eq!(committed.avatar_url, Some(format!("committed {round}")));
        // A user-scoped write (its own transaction, checked the same way).
        db.as_user(user)
            .create(NewProfile {
                user_id: user,
                username: format!("scoped {user}-{round}"),
                avatar_url: None,
            })
            .await?;
        // A stream.
        let streamed: Vec<Profile> = futures_util::TryStreamExt::try_collect(
            db.query::<Profile>()
                .filter(Profile::USER_ID.eq(user))
                .stream()
                .await?,
        )
        .await?;
        assert_eq!(streamed.len(), 2 * (round + 1));
        // Row Level Security: the scope is transaction-local, so it holds.
        let own = db.as_user(user).query::<Profile>().all().await?;
        assert_eq!(own.len(), 2 * (round + 1), "a user sees exactly their rows");
        let stranger = db.as_user(Uuid::new_v4()).read::<Profile>(p.id).await?;
        assert_eq!(
            stranger, None,
            "another user's row through a shared server connection"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_works_through_transaction_pooling() {
    let bouncer = PgBouncer::start(2).expect("pgbouncer");
    let (_, url) = common::db_and_url().await;
    let db = through(&bouncer, &url, true).await;
    let tasks: Vec<_> = (0..8).map(|_| tokio::spawn(work(db.clone(), 12))).collect();
    for task in tasks {
        task.await.expect("task").expect("work through pgbouncer");
    }
    // insert_many goes in through INSERT (a COPY's statement would be named).
    let user = Uuid::new_v4();
    let rows: Vec<NewProfile> = (0..50)
        .map(|i| NewProfile {
            user_id: user,
            username: format!("bulk-{user}-{i}"),
            avatar_url: None,
        })
        .collect();
    assert_eq!(db.insert_many(rows).await.expect("insert_many"), 50);
}

/// The control: the same work with named statements (the default) fails through the
/// same PgBouncer — so the test above exercises what it claims to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_break_through_transaction_pooling() {
    let bouncer = PgBouncer::start(2).expect("pgbouncer");
    let (_, url) = common::db_and_url().await;
    let db = through(&bouncer, &url, false).await;
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Rounds of contention until a statement meets a server connection that does not
    // know it (a round can pass without: the clients may happen to keep their
    // connections), at most 20.
    for _round in 0..20 {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (db, errors) = (db.clone(), errors.clone());
                tokio::spawn(async move {
                    for _ in 0..50 {
                        if let Err(e) = db.query::<Profile>().limit(1).all().await {
                            errors.lock().expect("errors").push(e.to_string());
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        if errors
            .lock()
            .expect("errors")
            .iter()
            .any(|e| e.contains("prepared statement"))
        {
            break;
        }
    }
    let errors = errors.lock().expect("errors");
    assert!(
        errors.iter().any(|e| e.contains("prepared statement")),
        "named statements survived transaction pooling: {errors:?}"
    );
}
