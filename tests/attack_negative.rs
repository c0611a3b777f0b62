//! Round 10: negative entries (cached absences) and the write paths that must drop
//! them — attacked from the public API, on Redis, Redis + near tier and in-process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rust_decimal::Decimal;
use tabula::cache::{CacheConfig, CacheService};
use tabula::{Db, DbConfig, Table};

fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "r10n{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// (label, first cache, second cache): Redis twice with one prefix (as two processes
/// would be), the same with a near tier, and one in-process cache shared.
fn pairs() -> Vec<(&'static str, CacheService, CacheService)> {
    let redis = tabula::testkit::redis_url().expect("redis");
    let config = |p: &str| {
        CacheConfig::default()
            .prefix(p)
            .deadline(Duration::from_secs(2))
    };
    let (plain, near) = (prefix(), prefix());
    let memory = CacheService::in_memory(config(&prefix())).expect("memory");
    vec![
        (
            "redis",
            CacheService::redis(&redis, config(&plain)).expect("redis"),
            CacheService::redis(&redis, config(&plain)).expect("redis"),
        ),
        (
            "near",
            CacheService::redis(&redis, common::near(config(&near))).expect("near"),
            CacheService::redis(&redis, common::near(config(&near))).expect("near"),
        ),
        ("memory", memory.clone(), memory),
    ]
    .into_iter()
    .filter(|(l, _, _)| std::env::var("R10_BACKEND").map_or(true, |only| only == *l))
    .collect()
}

async fn handles(a: CacheService, b: CacheService, schema: &str) -> (Db, Db) {
    let (_, url) = common::db_and_url().await;
    let first = Db::connect_with(DbConfig::new(url.clone()).cache(a))
        .await
        .expect("first");
    let second = Db::connect_with(DbConfig::new(url).cache(b))
        .await
        .expect("second");
    first.execute_batch(schema).await.expect("schema");
    (first, second)
}

// ------------------------------------------------------------------ models

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r10_acct", cache(ttl = 300))]
struct Acct {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    email: String,
    name: String,
}

const ACCT: &str =
    "CREATE TABLE r10_acct (id int8 PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL)";

fn acct(id: i64, email: &str, name: &str) -> NewAcct {
    NewAcct {
        id,
        email: email.into(),
        name: name.into(),
    }
}

/// citext key and citext unique column.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r10_ci", cache(ttl = 300))]
struct Ci {
    #[table(primary_key)]
    code: String,
    #[table(unique)]
    email: String,
}

const CI: &str = "CREATE EXTENSION IF NOT EXISTS citext;
     CREATE TABLE r10_ci (code citext PRIMARY KEY, email citext NOT NULL UNIQUE)";

/// A numeric unique column: 1.0 and 1.00 are the same value to PostgreSQL.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r10_price", cache(ttl = 300))]
struct Price {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    amount: Decimal,
}

const PRICE: &str = "CREATE TABLE r10_price (id int8 PRIMARY KEY, amount numeric NOT NULL UNIQUE)";

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r10_soft", cache(ttl = 300))]
struct Soft {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    email: String,
    #[table(soft_delete)]
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

const SOFT: &str = "CREATE TABLE r10_soft (id int8 PRIMARY KEY, email text NOT NULL UNIQUE, deleted_at timestamptz)";

// ------------------------------------------------------------------ defects

/// An upsert whose conflict column is a unique column (not the key) updates the row
/// that collided, keeping its primary key (it moved the key once, leaving the old
/// key's entry behind): the row under key 1 is the new one, key 2 stays absent.
#[tokio::test]
async fn upsert_on_a_unique_column_keeps_the_key_and_its_entry_follows() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, ACCT).await;
        first.create(acct(1, "a@x", "one")).await.expect("create");
        assert!(
            first.read::<Acct>(1).await.expect("read").is_some(),
            "{label}: cached"
        );
        assert_eq!(
            first.read::<Acct>(2).await.expect("read"),
            None,
            "{label}: absent"
        );
        let landed = second
            .upsert(acct(2, "a@x", "two"), Acct::EMAIL)
            .await
            .expect("upsert");
        assert_eq!(landed.id, 1, "{label}: the row keeps its key");
        assert_eq!(
            first.read::<Acct>(1).await.expect("read").map(|a| a.name),
            Some("two".into()),
            "{label}: the cached row follows the upsert"
        );
        assert_eq!(
            first.read::<Acct>(2).await.expect("read"),
            None,
            "{label}: still absent"
        );
    }
}

/// `read_many` with two spellings of one citext key: the row answers the first, and
/// the second — which the database *also* matches — is cached as absent. `read` by
/// that spelling then says None while `read_uncached` finds the row.
#[tokio::test]
async fn read_many_with_two_spellings_of_a_citext_key_caches_a_false_absence() {
    for (label, a, b) in pairs() {
        let (first, _second) = handles(a, b, CI).await;
        first
            .create(NewCi {
                code: "abc".into(),
                email: "e@x".into(),
            })
            .await
            .expect("create");
        let _ = first
            .read_many::<Ci>(&["abc".to_owned(), "ABC".to_owned()])
            .await
            .expect("many");
        assert!(
            first
                .read_uncached::<Ci>("ABC".to_owned())
                .await
                .expect("db")
                .is_some(),
            "{label}: citext matches"
        );
        assert!(
            first
                .read::<Ci>("ABC".to_owned())
                .await
                .expect("read")
                .is_some(),
            "{label}: read(\"ABC\") answers None from a negative entry read_many cached, \
             while PostgreSQL has the row"
        );
    }
}

/// A citext primary key read by another spelling: no row yet, so the absence is cached
/// under that spelling; the create drops only the row's own spelling.
#[tokio::test]
async fn a_citext_key_absence_survives_a_create_with_another_spelling() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, CI).await;
        assert_eq!(
            first.read::<Ci>("XYZ".to_owned()).await.expect("read"),
            None
        );
        second
            .create(NewCi {
                code: "xyz".into(),
                email: "x@x".into(),
            })
            .await
            .expect("create");
        assert!(
            first
                .read_uncached::<Ci>("XYZ".to_owned())
                .await
                .expect("db")
                .is_some()
        );
        assert!(
            first
                .read::<Ci>("XYZ".to_owned())
                .await
                .expect("read")
                .is_some(),
            "{label}: stale absence for another spelling of a citext key after the create returned"
        );
    }
}

/// The same through a unique finder on a citext column.
#[tokio::test]
async fn a_citext_unique_finder_absence_survives_a_create_with_another_spelling() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, CI).await;
        assert_eq!(Ci::by_email(&first, "Ann@X").await.expect("by_email"), None);
        second
            .create(NewCi {
                code: "k1".into(),
                email: "ann@x".into(),
            })
            .await
            .expect("create");
        let oracle = first
            .query::<Ci>()
            .filter(Ci::EMAIL.eq("Ann@X".to_owned()))
            .first()
            .await
            .expect("query");
        assert!(oracle.is_some(), "{label}: PostgreSQL matches citext");
        assert_eq!(
            Ci::by_email(&first, "Ann@X").await.expect("by_email"),
            oracle,
            "{label}: the finder's cached absence outlives the create"
        );
    }
}

/// numeric: `by_amount(1.0)` caches an absence under `"1.0"`; creating the row with
/// `1.00` (the same number to PostgreSQL) drops `"1.00"` only.
#[tokio::test]
async fn a_decimal_unique_finder_absence_survives_a_create_with_another_scale() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, PRICE).await;
        let one_point_zero = Decimal::new(10, 1);
        let one_point_zero_zero = Decimal::new(100, 2);
        assert_eq!(
            Price::by_amount(&first, one_point_zero)
                .await
                .expect("find"),
            None
        );
        second
            .create(NewPrice {
                id: 1,
                amount: one_point_zero_zero,
            })
            .await
            .expect("create");
        let oracle = first
            .query::<Price>()
            .filter(Price::AMOUNT.eq(one_point_zero))
            .first()
            .await
            .expect("query");
        assert!(oracle.is_some(), "{label}: numeric equality ignores scale");
        assert_eq!(
            Price::by_amount(&first, one_point_zero)
                .await
                .expect("find")
                .map(|p| p.id),
            Some(1),
            "{label}: stale absence after the create returned"
        );
    }
}

/// Raw SQL insert, then what the docs say to do — `db.invalidate::<M>(&[key])`: the
/// row's key is dropped, but the unique finder's cached absence is not.
#[tokio::test]
async fn invalidate_after_a_raw_insert_leaves_the_finder_absence() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, ACCT).await;
        assert_eq!(Acct::by_email(&first, "raw@x").await.expect("find"), None);
        assert_eq!(first.read::<Acct>(5).await.expect("read"), None);
        let made: Vec<Acct> = second
            .sql::<Acct>(
                "INSERT INTO r10_acct (id, email, name) VALUES (5, 'raw@x', 'raw') RETURNING *",
                &[],
            )
            .await
            .expect("raw insert");
        second.invalidate::<Acct>(&[made[0].id]).await;
        assert!(
            first.read::<Acct>(5).await.expect("read").is_some(),
            "{label}: key dropped"
        );
        assert_eq!(
            Acct::by_email(&first, "raw@x")
                .await
                .expect("find")
                .map(|a| a.id),
            Some(5),
            "{label}: invalidate(&[key]) left the finder's negative entry"
        );
    }
}

/// `Db::find_unique` is public and takes any column: on a column not marked unique, an
/// absence is cached that no write ever drops (cache_names covers unique columns only).
#[tokio::test]
async fn find_unique_on_an_unmarked_column_caches_an_absence_forever() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, ACCT).await;
        assert_eq!(
            first
                .find_unique(Acct::NAME, "bob".to_owned())
                .await
                .expect("find"),
            None
        );
        second
            .create(acct(9, "bob@x", "bob"))
            .await
            .expect("create");
        assert_eq!(
            first
                .find_unique(Acct::NAME, "bob".to_owned())
                .await
                .expect("find")
                .map(|a| a.id),
            Some(9),
            "{label}: stale absence (or it should refuse a non-unique column)"
        );
    }
}

// ------------------------------------------------------------------ what should hold

/// Sixteen readers hammer a missing key while a creator creates it: no read that
/// started after `create` returned may see None.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_reader_sees_an_absence_after_the_create_returned() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, ACCT).await;
        for round in 0..5i64 {
            let id = 100 + round;
            let created = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let mut readers = Vec::new();
            for r in 0..16 {
                let (db, created, stop) = (first.clone(), created.clone(), stop.clone());
                readers.push(tokio::spawn(async move {
                    let mut bad = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        let after = created.load(Ordering::SeqCst);
                        let found = if r % 2 == 0 {
                            db.read::<Acct>(id).await.expect("read").is_some()
                        } else {
                            Acct::by_email(&db, format!("c{id}@x"))
                                .await
                                .expect("find")
                                .is_some()
                        };
                        if after && !found {
                            bad += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                    bad
                }));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            second
                .create(acct(id, &format!("c{id}@x"), "c"))
                .await
                .expect("create");
            created.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.store(true, Ordering::SeqCst);
            let mut bad = 0;
            for r in readers {
                bad += r.await.expect("reader");
            }
            assert_eq!(
                bad, 0,
                "{label}: round {round}: reads after the create saw None"
            );
        }
    }
}

/// A create inside a transaction, read outside before COMMIT (an absence cached),
/// then COMMIT: the next read sees the row; a savepoint rolled back leaves nothing.
#[tokio::test]
async fn transactions_and_savepoints_leave_no_stale_absence() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, ACCT).await;
        let outside = first.clone();
        second
            .transaction(|tx| {
                let outside = outside.clone();
                async move {
                    tx.create(acct(1, "t@x", "t")).await?;
                    assert_eq!(outside.read::<Acct>(1).await?, None);
                    assert_eq!(Acct::by_email(&outside, "t@x").await?, None);
                    // A savepoint that creates, then fails.
                    let failed = tx
                        .transaction(|sp| async move {
                            sp.create(acct(2, "s@x", "s")).await?;
                            Err::<(), _>(tabula::Error::Validation("roll back".into()))
                        })
                        .await;
                    assert!(failed.is_err());
                    Ok(())
                }
            })
            .await
            .expect("tx");
        assert!(
            first.read::<Acct>(1).await.expect("read").is_some(),
            "{label}: after COMMIT"
        );
        assert!(
            Acct::by_email(&first, "t@x").await.expect("find").is_some(),
            "{label}"
        );
        assert_eq!(
            first.read::<Acct>(2).await.expect("read"),
            None,
            "{label}: rolled back"
        );
        // A rolled-back transaction must not leave a cached *presence* either.
        let _ = second
            .transaction(|tx| async move {
                tx.create(acct(3, "r@x", "r")).await?;
                Err::<(), _>(tabula::Error::Validation("no".into()))
            })
            .await;
        assert_eq!(first.read::<Acct>(3).await.expect("read"), None, "{label}");
        assert_eq!(
            Acct::by_email(&first, "r@x").await.expect("find"),
            None,
            "{label}"
        );
    }
}

/// Soft delete, an absence cached by key and by finder, then an upsert that lands on
/// the deleted row (restoring it): both must see it; hard delete after a restore too.
#[tokio::test]
async fn upsert_onto_a_soft_deleted_row_drops_its_absences() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, SOFT).await;
        first
            .create(NewSoft {
                id: 1,
                email: "s@x".into(),
            })
            .await
            .expect("create");
        second.delete::<Soft>(1).await.expect("soft delete");
        assert_eq!(first.read::<Soft>(1).await.expect("read"), None);
        assert_eq!(Soft::by_email(&first, "s@x").await.expect("find"), None);
        assert_eq!(
            first.read_many::<Soft>(&[1]).await.expect("many"),
            vec![None]
        );
        second
            .upsert(
                NewSoft {
                    id: 1,
                    email: "s@x".into(),
                },
                Soft::EMAIL,
            )
            .await
            .expect("upsert");
        assert!(
            first.read::<Soft>(1).await.expect("read").is_some(),
            "{label}: read"
        );
        assert!(
            Soft::by_email(&first, "s@x").await.expect("find").is_some(),
            "{label}: finder"
        );
        second.hard_delete::<Soft>(1).await.expect("hard delete");
        assert_eq!(
            first.read::<Soft>(1).await.expect("read"),
            None,
            "{label}: hard deleted"
        );
        assert_eq!(
            Soft::by_email(&first, "s@x").await.expect("find"),
            None,
            "{label}"
        );
    }
}

/// update_where setting the unique column on many rows: every finder absence for the
/// new values goes (the generation), and old values read as absent.
#[tokio::test]
async fn update_where_moving_unique_values_on_many_rows() {
    for (label, a, b) in pairs() {
        let (first, second) = handles(a, b, ACCT).await;
        for i in 0..3 {
            first
                .create(acct(i, &format!("u{i}@x"), "g"))
                .await
                .expect("create");
        }
        for i in 0..3 {
            assert!(
                Acct::by_email(&first, format!("u{i}@x"))
                    .await
                    .expect("find")
                    .is_some()
            );
        }
        assert_eq!(Acct::by_email(&first, "same@x").await.expect("find"), None);
        // Only one row can take the value; move row 1 with update_where.
        second
            .update_where(Acct::ID.eq(1), AcctPatch::default().email("same@x"))
            .await
            .expect("update_where");
        assert_eq!(
            Acct::by_email(&first, "same@x")
                .await
                .expect("find")
                .map(|a| a.id),
            Some(1),
            "{label}"
        );
        assert_eq!(
            Acct::by_email(&first, "u1@x").await.expect("find"),
            None,
            "{label}"
        );
        // Rename every row's name (not unique) and read them back through the cache.
        second
            .update_where(Acct::NAME.eq("g"), AcctPatch::default().name("h"))
            .await
            .expect("update_where names");
        for i in 0..3 {
            assert_eq!(
                first.read::<Acct>(i).await.expect("read").map(|a| a.name),
                Some("h".into())
            );
        }
    }
}

/// String keys with odd characters, a key that spells another key's unique name.
#[tokio::test]
async fn odd_string_keys_do_not_collide() {
    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r10_odd", cache(ttl = 300))]
    struct Odd {
        #[table(primary_key)]
        k: String,
        #[table(unique)]
        u: String,
    }
    for (label, a, b) in pairs() {
        let (first, second) = handles(
            a,
            b,
            "CREATE TABLE r10_odd (k text PRIMARY KEY, u text NOT NULL UNIQUE)",
        )
        .await;
        let keys = [
            "#u:\"x\"", "\"x\"", "a:b", "{a}", "*", "a\nb", "", " ", "é", "🙂", "\\", "a,b",
            "r:1:2",
        ];
        for k in keys {
            assert_eq!(
                first.read::<Odd>(k.to_owned()).await.expect("read"),
                None,
                "{label}: {k:?}"
            );
            assert_eq!(
                Odd::by_u(&first, k.to_owned()).await.expect("find"),
                None,
                "{label}"
            );
        }
        second
            .create(NewOdd {
                k: "#u:\"x\"".into(),
                u: "x".into(),
            })
            .await
            .expect("create");
        // Which of the cached absences may still answer? None of the created ones.
        assert!(
            first
                .read::<Odd>("#u:\"x\"".to_owned())
                .await
                .expect("read")
                .is_some(),
            "{label}"
        );
        assert!(
            Odd::by_u(&first, "x".to_owned())
                .await
                .expect("find")
                .is_some(),
            "{label}"
        );
        for k in keys.iter().skip(1) {
            second
                .create(NewOdd {
                    k: (*k).into(),
                    u: format!("u-{k}"),
                })
                .await
                .expect("create");
            assert!(
                first
                    .read::<Odd>((*k).to_owned())
                    .await
                    .expect("read")
                    .is_some(),
                "{label}: {k:?}"
            );
            assert!(
                Odd::by_u(&first, format!("u-{k}"))
                    .await
                    .expect("find")
                    .is_some(),
                "{label}"
            );
            assert!(
                Odd::by_u(&first, (*k).to_owned())
                    .await
                    .expect("find")
                    .is_none(),
                "{label}"
            );
        }
    }
}

/// Cascades: ON UPDATE CASCADE gives a child row a unique value a finder cached as
/// absent; ON DELETE SET NULL / CASCADE change children read through the cache.
#[tokio::test]
async fn cascades_drop_child_absences_and_rows() {
    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r10_org", cache(ttl = 300))]
    struct Org {
        #[table(primary_key)]
        id: i64,
        #[table(unique)]
        code: String,
    }
    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r10_member", cache(ttl = 300))]
    struct Member {
        #[table(primary_key)]
        id: i64,
        #[table(unique)]
        org_code: Option<String>,
    }
    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r10_badge", cache(ttl = 300))]
    struct Badge {
        #[table(primary_key)]
        id: i64,
        member_id: i64,
    }
    for (label, a, b) in pairs() {
        let (first, second) = handles(
            a,
            b,
            "CREATE TABLE r10_org (id int8 PRIMARY KEY, code text NOT NULL UNIQUE);
             CREATE TABLE r10_member (id int8 PRIMARY KEY,
                org_code text UNIQUE REFERENCES r10_org(code) ON UPDATE CASCADE ON DELETE SET NULL);
             CREATE TABLE r10_badge (id int8 PRIMARY KEY,
                member_id int8 NOT NULL REFERENCES r10_member(id) ON DELETE CASCADE);",
        )
        .await;
        first
            .create(NewOrg {
                id: 1,
                code: "old".into(),
            })
            .await
            .expect("org");
        first
            .create(NewMember {
                id: 1,
                org_code: Some("old".into()),
            })
            .await
            .expect("member");
        first
            .create(NewBadge {
                id: 1,
                member_id: 1,
            })
            .await
            .expect("badge");
        assert_eq!(
            Member::by_org_code(&first, Some("new".to_owned()))
                .await
                .expect("find"),
            None
        );
        assert!(first.read::<Member>(1).await.expect("read").is_some());
        assert!(first.read::<Badge>(1).await.expect("read").is_some());
        second
            .update::<Org>(1, OrgPatch::default().code("new"))
            .await
            .expect("rename");
        assert_eq!(
            Member::by_org_code(&first, Some("new".to_owned()))
                .await
                .expect("find")
                .map(|m| m.id),
            Some(1),
            "{label}: ON UPDATE CASCADE"
        );
        assert_eq!(
            first
                .read::<Member>(1)
                .await
                .expect("read")
                .and_then(|m| m.org_code),
            Some("new".into()),
            "{label}"
        );
        second.delete::<Org>(1).await.expect("delete org");
        assert_eq!(
            first
                .read::<Member>(1)
                .await
                .expect("read")
                .map(|m| m.org_code),
            Some(None),
            "{label}: ON DELETE SET NULL"
        );
        second.delete::<Member>(1).await.expect("delete member");
        assert_eq!(
            first.read::<Badge>(1).await.expect("read"),
            None,
            "{label}: ON DELETE CASCADE"
        );
    }
}

/// Several unique columns: a create drops every one of its unique values.
#[tokio::test]
async fn several_unique_columns_all_dropped() {
    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r10_multi", cache(ttl = 300))]
    struct Multi {
        #[table(primary_key)]
        id: i64,
        #[table(unique)]
        a: String,
        #[table(unique)]
        b: i32,
        #[table(unique)]
        c: Option<uuid::Uuid>,
    }
    for (label, x, y) in pairs() {
        let (first, second) = handles(
            x,
            y,
            "CREATE TABLE r10_multi (id int8 PRIMARY KEY, a text NOT NULL UNIQUE, b int4 NOT NULL UNIQUE, c uuid UNIQUE)",
        )
        .await;
        let u = uuid::Uuid::new_v4();
        assert_eq!(Multi::by_a(&first, "A").await.expect("a"), None);
        assert_eq!(Multi::by_b(&first, 7).await.expect("b"), None);
        assert_eq!(Multi::by_c(&first, Some(u)).await.expect("c"), None);
        second
            .create_many(vec![NewMulti {
                id: 1,
                a: "A".into(),
                b: 7,
                c: Some(u),
            }])
            .await
            .expect("create_many");
        assert!(
            Multi::by_a(&first, "A").await.expect("a").is_some(),
            "{label}: a"
        );
        assert!(
            Multi::by_b(&first, 7).await.expect("b").is_some(),
            "{label}: b"
        );
        assert!(
            Multi::by_c(&first, Some(u)).await.expect("c").is_some(),
            "{label}: c"
        );
        // insert_many (COPY): unique absences of its rows go with the generation.
        assert_eq!(Multi::by_a(&first, "Z").await.expect("a"), None);
        assert_eq!(Multi::by_b(&first, 8).await.expect("b"), None);
        second
            .insert_many(vec![NewMulti {
                id: 2,
                a: "Z".into(),
                b: 8,
                c: None,
            }])
            .await
            .expect("insert_many");
        assert!(
            Multi::by_a(&first, "Z").await.expect("a").is_some(),
            "{label}: COPY a"
        );
        assert!(
            Multi::by_b(&first, 8).await.expect("b").is_some(),
            "{label}: COPY b"
        );
    }
}
