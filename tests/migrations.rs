//! Migrations: order, idempotence, tamper detection, atomicity, concurrent runners.

mod common;

use tabula::migrate::{Migration, Migrator};
use tabula::{Db, Error};

async fn empty_db() -> (Db, String) {
    let none = Migrator::new(Vec::new()).expect("empty migrator");
    tabula::testkit::database(&none).await.expect("database")
}

fn two() -> Vec<Migration> {
    vec![
        Migration::new(1, "create_counter", "CREATE TABLE counter (n int NOT NULL)"),
        Migration::new(2, "count_once", "INSERT INTO counter VALUES (1)"),
    ]
}

async fn counter(db: &Db) -> i64 {
    db.with_client(async |c| {
        Ok(c.query_one("SELECT count(*) FROM counter", &[])
            .await?
            .get(0))
    })
    .await
    .expect("count")
}

#[tokio::test]
async fn pending_migrations_apply_in_order_and_only_once() {
    let (db, _) = empty_db().await;
    let migrator = Migrator::new(two().into_iter().rev().collect()).expect("migrator");
    let first = migrator.run(&db).await.expect("first run");
    assert_eq!(first.applied, vec![1, 2]);
    let second = migrator.run(&db).await.expect("second run");
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, vec![1, 2]);
    assert_eq!(counter(&db).await, 1);
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let (db, _) = empty_db().await;
    Migrator::new(two())
        .expect("migrator")
        .run(&db)
        .await
        .expect("apply");
    let mut edited = two();
    edited[1] = Migration::new(2, "count_once", "INSERT INTO counter VALUES (2)");
    let err = Migrator::new(edited)
        .expect("migrator")
        .run(&db)
        .await
        .expect_err("tampered");
    match err {
        Error::Migration { version, message } => {
            assert_eq!(version, 2);
            assert!(message.contains("edited after it was applied"), "{message}");
        }
        other => panic!("expected Migration error, got {other:?}"),
    }
    assert_eq!(counter(&db).await, 1, "nothing ran");
}

#[tokio::test]
async fn a_migration_that_would_end_its_own_transaction_is_refused_before_it_runs() {
    let (db, _) = empty_db().await;
    let mut broken = two();
    broken.push(Migration::new(
        3,
        "commits_half",
        "CREATE TABLE half (n int); -- a COMMIT in a comment is fine\n\
         CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END $$ LANGUAGE plpgsql;\n\
         COMMIT; BEGIN; SELECT 1/0;",
    ));
    let err = Migrator::new(broken)
        .expect("migrator")
        .run(&db)
        .await
        .expect_err("refused");
    match &err {
        Error::Migration {
            version: 3,
            message,
        } => {
            assert!(message.contains("top-level `COMMIT`"), "{message}");
        }
        other => panic!("expected Migration error, got {other:?}"),
    }
    let half: bool = db
        .with_client(async |c| {
            Ok(c.query_one("SELECT to_regclass('half') IS NOT NULL", &[])
                .await?
                .get(0))
        })
        .await
        .expect("inspect");
    assert!(!half, "the migration was half-applied");
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind() {
    let (db, _) = empty_db().await;
    let mut broken = two();
    broken.push(Migration::new(
        3,
        "broken",
        "CREATE TABLE half (id int); SELECT no_such_column FROM counter",
    ));
    let err = Migrator::new(broken)
        .expect("migrator")
        .run(&db)
        .await
        .expect_err("broken");
    assert!(
        matches!(err, Error::Migration { version: 3, .. }),
        "got {err:?}"
    );
    let (half, recorded): (bool, i64) = db
        .with_client(async |c| {
            let row = c
                .query_one(
                    "SELECT to_regclass('half') IS NOT NULL, (SELECT count(*) FROM tabula_migrations WHERE version = 3)",
                    &[],
                )
                .await?;
            Ok((row.get(0), row.get(1)))
        })
        .await
        .expect("inspect");
    assert!(!half, "the table of the failed migration was rolled back");
    assert_eq!(recorded, 0);
}

#[tokio::test]
async fn concurrent_migrators_apply_each_file_exactly_once() {
    let (_, url) = empty_db().await;
    let migrator = Migrator::new(two()).expect("migrator");
    let mut runners = Vec::new();
    for _ in 0..4 {
        let (url, migrator) = (url.clone(), migrator.clone());
        runners.push(tokio::spawn(async move {
            let db = Db::connect(&url).await.expect("db");
            migrator.run(&db).await.expect("run")
        }));
    }
    let mut applied = Vec::new();
    for runner in runners {
        applied.extend(runner.await.expect("runner").applied);
    }
    applied.sort();
    assert_eq!(
        applied,
        vec![1, 2],
        "each version applied by exactly one runner"
    );
    let db = Db::connect(&url).await.expect("db");
    assert_eq!(counter(&db).await, 1);
}

#[test]
fn a_misnamed_file_in_a_migrations_folder_is_refused() {
    let dir = std::env::temp_dir().join(format!("tabula-mig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("0001_ok.sql"), "SELECT 1").expect("write");
    std::fs::write(dir.join("notes.sql"), "SELECT 1").expect("write");
    let err = Migrator::from_dir(&dir).expect_err("misnamed");
    assert!(err.to_string().contains("notes.sql"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_repository_migrations_are_embedded_in_order() {
    let versions: Vec<i64> = common::MIGRATIONS
        .migrations()
        .iter()
        .map(|m| m.version)
        .collect();
    let on_disk =
        Migrator::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).expect("from_dir");
    let disk_versions: Vec<i64> = on_disk.migrations().iter().map(|m| m.version).collect();
    assert_eq!(versions, disk_versions);
    assert!(!versions.is_empty());
}

fn one_and_three() -> Vec<Migration> {
    vec![
        Migration::new(1, "create_counter", "CREATE TABLE counter (n int NOT NULL)"),
        Migration::new(3, "count_three", "INSERT INTO counter VALUES (3)"),
    ]
}

fn late_two() -> Migration {
    Migration::new(2, "late_table", "CREATE TABLE late (id int)")
}

async fn table_exists(db: &Db, name: &str) -> bool {
    db.with_client(async |c| {
        Ok(c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?
            .get(0))
    })
    .await
    .expect("to_regclass")
}

#[tokio::test]
async fn a_migration_below_the_latest_applied_is_refused() {
    let (db, _) = empty_db().await;
    Migrator::new(one_and_three())
        .expect("migrator")
        .run(&db)
        .await
        .expect("apply 1 and 3");
    let mut with_late = one_and_three();
    with_late.push(late_two());
    let err = Migrator::new(with_late)
        .expect("migrator")
        .run(&db)
        .await
        .expect_err("2 arrives after 3 was applied");
    match err {
        Error::Migration { version, message } => {
            assert_eq!(version, 2);
            assert!(
                message.contains("`late_table`")
                    && message.contains("migration 3 is already applied"),
                "{message}"
            );
        }
        other => panic!("expected Migration error, got {other:?}"),
    }
    assert!(!table_exists(&db, "late").await, "the late migration ran");
}

#[tokio::test]
async fn a_late_migration_applies_when_out_of_order_is_allowed() {
    let (db, _) = empty_db().await;
    Migrator::new(one_and_three())
        .expect("migrator")
        .run(&db)
        .await
        .expect("apply 1 and 3");
    let mut with_late = one_and_three();
    with_late.push(late_two());
    let report = Migrator::new(with_late)
        .expect("migrator")
        .allow_out_of_order(true)
        .run(&db)
        .await
        .expect("opted in");
    assert_eq!(report.applied, vec![2]);
    assert!(table_exists(&db, "late").await);
}

#[test]
fn an_over_long_version_in_a_folder_is_named_precisely() {
    let dir = std::env::temp_dir().join(format!("tabula-mig-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("99999999999999999999_x.sql"), "SELECT 1").expect("write");
    let err = Migrator::from_dir(&dir).expect_err("over-long version");
    let message = err.to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        message.contains("`99999999999999999999_x.sql` has a version too large")
            && message.contains("9223372036854775807"),
        "{message}"
    );
}

#[test]
fn the_build_script_watches_the_migrations_folder_and_each_file() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut out = Vec::new();
    tabula::build::write_rerun_lines(dir, &mut out).expect("rerun lines");
    let lines: Vec<String> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines[0], format!("cargo:rerun-if-changed={dir}"));
    let files = Migrator::from_dir(dir)
        .expect("from_dir")
        .migrations()
        .len();
    assert_eq!(lines.len(), 1 + files, "{lines:#?}");
    // And this package's build script uses it.
    let build_rs = include_str!("../build.rs");
    assert!(
        build_rs.contains("rerun_if_migrations_change(\"migrations\")"),
        "build.rs does not watch migrations/"
    );
}

/// Tabula's own migrations (auth roles and functions, the storage schema) ship in the
/// crate on a version track of their own: an application's `0001` and `0002` apply
/// beside Tabula's `0001` and `0002`, each recorded apart, each only once.
#[tokio::test]
async fn the_built_in_track_applies_beside_the_applications_own_numbering() {
    let (db, _) = empty_db().await;
    let migrator = Migrator::new(two()).expect("migrator").with_builtin();
    let first = migrator.run(&db).await.expect("first run");
    assert_eq!(
        first.builtin_applied,
        vec![1, 2, 3],
        "auth, storage, storage policies"
    );
    assert_eq!(first.applied, vec![1, 2], "the application's own 1 and 2");
    let again = migrator.run(&db).await.expect("second run");
    assert!(again.builtin_applied.is_empty() && again.applied.is_empty());
    assert_eq!(counter(&db).await, 1);
    // What the built-in track made is there: the roles, auth.uid(), the storage tables.
    let (roles, uid_null, buckets): (i64, bool, i64) = db
        .with_client(async |c| {
            let row = c
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')), \
                            auth.uid() IS NULL, \
                            (SELECT count(*) FROM storage.buckets)",
                    &[],
                )
                .await?;
            Ok((row.get(0), row.get(1), row.get(2)))
        })
        .await
        .expect("built-in objects");
    assert_eq!((roles, uid_null, buckets), (3, true, 0));
    // Recorded apart.
    let tracks: (i64, i64) = db
        .with_client(async |c| {
            let row = c
                .query_one(
                    "SELECT (SELECT count(*) FROM tabula_migrations), \
                            (SELECT count(*) FROM tabula_builtin_migrations)",
                    &[],
                )
                .await?;
            Ok((row.get(0), row.get(1)))
        })
        .await
        .expect("tracks");
    assert_eq!(tracks, (2, 3));
}

/// A database that made the same objects through its own migrations before they
/// shipped in the crate (as this repository's examples did) takes the built-in track
/// unchanged: every built-in migration is idempotent.
#[tokio::test]
async fn the_built_in_track_applies_over_objects_a_database_already_has() {
    let (db, _) = empty_db().await;
    // The same SQL applied once as the application's own migrations...
    let copied: Vec<Migration> = Migrator::builtin()
        .migrations()
        .iter()
        .map(|m| {
            Migration::new(
                m.version + 100,
                format!("copy_of_{}", m.name),
                m.sql.clone(),
            )
        })
        .collect();
    Migrator::new(copied)
        .expect("migrator")
        .run(&db)
        .await
        .expect("objects made by the application");
    db.execute_batch("INSERT INTO storage.buckets (id) VALUES ('kept')")
        .await
        .expect("a row");
    // ...then the built-in track over it: applied, nothing lost.
    let report = Migrator::new(Vec::new())
        .expect("migrator")
        .with_builtin()
        .run(&db)
        .await
        .expect("built-in over existing objects");
    assert_eq!(report.builtin_applied, vec![1, 2, 3]);
    let kept: i64 = db
        .with_client(async |c| {
            Ok(c.query_one(
                "SELECT count(*) FROM storage.buckets WHERE id = 'kept'",
                &[],
            )
            .await?
            .get(0))
        })
        .await
        .expect("count");
    assert_eq!(kept, 1);
}

fn reversible() -> Vec<Migration> {
    vec![
        Migration::new(1, "create_a", "CREATE TABLE a (id int)").with_down("DROP TABLE a"),
        Migration::new(2, "create_b", "CREATE TABLE b (id int)").with_down("DROP TABLE b"),
        Migration::new(3, "create_c", "CREATE TABLE c (id int)"),
    ]
}

/// Status, a dry run, a run up to a target, verify, and revert with down files —
/// the library side of `tabula migrate info | run --dry-run | run --target | verify |
/// revert`.
#[tokio::test]
async fn status_plan_target_verify_and_revert() {
    use tabula::migrate::MigrationState;
    let (db, _) = empty_db().await;
    let migrator = Migrator::new(reversible()).expect("migrator");
    let states = |lines: Vec<tabula::migrate::MigrationStatus>| -> Vec<(i64, MigrationState)> {
        lines.iter().map(|l| (l.version, l.state)).collect()
    };
    assert_eq!(
        states(migrator.status(&db).await.expect("status")),
        [
            (1, MigrationState::Pending),
            (2, MigrationState::Pending),
            (3, MigrationState::Pending)
        ]
    );
    assert_eq!(migrator.plan(&db, Some(2)).await.expect("plan"), [1, 2]);
    assert!(!table_exists(&db, "a").await, "a dry run applies nothing");
    let report = migrator.run_to(&db, Some(2)).await.expect("run to 2");
    assert_eq!(report.applied, [1, 2]);
    assert!(table_exists(&db, "b").await && !table_exists(&db, "c").await);
    assert_eq!(migrator.plan(&db, None).await.expect("plan"), [3]);
    migrator.verify(&db).await.expect("nothing edited");

    // Revert the latest (2), then 1; nothing more to revert.
    assert_eq!(migrator.revert(&db).await.expect("revert"), 2);
    assert!(!table_exists(&db, "b").await && table_exists(&db, "a").await);
    assert_eq!(
        states(migrator.status(&db).await.expect("status"))[1],
        (2, MigrationState::Pending)
    );
    assert_eq!(migrator.revert(&db).await.expect("revert"), 1);
    let nothing = migrator.revert(&db).await;
    assert!(
        matches!(nothing, Err(Error::Migration { .. })),
        "{nothing:?}"
    );

    // 3 has no down file: applied, it cannot be reverted, and nothing changes.
    migrator.run(&db).await.expect("run all");
    let refused = migrator.revert(&db).await;
    assert!(
        matches!(&refused, Err(Error::Migration { version: 3, message }) if message.contains("no down file")),
        "{refused:?}"
    );
    assert!(table_exists(&db, "c").await);

    // An edited file and a missing one: verify fails, status says which.
    let edited = Migrator::new(vec![
        Migration::new(1, "create_a", "CREATE TABLE a (id bigint)").with_down("DROP TABLE a"),
        Migration::new(2, "create_b", "CREATE TABLE b (id int)").with_down("DROP TABLE b"),
    ])
    .expect("migrator");
    assert!(matches!(
        edited.verify(&db).await,
        Err(Error::Migration { version: 1, .. })
    ));
    assert_eq!(
        states(edited.status(&db).await.expect("status")),
        [
            (1, MigrationState::Edited),
            (2, MigrationState::Applied),
            (3, MigrationState::Missing)
        ]
    );
    assert!(edited.plan(&db, None).await.is_err());
}

#[test]
fn down_files_pair_with_their_migration_in_a_folder() {
    let dir = std::env::temp_dir().join(format!("tabula-mig-down-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("0001_a.sql"), "CREATE TABLE a (id int)").expect("up");
    std::fs::write(dir.join("0001_a.down.sql"), "DROP TABLE a").expect("down");
    std::fs::write(dir.join("0002_b.sql"), "CREATE TABLE b (id int)").expect("up");
    let migrator = Migrator::from_dir(&dir).expect("folder");
    assert_eq!(migrator.migrations().len(), 2);
    assert_eq!(
        migrator.migrations()[0].down.as_deref(),
        Some("DROP TABLE a")
    );
    assert!(migrator.migrations()[1].down.is_none());
    std::fs::write(dir.join("0003_c.down.sql"), "DROP TABLE c").expect("orphan");
    let orphan = Migrator::from_dir(&dir);
    assert!(
        matches!(&orphan, Err(Error::Config(m)) if m.contains("0003_c.down.sql")),
        "{orphan:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Round 15: `$` inside an identifier (`a$x$`) is not a dollar quote, so a `COMMIT`
/// after it is seen and refused — in an up file and in a down file — before anything
/// runs.
#[tokio::test]
async fn a_commit_after_a_dollar_in_an_identifier_is_refused_before_anything_runs() {
    let (db, _) = empty_db().await;
    let up = Migrator::new(vec![Migration::new(
        1,
        "hidden",
        "CREATE TABLE t$x$ (id int); COMMIT; SELECT 1/0;",
    )])
    .expect("migrator");
    assert!(matches!(up.run(&db).await, Err(Error::Migration { .. })));
    assert!(!table_exists(&db, "t$x$").await, "nothing ran");
    let down = Migrator::new(vec![
        Migration::new(
            1,
            "a",
            "CREATE TABLE a$x$ (id int); CREATE TABLE keepme (id int)",
        )
        .with_down("DROP TABLE a$x$; COMMIT; DROP TABLE keepme; DROP TABLE nosuch$x$;"),
    ])
    .expect("migrator");
    down.run(&db).await.expect("up");
    assert!(matches!(
        down.revert(&db).await,
        Err(Error::Migration { .. })
    ));
    assert!(table_exists(&db, "a$x$").await && table_exists(&db, "keepme").await);
    assert_eq!(
        down.status(&db).await.expect("status")[0].state,
        tabula::migrate::MigrationState::Applied
    );
}

/// Round 15: a run its own track refuses (an edited file; one out of order, whatever
/// the target) changes nothing — not even Tabula's built-in track — and a dry run
/// refuses it the same way.
#[tokio::test]
async fn a_refused_run_changes_nothing_not_even_the_built_in_track() {
    let (db, _) = empty_db().await;
    Migrator::new(one_and_three())
        .expect("migrator")
        .run(&db)
        .await
        .expect("1 and 3");
    let late = {
        let mut all = one_and_three();
        all.push(late_two());
        Migrator::new(all).expect("migrator").with_builtin()
    };
    assert!(matches!(
        late.plan(&db, Some(1)).await,
        Err(Error::Migration { version: 2, .. })
    ));
    assert!(matches!(
        late.run_to(&db, Some(1)).await,
        Err(Error::Migration { .. })
    ));
    assert!(
        !table_exists(&db, "tabula_builtin_migrations").await,
        "the built-in track was not applied by a refused run"
    );
}

/// `PREPARE name AS …` is a statement like any other (only `PREPARE TRANSACTION` ends
/// the transaction), and a file saved with a byte-order mark applies.
#[tokio::test]
async fn prepare_of_a_statement_and_a_byte_order_mark_are_accepted() {
    let (db, _) = empty_db().await;
    let migrator = Migrator::new(vec![
        Migration::new(1, "prepared", "PREPARE q AS SELECT 1; DEALLOCATE q;"),
        Migration::new(2, "bom", "\u{feff}CREATE TABLE bom (id int)"),
    ])
    .expect("migrator");
    migrator.run(&db).await.expect("both apply");
    assert!(table_exists(&db, "bom").await);
    let two_phase = Migrator::new(vec![Migration::new(
        3,
        "two_phase",
        "SELECT 1;\n  PREPARE\n  TRANSACTION 'x';",
    )])
    .expect("migrator")
    .allow_out_of_order(true);
    assert!(matches!(
        two_phase.run(&db).await,
        Err(Error::Migration { .. })
    ));
}

/// A function or procedure with an SQL-standard body (`BEGIN ATOMIC … END`, whose
/// statements end in `;`, with a `CASE … END` inside) applies; a `COMMIT` after it is
/// still refused.
#[tokio::test]
async fn sql_standard_routine_bodies_apply() {
    let (db, _) = empty_db().await;
    let body = "CREATE TABLE atomic_log (n int);\n\
                CREATE FUNCTION sign_of(x int) RETURNS int LANGUAGE sql\n\
                BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 WHEN x < 0 THEN -1 ELSE 0 END;\nEND;\n\
                CREATE OR REPLACE PROCEDURE log_it(x int) LANGUAGE sql\n\
                BEGIN ATOMIC\n  INSERT INTO atomic_log VALUES (x);\n  INSERT INTO atomic_log VALUES (x + 1);\nEND;\n\
                CALL log_it(sign_of(-5));";
    Migrator::new(vec![Migration::new(1, "atomic", body)])
        .expect("migrator")
        .run(&db)
        .await
        .expect("applies");
    let rows: Vec<i32> = db
        .sql_rows("SELECT n FROM atomic_log ORDER BY n", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, [-1, 0]);
    let then_commit =
        "CREATE FUNCTION two() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 2; END; COMMIT;";
    let refused = Migrator::new(vec![Migration::new(2, "commit", then_commit)])
        .expect("migrator")
        .run(&db)
        .await;
    assert!(
        matches!(refused, Err(Error::Migration { .. })),
        "{refused:?}"
    );
    assert!(
        db.sql_rows("SELECT 'two'::regproc", &[]).await.is_err(),
        "nothing of the refused file ran"
    );
}
