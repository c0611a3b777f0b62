//! `Db::verify`: models checked against the live tables at start-up — every mismatch
//! in one error.

#![allow(dead_code)] // the models are only ever compared with the tables

mod common;

use tabula::{Error, Table};

#[derive(Table, Debug)]
#[table(name = "profiles")]
struct Profile {
    #[table(primary_key, generated)]
    id: uuid::Uuid,
    user_id: uuid::Uuid,
    username: String,
    avatar_url: Option<String>,
}

/// Everything wrong at once: a column of another type, a field that is not an Option
/// on a nullable column, a column that does not exist, a key that is not the table's.
#[derive(Table, Debug)]
#[table(name = "profiles")]
struct Drifted {
    #[table(primary_key)]
    username: String,
    user_id: i64,
    avatar_url: String,
    nickname: String,
}

#[derive(Table, Debug)]
#[table(name = "nowhere")]
struct Missing {
    #[table(primary_key)]
    id: i64,
}

#[tokio::test]
async fn matching_models_pass_and_every_mismatch_is_named_in_one_error() {
    let db = common::db().await;
    db.verify::<Profile>()
        .await
        .expect("the seed's profile model matches");
    db.verify::<(Profile, common::Experience, common::Document)>()
        .await
        .expect("the common models match");
    let error = db
        .verify::<(Profile, Drifted, Missing)>()
        .await
        .expect_err("drift");
    let Error::SchemaMismatch { problems } = &error else {
        panic!("{error}");
    };
    for expected in [
        "`profiles.user_id`: the model says int8, the database has uuid",
        "`profiles.avatar_url`: the column may be NULL, the field is not an Option",
        "`profiles.nickname`: no such column",
        "`profiles.username`: the model's primary key is not the table's",
        "table `nowhere`: not in the database",
    ] {
        assert!(
            problems.iter().any(|p| p == expected),
            "{expected} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");
    // A NOT NULL column without a default that the model does not know.
    db.execute_batch("ALTER TABLE profiles ADD COLUMN tier int NOT NULL DEFAULT 0")
        .await
        .expect("defaulted");
    db.verify::<Profile>()
        .await
        .expect("a defaulted column is fine");
    db.execute_batch("ALTER TABLE profiles ALTER COLUMN tier DROP DEFAULT")
        .await
        .expect("no default");
    let error = db.verify::<Profile>().await.expect_err("unknown NOT NULL");
    assert!(error.to_string().contains("profiles.tier"), "{error}");
}
