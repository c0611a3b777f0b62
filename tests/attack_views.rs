//! Round 39: an outside attack on SessionNames / SESSION_STATE / learn_names and the
//! view check of TABLE_ACCESS (round 38's fix), judged by the cache contract. Every
//! expectation is what PostgreSQL answers over a plain tokio_postgres connection.
//! Each `defect_*` test failed on the code it attacked, 3 of 3 runs, and passes since
//! its fix (a model over a view is never shared; a transaction block of Tabula's own
//! no longer closes its connection; the migrator records a run under its record
//! table's schema-qualified name) — but one, ignored with its reason.

mod common;

use tabula::migrate::{Migration, Migrator};
use tabula::testkit::PgBouncer;
use tabula::{Db, DbConfig, Table};

use common::fixtures::{ident, raw, redis};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r39_mine", cache(ttl = 300))]
struct Mine {
    #[table(primary_key)]
    id: i64,
    tenant: String,
    v: String,
}

fn tenant_setting(url: &str, prefix: &str, tenant: &'static str) -> DbConfig {
    DbConfig::new(url.to_owned())
        .cache(redis(prefix))
        .after_connect(move |client| {
            Box::pin(async move {
                client
                    .batch_execute(&format!("SET app.tenant = '{tenant}'"))
                    .await?;
                Ok(())
            })
        })
}

/// What tenant `t`'s session reads from r39_mine, by hand.
async fn direct_ids(url: &str, t: &str) -> Vec<i64> {
    let c = raw(url).await;
    c.batch_execute(&format!("SET app.tenant = '{t}'"))
        .await
        .expect("set");
    c.query("SELECT id FROM r39_mine ORDER BY id", &[])
        .await
        .expect("raw")
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

async fn mine_reads(db: &Db) -> (Option<String>, Vec<i64>) {
    let read = db.read::<Mine>(1).await.expect("read").map(|r| r.v);
    let q = db
        .query::<Mine>()
        .cached(60)
        .all()
        .await
        .expect("q")
        .into_iter()
        .map(|r| r.id)
        .collect();
    (read, q)
}

/// Tenant a reads first (fills), then tenant b; b must get what its session reads.
async fn two_tenants(
    url: &str,
) -> (
    (Option<String>, Vec<i64>),
    (Option<String>, Vec<i64>),
    Vec<i64>,
) {
    let prefix = ident("r39");
    let a = Db::connect_with(tenant_setting(url, &prefix, "a"))
        .await
        .expect("a");
    let b = Db::connect_with(tenant_setting(url, &prefix, "b"))
        .await
        .expect("b");
    let a_reads = mine_reads(&a).await;
    let direct_b = direct_ids(url, "b").await;
    let b_reads = mine_reads(&b).await;
    (a_reads, b_reads, direct_b)
}

// ---------------------------------------------------------------------------------------
// 1. The view check reads only the view's own text: a view over a view that filters by
//    a session setting shows no current_setting in pg_get_viewdef.

#[tokio::test]
async fn defect_view_over_tenant_view_shared_across_tenants() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE TABLE r39_items (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         INSERT INTO r39_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         CREATE VIEW r39_inner AS SELECT id, tenant, v FROM r39_items
           WHERE tenant = current_setting('app.tenant', true);
         CREATE VIEW r39_mine AS SELECT id, tenant, v FROM r39_inner;",
    )
    .await
    .expect("ddl");
    let (a_reads, b_reads, direct_b) = two_tenants(&url).await;
    assert_eq!(a_reads, (Some("a-secret".into()), vec![1]), "precondition");
    assert_eq!(direct_b, vec![2], "precondition");
    assert_eq!(
        b_reads,
        (None, direct_b),
        "tenant b is served tenant a's rows"
    );
}

// ---------------------------------------------------------------------------------------
// 2. A plain view over a table whose Row Level Security (forced, the view's owner is not
//    a superuser) filters by the session's setting: the view has no RLS of its own.

#[tokio::test]
async fn defect_view_over_forced_rls_table_shared_across_tenants() {
    let (db0, url) = common::db_and_url().await;
    let role = ident("r39");
    db0.execute_batch(&format!(
        "CREATE ROLE {role} NOLOGIN;
         CREATE TABLE r39_items (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         INSERT INTO r39_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         ALTER TABLE r39_items ENABLE ROW LEVEL SECURITY;
         ALTER TABLE r39_items FORCE ROW LEVEL SECURITY;
         CREATE POLICY r39_p ON r39_items USING (tenant = current_setting('app.tenant', true));
         ALTER TABLE r39_items OWNER TO {role};
         CREATE VIEW r39_mine AS SELECT id, tenant, v FROM r39_items;
         ALTER VIEW r39_mine OWNER TO {role};"
    ))
    .await
    .expect("ddl");
    let (a_reads, b_reads, direct_b) = two_tenants(&url).await;
    assert_eq!(a_reads, (Some("a-secret".into()), vec![1]), "precondition");
    assert_eq!(direct_b, vec![2], "precondition");
    assert_eq!(
        b_reads,
        (None, direct_b),
        "tenant b is served tenant a's rows"
    );
}

// ---------------------------------------------------------------------------------------
// 3. A custom setting changed by the caller's own SQL: SESSION_STATE reads the custom
//    settings but the comparison ignores them, so the session is pooled again with
//    another tenant's setting, against "such a change applies to that call only".

#[ignore = "open, documented (README, Caching): PostgreSQL lists no custom settings, so a \
            change of one by the caller's own SQL cannot be seen; set them in after_connect"]
#[tokio::test]
async fn defect_custom_setting_changed_by_execute_batch_outlives_call() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE TABLE r39_items (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         INSERT INTO r39_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         CREATE VIEW r39_mine AS SELECT id, tenant, v FROM r39_items
           WHERE tenant = current_setting('app.tenant', true);",
    )
    .await
    .expect("ddl");
    let prefix = ident("r39");
    let a = Db::connect_with(tenant_setting(&url, &prefix, "a").pool_size(1))
        .await
        .expect("a");
    a.execute_batch("SELECT pg_catalog.set_config('app.tenant', 'b', false)")
        .await
        .expect("batch");
    let direct_a = direct_ids(&url, "a").await;
    assert_eq!(direct_a, vec![1], "precondition");
    let setting: String = a
        .sql_rows("SELECT current_setting('app.tenant')", &[])
        .await
        .expect("setting")[0]
        .get(0);
    let two = a.read::<Mine>(2).await.expect("read 2").map(|r| r.v);
    let (_, q) = mine_reads(&a).await;
    assert_eq!(
        (setting.as_str(), two, q),
        ("a", None, direct_a),
        "handle a's session kept tenant b's setting and reads b's rows"
    );
}

// ---------------------------------------------------------------------------------------
// 4. sql_rows inside a Tabula transaction: the check sees a transaction block (Tabula's
//    own) and the connection is closed after the transaction.

#[tokio::test]
async fn defect_sql_rows_in_transaction_closes_pooled_connection() {
    let (_db0, url) = common::db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
        .await
        .expect("db");
    db.execute_batch("CREATE TABLE r39_tx (id int8 PRIMARY KEY)")
        .await
        .expect("ddl");
    let pid = |db: Db| async move {
        let r = db
            .sql_rows("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid");
        r[0].get::<_, i32>(0)
    };
    let before = pid(db.clone()).await;
    let again = pid(db.clone()).await;
    assert_eq!(
        before, again,
        "precondition: sql_rows outside a transaction keeps it"
    );
    db.transaction(|tx| async move {
        tx.sql_rows("INSERT INTO r39_tx VALUES (1) RETURNING id", &[])
            .await?;
        Ok(())
    })
    .await
    .expect("tx");
    let n: i64 = raw(&url)
        .await
        .query_one("SELECT count(*) FROM r39_tx", &[])
        .await
        .expect("raw")
        .get(0);
    assert_eq!(n, 1, "precondition: committed");
    let after = pid(db.clone()).await;
    assert_eq!(
        before, after,
        "a transaction that used sql_rows closed its connection"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Ordinary use: migrations in pg_dump style, execute_batch DDL, then cached reads.

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r39_t", cache(ttl = 300))]
struct BareT {
    #[table(primary_key)]
    id: i64,
    v: String,
}

/// Cache on: a value changed behind Tabula's back is still served from the cache,
/// and a write through Tabula is seen at once.
async fn cache_is_on_and_fresh(db: &Db, url: &str) {
    let first = db.read::<BareT>(1).await.expect("read").map(|r| r.v);
    let direct: String = raw(url)
        .await
        .query_one("SELECT v FROM r39_t WHERE id = 1", &[])
        .await
        .expect("raw")
        .get(0);
    assert_eq!(first.as_deref(), Some(direct.as_str()));
    raw(url)
        .await
        .execute("UPDATE public.r39_t SET v = 'behind' WHERE id = 1", &[])
        .await
        .expect("behind");
    let cached = db.read::<BareT>(1).await.expect("read").map(|r| r.v);
    assert_eq!(cached, first, "caching is off for the bare model");
    db.update::<BareT>(
        1,
        BareTPatch {
            v: Some("through".into()),
        },
    )
    .await
    .expect("update");
    let fresh = db.read::<BareT>(1).await.expect("read").map(|r| r.v);
    assert_eq!(
        fresh.as_deref(),
        Some("through"),
        "stale after a Tabula write"
    );
}

/// pg_dump output begins with `SELECT pg_catalog.set_config('search_path', '', false);`
/// and qualifies every name: valid SQL that PostgreSQL runs (checked by hand first).
/// The migrator runs it, then records it in `tabula_migrations` by its bare name on
/// the same session: 42P01, the migration rolled back.
#[tokio::test]
async fn defect_pg_dump_style_migration_is_refused() {
    let script = "SET statement_timeout = 0;
             SELECT pg_catalog.set_config('search_path', '', false);
             CREATE TABLE public.r39_t (id int8 PRIMARY KEY, v text NOT NULL);
             INSERT INTO public.r39_t VALUES (1, 'one');";
    let none = Migrator::new(Vec::new()).expect("empty");
    let (_db0, url) = tabula::testkit::database(&none).await.expect("database");
    // Independent: the script is valid and runs in a transaction by hand.
    {
        let c = raw(&url).await;
        c.batch_execute(&format!("BEGIN; {script} ROLLBACK;"))
            .await
            .expect("the script runs by hand");
    }
    let db = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&ident("r39"))))
        .await
        .expect("db");
    let m = Migrator::new(vec![Migration::new(1, "dump", script)]).expect("migrator");
    let ran = m.run(&db).await.map(|r| r.applied);
    let exists: bool = raw(&url)
        .await
        .query_one("SELECT to_regclass('public.r39_t') IS NOT NULL", &[])
        .await
        .expect("raw")
        .get(0);
    assert_eq!(
        (ran.map_err(|e| e.to_string()), exists),
        (Ok(vec![1]), true),
        "a pg_dump-style migration is refused"
    );
}

#[tokio::test]
async fn holds_migration_setting_search_path_then_cached_reads() {
    let none = Migrator::new(Vec::new()).expect("empty");
    let (_db0, url) = tabula::testkit::database(&none).await.expect("database");
    let db = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&ident("r39"))))
        .await
        .expect("db");
    let m = Migrator::new(vec![
        Migration::new(
            1,
            "table",
            "CREATE TABLE public.r39_t (id int8 PRIMARY KEY, v text NOT NULL);
             INSERT INTO public.r39_t VALUES (1, 'one');",
        ),
        Migration::new(
            2,
            "path",
            "CREATE SCHEMA r39s; SET search_path = r39s, public;
             CREATE TABLE r39_other (id int8);",
        ),
    ])
    .expect("migrator");
    assert_eq!(m.run(&db).await.expect("migrate").applied, vec![1, 2]);
    cache_is_on_and_fresh(&db, &url).await;
}

#[tokio::test]
async fn holds_execute_batch_ddl_then_cached_reads() {
    let (_db0, url) = common::db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(2)
            .cache(redis(&ident("r39"))),
    )
    .await
    .expect("db");
    db.execute_batch(
        "CREATE TABLE r39_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO r39_t VALUES (1, 'one');",
    )
    .await
    .expect("ddl");
    db.sql_rows("SELECT count(*) FROM r39_t", &[])
        .await
        .expect("rows");
    cache_is_on_and_fresh(&db, &url).await;
}

fn database_name(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap_or_default();
    path.split('?').next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn holds_pgbouncer_transaction_pooling_batch_and_rows_then_cached_reads() {
    let bouncer = PgBouncer::start(2).expect("pgbouncer");
    let (_db0, url) = common::db_and_url().await;
    let via = bouncer.url(&database_name(&url));
    let db = Db::connect_with(
        DbConfig::new(via)
            .transaction_pooling(true)
            .pool_size(4)
            .cache(redis(&ident("r39"))),
    )
    .await
    .expect("through pgbouncer");
    db.execute_batch(
        "CREATE TABLE r39_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO r39_t VALUES (1, 'one');",
    )
    .await
    .expect("ddl");
    for i in 0..20i64 {
        let r = db
            .sql_rows("SELECT $1::int8 + count(*) FROM r39_t", &[&i])
            .await
            .expect("sql_rows through pgbouncer");
        assert_eq!(r[0].get::<_, i64>(0), i + 1);
        db.execute_batch("SELECT 1")
            .await
            .expect("batch through pgbouncer");
    }
    cache_is_on_and_fresh(&db, &url).await;
}

// ---------------------------------------------------------------------------------------
// 6. A security_invoker view (PostgreSQL 15+, Supabase's advice) over a table with Row
//    Level Security: the reading role's policies apply through the view, yet the view
//    itself has no RLS and its text reads no session state.

fn as_role(url: &str, prefix: &str, role: String) -> DbConfig {
    DbConfig::new(url.to_owned())
        .cache(redis(prefix))
        .after_connect(move |client| {
            let role = role.clone();
            Box::pin(async move {
                client.batch_execute(&format!("SET ROLE {role}")).await?;
                Ok(())
            })
        })
}

#[tokio::test]
async fn defect_security_invoker_view_over_rls_table_shared_across_roles() {
    let (db0, url) = common::db_and_url().await;
    let role = ident("r39");
    db0.execute_batch(&format!(
        "CREATE ROLE {role} NOLOGIN;
         CREATE TABLE r39_items (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         INSERT INTO r39_items VALUES (1, 'other', 'a-secret'), (2, '{role}', 'mine');
         ALTER TABLE r39_items ENABLE ROW LEVEL SECURITY;
         CREATE POLICY r39_p ON r39_items USING (tenant = current_user);
         CREATE VIEW r39_mine WITH (security_invoker = true) AS SELECT id, tenant, v FROM r39_items;
         GRANT SELECT ON r39_items, r39_mine TO {role};"
    ))
    .await
    .expect("ddl");
    let prefix = ident("r39");
    let admin = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("admin");
    let user = Db::connect_with(as_role(&url, &prefix, role.clone()))
        .await
        .expect("user");
    let admin_reads = mine_reads(&admin).await;
    assert_eq!(
        admin_reads,
        (Some("a-secret".into()), vec![1, 2]),
        "precondition"
    );
    let c = raw(&url).await;
    c.batch_execute(&format!("SET ROLE {role}"))
        .await
        .expect("role");
    let direct: Vec<i64> = c
        .query("SELECT id FROM r39_mine ORDER BY id", &[])
        .await
        .expect("raw")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(direct, vec![2], "precondition");
    let user_reads = mine_reads(&user).await;
    assert_eq!(
        user_reads,
        (None, direct),
        "the role is served rows its policy hides"
    );
}
