//! The built `tabula` binary against the test kit's PostgreSQL: every `migrate`
//! command, its output and exit status, and bad input refused with a clear message and
//! nothing changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tabula::migrate::Migrator;

/// A fresh database (nothing applied) and its URL.
async fn database() -> (tabula::Db, String) {
    let none = Migrator::new(Vec::new()).expect("empty migrator");
    tabula::testkit::database(&none).await.expect("database")
}

/// A folder of this test's own, removed when dropped.
struct Folder(PathBuf);

impl Folder {
    fn new(test: &str) -> Folder {
        let dir = std::env::temp_dir().join(format!("tabula-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        Folder(dir)
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.0.join("migrations").join(file), text).expect("write");
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `tabula args…` in `cwd` with `DATABASE_URL` (when given).
fn tabula(cwd: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tabula"));
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("DATABASE_URL");
    if let Some(url) = url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run tabula")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn table_exists(db: &tabula::Db, name: &str) -> bool {
    db.with_client(async |c| {
        Ok(c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?
            .get(0))
    })
    .await
    .expect("to_regclass")
}

#[tokio::test]
async fn the_migration_workflow_add_run_info_revert_verify() {
    let (db, url) = database().await;
    let folder = Folder::new("workflow");
    let cwd = folder.0.as_path();
    let url = Some(url.as_str());

    // add: the next numbers, with a down file on request.
    let added = tabula(cwd, None, &["migrate", "add", "create_a", "--down"]);
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(
        stdout(&added).contains("0001_create_a.sql"),
        "{}",
        stdout(&added)
    );
    assert!(cwd.join("migrations/0001_create_a.down.sql").exists());
    let second = tabula(cwd, None, &["migrate", "add", "create_b"]);
    assert!(second.status.success());
    assert!(cwd.join("migrations/0002_create_b.sql").exists());
    folder.write("0001_create_a.sql", "CREATE TABLE a (id int);");
    folder.write("0001_create_a.down.sql", "DROP TABLE a;");
    folder.write("0002_create_b.sql", "CREATE TABLE b (id int);");

    // A dry run applies nothing; a run up to a target, then the rest.
    let dry = tabula(cwd, url, &["migrate", "run", "--dry-run", "--no-builtin"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(
        stdout(&dry),
        "would apply 1 create_a\nwould apply 2 create_b\n"
    );
    assert!(!table_exists(&db, "a").await);
    let first = tabula(
        cwd,
        url,
        &["migrate", "run", "--target", "1", "--no-builtin"],
    );
    assert_eq!(stdout(&first), "applied 1 create_a\n", "{}", stderr(&first));
    assert!(table_exists(&db, "a").await && !table_exists(&db, "b").await);

    // info, as text and JSON.
    let info = tabula(cwd, url, &["migrate", "info"]);
    let text = stdout(&info);
    assert!(text.contains("applied   create_a  (reversible)"), "{text}");
    assert!(text.contains("pending   create_b"), "{text}");
    let json = tabula(cwd, url, &["migrate", "info", "--json"]);
    let lines: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(lines[0]["state"], "applied");
    assert_eq!(lines[1]["state"], "pending");
    assert_eq!(lines[0]["reversible"], true);

    let rest = tabula(cwd, url, &["migrate", "run", "--no-builtin"]);
    assert_eq!(stdout(&rest), "applied 2 create_b\n", "{}", stderr(&rest));
    let again = tabula(cwd, url, &["migrate", "run", "--no-builtin"]);
    assert_eq!(stdout(&again), "nothing to apply\n");

    // revert: 2 has no down file — refused (status 1), nothing changes.
    let refused = tabula(cwd, url, &["migrate", "revert"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("no down file"),
        "{}",
        stderr(&refused)
    );
    assert!(table_exists(&db, "b").await);

    // verify passes; after an edit it fails with status 1 and names the file.
    let verified = tabula(cwd, url, &["migrate", "verify"]);
    assert!(verified.status.success(), "{}", stderr(&verified));
    folder.write("0002_create_b.sql", "CREATE TABLE b (id bigint);");
    let edited = tabula(cwd, url, &["migrate", "verify"]);
    assert_eq!(edited.status.code(), Some(1));
    assert!(stderr(&edited).contains("create_b"), "{}", stderr(&edited));
    folder.write("0002_create_b.sql", "CREATE TABLE b (id int);");

    // With 2 reverted by hand (its down file added), revert undoes 2 then 1.
    folder.write("0002_create_b.down.sql", "DROP TABLE b;");
    let reverted = tabula(cwd, url, &["migrate", "revert"]);
    assert_eq!(stdout(&reverted), "reverted 2\n", "{}", stderr(&reverted));
    let reverted = tabula(cwd, url, &["migrate", "revert"]);
    assert_eq!(stdout(&reverted), "reverted 1\n");
    assert!(!table_exists(&db, "a").await && !table_exists(&db, "b").await);
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let (db, url) = database().await;
    let folder = Folder::new("bad");
    let cwd = folder.0.as_path();
    // A name that is not one.
    let bad_name = tabula(cwd, None, &["migrate", "add", "no spaces"]);
    assert_eq!(bad_name.status.code(), Some(1));
    assert!(
        stderr(&bad_name).contains("letters, digits"),
        "{}",
        stderr(&bad_name)
    );
    assert!(
        !cwd.join("migrations")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    );
    // No database.
    let none = tabula(cwd, None, &["migrate", "info"]);
    assert_eq!(none.status.code(), Some(3));
    assert!(stderr(&none).contains("DATABASE_URL"), "{}", stderr(&none));
    // A malformed URL and an unreachable server.
    let malformed = tabula(cwd, Some("not a url"), &["migrate", "info"]);
    assert_eq!(malformed.status.code(), Some(3), "{}", stderr(&malformed));
    let unreachable = tabula(
        cwd,
        Some("postgres://nobody@127.0.0.1:1/none?connect_timeout=2"),
        &["migrate", "info"],
    );
    assert_eq!(
        unreachable.status.code(),
        Some(3),
        "{}",
        stderr(&unreachable)
    );
    // A misnamed file and a missing folder: refused before any change.
    std::fs::create_dir_all(cwd.join("migrations")).expect("dir");
    folder.write("notes.sql", "CREATE TABLE notes (id int);");
    let misnamed = tabula(cwd, Some(&url), &["migrate", "run", "--no-builtin"]);
    assert_eq!(misnamed.status.code(), Some(3));
    assert!(
        stderr(&misnamed).contains("notes.sql"),
        "{}",
        stderr(&misnamed)
    );
    assert!(!table_exists(&db, "notes").await);
    let missing = tabula(cwd, Some(&url), &["migrate", "run", "--dir", "nowhere"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(stderr(&missing).contains("nowhere"), "{}", stderr(&missing));
    // Bad usage is clap's status 2.
    let usage = tabula(cwd, None, &["migrate", "fly"]);
    assert_eq!(usage.status.code(), Some(2));
    // Nothing to revert.
    std::fs::remove_file(cwd.join("migrations/notes.sql")).expect("rm");
    let nothing = tabula(cwd, Some(&url), &["migrate", "revert"]);
    assert_eq!(nothing.status.code(), Some(1), "{}", stderr(&nothing));
}

#[test]
fn completions_are_printed_for_a_shell() {
    let folder = Folder::new("completions");
    let bash = tabula(&folder.0, None, &["completions", "bash"]);
    assert!(bash.status.success());
    assert!(stdout(&bash).contains("migrate"), "{}", stdout(&bash));
    let unknown = tabula(&folder.0, None, &["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn a_dot_env_file_gives_the_database_url() {
    let folder = Folder::new("dotenv");
    std::fs::write(
        folder.0.join(".env"),
        "DATABASE_URL=postgres://nobody@127.0.0.1:1/from_dot_env?connect_timeout=1\n",
    )
    .expect(".env");
    let output = tabula(&folder.0, None, &["migrate", "info"]);
    // It tried the `.env` URL (and could not connect), instead of asking for one.
    assert_eq!(output.status.code(), Some(3));
    assert!(
        !stderr(&output).contains("no database"),
        "{}",
        stderr(&output)
    );
}

/// `tabula schema pull` on the repository's example schema writes the models in
/// `tests/generated/seed_models.rs` (which `tests/schema_pull.rs` compiles and
/// round-trips rows through); `TABULA_BLESS=1` rewrites the file.
#[tokio::test]
async fn schema_pull_writes_the_models_of_the_seed_schema() {
    let migrations = tabula::embed_migrations!("../migrations").with_builtin();
    let (_, url) = tabula::testkit::database(&migrations)
        .await
        .expect("database");
    let folder = Folder::new("pull");
    let pulled = tabula(&folder.0, Some(&url), &["schema", "pull"]);
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    let source = stdout(&pulled);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/generated/seed_models.rs");
    if std::env::var_os("TABULA_BLESS").is_some() {
        std::fs::write(&golden, &source).expect("bless");
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file");
    assert_eq!(
        source, expected,
        "run with TABULA_BLESS=1 to accept the new output"
    );
    for model in [
        "pub struct Profile",
        "pub struct Experience",
        "pub struct Document",
    ] {
        assert!(source.contains(model), "{model}: {source}");
    }
    // -o writes the file, and refuses to overwrite it without --force.
    let out = folder.0.join("models.rs");
    let out_arg = out.to_string_lossy().into_owned();
    let written = tabula(&folder.0, Some(&url), &["schema", "pull", "-o", &out_arg]);
    assert!(written.status.success(), "{}", stderr(&written));
    assert_eq!(std::fs::read_to_string(&out).expect("written"), source);
    let again = tabula(&folder.0, Some(&url), &["schema", "pull", "-o", &out_arg]);
    assert_eq!(again.status.code(), Some(1));
    let forced = tabula(
        &folder.0,
        Some(&url),
        &["schema", "pull", "-o", &out_arg, "--force"],
    );
    assert!(forced.status.success());
}

const RICH: &str = include_str!("../../tests/generated/rich.sql");

/// Enums, arrays, numeric, renames, a foreign key, a unique column, and the tables
/// left out (a composite key, an unmapped type): `tests/generated/rich_models.rs`,
/// compiled and round-tripped by `tests/schema_pull.rs`.
#[tokio::test]
async fn schema_pull_maps_types_keys_and_names_and_says_what_it_leaves_out() {
    let (db, url) = database().await;
    db.execute_batch(RICH).await.expect("schema");
    let folder = Folder::new("pull-rich");
    let pulled = tabula(&folder.0, Some(&url), &["schema", "pull"]);
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    let source = stdout(&pulled);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/generated/rich_models.rs");
    if std::env::var_os("TABULA_BLESS").is_some() {
        std::fs::write(&golden, &source).expect("bless");
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file");
    assert_eq!(
        source, expected,
        "run with TABULA_BLESS=1 to accept the new output"
    );
    for line in [
        "pub enum Mood {",
        "#[pg_enum(rename = \"very-sad\")]",
        "#[table(belongs_to = Category)]",
        "pub price: rust_decimal::Decimal,",
        "pub tags: Vec<String>,",
        "#[table(rename = \"type\")]",
        "#[table(unique)]",
        "`pairs` is left out: it has no single-column primary key",
        "`points` is left out: column `at` has type `point`",
    ] {
        assert!(source.contains(line), "{line}:\n{source}");
    }
}

/// `cache stats` counts keys by namespace; `cache flush` drops one namespace (its epoch
/// first) or all of Tabula's, never the key-value API's keys.
#[tokio::test]
async fn cache_stats_and_flush_by_namespace() {
    let redis_url = tabula::testkit::redis_url().expect("redis");
    let prefix = format!("cli{}", std::process::id());
    let client = redis::Client::open(redis_url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for key in [
        format!("{prefix}:t:one:epoch"),
        format!("{prefix}:t:one:e1:r:notes:0:1"),
        format!("{prefix}:t:one:e1:v:notes"),
        format!("{prefix}:t:two:epoch"),
        format!("{prefix}:t:two:e2:r:notes:0:1"),
        format!("{prefix}:u:mine"),
    ] {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("x")
            .query_async(&mut conn)
            .await
            .expect("set");
    }
    let folder = Folder::new("cache");
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tabula"));
        command
            .args(args)
            .current_dir(&folder.0)
            .env("REDIS_URL", &redis_url)
            .env_remove("DATABASE_URL");
        command.output().expect("run tabula")
    };
    let stats = run(&["cache", "stats", "--prefix", &prefix, "--json"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("JSON");
    assert_eq!(stats["keys"]["one"], 3, "{stats}");
    assert_eq!(stats["keys"]["two"], 2, "{stats}");
    assert_eq!(stats["keys"]["(key-value API)"], 1, "{stats}");
    let flushed = run(&["cache", "flush", "--prefix", &prefix, "--namespace", "one"]);
    assert!(flushed.status.success(), "{}", stderr(&flushed));
    assert_eq!(stdout(&flushed), "flushed 1 namespace(s), 3 key(s)\n");
    let exists = |key: String| {
        let client = client.clone();
        async move {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .expect("exists")
                == 1
        }
    };
    assert!(!exists(format!("{prefix}:t:one:epoch")).await);
    assert!(exists(format!("{prefix}:t:two:epoch")).await);
    let all = run(&["cache", "flush", "--prefix", &prefix]);
    assert!(all.status.success(), "{}", stderr(&all));
    assert!(!exists(format!("{prefix}:t:two:e2:r:notes:0:1")).await);
    assert!(
        exists(format!("{prefix}:u:mine")).await,
        "the key-value API's keys stay"
    );
    let no_redis = tabula(&folder.0, None, &["cache", "stats"]);
    assert_eq!(no_redis.status.code(), Some(3));
}

/// `storage put | ls | get | sign | rm` on a local store.
#[tokio::test]
async fn storage_commands_on_a_local_store() {
    let migrations = tabula::embed_migrations!("../migrations").with_builtin();
    let (db, url) = tabula::testkit::database(&migrations)
        .await
        .expect("database");
    let folder = Folder::new("storage");
    let root = folder.0.join("store");
    let key = "a storage signing key of 32 bytes or more";
    tabula::storage::StorageService::local(db, &root, key.as_bytes(), "http://files.test")
        .expect("service")
        .create_bucket("docs", tabula::storage::BucketOptions::default())
        .await
        .expect("bucket");
    std::fs::write(folder.0.join("hello.txt"), "hello").expect("file");
    let root_arg = root.to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tabula"));
        command
            .args([
                "storage",
                "--root",
                &root_arg,
                "--base-url",
                "http://files.test",
            ])
            .args(args)
            .current_dir(&folder.0)
            .env("DATABASE_URL", &url)
            .env("TABULA_STORAGE_KEY", key);
        command.output().expect("run tabula")
    };
    let put = run(&[
        "put",
        "docs",
        "a/hello.txt",
        "hello.txt",
        "--content-type",
        "text/plain",
    ]);
    assert!(put.status.success(), "{}", stderr(&put));
    let again = run(&["put", "docs", "a/hello.txt", "hello.txt"]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "no overwrite without --upsert"
    );
    let ls = run(&["ls", "docs", "a/", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("JSON");
    assert_eq!(listed[0]["name"], "a/hello.txt", "{listed}");
    assert_eq!(listed[0]["content_type"], "text/plain");
    let got = run(&["get", "docs", "a/hello.txt"]);
    assert_eq!(got.stdout, b"hello");
    let signed = run(&["sign", "docs", "a/hello.txt", "--expires", "15m"]);
    assert!(stdout(&signed).starts_with("http://files.test/object/sign/docs/a/hello.txt?token="));
    let bad = run(&["sign", "docs", "a/hello.txt", "--expires", "1w"]);
    assert_eq!(bad.status.code(), Some(1));
    // A file of several chunks goes up and comes down whole, through streams.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(folder.0.join("big.bin"), &big).expect("big file");
    let put = run(&["put", "docs", "big.bin", "big.bin"]);
    assert!(put.status.success(), "{}", stderr(&put));
    let got = run(&["get", "docs", "big.bin", "-o", "copy.bin"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(stdout(&got), "wrote 3000000 bytes to copy.bin\n");
    assert!(std::fs::read(folder.0.join("copy.bin")).expect("copy") == big);
    // A missing object writes no file at all.
    let missing = run(&["get", "docs", "nope.bin", "-o", "nope.bin"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    let left: Vec<_> = std::fs::read_dir(&folder.0)
        .expect("folder")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("nope"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A file that cannot be read uploads nothing.
    let unreadable = run(&["put", "docs", "dir", "."]);
    assert_eq!(unreadable.status.code(), Some(1), "{}", stderr(&unreadable));
    let ls = run(&["ls", "docs", "dir"]);
    assert_eq!(stdout(&ls), "");
    let rm = run(&["rm", "docs", "a/hello.txt"]);
    assert_eq!(stdout(&rm), "deleted 1\n");
    let gone = run(&["get", "docs", "a/hello.txt"]);
    assert_eq!(gone.status.code(), Some(1), "{}", stderr(&gone));
    let no_key = Command::new(env!("CARGO_BIN_EXE_tabula"))
        .args(["storage", "--root", &root_arg, "ls", "docs"])
        .current_dir(&folder.0)
        .env("DATABASE_URL", &url)
        .env_remove("TABULA_STORAGE_KEY")
        .output()
        .expect("run");
    assert_eq!(no_key.status.code(), Some(3));
}

/// `schema check`: 0 while the database pulls as the file says; 1, with the lines that
/// differ, once it does not.
#[tokio::test]
async fn schema_check_fails_on_drift_and_shows_it() {
    let (db, url) = database().await;
    db.execute_batch("CREATE TABLE notes (id int8 PRIMARY KEY, body text NOT NULL)")
        .await
        .expect("table");
    let folder = Folder::new("check");
    let file = folder.0.join("models.rs");
    let file_arg = file.to_string_lossy().into_owned();
    let pulled = tabula(&folder.0, Some(&url), &["schema", "pull", "-o", &file_arg]);
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    let same = tabula(&folder.0, Some(&url), &["schema", "check", &file_arg]);
    assert!(same.status.success(), "{}", stderr(&same));
    db.execute_batch("ALTER TABLE notes ADD COLUMN pinned bool")
        .await
        .expect("drift");
    let drifted = tabula(&folder.0, Some(&url), &["schema", "check", &file_arg]);
    assert_eq!(drifted.status.code(), Some(1));
    assert!(
        stdout(&drifted).contains("+     pub pinned: Option<bool>,"),
        "{}",
        stdout(&drifted)
    );
    assert!(
        stderr(&drifted).contains("no longer matches"),
        "{}",
        stderr(&drifted)
    );
}

/// Names that collide once made Rust names (round 15): two tables, a table and an
/// enum, a table and the derive's companions, a prelude name, enum labels, columns,
/// `_`, a foreign key to a table left out, another schema. The output is
/// `tests/generated/colliding_models.rs`, which `tests/schema_pull.rs` compiles.
const COLLIDING: &str = include_str!("../../tests/generated/colliding.sql");

#[tokio::test]
async fn schema_pull_gives_every_name_once() {
    let (db, url) = database().await;
    db.execute_batch(COLLIDING).await.expect("schema");
    let folder = Folder::new("pull-colliding");
    let pulled = tabula(
        &folder.0,
        Some(&url),
        &["schema", "pull", "--schema", "other"],
    );
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    let source = stdout(&pulled);
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/generated/colliding_models.rs");
    if std::env::var_os("TABULA_BLESS").is_some() {
        std::fs::write(&golden, &source).expect("bless");
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file");
    assert_eq!(
        source, expected,
        "run with TABULA_BLESS=1 to accept the new output"
    );
    assert!(
        source.contains("#[table(schema = \"other\", name = \"users\")]"),
        "{source}"
    );
    assert!(source.contains("`corners` is left out"), "{source}");
    assert!(source.contains("tabula_notes"), "{source}");
    let unknown = tabula(
        &folder.0,
        Some(&url),
        &["schema", "pull", "--schema", "nosuch"],
    );
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
}

/// `storage put | ls | get | rm` on an S3-compatible store (the test kit's moto).
#[tokio::test]
async fn storage_commands_on_s3() {
    let migrations = tabula::embed_migrations!("../migrations").with_builtin();
    let (db, url) = tabula::testkit::database(&migrations)
        .await
        .expect("database");
    let s3 = tokio::task::spawn_blocking(|| tabula::testkit::S3Server::start("cli-files"))
        .await
        .expect("start")
        .expect("moto server");
    let key = "a storage signing key of 32 bytes or more";
    tabula::storage::StorageService::s3(db, s3.options(), key.as_bytes(), "http://files.test")
        .expect("service")
        .create_bucket("docs", tabula::storage::BucketOptions::default())
        .await
        .expect("bucket");
    let folder = Folder::new("s3");
    std::fs::write(folder.0.join("hello.txt"), "hello over s3").expect("file");
    let endpoint = s3.endpoint();
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tabula"));
        command
            .args([
                "storage",
                "--s3-bucket",
                "cli-files",
                "--s3-endpoint",
                &endpoint,
            ])
            .args(args)
            .current_dir(&folder.0)
            .env("DATABASE_URL", &url)
            .env("TABULA_STORAGE_KEY", key)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("TABULA_STORAGE_ROOT");
        command.output().expect("run tabula")
    };
    let put = run(&["put", "docs", "a/hello.txt", "hello.txt"]);
    assert!(put.status.success(), "{}", stderr(&put));
    let ls = run(&["ls", "docs", "a/", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("JSON");
    assert_eq!(listed[0]["name"], "a/hello.txt", "{listed}");
    let got = run(&["get", "docs", "a/hello.txt"]);
    assert_eq!(got.stdout, b"hello over s3");
    assert_eq!(stdout(&run(&["rm", "docs", "a/hello.txt"])), "deleted 1\n");
    // S3 without credentials: a setup failure, named.
    let bare = Command::new(env!("CARGO_BIN_EXE_tabula"))
        .args(["storage", "--s3-bucket", "cli-files", "ls", "docs"])
        .current_dir(&folder.0)
        .env("DATABASE_URL", &url)
        .env("TABULA_STORAGE_KEY", key)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("run");
    assert_eq!(bare.status.code(), Some(3));
    assert!(
        stderr(&bare).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        stderr(&bare)
    );
}

/// `cache stats` and `cache flush` on a Redis Cluster (`redis+cluster://`): every
/// master is scanned, the namespaces' heads go first, then their keys, one command a
/// key (the keys live in many slots); the key-value API's keys stay.
#[tokio::test]
async fn cache_stats_and_flush_on_a_cluster() {
    let urls = tabula::testkit::redis_cluster_urls().expect("redis cluster");
    let nodes: Vec<String> = urls
        .iter()
        .map(|u| {
            u.trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    let cluster_url = format!("redis+cluster://{}/", nodes.join(","));
    let prefix = format!("clic{}", std::process::id());
    let client = redis::cluster::ClusterClient::new(urls.clone()).expect("client");
    let mut conn = client.get_async_connection().await.expect("cluster");
    let mut keys = vec![
        format!("{prefix}:t:one:{{{prefix}:t:one}}"),
        format!("{prefix}:t:two:{{{prefix}:t:two}}"),
        format!("{prefix}:u:mine"),
    ];
    // Rows of namespace `one` in many slots, two of `two`.
    for i in 0..40 {
        keys.push(format!("{prefix}:t:one:e1:{{{i:x}}}:notes:0:{i}"));
    }
    for i in 0..2 {
        keys.push(format!("{prefix}:t:two:e2:{{t{i}}}:notes:0:{i}"));
    }
    for key in &keys {
        let () = redis::cmd("SET")
            .arg(key)
            .arg("x")
            .query_async(&mut conn)
            .await
            .expect("set");
    }
    let folder = Folder::new("cache-cluster");
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tabula"));
        command
            .args(args)
            .current_dir(&folder.0)
            .env("REDIS_URL", &cluster_url)
            .env_remove("DATABASE_URL");
        command.output().expect("run tabula")
    };
    let stats = run(&["cache", "stats", "--prefix", &prefix, "--json"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("JSON");
    assert_eq!(stats["keys"]["one"], 41, "{stats}");
    assert_eq!(stats["keys"]["two"], 3, "{stats}");
    assert_eq!(stats["keys"]["(key-value API)"], 1, "{stats}");

    let flushed = run(&["cache", "flush", "--prefix", &prefix, "--namespace", "one"]);
    assert!(flushed.status.success(), "{}", stderr(&flushed));
    assert_eq!(stdout(&flushed), "flushed 1 namespace(s), 41 key(s)\n");
    let exists = async |key: &str| {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut conn.clone())
            .await
            .expect("exists")
            == 1
    };
    for key in &keys {
        let gone = key.starts_with(&format!("{prefix}:t:one:"));
        assert_eq!(exists(key).await, !gone, "{key}");
    }
    let all = run(&["cache", "flush", "--prefix", &prefix]);
    assert!(all.status.success(), "{}", stderr(&all));
    assert_eq!(stdout(&all), "flushed 1 namespace(s), 3 key(s)\n");
    assert!(
        exists(&format!("{prefix}:u:mine")).await,
        "the key-value API's keys stay"
    );
}

/// A command to one node of a cluster (not routed).
async fn on_node<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("node");
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.expect("command")
}

/// `cache flush` on a cluster whose first listed node is down, while one of the
/// namespace's keys sits on the node importing its slot (mid-migration: only a
/// command sent with `ASKING` may touch it there): the next node answers, and the
/// deletes go through a cluster connection that follows `ASK`.
#[tokio::test]
async fn cache_flush_on_a_cluster_mid_migration_with_a_node_down() {
    let cluster = tokio::task::spawn_blocking(tabula::testkit::RedisCluster::start)
        .await
        .expect("start")
        .expect("cluster");
    let ports = cluster.ports();
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let cluster_url = format!("redis+cluster://127.0.0.1:1,{}/", nodes.join(","));
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut conn = client.get_async_connection().await.expect("cluster");
    let prefix = "mid";
    let mut keys = vec![format!("{prefix}:t:ns:{{{prefix}:t:ns}}")];
    for i in 0..30 {
        keys.push(format!("{prefix}:t:ns:e1:{{{i:x}}}:notes:0:{i}"));
    }
    for key in &keys {
        let () = redis::cmd("SET")
            .arg(key)
            .arg("x")
            .query_async(&mut conn)
            .await
            .expect("set");
    }
    // One row's slot half moved: its key already on the importing node.
    let moving = &keys[5];
    let slot: i64 = on_node(ports[0], &["CLUSTER", "KEYSLOT", moving]).await;
    let mut from = None;
    for port in &ports {
        let here: Vec<String> = on_node(*port, &["KEYS", moving]).await;
        if !here.is_empty() {
            from = Some(*port);
        }
    }
    let from = from.expect("the key's node");
    let to = *ports.iter().find(|p| **p != from).expect("another node");
    let from_id: String = on_node(from, &["CLUSTER", "MYID"]).await;
    let to_id: String = on_node(to, &["CLUSTER", "MYID"]).await;
    let s = slot.to_string();
    let () = on_node(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).await;
    let () = on_node(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).await;
    let to_port = to.to_string();
    let _: redis::Value = on_node(
        from,
        &[
            "MIGRATE",
            "127.0.0.1",
            &to_port,
            "",
            "0",
            "5000",
            "KEYS",
            moving,
        ],
    )
    .await;
    let folder = Folder::new("cache-mid");
    let flushed = Command::new(env!("CARGO_BIN_EXE_tabula"))
        .args(["cache", "flush", "--prefix", prefix])
        .current_dir(&folder.0)
        .env("REDIS_URL", &cluster_url)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run tabula");
    assert!(flushed.status.success(), "{}", stderr(&flushed));
    assert_eq!(stdout(&flushed), "flushed 1 namespace(s), 31 key(s)\n");
    for port in &ports {
        let left: Vec<String> = on_node(*port, &["KEYS", "mid:*"]).await;
        assert!(left.is_empty(), "left on {port}: {left:?}");
    }
}

/// `cache flush` keeps a namespace's registry mark (rule 8: how long readers wait
/// before they fill, set by processes with a registry window): the namespace comes
/// back under a fresh epoch carrying it, on one Redis and on a cluster. Without it a
/// reader without a window would fill at once while a writer with one may still skip
/// the table on its snapshot.
#[tokio::test]
async fn cache_flush_keeps_the_registry_mark() {
    let prefix = format!("mark{}", std::process::id());
    let folder = Folder::new("cache-mark");
    let run = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_tabula"))
            .args(["cache", "flush", "--prefix", &prefix, "--namespace", "m"])
            .current_dir(&folder.0)
            .env("REDIS_URL", url)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run tabula")
    };
    // One Redis: the epoch key and the epoch's registry.
    let url = tabula::testkit::redis_url().expect("redis");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let epoch_key = format!("{prefix}:t:m:epoch");
    let () = redis::cmd("SET")
        .arg(&epoch_key)
        .arg("E1")
        .query_async(&mut conn)
        .await
        .expect("set");
    let _: i64 = redis::cmd("HSET")
        .arg(format!("{prefix}:t:m:E1:reg"))
        .arg(&["", "30000", "profiles", "1"])
        .query_async(&mut conn)
        .await
        .expect("hset");
    let out = run(&url);
    assert!(out.status.success(), "{}", stderr(&out));
    let epoch: String = redis::cmd("GET")
        .arg(&epoch_key)
        .query_async(&mut conn)
        .await
        .expect("a fresh epoch");
    assert_ne!(epoch, "E1");
    let mark: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}:t:m:{epoch}:reg"))
        .arg("")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(mark.as_deref(), Some("30000"));

    // A cluster: the namespace's head.
    let urls = tabula::testkit::redis_cluster_urls().expect("redis cluster");
    let nodes: Vec<String> = urls
        .iter()
        .map(|u| {
            u.trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    let cluster = redis::cluster::ClusterClient::new(urls.clone()).expect("client");
    let mut conn = cluster.get_async_connection().await.expect("cluster");
    let head = format!("{prefix}:t:m:{{{prefix}:t:m}}");
    let _: i64 = redis::cmd("HSET")
        .arg(&head)
        .arg(&["e", "E1", "@", "E1", "w", "30000", "g:profiles", "4"])
        .query_async(&mut conn)
        .await
        .expect("hset");
    let out = run(&format!("redis+cluster://{}/", nodes.join(",")));
    assert!(out.status.success(), "{}", stderr(&out));
    let [e, at, w]: [Option<String>; 3] = redis::cmd("HMGET")
        .arg(&head)
        .arg(&["e", "@", "w"])
        .query_async(&mut conn)
        .await
        .expect("hmget");
    assert!(e.as_deref().is_some_and(|e| e != "E1"), "{e:?}");
    assert_eq!(at, e);
    assert_eq!(w.as_deref(), Some("30000"));
}
