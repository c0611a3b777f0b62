//! The PostgREST-compatible API over HTTP on loopback: reads with filters, logic,
//! order, ranges and counts; writes with representations and upserts; Row Level
//! Security deciding per token; CORS; and hostile input answered with PostgREST-shaped
//! 4xx errors, nothing written.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tabula::jwt::JwtVerifier;
use tabula::rest::{Cors, Expose, RestApi, RestConfig};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

pub const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(
    name = "profiles",
    cache(ttl = 60),
    derive_new(serde::Deserialize),
    derive_patch(serde::Deserialize)
)]
pub struct Profile {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub avatar_url: Option<String>,
    #[table(generated)]
    pub status: String,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
    #[table(generated)]
    pub updated_at: DateTime<Utc>,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(
    name = "experiences",
    derive_new(serde::Deserialize),
    derive_patch(serde::Deserialize)
)]
pub struct Experience {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub content: String,
    pub metadata: Value,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(
    name = "authors",
    derive_new(serde::Deserialize),
    derive_patch(serde::Deserialize)
)]
pub struct Author {
    #[table(primary_key)]
    pub id: i64,
    pub name: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(
    name = "posts",
    derive_new(serde::Deserialize),
    derive_patch(serde::Deserialize)
)]
pub struct Post {
    #[table(primary_key)]
    pub id: i64,
    #[table(belongs_to = Author)]
    pub author_id: Option<i64>,
    pub title: String,
}

const RELATED: &str = "
    CREATE TABLE authors (id int8 PRIMARY KEY, name text NOT NULL);
    CREATE TABLE posts (id int8 PRIMARY KEY, author_id int8 REFERENCES authors, title text NOT NULL);
    GRANT SELECT, INSERT, UPDATE, DELETE ON authors, posts TO anon, authenticated;
    INSERT INTO authors VALUES (1, 'ann'), (2, 'bob'), (3, 'cy');
    INSERT INTO posts VALUES (10, 1, 'a1'), (11, 1, 'a2'), (12, 2, 'b1'), (13, NULL, 'orphan');
";

pub fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("sign")
}

pub fn user_token(user: Uuid) -> String {
    token(json!({
        "sub": user, "role": "authenticated", "aud": "authenticated",
        "exp": Utc::now().timestamp() + 600
    }))
}

pub fn anon_key() -> String {
    token(json!({ "role": "anon", "aud": "authenticated", "exp": Utc::now().timestamp() + 600 }))
}

/// A server on loopback: the API over `profiles` and `experiences`, a handle with a
/// Redis cache and the JWT secret; returns its base URL and the unscoped handle.
pub async fn serve() -> (String, Db) {
    serve_with(Cors::origins(["http://app.test"])).await
}

/// [`serve`] with another CORS policy.
pub async fn serve_with(cors: Cors) -> (String, Db) {
    let (_, url) = common::db_and_url().await;
    let cache = CacheService::redis(
        &tabula::testkit::redis_url().expect("redis"),
        CacheConfig::default()
            .prefix(format!(
                "rest{}x{}",
                std::process::id(),
                Uuid::new_v4().simple()
            ))
            .deadline(Duration::from_secs(2)),
    )
    .expect("cache");
    let db = Db::connect_with(
        DbConfig::new(url)
            .cache(cache)
            .jwt(JwtVerifier::hs256(SECRET).expect("verifier")),
    )
    .await
    .expect("db");
    db.execute_batch(RELATED).await.expect("related tables");
    let api = RestApi::new()
        .model::<Profile>()
        .model_with::<Experience>(Expose::default().protect(["user_id"]))
        .model_with::<Author>(Expose::default().cached(60))
        .model::<Post>()
        .embed::<Author, Post>();
    let app = tabula::rest::router(db.clone(), api, RestConfig::default().cors(cors));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, db)
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a connection of its own.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn seed(db: &Db) -> (Uuid, Uuid) {
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (user, name) in [(alice, "alice-a"), (alice, "alice-b"), (bob, "bob-a")] {
        db.create(NewProfile {
            user_id: user,
            username: name.into(),
            avatar_url: None,
        })
        .await
        .expect("seed");
    }
    (alice, bob)
}

fn names(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|row| row["username"].as_str().expect("username").to_owned())
        .collect()
}

#[tokio::test]
async fn reads_filter_order_range_and_count_as_the_policy_allows() {
    let (base, db) = serve().await;
    let (alice, _bob) = seed(&db).await;
    let auth = bearer(&user_token(alice));
    let get = |path: String, extra: Vec<(&'static str, String)>| {
        let (base, auth) = (base.clone(), auth.clone());
        async move {
            let mut headers: Vec<(&str, &str)> = vec![("Authorization", &auth)];
            headers.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
            request(&base, "GET", &path, &headers, None).await
        }
    };
    let all = get(
        "/rest/v1/profiles?select=id,username&order=username.desc".into(),
        vec![],
    )
    .await;
    assert_eq!(all.status, 200, "{}", String::from_utf8_lossy(&all.body));
    assert_eq!(
        names(&all.json()),
        ["alice-b", "alice-a"],
        "bob's row is hidden"
    );
    assert_eq!(
        all.json()[0].as_object().expect("row").len(),
        2,
        "only the selected columns"
    );
    let filtered = get(
        "/rest/v1/profiles?or=(username.eq.alice-a,username.like.*-z)&avatar_url=is.null".into(),
        vec![],
    )
    .await;
    assert_eq!(names(&filtered.json()), ["alice-a"]);
    let negated = get(
        "/rest/v1/profiles?username=not.in.(alice-a,x)".into(),
        vec![],
    )
    .await;
    assert_eq!(names(&negated.json()), ["alice-b"]);
    let ranged = get(
        "/rest/v1/profiles?order=username".into(),
        vec![("Range", "1-1".into()), ("Prefer", "count=exact".into())],
    )
    .await;
    assert_eq!(
        ranged.status, 206,
        "the last row of two: a part of the rows"
    );
    assert_eq!(names(&ranged.json()), ["alice-b"]);
    assert_eq!(ranged.header("content-range"), Some("1-1/2"));
    let first = get(
        "/rest/v1/profiles?order=username".into(),
        vec![("Range", "0-0".into()), ("Prefer", "count=exact".into())],
    )
    .await;
    assert_eq!(first.status, 206);
    assert_eq!(first.header("content-range"), Some("0-0/2"));
    let one = get(
        "/rest/v1/profiles?username=eq.alice-a".into(),
        vec![("Accept", "application/vnd.pgrst.object+json".into())],
    )
    .await;
    assert_eq!(one.json()["username"], "alice-a");
    let many = get(
        "/rest/v1/profiles".into(),
        vec![("Accept", "application/vnd.pgrst.object+json".into())],
    )
    .await;
    assert_eq!(
        (many.status, many.json()["code"].clone()),
        (406, json!("PGRST116"))
    );
    // Anonymous: nothing (the policy shows owners their rows only).
    let anon = request(
        &base,
        "GET",
        "/rest/v1/profiles",
        &[("apikey", &anon_key())],
        None,
    )
    .await;
    assert_eq!((anon.status, anon.json()), (200, json!([])));
    let none = request(&base, "GET", "/rest/v1/profiles", &[], None).await;
    assert_eq!((none.status, none.json()), (200, json!([])));
}

#[tokio::test]
async fn writes_return_representations_upsert_and_obey_the_policy() {
    let (base, db) = serve().await;
    let (alice, bob) = seed(&db).await;
    let auth = bearer(&user_token(alice));
    let json_headers = |prefer: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("Authorization", auth.clone()),
            ("Content-Type", "application/json".into()),
            ("Prefer", prefer.into()),
        ]
    };
    let send = |method: &'static str,
                path: &'static str,
                headers: Vec<(&'static str, String)>,
                body: Value| {
        let base = base.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let body = serde_json::to_vec(&body).expect("body");
            request(&base, method, path, &headers, Some(&body)).await
        }
    };
    let created = send(
        "POST",
        "/rest/v1/profiles?select=username,status",
        json_headers("return=representation"),
        json!([{ "user_id": alice, "username": "alice-c" }, { "user_id": alice, "username": "alice-d" }]),
    )
    .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(
        created.json(),
        json!([{ "username": "alice-c", "status": "active" }, { "username": "alice-d", "status": "active" }])
    );
    // For another user: the policy refuses, nothing is written (the whole batch).
    let refused = send(
        "POST",
        "/rest/v1/profiles",
        json_headers("return=minimal"),
        json!([{ "user_id": alice, "username": "alice-e" }, { "user_id": bob, "username": "bob-x" }]),
    )
    .await;
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.json()["code"], "42501");
    let count = db.query::<Profile>().count().await.expect("count");
    assert_eq!(
        count, 5,
        "three seeded, two created, none of the refused batch"
    );
    // Update and delete by filter.
    let updated = send(
        "PATCH",
        "/rest/v1/profiles?username=eq.alice-c",
        json_headers("return=representation"),
        json!({ "avatar_url": "https://a/c.png" }),
    )
    .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.json()[0]["avatar_url"], "https://a/c.png");
    let bobs = send(
        "PATCH",
        "/rest/v1/profiles?username=eq.bob-a",
        json_headers("return=representation"),
        json!({ "avatar_url": "hacked" }),
    )
    .await;
    assert_eq!(
        (bobs.status, bobs.json()),
        (200, json!([])),
        "bob's row is not alice's to change"
    );
    let deleted = send(
        "DELETE",
        "/rest/v1/profiles?username=eq.alice-d",
        json_headers("return=representation"),
        json!(null),
    )
    .await;
    assert_eq!(names(&deleted.json()), ["alice-d"]);
    // Upsert on the primary key: merge.
    let row = db
        .query::<Profile>()
        .filter(Profile::USERNAME.eq("alice-a".to_owned()))
        .first()
        .await
        .expect("query")
        .expect("alice-a");
    let merged = send(
        "POST",
        "/rest/v1/profiles?on_conflict=id&select=id,username",
        json_headers("return=representation,resolution=merge-duplicates"),
        json!({ "id": row.id, "user_id": alice, "username": "alice-renamed" }),
    )
    .await;
    assert_eq!(
        merged.status,
        400,
        "`id` is generated, so not writable: {}",
        String::from_utf8_lossy(&merged.body)
    );
    // Upsert on a unique column: the existing row is merged, none added (the row
    // cached before by the unscoped handle follows).
    assert_eq!(
        db.read::<Profile>(row.id)
            .await
            .expect("warm")
            .map(|p| p.avatar_url),
        Some(None)
    );
    let merged = send(
        "POST",
        "/rest/v1/profiles?on_conflict=username&select=username,avatar_url",
        json_headers("return=representation,resolution=merge-duplicates"),
        json!({ "user_id": alice, "username": "alice-a", "avatar_url": "merged" }),
    )
    .await;
    assert_eq!(
        merged.status,
        201,
        "{}",
        String::from_utf8_lossy(&merged.body)
    );
    assert_eq!(
        merged.json(),
        json!([{ "username": "alice-a", "avatar_url": "merged" }])
    );
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 4);
    // The cache saw every write: the unscoped handle's cached reads agree.
    let read = db
        .read::<Profile>(row.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(read.avatar_url.as_deref(), Some("merged"));
    let updated_row = db
        .query::<Profile>()
        .filter(Profile::USERNAME.eq("alice-c".to_owned()))
        .cached(60)
        .first()
        .await
        .expect("cached")
        .expect("alice-c");
    assert_eq!(updated_row.avatar_url.as_deref(), Some("https://a/c.png"));
    // A protected column is refused.
    let protected = send(
        "POST",
        "/rest/v1/experiences",
        json_headers("return=minimal"),
        json!({ "user_id": alice, "content": "x", "metadata": {} }),
    )
    .await;
    assert_eq!(
        (protected.status, protected.json()["code"].clone()),
        (400, json!("PGRST204"))
    );
}

#[tokio::test]
async fn hostile_input_gets_postgrest_errors_and_changes_nothing() {
    let (base, db) = serve().await;
    let (alice, _) = seed(&db).await;
    let auth = bearer(&user_token(alice));
    let get = |path: String| {
        let (base, auth) = (base.clone(), auth.clone());
        async move { request(&base, "GET", &path, &[("Authorization", &auth)], None).await }
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("/rest/v1/nope".into(), 404, "PGRST205"),
        ("/rest/v1/profiles?nope=eq.1".into(), 400, "42703"),
        ("/rest/v1/profiles?select=id,nope".into(), 400, "42703"),
        ("/rest/v1/profiles?username=zz.1".into(), 400, "PGRST100"),
        ("/rest/v1/profiles?username=eq".into(), 400, "PGRST100"),
        (
            "/rest/v1/profiles?or=(username.eq.a".into(),
            400,
            "PGRST100",
        ),
        ("/rest/v1/profiles?id=eq.not-a-uuid".into(), 400, "PGRST100"),
        (
            "/rest/v1/profiles?order=username.sideways".into(),
            400,
            "PGRST100",
        ),
        ("/rest/v1/profiles?limit=100000".into(), 400, "PGRST100"),
        (
            "/rest/v1/profiles?select=id,experiences(content)".into(),
            400,
            "PGRST200",
        ),
        (
            format!(
                "/rest/v1/profiles?username=in.({})",
                vec!["x"; 5000].join(",")
            ),
            400,
            "PGRST100",
        ),
        (
            format!(
                "/rest/v1/profiles?or=({}username.eq.a{})",
                "and(".repeat(80),
                ")".repeat(80)
            ),
            400,
            "PGRST100",
        ),
    ];
    for (path, status, code) in cases {
        let response = get(path.clone()).await;
        assert_eq!(
            response.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let body = response.json();
        assert_eq!(body["code"], code, "{path}");
        assert!(
            body.get("message").is_some()
                && body.get("hint").is_some()
                && body.get("details").is_some()
        );
    }
    // Injection in values and names is data, never SQL.
    for path in [
        "/rest/v1/profiles?username=eq.%27;%20DROP%20TABLE%20profiles;--",
        "/rest/v1/profiles?username=like.%25%27%20OR%201=1--",
        "/rest/v1/profiles?or=(username.eq.a%29%20OR%20%28true)",
    ] {
        let response = get(path.into()).await;
        assert!(
            response.status == 200 && response.json() == json!([]) || response.status == 400,
            "{path}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    let injected_column = get("/rest/v1/profiles?select=id;DROP%20TABLE%20profiles".into()).await;
    assert_eq!(injected_column.status, 400);
    // Writes: unfiltered, invalid JSON, oversized, a bad token.
    let json = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let unfiltered = request(&base, "DELETE", "/rest/v1/profiles", &json, None).await;
    assert_eq!(
        (unfiltered.status, unfiltered.json()["code"].clone()),
        (400, json!("21000"))
    );
    let unfiltered = request(
        &base,
        "PATCH",
        "/rest/v1/profiles",
        &json,
        Some(br#"{"avatar_url":"x"}"#),
    )
    .await;
    assert_eq!(unfiltered.status, 400);
    let garbage = request(
        &base,
        "POST",
        "/rest/v1/profiles",
        &json,
        Some(b"{not json"),
    )
    .await;
    assert_eq!(
        (garbage.status, garbage.json()["code"].clone()),
        (400, json!("PGRST102"))
    );
    let huge = vec![b' '; 2 << 20];
    let oversized = request(&base, "POST", "/rest/v1/profiles", &json, Some(&huge)).await;
    assert_eq!(oversized.status, 413);
    let unknown = request(
        &base,
        "POST",
        "/rest/v1/profiles",
        &json,
        Some(br#"{"user_id":"00000000-0000-0000-0000-000000000000","username":"x","admin":true}"#),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.json()["code"].clone()),
        (400, json!("PGRST204"))
    );
    let forged = token(json!({ "sub": alice, "role": "service_role", "aud": "authenticated", "exp": Utc::now().timestamp() + 600 }))
        .replace('.', ".x");
    let refused = request(
        &base,
        "GET",
        "/rest/v1/profiles",
        &[("Authorization", &bearer(&forged))],
        None,
    )
    .await;
    assert_eq!(
        (refused.status, refused.json()["code"].clone()),
        (401, json!("PGRST301"))
    );
    assert_eq!(
        db.query::<Profile>().count().await.expect("count"),
        3,
        "nothing written"
    );
}

#[tokio::test]
async fn cors_preflight_and_origins() {
    let (base, _db) = serve().await;
    let preflight = request(
        &base,
        "OPTIONS",
        "/rest/v1/profiles",
        &[
            ("Origin", "http://app.test"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "apikey,authorization,prefer,range",
            ),
        ],
        None,
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://app.test")
    );
    let allowed = preflight
        .header("access-control-allow-headers")
        .expect("headers");
    for name in [
        "apikey",
        "authorization",
        "prefer",
        "range",
        "content-profile",
    ] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
    let other = request(
        &base,
        "GET",
        "/rest/v1/profiles",
        &[("Origin", "http://evil.test")],
        None,
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    let own = request(
        &base,
        "GET",
        "/rest/v1/profiles",
        &[("Origin", "http://app.test")],
        None,
    )
    .await;
    assert_eq!(
        own.header("access-control-allow-origin"),
        Some("http://app.test")
    );
    assert!(
        own.header("access-control-expose-headers")
            .is_some_and(|h| h.contains("Content-Range"))
    );
}

/// `@supabase/postgrest-js` (and esbuild, to bundle it for a browser), installed from
/// the npm registry once per target directory, with the conformance scripts beside it.
///
/// Both conformance tests ask for it at once: the first installs while the other waits
/// (two `npm install` in one directory fail each other), and the install happens in a
/// directory of this process's own, renamed into place only when complete, so another
/// test process never sees half of one.
fn postgrest_js() -> std::path::PathBuf {
    static INSTALLED: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(install_postgrest_js).clone()
}

fn install_postgrest_js() -> std::path::PathBuf {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join("postgrest-js-1.21.4");
    if !dir.join("node_modules/.bin/esbuild").exists() {
        let staging = tmp.join(format!("postgrest-js-1.21.4.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).expect("npm dir");
        std::fs::write(
            staging.join("package.json"),
            r#"{"name":"conformance","private":true,"type":"module"}"#,
        )
        .expect("package.json");
        let status = std::process::Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "@supabase/postgrest-js@1.21.4",
                "esbuild@0.25.0",
            ])
            .current_dir(&staging)
            .status()
            .expect("npm (Node.js) is needed: `./tabula setup` installs it");
        assert!(status.success(), "npm install failed");
        // A half-made directory of an earlier, interrupted run goes; a complete one
        // another process renamed into place meanwhile stays, and this one goes.
        if !dir.join("node_modules/.bin/esbuild").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            if std::fs::rename(&staging, &dir).is_err() {
                assert!(dir.join("node_modules/.bin/esbuild").exists(), "npm dir");
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
    }
    for script in [
        "steps.mjs",
        "postgrest_conformance.mjs",
        "browser_entry.mjs",
    ] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/js")
                .join(script),
            dir.join(script),
        )
        .expect("script");
    }
    dir
}

/// What a conformance run is given: the API's base URL, the anon key, alice's token,
/// alice's and bob's ids.
type Args = [String; 5];

/// Runs the conformance steps with `runner` against a fresh server, and checks every
/// answer against the typed API's (computed before the client writes anything) and
/// PostgREST's documented errors.
async fn conformance<F, Fut>(runner: F)
where
    F: FnOnce(Args) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    // Any origin: the browser's page is served from a port known only later.
    let (base, db) = serve_with(Cors::any()).await;
    let (alice, bob) = seed(&db).await;
    // The typed API's answers, as alice, before the client writes anything.
    let as_alice = db.as_user(alice);
    let typed = |filter: Option<tabula::Filter<Profile>>, descending: bool| {
        let as_alice = as_alice.clone();
        async move {
            let mut query = as_alice.query::<Profile>();
            if let Some(filter) = filter {
                query = query.filter(filter);
            }
            let order = if descending {
                Profile::USERNAME.desc()
            } else {
                Profile::USERNAME.asc()
            };
            query
                .order_by(order)
                .all()
                .await
                .expect("typed")
                .into_iter()
                .map(|p| p.username)
                .collect::<Vec<_>>()
        }
    };
    let expected = (
        typed(None, false).await,
        typed(None, true).await,
        typed(
            Some(Profile::USERNAME.is_in(["alice-a".to_owned(), "nobody".to_owned()])),
            false,
        )
        .await,
        typed(
            Some(
                Profile::USERNAME
                    .eq("alice-b".to_owned())
                    .or(Profile::USERNAME.eq("bob-a".to_owned())),
            ),
            false,
        )
        .await,
        typed(Some(Profile::USERNAME.ilike("ALICE-%")), false).await,
        typed(Some(Profile::AVATAR_URL.is_null()), false).await,
        typed(Some(Profile::USERNAME.ne("alice-a".to_owned())), false).await,
    );
    let output = runner([
        base.clone(),
        anon_key(),
        user_token(alice),
        alice.to_string(),
        bob.to_string(),
    ])
    .await;
    let steps: std::collections::HashMap<String, Value> = output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let step: Value = serde_json::from_str(line).expect("a JSON line");
            (step["step"].as_str().expect("step").to_owned(), step)
        })
        .collect();
    assert!(!steps.contains_key("exception"), "{steps:?}");
    let step = |name: &str| {
        steps
            .get(name)
            .unwrap_or_else(|| panic!("no step {name}: {steps:?}"))
    };
    let usernames = |name: &str| -> Vec<String> {
        let step = step(name);
        assert!(step["error"].is_null(), "{name}: {step}");
        names(&step["data"])
    };
    let (ordered, descending, listed, either, ilike, null, not) = expected;
    assert_eq!(usernames("select_ordered"), ordered);
    assert_eq!(usernames("select_desc_limit"), descending[..1]);
    assert_eq!(usernames("filter_in"), listed);
    assert_eq!(usernames("filter_or"), either);
    assert_eq!(usernames("filter_ilike"), ilike);
    assert_eq!(usernames("filter_is_null"), null);
    assert_eq!(usernames("filter_not"), not);
    assert_eq!(usernames("filter_neq_gt"), ["alice-b"]);
    let ranged = step("range_count");
    assert_eq!(
        (names(&ranged["data"]), ranged["count"].clone()),
        (vec!["alice-b".to_owned()], json!(2))
    );
    let head = step("head_count");
    assert_eq!(
        (head["data"].clone(), head["count"].clone()),
        (json!(null), json!(2)),
        "{head}"
    );
    assert_eq!(step("single")["data"], json!({ "username": "alice-a" }));
    let none = step("single_none");
    assert_eq!(
        (none["status"].clone(), none["error"]["code"].clone()),
        (json!(406), json!("PGRST116"))
    );
    let maybe = step("maybe_single");
    assert_eq!(
        (maybe["data"].clone(), maybe["error"].clone()),
        (json!(null), json!(null)),
        "{maybe}"
    );
    assert_eq!(
        step("insert")["data"],
        json!([{ "username": "alice-js", "status": "active" }])
    );
    assert_eq!(usernames("insert_bulk"), ["alice-js-2", "alice-js-3"]);
    assert_eq!(
        step("upsert")["data"],
        json!([{ "username": "alice-js", "avatar_url": "https://a/js.png" }])
    );
    assert_eq!(
        step("update")["data"],
        json!([{ "username": "alice-js", "avatar_url": "https://a/v2.png" }])
    );
    let denied = step("rls_denied_insert");
    assert_eq!(
        (denied["status"].clone(), denied["error"]["code"].clone()),
        (json!(403), json!("42501")),
        "{denied}"
    );
    assert_eq!(step("rls_hidden_update")["data"], json!([]));
    assert_eq!(usernames("delete"), ["alice-js-2", "alice-js-3"]);
    assert_eq!(step("anon_select")["data"], json!([]));
    assert_eq!(step("unknown_table")["error"]["code"], "PGRST205");
    assert_eq!(step("unknown_column")["error"]["code"], "42703");
    assert_eq!(
        step("embed_children")["data"],
        json!([
            { "name": "ann", "posts": [{ "title": "a1" }, { "title": "a2" }] },
            { "name": "bob", "posts": [{ "title": "b1" }] },
            { "name": "cy", "posts": [] },
        ])
    );
    assert_eq!(
        step("embed_parent")["data"],
        json!({ "title": "b1", "authors": { "name": "bob" } })
    );
    // The end state, by the client and by the typed API (unscoped: bob's row untouched).
    assert_eq!(usernames("after"), typed(None, false).await);
    assert_eq!(usernames("after"), ["alice-a", "alice-b", "alice-js"]);
    let bobs = db
        .query::<Profile>()
        .filter(Profile::USER_ID.eq(bob))
        .all()
        .await
        .expect("bob");
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        bobs[0].avatar_url, None,
        "the hidden update changed nothing"
    );
}

/// The real postgrest-js client, from Node.js, against the router.
#[tokio::test]
async fn the_postgrest_js_client_gets_the_answers_of_the_typed_api() {
    let dir = tokio::task::spawn_blocking(postgrest_js)
        .await
        .expect("npm");
    conformance(|args| async move {
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .arg("postgrest_conformance.mjs")
                .args(&args)
                .current_dir(&dir)
                .output()
        })
        .await
        .expect("join")
        .expect("node");
        assert!(
            output.status.success(),
            "node failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await;
}

/// The same client in a real headless browser (Debian's Chromium): a page on another
/// origin loads postgrest-js (bundled by esbuild for the browser) and calls the router
/// on loopback, so CORS and preflights are the browser's own.
#[tokio::test]
async fn the_postgrest_js_client_in_a_headless_browser_gets_the_same_answers() {
    let dir = tokio::task::spawn_blocking(|| {
        let dir = postgrest_js();
        let status = std::process::Command::new(dir.join("node_modules/.bin/esbuild"))
            .args([
                "browser_entry.mjs",
                "--bundle",
                "--format=esm",
                "--platform=browser",
                "--log-level=warning",
                "--outfile=bundle.js",
            ])
            .current_dir(&dir)
            .status()
            .expect("esbuild");
        assert!(status.success(), "esbuild failed");
        dir
    })
    .await
    .expect("bundle");
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("Chromium is needed: `./tabula setup` installs it (Debian package chromium)");
    conformance(|args| async move {
        let bundle = std::fs::read(dir.join("bundle.js")).expect("bundle.js");
        let (sender, receiver) = tokio::sync::oneshot::channel::<String>();
        let sender = std::sync::Arc::new(std::sync::Mutex::new(Some(sender)));
        let page = axum::Router::new()
            .route(
                "/",
                axum::routing::get(|| async {
                    (
                        [("content-type", "text/html")],
                        "<!doctype html><script type=\"module\" src=\"/bundle.js\"></script>",
                    )
                }),
            )
            .route(
                "/bundle.js",
                axum::routing::get(move || {
                    let bundle = bundle.clone();
                    async move { ([("content-type", "text/javascript")], bundle) }
                }),
            )
            .route(
                "/results",
                axum::routing::post(move |body: String| {
                    let sender = sender.clone();
                    async move {
                        if let Some(sender) = sender.lock().ok().and_then(|mut s| s.take()) {
                            let _ = sender.send(body);
                        }
                        "ok"
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("page listener");
        let origin = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, page).await });
        let query: String = ["base", "anon", "token", "user", "other"]
            .iter()
            .zip(&args)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let profile = std::env::temp_dir().join(format!(
            "tabula-chromium-{}-{}",
            std::process::id(),
            Uuid::new_v4().simple()
        ));
        let mut child = std::process::Command::new(browser)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                &format!("--user-data-dir={}", profile.display()),
                &format!("{origin}/?{query}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium");
        let lines = tokio::time::timeout(Duration::from_secs(90), receiver).await;
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&profile);
        lines
            .expect("the page reported within 90 s")
            .expect("the page's results")
    })
    .await;
}

/// Embedded resources along the declared relation, both ways and nested; PostgREST's
/// shapes (an array of children, an object or `null` for a parent).
#[tokio::test]
async fn embedded_resources_follow_the_declared_relation_both_ways() {
    let (base, _db) = serve().await;
    let get = |path: &'static str| {
        let base = base.clone();
        async move { request(&base, "GET", path, &[], None).await }
    };
    let authors = get("/rest/v1/authors?select=name,posts(title)&order=name").await;
    assert_eq!(
        authors.status,
        200,
        "{}",
        String::from_utf8_lossy(&authors.body)
    );
    assert_eq!(
        authors.json(),
        json!([
            { "name": "ann", "posts": [{ "title": "a1" }, { "title": "a2" }] },
            { "name": "bob", "posts": [{ "title": "b1" }] },
            { "name": "cy", "posts": [] },
        ])
    );
    let posts = get("/rest/v1/posts?select=title,authors(name)&order=id").await;
    assert_eq!(
        posts.json(),
        json!([
            { "title": "a1", "authors": { "name": "ann" } },
            { "title": "a2", "authors": { "name": "ann" } },
            { "title": "b1", "authors": { "name": "bob" } },
            { "title": "orphan", "authors": null },
        ])
    );
    let nested = get("/rest/v1/posts?select=id,authors(name,posts(id))&id=eq.12").await;
    assert_eq!(
        nested.json(),
        json!([{ "id": 12, "authors": { "name": "bob", "posts": [{ "id": 12 }] } }])
    );
    let only = get("/rest/v1/authors?select=posts(*)&id=eq.2").await;
    assert_eq!(
        only.json(),
        json!([{ "posts": [{ "id": 12, "author_id": 2, "title": "b1" }] }])
    );
    let unrelated = get("/rest/v1/authors?select=name,profiles(username)").await;
    assert_eq!(
        (unrelated.status, unrelated.json()["code"].clone()),
        (400, json!("PGRST200"))
    );
    let too_deep =
        get("/rest/v1/posts?select=id,authors(posts(authors(posts(authors(name)))))").await;
    assert_eq!(too_deep.status, 400);
}

/// A model exposed with `Expose::cached`: reads come from the query cache (a change
/// behind the cache's back is not seen), and every write through the API (or Tabula)
/// drops them.
#[tokio::test]
async fn cached_reads_follow_every_write() {
    let (base, db) = serve().await;
    let get = || {
        let base = base.clone();
        async move {
            request(
                &base,
                "GET",
                "/rest/v1/authors?select=name&id=eq.1",
                &[],
                None,
            )
            .await
            .json()
        }
    };
    assert_eq!(get().await, json!([{ "name": "ann" }]));
    db.execute_batch("UPDATE authors SET name = 'behind' WHERE id = 1")
        .await
        .expect("behind");
    assert_eq!(
        get().await,
        json!([{ "name": "ann" }]),
        "served from the cache"
    );
    let patched = request(
        &base,
        "PATCH",
        "/rest/v1/authors?id=eq.1",
        &[("Content-Type", "application/json")],
        Some(br#"{"name":"annie"}"#),
    )
    .await;
    assert_eq!(
        patched.status,
        204,
        "{}",
        String::from_utf8_lossy(&patched.body)
    );
    assert_eq!(get().await, json!([{ "name": "annie" }]));
    db.update::<Author>(
        1,
        AuthorPatch {
            name: Some("ann".into()),
        },
    )
    .await
    .expect("typed write");
    assert_eq!(get().await, json!([{ "name": "ann" }]));
}

/// Embedding up to the maximum row count works; one row more is refused (never
/// silently cut) — with the API's own limit.
#[tokio::test]
async fn an_embedding_at_the_maximum_is_whole_and_one_more_is_refused() {
    let db = common::db().await;
    db.execute_batch(RELATED).await.expect("related tables");
    let api = RestApi::new()
        .limits(tabula::query::SpecLimits::default().max_limit(2))
        .model::<Author>()
        .model::<Post>()
        .embed::<Author, Post>();
    let read = tabula::rest::Read::from_query("select=name,posts(title)&id=eq.1").expect("read");
    let ann = api
        .table("authors")
        .expect("table")
        .select(&db, &read)
        .await;
    assert_eq!(
        ann.expect("two posts, the maximum").rows[0]["posts"],
        json!([{ "title": "a1" }, { "title": "a2" }])
    );
    db.execute_batch("INSERT INTO posts VALUES (14, 1, 'a3')")
        .await
        .expect("third post");
    let more = api
        .table("authors")
        .expect("table")
        .select(&db, &read)
        .await;
    assert!(matches!(&more, Err(e) if e.status == 400), "{more:?}");
}
