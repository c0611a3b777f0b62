//! Shared by the integration tests: the repository's migrations, a fresh database per
//! test, and the seed's models.
#![allow(dead_code, unreachable_pub)]

pub mod fixtures;
pub mod http;
pub mod replicas;
pub mod sessions;
pub mod tx;

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tabula::migrate::Migrator;
use tabula::{Db, Table};
use uuid::Uuid;

pub static MIGRATIONS: LazyLock<Migrator> =
    LazyLock::new(|| tabula::embed_migrations!("migrations").with_builtin());

/// A database of this test's own, migrated, on the test kit's server.
pub async fn db() -> Db {
    match tabula::testkit::database(&MIGRATIONS).await {
        Ok((db, _url)) => db,
        Err(e) => panic!("test database: {e}"),
    }
}

/// A database of this test's own and its URL.
pub async fn db_and_url() -> (Db, String) {
    match tabula::testkit::database(&MIGRATIONS).await {
        Ok(pair) => pair,
        Err(e) => panic!("test database: {e}"),
    }
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles")]
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
#[table(name = "experiences")]
pub struct Experience {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub content: String,
    pub metadata: serde_json::Value,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "documents")]
pub struct Document {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub content: String,
    #[table(json)]
    pub metadata: DocumentMeta,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
    #[table(generated)]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DocumentMeta {
    pub tags: Vec<String>,
    pub pages: u32,
}

/// Rows in `profiles`, counted by PostgreSQL.
pub async fn count_profiles(db: &Db) -> i64 {
    db.with_client(async |c| {
        Ok(c.query_one("SELECT count(*) FROM profiles", &[])
            .await?
            .get(0))
    })
    .await
    .expect("count")
}

pub fn new_profile(username: &str) -> NewProfile {
    NewProfile {
        user_id: Uuid::new_v4(),
        username: username.to_owned(),
        avatar_url: None,
    }
}

/// A TCP proxy in front of a server that a test can cut: on the connections open at
/// the moment of the cut, the server's replies (or all traffic) are swallowed, as a
/// network partition would; connections opened later pass.
pub struct Proxy {
    pub port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<Link>>>,
}

#[derive(Clone, Default)]
struct Link {
    replies: std::sync::Arc<std::sync::atomic::AtomicBool>,
    requests: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Close the connection (both ways) when the client next sends anything; what it
    /// sent is lost.
    close: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<Link>>> = Default::default();
        let registry = conns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let link = Link::default();
                registry.lock().expect("lock").push(link.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump_or_close(cr, sw, link.requests.clone(), link.close));
                tokio::spawn(pump(sr, cw, link.replies));
            }
        });
        Proxy { port, conns }
    }

    /// The server's answers on every open connection are lost from now on.
    pub fn cut_replies(&self) {
        for link in self.conns.lock().expect("lock").iter() {
            link.replies
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Every connection open now is closed when its client next sends a request (the
    /// request never reaches the server): a connection that died while idle in the
    /// pool, found dead only when used.
    pub fn close_on_next_request(&self) {
        for link in self.conns.lock().expect("lock").iter() {
            link.close.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Every byte on every open connection is lost from now on, both ways.
    pub fn cut_all(&self) {
        for link in self.conns.lock().expect("lock").iter() {
            link.replies
                .store(true, std::sync::atomic::Ordering::SeqCst);
            link.requests
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// [`pump`], and when `close` is set, the next bytes close the connection instead
/// (dropping our side towards the server, which then closes its side towards us).
async fn pump_or_close(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    close: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || close.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        if swallow.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if swallow.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// `url` with its host and port replaced by a proxy on loopback `port`.
pub fn through(url: &str, port: u16) -> String {
    let config: tokio_postgres::Config = url.parse().expect("url");
    let user = config.get_user().expect("user").to_owned();
    let dbname = config.get_dbname().expect("dbname").to_owned();
    format!("postgres://{user}@127.0.0.1:{port}/{dbname}")
}

/// The loopback address of the PostgreSQL server `url` names.
pub fn server_addr(url: &str) -> std::net::SocketAddr {
    let config: tokio_postgres::Config = url.parse().expect("url");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// A near tier of 1 MiB in front of `config` — none when the suite runs on a Redis
/// Cluster (`TABULA_TEST_REDIS=cluster`), which has no near tier: the test's "near"
/// case then runs as one more plain cluster case.
#[allow(dead_code)]
pub fn near(config: tabula::CacheConfig) -> tabula::CacheConfig {
    if std::env::var("TABULA_TEST_REDIS").is_ok_and(|kind| kind == "cluster") {
        return config;
    }
    config.near(1 << 20)
}
