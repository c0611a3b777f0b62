//! Found from outside (round 17): statements the migration scanner (`statement_heads`)
//! read otherwise than PostgreSQL 15's lexer, each hiding a top-level COMMIT that
//! half-applied a migration. Fixed by the mechanism, not the scanner: a migration runs
//! inside PL/pgSQL's `EXECUTE` (`migrate::sealed`), where the server refuses every
//! transaction command, and the whole migration rolls back.
//!
//! Tests named `defect_*` failed before that fix.

use tabula::Db;
use tabula::migrate::{Migration, Migrator};

async fn fresh_with_url() -> (Db, String) {
    let none = Migrator::new(Vec::new()).expect("empty migrator");
    tabula::testkit::database(&none).await.expect("database")
}

async fn exists(db: &Db, table: &str) -> bool {
    let rows = db
        .sql_rows("SELECT to_regclass($1) IS NOT NULL", &[&table.to_owned()])
        .await
        .expect("regclass");
    rows[0].get::<_, bool>(0)
}

async fn recorded(db: &Db) -> i64 {
    match db
        .sql_rows("SELECT count(*) FROM tabula_migrations", &[])
        .await
    {
        Ok(rows) => rows[0].get(0),
        Err(_) => -1,
    }
}

async fn run_on(db: &Db, sql: &str) -> Result<(), String> {
    let migrator =
        Migrator::new(vec![Migration::new(1, "attack", sql.to_owned())]).expect("migrator");
    migrator
        .run(db)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn check(db: &Db, result: Result<(), String>) {
    let first_table = exists(db, "smuggled_a").await;
    let err = result.as_ref().err().cloned().unwrap_or_default();
    assert!(
        !first_table,
        "HALF-APPLIED: smuggled_a was committed although the migration failed \
         (result {result:?}, records {})",
        recorded(db).await
    );
    assert!(!err.is_empty(), "refused");
    assert!(recorded(db).await <= 0, "no record of a failed migration");
}

async fn assert_refused_before_anything(sql: &str) {
    let (db, _) = fresh_with_url().await;
    let result = run_on(&db, sql).await;
    check(&db, result).await;
}

// PostgreSQL ends a `--` comment at `\r` as well as `\n` (scan.l: non_newline is
// [^\n\r]); the scanner only at `\n`. A file with old-Mac line endings (or one stray
// CR) hides everything after the comment up to the next LF.
#[tokio::test]
async fn defect_carriage_return_ends_a_line_comment() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n-- note\rCOMMIT;\rSELECT 1/0;\n",
    )
    .await;
}

// A dollar-quote tag may contain non-ASCII letters (dolq_start includes \200-\377);
// the scanner only accepts ASCII alnum/_ tags, reads `$é$'$é$` as plain text and opens
// a '…' string at the quote inside the body, running past the COMMIT.
#[tokio::test]
async fn defect_non_ascii_dollar_tag_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\nSELECT $é$'$é$;\nCOMMIT;\nSELECT 1/0; -- '",
    )
    .await;
}

// E'…' continued on the next line ('…' after whitespace containing a newline) stays
// an escape string for PostgreSQL (xqs -> state_before_str_stop); the scanner reads
// the continuation as a plain string, where `\'` does not close it.
#[tokio::test]
async fn defect_continued_escape_string_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\nSELECT E'a'\n'\\'';\nCOMMIT;\nSELECT 1/0; -- '",
    )
    .await;
}

// `1.` is a numeric literal; the scanner takes the `.` as a qualifier and the END that
// closes the CASE for a name, so its depth never returns to 0 and the COMMIT after the
// routine is taken for a body statement.
#[tokio::test]
async fn defect_numeric_dot_before_case_end_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         CREATE FUNCTION f_dec() RETURNS numeric LANGUAGE sql\n\
         BEGIN ATOMIC SELECT CASE WHEN true THEN 1. END; END;\n\
         COMMIT;\n\
         SELECT 1/0;",
    )
    .await;
}

// A database (or role) configured with standard_conforming_strings = off: '…' takes
// backslash escapes for PostgreSQL, never for the scanner.
#[tokio::test]
async fn defect_standard_conforming_strings_off_hides_a_commit() {
    let (setup, url) = fresh_with_url().await;
    let name: String = setup
        .sql_rows("SELECT current_database()", &[])
        .await
        .expect("setup")[0]
        .get(0);
    setup
        .execute_batch(&format!(
            "ALTER DATABASE \"{name}\" SET standard_conforming_strings = off"
        ))
        .await
        .expect("setup");
    let db = Db::connect(&url).await.expect("setup");
    let result = run_on(
        &db,
        "CREATE TABLE smuggled_a (x int);\nSELECT '\\'';\nCOMMIT;\nSELECT 1/0; -- '",
    )
    .await;
    check(&db, result).await;
}

// PREPARE TRANSACTION with a comment between the words: head is "preparetransaction".
#[tokio::test]
async fn defect_prepare_comment_transaction_is_not_refused() {
    let (db, _) = fresh_with_url().await;
    let mpt: String = db
        .sql_rows("SHOW max_prepared_transactions", &[])
        .await
        .expect("setup")[0]
        .get(0);
    eprintln!("max_prepared_transactions = {mpt}");
    let result = run_on(
        &db,
        "CREATE TABLE smuggled_a (x int);\nPREPARE/**/TRANSACTION 'r17';",
    )
    .await;
    eprintln!("prepare: {result:?}");
    let _ = db.execute_batch("ROLLBACK PREPARED 'r17'").await;
    check(&db, result).await;
}

// Probes: what PostgreSQL 15 accepts (printed, never fails).
// Never hang, never panic: the scanner alone (the file is refused for its trailing
// COMMIT before PostgreSQL sees it, whose own lexer is quadratic on `/*/*/*…`).
#[tokio::test]
async fn deep_comment_nesting_scans_fast() {
    let (db, _) = fresh_with_url().await;
    for sql in [
        format!("{}{}COMMIT;", "/*".repeat(250_000), "*/".repeat(250_000)),
        format!("{}{}COMMIT;", "/* ".repeat(250_000), "*/ ".repeat(250_000)),
        format!("COMMIT; {}", "/*".repeat(500_000)),
        format!("SELECT {}; COMMIT;", "$a".repeat(500_000)),
        format!("SELECT {}; COMMIT;", "'".repeat(1_000_001)),
    ] {
        let t = std::time::Instant::now();
        let result = run_on(&db, &sql).await;
        let e = result.clone().err().unwrap_or_default();
        eprintln!("deep: {} in {:?}", &e[..e.len().min(120)], t.elapsed());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert!(!exists(&db, "smuggled_a").await);
    }
}

// `case` is a bare column label in PostgreSQL 15 (`SELECT 1 case` is valid); the
// scanner counts it as a CASE level, the routine's END closes only that level, and the
// COMMIT after the routine is taken for a body statement.
#[tokio::test]
async fn defect_bare_label_case_in_atomic_body_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         CREATE FUNCTION f_lbl() RETURNS int LANGUAGE sql\n\
         BEGIN ATOMIC SELECT 1 case; END;\n\
         COMMIT;\n\
         SELECT 1/0;",
    )
    .await;
}

// Same with a comment between E'…' and its continuation (whitespace_with_newline may
// hold a `--` comment).
#[tokio::test]
async fn defect_continued_escape_string_after_comment_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\nSELECT E'a' -- c\n'\\'';\nCOMMIT;\nSELECT 1/0; -- '",
    )
    .await;
}

// Down files: `revert` runs the same scanner; a hidden COMMIT in a down file drops
// the table and keeps the record.
#[tokio::test]
async fn defect_down_file_carriage_return_hides_a_commit() {
    let (db, _) = fresh_with_url().await;
    let migrator = Migrator::new(vec![
        Migration::new(1, "attack", "CREATE TABLE smuggled_a (x int);".to_owned())
            .with_down("DROP TABLE smuggled_a;\n-- note\rCOMMIT;\rSELECT 1/0;\n"),
    ])
    .expect("setup");
    migrator.run(&db).await.expect("setup");
    let result = migrator
        .revert(&db)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let still = exists(&db, "smuggled_a").await;
    let records = recorded(&db).await;
    assert!(
        still || records == 0,
        "HALF-REVERTED: table dropped, record kept ({result:?}, records {records})"
    );
}

// Savepoints do not end the transaction, but a migration runs inside PL/pgSQL's
// EXECUTE (see `migrate::sealed`), where the server refuses every transaction
// command: refused as a whole, nothing applied.
#[tokio::test]
async fn savepoints_are_refused_and_nothing_applies() {
    let (db, _) = fresh_with_url().await;
    let result = run_on(
        &db,
        "CREATE TABLE t (x int); SAVEPOINT s; INSERT INTO t VALUES (1); ROLLBACK TO SAVEPOINT s; RELEASE SAVEPOINT s;",
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    assert!(!exists(&db, "t").await);
}
