//! Round 36: an outside attack on the round-35 fixes (a handle with a search path of
//! its own never shares entries of bare-named models; invalidation names by rule;
//! a stale statement clears the connection's statement cache). Every check compares
//! with what PostgreSQL answers for hand-written SQL over a plain tokio_postgres
//! connection. Each `defect_*` test failed on the code it attacked, 3 of 3 runs, and
//! passes since its fix (how a handle's sessions find tables is learned on every
//! connection and after the caller's own SQL, and checked again before a fill) — but
//! one, ignored with its reason.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tabula::{Db, DbConfig, Table};

use common::fixtures::{ident, raw, redis};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r36_t", cache(ttl = 300))]
struct BareT {
    #[table(primary_key)]
    id: i64,
    v: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(schema = "r36x", name = "r36_t", cache(ttl = 300))]
struct SchemaT {
    #[table(primary_key)]
    id: i64,
    v: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r36_items", cache(ttl = 300))]
struct Item {
    #[table(primary_key)]
    id: i64,
    a: i32,
    b: String,
}

const ITEMS_DDL: &str = "
CREATE TABLE r36_items (id int8 PRIMARY KEY, a int4 NOT NULL, b text NOT NULL);
INSERT INTO r36_items (id, a, b) SELECT i, i % 7, 'x' || i FROM generate_series(1, 20) AS i;
";

/// A plain tokio_postgres connection: the independent expectation.
async fn raw_v(url: &str, sql: &str) -> Option<String> {
    let c = raw(url).await;
    c.query_opt(sql, &[]).await.expect("raw").map(|r| r.get(0))
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

// ---------------------------------------------------------------------------------------
// 1. "$user": the default search path is `"$user", public` (source "default")

/// A database with `public.r36_t` (1, 'public'), a login role and, when `with_schema`,
/// the role's own schema holding `r36_t` (1, 'tenant'). Returns (db0, url, role url, role).
async fn user_schema_setup(with_schema: bool) -> (Db, String, String, String) {
    let (db0, url) = common::db_and_url().await;
    let role = ident("r36");
    db0.execute_batch(&format!(
        "CREATE TABLE public.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r36_t VALUES (1, 'public');
         DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT ALL ON public.r36_t TO {role};"
    ))
    .await
    .expect("ddl");
    if with_schema {
        create_user_schema(&db0, &role).await;
    }
    let role_url = url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(role_url, url);
    (db0, url, role_url, role)
}

async fn create_user_schema(db0: &Db, role: &str) {
    db0.execute_batch(&format!(
        "CREATE SCHEMA {role} AUTHORIZATION {role};
         CREATE TABLE {role}.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO {role}.r36_t VALUES (1, 'tenant');
         GRANT ALL ON {role}.r36_t TO {role};"
    ))
    .await
    .expect("user schema");
}

/// A role with a schema of its own name finds `r36_t` in it through the DEFAULT
/// search path (`"$user", public`, pg_settings.source = 'default'), which
/// `PgConn::own_search_path` takes as shared. The superuser's handle fills the shared
/// entries with public.r36_t's row; the role's handle is then served it.
#[tokio::test]
async fn defect_user_schema_role_served_public_rows_from_cache() {
    let (_db0, url, role_url, _role) = user_schema_setup(true).await;
    let prefix = ident("r36");
    let admin = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("admin");
    assert_eq!(bare_reads(&admin).await, both("public"), "precondition");
    let user = Db::connect_with(DbConfig::new(role_url.clone()).cache(redis(&prefix)))
        .await
        .expect("user");
    let expected = raw_v(&role_url, "SELECT v FROM r36_t WHERE id = 1").await;
    assert_eq!(expected.as_deref(), Some("tenant"), "precondition: raw SQL");
    assert_eq!(bare_reads(&user).await, both("tenant"), "the role's handle");
}

/// The other direction: the role's handle fills the shared entries with its own
/// schema's row; the superuser's handle is served the tenant's row.
#[tokio::test]
async fn defect_user_schema_role_leaks_its_rows_to_other_handles() {
    let (_db0, url, role_url, _role) = user_schema_setup(true).await;
    let prefix = ident("r36");
    let user = Db::connect_with(DbConfig::new(role_url.clone()).cache(redis(&prefix)))
        .await
        .expect("user");
    let _ = bare_reads(&user).await;
    let admin = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("admin");
    let expected = raw_v(&url, "SELECT v FROM r36_t WHERE id = 1").await;
    assert_eq!(expected.as_deref(), Some("public"), "precondition: raw SQL");
    assert_eq!(
        bare_reads(&admin).await,
        both("public"),
        "the superuser's handle"
    );
}

/// `"$user"` schema created after the handle connected (a tenant provisioned at run
/// time): the bare name now means the new table to this handle's sessions, but the
/// entries it filled before still answer.
#[tokio::test]
async fn defect_user_schema_created_after_connect_keeps_serving_old_table() {
    let (db0, _url, role_url, role) = user_schema_setup(false).await;
    let prefix = ident("r36");
    let user = Db::connect_with(DbConfig::new(role_url.clone()).cache(redis(&prefix)))
        .await
        .expect("user");
    assert_eq!(bare_reads(&user).await, both("public"), "precondition");
    create_user_schema(&db0, &role).await;
    let expected = raw_v(&role_url, "SELECT v FROM r36_t WHERE id = 1").await;
    assert_eq!(expected.as_deref(), Some("tenant"), "precondition: raw SQL");
    let direct = user
        .sql_rows("SELECT v FROM r36_t WHERE id = 1", &[])
        .await
        .expect("sql")[0]
        .get::<_, String>(0);
    assert_eq!(direct, "tenant", "precondition: the handle's own session");
    // A fresh handle of the same role (no prepared statements; another process).
    let fresh = Db::connect_with(DbConfig::new(role_url.clone()).cache(redis(&prefix)))
        .await
        .expect("fresh");
    assert_eq!(bare_reads(&fresh).await, both("tenant"));
}

/// `SET ROLE` in after_connect: `"$user"` follows the current role.
#[tokio::test]
async fn defect_set_role_in_after_connect_shares_user_schema_rows() {
    let (_db0, url, _role_url, role) = user_schema_setup(true).await;
    let prefix = ident("r36");
    let admin = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("admin");
    assert_eq!(bare_reads(&admin).await, both("public"), "precondition");
    let r = role.clone();
    let as_role = Db::connect_with(
        DbConfig::new(url.clone())
            .cache(redis(&prefix))
            .after_connect(move |client| {
                let r = r.clone();
                Box::pin(async move {
                    client.batch_execute(&format!("SET ROLE {r}")).await?;
                    Ok(())
                })
            }),
    )
    .await
    .expect("as role");
    let c = raw(&url).await;
    c.batch_execute(&format!("SET ROLE {role}"))
        .await
        .expect("ok");
    let expected: String = c
        .query_one("SELECT v FROM r36_t WHERE id = 1", &[])
        .await
        .expect("ok")
        .get(0);
    assert_eq!(expected, "tenant", "precondition: raw SQL");
    assert_eq!(bare_reads(&as_role).await, both("tenant"));
}

// ---------------------------------------------------------------------------------------
// 2. Session search path changed by the user's own SQL

async fn two_schemas(db0: &Db) {
    db0.execute_batch(
        "CREATE SCHEMA r36x;
         CREATE TABLE public.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r36_t VALUES (1, 'public');
         CREATE TABLE r36x.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO r36x.r36_t VALUES (1, 'tenant');",
    )
    .await
    .expect("ddl");
}

/// `execute_batch("SET search_path …")` on a pooled connection: the session keeps it
/// (no reset after execute_batch), the handle still counts as sharing, so its next
/// cached bare read resolves to r36x and fills the SHARED entries; another handle on
/// the default path is then served r36x's row.
#[tokio::test]
async fn defect_execute_batch_set_search_path_poisons_shared_entries() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r36");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.execute_batch("SET search_path TO r36x, public")
        .await
        .expect("set");
    let _ = bare_reads(&db).await;
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    let expected = raw_v(&url, "SELECT v FROM r36_t WHERE id = 1").await;
    assert_eq!(expected.as_deref(), Some("public"));
    assert_eq!(
        bare_reads(&other).await,
        both("public"),
        "another default handle"
    );
}

/// Same through `sql_rows("SELECT set_config('search_path', …, false)")`.
#[tokio::test]
async fn defect_sql_set_config_search_path_poisons_shared_entries() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r36");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.sql_rows(
        "SELECT set_config('search_path', 'r36x, public', false)",
        &[],
    )
    .await
    .expect("set_config");
    let _ = bare_reads(&db).await;
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    assert_eq!(
        bare_reads(&other).await,
        both("public"),
        "another default handle"
    );
}

/// Control: with_client resets the session (DISCARD ALL).
#[tokio::test]
async fn holds_with_client_set_search_path_is_reset() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r36");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.with_client(async |c| {
        c.batch_execute("SET search_path TO r36x, public").await?;
        Ok(())
    })
    .await
    .expect("set");
    assert_eq!(bare_reads(&db).await, both("public"));
}

/// Control: options=-csearch_path in the URL (source "client") is the handle's own.
#[tokio::test]
async fn holds_url_options_search_path_is_own() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r36");
    let sep = if url.contains('?') { '&' } else { '?' };
    let tenant_url = format!("{url}{sep}options=-csearch_path%3Dr36x%2Cpublic");
    let admin = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("admin");
    assert_eq!(bare_reads(&admin).await, both("public"));
    let tenant = Db::connect_with(DbConfig::new(tenant_url.clone()).cache(redis(&prefix)))
        .await
        .expect("tenant");
    let expected = raw_v(&tenant_url, "SELECT v FROM r36_t WHERE id = 1").await;
    assert_eq!(expected.as_deref(), Some("tenant"), "precondition");
    assert_eq!(bare_reads(&tenant).await, both("tenant"));
}

// ---------------------------------------------------------------------------------------
// 3. Invalidation names: a bare write on a tenant handle, schema-spelled readers

fn tenant_config(url: &str, prefix: &str) -> DbConfig {
    DbConfig::new(url)
        .cache(redis(prefix))
        .after_connect(|client| {
            Box::pin(async move {
                client
                    .batch_execute("SET search_path TO r36x, public")
                    .await?;
                Ok(())
            })
        })
}

/// `late`: r36x.r36_t is created after the tenant handle read the catalog.
async fn tenant_bare_write(late: bool) -> Option<String> {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE SCHEMA r36x;
         CREATE TABLE public.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r36_t VALUES (1, 'public');",
    )
    .await
    .expect("ddl");
    db0.execute_batch(ITEMS_DDL).await.expect("items");
    let table = "CREATE TABLE r36x.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
                 INSERT INTO r36x.r36_t VALUES (1, 'old');";
    if !late {
        db0.execute_batch(table).await.expect("table");
    }
    let prefix = ident("r36");
    let tenant = Db::connect_with(tenant_config(&url, &prefix))
        .await
        .expect("tenant");
    // A first write (to another table, so no statement on r36_t is prepared yet):
    // the handle reads the catalog (cascades, aliases).
    tenant
        .update::<Item>(
            1,
            ItemPatch {
                b: Some("w".into()),
                ..Default::default()
            },
        )
        .await
        .expect("first write");
    if late {
        db0.execute_batch(table).await.expect("table");
    }
    let reader = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("reader");
    let before = reader.read::<SchemaT>(1).await.expect("read").map(|r| r.v);
    assert!(before.is_some(), "precondition");
    tenant
        .update::<BareT>(
            1,
            BareTPatch {
                v: Some("new".into()),
            },
        )
        .await
        .expect("bare write on the tenant handle");
    let direct = raw_v(&url, "SELECT v FROM r36x.r36_t WHERE id = 1").await;
    assert_eq!(
        direct.as_deref(),
        Some("new"),
        "precondition: write landed in r36x"
    );
    reader.read::<SchemaT>(1).await.expect("read").map(|r| r.v)
}

#[tokio::test]
async fn defect_tenant_bare_write_leaves_schema_model_stale_for_late_table() {
    assert_eq!(tenant_bare_write(true).await.as_deref(), Some("new"));
}

#[tokio::test]
async fn holds_tenant_bare_write_invalidates_schema_model() {
    assert_eq!(tenant_bare_write(false).await.as_deref(), Some("new"));
}

// ---------------------------------------------------------------------------------------
// 4. Stale statements

async fn stream_ids(db: &Db) -> Result<Vec<i64>, String> {
    let mut s = db
        .query::<Item>()
        .filter(Item::A.eq(1))
        .stream()
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        out.push(r.map_err(|e| e.to_string())?.id);
    }
    out.sort_unstable();
    Ok(out)
}

/// A stream whose statement an ALTER TABLE made stale: `query()::stream` never calls
/// `forget_stale_plan`, so the stale statement stays in the connection's cache and
/// every later stream of that query fails ("cached plan must not change result type").
#[tokio::test]
async fn defect_stream_stale_statement_fails_again_and_again() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(ITEMS_DDL).await.expect("items");
    let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
        .await
        .expect("db");
    let c = raw(&url).await;
    let expected: Vec<i64> = c
        .query("SELECT id FROM r36_items WHERE a = 1 ORDER BY id", &[])
        .await
        .expect("ok")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stream_ids(&db).await, Ok(expected.clone()), "precondition");
    c.batch_execute("ALTER TABLE r36_items ALTER COLUMN b TYPE varchar(50)")
        .await
        .expect("ok");
    let first = stream_ids(&db).await;
    let second = stream_ids(&db).await;
    let third = stream_ids(&db).await;
    assert_eq!(
        (first, second, third),
        (Ok(expected.clone()), Ok(expected.clone()), Ok(expected)),
        "streams after ALTER TABLE"
    );
}

/// A table dropped and recreated with its columns in another order (same types):
/// reads must still answer each column by its name.
#[tokio::test]
async fn holds_recreated_table_other_column_order() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE TABLE r36_items (id int8 PRIMARY KEY, a int4 NOT NULL, b text NOT NULL);
         INSERT INTO r36_items VALUES (1, 1, 'one');",
    )
    .await
    .expect("ddl");
    let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
        .await
        .expect("db");
    let q = |db: Db| async move {
        db.query::<Item>()
            .filter(Item::ID.eq(1))
            .all()
            .await
            .map(|v| v.into_iter().map(|i| (i.a, i.b)).collect::<Vec<_>>())
            .map_err(|e| e.to_string())
    };
    assert_eq!(q(db.clone()).await, Ok(vec![(1, "one".to_owned())]));
    let c = raw(&url).await;
    c.batch_execute(
        "DROP TABLE r36_items;
         CREATE TABLE r36_items (b text NOT NULL, a int4 NOT NULL, id int8 PRIMARY KEY);
         INSERT INTO r36_items (id, a, b) VALUES (1, 2, 'two');",
    )
    .await
    .expect("ok");
    assert_eq!(q(db.clone()).await, Ok(vec![(2, "two".to_owned())]));
    let stream = db.query::<Item>().stream().await;
    let mut got = Vec::new();
    if let Ok(mut s) = stream {
        while let Some(r) = s.next().await {
            got.push(r.map(|i| (i.id, i.a, i.b)).map_err(|e| e.to_string()));
        }
    }
    assert_eq!(got, vec![Ok((1, 2, "two".to_owned()))]);
}

// ---------------------------------------------------------------------------------------
// 5. `#[cached]` memos over a tenant handle

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r36_m", cache(ttl = 300))]
struct BareM {
    #[table(primary_key)]
    id: i64,
    v: String,
}

struct Svc {
    db: Db,
}

impl Svc {
    #[tabula::cached(ttl = 300, tables(BareM))]
    async fn bare_value(&self, id: i64) -> tabula::Result<Option<String>> {
        Ok(self.db.read_uncached::<BareM>(id).await?.map(|r| r.v))
    }
}

fn install_memo_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        redis(&format!("r36memo{}", std::process::id())).install_global();
    });
}

/// A memo whose body reads a bare-named model through a handle whose search path is
/// its own (the README: such handles never share entries of bare-named models; a
/// user-scoped handle's memo body is bypassed automatically, `memo::note_scoped`).
/// The tenant's answer is served to the default handle.
#[tokio::test]
async fn defect_memo_over_tenant_handle_serves_tenant_rows_to_default_handle() {
    install_memo_cache();
    let (db0, url) = common::db_and_url().await;
    let id: i64 = 1;
    db0.execute_batch(&format!(
        "CREATE SCHEMA r36x;
         CREATE TABLE public.r36_m (id int8 PRIMARY KEY, v text NOT NULL);
         CREATE TABLE r36x.r36_m (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r36_m VALUES ({id}, 'public');
         INSERT INTO r36x.r36_m VALUES ({id}, 'tenant');"
    ))
    .await
    .expect("rows");
    let tenant = Svc {
        db: Db::connect_with(tenant_config(&url, &ident("r36")))
            .await
            .expect("tenant"),
    };
    let plain = Svc {
        db: Db::connect_with(DbConfig::new(url.clone()).cache(redis(&ident("r36"))))
            .await
            .expect("plain"),
    };
    assert_eq!(
        tenant.bare_value(id).await.expect("tenant").as_deref(),
        Some("tenant"),
        "precondition"
    );
    let expected = raw_v(&url, &format!("SELECT v FROM r36_m WHERE id = {id}")).await;
    assert_eq!(expected.as_deref(), Some("public"));
    assert_eq!(
        plain.bare_value(id).await.expect("plain").as_deref(),
        Some("public"),
        "the default handle's memo call"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Prepared statements keep the table they were first prepared against

/// A tenant handle (search path `r36x, public`, no cache at all) prepared its
/// statements on `r36_t` while only `public.r36_t` existed. Once `r36x.r36_t` is
/// created, hand-written SQL in the same session means r36x's table, but Tabula's
/// cached prepared statements keep PostgreSQL's plan on public.r36_t (a new table
/// that shadows along the search path does not invalidate a plan): reads answer the
/// old table's row and an update lands in the wrong table.
#[ignore = "open, documented (README, Caching): a prepared statement keeps the table its \
            bare name meant when it was prepared, as PostgreSQL's plans do; a table created \
            later earlier on the search path is not seen until the connection is replaced"]
#[tokio::test]
async fn defect_prepared_statement_keeps_shadowed_table_after_schema_created() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE SCHEMA r36x;
         CREATE TABLE public.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r36_t VALUES (1, 'public');",
    )
    .await
    .expect("ddl");
    let tenant = Db::connect_with(DbConfig::new(&url).pool_size(1).after_connect(|client| {
        Box::pin(async move {
            client
                .batch_execute("SET search_path TO r36x, public")
                .await?;
            Ok(())
        })
    }))
    .await
    .expect("tenant");
    let read = |db: Db| async move {
        db.read_uncached::<BareT>(1)
            .await
            .expect("read")
            .map(|r| r.v)
    };
    assert_eq!(read(tenant.clone()).await.as_deref(), Some("public"));
    tenant
        .update::<BareT>(
            1,
            BareTPatch {
                v: Some("public2".into()),
            },
        )
        .await
        .expect("first update");
    db0.execute_batch(
        "CREATE TABLE r36x.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO r36x.r36_t VALUES (1, 'tenant');",
    )
    .await
    .expect("late table");
    let direct = tenant
        .sql_rows("SELECT v FROM r36_t WHERE id = 1", &[])
        .await
        .expect("sql")[0]
        .get::<_, String>(0);
    assert_eq!(
        direct, "tenant",
        "precondition: the session's own resolution"
    );
    let after_read = read(tenant.clone()).await;
    tenant
        .update::<BareT>(
            1,
            BareTPatch {
                v: Some("new".into()),
            },
        )
        .await
        .expect("second update");
    let c = raw(&url).await;
    let public: String = c
        .query_one("SELECT v FROM public.r36_t WHERE id = 1", &[])
        .await
        .expect("ok")
        .get(0);
    let tenant_v: String = c
        .query_one("SELECT v FROM r36x.r36_t WHERE id = 1", &[])
        .await
        .expect("ok")
        .get(0);
    assert_eq!(
        (after_read.as_deref(), public.as_str(), tenant_v.as_str()),
        (Some("tenant"), "public2", "new"),
        "(read, public.r36_t, r36x.r36_t) after r36x.r36_t was created"
    );
}

// ---------------------------------------------------------------------------------------
// 7. More stale statements

/// `create_many` after a column type change (RETURNING's result type changed).
#[tokio::test]
async fn holds_create_many_after_column_type_change() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(ITEMS_DDL).await.expect("items");
    let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
        .await
        .expect("db");
    let mk = |id: i64| NewItem {
        id,
        a: 1,
        b: format!("n{id}"),
    };
    db.create_many(vec![mk(100), mk(101)]).await.expect("first");
    db0.execute_batch("ALTER TABLE r36_items ALTER COLUMN b TYPE varchar(50)")
        .await
        .expect("alter");
    let second = db
        .create_many(vec![mk(102), mk(103)])
        .await
        .map(|v| v.len());
    let n: i64 = raw(&url)
        .await
        .query_one("SELECT count(*) FROM r36_items WHERE id >= 100", &[])
        .await
        .expect("ok")
        .get(0);
    assert_eq!((second.map_err(|e| e.to_string()), n), (Ok(2), 4));
}

/// A transaction body on a pool of 3 whose every connection holds a statement made
/// stale: the body may run again at most once per connection (README); the
/// transaction must succeed and its effect land once.
#[tokio::test]
async fn holds_transaction_stale_on_every_connection() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(ITEMS_DDL).await.expect("items");
    let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(3))
        .await
        .expect("db");
    // Warm three connections with the statement (three at once).
    let q = |db: Db| async move {
        db.transaction(|tx| async move {
            let r = tx.query::<Item>().filter(Item::A.eq(2)).all().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(r.len())
        })
        .await
    };
    let (a, b, c) = tokio::join!(q(db.clone()), q(db.clone()), q(db.clone()));
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    db0.execute_batch("ALTER TABLE r36_items ALTER COLUMN b TYPE varchar(50)")
        .await
        .expect("alter");
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = runs.clone();
    let out = db
        .transaction(move |tx| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                let n = tx.query::<Item>().filter(Item::A.eq(2)).all().await?.len();
                tx.update::<Item>(
                    1,
                    ItemPatch {
                        a: Some(99),
                        ..Default::default()
                    },
                )
                .await?;
                Ok(n)
            }
        })
        .await
        .map_err(|e| e.to_string());
    let a1: i32 = raw(&url)
        .await
        .query_one("SELECT a FROM r36_items WHERE id = 1", &[])
        .await
        .expect("ok")
        .get(0);
    assert_eq!(out, Ok(3));
    assert_eq!(a1, 99);
    assert!(
        runs.load(Ordering::SeqCst) <= 4,
        "runs {}",
        runs.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------------------
// 8. A role's search path set after the handle connected

/// `own_search_path` is asked once, of the first connection. `ALTER ROLE … SET
/// search_path` afterwards (a tenant provisioned at run time) applies to every new
/// session of the role — a connection the pool opens later — while the handle still
/// counts as sharing: its bare reads fill the shared entries with the tenant's rows.
#[tokio::test]
async fn defect_alter_role_search_path_after_connect_poisons_shared_entries() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let role = ident("r36");
    db0.execute_batch(&format!(
        "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT USAGE ON SCHEMA r36x TO {role};
         GRANT ALL ON public.r36_t, r36x.r36_t TO {role};"
    ))
    .await
    .expect("role");
    let role_url = url.replacen("postgres@", &format!("{role}@"), 1);
    let prefix = ident("r36");
    let user = Db::connect_with(DbConfig::new(role_url.clone()).cache(redis(&prefix)))
        .await
        .expect("user");
    db0.execute_batch(&format!(
        "ALTER ROLE {role} SET search_path TO r36x, public;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';"
    ))
    .await
    .expect("alter role");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(
            user.read::<BareT>(1)
                .await
                .map(|r| r.map(|r| r.v))
                .map_err(|e| e.to_string()),
        );
    }
    let expected_user = raw_v(&role_url, "SELECT v FROM r36_t WHERE id = 1").await;
    assert_eq!(
        expected_user.as_deref(),
        Some("tenant"),
        "precondition: raw SQL as the role"
    );
    let admin = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("admin");
    assert_eq!(
        bare_reads(&admin).await,
        both("public"),
        "the superuser's handle after the role's reads {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 9. Spellings: public-qualified vs bare, invalidate / invalidate_table / cascades / tx

#[derive(Table, Debug, Clone, PartialEq)]
#[table(schema = "public", name = "r36_t", cache(ttl = 300))]
struct PubT {
    #[table(primary_key)]
    id: i64,
    v: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r36_p", cache(ttl = 300))]
struct Parent {
    #[table(primary_key)]
    id: i64,
    v: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(schema = "public", name = "r36_c", cache(ttl = 300))]
struct PubChild {
    #[table(primary_key)]
    id: i64,
    p: i64,
}

async fn pub_setup() -> (Db, String, Db) {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE TABLE public.r36_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r36_t VALUES (1, 'old');
         CREATE TABLE r36_p (id int8 PRIMARY KEY, v text NOT NULL);
         CREATE TABLE r36_c (id int8 PRIMARY KEY, p int8 NOT NULL REFERENCES r36_p ON DELETE CASCADE);
         INSERT INTO r36_p VALUES (1, 'p'); INSERT INTO r36_c VALUES (1, 1);",
    )
    .await
    .expect("ddl");
    let db = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&ident("r36"))))
        .await
        .expect("db");
    (db0, url, db)
}

#[tokio::test]
async fn holds_invalidate_table_through_public_spelling_drops_bare_entries() {
    let (_db0, url, db) = pub_setup().await;
    assert_eq!(bare_reads(&db).await, both("old"));
    raw(&url)
        .await
        .batch_execute("UPDATE public.r36_t SET v = 'new' WHERE id = 1")
        .await
        .expect("ok");
    db.invalidate_table::<PubT>().await;
    assert_eq!(bare_reads(&db).await, both("new"));
}

#[tokio::test]
async fn holds_invalidate_keys_through_bare_spelling_drops_public_entries() {
    let (_db0, url, db) = pub_setup().await;
    assert_eq!(
        db.read::<PubT>(1)
            .await
            .expect("ok")
            .map(|r| r.v)
            .as_deref(),
        Some("old")
    );
    raw(&url)
        .await
        .batch_execute("UPDATE public.r36_t SET v = 'new' WHERE id = 1")
        .await
        .expect("ok");
    db.invalidate::<BareT>(&[1]).await;
    assert_eq!(
        db.read::<PubT>(1)
            .await
            .expect("ok")
            .map(|r| r.v)
            .as_deref(),
        Some("new")
    );
}

#[tokio::test]
async fn holds_tx_write_through_public_spelling_refreshes_bare() {
    let (_db0, _url, db) = pub_setup().await;
    assert_eq!(bare_reads(&db).await, both("old"));
    db.transaction(|tx| async move {
        tx.update::<PubT>(
            1,
            PubTPatch {
                v: Some("new".into()),
            },
        )
        .await?;
        Ok(())
    })
    .await
    .expect("tx");
    assert_eq!(bare_reads(&db).await, both("new"));
}

#[tokio::test]
async fn holds_cascade_delete_through_bare_parent_refreshes_public_child() {
    let (_db0, _url, db) = pub_setup().await;
    assert!(db.read::<PubChild>(1).await.expect("ok").is_some());
    let cq = db.query::<PubChild>().cached(60).count().await.expect("ok");
    assert_eq!(cq, 1);
    db.delete::<Parent>(1).await.expect("delete parent");
    assert_eq!(db.read::<PubChild>(1).await.expect("ok"), None);
    assert_eq!(
        db.query::<PubChild>().cached(60).count().await.expect("ok"),
        0
    );
}

// ---------------------------------------------------------------------------------------
// 10. A stale statement in a user-scoped call

#[tokio::test]
async fn holds_user_scoped_read_after_stale_statement() {
    let (db0, url) = common::db_and_url().await;
    let alice = uuid::Uuid::new_v4();
    db0.create(common::NewProfile {
        user_id: alice,
        username: "alice".into(),
        avatar_url: None,
    })
    .await
    .expect("profile");
    let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
        .await
        .expect("db");
    let scoped = db.as_user(alice);
    let names = |s: Db| async move {
        s.query::<common::Profile>()
            .select(common::Profile::USERNAME)
            .all()
            .await
            .map_err(|e| e.to_string())
    };
    assert_eq!(names(scoped.clone()).await, Ok(vec!["alice".to_owned()]));
    raw(&url)
        .await
        .batch_execute("ALTER TABLE profiles ALTER COLUMN username TYPE varchar(200)")
        .await
        .expect("ok");
    let first = names(scoped.clone()).await;
    let second = names(scoped.clone()).await;
    assert_eq!(
        (first, second),
        (Ok(vec!["alice".to_owned()]), Ok(vec!["alice".to_owned()]))
    );
}

// ---------------------------------------------------------------------------------------
// 11. ALTER DATABASE … SET search_path while handles are connected

/// Source "database" counts as shared; but a session opened before `ALTER DATABASE …
/// SET search_path` keeps the old path, one opened after has the new one: two handles
/// both "sharing", whose bare names mean different tables.
#[tokio::test]
async fn defect_alter_database_search_path_splits_sharing_handles() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let dbname: String = db0
        .sql_rows("SELECT current_database()::text", &[])
        .await
        .expect("ok")[0]
        .get(0);
    let prefix = ident("r36");
    let before = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("before");
    db0.execute_batch(&format!(
        "ALTER DATABASE \"{dbname}\" SET search_path TO r36x, public"
    ))
    .await
    .expect("alter database");
    assert_eq!(
        bare_reads(&before).await,
        both("public"),
        "precondition: the old session"
    );
    let after = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("after");
    let expected = raw_v(&url, "SELECT v FROM r36_t WHERE id = 1").await;
    assert_eq!(
        expected.as_deref(),
        Some("tenant"),
        "precondition: a new session"
    );
    assert_eq!(
        bare_reads(&after).await,
        both("tenant"),
        "a handle connected after"
    );
}

// ---------------------------------------------------------------------------------------
// 12. A stale statement met by a stream inside a transaction

/// The stream's stale statement is never forgotten (`Query::stream` does not call
/// `forget_stale_plan`, runtime/src/query/mod.rs:832-835), so every rerun of the body
/// meets it again: the transaction fails although rerunning is what the README
/// promises for stale statements.
#[tokio::test]
async fn defect_transaction_stream_stale_statement_fails() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(ITEMS_DDL).await.expect("items");
    let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
        .await
        .expect("db");
    let run = || {
        db.transaction(|tx| async move {
            let mut s = tx.query::<Item>().filter(Item::A.eq(1)).stream().await?;
            let mut n = 0;
            while let Some(r) = s.next().await {
                r?;
                n += 1;
            }
            drop(s);
            Ok(n)
        })
    };
    assert_eq!(
        run().await.map_err(|e| e.to_string()),
        Ok(3),
        "precondition"
    );
    raw(&url)
        .await
        .batch_execute("ALTER TABLE r36_items ALTER COLUMN b TYPE varchar(50)")
        .await
        .expect("ok");
    assert_eq!(run().await.map_err(|e| e.to_string()), Ok(3));
}

// ---------------------------------------------------------------------------------------
// 13. Cached count / exists / page on a tenant handle (own search path)

#[tokio::test]
async fn holds_tenant_cached_count_exists_page_not_shared() {
    let (db0, url) = common::db_and_url().await;
    two_schemas(&db0).await;
    let prefix = ident("r36");
    let admin = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("admin");
    let tenant = Db::connect_with(tenant_config(&url, &prefix))
        .await
        .expect("tenant");
    let probe = |db: Db| async move {
        let c = db
            .query::<BareT>()
            .filter(BareT::V.eq("tenant".to_owned()))
            .cached(60)
            .count()
            .await
            .expect("ok");
        let e = db
            .query::<BareT>()
            .filter(BareT::V.eq("tenant".to_owned()))
            .cached(60)
            .exists()
            .await
            .expect("ok");
        let p: Vec<String> = db
            .query::<BareT>()
            .order_by(BareT::ID.asc())
            .cached(60)
            .page(10, None)
            .await
            .expect("ok")
            .items
            .into_iter()
            .map(|r| r.v)
            .collect();
        (c, e, p)
    };
    assert_eq!(
        probe(admin.clone()).await,
        (0, false, vec!["public".to_owned()])
    );
    assert_eq!(
        probe(tenant.clone()).await,
        (1, true, vec!["tenant".to_owned()])
    );
    assert_eq!(probe(admin).await, (0, false, vec!["public".to_owned()]));
}
