//! Round 37: an outside attack on the round-36 fix (SessionNames learned at connect and
//! after the caller's own SQL that mentions "set"; fill checks). Every check compares
//! with what PostgreSQL answers to the handle's own session or to hand-written SQL over
//! a plain tokio_postgres connection set up the same way. Each `defect_*` test failed
//! on the code it attacked, 3 of 3 runs. The fix changed a behaviour some of them
//! assumed: a session change made by the caller's own SQL (`execute_batch`, `sql`,
//! `sql_rows`) no longer outlives the call — its connection is closed when let go, as
//! `with_client` resets its session — so they now check the invariant (the handle
//! reads what its session reads; no other handle is served another session's rows)
//! instead of the change persisting.

mod common;

use tabula::{Db, DbConfig, Table};

use common::fixtures::{ident, raw, redis};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r37_t", cache(ttl = 300))]
struct BareT {
    #[table(primary_key)]
    id: i64,
    v: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r37_rls", cache(ttl = 300))]
struct RlsT {
    #[table(primary_key)]
    id: i64,
    owner: String,
    v: String,
}

async fn bare_reads(db: &Db) -> (Option<String>, Vec<String>) {
    let read = db.read::<BareT>(1).await.expect("read").map(|r| r.v);
    let q = db
        .query::<BareT>()
        .filter(BareT::ID.eq(1))
        .cached(60)
        .all()
        .await
        .expect("cached query")
        .into_iter()
        .map(|r| r.v)
        .collect();
    (read, q)
}

fn both(v: &str) -> (Option<String>, Vec<String>) {
    (Some(v.to_owned()), vec![v.to_owned()])
}

/// public.r37_t (1,'public'), r37x.r37_t (1,'tenant'), and `r37_enter()`, a function
/// that moves the calling session onto `r37x, public` (session-scoped set_config).
async fn two_schemas(db0: &Db) {
    db0.execute_batch(
        "CREATE SCHEMA r37x;
         CREATE TABLE public.r37_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r37_t VALUES (1, 'public');
         CREATE TABLE r37x.r37_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO r37x.r37_t VALUES (1, 'tenant');
         CREATE FUNCTION r37_enter() RETURNS int LANGUAGE plpgsql AS $f$
           BEGIN PERFORM pg_catalog.set_config('search_path', 'r37x, public', false); RETURN 1; END $f$;",
    )
    .await
    .expect("ddl");
}

async fn session_v(db: &Db) -> String {
    db.sql_rows("SELECT v FROM r37_t WHERE id = 1", &[])
        .await
        .expect("sql")[0]
        .get::<_, String>(0)
}

// ---------------------------------------------------------------------------------------
// 1. A session change the caller's SQL makes without the word "set" in its text

async fn function_switch(
    via_batch: bool,
) -> (
    (Option<String>, Vec<String>),
    String,
    (Option<String>, Vec<String>),
) {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    if via_batch {
        db.execute_batch("SELECT r37_enter()").await.expect("enter");
    } else {
        db.sql_rows("SELECT r37_enter()", &[]).await.expect("enter");
    }
    let mine = bare_reads(&db).await;
    let own_session = session_v(&db).await;
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    let theirs = bare_reads(&other).await;
    (mine, own_session, theirs)
}

/// `sql_rows("SELECT r37_enter()")`: the function sets the session's search path; the
/// text has no "set", so `learn_names` never asks. The handle's next cached reads
/// resolve r37_t to r37x.r37_t and fill SHARED entries; a default handle is served the
/// tenant's row.
#[tokio::test]
async fn defect_function_setting_search_path_via_sql_rows_poisons_shared_entries() {
    let (mine, own_session, theirs) = function_switch(false).await;
    // Since the fix, the call's session change does not outlive the call (its
    // connection is closed when let go, as `with_client` resets its session): the
    // handle reads what its session reads, and nobody else is served the tenant's row.
    assert_eq!(
        mine,
        both(&own_session),
        "the handle reads what its session reads"
    );
    assert_eq!(theirs, both("public"), "another default handle");
}

/// Same through `execute_batch("SELECT r37_enter()")`.
#[tokio::test]
async fn defect_function_setting_search_path_via_execute_batch_poisons_shared_entries() {
    let (mine, own_session, theirs) = function_switch(true).await;
    // Since the fix, the call's session change does not outlive the call (its
    // connection is closed when let go, as `with_client` resets its session): the
    // handle reads what its session reads, and nobody else is served the tenant's row.
    assert_eq!(
        mine,
        both(&own_session),
        "the handle reads what its session reads"
    );
    assert_eq!(theirs, both("public"), "another default handle");
}

/// A DO block that builds its SET dynamically (no "set" in the text as sent).
#[tokio::test]
async fn defect_do_block_dynamic_search_path_poisons_shared_entries() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.execute_batch(
        "DO $$ BEGIN EXECUTE upper('s' || 'et') || ' search_path TO r37x, public'; END $$",
    )
    .await
    .expect("do");
    let own_session = session_v(&db).await;
    assert_eq!(
        bare_reads(&db).await,
        both(&own_session),
        "the handle reads its session's table"
    );
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    assert_eq!(
        bare_reads(&other).await,
        both("public"),
        "another default handle"
    );
}

// ---------------------------------------------------------------------------------------
// 2. A role change (SET ROLE / SET SESSION AUTHORIZATION) under Row Level Security

/// public.r37_rls with RLS: a role sees only rows it owns. Rows: 1 (postgres, 'admin'),
/// 2 (role, 'mine'). Returns (url, role).
async fn rls_setup(db0: &Db) -> String {
    let role = ident("r37");
    db0.execute_batch(&format!(
        "DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE TABLE public.r37_rls (id int8 PRIMARY KEY, owner text NOT NULL, v text NOT NULL);
         INSERT INTO public.r37_rls VALUES (1, 'postgres', 'admin'), (2, '{role}', 'mine');
         ALTER TABLE public.r37_rls ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_rows ON public.r37_rls USING (owner = current_user);
         GRANT SELECT ON public.r37_rls TO {role};"
    ))
    .await
    .expect("rls ddl");
    role
}

async fn rls_session_ids(db: &Db) -> Vec<i64> {
    db.sql_rows("SELECT id FROM r37_rls ORDER BY id", &[])
        .await
        .expect("sql")
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

async fn rls_cached_ids(db: &Db) -> Vec<i64> {
    db.query::<RlsT>()
        .order_by(RlsT::ID.asc())
        .cached(60)
        .all()
        .await
        .expect("cached")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// The superuser handle reads row 1 (cached, table access learned as "sees all"),
/// then `execute_batch("SET ROLE r")`: its session now sees only row 2, but the cached
/// read by key still serves row 1.
#[tokio::test]
async fn holds_set_role_under_rls_serves_hidden_row_from_cache() {
    let (db0, url) = common::db_and_url().await;
    let role = rls_setup(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    assert!(
        db.read::<RlsT>(1).await.expect("read").is_some(),
        "precondition"
    );
    db.execute_batch(&format!("SET ROLE {role}"))
        .await
        .expect("set role");
    // Since round 37's fix the role change does not outlive the call (its connection
    // is closed when let go): the handle reads what its session sees.
    let view = rls_session_ids(&db).await;
    assert_eq!(
        db.read::<RlsT>(1).await.expect("read").is_some(),
        view.contains(&1),
        "the handle reads what its session sees ({view:?})"
    );
}

/// The other direction: after SET ROLE the handle fills the shared cached query with
/// the role's filtered rows; a superuser handle is served [2] instead of [1, 2].
#[tokio::test]
async fn holds_set_role_under_rls_fills_shared_query_for_others() {
    let (db0, url) = common::db_and_url().await;
    let role = rls_setup(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    // Learns table access as the superuser (an uncached key).
    let _ = db.read::<RlsT>(99).await.expect("read");
    db.execute_batch(&format!("SET ROLE {role}"))
        .await
        .expect("set role");
    assert_eq!(
        rls_cached_ids(&db).await,
        rls_session_ids(&db).await,
        "the role's own view"
    );
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    let c = raw(&url).await;
    let expected: Vec<i64> = c
        .query("SELECT id FROM r37_rls ORDER BY id", &[])
        .await
        .expect("raw")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(expected, vec![1, 2], "precondition");
    assert_eq!(rls_cached_ids(&other).await, expected, "superuser handle");
}

/// Same with SET SESSION AUTHORIZATION.
#[tokio::test]
async fn holds_set_session_authorization_under_rls_serves_hidden_row() {
    let (db0, url) = common::db_and_url().await;
    let role = rls_setup(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    assert!(
        db.read::<RlsT>(1).await.expect("read").is_some(),
        "precondition"
    );
    db.execute_batch(&format!("SET SESSION AUTHORIZATION {role}"))
        .await
        .expect("set session authorization");
    let view = rls_session_ids(&db).await;
    assert_eq!(
        db.read::<RlsT>(1).await.expect("read").is_some(),
        view.contains(&1),
        "the handle reads what its session sees ({view:?})"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Transaction-scoped settings, RESET, DISCARD

/// SET LOCAL inside a transaction: reads in it see the tenant table, after it the
/// public one; other handles stay on public.
#[tokio::test]
async fn holds_set_local_in_transaction() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    assert_eq!(bare_reads(&db).await, both("public"), "precondition");
    let inside = db
        .transaction(|tx| async move {
            tx.execute_batch("SET LOCAL search_path TO r37x, public")
                .await?;
            Ok(tx.read::<BareT>(1).await?.map(|r| r.v))
        })
        .await
        .expect("tx");
    assert_eq!(inside.as_deref(), Some("tenant"));
    assert_eq!(session_v(&db).await, "public", "precondition");
    assert_eq!(bare_reads(&db).await, both("public"));
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    assert_eq!(bare_reads(&other).await, both("public"));
}

/// A plain (session) SET inside a transaction body outlives COMMIT on that pooled
/// connection: the handle's later reads must follow the session.
#[tokio::test]
async fn holds_session_set_inside_transaction_outlives_commit() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    assert_eq!(bare_reads(&db).await, both("public"), "precondition");
    db.transaction(|tx| async move {
        tx.execute_batch("SET search_path TO r37x, public").await?;
        Ok(())
    })
    .await
    .expect("tx");
    let own = session_v(&db).await;
    assert_eq!(
        bare_reads(&db).await,
        both(&own),
        "the handle follows its session"
    );
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    assert_eq!(bare_reads(&other).await, both("public"));
}

/// A function called inside a transaction body that SETs the session path (no "set"
/// in the text), committed: the session keeps it.
#[tokio::test]
async fn defect_function_setting_search_path_inside_transaction_poisons_shared() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.transaction(|tx| async move {
        tx.sql_rows("SELECT r37_enter()", &[]).await?;
        Ok(())
    })
    .await
    .expect("tx");
    // Since the fix the session change does not outlive the call that made it.
    let own = session_v(&db).await;
    assert_eq!(
        bare_reads(&db).await,
        both(&own),
        "the handle reads its session's table"
    );
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    assert_eq!(
        bare_reads(&other).await,
        both("public"),
        "another default handle"
    );
}

// ---------------------------------------------------------------------------------------
// 4. A role change through sql_rows (learned for names only; table access kept)

/// `sql_rows("SELECT set_config('role', $1, false)")` — SET ROLE by function: the text
/// has "set", the names are learned (still public), but the table access learned as the
/// superuser is kept (sql_rows does not forget it). The cached read by key serves a row
/// the session cannot see.
#[tokio::test]
async fn defect_sql_rows_set_config_role_under_rls_serves_hidden_row() {
    let (db0, url) = common::db_and_url().await;
    let role = rls_setup(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    assert!(
        db.read::<RlsT>(1).await.expect("read").is_some(),
        "precondition"
    );
    db.sql_rows("SELECT set_config('role', $1, false)", &[&role])
        .await
        .expect("set role");
    // Since the fix the role change does not outlive the call that made it.
    let view = rls_session_ids(&db).await;
    assert_eq!(
        db.read::<RlsT>(1).await.expect("read").is_some(),
        view.contains(&1),
        "the handle reads what its session sees ({view:?})"
    );
}

/// The fill direction: after the role change, the handle fills the shared query entry
/// with the role's filtered rows; a superuser handle is served them.
#[tokio::test]
async fn holds_sql_rows_set_config_role_under_rls_fills_shared_for_others() {
    let (db0, url) = common::db_and_url().await;
    let role = rls_setup(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    let _ = db.read::<RlsT>(99).await.expect("read");
    db.sql_rows("SELECT set_config('role', $1, false)", &[&role])
        .await
        .expect("set role");
    assert_eq!(
        rls_cached_ids(&db).await,
        rls_session_ids(&db).await,
        "the handle's own view"
    );
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    assert_eq!(rls_cached_ids(&other).await, vec![1, 2], "superuser handle");
}

/// Pool of 2: SET ROLE via execute_batch lands on one connection; the table access is
/// asked again on whichever connection comes next. The role's connection then fills
/// shared entries. Many distinct cached queries through the handle; every one, read
/// again through a superuser handle, must list both rows.
#[tokio::test]
async fn holds_set_role_on_one_pooled_connection_fills_shared_with_filtered_rows() {
    let (db0, url) = common::db_and_url().await;
    let role = rls_setup(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(2)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    // Two connections open.
    let (a, b) = tokio::join!(
        db.sql_rows("SELECT pg_sleep(0.2)", &[]),
        db.sql_rows("SELECT pg_sleep(0.2)", &[])
    );
    a.expect("a");
    b.expect("b");
    db.execute_batch(&format!("SET ROLE {role}"))
        .await
        .expect("set role");
    let mut mine = Vec::new();
    for i in 0..12i64 {
        let ids: Vec<i64> = db
            .query::<RlsT>()
            .filter(RlsT::ID.lt(100 + i))
            .order_by(RlsT::ID.asc())
            .cached(60)
            .all()
            .await
            .expect("cached")
            .into_iter()
            .map(|r| r.id)
            .collect();
        mine.push(ids);
    }
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    let mut theirs = Vec::new();
    for i in 0..12i64 {
        let ids: Vec<i64> = other
            .query::<RlsT>()
            .filter(RlsT::ID.lt(100 + i))
            .order_by(RlsT::ID.asc())
            .cached(60)
            .all()
            .await
            .expect("cached")
            .into_iter()
            .map(|r| r.id)
            .collect();
        theirs.push(ids);
    }
    assert!(
        theirs.iter().all(|ids| ids == &vec![1, 2]),
        "superuser handle served {theirs:?} (role handle saw {mine:?})"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Writes after a learned search path change: which names are invalidated

#[derive(Table, Debug, Clone, PartialEq)]
#[table(schema = "r37x", name = "r37_t", cache(ttl = 300))]
struct SchemaT {
    #[table(primary_key)]
    id: i64,
    v: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r37_other", cache(ttl = 300))]
struct Other {
    #[table(primary_key)]
    id: i64,
    v: String,
}

/// The handle read the catalog (a first write) on the default path, then moved its
/// session to `r37x, public` (learned: own). Its bare write to r37_t lands in
/// r37x.r37_t; a schema-qualified model's entry of that row (another handle) must go.
async fn moved_then_write(via_batch: bool) -> (Option<String>, Option<String>) {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    db0.execute_batch(
        "CREATE TABLE public.r37_other (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r37_other VALUES (1, 'o');",
    )
    .await
    .expect("ddl");
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.update::<Other>(
        1,
        OtherPatch {
            v: Some("w".into()),
        },
    )
    .await
    .expect("first write");
    let reader = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("reader");
    assert_eq!(
        reader
            .read::<SchemaT>(1)
            .await
            .expect("read")
            .map(|r| r.v)
            .as_deref(),
        Some("tenant"),
        "precondition"
    );
    if via_batch {
        db.execute_batch("SET search_path TO r37x, public")
            .await
            .expect("set");
    } else {
        db.sql_rows(
            "SELECT set_config('search_path', 'r37x, public', false)",
            &[],
        )
        .await
        .expect("set");
    }
    db.update::<BareT>(
        1,
        BareTPatch {
            v: Some("new".into()),
        },
    )
    .await
    .expect("bare write");
    let c = raw(&url).await;
    let direct: String = c
        .query_one("SELECT v FROM r37x.r37_t WHERE id = 1", &[])
        .await
        .expect("raw")
        .get(0);
    let after = reader.read::<SchemaT>(1).await.expect("read").map(|r| r.v);
    (Some(direct), after)
}

#[tokio::test]
async fn defect_bare_write_after_sql_rows_path_change_leaves_schema_model_stale() {
    let (direct, after) = moved_then_write(false).await;
    // Since the fix a path change does not outlive the call that made it, so the
    // write may land in public; wherever it landed, the entry agrees with the table.
    assert_eq!(
        after, direct,
        "schema-qualified model through another handle"
    );
}

#[tokio::test]
async fn holds_bare_write_after_execute_batch_path_change_refreshes_schema_model() {
    let (direct, after) = moved_then_write(true).await;
    // Since the fix a path change does not outlive the call that made it, so the
    // write may land in public; wherever it landed, the entry agrees with the table.
    assert_eq!(
        after, direct,
        "schema-qualified model through another handle"
    );
}

/// The absence direction: after the role change through sql_rows, the handle reads row
/// 1 by key for the first time (the role cannot see it) and fills a shared absence; a
/// superuser handle is then told row 1 does not exist.
#[tokio::test]
async fn defect_sql_rows_set_config_role_under_rls_fills_shared_absence() {
    let (db0, url) = common::db_and_url().await;
    let role = rls_setup(&db0).await;
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    let _ = db.read::<RlsT>(99).await.expect("read");
    db.sql_rows("SELECT set_config('role', $1, false)", &[&role])
        .await
        .expect("set role");
    let view = rls_session_ids(&db).await;
    assert_eq!(
        db.read::<RlsT>(1).await.expect("read").is_some(),
        view.contains(&1),
        "the handle reads what its session sees ({view:?})"
    );
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    assert_eq!(
        other
            .read::<RlsT>(1)
            .await
            .expect("read")
            .map(|r| r.v)
            .as_deref(),
        Some("admin"),
        "superuser handle"
    );
}

fn tenant_config(url: &str, prefix: &str) -> DbConfig {
    DbConfig::new(url.to_owned())
        .cache(redis(prefix))
        .after_connect(|client| {
            Box::pin(async move {
                client
                    .batch_execute("SET search_path TO r37x, public")
                    .await?;
                Ok(())
            })
        })
}

/// invalidate_table::<BareT>() through a tenant handle (path r37x): the schema-qualified
/// model's entries of r37x.r37_t in another handle go; a later raw change (not through
/// Tabula) is then seen.
#[tokio::test]
async fn holds_invalidate_table_from_tenant_reaches_schema_model() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r37");
    let reader = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("reader");
    assert_eq!(
        reader
            .read::<SchemaT>(1)
            .await
            .expect("read")
            .map(|r| r.v)
            .as_deref(),
        Some("tenant")
    );
    let c = raw(&url).await;
    c.batch_execute("UPDATE r37x.r37_t SET v = 'raw' WHERE id = 1")
        .await
        .expect("raw");
    let tenant = Db::connect_with(tenant_config(&url, &prefix))
        .await
        .expect("tenant");
    tenant.invalidate_table::<BareT>().await;
    assert_eq!(
        reader
            .read::<SchemaT>(1)
            .await
            .expect("read")
            .map(|r| r.v)
            .as_deref(),
        Some("raw")
    );
}

/// A tenant handle's bare delete of a parent in r37x cascades to a child in r37x that a
/// default handle caches through a schema-qualified model.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(schema = "r37x", name = "r37_child", cache(ttl = 300))]
struct Child {
    #[table(primary_key)]
    id: i64,
    parent: i64,
}

#[tokio::test]
async fn holds_tenant_bare_delete_cascade_reaches_schema_child() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    db0.execute_batch(
        "CREATE TABLE r37x.r37_child (id int8 PRIMARY KEY, parent int8 NOT NULL REFERENCES r37x.r37_t(id) ON DELETE CASCADE);
         INSERT INTO r37x.r37_child VALUES (10, 1);",
    )
    .await
    .expect("ddl");
    let prefix = ident("r37");
    let reader = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("reader");
    assert!(reader.read::<Child>(10).await.expect("read").is_some());
    let tenant = Db::connect_with(tenant_config(&url, &prefix))
        .await
        .expect("tenant");
    tenant.delete::<BareT>(1).await.expect("delete");
    let c = raw(&url).await;
    assert!(
        c.query_opt("SELECT 1 FROM r37x.r37_child WHERE id = 10", &[])
            .await
            .expect("raw")
            .is_none()
    );
    assert_eq!(reader.read::<Child>(10).await.expect("read"), None);
}

/// A transaction-scoped path (`set_config(..., true)` / `SET LOCAL`) inside a
/// transaction body, then a bare write in the same body: it lands in r37x.r37_t; the
/// schema-qualified model's entry (another handle) must go at COMMIT.
async fn local_path_then_write(via_batch: bool) -> (Option<String>, Option<String>) {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    db0.execute_batch(
        "CREATE TABLE public.r37_other (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r37_other VALUES (1, 'o');",
    )
    .await
    .expect("ddl");
    let prefix = ident("r37");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(2)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.update::<Other>(
        1,
        OtherPatch {
            v: Some("w".into()),
        },
    )
    .await
    .expect("first write");
    let reader = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("reader");
    assert_eq!(
        reader
            .read::<SchemaT>(1)
            .await
            .expect("read")
            .map(|r| r.v)
            .as_deref(),
        Some("tenant"),
        "precondition"
    );
    db.transaction(|tx| async move {
        if via_batch {
            tx.execute_batch("SET LOCAL search_path TO r37x, public")
                .await?;
        } else {
            tx.sql_rows(
                "SELECT set_config('search_path', 'r37x, public', true)",
                &[],
            )
            .await?;
        }
        tx.update::<BareT>(
            1,
            BareTPatch {
                v: Some("new".into()),
            },
        )
        .await?;
        Ok(())
    })
    .await
    .expect("tx");
    let c = raw(&url).await;
    let direct: String = c
        .query_one("SELECT v FROM r37x.r37_t WHERE id = 1", &[])
        .await
        .expect("raw")
        .get(0);
    let after = reader.read::<SchemaT>(1).await.expect("read").map(|r| r.v);
    (Some(direct), after)
}

#[tokio::test]
async fn defect_tx_local_path_via_set_config_bare_write_leaves_schema_model_stale() {
    let (direct, after) = local_path_then_write(false).await;
    assert_eq!(
        direct.as_deref(),
        Some("new"),
        "precondition: landed in r37x"
    );
    assert_eq!(
        after, direct,
        "schema-qualified model through another handle"
    );
}

#[tokio::test]
async fn defect_tx_set_local_bare_write_leaves_schema_model_stale() {
    let (direct, after) = local_path_then_write(true).await;
    assert_eq!(
        direct.as_deref(),
        Some("new"),
        "precondition: landed in r37x"
    );
    assert_eq!(
        after, direct,
        "schema-qualified model through another handle"
    );
}
