//! Found from outside (round 18): migrations run sealed inside `DO … EXECUTE` (migrate.rs `sealed`).
//! Tests named `defect_*` failed before their fix.

use std::time::Instant;

use tabula::Db;
use tabula::migrate::{Migration, Migrator};

async fn fresh() -> Db {
    let none = Migrator::new(Vec::new()).expect("empty migrator");
    tabula::testkit::database(&none).await.expect("database").0
}

async fn exists(db: &Db, table: &str) -> bool {
    let rows = db
        .sql_rows("SELECT to_regclass($1) IS NOT NULL", &[&table.to_owned()])
        .await
        .expect("regclass");
    rows[0].get::<_, bool>(0)
}

async fn run_on(db: &Db, sql: &str) -> tabula::Result<()> {
    let migrator = Migrator::new(vec![Migration::new(1, "r18", sql.to_owned())]).expect("migrator");
    migrator.run(db).await.map(|_| ())
}

// `SELECT … INTO new_table` is plain SQL that creates a table, and ran before the
// sealing. Under PL/pgSQL's EXECUTE, when it is the file's LAST statement, SPI returns
// SPI_OK_SELINTO and PL/pgSQL raises "EXECUTE of SELECT ... INTO is not implemented".
#[tokio::test]
async fn defect_select_into_as_the_last_statement_is_refused() {
    let db = fresh().await;
    let result = run_on(
        &db,
        "CREATE TABLE r18_src (id int); INSERT INTO r18_src VALUES (1);\n\
         SELECT * INTO r18_copy FROM r18_src;\n",
    )
    .await;
    assert!(
        result.is_ok() && exists(&db, "r18_copy").await,
        "a valid migration refused: {:?}",
        result.err().map(|e| e.to_string())
    );
}

// The same statement in the middle of the file is fine: the refusal depends on the
// position of the statement, which a user cannot guess.
#[tokio::test]
async fn select_into_in_the_middle_is_applied() {
    let db = fresh().await;
    let result = run_on(
        &db,
        "CREATE TABLE r18_src (id int); INSERT INTO r18_src VALUES (1);\n\
         SELECT * INTO r18_copy FROM r18_src;\nCREATE TABLE r18_after (a int);",
    )
    .await;
    assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
    assert!(exists(&db, "r18_copy").await && exists(&db, "r18_after").await);
}

// A placeholder migration (only a comment, or empty) applies.
#[tokio::test]
async fn comment_only_and_empty_migrations_apply() {
    for sql in ["-- nothing yet", "", "/* later */", ";", "  \n"] {
        let db = fresh().await;
        let result = run_on(&db, sql).await;
        assert!(
            result.is_ok(),
            "{sql:?}: {:?}",
            result.err().map(|e| e.to_string())
        );
    }
}

// The tags themselves in comments and strings: the sealing picks free tags.
#[tokio::test]
async fn files_containing_the_tags_apply() {
    let db = fresh().await;
    let sql = "-- $tabula_sql0$ $tabula_do0$ $tabula_sql1$\n\
               CREATE TABLE r18_tags (a text DEFAULT '$tabula_sql0$; END $tabula_do0$');\n\
               COMMENT ON TABLE r18_tags IS $tabula_sql0$it's $tabula_do0$ here$tabula_sql0$;\n\
               CREATE FUNCTION r18_f() RETURNS text LANGUAGE plpgsql AS $tabula_do1$\n\
               BEGIN RETURN '$tabula_sql2$'; END $tabula_do1$;";
    let result = run_on(&db, sql).await;
    assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
    let rows = db
        .sql_rows("SELECT obj_description('r18_tags'::regclass), r18_f()", &[])
        .await
        .expect("check");
    assert_eq!(rows[0].get::<_, String>(0), "it's $tabula_do0$ here");
    assert_eq!(rows[0].get::<_, String>(1), "$tabula_sql2$");
}

// A file whose last characters are the start of the outer tag (a trailing comment
// without newline that mentions it): `$tabula_do0` + the inner tag's `$` closes the
// DO body early; the migration fails with a syntax error at a place that is not in
// the file.
#[tokio::test]
async fn defect_file_ending_in_a_tag_prefix_breaks_the_sealing() {
    for tail in ["-- note: sealed with $tabula_do0", "-- x $tabula_sql0"] {
        let db = fresh().await;
        let sql = format!("CREATE TABLE r18_tail (a int);\n{tail}");
        let result = run_on(&db, &sql).await;
        assert!(
            result.is_ok() && exists(&db, "r18_tail").await,
            "{tail:?}: {:?}",
            result.err().map(|e| e.to_string())
        );
    }
}

// Errors keep their cause: a unique violation names itself.
#[tokio::test]
async fn a_unique_violation_in_a_migration_is_named() {
    let db = fresh().await;
    let result = run_on(
        &db,
        "CREATE TABLE r18_u (a int PRIMARY KEY); INSERT INTO r18_u VALUES (1), (1);",
    )
    .await;
    let err = result.expect_err("duplicate");
    let text = err.to_string();
    assert!(matches!(err, tabula::Error::Migration { .. }), "{err:?}");
    assert!(
        text.contains("r18_u") || text.contains("unique") || text.contains("duplicate"),
        "{text}"
    );
    assert!(!exists(&db, "r18_u").await, "rolled back");
    eprintln!("unique violation reads: {text}");
}

// COMMIT hidden anywhere is refused by the server; VACUUM / CIC refused with a message.
#[tokio::test]
async fn statements_refused_in_a_transaction_are_refused_cleanly() {
    for sql in [
        "CREATE TABLE r18_v (a int); VACUUM r18_v;",
        "CREATE TABLE r18_v (a int); CREATE INDEX CONCURRENTLY r18_vi ON r18_v (a);",
        "CREATE TABLE r18_v (a int); COPY r18_v FROM STDIN;",
        "CREATE TABLE r18_v (a int); DO $$ BEGIN COMMIT; END $$;",
        "CREATE TABLE r18_v (a int); CREATE PROCEDURE r18_p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$; CALL r18_p();",
    ] {
        let db = fresh().await;
        let started = Instant::now();
        let result =
            tokio::time::timeout(std::time::Duration::from_secs(20), run_on(&db, sql)).await;
        let result = result.unwrap_or_else(|_| panic!("HANG: {sql}"));
        assert!(result.is_err(), "{sql}: applied");
        assert!(!exists(&db, "r18_v").await, "{sql}: half-applied");
        eprintln!("{sql}\n  -> {result:?} ({:?})", started.elapsed());
    }
}

// A large file: 20,000 INSERTs.
#[tokio::test]
async fn a_large_file_applies_in_reasonable_time() {
    let db = fresh().await;
    let mut sql = String::from("CREATE TABLE r18_big (id int PRIMARY KEY, body text);\n");
    for i in 0..20_000 {
        sql.push_str(&format!(
            "INSERT INTO r18_big VALUES ({i}, 'row {i} ;''$$ -- ');\n"
        ));
    }
    let started = Instant::now();
    run_on(&db, &sql).await.expect("big migration");
    let took = started.elapsed();
    let n: i64 = db
        .sql_rows("SELECT count(*) FROM r18_big", &[])
        .await
        .expect("count")[0]
        .get(0);
    assert_eq!(n, 20_000);
    eprintln!("20k-statement migration took {took:?}");
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
}

// A down file runs sealed too: same SELECT INTO refusal as up files.
#[tokio::test]
async fn defect_down_file_ending_in_select_into_is_refused() {
    let db = fresh().await;
    let migrator = Migrator::new(vec![
        Migration::new(1, "r18d", "CREATE TABLE r18_d (a int);".to_owned())
            .with_down("DROP TABLE r18_d; SELECT 1 INTO r18_d_gone;"),
    ])
    .expect("migrator");
    migrator.run(&db).await.expect("up");
    let reverted = migrator.revert(&db).await;
    eprintln!("down with SELECT INTO last: {reverted:?}");
    assert!(
        reverted.is_ok(),
        "{:?}",
        reverted.err().map(|e| e.to_string())
    );
}

// plpgsql dropped (or no USAGE on it): every migration now needs it.
#[tokio::test]
async fn without_plpgsql_the_error_says_so() {
    let db = fresh().await;
    db.execute_batch("DROP EXTENSION plpgsql CASCADE")
        .await
        .expect("drop plpgsql");
    let result = run_on(&db, "CREATE TABLE r18_np (a int);").await;
    let text = result
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    eprintln!("without plpgsql: {text}");
    assert!(result.is_err(), "applied without plpgsql?");
    assert!(text.contains("plpgsql"), "unclear: {text}");
}

// Through PgBouncer in transaction mode.
#[tokio::test]
async fn migrations_through_pgbouncer() {
    let none = Migrator::new(Vec::new()).expect("empty");
    let (_, url) = tabula::testkit::database(&none).await.expect("database");
    let name = url
        .rsplit('/')
        .next()
        .expect("setup")
        .split('?')
        .next()
        .expect("setup")
        .to_owned();
    let bouncer = match tabula::testkit::PgBouncer::start(2) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("no pgbouncer: {e}");
            return;
        }
    };
    let db = Db::connect(&bouncer.url(&name))
        .await
        .expect("connect via bouncer");
    let migrator = Migrator::new(vec![
        Migration::new(
            1,
            "a",
            "CREATE TABLE r18_pb (a int); INSERT INTO r18_pb VALUES (1);".to_owned(),
        ),
        Migration::new(
            2,
            "b",
            "SELECT * INTO r18_pb2 FROM r18_pb; CREATE INDEX ON r18_pb2 (a);".to_owned(),
        ),
    ])
    .expect("migrator");
    migrator.run(&db).await.expect("through pgbouncer");
    assert!(exists(&db, "r18_pb2").await);
}
