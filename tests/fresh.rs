//! Opt-in staleness and tags for memos and cached queries: a tag drops every entry
//! carrying it; an expired entry with a stale window is served while exactly one
//! caller refreshes it — never after a write to a table it depends on.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table, cached};
use uuid::Uuid;

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles")]
struct Profile {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    username: String,
    avatar_url: Option<String>,
}

/// One Redis-backed global cache for this test binary.
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let url = tabula::testkit::redis_url().expect("redis");
        let cache = CacheService::redis(
            &url,
            CacheConfig::default()
                .prefix(format!("fresh{}", std::process::id()))
                .deadline(Duration::from_secs(2)),
        )
        .expect("cache");
        assert!(cache.install_global());
    });
}

async fn db() -> Db {
    install();
    let (_, url) = common::db_and_url().await;
    let cache = CacheService::global().expect("global").clone();
    Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db")
}

static TAGGED_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 300, tags(format!("user:{user}"), "greetings"))]
async fn greeting(user: u32, lang: String) -> String {
    TAGGED_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{lang}:{user}")
}

#[tokio::test]
async fn a_tag_drops_every_memo_carrying_it_and_no_other() {
    install();
    let db = db().await;
    let runs = || TAGGED_RUNS.load(Ordering::SeqCst);
    for (user, lang) in [(1, "en"), (1, "fr"), (2, "en")] {
        greeting(user, lang.into()).await;
    }
    assert_eq!(runs(), 3);
    for (user, lang) in [(1, "en"), (1, "fr"), (2, "en")] {
        greeting(user, lang.into()).await;
    }
    assert_eq!(runs(), 3, "all cached");
    db.invalidate_tag("user:1").await;
    for (user, lang) in [(1, "en"), (1, "fr"), (2, "en")] {
        greeting(user, lang.into()).await;
    }
    assert_eq!(
        runs(),
        5,
        "both of user 1's entries ran again, user 2's did not"
    );
    // A tag every entry carries; invalidating it through the cache itself.
    CacheService::global()
        .expect("global")
        .invalidate_tag("greetings")
        .await;
    greeting(2, "en".into()).await;
    assert_eq!(runs(), 6);
    // The companion drops one entry: it computes the same tags from the arguments.
    greeting_invalidate(2, "en".into()).await;
    greeting(2, "en".into()).await;
    assert_eq!(runs(), 7);
}

#[tokio::test]
async fn a_tag_drops_cached_queries_carrying_it() {
    let db = db().await;
    let made = db
        .create(NewProfile {
            user_id: Uuid::new_v4(),
            username: "tagged".into(),
            avatar_url: None,
        })
        .await
        .expect("create");
    let read = || {
        db.query::<Profile>()
            .filter(Profile::ID.eq(made.id))
            .select(Profile::AVATAR_URL)
            .cached(300)
            .tag(format!("profile:{}", made.id))
            .first()
    };
    assert_eq!(read().await.expect("read"), Some(None));
    db.execute_batch(&format!(
        "UPDATE profiles SET avatar_url = 'poked' WHERE id = '{}'",
        made.id
    ))
    .await
    .expect("behind the back");
    assert_eq!(read().await.expect("read"), Some(None), "cached");
    db.invalidate_tag("another tag").await;
    assert_eq!(
        read().await.expect("read"),
        Some(None),
        "another tag: still cached"
    );
    db.invalidate_tag(&format!("profile:{}", made.id)).await;
    assert_eq!(read().await.expect("read"), Some(Some("poked".into())));
}

static STALE_RUNS: AtomicU32 = AtomicU32::new(0);

/// Returns which run produced it, so a stale value can be told from a fresh one.
#[cached(ttl = 1, stale = 30, tables(Profile))]
async fn run_number(key: u32) -> u32 {
    let _ = key;
    tokio::time::sleep(Duration::from_millis(100)).await;
    STALE_RUNS.fetch_add(1, Ordering::SeqCst) + 1
}

#[tokio::test]
async fn an_expired_entry_is_served_stale_while_exactly_one_caller_refreshes() {
    let db = db().await;
    let runs = || STALE_RUNS.load(Ordering::SeqCst);
    assert_eq!(run_number(7).await, 1);
    assert_eq!(run_number(7).await, 1, "fresh hit");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Expired: sixteen concurrent callers; one recomputes, the others get the stale
    // value at once.
    let answers = futures_util::future::join_all((0..16).map(|_| run_number(7))).await;
    assert_eq!(runs(), 2, "exactly one refresh: {answers:?}");
    assert_eq!(
        answers.iter().filter(|a| **a == 2).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| **a == 1).count(),
        15,
        "{answers:?}"
    );
    assert_eq!(run_number(7).await, 2, "the refreshed value, fresh");

    // A write to a table the memo depends on drops it at once: nothing stale after.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    db.create(NewProfile {
        user_id: Uuid::new_v4(),
        username: "writer".into(),
        avatar_url: None,
    })
    .await
    .expect("write");
    assert_eq!(run_number(7).await, 3, "no stale value after a write");
    assert_eq!(runs(), 3);
}

/// A tag dropped inside a transaction waits for COMMIT: a transaction whose body
/// panics (or fails) drops nothing, one that commits drops the tagged entries.
#[tokio::test]
async fn a_tag_dropped_in_a_transaction_that_panics_is_not_dropped() {
    let db = db().await;
    let made = db
        .create(NewProfile {
            user_id: Uuid::new_v4(),
            username: "tx-tagged".into(),
            avatar_url: None,
        })
        .await
        .expect("create");
    let tag = format!("tx:{}", made.id);
    let read = || {
        db.query::<Profile>()
            .filter(Profile::ID.eq(made.id))
            .select(Profile::AVATAR_URL)
            .cached(300)
            .tag(tag.clone())
            .first()
    };
    assert_eq!(read().await.expect("fill"), Some(None));
    db.execute_batch(&format!(
        "UPDATE profiles SET avatar_url = 'poked' WHERE id = '{}'",
        made.id
    ))
    .await
    .expect("behind the back");
    // A body that panics after asking for the tag to go, on a task of its own.
    let (inner, panicking_tag) = (db.clone(), tag.clone());
    let joined = tokio::spawn(async move {
        inner
            .transaction(|tx| {
                let tag = panicking_tag.clone();
                async move {
                    tx.invalidate_tag(&tag).await;
                    if tag.starts_with("tx:") {
                        panic!("the body panics mid-transaction");
                    }
                    Ok(())
                }
            })
            .await
    })
    .await;
    assert!(joined.is_err(), "the task panicked");
    assert_eq!(
        read().await.expect("read"),
        Some(None),
        "nothing committed: still cached"
    );
    // A body that fails.
    let failed: tabula::Result<()> = db
        .transaction(|tx| {
            let tag = tag.clone();
            async move {
                tx.invalidate_tag(&tag).await;
                Err(tabula::Error::Validation("no".into()))
            }
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        read().await.expect("read"),
        Some(None),
        "rolled back: still cached"
    );
    // The handle still works, and a committed one drops the entry.
    db.transaction(|tx| {
        let tag = tag.clone();
        async move {
            tx.invalidate_tag(&tag).await;
            Ok(())
        }
    })
    .await
    .expect("commit");
    assert_eq!(read().await.expect("read"), Some(Some("poked".into())));
}
