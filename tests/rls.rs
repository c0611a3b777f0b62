//! Row Level Security through user-scoped handles, with the cache on.

mod common;

use std::collections::HashMap;

use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde::{Deserialize, Serialize};
use tabula::query::{QuerySpec, SpecLimits};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Error, Table};
use uuid::Uuid;

/// The seed's profile, with the row cache on.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 300))]
struct Profile {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    username: String,
    avatar_url: Option<String>,
}

async fn db_with_cache() -> Db {
    let (_, url) = common::db_and_url().await;
    cached_db(&url).await
}

/// A handle on `url` with a Redis row cache of its own.
async fn cached_db(url: &str) -> Db {
    let prefix = format!("rls{}x{}", std::process::id(), Uuid::new_v4().simple());
    let cache = CacheService::redis(
        &tabula::testkit::redis_url().expect("redis"),
        CacheConfig::default()
            .prefix(prefix)
            .deadline(std::time::Duration::from_secs(2)),
    )
    .expect("cache");
    Db::connect_with(DbConfig::new(url.to_owned()).cache(cache).pool_size(3))
        .await
        .expect("db")
}

fn new(owner: Uuid, name: &str) -> NewProfile {
    NewProfile {
        user_id: owner,
        username: name.into(),
        avatar_url: None,
    }
}

/// Two users with two rows each, created by the service role, and the cache warm with
/// every row (read through the unscoped handle).
async fn two_users(db: &Db) -> (Uuid, Uuid, Vec<Profile>, Vec<Profile>) {
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let a = db
        .create_many(vec![new(alice, "alice-1"), new(alice, "alice-2")])
        .await
        .expect("alice rows");
    let b = db
        .create_many(vec![new(bob, "bob-1"), new(bob, "bob-2")])
        .await
        .expect("bob rows");
    let ids: Vec<Uuid> = a.iter().chain(&b).map(|p| p.id).collect();
    db.warm::<Profile>(&ids).await.expect("warm");
    (alice, bob, a, b)
}

#[tokio::test]
async fn a_scoped_handle_sees_and_touches_only_its_own_rows_even_with_a_warm_cache() {
    let db = db_with_cache().await;
    let (alice, bob, a, b) = two_users(&db).await;
    let as_alice = db.as_user(alice);

    // Reads: own rows yes, the other's no — though the cache holds them.
    assert_eq!(
        as_alice.read::<Profile>(a[0].id).await.expect("own"),
        Some(a[0].clone())
    );
    assert_eq!(
        as_alice.read::<Profile>(b[0].id).await.expect("other's"),
        None,
        "hidden row is NotFound"
    );
    let many = as_alice
        .read_many::<Profile>(&[a[1].id, b[1].id])
        .await
        .expect("read_many");
    assert_eq!(many, vec![Some(a[1].clone()), None]);
    let mut names: Vec<String> = as_alice
        .query::<Profile>()
        .select(Profile::USERNAME)
        .all()
        .await
        .expect("query");
    names.sort();
    assert_eq!(names, ["alice-1", "alice-2"]);
    assert_eq!(as_alice.query::<Profile>().count().await.expect("count"), 2);
    assert_eq!(
        as_alice
            .query::<Profile>()
            .cached(60)
            .all()
            .await
            .expect("cached query")
            .len(),
        2
    );
    let page = as_alice
        .query::<Profile>()
        .page(10, None)
        .await
        .expect("page");
    assert!(page.items.iter().all(|p| p.user_id == alice));
    let spec = QuerySpec::from_query_string("select=username").expect("spec");
    let rows = as_alice
        .query_spec::<Profile>(&spec, &SpecLimits::default())
        .await
        .expect("spec");
    assert_eq!(rows.rows.len(), 2);

    // Writes to the other's rows: NotFound, no existence oracle; nothing changed.
    let patch = || ProfilePatch {
        avatar_url: Some(Some("hacked".into())),
        ..Default::default()
    };
    assert!(matches!(
        as_alice.update::<Profile>(b[0].id, patch()).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        as_alice.delete::<Profile>(b[0].id).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        as_alice
            .update_where(Profile::USERNAME.like("bob%"), patch())
            .await
            .expect("update_where"),
        0
    );
    assert_eq!(
        as_alice
            .delete_where(Profile::USERNAME.like("bob%"))
            .await
            .expect("delete_where"),
        0
    );
    assert_eq!(
        db.read_uncached::<Profile>(b[0].id)
            .await
            .expect("service read"),
        Some(b[0].clone())
    );

    // Inserting a row owned by someone else is refused by the policy.
    let err = as_alice
        .create(new(bob, "forged"))
        .await
        .expect_err("forged insert");
    assert!(matches!(err, Error::PermissionDenied { .. }), "got {err:?}");

    // Own writes work and invalidate for everyone.
    let updated = as_alice
        .update::<Profile>(a[0].id, patch())
        .await
        .expect("own update");
    assert_eq!(updated.avatar_url.as_deref(), Some("hacked"));
    assert_eq!(
        db.read::<Profile>(a[0].id)
            .await
            .expect("service read")
            .and_then(|p| p.avatar_url)
            .as_deref(),
        Some("hacked")
    );
    assert_eq!(
        db.as_user(bob).read::<Profile>(a[0].id).await.expect("bob"),
        None
    );

    // Inside a scoped transaction, streaming works and still sees only own rows.
    let streamed: Vec<Profile> = as_alice
        .transaction(|tx| async move {
            let mut rows = Vec::new();
            let mut stream = tx.query::<Profile>().stream().await?;
            while let Some(row) = stream.next().await {
                rows.push(row?);
            }
            Ok(rows)
        })
        .await
        .expect("stream");
    assert_eq!(streamed.len(), 2);
    // Outside a transaction a scoped stream is refused rather than run unscoped.
    assert!(matches!(
        as_alice.query::<Profile>().stream().await.err(),
        Some(Error::Misuse(_))
    ));
}

#[tokio::test]
async fn anonymous_requests_see_nothing_and_auth_uid_is_null() {
    let db = db_with_cache().await;
    let (_, _, a, _) = two_users(&db).await;
    let anon = db.as_anon();
    assert_eq!(anon.read::<Profile>(a[0].id).await.expect("read"), None);
    assert_eq!(anon.query::<Profile>().count().await.expect("count"), 0);
    let (uid, role): (Option<Uuid>, Option<String>) = anon
        .with_client(async |c| {
            let row = c.query_one("SELECT auth.uid(), auth.role()", &[]).await?;
            Ok((row.get(0), row.get(1)))
        })
        .await
        .expect("auth functions");
    assert_eq!(uid, None);
    assert_eq!(role.as_deref(), Some("anon"));
    let unscoped: Option<Uuid> = db
        .with_client(async |c| Ok(c.query_one("SELECT auth.uid()", &[]).await?.get(0)))
        .await
        .expect("no claims at all");
    assert_eq!(unscoped, None, "an empty setting is NULL, not an error");
}

#[tokio::test]
async fn many_users_reading_by_id_get_the_same_answers_with_and_without_the_cache() {
    let (_, url) = common::db_and_url().await;
    let db = cached_db(&url).await;
    // The same database through a handle with no cache configured at all.
    let uncached = Db::connect(&url).await.expect("uncached db");
    let users: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let mut rows = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for j in 0..3 {
            rows.push(db.create(new(*u, &format!("u{i}-{j}"))).await.expect("row"));
        }
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    // Every row, every user's, sits in the shared row cache.
    assert_eq!(
        db.warm::<Profile>(&ids).await.expect("warm"),
        ids.len() as u64
    );
    let mut answers: HashMap<(Uuid, Uuid), Option<Uuid>> = HashMap::new();
    for u in &users {
        for r in &rows {
            let got = db
                .as_user(*u)
                .read::<Profile>(r.id)
                .await
                .expect("read")
                .map(|p| p.user_id);
            assert!(
                got.is_none_or(|owner| owner == *u),
                "user {u} saw a row of {got:?}"
            );
            assert_eq!(got.is_some(), r.user_id == *u, "policy: visible iff owned");
            answers.insert((*u, r.id), got);
        }
    }
    for u in &users {
        for r in &rows {
            let got = uncached
                .as_user(*u)
                .read::<Profile>(r.id)
                .await
                .expect("read")
                .map(|p| p.user_id);
            assert_eq!(answers[&(*u, r.id)], got, "cache on and off disagree");
        }
    }
}

async fn session_state(db: &Db) -> (String, Option<String>) {
    db.with_client(async |c| {
        let row = c
            .query_one(
                "SELECT current_user::text, current_setting('request.jwt.claims', true)",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    })
    .await
    .expect("session state")
}

#[tokio::test]
async fn no_role_or_claims_survive_on_a_pooled_connection_after_errors_panics_or_cancellation() {
    let (_, url) = common::db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url).pool_size(2))
        .await
        .expect("db");
    let login = session_state(&db).await.0;
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for (i, u) in users.iter().enumerate() {
        db.create(new(*u, &format!("hygiene{i}")))
            .await
            .expect("seed");
    }
    for step in 0..2000usize {
        let user = users[step % users.len()];
        let scoped = db.as_user(user);
        match step % 5 {
            0 => {
                // An error inside the scoped transaction (policy refusal).
                let other = users[(step + 1) % users.len()];
                assert!(
                    scoped
                        .create(new(other, &format!("x{step}")))
                        .await
                        .is_err()
                );
            }
            1 => {
                // A panic inside a scoped transaction.
                let s = scoped.clone();
                let task = tokio::spawn(async move {
                    let _: tabula::Result<()> = s
                        .transaction(|tx| async move {
                            tx.query::<Profile>().count().await?;
                            panic!("boom");
                        })
                        .await;
                });
                assert!(task.await.is_err());
            }
            2 => {
                // A future dropped mid-transaction.
                let _ = tokio::time::timeout(
                    std::time::Duration::from_micros(200),
                    scoped.transaction(|tx| async move {
                        tx.query::<Profile>().count().await?;
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        Ok(())
                    }),
                )
                .await;
            }
            _ => {
                let n = scoped.query::<Profile>().count().await.expect("count");
                assert_eq!(n, 1, "each user sees exactly their row");
            }
        }
        if step % 50 == 0 {
            let (user_now, claims) = session_state(&db).await;
            assert_eq!(
                user_now, login,
                "role leaked to the next checkout at step {step}"
            );
            assert!(
                claims.as_deref().is_none_or(str::is_empty),
                "claims leaked at step {step}: {claims:?}"
            );
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create { actor: usize, owner: usize },
    Read { actor: usize, row: usize },
    Update { actor: usize, row: usize },
    Delete { actor: usize, row: usize },
    Count { actor: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..3usize;
    let row = 0..12usize;
    prop_oneof![
        (who.clone(), who.clone()).prop_map(|(actor, owner)| Op::Create { actor, owner }),
        (who.clone(), row.clone()).prop_map(|(actor, row)| Op::Read { actor, row }),
        (who.clone(), row.clone()).prop_map(|(actor, row)| Op::Update { actor, row }),
        (who.clone(), row).prop_map(|(actor, row)| Op::Delete { actor, row }),
        who.prop_map(|actor| Op::Count { actor }),
    ]
}

#[test]
fn random_operations_match_an_in_memory_model_of_the_policy() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(db_with_cache());
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut runner = TestRunner::new(Config {
        cases: 60,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..25), |ops| {
        rt.block_on(async {
            db.delete_all::<Profile>()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            // The model: (id, owner, version) of every live row, in creation order.
            let mut model: Vec<(Uuid, usize, u32)> = Vec::new();
            for (step, op) in ops.iter().enumerate() {
                match *op {
                    Op::Create { actor, owner } => {
                        let res = db
                            .as_user(users[actor])
                            .create(new(users[owner], &format!("p{step}")))
                            .await;
                        match res {
                            Ok(p) => {
                                prop_assert_eq!(actor, owner, "a forbidden insert succeeded");
                                model.push((p.id, owner, 0));
                            }
                            Err(Error::PermissionDenied { .. }) => prop_assert_ne!(actor, owner),
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    Op::Read { actor, row } => {
                        let Some(&(id, owner, version)) = model.get(row % model.len().max(1))
                        else {
                            continue;
                        };
                        let got = db
                            .as_user(users[actor])
                            .read::<Profile>(id)
                            .await
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        match got {
                            Some(p) => {
                                prop_assert_eq!(actor, owner, "a hidden row was visible");
                                prop_assert_eq!(
                                    p.avatar_url,
                                    (version > 0).then(|| version.to_string())
                                );
                            }
                            None => prop_assert_ne!(actor, owner),
                        }
                    }
                    Op::Update { actor, row } => {
                        let len = model.len().max(1);
                        let Some(entry) = model.get_mut(row % len) else {
                            continue;
                        };
                        let patch = ProfilePatch {
                            avatar_url: Some(Some((entry.2 + 1).to_string())),
                            ..Default::default()
                        };
                        match db
                            .as_user(users[actor])
                            .update::<Profile>(entry.0, patch)
                            .await
                        {
                            Ok(_) => {
                                prop_assert_eq!(actor, entry.1, "a forbidden update succeeded");
                                entry.2 += 1;
                            }
                            Err(Error::NotFound { .. }) => prop_assert_ne!(actor, entry.1),
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    Op::Delete { actor, row } => {
                        if model.is_empty() {
                            continue;
                        }
                        let index = row % model.len();
                        let (id, owner, _) = model[index];
                        match db.as_user(users[actor]).delete::<Profile>(id).await {
                            Ok(()) => {
                                prop_assert_eq!(actor, owner, "a forbidden delete succeeded");
                                model.remove(index);
                            }
                            Err(Error::NotFound { .. }) => prop_assert_ne!(actor, owner),
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    Op::Count { actor } => {
                        let n = db
                            .as_user(users[actor])
                            .query::<Profile>()
                            .count()
                            .await
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        let expected =
                            model.iter().filter(|(_, owner, _)| *owner == actor).count() as i64;
                        prop_assert_eq!(n, expected);
                    }
                }
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn arbitrary_query_specs_under_a_scoped_handle_never_return_another_users_row() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (db, alice) = rt.block_on(async {
        let db = db_with_cache().await;
        let (alice, _, _, _) = two_users(&db).await;
        (db, alice)
    });
    let scoped = db.as_user(alice);
    let columns = prop::sample::select(vec![
        "id",
        "user_id",
        "username",
        "avatar_url",
        "nope",
        "' OR 1=1 --",
    ]);
    let ops = prop::sample::select(vec![
        "eq", "ne", "like", "is_null", "not_null", "in", "gt", "bogus",
    ]);
    let values = prop_oneof![
        Just(serde_json::json!("%")),
        Just(serde_json::json!("' OR '1'='1")),
        Just(serde_json::json!(["alice-1", "bob-1"])),
        ".{0,10}".prop_map(serde_json::Value::from),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &prop::collection::vec((columns, ops, prop::option::of(values)), 0..3),
        |filters| {
            let spec = QuerySpec {
                select: Some(tabula::query::spec::SelectSpec::List(
                    "user_id, username".into(),
                )),
                filters: filters
                    .into_iter()
                    .map(|(c, o, v)| tabula::query::spec::FilterSpec {
                        column: c.into(),
                        op: o.into(),
                        value: v,
                    })
                    .collect(),
                ..QuerySpec::default()
            };
            match rt.block_on(scoped.query_spec::<Profile>(&spec, &SpecLimits::default())) {
                Ok(page) => {
                    let alice = alice.to_string();
                    for row in page.rows {
                        prop_assert_eq!(
                            row.get("user_id").and_then(|v| v.as_str()),
                            Some(alice.as_str())
                        );
                    }
                    Ok(())
                }
                Err(Error::Validation(_)) => Ok(()),
                Err(other) => Err(TestCaseError::fail(other.to_string())),
            }
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Polls a future with the task's cooperative budget spent before every poll, as in a
/// busy task: every tokio resource it awaits then yields once before answering, so
/// the caller's deadline can fire at any await inside it — including the ones after
/// a scoped read's statement, before its connection is tidied up.
struct Starved<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for Starved<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        for _ in 0..1000 {
            if std::pin::pin!(tokio::task::consume_budget())
                .poll(cx)
                .is_pending()
            {
                break;
            }
        }
        self.0.as_mut().poll(cx)
    }
}

#[tokio::test]
async fn a_scoped_read_given_up_after_its_statement_leaves_no_scope_for_the_next_user() {
    let (_, url) = common::db_and_url().await;
    // One connection: whatever the abandoned read leaves is what the next user gets.
    let db = Db::connect_with(DbConfig::new(url).pool_size(1))
        .await
        .expect("db");
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.create_many(vec![new(alice, "a1"), new(alice, "a2"), new(bob, "b1")])
        .await
        .expect("rows");
    let (login, _) = session_state(&db).await;
    for attempt in 0..5 {
        let scoped = db.as_user(alice);
        let read = Starved(Box::pin(
            async move { scoped.query::<Profile>().count().await },
        ));
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(200 * (attempt + 1)), read).await;
        // The service role again: every row, its own role, no claims.
        assert_eq!(db.query::<Profile>().count().await.expect("count"), 3);
        db.create(new(bob, &format!("service{attempt}")))
            .await
            .expect("a service-role write of another user's row");
        let (user, claims) = session_state(&db).await;
        assert_eq!(user, login);
        assert!(claims.as_deref().is_none_or(str::is_empty), "{claims:?}");
        db.delete_where(Profile::USERNAME.like("service%"))
            .await
            .expect("tidy");
    }
}

/// PostgreSQL allows no COPY into a table under Row Level Security: a scoped
/// `insert_many` goes in through INSERT, where the policy decides — own rows are
/// inserted, a batch holding another user's row is refused whole.
#[tokio::test]
async fn a_scoped_insert_many_inserts_own_rows_and_refuses_a_batch_with_anothers() {
    let (_, url) = common::db_and_url().await;
    let db = Db::connect(&url).await.expect("db");
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let as_alice = db.as_user(alice);
    let n = as_alice
        .insert_many(vec![new(alice, "a1"), new(alice, "a2")])
        .await
        .expect("own rows");
    assert_eq!(n, 2);
    let err = as_alice
        .insert_many(vec![new(alice, "a3"), new(bob, "b1")])
        .await
        .expect_err("another user's row");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    let mut names: Vec<String> = db
        .query::<Profile>()
        .select(Profile::USERNAME)
        .all()
        .await
        .expect("all");
    names.sort();
    assert_eq!(names, ["a1", "a2"], "nothing of the refused batch");
}
