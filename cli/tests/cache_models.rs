//! `tabula cache get` and `cache warm` through a `tabula` built with models
//! ([`tabula_cli::main_with`]): this executable is that binary when
//! `TABULA_TEST_AS_CLI` is set, and otherwise the tests, which run it as a child
//! process against the test kit's PostgreSQL and Redis.

use std::process::{Command, ExitCode, Output};

use tabula::migrate::{Migration, Migrator};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, PartialEq, serde::Serialize)]
#[table(name = "cli_notes", cache(ttl = 300))]
pub struct Note {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

/// Not cached: `cache get` and `warm` refuse it.
#[derive(Table, Debug, Clone, PartialEq, serde::Serialize)]
#[table(name = "cli_plain")]
pub struct Plain {
    #[table(primary_key)]
    pub id: i64,
}

fn main() -> ExitCode {
    if std::env::var_os("TABULA_TEST_AS_CLI").is_some() {
        return tabula_cli::main_with::<(Note, Plain)>();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(get_and_warm_show_and_fill_the_row_cache());
    runtime.block_on(bad_input_is_refused_clearly());
    println!("cache_models: 2 tests passed");
    ExitCode::SUCCESS
}

struct Setup {
    db: Db,
    url: String,
    redis_url: String,
    prefix: String,
}

async fn setup(test: &str) -> Setup {
    let migrator = Migrator::new(vec![Migration::new(
        1,
        "notes",
        "CREATE TABLE cli_notes (id bigint PRIMARY KEY, body text NOT NULL); \
         CREATE TABLE cli_plain (id bigint PRIMARY KEY);",
    )])
    .expect("migrator");
    let (_, url) = tabula::testkit::database(&migrator)
        .await
        .expect("database");
    let redis_url = tabula::testkit::redis_url().expect("redis");
    let prefix = format!("cli{test}{}", std::process::id());
    let cache =
        CacheService::redis(&redis_url, CacheConfig::default().prefix(&prefix)).expect("cache");
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

impl Setup {
    /// This executable as `tabula args…`, with the app's prefix.
    fn tabula(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--prefix", &self.prefix]);
        Command::new(std::env::current_exe().expect("exe"))
            .args(&all)
            .env("TABULA_TEST_AS_CLI", "1")
            .env("DATABASE_URL", &self.url)
            .env("REDIS_URL", &self.redis_url)
            .output()
            .expect("run")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.tabula(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }
}

async fn get_and_warm_show_and_fill_the_row_cache() {
    let s = setup("get").await;
    s.db.sql_rows(
        "INSERT INTO cli_notes SELECT g, 'note ' || g FROM generate_series(1, 1234) g",
        &[],
    )
    .await
    .expect("rows");

    // Nothing read yet: missing.
    let got = s.json(&["cache", "get", "cli_notes", "7", "--json"]);
    assert_eq!(got["state"], "missing", "{got}");
    assert!(got["row"].is_null());

    // A read through the application's handle fills it; the CLI decodes it.
    assert!(s.db.read::<Note>(7).await.expect("read").is_some());
    let got = s.json(&["cache", "get", "Note", "7", "--json"]);
    assert_eq!(got["state"], "row", "{got}");
    assert_eq!(got["row"]["body"], "note 7", "{got}");
    let ttl = got["ttl_ms"].as_u64().expect("a TTL");
    assert!(ttl > 290_000 && ttl <= 300_000, "{got}");
    assert_eq!(got["leased"], false);

    // A read of an absent row leaves a negative entry.
    assert!(s.db.read::<Note>(99_999).await.expect("read").is_none());
    assert_eq!(
        s.json(&["cache", "get", "cli_notes", "99999", "--json"])["state"],
        "absent"
    );

    // Text output.
    let out = s.tabula(&["cache", "get", "cli_notes", "7"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("cli_notes 7: row\nexpires in "), "{text}");
    assert!(text.contains("\"body\": \"note 7\""), "{text}");

    // A write drops the entry.
    s.db.update::<Note>(
        7,
        NotePatch {
            body: Some("edited".into()),
        },
    )
    .await
    .expect("update");
    assert_eq!(
        s.json(&["cache", "get", "cli_notes", "7", "--json"])["state"],
        "missing"
    );

    // warm: every row, in pages, and only what was missing is filled.
    let out = s.tabula(&["cache", "warm", "cli_notes", "--limit", "600"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cli_notes: read 600 row(s), filled 600 entries\n",
        "row 7 was dropped by the update, so the first 600 were all missing"
    );
    let out = s.tabula(&["cache", "warm", "cli_notes"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cli_notes: read 1234 row(s), filled 634 entries\n"
    );
    let got = s.json(&["cache", "get", "cli_notes", "7", "--json"]);
    assert_eq!(got["row"]["body"], "edited", "{got}");
    let got = s.json(&["cache", "get", "cli_notes", "1234", "--json"]);
    assert_eq!(got["row"]["body"], "note 1234", "{got}");
    // The application reads what warm filled: the database is not asked (the row is
    // changed behind the cache's back, and the cached copy still answers).
    s.db.sql_rows("UPDATE cli_notes SET body = 'behind' WHERE id = 1000", &[])
        .await
        .expect("update behind");
    let row = s.db.read::<Note>(1000).await.expect("read").expect("row");
    assert_eq!(row.body, "note 1000");
    println!("get_and_warm_show_and_fill_the_row_cache ok");
}

async fn bad_input_is_refused_clearly() {
    let s = setup("bad").await;
    let refused = |args: &[&str], says: &str| {
        let out = s.tabula(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(
        &["cache", "get", "nope", "1"],
        "unknown model `nope`; this binary knows: cli_notes (Note), cli_plain (Plain)",
    );
    refused(
        &["cache", "get", "cli_notes", "seven"],
        "`seven` is not a key of cli_notes (int8)",
    );
    refused(&["cache", "get", "cli_plain", "1"], "declares no cache");
    refused(&["cache", "warm", "Plain"], "declares no cache");
    // The published binary knows no models.
    let out = Command::new(env!("CARGO_BIN_EXE_tabula"))
        .args(["cache", "get", "cli_notes", "1"])
        .env("DATABASE_URL", &s.url)
        .env("REDIS_URL", &s.redis_url)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("this binary knows no models"));
    // Nothing was cached by any of it.
    assert_eq!(
        s.json(&["cache", "get", "cli_notes", "1", "--json"])["state"],
        "missing"
    );
    println!("bad_input_is_refused_clearly ok");
}
