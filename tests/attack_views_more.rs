//! Round 40: an outside attack on the view walk of TABLE_ACCESS (round 39's fix).
//! Every expectation is what PostgreSQL answers over a plain tokio_postgres connection
//! set up as the handle's session.
//! Each `defect_*` test failed on the code it attacked, 3 of 3 runs, and passes since
//! its fix: a view is shared only if every function its stored query calls (read from
//! the rule's node tree: PostgreSQL records no dependency on its own functions) is
//! immutable, it names no session value and converts nothing through text; and every
//! name in the access check is qualified through `pg_catalog`.

mod common;

use tabula::{Db, DbConfig, Table};

use common::fixtures::{ident, raw, redis};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r40_mine", cache(ttl = 300))]
struct Mine {
    #[table(primary_key)]
    id: i64,
    tenant: String,
    v: String,
}

/// A handle whose sessions run `setup` in after_connect.
fn with_setup(url: &str, prefix: &str, setup: String) -> DbConfig {
    DbConfig::new(url.to_owned())
        .cache(redis(prefix))
        .after_connect(move |client| {
            let setup = setup.clone();
            Box::pin(async move {
                client.batch_execute(&setup).await?;
                Ok(())
            })
        })
}

/// What a session set up with `setup` reads from r40_mine, by hand.
async fn direct(url: &str, setup: &str) -> (Option<String>, Vec<i64>) {
    let c = raw(url).await;
    c.batch_execute(setup).await.expect("setup");
    let one = c
        .query_opt("SELECT v FROM r40_mine WHERE id = 1", &[])
        .await
        .expect("raw one")
        .map(|r| r.get::<_, String>(0));
    let all = c
        .query("SELECT id FROM r40_mine ORDER BY id", &[])
        .await
        .expect("raw")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    (one, all)
}

async fn mine_reads(db: &Db) -> (Option<String>, Vec<i64>) {
    let read = db.read::<Mine>(1).await.expect("read").map(|r| r.v);
    let mut q: Vec<i64> = db
        .query::<Mine>()
        .cached(60)
        .all()
        .await
        .expect("q")
        .into_iter()
        .map(|r| r.id)
        .collect();
    q.sort();
    (read, q)
}

/// Handle A (setup_a) reads first and fills; then handle B (setup_b) reads. Returns
/// (A's reads, A direct, B's reads, B direct).
async fn two_sessions(url: &str, setup_a: &str, setup_b: &str) -> [(Option<String>, Vec<i64>); 4] {
    let prefix = ident("r40");
    let a = Db::connect_with(with_setup(url, &prefix, setup_a.to_owned()))
        .await
        .expect("a");
    let b = Db::connect_with(with_setup(url, &prefix, setup_b.to_owned()))
        .await
        .expect("b");
    let a_reads = mine_reads(&a).await;
    let a_direct = direct(url, setup_a).await;
    let b_direct = direct(url, setup_b).await;
    let b_reads = mine_reads(&b).await;
    [a_reads, a_direct, b_reads, b_direct]
}

async fn check_two(url: &str, setup_a: &str, setup_b: &str) {
    let [a_reads, a_direct, b_reads, b_direct] = two_sessions(url, setup_a, setup_b).await;
    assert_eq!(
        a_reads, a_direct,
        "precondition: A reads what its session reads"
    );
    assert_ne!(
        a_direct, b_direct,
        "precondition: the sessions read different rows"
    );
    assert_eq!(
        b_reads, b_direct,
        "B is served rows A's session filled, not what B's session reads"
    );
}

const ITEMS: &str =
    "CREATE TABLE r40_items (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);";

// ---------------------------------------------------------------------------------------
// 1. A user-defined operator whose function (outside pg_catalog) reads app.tenant: the
//    view's rule depends on the operator, not on its function (pg_depend shows only
//    the operator, and TABLE_ACCESS answers true) — yet held: the view is not cached.

#[tokio::test]
async fn holds_view_with_user_operator_reading_setting_not_shared_across_tenants() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(&format!(
        "{ITEMS}
         INSERT INTO r40_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         CREATE FUNCTION r40_is_tenant(text) RETURNS bool LANGUAGE sql STABLE
           AS $$ SELECT $1 = current_setting('app.tenant', true) $$;
         CREATE OPERATOR @@@ (RIGHTARG = text, FUNCTION = r40_is_tenant);
         CREATE VIEW r40_mine AS SELECT id, tenant, v FROM r40_items WHERE @@@ tenant;"
    ))
    .await
    .expect("ddl");
    check_two(&url, "SET app.tenant = 'a'", "SET app.tenant = 'b'").await;
}

// ---------------------------------------------------------------------------------------
// 2. Nested views: the outer one owned by a superuser, the inner one by a role that the
//    table's Row Level Security applies to. The walk checks RLS against the outer
//    view's owner only (TABLE_ACCESS answers true), but the inner view reads the table
//    as its own owner — yet held: the view is not cached.

#[tokio::test]
async fn holds_inner_view_owned_by_rls_subject_role_not_shared_across_tenants() {
    let (db0, url) = common::db_and_url().await;
    let role = ident("r40");
    db0.execute_batch(&format!(
        "CREATE ROLE {role} NOLOGIN;
         {ITEMS}
         INSERT INTO r40_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         ALTER TABLE r40_items ENABLE ROW LEVEL SECURITY;
         CREATE POLICY r40_p ON r40_items USING (tenant = current_setting('app.tenant', true));
         GRANT SELECT ON r40_items TO {role};
         CREATE VIEW r40_inner AS SELECT id, tenant, v FROM r40_items;
         ALTER VIEW r40_inner OWNER TO {role};
         CREATE VIEW r40_mine AS SELECT id, tenant, v FROM r40_inner;"
    ))
    .await
    .expect("ddl");
    check_two(&url, "SET app.tenant = 'a'", "SET app.tenant = 'b'").await;
}

// Variants of 1 and 2 with a built-in setting (application_name) instead of app.tenant.

#[tokio::test]
async fn holds_view_with_user_operator_reading_application_name_not_shared() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(&format!(
        "{ITEMS}
         INSERT INTO r40_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         CREATE FUNCTION r40_is_tenant(text) RETURNS bool LANGUAGE sql STABLE
           AS $$ SELECT $1 = current_setting('application_name') $$;
         CREATE OPERATOR @@@ (RIGHTARG = text, FUNCTION = r40_is_tenant);
         CREATE VIEW r40_mine AS SELECT id, tenant, v FROM r40_items WHERE @@@ tenant;"
    ))
    .await
    .expect("ddl");
    check_two(
        &url,
        "SET application_name = 'a'",
        "SET application_name = 'b'",
    )
    .await;
}

#[tokio::test]
async fn holds_inner_view_owned_by_rls_subject_role_not_shared_across_application_names() {
    let (db0, url) = common::db_and_url().await;
    let role = ident("r40");
    db0.execute_batch(&format!(
        "CREATE ROLE {role} NOLOGIN;
         {ITEMS}
         INSERT INTO r40_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         ALTER TABLE r40_items ENABLE ROW LEVEL SECURITY;
         CREATE POLICY r40_p ON r40_items USING (tenant = current_setting('application_name'));
         GRANT SELECT ON r40_items TO {role};
         CREATE VIEW r40_inner AS SELECT id, tenant, v FROM r40_items;
         ALTER VIEW r40_inner OWNER TO {role};
         CREATE VIEW r40_mine AS SELECT id, tenant, v FROM r40_inner;"
    ))
    .await
    .expect("ddl");
    check_two(
        &url,
        "SET application_name = 'a'",
        "SET application_name = 'b'",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. A view filtering by the reading role through a pg_catalog function the text check
//    does not list (pg_has_role): its rows differ per role.

#[tokio::test]
async fn defect_view_filtered_by_pg_has_role_shared_across_roles() {
    let (db0, url) = common::db_and_url().await;
    let ra = ident("r40");
    let rb = ident("r40");
    db0.execute_batch(&format!(
        "CREATE ROLE {ra} NOLOGIN; CREATE ROLE {rb} NOLOGIN;
         {ITEMS}
         INSERT INTO r40_items VALUES (1, '{ra}', 'a-secret'), (2, '{rb}', 'b-row');
         CREATE VIEW r40_mine AS SELECT id, tenant, v FROM r40_items
           WHERE pg_has_role(tenant, 'MEMBER');
         GRANT SELECT ON r40_mine TO {ra}, {rb};"
    ))
    .await
    .expect("ddl");
    check_two(&url, &format!("SET ROLE {ra}"), &format!("SET ROLE {rb}")).await;
}

// ---------------------------------------------------------------------------------------
// 4. A view whose text renders a timestamptz (to_char): its rows depend on the session's
//    TimeZone, set per handle in after_connect.

#[tokio::test]
async fn defect_view_rendering_timestamptz_shared_across_time_zones() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE TABLE r40_ev (id int8 PRIMARY KEY, at timestamptz NOT NULL);
         INSERT INTO r40_ev VALUES (1, '2026-01-01 12:00:00+00');
         CREATE VIEW r40_mine AS SELECT id, 'x'::text AS tenant, to_char(at, 'HH24:MI') AS v
           FROM r40_ev;",
    )
    .await
    .expect("ddl");
    let [a_reads, a_direct, b_reads, b_direct] =
        two_sessions(&url, "SET TimeZone = 'UTC'", "SET TimeZone = 'Asia/Tokyo'").await;
    assert_eq!(a_reads, a_direct, "precondition");
    assert_eq!(a_direct.0.as_deref(), Some("12:00"), "precondition");
    assert_eq!(b_direct.0.as_deref(), Some("21:00"), "precondition");
    assert_eq!(b_reads, b_direct, "B is served A's rendering of the time");
}

// ---------------------------------------------------------------------------------------
// 5. A view reading a built-in setting through pg_settings (a pg_catalog view over a
//    pg_catalog function): no current_setting in any text.

#[tokio::test]
async fn defect_view_reading_pg_settings_shared_across_sessions() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(&format!(
        "{ITEMS}
         INSERT INTO r40_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         CREATE VIEW r40_mine AS SELECT i.id, i.tenant, i.v FROM r40_items i
           JOIN pg_settings s ON s.name = 'application_name' AND s.setting = i.tenant;"
    ))
    .await
    .expect("ddl");
    check_two(
        &url,
        "SET application_name = 'a'",
        "SET application_name = 'b'",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 6. A view reading a table by a name resolved at run time (to_regclass follows the
//    session's search path) — the handles' models name their schema.

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r40_pick", schema = "public", cache(ttl = 300))]
struct Pick {
    #[table(primary_key)]
    id: i64,
    v: String,
}

#[tokio::test]
async fn defect_view_using_to_regclass_shared_across_search_paths() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE SCHEMA r40_sa; CREATE SCHEMA r40_sb;
         CREATE TABLE r40_sa.marker (x int);
         CREATE TABLE r40_base (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO r40_base VALUES (1, 'secret-of-a');
         CREATE VIEW public.r40_pick AS SELECT id, v FROM r40_base
           WHERE to_regclass('marker') IS NOT NULL;",
    )
    .await
    .expect("ddl");
    let prefix = ident("r40");
    let sa = "SET search_path = r40_sa, public".to_owned();
    let sb = "SET search_path = r40_sb, public".to_owned();
    let a = Db::connect_with(with_setup(&url, &prefix, sa.clone()))
        .await
        .expect("a");
    let b = Db::connect_with(with_setup(&url, &prefix, sb.clone()))
        .await
        .expect("b");
    let ra = a.read::<Pick>(1).await.expect("ra").map(|r| r.v);
    assert_eq!(ra.as_deref(), Some("secret-of-a"), "precondition");
    let c = raw(&url).await;
    c.batch_execute(&sb).await.expect("sb");
    let direct_b = c
        .query_opt("SELECT v FROM public.r40_pick WHERE id = 1", &[])
        .await
        .expect("raw")
        .map(|r| r.get::<_, String>(0));
    assert_eq!(direct_b, None, "precondition");
    let rb = b.read::<Pick>(1).await.expect("rb").map(|r| r.v);
    assert_eq!(rb, direct_b, "B is served A's row");
}

// ---------------------------------------------------------------------------------------
// 7. TABLE_ACCESS names its operators and functions bare (round 38 qualified
//    SESSION_STATE's, not this one's): a session whose search path puts a schema of its
//    role's own before pg_catalog can forge `oid = oid`, so the check takes a role under
//    Row Level Security for the table's owner, and that role is served the rows its
//    policy hides. The model names its schema, as the README asks of such handles.

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r40_sec", schema = "public", cache(ttl = 300))]
struct Sec {
    #[table(primary_key)]
    id: i64,
    tenant: String,
    v: String,
}

#[tokio::test]
async fn defect_table_access_forged_by_operator_on_session_search_path() {
    let (db0, url) = common::db_and_url().await;
    let role = ident("r40");
    db0.execute_batch(&format!(
        "CREATE ROLE {role} NOLOGIN;
         CREATE TABLE public.r40_sec (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         INSERT INTO public.r40_sec VALUES (1, 'other', 'a-secret'), (2, '{role}', 'mine');
         ALTER TABLE public.r40_sec ENABLE ROW LEVEL SECURITY;
         CREATE POLICY r40_p ON public.r40_sec USING (tenant = current_user);
         GRANT SELECT ON public.r40_sec TO {role};
         CREATE SCHEMA r40_evil AUTHORIZATION {role};"
    ))
    .await
    .expect("ddl");
    // The tenant role's own objects, in its own schema.
    let c = raw(&url).await;
    c.batch_execute(&format!(
        "SET ROLE {role};
         CREATE FUNCTION r40_evil.eq(a oid, b oid) RETURNS bool LANGUAGE sql STABLE AS $$
           SELECT a OPERATOR(pg_catalog.=) b
               OR b OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r
                                          WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER) $$;
         CREATE OPERATOR r40_evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = r40_evil.eq);
         RESET ROLE;"
    ))
    .await
    .expect("tenant objects");
    let setup_b = format!("SET ROLE {role}; SET search_path = r40_evil, pg_catalog, public");
    let prefix = ident("r40");
    let a = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("a");
    let b = Db::connect_with(with_setup(&url, &prefix, setup_b.clone()))
        .await
        .expect("b");
    let a_read = a.read::<Sec>(1).await.expect("a read").map(|r| r.v);
    assert_eq!(a_read.as_deref(), Some("a-secret"), "precondition");
    let d = raw(&url).await;
    d.batch_execute(&setup_b).await.expect("setup b");
    let direct_b = d
        .query_opt("SELECT v FROM public.r40_sec WHERE id = 1", &[])
        .await
        .expect("raw")
        .map(|r| r.get::<_, String>(0));
    assert_eq!(
        direct_b, None,
        "precondition: the policy hides row 1 from the role"
    );
    let b_read = b.read::<Sec>(1).await.expect("b read").map(|r| r.v);
    assert_eq!(
        b_read, direct_b,
        "the role is served a row its policy hides"
    );
}

// ---------------------------------------------------------------------------------------
// Probes.

/// Whether handles with these after_connect setups share entries at all: A fills, the
/// row changes behind Tabula's back, B reads. (A stale read proves sharing.)
async fn shares(url: &str, setup: &str) -> bool {
    let c = raw(url).await;
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS r40_plain (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         DELETE FROM r40_plain; INSERT INTO r40_plain VALUES (1, 'a', 'old');",
    )
    .await
    .expect("ddl");
    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r40_plain", cache(ttl = 300))]
    struct Plain {
        #[table(primary_key)]
        id: i64,
        tenant: String,
        v: String,
    }
    let prefix = ident("r40");
    let a = Db::connect_with(with_setup(url, &prefix, setup.replace("TENANT", "a")))
        .await
        .expect("a");
    let b = Db::connect_with(with_setup(url, &prefix, setup.replace("TENANT", "b")))
        .await
        .expect("b");
    assert_eq!(
        a.read::<Plain>(1).await.expect("a").map(|r| r.v).as_deref(),
        Some("old")
    );
    c.batch_execute("UPDATE r40_plain SET v = 'new'")
        .await
        .expect("upd");
    b.read::<Plain>(1).await.expect("b").map(|r| r.v).as_deref() == Some("old")
}

/// Control for the two held view probes: app.tenant handles do share a plain table.
#[tokio::test]
async fn holds_app_tenant_handles_share_plain_table() {
    let (_db0, url) = common::db_and_url().await;
    assert!(
        shares(&url, "SET app.tenant = 'TENANT'").await,
        "no sharing at all"
    );
}

/// Control for the forge: the same role and search path without the forged operator
/// is not served the hidden row.
#[tokio::test]
async fn holds_rls_role_on_own_search_path_not_served_hidden_row() {
    let (db0, url) = common::db_and_url().await;
    let role = ident("r40");
    db0.execute_batch(&format!(
        "CREATE ROLE {role} NOLOGIN;
         CREATE TABLE public.r40_sec (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         INSERT INTO public.r40_sec VALUES (1, 'other', 'a-secret'), (2, '{role}', 'mine');
         ALTER TABLE public.r40_sec ENABLE ROW LEVEL SECURITY;
         CREATE POLICY r40_p ON public.r40_sec USING (tenant = current_user);
         GRANT SELECT ON public.r40_sec TO {role};
         CREATE SCHEMA r40_evil AUTHORIZATION {role};"
    ))
    .await
    .expect("ddl");
    let setup_b = format!("SET ROLE {role}; SET search_path = r40_evil, pg_catalog, public");
    let prefix = ident("r40");
    let a = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("a");
    let b = Db::connect_with(with_setup(&url, &prefix, setup_b))
        .await
        .expect("b");
    assert_eq!(
        a.read::<Sec>(1).await.expect("a").map(|r| r.v).as_deref(),
        Some("a-secret")
    );
    assert_eq!(b.read::<Sec>(1).await.expect("b").map(|r| r.v), None);
}

/// A view over a table-returning function outside pg_catalog is not shared.
#[tokio::test]
async fn holds_view_over_table_function_not_shared() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(&format!(
        "{ITEMS}
         INSERT INTO r40_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         CREATE FUNCTION r40_rows() RETURNS SETOF r40_items LANGUAGE sql STABLE
           AS $$ SELECT * FROM r40_items WHERE tenant = current_setting('app.tenant', true) $$;
         CREATE VIEW r40_mine AS SELECT id, tenant, v FROM r40_rows();"
    ))
    .await
    .expect("ddl");
    check_two(&url, "SET app.tenant = 'a'", "SET app.tenant = 'b'").await;
}

/// Plain table: cached reads agree across handles and follow writes.
#[tokio::test]
async fn holds_plain_table_cached_reads_follow_writes() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE TABLE r40_mine (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         INSERT INTO r40_mine VALUES (1, 'a', 'one'), (2, 'b', 'two');",
    )
    .await
    .expect("ddl");
    let [a_reads, a_direct, b_reads, b_direct] =
        two_sessions(&url, "SET app.tenant = 'a'", "SET app.tenant = 'b'").await;
    assert_eq!(a_reads, a_direct);
    assert_eq!(b_reads, b_direct);
    let prefix = ident("r40");
    let a = Db::connect_with(with_setup(&url, &prefix, "SET app.tenant = 'a'".into()))
        .await
        .expect("a");
    let b = Db::connect_with(with_setup(&url, &prefix, "SET app.tenant = 'b'".into()))
        .await
        .expect("b");
    assert_eq!(mine_reads(&a).await, (Some("one".into()), vec![1, 2]));
    assert_eq!(mine_reads(&b).await, (Some("one".into()), vec![1, 2]));
    a.execute_batch(
        "UPDATE r40_mine SET v = 'uno' WHERE id = 1; DELETE FROM r40_mine WHERE id = 2",
    )
    .await
    .expect("write");
    // Raw SQL writes are invisible to Tabula (README): invalidate as documented.
    a.invalidate_table::<Mine>().await;
    assert_eq!(mine_reads(&b).await, (Some("uno".into()), vec![1]));
}

/// A materialized view refreshed through execute_batch, then invalidate_table: the cached rows follow.
#[tokio::test]
async fn holds_matview_refresh_invalidates() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(&format!(
        "{ITEMS}
         INSERT INTO r40_items VALUES (1, 'a', 'before');
         CREATE MATERIALIZED VIEW r40_mine AS SELECT id, tenant, v FROM r40_items;"
    ))
    .await
    .expect("ddl");
    let prefix = ident("r40");
    let a = Db::connect_with(with_setup(&url, &prefix, "SET app.tenant = 'a'".into()))
        .await
        .expect("a");
    assert_eq!(mine_reads(&a).await, (Some("before".into()), vec![1]));
    a.execute_batch(
        "UPDATE r40_items SET v = 'after'; INSERT INTO r40_items VALUES (2, 'b', 'x');
         REFRESH MATERIALIZED VIEW r40_mine;",
    )
    .await
    .expect("refresh");
    a.invalidate_table::<Mine>().await;
    let d = direct(&url, "SELECT 1").await;
    assert_eq!(d, (Some("after".into()), vec![1, 2]), "precondition");
    assert_eq!(mine_reads(&a).await, d);
}
