//! Found from outside (round 16): `tabula cache get|warm` through a binary built with models
//! (`tabula_cli::main_with`), `Db::cache_entry`, and streamed `tabula storage put|get`.
//!
//! This executable is that `tabula` when `TABULA_TEST_AS_CLI` is set; otherwise it runs
//! the tests below (harness = false), each isolated, and fails if any failed. Tests
//! named `defect_*` failed before their fix (each shows a finding).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};

use serde::Serialize;
use tabula::cache::CachedEntry;
use tabula::migrate::{Migration, Migrator};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "r16_notes", cache(ttl = 300))]
pub struct Note {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

/// A second model over `r16_notes`: another shape.
#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "r16_notes", cache(ttl = 300))]
pub struct NoteId {
    #[table(primary_key)]
    pub id: i64,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "r16_text", cache(ttl = 300))]
pub struct TextKey {
    #[table(primary_key)]
    pub k: String,
    pub v: i32,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "r16_uuid", cache(ttl = 300))]
pub struct UuidKey {
    #[table(primary_key)]
    pub id: uuid::Uuid,
    pub v: i32,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "r16_small", cache(ttl = 300))]
pub struct SmallKey {
    #[table(primary_key)]
    pub id: i16,
    pub v: i32,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "things", schema = "r16s", cache(ttl = 300))]
pub struct Thing {
    #[table(primary_key)]
    pub id: i64,
    pub label: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "r16_soft", cache(ttl = 300))]
pub struct Soft {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
    #[table(soft_delete)]
    pub deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Its table does not exist (renamed away).
#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "r16_gone", cache(ttl = 300))]
pub struct Gone {
    #[table(primary_key)]
    pub id: i64,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize)]
#[table(name = "r16_owned", cache(ttl = 300))]
pub struct Owned {
    #[table(primary_key)]
    pub id: i64,
    pub owner: uuid::Uuid,
    pub body: String,
}

type Models = (
    Note,
    NoteId,
    TextKey,
    UuidKey,
    SmallKey,
    Thing,
    Soft,
    Gone,
    Owned,
);

const SCHEMA: &str = "CREATE TABLE r16_notes (id bigint PRIMARY KEY, body text NOT NULL);
CREATE TABLE r16_text (k text PRIMARY KEY, v int NOT NULL);
CREATE TABLE r16_uuid (id uuid PRIMARY KEY, v int NOT NULL);
CREATE TABLE r16_small (id smallint PRIMARY KEY, v int NOT NULL);
CREATE SCHEMA r16s;
CREATE TABLE r16s.things (id bigint PRIMARY KEY, label text NOT NULL);
CREATE TABLE r16_soft (id bigint PRIMARY KEY, body text NOT NULL, deleted_at timestamptz);
CREATE TABLE r16_owned (id bigint PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
GRANT SELECT ON r16_owned TO authenticated;
ALTER TABLE r16_owned ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON r16_owned USING (owner = auth.uid());";

const KEY: &str = "0123456789abcdef0123456789abcdef-signing";

/// One test: a name and its body.
type TestFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

fn main() -> ExitCode {
    if std::env::var_os("TABULA_TEST_AS_CLI").is_some() {
        return tabula_cli::main_with::<Models>();
    }
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let tests: Vec<(&str, TestFn)> = vec![
        ("cache_get_leaves_redis_untouched", || {
            Box::pin(cache_get_leaves_redis_untouched())
        }),
        ("keys_of_every_type", || Box::pin(keys_of_every_type())),
        ("custom_namespace", || Box::pin(custom_namespace())),
        ("other_shape_and_soft_delete", || {
            Box::pin(other_shape_and_soft_delete())
        }),
        ("missing_table_and_bad_redis", || {
            Box::pin(missing_table_and_bad_redis())
        }),
        ("defect_negative_key_needs_double_dash", || {
            Box::pin(defect_negative_key_needs_double_dash())
        }),
        ("warm_rls_table_leaks_nothing", || {
            Box::pin(warm_rls_table_leaks_nothing())
        }),
        ("defect_warm_with_unreachable_redis_reports_success", || {
            Box::pin(defect_warm_with_unreachable_redis_reports_success())
        }),
        ("warm_edges", || Box::pin(warm_edges())),
        ("warm_text_keys_in_collation_order", || {
            Box::pin(warm_text_keys_in_collation_order())
        }),
        ("storage_round_trips", || Box::pin(storage_round_trips())),
        ("storage_refusals_leave_nothing", || {
            Box::pin(storage_refusals_leave_nothing())
        }),
        ("defect_get_onto_a_directory_leaves_a_partial", || {
            Box::pin(defect_get_onto_a_directory_leaves_a_partial())
        }),
        ("defect_get_clobbers_an_existing_partial_file", || {
            Box::pin(defect_get_clobbers_an_existing_partial_file())
        }),
    ];
    let mut failed = Vec::new();
    for (name, test) in tests {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(test())));
        drop(runtime);
        match outcome {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        println!("all passed");
        ExitCode::SUCCESS
    } else {
        println!("failed: {failed:?}");
        ExitCode::FAILURE
    }
}

struct Setup {
    db: Db,
    url: String,
    redis_url: String,
    prefix: String,
}

async fn setup(test: &str, namespace: Option<&str>) -> Setup {
    let migrator = Migrator::new(vec![Migration::new(1, "r16", SCHEMA)])
        .expect("migrator")
        .with_builtin();
    let (_, url) = tabula::testkit::database(&migrator)
        .await
        .expect("database");
    let redis_url = tabula::testkit::redis_url().expect("redis");
    let prefix = format!("r16{test}{}", std::process::id());
    let mut config = CacheConfig::default().prefix(&prefix);
    if let Some(ns) = namespace {
        config = config.namespace(ns);
    }
    let cache = CacheService::redis(&redis_url, config).expect("cache");
    let db = Db::connect_with(DbConfig::new(&url).cache(cache))
        .await
        .expect("connect");
    Setup {
        db,
        url,
        redis_url,
        prefix,
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Setup {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(std::env::current_exe().expect("exe"));
        c.args(args)
            .env("TABULA_TEST_AS_CLI", "1")
            .env("DATABASE_URL", &self.url)
            .env("REDIS_URL", &self.redis_url)
            .env_remove("TABULA_STORAGE_ROOT")
            .env_remove("TABULA_STORAGE_KEY");
        c
    }

    /// `tabula args… --prefix P`.
    fn cache(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        let at = all.len().min(2);
        all.insert(at, &self.prefix);
        all.insert(at, "--prefix");
        self.command(&all).output().expect("run")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.insert(all.len().min(2), "--json");
        let out = self.cache(&all);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    async fn sql(&self, sql: &str) {
        for one in sql.split(';').filter(|x| !x.trim().is_empty()) {
            self.db.sql_rows(one, &[]).await.expect(one);
        }
    }

    /// Every key under the prefix, with its value (sorted).
    async fn snapshot(&self) -> Vec<(String, String)> {
        let client = redis::Client::open(self.redis_url.as_str()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("scan");
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        let mut out = Vec::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .expect("type");
            let dump: Option<Vec<u8>> = redis::cmd("DUMP")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .expect("dump");
            out.push((k, format!("{kind}:{:?}", dump.map(|d| d.len()))));
        }
        out
    }
}

// ------------------------------------------------------------------ cache get

async fn cache_get_leaves_redis_untouched() {
    let s = setup("peek", None).await;
    s.sql("INSERT INTO r16_notes SELECT g, 'note ' || g FROM generate_series(1, 5) g")
        .await;
    // Nothing cached yet: not even an epoch. A peek must not make one.
    let before = s.snapshot().await;
    assert_eq!(s.json(&["cache", "get", "Note", "1"])["state"], "missing");
    assert_eq!(
        s.snapshot().await,
        before,
        "cache get on an empty namespace wrote"
    );

    let _ = s.db.read::<Note>(1).await.expect("read");
    let _ = s.db.read::<Note>(99).await.expect("read");
    let before = s.snapshot().await;
    for key in ["1", "2", "99"] {
        let _ = s.json(&["cache", "get", "Note", key]);
    }
    let _ = s.db.cache_entry::<Note>(&3).await.expect("peek");
    assert_eq!(s.snapshot().await, before, "cache get wrote to Redis");
    // Row 2 was peeked at (missing): a later read must still ask the database.
    s.sql("UPDATE r16_notes SET body = 'behind' WHERE id = 2")
        .await;
    let row = s.db.read::<Note>(2).await.expect("read").expect("row");
    assert_eq!(row.body, "behind");
    let got = s.json(&["cache", "get", "Note", "2"]);
    assert_eq!(got["row"]["body"], "behind", "{got}");
    assert_eq!(got["leased"], false, "{got}");
}

async fn keys_of_every_type() {
    let s = setup("keys", None).await;
    let weird = "a b 'q' \"dq\" \\ ü 日本 ;--";
    s.db.sql_rows(
        "INSERT INTO r16_text VALUES ($1, 1), ('42', 2), ('', 3), ('null', 4)",
        &[&weird.to_owned()],
    )
    .await
    .expect("text rows");
    let id = uuid::Uuid::new_v4();
    s.db.sql_rows("INSERT INTO r16_uuid VALUES ($1, 7)", &[&id])
        .await
        .expect("uuid row");
    s.sql(
        "INSERT INTO r16_small VALUES (-5, 1), (32767, 2); INSERT INTO r16s.things VALUES (1, 'x')",
    )
    .await;
    for k in [weird, "42", "", "null"] {
        assert!(
            s.db.read::<TextKey>(k.to_owned())
                .await
                .expect("read")
                .is_some()
        );
    }
    assert!(s.db.read::<UuidKey>(id).await.expect("read").is_some());
    assert!(s.db.read::<SmallKey>(-5i16).await.expect("read").is_some());
    assert!(
        s.db.read::<SmallKey>(32767i16)
            .await
            .expect("read")
            .is_some()
    );
    assert!(s.db.read::<Thing>(1).await.expect("read").is_some());

    let got = s.json(&["cache", "get", "TextKey", weird]);
    assert_eq!(got["state"], "row", "{got}");
    assert_eq!(got["row"]["k"], weird, "{got}");
    // "42" and "null" are JSON, but not a string: the text itself.
    assert_eq!(s.json(&["cache", "get", "r16_text", "42"])["row"]["v"], 2);
    assert_eq!(s.json(&["cache", "get", "r16_text", "null"])["row"]["v"], 4);
    assert_eq!(s.json(&["cache", "get", "r16_text", ""])["row"]["v"], 3);
    let got = s.json(&["cache", "get", "r16_uuid", &id.to_string()]);
    assert_eq!(got["row"]["v"], 7, "{got}");
    let upper = id.to_string().to_uppercase();
    let got = s.json(&["cache", "get", "r16_uuid", &upper]);
    assert_eq!(got["row"]["v"], 7, "upper-case UUID: {got}");
    assert_eq!(
        s.json(&["cache", "get", "SmallKey", "--", "-5"])["row"]["v"],
        1
    );
    assert_eq!(
        s.json(&["cache", "get", "SmallKey", "32767"])["row"]["v"],
        2
    );
    let out = s.cache(&["cache", "get", "SmallKey", "40000"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not a key of r16_small"),
        "{}",
        text(&out)
    );
    assert_eq!(
        s.json(&["cache", "get", "r16s.things", "1"])["row"]["label"],
        "x"
    );
    assert_eq!(
        s.json(&["cache", "get", "things", "1"])["row"]["label"],
        "x"
    );
    assert_eq!(
        s.json(&["cache", "get", "Thing", "1"])["table"],
        "r16s.things"
    );
    // `r16_notes` names two models.
    let out = s.cache(&["cache", "get", "r16_notes", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("names 2 models"), "{}", text(&out));
}

async fn custom_namespace() {
    let s = setup("ns", Some("appns")).await;
    s.sql("INSERT INTO r16s.things VALUES (1, 'one')").await;
    assert!(s.db.read::<Thing>(1).await.expect("read").is_some());
    let got = s.json(&["cache", "get", "Thing", "1", "--namespace", "appns"]);
    assert_eq!(got["state"], "row", "{got}");
    let got = s.json(&["cache", "get", "Thing", "1"]);
    assert_eq!(
        got["state"], "missing",
        "default namespace is not appns: {got}"
    );
    // warm into appns, then the app reads what warm filled.
    s.sql("INSERT INTO r16s.things VALUES (2, 'two')").await;
    let out = s.cache(&["cache", "warm", "Thing", "--namespace", "appns"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read 2 row(s), filled 1 entry"),
        "{}",
        text(&out)
    );
    match s.db.cache_entry::<Thing>(&2).await.expect("peek").entry {
        CachedEntry::Row(t) => assert_eq!(t.label, "two"),
        other => panic!("{other:?}"),
    }
}

async fn other_shape_and_soft_delete() {
    let s = setup("shape", None).await;
    s.sql("INSERT INTO r16_notes VALUES (1, 'a'); INSERT INTO r16_soft VALUES (1, 'x', NULL), (2, 'y', NULL)")
        .await;
    assert!(s.db.read::<Note>(1).await.expect("read").is_some());
    let got = s.json(&["cache", "get", "NoteId", "1"]);
    assert_eq!(got["state"], "other-shape", "{got}");
    assert!(s.json(&["cache", "get", "Note", "1"])["row"]["body"] == "a");
    assert!(s.db.read::<Soft>(1).await.expect("read").is_some());
    s.db.delete::<Soft>(1).await.expect("soft delete");
    assert!(s.db.read::<Soft>(1).await.expect("read").is_none());
    let got = s.json(&["cache", "get", "Soft", "1"]);
    assert!(
        got["state"] == "absent" || got["state"] == "missing",
        "{got}"
    );
    assert!(got["row"].is_null(), "a soft-deleted row is shown: {got}");
    // warm over a soft-delete table: the deleted row must not come back as a row.
    let out = s.cache(&["cache", "warm", "Soft"]);
    assert!(out.status.success(), "{}", text(&out));
    println!(
        "  (warm over soft-delete: {})",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let got = s.json(&["cache", "get", "Soft", "1"]);
    assert!(got["row"].is_null(), "{got}");
    assert!(s.db.read::<Soft>(1).await.expect("read").is_none());
    assert_eq!(s.json(&["cache", "get", "Soft", "2"])["row"]["body"], "y");
}

async fn missing_table_and_bad_redis() {
    let s = setup("bad", None).await;
    s.sql("INSERT INTO r16_notes SELECT g, 'n' FROM generate_series(1, 10) g")
        .await;
    let out = s.cache(&["cache", "warm", "Gone"]);
    println!(
        "  (warm on a missing table: {})",
        text(&out).replace('\n', " | ")
    );
    assert!(
        matches!(out.status.code(), Some(1) | Some(3)),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("r16_gone"), "{}", text(&out));
    // get on a missing table reads Redis only: missing is the honest answer.
    let out = s.cache(&["cache", "get", "Gone", "1"]);
    println!(
        "  (get on a missing table: {})",
        text(&out).replace('\n', " | ")
    );
    for url in ["redis://127.0.0.1:1", "notaurl", "redis://[::1"] {
        let warm_too: &[&[&str]] = match url {
            "redis://127.0.0.1:1" => &[&["cache", "get", "Note", "1"]],
            _ => &[&["cache", "get", "Note", "1"], &["cache", "warm", "Note"]],
        };
        for args in warm_too {
            let mut all = args.to_vec();
            all.extend(["--prefix", "x"]);
            let out = s.command(&all).env("REDIS_URL", url).output().expect("run");
            assert_eq!(out.status.code(), Some(3), "{url} {args:?}: {}", text(&out));
            assert!(!text(&out).contains("panicked"), "{}", text(&out));
        }
    }
    // No database given: exit 3 too.
    let out = s
        .command(&["cache", "get", "Note", "1"])
        .env_remove("DATABASE_URL")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

/// A negative key typed as itself (`tabula cache get SmallKey -5`) is taken for an
/// option: exit 2, "unexpected argument '-5'". Keys are documented as JSON (`42`), and
/// negative integer keys are common; `--` is needed today.
async fn defect_negative_key_needs_double_dash() {
    let s = setup("neg", None).await;
    s.sql("INSERT INTO r16_small VALUES (-5, 1)").await;
    assert!(s.db.read::<SmallKey>(-5i16).await.expect("read").is_some());
    let out = s.cache(&["cache", "get", "--json", "SmallKey", "-5"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Redis unreachable (connection refused): `cache get` exits 3, but `cache warm` reads
/// every row from PostgreSQL, fills nothing, and exits 0 ("filled 0 entries") — a
/// cron job warming the cache never learns Redis was down.
async fn defect_warm_with_unreachable_redis_reports_success() {
    let s = setup("warmdown", None).await;
    s.sql("INSERT INTO r16_notes SELECT g, 'n' FROM generate_series(1, 10) g")
        .await;
    let out = s
        .command(&["cache", "warm", "Note", "--prefix", "x"])
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

/// warm runs as the CLI's role (here a superuser, which bypasses RLS) and fills shared
/// entries; a user's read through the app must still see only its own rows.
async fn warm_rls_table_leaks_nothing() {
    let s = setup("rls", None).await;
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    s.db.sql_rows(
        "INSERT INTO r16_owned VALUES (1, $1, 'a secret'), (2, $2, 'b secret')",
        &[&a, &b],
    )
    .await
    .expect("rows");
    let out = s.cache(&["cache", "warm", "Owned"]);
    assert!(out.status.success(), "{}", text(&out));
    println!(
        "  (warm over RLS: {})",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let as_b = s.db.as_user(b);
    assert!(
        as_b.read::<Owned>(1).await.expect("read").is_none(),
        "B reads A's row"
    );
    assert_eq!(
        as_b.read::<Owned>(2)
            .await
            .expect("read")
            .expect("own")
            .body,
        "b secret"
    );
    let as_a = s.db.as_user(a);
    assert!(
        as_a.read::<Owned>(2).await.expect("read").is_none(),
        "A reads B's row"
    );
    let many = as_a.read_many::<Owned>(&[1, 2]).await.expect("many");
    assert!(many[0].is_some() && many[1].is_none(), "{many:?}");
    let got = s.json(&["cache", "get", "Owned", "1"]);
    println!("  (cache get over RLS: {got})");
}

async fn warm_edges() {
    let s = setup("warm", None).await;
    let out = s.cache(&["cache", "warm", "Note"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "r16_notes: read 0 row(s), filled 0 entries\n",
        "{}",
        text(&out)
    );
    s.sql("INSERT INTO r16_notes SELECT g, 'n' || g FROM generate_series(1, 1001) g")
        .await;
    let out = s.cache(&["cache", "warm", "Note", "--limit", "0"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "r16_notes: read 0 row(s), filled 0 entries\n",
        "{}",
        text(&out)
    );
    let before = s.snapshot().await;
    assert!(
        before.iter().all(|(k, _)| !k.contains(":r:")),
        "limit 0 filled something"
    );
    // exactly at the page size, and one past.
    let out = s.cache(&["cache", "warm", "Note", "--limit", "500"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "r16_notes: read 500 row(s), filled 500 entries\n"
    );
    let out = s.cache(&["cache", "warm", "Note", "--limit", "18446744073709551615"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "r16_notes: read 1001 row(s), filled 501 entries\n",
        "{}",
        text(&out)
    );
    let out = s.cache(&["cache", "warm", "Note", "--limit", "-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // Negative keys sort before positive ones.
    s.sql("INSERT INTO r16_notes VALUES (-9223372036854775808, 'min'), (-1, 'm1')")
        .await;
    let out = s.cache(&["cache", "warm", "Note"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "r16_notes: read 1003 row(s), filled 2 entries\n"
    );
    assert_eq!(
        s.json(&["cache", "get", "Note", "--", "-9223372036854775808"])["row"]["body"],
        "min"
    );
    // Warm while rows are deleted through the app: none of the deleted rows may be
    // cached as a row afterwards.
    s.sql("INSERT INTO r16_notes SELECT g, 'z' || g FROM generate_series(2000, 4000) g")
        .await;
    let child = s
        .command(&["cache", "warm", "Note", "--prefix", &s.prefix])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    for id in (2000..4000).step_by(7) {
        s.db.delete::<Note>(id).await.expect("delete");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
    for id in (2000..4000).step_by(7) {
        let peek = s.db.cache_entry::<Note>(&id).await.expect("peek");
        assert!(
            !matches!(peek.entry, CachedEntry::Row(_)),
            "deleted row {id} cached as a row after warm"
        );
        assert!(
            s.db.read::<Note>(id).await.expect("read").is_none(),
            "row {id} read back"
        );
    }
}

async fn warm_text_keys_in_collation_order() {
    let s = setup("coll", None).await;
    // Keys whose order differs between bytes and the database's collation: upper and
    // lower case, accents, spaces, punctuation, digits.
    let mut keys = Vec::new();
    for i in 0..1300 {
        let k = match i % 6 {
            0 => format!("a{i}"),
            1 => format!("B{i}"),
            2 => format!("é{i}"),
            3 => format!(" {i}"),
            4 => format!("-x{i}"),
            _ => format!("Z z{i}"),
        };
        keys.push(k);
    }
    s.db.sql_rows(
        "INSERT INTO r16_text SELECT k, 1 FROM unnest($1::text[]) k",
        &[&keys],
    )
    .await
    .expect("rows");
    let out = s.cache(&["cache", "warm", "r16_text"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "r16_text: read 1300 row(s), filled 1300 entries\n",
        "{}",
        text(&out)
    );
    for k in &keys {
        let peek = s.db.cache_entry::<TextKey>(k).await.expect("peek");
        assert!(
            matches!(peek.entry, CachedEntry::Row(_)),
            "{k:?} not warmed"
        );
    }
}

// ------------------------------------------------------------------ storage

struct Store {
    s: Setup,
    root: PathBuf,
    work: PathBuf,
}

async fn store(test: &str) -> Store {
    let s = setup(test, None).await;
    let base = std::env::temp_dir().join(format!("r16-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    let work = base.join("work");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&work).expect("work");
    let storage = tabula::storage::StorageService::local(
        s.db.clone(),
        &root,
        KEY.as_bytes(),
        "http://files.invalid",
    )
    .expect("storage");
    storage
        .create_bucket(
            "small",
            tabula::storage::BucketOptions {
                max_size: Some(1000),
                ..Default::default()
            },
        )
        .await
        .expect("bucket");
    storage
        .create_bucket("big", Default::default())
        .await
        .expect("bucket");
    Store { s, root, work }
}

impl Store {
    fn run(&self, args: &[&str]) -> Output {
        self.s
            .command(args)
            .current_dir(&self.work)
            .env("TABULA_STORAGE_ROOT", &self.root)
            .env("TABULA_STORAGE_KEY", KEY)
            .output()
            .expect("run")
    }
    fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.push(format!(
                        "{}/",
                        p.strip_prefix(base).expect("under base").display()
                    ));
                    walk(&p, base, out);
                } else {
                    out.push(
                        p.strip_prefix(base)
                            .expect("under base")
                            .display()
                            .to_string(),
                    );
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.work, &self.work, &mut out);
        out.sort();
        out
    }
    fn store_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p.display().to_string());
                }
            }
        }
        walk(&self.root, &mut out);
        out
    }
}

async fn storage_round_trips() {
    let st = store("rt").await;
    // empty file
    std::fs::write(st.work.join("empty"), b"").expect("write");
    let out = st.run(&["storage", "put", "small", "e/empty.bin", "empty"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = st.run(&["storage", "get", "small", "e/empty.bin", "-o", "empty.out"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(st.work.join("empty.out")).expect("read"), b"");
    // a few chunks (256 KiB each) and an odd tail
    let big: Vec<u8> = (0..(3 * 256 * 1024 + 17))
        .map(|i: u32| (i * 31 % 251) as u8)
        .collect();
    std::fs::write(st.work.join("big"), &big).expect("write");
    let out = st.run(&["storage", "put", "big", "dir/big.bin", "big"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = st.run(&["storage", "get", "big", "dir/big.bin"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        out.stdout == big,
        "stdout differs ({} bytes)",
        out.stdout.len()
    );
    // onto an existing file: replaced whole
    std::fs::write(st.work.join("target"), vec![b'x'; 5_000_000]).expect("write");
    let out = st.run(&["storage", "get", "big", "dir/big.bin", "-o", "target"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(st.work.join("target")).expect("read") == big);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("wrote {} bytes to target\n", big.len())
    );
    // put without --upsert onto an existing object: refused, object unchanged.
    std::fs::write(st.work.join("other"), b"other").expect("write");
    let out = st.run(&["storage", "put", "big", "dir/big.bin", "other"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = st.run(&["storage", "get", "big", "dir/big.bin"]);
    assert!(out.stdout == big);
    let files = st.files();
    assert!(files.iter().all(|f| !f.ends_with(".partial")), "{files:?}");
}

async fn storage_refusals_leave_nothing() {
    let st = store("ref").await;
    std::fs::write(st.work.join("toolarge"), vec![7u8; 1001]).expect("write");
    let out = st.run(&["storage", "put", "small", "x.bin", "toolarge"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = st.run(&["storage", "ls", "small", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "{}",
        text(&out)
    );
    let stored = st.store_files();
    assert!(stored.is_empty(), "bytes left in the store: {stored:?}");
    // exactly the limit
    std::fs::write(st.work.join("fits"), vec![7u8; 1000]).expect("write");
    let out = st.run(&["storage", "put", "small", "x.bin", "fits"]);
    assert!(out.status.success(), "{}", text(&out));
    // a missing object: exit 1, no file, no partial
    let out = st.run(&["storage", "get", "small", "nope.bin", "-o", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // a parent that does not exist
    let out = st.run(&["storage", "get", "small", "x.bin", "-o", "no/such/dir/f"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // a missing local file, a directory, /dev/null
    let out = st.run(&["storage", "put", "small", "y.bin", "absent"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = st.run(&["storage", "put", "small", "y.bin", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = st.run(&["storage", "put", "small", "y.bin", "/dev/null"]);
    println!("  (put /dev/null: {})", text(&out).replace('\n', " | "));
    let files = st.files();
    assert_eq!(files, ["fits", "toolarge"], "left behind: {files:?}");
}

async fn defect_get_onto_a_directory_leaves_a_partial() {
    let st = store("dir").await;
    std::fs::write(st.work.join("f"), b"hello").expect("write");
    assert!(
        st.run(&["storage", "put", "big", "f", "f"])
            .status
            .success()
    );
    std::fs::create_dir(st.work.join("out")).expect("dir");
    let out = st.run(&["storage", "get", "big", "f", "-o", "out"]);
    println!(
        "  (get -o a directory: {})",
        text(&out).replace('\n', " | ")
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let files = st.files();
    assert!(
        !files.contains(&"out.partial".to_owned()),
        "a failed get left a half-way file behind: {files:?}"
    );
}

async fn defect_get_clobbers_an_existing_partial_file() {
    let st = store("clob").await;
    std::fs::write(st.work.join("f"), b"hello").expect("write");
    assert!(
        st.run(&["storage", "put", "big", "f", "f"])
            .status
            .success()
    );
    // The user's own file that happens to be called `report.partial`.
    std::fs::write(st.work.join("report.partial"), b"my own work").expect("write");
    let out = st.run(&["storage", "get", "big", "f", "-o", "report"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(st.work.join("report")).expect("read"),
        b"hello"
    );
    assert_eq!(
        std::fs::read(st.work.join("report.partial"))
            .ok()
            .as_deref(),
        Some(&b"my own work"[..]),
        "an unrelated existing file `report.partial` was overwritten and removed"
    );
}
