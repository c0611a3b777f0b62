//! Hand-written SQL into models (`Db::sql`) and into driver rows (`Db::sql_rows`): by
//! column name, with clear errors, under the handle's transaction and user scope.

mod common;

use common::{Profile, new_profile};
use tabula::Error;
use uuid::Uuid;

#[tokio::test]
async fn rows_decode_by_column_name_whatever_the_statement_returns() {
    let db = common::db().await;
    let a = db.create(new_profile("alpha")).await.expect("create");
    db.create(new_profile("beta")).await.expect("create");

    // Another order, an extra column, a parameter.
    let found: Vec<Profile> = db
        .sql(
            "SELECT updated_at, 42 AS extra, username, id, created_at, status, avatar_url, user_id \
             FROM profiles WHERE username = $1",
            &[&"alpha"],
        )
        .await
        .expect("select");
    assert_eq!(found, vec![a.clone()]);

    // A write that returns rows, with a trailing semicolon.
    let renamed: Vec<Profile> = db
        .sql(
            "UPDATE profiles SET username = $1 WHERE id = $2 RETURNING *;",
            &[&"alpha-2", &a.id],
        )
        .await
        .expect("update returning");
    assert_eq!(renamed.len(), 1);
    assert_eq!(renamed[0].username, "alpha-2");
    assert_eq!(
        db.read_uncached::<Profile>(a.id)
            .await
            .expect("read")
            .map(|p| p.username),
        Some("alpha-2".into())
    );

    // A value is a value: no injection through a parameter.
    let none: Vec<Profile> = db
        .sql(
            "SELECT * FROM profiles WHERE username = $1",
            &[&"x' OR '1'='1"],
        )
        .await
        .expect("bound");
    assert!(none.is_empty());

    // Aggregates into driver rows.
    let rows = db
        .sql_rows(
            "SELECT count(*) FROM profiles WHERE username LIKE $1",
            &[&"%a%"],
        )
        .await
        .expect("count");
    assert_eq!(rows[0].get::<_, i64>(0), 2);
}

#[tokio::test]
async fn what_does_not_fit_the_model_is_a_clear_error() {
    let db = common::db().await;
    db.create(new_profile("gamma")).await.expect("create");
    let missing = db
        .sql::<Profile>("SELECT id, username FROM profiles", &[])
        .await
        .expect_err("columns missing");
    assert!(
        missing.to_string().contains("user_id") || missing.to_string().contains("column"),
        "{missing}"
    );
    let wrong_type = db
        .sql::<Profile>(
            "SELECT id, user_id, 7 AS username, avatar_url, status, created_at, updated_at FROM profiles",
            &[],
        )
        .await
        .expect_err("a number where text belongs");
    assert!(
        matches!(&wrong_type, Error::Decode { column, .. } if *column == "username"),
        "{wrong_type:?}"
    );
    for empty in ["", " ;  ", ";"] {
        assert!(matches!(
            db.sql::<Profile>(empty, &[]).await,
            Err(Error::Validation(_))
        ));
    }
}

#[tokio::test]
async fn it_runs_in_the_handles_transaction_and_scope() {
    let db = common::db().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (user, name) in [(alice, "alice"), (bob, "bob")] {
        db.create(common::NewProfile {
            user_id: user,
            username: name.into(),
            avatar_url: None,
        })
        .await
        .expect("create");
    }
    // Row Level Security applies to a scoped handle's SQL.
    let seen: Vec<Profile> = db
        .as_user(alice)
        .sql("SELECT * FROM profiles", &[])
        .await
        .expect("scoped");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].user_id, alice);

    // Inside a transaction: its own writes are seen, and a rollback takes them back.
    let rolled_back = db
        .transaction(|tx| async move {
            tx.sql::<Profile>("UPDATE profiles SET username = 'renamed' RETURNING *", &[])
                .await?;
            let inside: Vec<Profile> = tx
                .sql("SELECT * FROM profiles WHERE username = 'renamed'", &[])
                .await?;
            assert_eq!(inside.len(), 2);
            Err::<(), _>(Error::Validation("roll back".into()))
        })
        .await;
    assert!(rolled_back.is_err());
    let after: Vec<Profile> = db
        .sql("SELECT * FROM profiles WHERE username = 'renamed'", &[])
        .await
        .expect("after");
    assert!(after.is_empty(), "the rolled-back update is visible");
}
