//! Found from outside (round 16): the migration scanner's new heuristic for SQL-standard routine bodies
//! (`CREATE FUNCTION|PROCEDURE … BEGIN ATOMIC … END`). A top-level COMMIT must be
//! refused before anything runs; legit routines must be accepted.
//!
//! Tests named `defect_*` failed before their fix (each shows a finding).

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

async fn recorded(db: &Db) -> i64 {
    match db
        .sql_rows("SELECT count(*) FROM tabula_migrations", &[])
        .await
    {
        Ok(rows) => rows[0].get(0),
        Err(_) => -1,
    }
}

/// Runs one migration of `sql` on a fresh database; answers the database, whether the
/// run was refused/failed, and the error text.
async fn run(sql: &str) -> (Db, Result<(), String>) {
    let db = fresh().await;
    let migrator =
        Migrator::new(vec![Migration::new(1, "attack", sql.to_owned())]).expect("migrator");
    let result = migrator
        .run(&db)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    (db, result)
}

/// The guarantee: a migration with a top-level COMMIT is refused before anything runs.
/// If it runs instead, the part before COMMIT stays (committed) while the rest and the
/// record roll back: half-applied, and every later run re-applies it and fails.
async fn assert_refused_before_anything(sql: &str) {
    let (db, result) = run(sql).await;
    let first_table = exists(&db, "smuggled_a").await;
    let err = result.as_ref().err().cloned().unwrap_or_default();
    assert!(
        !first_table,
        "HALF-APPLIED: smuggled_a was committed although the migration failed \
         (result {result:?}, records {})",
        recorded(&db).await
    );
    assert!(
        err.contains("top-level `COMMIT`"),
        "refused, but not by the scanner: {err}"
    );
}

// `begin` is an unreserved keyword in PostgreSQL: a parameter may be called that. The
// scanner counts it as a block opener, so the `;` that follows is taken as inside a
// body, and the COMMIT after it is never seen.
#[tokio::test]
async fn defect_parameter_named_begin_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         CREATE FUNCTION f_begin(begin int) RETURNS int LANGUAGE sql AS 'SELECT 1';\n\
         COMMIT;\n\
         CREATE TABLE smuggled_b (y int);\n\
         SELECT 1/0;",
    )
    .await;
}

// A column called `begin` read in a genuine BEGIN ATOMIC body: depth goes to 2, the
// closing END brings it to 1, and the COMMIT is hidden.
#[tokio::test]
async fn defect_column_named_begin_in_atomic_body_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (begin int);\n\
         CREATE FUNCTION f_col() RETURNS int LANGUAGE sql\n\
         BEGIN ATOMIC SELECT begin FROM smuggled_a; END;\n\
         COMMIT;\n\
         SELECT 1/0;",
    )
    .await;
}

// A function called `begin`.
#[tokio::test]
async fn defect_function_named_begin_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         CREATE OR REPLACE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1;\n\
         COMMIT;\n\
         SELECT 1/0;",
    )
    .await;
}

// RETURNS TABLE (begin …) as an output column.
#[tokio::test]
async fn defect_returns_table_column_begin_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         CREATE FUNCTION f_tab() RETURNS TABLE (begin int) LANGUAGE sql AS 'SELECT 1';\n\
         COMMIT;\n\
         SELECT 1/0;",
    )
    .await;
}

// A typed literal whose type name ends in `e` (`name'…'`) is read as an E'' string
// by the scanner, so a backslash in it escapes the closing quote and the scanner's
// string runs on past the COMMIT (pre-existing in the string scanner).
#[tokio::test]
async fn defect_typed_literal_ending_in_e_hides_a_commit() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         SELECT name'\\';\n\
         COMMIT;\n\
         SELECT 1/0; -- '",
    )
    .await;
}

// Held: the scanner's plain cases.
#[tokio::test]
async fn commit_after_an_atomic_body_is_refused() {
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         CREATE FUNCTION f1(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC\n\
           SELECT CASE WHEN x > 0 THEN CASE WHEN x > 5 THEN 2 ELSE 1 END ELSE 0 END;\n\
         END;\n\
         COMMIT;\n\
         SELECT 1/0;",
    )
    .await;
    // `begin` in a string or comment, or as part of a longer word, opens nothing.
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         CREATE FUNCTION f2(beginning int) RETURNS text LANGUAGE sql /* begin */\n\
         -- begin\n\
         AS $$ SELECT 'begin' $$;\n\
         COMMIT;\n\
         SELECT 1/0;",
    )
    .await;
    // CASE before the body does not open a block (it would be a syntax error anyway).
    assert_refused_before_anything(
        "CREATE TABLE smuggled_a (x int);\n\
         CREATE FUNCTION f3() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n\
         commit /* x */ ;\n\
         SELECT 1/0;",
    )
    .await;
}

// Legit: `end` is a reserved word, but PostgreSQL accepts it as a column label
// (`AS end`) and after a dot (`t.end`). The scanner's END closes the body there, the
// body's `;` splits at the top level, and the routine's own END is taken for a
// top-level END: a valid migration refused.
#[tokio::test]
async fn defect_column_label_end_in_atomic_body_is_refused() {
    let (db, result) = run("CREATE FUNCTION f_end() RETURNS int LANGUAGE sql\n\
         BEGIN ATOMIC SELECT 1 AS end; END;")
    .await;
    assert!(result.is_ok(), "valid routine refused: {result:?}");
    let rows = db.sql_rows("SELECT f_end()", &[]).await.expect("call");
    assert_eq!(rows[0].get::<_, i32>(0), 1);
}

// Legit routines that must run: nested CASE, several statements, a procedure, OR
// REPLACE, mixed with dollar-quoted functions and lowercase keywords.
#[tokio::test]
async fn legit_atomic_bodies_apply() {
    let (db, result) = run("CREATE TABLE t (x int);\n\
         CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql IMMUTABLE\n\
         BEGIN ATOMIC\n\
           SELECT CASE WHEN x > 0 THEN CASE x WHEN 1 THEN 10 ELSE 20 END ELSE 0 END;\n\
         END;\n\
         create or replace procedure p(v int) language sql begin atomic\n\
           insert into t values (v); insert into t values (v + 1);\n\
         end;\n\
         CREATE FUNCTION g() RETURNS int AS $body$ BEGIN RETURN 3; END; $body$ LANGUAGE plpgsql;\n\
         CALL p(5);\n\
         INSERT INTO t VALUES (f(1)), (f(2)), (g());")
    .await;
    assert!(result.is_ok(), "{result:?}");
    let rows = db
        .sql_rows("SELECT string_agg(x::text, ',' ORDER BY x) FROM t", &[])
        .await
        .expect("rows");
    assert_eq!(rows[0].get::<_, String>(0), "3,5,6,10,20");
    assert_eq!(recorded(&db).await, 1);
}
