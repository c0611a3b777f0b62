//! Round 38: an outside attack on SessionNames / learn_names (round 37's fix) and the
//! cache contract. Each check compares with what PostgreSQL answers over a plain
//! tokio_postgres connection (or the handle's own session). Each `defect_*` test
//! failed on the code it attacked, 3 of 3 runs, and passes since its fix: the check
//! after the caller's own SQL sees temporary schemas and open or failed transaction
//! blocks, names every function and operator through `pg_catalog`, and counts as in
//! flight; `with_client` inside a transaction learns the schemas it set; a view whose
//! definition reads session state is never shared.

mod common;

use std::time::Duration;

use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

use common::fixtures::{ident, raw, redis};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r38_t", cache(ttl = 300))]
struct BareT {
    #[table(primary_key)]
    id: i64,
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

async fn setup(db0: &Db) {
    db0.execute_batch(
        "CREATE SCHEMA r38s;
         CREATE TABLE public.r38_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r38_t VALUES (1, 'public');
         CREATE TABLE r38s.r38_t (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO r38s.r38_t VALUES (1, 'tenant');",
    )
    .await
    .expect("ddl");
}

async fn raw_public(url: &str) -> String {
    raw(url)
        .await
        .query_one("SELECT v FROM r38_t WHERE id = 1", &[])
        .await
        .expect("raw")
        .get(0)
}

// ---------------------------------------------------------------------------------------
// 1. A temporary table shadows the bare name: pg_temp is searched first, yet neither the
//    search path setting nor current_schemas(false) nor the role changes.

async fn temp_table_case(
    how: &str,
) -> (
    (Option<String>, Vec<String>),
    (Option<String>, Vec<String>),
    String,
) {
    let (db0, url) = common::db_and_url().await;
    setup(&db0).await;
    let prefix = ident("r38");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    match how {
        "batch" => db
            .execute_batch(
                "CREATE TEMP TABLE r38_t (id int8 PRIMARY KEY, v text NOT NULL);
                 INSERT INTO r38_t VALUES (1, 'temp');",
            )
            .await
            .expect("temp"),
        _ => {
            db.sql_rows(
                "CREATE TEMP TABLE r38_t AS SELECT 1::int8 AS id, 'temp'::text AS v",
                &[],
            )
            .await
            .expect("temp");
        }
    }
    let mine = bare_reads(&db).await;
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    let theirs = bare_reads(&other).await;
    (mine, theirs, raw_public(&url).await)
}

/// `execute_batch("CREATE TEMP TABLE r38_t …")`: the pooled session now finds `r38_t` in
/// pg_temp; learn_names sees the same search path and role, so the session is pooled
/// again and the handle still shares entries. Its cached reads fill the shared entries
/// with the temp table's row, and another handle (another process) is served it.
#[tokio::test]
async fn defect_temp_table_via_execute_batch_fills_shared_entries() {
    let (mine, theirs, direct) = temp_table_case("batch").await;
    assert_eq!(direct, "public", "precondition");
    assert_eq!(
        theirs,
        both(&direct),
        "another default handle is served ({mine:?} by the first)"
    );
}

#[tokio::test]
async fn defect_temp_table_via_sql_rows_fills_shared_entries() {
    let (mine, theirs, direct) = temp_table_case("rows").await;
    assert_eq!(direct, "public", "precondition");
    assert_eq!(
        theirs,
        both(&direct),
        "another default handle is served ({mine:?} by the first)"
    );
}

// ---------------------------------------------------------------------------------------
// 2. A caller that stops waiting while learn_names' round trip is in flight.

/// `sql_rows` that moves the session onto r38s (session-level set_config) under a
/// timeout swept across the end of the statement: when the future is dropped during
/// learn_names' extra round trip, the connection is neither in flight nor marked for
/// discard, so it is pooled with the changed path.
#[tokio::test]
async fn defect_cancel_during_learn_pools_changed_session() {
    let (db0, url) = common::db_and_url().await;
    setup(&db0).await;
    let prefix = ident("r38");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    let mut leaked = None;
    'outer: for round in 0..3 {
        for step in 0..200u64 {
            let d = Duration::from_micros(5_000 + step * 25 + round * 7);
            let _ = tokio::time::timeout(
                d,
                db.sql_rows(
                    "SELECT pg_sleep(0.005), set_config('search_path', 'r38s, public', false)",
                    &[],
                ),
            )
            .await;
            let now = db
                .read_uncached::<BareT>(1)
                .await
                .expect("read")
                .map(|r| r.v);
            if now.as_deref() != Some("public") {
                leaked = Some((d, now));
                break 'outer;
            }
        }
    }
    if leaked.is_some() {
        // Show the consequence too: the shared entries get the tenant's row.
        let _ = bare_reads(&db).await;
    }
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    let theirs = bare_reads(&other).await;
    assert_eq!(leaked, None, "a session change outlived a cancelled call");
    assert_eq!(theirs, both(&raw_public(&url).await));
}

// ---------------------------------------------------------------------------------------
// 3. with_client inside a transaction changes the path; a Tabula write follows in it.

#[derive(Table, Debug, Clone, PartialEq)]
#[table(schema = "r38s", name = "r38_t", cache(ttl = 300))]
struct SchemaT {
    #[table(primary_key)]
    id: i64,
    v: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r38_other", cache(ttl = 300))]
struct Other {
    #[table(primary_key)]
    id: i64,
    v: String,
}

async fn with_client_then_write(local: bool) -> (String, Option<String>) {
    let (db0, url) = common::db_and_url().await;
    setup(&db0).await;
    db0.execute_batch(
        "CREATE TABLE public.r38_other (id int8 PRIMARY KEY, v text NOT NULL);
         INSERT INTO public.r38_other VALUES (1, 'o');",
    )
    .await
    .expect("ddl");
    let prefix = ident("r38");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(2)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    // Reads the catalog on the default path.
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
        tx.with_client(async |c| {
            let sql = if local {
                "SET LOCAL search_path TO r38s, public"
            } else {
                "SET search_path TO r38s, public"
            };
            c.batch_execute(sql).await?;
            Ok(())
        })
        .await?;
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
    let direct: String = raw(&url)
        .await
        .query_one("SELECT v FROM r38s.r38_t WHERE id = 1", &[])
        .await
        .expect("raw")
        .get(0);
    let after = reader.read::<SchemaT>(1).await.expect("read").map(|r| r.v);
    (direct, after)
}

/// `with_client` inside a transaction moves the path (SET LOCAL): the transaction's
/// bare write lands in r38s.r38_t, but with_client never learns the session's names,
/// so the write does not name r38s.r38_t and another handle's schema-model entry stays.
#[tokio::test]
async fn defect_with_client_set_local_in_tx_bare_write_leaves_schema_model_stale() {
    let (direct, after) = with_client_then_write(true).await;
    assert_eq!(direct, "new", "precondition: landed in r38s");
    assert_eq!(after.as_deref(), Some(direct.as_str()));
}

#[tokio::test]
async fn defect_with_client_set_in_tx_bare_write_leaves_schema_model_stale() {
    let (direct, after) = with_client_then_write(false).await;
    assert_eq!(direct, "new", "precondition: landed in r38s");
    assert_eq!(after.as_deref(), Some(direct.as_str()));
}

// ---------------------------------------------------------------------------------------
// 4. A tenant view filtered by a session setting (the `app.tenant` pattern).

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r38_mine", cache(ttl = 300))]
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

/// Two handles whose sessions set `app.tenant` (after_connect) read a view
/// `WHERE tenant = current_setting('app.tenant')`. Each session reads its own tenant's
/// rows from PostgreSQL; the cache serves tenant b what tenant a read.
#[tokio::test]
async fn defect_view_filtered_by_session_setting_shared_across_tenants() {
    let (db0, url) = common::db_and_url().await;
    db0.execute_batch(
        "CREATE TABLE r38_items (id int8 PRIMARY KEY, tenant text NOT NULL, v text NOT NULL);
         INSERT INTO r38_items VALUES (1, 'a', 'a-secret'), (2, 'b', 'b-row');
         CREATE VIEW r38_mine AS SELECT id, tenant, v FROM r38_items
           WHERE tenant = current_setting('app.tenant', true);",
    )
    .await
    .expect("ddl");
    let prefix = ident("r38");
    let a = Db::connect_with(tenant_setting(&url, &prefix, "a"))
        .await
        .expect("a");
    let b = Db::connect_with(tenant_setting(&url, &prefix, "b"))
        .await
        .expect("b");
    let a_read = a.read::<Mine>(1).await.expect("a read").map(|r| r.v);
    let a_q: Vec<i64> = a
        .query::<Mine>()
        .cached(60)
        .all()
        .await
        .expect("a q")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(a_read.as_deref(), Some("a-secret"), "precondition");
    assert_eq!(a_q, vec![1], "precondition");
    // What b's session reads, by hand.
    let c = raw(&url).await;
    c.batch_execute("SET app.tenant = 'b'").await.expect("set");
    let direct: Vec<i64> = c
        .query("SELECT id FROM r38_mine ORDER BY id", &[])
        .await
        .expect("raw")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(direct, vec![2], "precondition");
    let b_read = b.read::<Mine>(1).await.expect("b read").map(|r| r.v);
    let b_q: Vec<i64> = b
        .query::<Mine>()
        .cached(60)
        .all()
        .await
        .expect("b q")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        (b_read, b_q),
        (None, direct),
        "tenant b is served tenant a's rows"
    );
}

// ---------------------------------------------------------------------------------------
// 5. learn_names' own query, and a batch that leaves its session in a transaction.

/// The caller's SQL puts pg_catalog after its tenant schema (PostgreSQL then lets user
/// functions override built-ins) and the tenant schema has a `current_setting(text)`:
/// learn_names' unqualified `current_setting('search_path')` reads the tenant's answer,
/// the session looks unchanged and is pooled again with the tenant path, and the
/// handle's shared entries get the tenant's row.
#[tokio::test]
async fn defect_learn_query_is_shadowed_by_tenant_function() {
    let (db0, url) = common::db_and_url().await;
    setup(&db0).await;
    db0.execute_batch(
        "CREATE FUNCTION r38s.current_setting(text) RETURNS text LANGUAGE sql
           AS $$ SELECT '\"$user\", public'::text $$;",
    )
    .await
    .expect("ddl");
    let prefix = ident("r38");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.sql_rows(
        "SELECT pg_catalog.set_config('search_path', 'r38s, pg_catalog, public', false)",
        &[],
    )
    .await
    .expect("enter");
    let mine = bare_reads(&db).await;
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    let theirs = bare_reads(&other).await;
    assert_eq!(mine, both("public"), "the change applies to that call only");
    assert_eq!(theirs, both(&raw_public(&url).await), "another handle");
}

/// A script with its own BEGIN that fails half-way (`execute_batch("BEGIN; …; <error>;
/// COMMIT;")`, a migration-style script) leaves its session in an aborted transaction
/// block; learn_names' query fails there (ignored) and nothing marks the connection:
/// it is pooled again and every later statement on it fails with 25P02.
#[tokio::test]
async fn defect_failed_script_with_begin_poisons_pooled_connection() {
    let (db0, url) = common::db_and_url().await;
    setup(&db0).await;
    let prefix = ident("r38");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    let failed = db
        .execute_batch("BEGIN; UPDATE r38_t SET v = 'x' WHERE id = 1; SELECT 1/0; COMMIT;")
        .await;
    assert!(failed.is_err(), "precondition");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(format!(
            "{:?}",
            db.read_uncached::<BareT>(1).await.map(|r| r.map(|r| r.v))
        ));
        seen.push(format!(
            "{:?}",
            db.read::<BareT>(1).await.map(|r| r.map(|r| r.v))
        ));
    }
    let want = format!("{:?}", Ok::<_, ()>(Some(raw_public(&url).await)));
    assert!(
        seen.iter().all(|s| *s == want),
        "later reads on the pool: {seen:#?}"
    );
}

/// `execute_batch("BEGIN; UPDATE …")` without COMMIT: the session is pooled with the
/// transaction open (Tabula's `in_transaction` flag knows only its own BEGIN). Later
/// cached reads on that connection see the uncommitted row and fill the shared entries
/// with it; another handle is served a row PostgreSQL never committed.
#[tokio::test]
async fn defect_unterminated_begin_fills_shared_cache_with_uncommitted_row() {
    let (db0, url) = common::db_and_url().await;
    setup(&db0).await;
    let prefix = ident("r38");
    let db = Db::connect_with(
        DbConfig::new(url.clone())
            .pool_size(1)
            .cache(redis(&prefix)),
    )
    .await
    .expect("db");
    db.execute_batch("BEGIN; UPDATE r38_t SET v = 'uncommitted' WHERE id = 1;")
        .await
        .expect("batch");
    let mine = bare_reads(&db).await;
    let other = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
        .await
        .expect("other");
    let theirs = bare_reads(&other).await;
    let direct = raw_public(&url).await;
    assert_eq!(direct, "public", "precondition: nothing committed");
    assert_eq!(
        theirs,
        both(&direct),
        "another handle ({mine:?} by the first)"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Holds probes: invalidate_tag / invalidate_table reaching another Db with a near tier.

fn near_redis(prefix: &str) -> CacheService {
    CacheService::redis(
        &tabula::testkit::redis_url().expect("redis"),
        CacheConfig::default()
            .prefix(prefix)
            .deadline(Duration::from_secs(2))
            .near(4 << 20),
    )
    .expect("cache")
}

#[tokio::test]
async fn holds_invalidate_tag_and_table_reach_other_db_near_tier() {
    let (db0, url) = common::db_and_url().await;
    setup(&db0).await;
    let prefix = ident("r38");
    let a = Db::connect_with(DbConfig::new(url.clone()).cache(near_redis(&prefix)))
        .await
        .expect("a");
    let b = Db::connect_with(DbConfig::new(url.clone()).cache(near_redis(&prefix)))
        .await
        .expect("b");
    let q = |db: &Db| {
        let db = db.clone();
        async move {
            db.query::<BareT>()
                .filter(BareT::ID.eq(1))
                .cached(60)
                .tag("r38tag")
                .all()
                .await
                .expect("q")
                .into_iter()
                .map(|r| r.v)
                .collect::<Vec<_>>()
        }
    };
    // Warm both tiers in b.
    for _ in 0..3 {
        assert_eq!(q(&b).await, vec!["public".to_owned()]);
        assert_eq!(
            b.read::<BareT>(1).await.expect("r").map(|r| r.v).as_deref(),
            Some("public")
        );
    }
    let c = raw(&url).await;
    c.execute("UPDATE r38_t SET v = 'tagged' WHERE id = 1", &[])
        .await
        .expect("raw");
    a.invalidate_tag("r38tag").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        q(&b).await,
        vec!["tagged".to_owned()],
        "after invalidate_tag from another Db"
    );
    c.execute("UPDATE r38_t SET v = 'tabled' WHERE id = 1", &[])
        .await
        .expect("raw");
    a.invalidate_table::<BareT>().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        b.read::<BareT>(1).await.expect("r").map(|r| r.v).as_deref(),
        Some("tabled")
    );
    assert_eq!(q(&b).await, vec!["tabled".to_owned()]);
}
