//! Round 10: stale-while-revalidate, tags, and the new cached query shapes — attacked
//! from the public API.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tabula::cache::{CacheConfig, CacheService};
use tabula::{Cursor, Db, DbConfig, Table, cached};

fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "r10f{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(p: &str) -> CacheConfig {
    CacheConfig::default()
        .prefix(p)
        .deadline(Duration::from_secs(2))
}

/// One Redis global cache for this binary's memos.
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let url = tabula::testkit::redis_url().expect("redis");
        let cache = CacheService::redis(&url, config(&format!("r10g{}", std::process::id())))
            .expect("cache");
        assert!(cache.install_global());
    });
}

fn backends() -> Vec<(&'static str, CacheService)> {
    let redis = tabula::testkit::redis_url().expect("redis");
    vec![
        (
            "redis",
            CacheService::redis(&redis, config(&prefix())).expect("redis"),
        ),
        (
            "near",
            CacheService::redis(&redis, common::near(config(&prefix()))).expect("near"),
        ),
        (
            "memory",
            CacheService::in_memory(config(&prefix())).expect("memory"),
        ),
    ]
    .into_iter()
    .filter(|(l, _)| std::env::var("R10_BACKEND").map_or(true, |only| only == *l))
    .collect()
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

async fn db_with(cache: CacheService) -> Db {
    install();
    let (_, url) = common::db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    db.execute_batch(ITEMS).await.expect("schema");
    db
}

async fn sneak(db: &Db, id: i64, grp: i64) {
    db.execute_batch(&format!(
        "INSERT INTO r10_items VALUES ({id}, {grp}, 'sneaked')"
    ))
    .await
    .expect("behind the back");
}

// ------------------------------------------------------------------ tags

/// The versioned key is `kind:<counter values>:suffix` — the tag's *name* is not in
/// it. Two tags whose counters have the same value share an entry: after
/// `invalidate_tag("a")` the query tagged "a" is served what the query tagged "b"
/// computed before that invalidation.
#[tokio::test]
async fn invalidate_tag_serves_a_value_another_tag_cached_before_it() {
    for (label, cache) in backends() {
        let db = db_with(cache).await;
        sneak(&db, 1, 1).await;
        let count = |tag: &'static str| {
            db.query::<Item>()
                .filter(Item::GRP.eq(1))
                .cached(300)
                .tag(tag)
                .count()
        };
        assert_eq!(count("tag-a").await.expect("a"), 1);
        db.invalidate_tag("tag-b").await; // tg:tag-b = 1
        assert_eq!(count("tag-b").await.expect("b"), 1); // fills kind:<v>,1:<suffix>
        sneak(&db, 2, 1).await; // a change only the tag can announce
        db.invalidate_tag("tag-a").await; // tg:tag-a = 1: the same key as tag-b's entry
        assert_eq!(
            count("tag-a").await.expect("a"),
            2,
            "{label}: a value computed before invalidate_tag(\"tag-a\") served after it"
        );
    }
}

/// Odd tags: each drops its own entries and no other.
#[tokio::test]
async fn odd_tags_each_drop_their_own_entries() {
    let long = "t".repeat(10_000);
    let tags: Vec<String> = [
        "",
        ":",
        "{",
        "}",
        "a b",
        "ü🙂",
        "*",
        "?",
        "[a]",
        "v:r10_items",
        "tg:x",
        "x",
        "\n",
        ",",
        "0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([long])
    .collect();
    for (label, cache) in backends() {
        let db = db_with(cache).await;
        let mut expected = 0;
        for (i, tag) in tags.iter().enumerate() {
            // Each tag its own query (grp = i), so entries never share a key.
            let q = || {
                db.query::<Item>()
                    .filter(Item::GRP.eq(i as i64))
                    .cached(300)
                    .tag(tag.clone())
                    .count()
            };
            assert_eq!(q().await.expect("count"), 0);
            sneak(&db, 1000 + i as i64, i as i64).await;
            assert_eq!(q().await.expect("count"), 0, "{label}: {tag:?} cached");
            db.invalidate_tag(&format!("{tag}-not")).await;
            assert_eq!(
                q().await.expect("count"),
                0,
                "{label}: {tag:?}: another tag dropped it"
            );
            db.invalidate_tag(tag).await;
            assert_eq!(q().await.expect("count"), 1, "{label}: {tag:?} not dropped");
            expected += 1;
        }
        assert_eq!(expected, tags.len());
        // A tag spelled like the table's counter does not bump the table.
        let all = || db.query::<Item>().cached(300).count();
        let before = all().await.expect("all");
        sneak(&db, 5000, 99).await;
        db.invalidate_tag("v:r10_items").await;
        db.invalidate_tag("r10_items").await;
        assert_eq!(
            all().await.expect("all"),
            before,
            "{label}: a tag bumped the table"
        );
        // Fifty tags on one entry: the 37th drops it.
        let many: Vec<String> = (0..50).map(|i| format!("many{i}")).collect();
        let tagged = || {
            let mut q = db.query::<Item>().filter(Item::GRP.eq(77)).cached(300);
            for t in &many {
                q = q.tag(t.clone());
            }
            q.count()
        };
        assert_eq!(tagged().await.expect("many"), 0);
        sneak(&db, 6000, 77).await;
        assert_eq!(tagged().await.expect("many"), 0);
        db.invalidate_tag("many37").await;
        assert_eq!(tagged().await.expect("many"), 1, "{label}: 50 tags");
    }
}

/// README: "`db.invalidate_tag("user:7")` (or `cache.invalidate_tag`) drops every entry
/// carrying the tag". The `CacheService` the application built and handed to
/// `DbConfig::cache` does not reach the `Db`'s cached queries.
#[tokio::test]
async fn cache_invalidate_tag_on_the_configured_service_misses_cached_queries() {
    for (label, cache) in backends() {
        let db = db_with(cache.clone()).await;
        let q = || db.query::<Item>().cached(300).tag("t1").count();
        assert_eq!(q().await.expect("count"), 0);
        sneak(&db, 1, 1).await;
        cache.invalidate_tag("t1").await;
        assert_eq!(
            q().await.expect("count"),
            1,
            "{label}: cache.invalidate_tag did nothing"
        );
    }
}

/// Inside a transaction `invalidate_tag` runs at once, not after COMMIT (Tabula's own
/// writes wait for COMMIT): a reader between the two re-caches the old value, which
/// outlives the transaction.
#[tokio::test]
async fn invalidate_tag_inside_a_transaction_runs_before_commit() {
    for (label, cache) in backends() {
        let db = db_with(cache).await;
        let q = |db: Db| async move {
            db.query::<Item>()
                .filter(Item::GRP.eq(3))
                .cached(300)
                .tag("tx-tag")
                .count()
                .await
        };
        assert_eq!(q(db.clone()).await.expect("count"), 0);
        let outside = db.clone();
        db.transaction(|tx| {
            let outside = outside.clone();
            async move {
                tx.execute_batch("INSERT INTO r10_items VALUES (1, 3, 'in tx')")
                    .await?;
                tx.invalidate_tag("tx-tag").await;
                // Another request, meanwhile: sees the pre-COMMIT state and caches it.
                assert_eq!(q(outside).await?, 0);
                Ok(())
            }
        })
        .await
        .expect("tx");
        assert_eq!(
            q(db.clone()).await.expect("count"),
            1,
            "{label}: stale after the transaction that invalidated the tag returned"
        );
    }
}

// ------------------------------------------------------------------ stale-while-revalidate

static SWR_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 1, stale = 30)]
async fn swr_value(key: u32) -> u32 {
    let _ = key;
    SWR_RUNS.fetch_add(1, Ordering::SeqCst) + 1
}

/// The refresh claim (`<key>:refresh`, lasting `stale` seconds) is never released when
/// the refresh stores its value: once the refreshed value expires, nobody may claim,
/// so it is served stale without any refresh for the rest of the window.
#[tokio::test]
async fn a_memo_is_refreshed_only_once_per_stale_window() {
    install();
    assert_eq!(swr_value(1).await, 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(swr_value(1).await, 2, "first expiry: this caller refreshes");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let answers = [swr_value(1).await, swr_value(1).await, swr_value(1).await];
    assert!(
        answers.contains(&3),
        "second expiry: nobody refreshes — value 2 keeps being served stale: {answers:?} (runs: {})",
        SWR_RUNS.load(Ordering::SeqCst)
    );
}

/// The same for a cached query with `.stale()`.
#[tokio::test]
async fn a_cached_query_is_refreshed_only_once_per_stale_window() {
    for (label, cache) in backends() {
        let db = db_with(cache).await;
        let q = || {
            db.query::<Item>()
                .filter(Item::GRP.eq(5))
                .cached(1)
                .stale(30)
                .count()
        };
        assert_eq!(q().await.expect("count"), 0);
        sneak(&db, 1, 5).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(
            q().await.expect("count"),
            1,
            "{label}: first expiry refreshes"
        );
        sneak(&db, 2, 5).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let answers = [
            q().await.expect("count"),
            q().await.expect("count"),
            q().await.expect("count"),
        ];
        assert!(
            answers.contains(&2),
            "{label}: second expiry never refreshed: {answers:?}"
        );
    }
}

static FAIL: AtomicBool = AtomicBool::new(false);
static FALLIBLE_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 1, stale = 20)]
async fn fallible(key: u32) -> Result<u32, String> {
    let _ = key;
    let n = FALLIBLE_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    if FAIL.load(Ordering::SeqCst) {
        Err(format!("run {n} failed"))
    } else {
        Ok(n)
    }
}

/// A refresh that fails: its caller is served the stale value (stale-if-error, still
/// within ttl + stale), and the next caller tries again (the failure was stored
/// nowhere, and the claim was released).
#[tokio::test]
async fn a_failed_refresh_is_retried_and_serves_the_stale_value() {
    install();
    assert_eq!(fallible(1).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    FAIL.store(true, Ordering::SeqCst);
    let refreshing = fallible(1).await;
    assert_eq!(
        refreshing,
        Ok(1),
        "the claimer's refresh failed: the stale value"
    );
    assert_eq!(FALLIBLE_RUNS.load(Ordering::SeqCst), 2, "the refresh ran");
    FAIL.store(false, Ordering::SeqCst);
    let mut later = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        later.push(fallible(1).await);
    }
    assert!(
        later.iter().any(|r| matches!(r, Ok(n) if *n > 2)),
        "no caller retried the failed refresh: {later:?}"
    );
}

static SLOW_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 1, stale = 20)]
async fn slow_refresh(key: u32) -> u32 {
    let _ = key;
    let n = SLOW_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    if n > 1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    n
}

/// The claimer's future is dropped mid-refresh (a request timeout): does anybody
/// refresh afterwards?
#[tokio::test]
async fn a_cancelled_refresh_is_retried() {
    install();
    assert_eq!(slow_refresh(1).await, 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let cancelled = tokio::time::timeout(Duration::from_millis(50), slow_refresh(1)).await;
    assert!(cancelled.is_err(), "the refresh was cut short");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(slow_refresh(1).await);
    }
    assert!(
        later.iter().any(|n| *n > 1),
        "stale value 1 served with nobody refreshing: {later:?}"
    );
}

static TIED_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 1, stale = 60, tables(Item), tags(format!("k:{key}")))]
async fn tied(key: u32) -> u32 {
    let _ = key;
    TIED_RUNS.fetch_add(1, Ordering::SeqCst) + 1
}

/// A stale memo: a write to its table, `_clear`, `_invalidate` and its tag each drop
/// it at once, even while it is in its stale window.
#[tokio::test]
async fn a_stale_memo_is_never_served_after_an_invalidation() {
    install();
    let db = {
        let (_, url) = common::db_and_url().await;
        let db =
            Db::connect_with(DbConfig::new(url).cache(CacheService::global().expect("g").clone()))
                .await
                .expect("db");
        db.execute_batch(ITEMS).await.expect("schema");
        db
    };
    let runs = || TIED_RUNS.load(Ordering::SeqCst);
    let mut last = tied(4).await;
    let invalidations: Vec<(&str, u8)> = vec![
        ("write", 0),
        ("clear", 1),
        ("invalidate", 2),
        ("tag", 3),
        ("db tag", 4),
    ];
    for (what, how) in invalidations {
        tokio::time::sleep(Duration::from_millis(1200)).await; // now stale
        match how {
            0 => {
                db.create(NewItem {
                    id: i64::from(runs()) + 100,
                    grp: 0,
                    label: "w".into(),
                })
                .await
                .expect("write");
            }
            1 => tied_clear().await,
            2 => tied_invalidate(4).await,
            3 => {
                CacheService::global()
                    .expect("g")
                    .invalidate_tag("k:4")
                    .await
            }
            _ => db.invalidate_tag("k:4").await,
        }
        let now = tied(4).await;
        assert!(
            now > last,
            "{what}: a stale value {now} served after the invalidation"
        );
        last = now;
    }
}

/// A huge stale window or TTL: no panic, and the value is still cached.
#[tokio::test]
async fn huge_ttl_and_stale_windows() {
    for (label, cache) in backends() {
        let db = db_with(cache).await;
        for (ttl, stale) in [
            (1, u64::MAX),
            (u64::MAX, 1),
            (u64::MAX, u64::MAX),
            (3_153_600_000, 1),
        ] {
            let q = || {
                db.query::<Item>()
                    .filter(Item::GRP.eq(8))
                    .cached(ttl)
                    .stale(stale)
                    .count()
            };
            let first = q().await;
            assert!(first.is_ok(), "{label}: ttl {ttl} stale {stale}: {first:?}");
            let plain = db
                .query::<Item>()
                .filter(Item::GRP.eq(8))
                .cached(ttl)
                .count()
                .await;
            assert!(plain.is_ok(), "{label}: ttl {ttl}: {plain:?}");
        }
    }
}

// ------------------------------------------------------------------ cached shapes

/// Every cached shape against the uncached oracle, across writes, with limit and
/// offset; cursors move between cached and uncached pages; a forged cursor.
#[tokio::test]
async fn cached_shapes_match_the_uncached_oracle() {
    for (label, cache) in backends() {
        let db = db_with(cache).await;
        for i in 0..7 {
            db.create(NewItem {
                id: i,
                grp: i % 3,
                label: format!("l{i}"),
            })
            .await
            .expect("create");
        }
        for step in 0..3 {
            for (limit, offset) in [
                (None, None),
                (Some(2), None),
                (None, Some(3)),
                (Some(2), Some(5)),
                (Some(0), None),
            ] {
                let base = || {
                    let mut q = db
                        .query::<Item>()
                        .filter(Item::GRP.ne(9))
                        .order_by(Item::ID.asc());
                    if let Some(l) = limit {
                        q = q.limit(l);
                    }
                    if let Some(o) = offset {
                        q = q.offset(o);
                    }
                    q
                };
                let ctx = format!("{label} step {step} limit {limit:?} offset {offset:?}");
                assert_eq!(
                    base().cached(60).count().await.expect("c"),
                    base().count().await.expect("u"),
                    "{ctx}: count"
                );
                assert_eq!(
                    base().cached(60).exists().await.expect("c"),
                    base().exists().await.expect("u"),
                    "{ctx}: exists"
                );
                assert_eq!(
                    base().cached(60).first().await.expect("c"),
                    base().first().await.expect("u"),
                    "{ctx}: first"
                );
                let (c, u) = (base().cached(60).one().await, base().one().await);
                assert_eq!(format!("{c:?}"), format!("{u:?}"), "{ctx}: one");
                assert_eq!(
                    base().cached(60).all().await.expect("c"),
                    base().all().await.expect("u"),
                    "{ctx}: all"
                );
            }
            // Pages: cached page 1, its cursor on an uncached query and vice versa.
            let pq = || db.query::<Item>().order_by(Item::LABEL.desc());
            let c1 = pq().cached(60).page(3, None).await.expect("cached page 1");
            let u1 = pq().page(3, None).await.expect("page 1");
            assert_eq!(c1, u1, "{label} step {step}: page 1");
            let cur = c1.next.clone().expect("more");
            let u2 = pq()
                .page(3, Some(&cur))
                .await
                .expect("uncached page 2 from cached cursor");
            let c2 = pq()
                .cached(60)
                .page(3, u1.next.as_ref())
                .await
                .expect("cached page 2");
            assert_eq!(u2, c2, "{label} step {step}: page 2");
            // A cursor of another order, and garbage, on a cached page.
            let other = db
                .query::<Item>()
                .order_by(Item::ID.asc())
                .page(2, None)
                .await
                .expect("p");
            let wrong = pq().cached(60).page(3, other.next.as_ref()).await;
            assert!(
                matches!(wrong, Err(tabula::Error::Validation(_))),
                "{label}: {wrong:?}"
            );
            for junk in [
                "",
                "x",
                "7b7d",
                "eyJvIjoiIiwidiI6W119",
                &"A".repeat(100_000),
            ] {
                let r = pq().cached(60).page(3, Some(&Cursor::new(junk))).await;
                assert!(
                    matches!(r, Err(tabula::Error::Validation(_))),
                    "{label}: {junk:.20}: {r:?}"
                );
            }
            // A write: every shape must follow.
            match step {
                0 => {
                    db.delete::<Item>(0).await.expect("delete");
                }
                _ => {
                    db.create(NewItem {
                        id: 100 + step,
                        grp: 1,
                        label: "zz".into(),
                    })
                    .await
                    .expect("c");
                }
            }
        }
    }
}

/// `.one()` NotFound / Validation through the cache follow writes.
#[tokio::test]
async fn one_not_found_and_too_many_follow_writes() {
    for (label, cache) in backends() {
        let db = db_with(cache).await;
        let one = || db.query::<Item>().filter(Item::GRP.eq(4)).cached(300).one();
        assert!(
            matches!(one().await, Err(tabula::Error::NotFound { .. })),
            "{label}"
        );
        db.create(NewItem {
            id: 1,
            grp: 4,
            label: "a".into(),
        })
        .await
        .expect("c");
        assert_eq!(one().await.expect("one").id, 1, "{label}");
        db.create(NewItem {
            id: 2,
            grp: 4,
            label: "b".into(),
        })
        .await
        .expect("c");
        assert!(
            matches!(one().await, Err(tabula::Error::Validation(_))),
            "{label}"
        );
        db.delete::<Item>(1).await.expect("d");
        assert_eq!(one().await.expect("one").id, 2, "{label}");
    }
}

/// Under a user scope, cached queries must bypass the shared cache both ways (RLS on
/// `profiles`), whatever the shape, stale window or tag.
#[tokio::test]
async fn scoped_cached_shapes_bypass_the_cache() {
    for (label, cache) in backends() {
        let db = db_with(cache).await;
        let me = uuid::Uuid::new_v4();
        for (i, owner) in [me, uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
            .iter()
            .enumerate()
        {
            db.create(common::NewProfile {
                user_id: *owner,
                username: format!("u{i}"),
                avatar_url: None,
            })
            .await
            .expect("create");
        }
        let q = |d: &Db| {
            d.query::<common::Profile>()
                .order_by(common::Profile::USERNAME.asc())
        };
        // Unscoped first: fills the cache with everybody's rows.
        assert_eq!(q(&db).cached(300).count().await.expect("c"), 3);
        assert_eq!(
            q(&db)
                .cached(300)
                .stale(30)
                .tag("p")
                .count()
                .await
                .expect("c"),
            3
        );
        assert!(q(&db).cached(300).exists().await.expect("e"));
        assert_eq!(
            q(&db)
                .cached(300)
                .page(10, None)
                .await
                .expect("p")
                .items
                .len(),
            3
        );
        let scoped = db.as_user(me);
        assert_eq!(
            q(&scoped).cached(300).count().await.expect("c"),
            1,
            "{label}: count"
        );
        assert_eq!(
            q(&scoped)
                .cached(300)
                .stale(30)
                .tag("p")
                .count()
                .await
                .expect("c"),
            1,
            "{label}: stale+tag"
        );
        assert_eq!(
            q(&scoped)
                .cached(300)
                .page(10, None)
                .await
                .expect("p")
                .items
                .len(),
            1,
            "{label}"
        );
        assert_eq!(
            q(&scoped)
                .cached(300)
                .first()
                .await
                .expect("f")
                .map(|p| p.user_id),
            Some(me),
            "{label}: first"
        );
        // And the scoped answers did not land in the shared cache.
        assert_eq!(q(&db).cached(300).count().await.expect("c"), 3, "{label}");
        assert_eq!(
            q(&db)
                .cached(300)
                .first()
                .await
                .expect("f")
                .map(|p| p.username),
            Some("u0".into())
        );
    }
}

// ------------------------------------------------------------------ Send

fn assert_send<T: Send>(t: T) -> T {
    t
}

/// Every new public future is Send: spawned on a multi-thread runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_futures_are_send() {
    install();
    let (_, cache) = backends().remove(0);
    let db = db_with(cache.clone()).await;
    let mut tasks = Vec::new();
    let d = db.clone();
    tasks.push(tokio::spawn(assert_send(async move {
        d.invalidate_tag("s").await;
    })));
    let c = cache.clone();
    tasks.push(tokio::spawn(assert_send(async move {
        c.invalidate_tag("s").await;
    })));
    let d = db.clone();
    tasks.push(tokio::spawn(assert_send(async move {
        let q = || d.query::<Item>().cached(5).stale(5).tag("s");
        q().all().await.expect("all");
        q().first().await.expect("first");
        let _ = q().one().await;
        q().count().await.expect("count");
        q().exists().await.expect("exists");
        q().page(2, None).await.expect("page");
    })));
    let d = db.clone();
    tasks.push(tokio::spawn(assert_send(async move {
        d.find_unique(Item::LABEL, "x".to_owned())
            .await
            .expect("find");
        d.read_many::<Item>(&[1, 2]).await.expect("many");
    })));
    tasks.push(tokio::spawn(assert_send(async move {
        tied(1).await;
        tied_invalidate(1).await;
        tied_clear().await;
        let _ = fallible(9).await;
    })));
    for t in tasks {
        t.await.expect("task");
    }
}
