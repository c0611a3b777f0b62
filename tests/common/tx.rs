//! Shared by the transaction attack suites (`tests/attack_tx*.rs` and their kin): unique
//! names, a raw connection of the test's own, counts and lock probes read beside
//! Tabula, and the seed's profiles with a row cache.

use std::sync::Arc;
use std::time::Duration;

use super::fixtures::{raw, uniq};

/// Profiles named `name`, counted on a connection of the test's own.
pub async fn count_named(url: &str, name: &str) -> i64 {
    let c = raw(url).await;
    c.query_one(
        "SELECT count(*) FROM profiles WHERE username = $1",
        &[&name],
    )
    .await
    .expect("count")
    .get(0)
}

/// Whether another session can lock row `id` of profiles within `patience`.
pub async fn row_is_free(url: &str, id: uuid::Uuid, patience: Duration) -> Result<(), String> {
    let other = raw(url).await;
    other
        .batch_execute(&format!("SET lock_timeout = '{}ms'", patience.as_millis()))
        .await
        .expect("set");
    other.batch_execute("BEGIN").await.expect("begin");
    let r = other
        .query("SELECT 1 FROM profiles WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"));
    let _ = other.batch_execute("ROLLBACK").await;
    r
}

/// The seed's profiles with a row cache.
#[derive(tabula::Table, Debug, Clone, PartialEq)]
#[table(name = "profiles", cache(ttl = 300))]
pub struct CProfile {
    #[table(primary_key, generated)]
    pub id: uuid::Uuid,
    pub user_id: uuid::Uuid,
    pub username: String,
    pub avatar_url: Option<String>,
    #[table(generated)]
    pub status: String,
    #[table(generated)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[table(generated)]
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub fn cache_for_test() -> tabula::CacheService {
    let redis = tabula::testkit::redis_url().expect("redis");
    tabula::CacheService::redis(
        &redis,
        tabula::CacheConfig::default().prefix(uniq("c").replace('-', "x")),
    )
    .expect("cache")
}

pub async fn avatar_in_db(url: &str, id: uuid::Uuid) -> Option<String> {
    raw(url)
        .await
        .query_one("SELECT avatar_url FROM profiles WHERE id = $1", &[&id])
        .await
        .expect("row")
        .get(0)
}

pub fn patch(avatar: &str) -> CProfilePatch {
    CProfilePatch::default().avatar_url(Some(avatar.to_owned()))
}

pub type Slot<T> = Arc<std::sync::Mutex<Option<T>>>;

pub fn slot<T>(v: T) -> Slot<T> {
    Arc::new(std::sync::Mutex::new(Some(v)))
}

pub fn take<T>(s: &Slot<T>) -> T {
    s.lock().expect("lock").take().expect("taken once")
}

/// Waits until some session of this database waits on a lock (a write blocked behind
/// a row lock the test holds); fails after 8 s.
pub async fn until_lock_wait(url: &str) {
    let probe = raw(url).await;
    let start = std::time::Instant::now();
    loop {
        let n: i64 = probe
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND datname = current_database()",
                &[],
            )
            .await
            .expect("probe")
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "the write never blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
