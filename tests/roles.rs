//! Two login roles on one database share its cache namespace (writes through either
//! invalidate for both), so a role that may see fewer rows than another — no `SELECT`
//! grant, or Row Level Security narrowing what it sees — must never be served what the
//! other cached: it reads the database directly.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "secrets", cache(ttl = 300))]
struct Secret {
    #[table(primary_key)]
    id: i64,
    owner: String,
    body: String,
}

fn role() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "tabula_role_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database with `secrets` (one row each for `alice` and `bob`) cached by the
/// superuser's handle, and the URL of a login role `role` on it.
async fn setup(cache: &CacheService, role: &str, grants: &str) -> (Db, String) {
    let (_, url) = common::db_and_url().await;
    let admin = Db::connect_with(DbConfig::new(url.clone()).cache(cache.clone()))
        .await
        .expect("admin");
    admin
        .execute_batch(&format!(
            "CREATE TABLE secrets (id int8 PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
             INSERT INTO secrets VALUES (1, '{role}', 'mine'), (2, 'bob', 'not mine');
             DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             {grants}"
        ))
        .await
        .expect("schema");
    // The superuser's handle fills the cache with both rows and a cached count.
    for id in [1, 2] {
        admin.read::<Secret>(id).await.expect("fill");
    }
    assert_eq!(
        admin
            .query::<Secret>()
            .cached(60)
            .count()
            .await
            .expect("count"),
        2
    );
    let limited = url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(limited, url, "the test kit's URL names its user");
    (admin, limited)
}

#[tokio::test]
async fn a_role_without_select_is_not_served_another_roles_rows() {
    let cache = CacheService::in_memory(CacheConfig::default()).expect("cache");
    let role = role();
    let (_, url) = setup(&cache, &role, "").await;
    let limited = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("limited");
    let read = limited.read::<Secret>(1).await;
    assert!(
        read.is_err(),
        "no grant: the database refuses, the cache does not answer: {read:?}"
    );
    let counted = limited.query::<Secret>().cached(60).count().await;
    assert!(counted.is_err(), "{counted:?}");
}

#[tokio::test]
async fn a_role_under_row_level_security_sees_only_its_rows_never_the_cached_ones() {
    let cache = CacheService::in_memory(CacheConfig::default()).expect("cache");
    let role = role();
    let grants = format!(
        "GRANT SELECT ON secrets TO {role};
         ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own ON secrets FOR SELECT USING (owner = current_user);"
    );
    let (admin, url) = setup(&cache, &role, &grants).await;
    let limited = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("limited");
    assert_eq!(
        limited
            .read::<Secret>(1)
            .await
            .expect("own row")
            .map(|s| s.body),
        Some("mine".into())
    );
    assert_eq!(
        limited.read::<Secret>(2).await.expect("other's row"),
        None,
        "policy hides it"
    );
    assert_eq!(
        limited
            .query::<Secret>()
            .cached(60)
            .count()
            .await
            .expect("count"),
        1
    );
    // The superuser's handle still reads through the cache, and writes through the
    // limited handle's database still reach it.
    assert!(admin.read::<Secret>(2).await.expect("admin").is_some());
}
