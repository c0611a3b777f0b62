//! Round 10, more: the staleness bound across TTLs, tags across handles, single refresh
//! across two services, `_invalidate` against an in-flight computation.

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tabula::cache::{CacheConfig, CacheService};
use tabula::{Db, DbConfig, Table, cached};

fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "r10m{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(p: &str) -> CacheConfig {
    CacheConfig::default()
        .prefix(p)
        .deadline(Duration::from_secs(2))
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r10_items")]
struct Item {
    #[table(primary_key)]
    id: i64,
    grp: i64,
    label: String,
}

const ITEMS: &str =
    "CREATE TABLE r10_items (id int8 PRIMARY KEY, grp int8 NOT NULL, label text NOT NULL)";

async fn sneak(db: &Db, id: i64, grp: i64) {
    db.execute_batch(&format!(
        "INSERT INTO r10_items VALUES ({id}, {grp}, 'sneaked')"
    ))
    .await
    .expect("behind the back");
}

async fn two_handles(a: CacheService, b: CacheService) -> (Db, Db) {
    let (_, url) = common::db_and_url().await;
    let first = Db::connect_with(DbConfig::new(url.clone()).cache(a))
        .await
        .expect("first");
    let second = Db::connect_with(DbConfig::new(url).cache(b))
        .await
        .expect("second");
    first.execute_batch(ITEMS).await.expect("schema");
    (first, second)
}

fn redis() -> String {
    tabula::testkit::redis_url().expect("redis")
}

/// The TTL is not part of a cached query's key, and the freshness stamp is the
/// *filler's* TTL: a `.cached(1).stale(1)` caller — promised a value at most 2 s old —
/// is served for minutes what a `.cached(300).stale(60)` caller stored.
#[tokio::test]
async fn a_short_window_is_served_a_long_windows_entry() {
    let (db, _) = two_handles(
        CacheService::redis(&redis(), config(&prefix())).expect("redis"),
        CacheService::in_memory(config(&prefix())).expect("memory"),
    )
    .await;
    let q = |ttl: u64, stale: u64| {
        db.query::<Item>()
            .filter(Item::GRP.eq(1))
            .cached(ttl)
            .stale(stale)
            .count()
    };
    assert_eq!(q(300, 60).await.expect("long"), 0);
    sneak(&db, 1, 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (a, b) = (q(1, 1).await.expect("short"), q(1, 1).await.expect("short"));
    assert_eq!(
        (a, b),
        (1, 1),
        "a value 2.5 s old served to callers whose bound is ttl + stale = 2 s"
    );
}

/// The same without a stale window: `.cached(1)` is served what `.cached(300)` stored.
#[tokio::test]
async fn a_short_ttl_is_served_a_long_ttls_entry() {
    let (db, _) = two_handles(
        CacheService::redis(&redis(), config(&prefix())).expect("redis"),
        CacheService::in_memory(config(&prefix())).expect("memory"),
    )
    .await;
    assert_eq!(
        db.query::<Item>()
            .filter(Item::GRP.eq(2))
            .cached(300)
            .count()
            .await
            .expect("c"),
        0
    );
    sneak(&db, 2, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        db.query::<Item>()
            .filter(Item::GRP.eq(2))
            .cached(1)
            .count()
            .await
            .expect("c"),
        1,
        "`.cached(1)` served a 1.5 s old value stored by `.cached(300)`"
    );
}

/// Two handles on one database with different caches (another prefix): a write
/// through one invalidates the other's entries (README), but `invalidate_tag` through
/// one does not reach the other's tagged cached queries.
#[tokio::test]
async fn invalidate_tag_does_not_reach_another_cache_of_the_same_database() {
    let (first, second) = two_handles(
        CacheService::redis(&redis(), config(&prefix())).expect("redis"),
        CacheService::redis(&redis(), config(&prefix())).expect("redis"),
    )
    .await;
    let q = || first.query::<Item>().cached(300).tag("shared").count();
    assert_eq!(q().await.expect("c"), 0);
    sneak(&first, 1, 1).await;
    // The write path reaches the other cache:
    second.invalidate::<Item>(&[1]).await;
    assert_eq!(
        q().await.expect("c"),
        1,
        "invalidate through the other handle"
    );
    sneak(&first, 2, 1).await;
    second.invalidate_tag("shared").await;
    assert_eq!(
        q().await.expect("c"),
        2,
        "invalidate_tag through the other handle did nothing"
    );
}

/// Two services with one prefix (two processes): an expired entry read by sixteen
/// callers on each side is refreshed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_refresh_across_two_services() {
    let p = prefix();
    let (first, second) = two_handles(
        CacheService::redis(&redis(), config(&p)).expect("redis"),
        CacheService::redis(&redis(), config(&p)).expect("redis"),
    )
    .await;
    let q = |db: Db| async move {
        db.query::<Item>()
            .filter(Item::GRP.eq(1))
            .cached(1)
            .stale(30)
            .count()
            .await
            .expect("c")
    };
    assert_eq!(q(first.clone()).await, 0);
    assert_eq!(q(second.clone()).await, 0, "shared entry");
    sneak(&first, 1, 1).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let db = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(q(db)));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    // Callers that read the stale entry get 0 at once; the one refreshing gets 1, and
    // so does a caller whose claim came after the refresh ended (it finds the fresh
    // entry and refreshes nothing). Exactly-one refresh is counted by `fresh.rs`'s
    // memo test, which counts the body's runs.
    assert!(answers.iter().all(|a| *a <= 1), "{answers:?}");
    assert!(answers.contains(&1), "the refresh happened: {answers:?}");
    assert!(
        answers.contains(&0),
        "stale values were served: {answers:?}"
    );
    assert_eq!(q(first.clone()).await, 1);
    assert_eq!(q(second.clone()).await, 1);
}

fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cache = CacheService::redis(&redis(), config(&format!("r10mg{}", std::process::id())))
            .expect("cache");
        assert!(cache.install_global());
    });
}

static SOURCE: AtomicU32 = AtomicU32::new(1);

/// Reads the "database" (a static) at the start, then takes its time.
#[cached(ttl = 300)]
async fn slow_read(key: u32) -> u32 {
    let _ = key;
    let seen = SOURCE.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen
}

/// `<fn>_invalidate` deletes the entry but bumps nothing: a computation that read the
/// data before the change and finishes after the invalidation stores its old value,
/// served from then on (a tag or `_clear` would have orphaned that fill).
#[tokio::test]
async fn invalidate_races_an_inflight_computation() {
    install();
    let early = tokio::spawn(slow_read(1));
    tokio::time::sleep(Duration::from_millis(100)).await; // it has read SOURCE = 1
    SOURCE.store(2, Ordering::SeqCst);
    slow_read_invalidate(1).await; // the change is announced
    assert_eq!(early.await.expect("task"), 1);
    assert_eq!(
        slow_read(1).await,
        2,
        "the value from before _invalidate, served after it"
    );
}
