//! Shared by the attack suites on cache keys, sessions and views (`tests/attack_queries*.rs`,
//! `attack_tenants*.rs`, `attack_sessions.rs`, `attack_views*.rs`): names no other test
//! uses, a Redis cache with a short deadline, and a raw connection of the test's own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tabula::{CacheConfig, CacheService};

/// A name no other test (or test process) uses, fit for an unquoted SQL identifier
/// and a cache prefix: `tag`, the process id and a counter, joined by `x`.
pub fn ident(tag: &str) -> String {
    let (process, n) = next();
    format!("{tag}x{process}x{n}")
}

/// A name no other test (or test process) uses, for values and session names:
/// `t-tag-pid-n`.
pub fn uniq(tag: &str) -> String {
    let (process, n) = next();
    format!("t-{tag}-{process}-{n}")
}

/// This process's id and a number it has not given before.
fn next() -> (u32, u64) {
    static N: AtomicU64 = AtomicU64::new(0);
    (std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The test kit's Redis under `prefix`, with a 2 s deadline (a busy CI machine).
pub fn redis(prefix: &str) -> CacheService {
    CacheService::redis(
        &tabula::testkit::redis_url().expect("redis"),
        CacheConfig::default()
            .prefix(prefix)
            .deadline(Duration::from_secs(2)),
    )
    .expect("cache")
}

/// A connection of the test's own, beside Tabula's pool.
pub async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connect");
    tokio::spawn(conn);
    client
}
