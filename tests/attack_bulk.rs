//! Round 42: an outside attack on the bulk-write hot paths (`insert_many` — binary
//! COPY, or INSERT where COPY cannot go — and `create_many`), `is_in` as `= ANY($1)`,
//! and the cache keys of values on nullable columns. Each `defect_*` test failed on the
//! code it attacked, 3 of 3 runs, and passes since its fix — but those ignored with
//! their reasons (documented in the README).

mod common;

mod bulk {
    //! Round 42: an outside attack on the bulk-write hot paths (`insert_many`,
    //! `create_many`) and on `is_in`. `defect_*` tests fail on the code attacked;
    //! `holds_*` probes held when written.

    use crate::common;

    use serde_json::json;
    use tabula::{Db, DbConfig, Table};

    use common::fixtures::{ident, raw, redis};

    // ---------------------------------------------------------------------------------------
    // Fixtures

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_docs")]
    struct Doc {
        #[table(primary_key, generated)]
        id: i64,
        doc: serde_json::Value,
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_rows")]
    struct Row42 {
        #[table(primary_key, generated)]
        id: i64,
        n: i64,
        label: String,
        note: Option<String>,
    }

    const ROWS_DDL: &str = "CREATE TABLE r42_rows (
        id bigserial PRIMARY KEY,
        n int8 NOT NULL CHECK (n <> -1),
        label text NOT NULL,
        note text
    )";

    fn new_row(n: i64) -> NewRow42 {
        NewRow42 {
            n,
            label: format!("L{n}"),
            note: if n % 3 == 0 {
                None
            } else {
                Some(format!("é✓{n}"))
            },
        }
    }

    async fn count(url: &str, sql: &str) -> i64 {
        raw(url)
            .await
            .query_one(sql, &[])
            .await
            .expect("count")
            .get(0)
    }

    // ---------------------------------------------------------------------------------------
    // 1. Stale column types in `insert_many`'s COPY

    /// A `json` column migrated to `jsonb` (a common migration) after `insert_many` ran
    /// once on the connection: the model (`serde_json::Value`) fits both types, `create`
    /// works at once, and `insert_many` must too.
    #[tokio::test]
    async fn defect_insert_many_after_json_column_retyped_to_jsonb() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch("CREATE TABLE r42_docs (id bigserial PRIMARY KEY, doc json NOT NULL)")
            .await
            .expect("table");
        let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
            .await
            .expect("db");
        db.insert_many(vec![NewDoc {
            doc: json!({"a": 1}),
        }])
        .await
        .expect("first insert_many");
        db0.execute_batch("ALTER TABLE r42_docs ALTER COLUMN doc TYPE jsonb USING doc::jsonb")
            .await
            .expect("alter");
        let created = db
            .create(NewDoc {
                doc: json!({"b": 2}),
            })
            .await
            .map(|d| d.doc);
        let first = db
            .insert_many(vec![NewDoc {
                doc: json!({"c": 3}),
            }])
            .await
            .map_err(|e| e.to_string());
        let second = db
            .insert_many(vec![NewDoc {
                doc: json!({"d": 4}),
            }])
            .await
            .map_err(|e| e.to_string());
        let n = count(&url, "SELECT count(*) FROM r42_docs").await;
        assert_eq!(
            (created.map_err(|e| e.to_string()), first, second, n),
            (Ok(json!({"b": 2})), Ok(1), Ok(1), 4),
            "(create, insert_many, insert_many again, rows) after json -> jsonb"
        );
    }

    /// The same for a text[] column re-typed to varchar(40)[] (Vec<String> fits both).
    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_tags")]
    struct Tagged {
        #[table(primary_key, generated)]
        id: i64,
        tags: Vec<String>,
    }

    #[tokio::test]
    async fn defect_insert_many_after_text_array_retyped_to_varchar_array() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch("CREATE TABLE r42_tags (id bigserial PRIMARY KEY, tags text[] NOT NULL)")
            .await
            .expect("table");
        let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
            .await
            .expect("db");
        db.insert_many(vec![NewTagged {
            tags: vec!["a".into()],
        }])
        .await
        .expect("first insert_many");
        db0.execute_batch("ALTER TABLE r42_tags ALTER COLUMN tags TYPE varchar(40)[]")
            .await
            .expect("alter");
        let created = db
            .create(NewTagged {
                tags: vec!["b".into()],
            })
            .await
            .map(|d| d.tags)
            .map_err(|e| e.to_string());
        let copied = db
            .insert_many(vec![NewTagged {
                tags: vec!["c".into()],
            }])
            .await
            .map_err(|e| e.to_string());
        let n = count(&url, "SELECT count(*) FROM r42_tags").await;
        assert_eq!(
            (created, copied, n),
            (Ok(vec!["b".to_owned()]), Ok(1), 3),
            "(create, insert_many, rows) after text[] -> varchar(40)[]"
        );
    }

    // ---------------------------------------------------------------------------------------
    // 2. json column: what each path stores

    /// A `json` column keeps the text it is given. `create` and `insert_many` store the
    /// document's serde text; `create_many` must store the same, not jsonb's rewrite.
    #[tokio::test]
    #[ignore = "documented (README, batches): `create_many` binds JSON fields as jsonb arrays; a `json` column then gets jsonb's normal form — `create` and `insert_many` keep the text"]
    async fn defect_create_many_rewrites_json_column_text() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch("CREATE TABLE r42_docs (id bigserial PRIMARY KEY, doc json NOT NULL)")
            .await
            .expect("table");
        let doc = json!({"aa": 1, "b": [1.5, {"zz": null, "y": "x"}]});
        db0.create(NewDoc { doc: doc.clone() })
            .await
            .expect("create");
        db0.insert_many(vec![NewDoc { doc: doc.clone() }])
            .await
            .expect("insert_many");
        db0.create_many(vec![
            NewDoc { doc: doc.clone() },
            NewDoc { doc: doc.clone() },
        ])
        .await
        .expect("create_many");
        let texts: Vec<String> = raw(&url)
            .await
            .query("SELECT doc::text FROM r42_docs ORDER BY id", &[])
            .await
            .expect("read")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let expected = serde_json::to_string(&doc).expect("ser");
        assert_eq!(
            texts,
            vec![
                expected.clone(),
                expected.clone(),
                expected.clone(),
                expected
            ],
            "json text stored by (create, insert_many, create_many x2)"
        );
    }

    // ---------------------------------------------------------------------------------------
    // 3. Order and atomicity across chunk boundaries

    #[tokio::test]
    async fn holds_create_many_order_across_chunk_boundaries() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch(ROWS_DDL).await.expect("table");
        for total in [20_001_i64, 40_001] {
            // Descending n, so an order by id or by n would not pass by accident.
            let rows: Vec<NewRow42> = (0..total).map(|i| new_row(total * 10 - i)).collect();
            let stored = db.create_many(rows.clone()).await.expect("create_many");
            assert_eq!(stored.len() as i64, total);
            let mismatch = rows
                .iter()
                .zip(&stored)
                .position(|(a, b)| a.n != b.n || a.label != b.label || a.note != b.note);
            assert_eq!(mismatch, None, "first out-of-order row of {total}");
            let ids_ascending = stored.windows(2).all(|w| w[0].id < w[1].id);
            assert!(ids_ascending, "ids in input order for {total}");
        }
        assert_eq!(count(&url, "SELECT count(*) FROM r42_rows").await, 60_002);
    }

    #[tokio::test]
    async fn holds_bad_row_mid_batch_inserts_nothing() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch(ROWS_DDL).await.expect("table");
        let rows: Vec<NewRow42> = (0..30_000)
            .map(|i| new_row(if i == 25_000 { -1 } else { i }))
            .collect();
        let copy = db
            .insert_many(rows.clone())
            .await
            .map_err(|e| e.to_string());
        let many = db.create_many(rows.clone()).await.map(|v| v.len());
        let pooled = Db::connect_with(DbConfig::new(url.clone()).transaction_pooling(true))
            .await
            .expect("pooled db");
        let fallback = pooled.insert_many(rows).await.map_err(|e| e.to_string());
        let n = count(&url, "SELECT count(*) FROM r42_rows").await;
        assert!(copy.is_err(), "insert_many: {copy:?}");
        assert!(many.is_err(), "create_many: {many:?}");
        assert!(fallback.is_err(), "insert_many (pooler): {fallback:?}");
        assert_eq!(n, 0, "rows left by failed batches");
    }

    /// `insert_many` behind a transaction pooler (INSERT, not COPY) stores what COPY does.
    #[tokio::test]
    async fn holds_insert_many_fallback_matches_copy() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch(ROWS_DDL).await.expect("table");
        let pooled = Db::connect_with(DbConfig::new(url.clone()).transaction_pooling(true))
            .await
            .expect("pooled db");
        let rows: Vec<NewRow42> = (0..25_000).map(new_row).collect();
        assert_eq!(db.insert_many(rows.clone()).await.expect("copy"), 25_000);
        assert_eq!(pooled.insert_many(rows).await.expect("fallback"), 25_000);
        let diff = count(
            &url,
            "SELECT count(*) FROM (
                (SELECT n, label, note FROM r42_rows WHERE id <= 25000
                 EXCEPT ALL SELECT n, label, note FROM r42_rows WHERE id > 25000)
                UNION ALL
                (SELECT n, label, note FROM r42_rows WHERE id > 25000
                 EXCEPT ALL SELECT n, label, note FROM r42_rows WHERE id <= 25000)) d",
        )
        .await;
        assert_eq!(diff, 0, "rows differing between COPY and fallback");
    }

    // ---------------------------------------------------------------------------------------
    // 4. Quoted names, other schema

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "R42 Odd Select", schema = "R42 Schema")]
    struct Odd {
        #[table(primary_key, generated)]
        id: i64,
        #[table(rename = "User")]
        user: String,
        #[table(rename = "order")]
        order: Option<i32>,
    }

    #[tokio::test]
    async fn holds_quoted_names_in_bulk_writes() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch(
            r#"CREATE SCHEMA "R42 Schema";
               CREATE TABLE "R42 Schema"."R42 Odd Select" (id bigserial PRIMARY KEY, "User" text NOT NULL, "order" int4)"#,
        )
        .await
        .expect("table");
        let rows = vec![
            NewOdd {
                user: "a".into(),
                order: Some(1),
            },
            NewOdd {
                user: String::new(),
                order: None,
            },
        ];
        let stored = db.create_many(rows.clone()).await.expect("create_many");
        assert_eq!(
            stored
                .iter()
                .map(|o| (o.user.clone(), o.order))
                .collect::<Vec<_>>(),
            vec![("a".to_owned(), Some(1)), (String::new(), None)]
        );
        assert_eq!(db.insert_many(rows).await.expect("insert_many"), 2);
        assert_eq!(
            count(
                &url,
                r#"SELECT count(*) FROM "R42 Schema"."R42 Odd Select""#
            )
            .await,
            4
        );
    }

    // ---------------------------------------------------------------------------------------
    // 5. Cached reads after bulk writes

    #[tokio::test]
    async fn holds_cached_queries_fresh_after_bulk_writes_on_other_handle() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch(ROWS_DDL).await.expect("table");
        let prefix = ident("r42");
        let a = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
            .await
            .expect("a");
        let b = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
            .await
            .expect("b");
        let q = |db: &Db| {
            let db = db.clone();
            async move {
                let c = db.query::<Row42>().cached(60).count().await.expect("count");
                let some = db
                    .query::<Row42>()
                    .filter(Row42::N.is_in([5_i64, 6, 7]))
                    .cached(60)
                    .all()
                    .await
                    .expect("in")
                    .len();
                (c, some)
            }
        };
        assert_eq!(q(&a).await, (0, 0));
        assert_eq!(q(&b).await, (0, 0));
        b.insert_many((0..10).map(new_row).collect())
            .await
            .expect("insert_many");
        assert_eq!(q(&a).await, (10, 3), "after insert_many on another handle");
        b.create_many((0..10).map(new_row).collect())
            .await
            .expect("create_many");
        assert_eq!(q(&a).await, (20, 6), "after create_many on another handle");
        b.transaction(|tx| async move {
            tx.insert_many((0..10).map(new_row).collect()).await?;
            tx.create_many((0..10).map(new_row).collect()).await?;
            Ok(())
        })
        .await
        .expect("tx");
        assert_eq!(q(&a).await, (40, 12), "after a transaction's bulk writes");
    }

    // ---------------------------------------------------------------------------------------
    // 6. is_in

    #[tokio::test]
    async fn holds_is_in_lists_and_cache_keys() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch(ROWS_DDL).await.expect("table");
        db0.insert_many((0..200).map(new_row).collect())
            .await
            .expect("rows");
        let db = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&ident("r42"))))
            .await
            .expect("db");
        let ns = |rows: Vec<Row42>| {
            let mut v: Vec<i64> = rows.iter().map(|r| r.n).collect();
            v.sort_unstable();
            v
        };
        let run = |list: Vec<i64>| {
            let db = db.clone();
            async move {
                ns(db
                    .query::<Row42>()
                    .filter(Row42::N.is_in(list))
                    .cached(60)
                    .all()
                    .await
                    .expect("cached in"))
            }
        };
        assert_eq!(run(vec![]).await, Vec::<i64>::new());
        assert_eq!(run(vec![3]).await, vec![3]);
        assert_eq!(run(vec![3, 4]).await, vec![3, 4]);
        assert_eq!(run(vec![4, 3]).await, vec![3, 4]);
        assert_eq!(run(vec![4, 3, 3, 4]).await, vec![3, 4]);
        assert_eq!(run(vec![5]).await, vec![5]);
        assert_eq!(run(vec![]).await, Vec::<i64>::new());
        let big: Vec<i64> = (150..100_150).collect();
        assert_eq!(run(big).await, (150..200).collect::<Vec<_>>());
        let big2: Vec<i64> = (160..100_160).collect();
        assert_eq!(run(big2).await, (160..200).collect::<Vec<_>>());

        // NULLs: note is NULL where n % 3 == 0.
        let notes = |f: tabula::Filter<Row42>| {
            let db = db.clone();
            async move {
                ns(db
                    .query::<Row42>()
                    .filter(f)
                    .cached(60)
                    .all()
                    .await
                    .expect("q"))
            }
        };
        let got = notes(Row42::NOTE.is_in([Some("é✓1".to_owned()), None])).await;
        assert_eq!(got, vec![1], "is_in with a NULL");
        let got = notes(Row42::NOTE.is_in([Some("é✓1".to_owned())]).not()).await;
        let expected: Vec<i64> = (0..200).filter(|n| n % 3 != 0 && *n != 1).collect();
        assert_eq!(got, expected, "not(is_in): NULL rows excluded");
        let got = notes(Row42::NOTE.is_in(Vec::<String>::new()).not()).await;
        assert_eq!(
            got,
            (0..200).collect::<Vec<_>>(),
            "not(is_in []) is every row"
        );
        let got = notes(
            Row42::N
                .is_in([1_i64, 2, 3, 4])
                .and(Row42::NOTE.is_not_null()),
        )
        .await;
        assert_eq!(got, vec![1, 2, 4]);
    }
}

mod more {
    //! Round 42, part 2: bulk writes against JSON text, user scopes, the row cache,
    //! triggers; `is_in` on enums and arrays.

    use crate::common;

    use serde_json::json;
    use tabula::{Db, DbConfig, PgEnum, Table};
    use uuid::Uuid;

    use common::fixtures::{ident, raw, redis};

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_docs")]
    struct Doc {
        #[table(primary_key, generated)]
        id: i64,
        doc: serde_json::Value,
    }

    /// A `json` column (not `jsonb`) accepts the escape `\u0000` in a string — only jsonb
    /// refuses it. `create` and `insert_many` store such a document; `create_many`, the
    /// batch form of `create`, must too.
    #[tokio::test]
    #[ignore = "documented (README, batches): `create_many` binds JSON fields as jsonb arrays, and jsonb refuses `\\u0000`; `create` and `insert_many` store it in a `json` column"]
    async fn defect_create_many_refuses_json_document_that_create_stores() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch("CREATE TABLE r42_docs (id bigserial PRIMARY KEY, doc json NOT NULL)")
            .await
            .expect("table");
        let doc = json!({"name": "a\u{0}b"});
        let created = db
            .create(NewDoc { doc: doc.clone() })
            .await
            .map(|d| d.doc)
            .map_err(|e| e.to_string());
        let copied = db
            .insert_many(vec![NewDoc { doc: doc.clone() }])
            .await
            .map_err(|e| e.to_string());
        let many = db
            .create_many(vec![
                NewDoc { doc: doc.clone() },
                NewDoc { doc: doc.clone() },
            ])
            .await
            .map(|v| v.into_iter().map(|d| d.doc).collect::<Vec<_>>())
            .map_err(|e| e.to_string());
        let n: i64 = raw(&url)
            .await
            .query_one("SELECT count(*) FROM r42_docs", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            (created, copied, many, n),
            (Ok(doc.clone()), Ok(1), Ok(vec![doc.clone(), doc]), 4),
            "(create, insert_many, create_many, rows) of a json document with \\u0000"
        );
    }

    // ---------------------------------------------------------------------------------------
    // User scope (RLS): insert_many through INSERT, over a chunk boundary

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "profiles", cache(ttl = 300))]
    struct Profile {
        #[table(primary_key, generated)]
        id: Uuid,
        user_id: Uuid,
        username: String,
        avatar_url: Option<String>,
    }

    #[tokio::test]
    async fn holds_scoped_insert_many_over_a_chunk_boundary() {
        let (_, url) = common::db_and_url().await;
        let db = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&ident("r42"))))
            .await
            .expect("db");
        let alice = Uuid::new_v4();
        let bob = Uuid::new_v4();
        let as_alice = db.as_user(alice);
        let tag = ident("u");
        let mk = |i: usize, owner: Uuid| NewProfile {
            user_id: owner,
            username: format!("{tag}-{i}"),
            avatar_url: if i.is_multiple_of(2) {
                None
            } else {
                Some(format!("a{i}"))
            },
        };
        // Warm a cached count.
        assert_eq!(
            as_alice
                .query::<Profile>()
                .cached(60)
                .count()
                .await
                .expect("count"),
            0
        );
        // One row of bob's past the first chunk: the policy refuses it, nothing lands.
        let bad: Vec<NewProfile> = (0..20_050)
            .map(|i| mk(i, if i == 20_010 { bob } else { alice }))
            .collect();
        let refused = as_alice.insert_many(bad).await;
        assert!(
            matches!(refused, Err(tabula::Error::PermissionDenied { .. })),
            "refused: {refused:?}"
        );
        let n: i64 = raw(&url)
            .await
            .query_one("SELECT count(*) FROM profiles", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "rows after a refused scoped batch");
        let good: Vec<NewProfile> = (0..20_050).map(|i| mk(i, alice)).collect();
        assert_eq!(as_alice.insert_many(good).await.expect("scoped"), 20_050);
        assert_eq!(
            as_alice
                .query::<Profile>()
                .cached(60)
                .count()
                .await
                .expect("count"),
            20_050,
            "cached count after scoped insert_many"
        );
    }

    // ---------------------------------------------------------------------------------------
    // Row cache: absences cached by key, then a bulk write of the key

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_keyed", cache(ttl = 300))]
    struct Keyed {
        #[table(primary_key)]
        id: i64,
        body: String,
    }

    #[tokio::test]
    async fn holds_bulk_writes_drop_cached_absences() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch("CREATE TABLE r42_keyed (id int8 PRIMARY KEY, body text NOT NULL)")
            .await
            .expect("table");
        let prefix = ident("r42");
        let a = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
            .await
            .expect("a");
        let b = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
            .await
            .expect("b");
        let pooled = Db::connect_with(
            DbConfig::new(url.clone())
                .cache(redis(&prefix))
                .transaction_pooling(true),
        )
        .await
        .expect("pooled");
        let mk = |id: i64| NewKeyed {
            id,
            body: format!("b{id}"),
        };
        for id in 1..=6 {
            assert_eq!(a.read::<Keyed>(id).await.expect("read"), None);
        }
        assert_eq!(
            a.read_many::<Keyed>(&[1, 2, 3, 4, 5, 6]).await.expect("rm"),
            vec![None; 6]
        );
        b.insert_many(vec![mk(1)]).await.expect("insert_many");
        b.create_many(vec![mk(2)]).await.expect("create_many");
        b.transaction(|tx| async move {
            tx.insert_many(vec![mk(3)]).await?;
            tx.create_many(vec![mk(4)]).await?;
            Ok(())
        })
        .await
        .expect("tx");
        pooled
            .insert_many(vec![mk(5)])
            .await
            .expect("pooled insert_many");
        pooled
            .create_many(vec![mk(6)])
            .await
            .expect("pooled create_many");
        let got: Vec<Option<String>> = {
            let mut v = Vec::new();
            for id in 1..=6 {
                v.push(a.read::<Keyed>(id).await.expect("read").map(|k| k.body));
            }
            v
        };
        assert_eq!(
            got,
            (1..=6).map(|i| Some(format!("b{i}"))).collect::<Vec<_>>(),
            "reads after bulk writes"
        );
    }

    // ---------------------------------------------------------------------------------------
    // Trigger: create_many returns what the trigger stored, in input order

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_trig")]
    struct Trig {
        #[table(primary_key, generated)]
        id: i64,
        n: i64,
        label: String,
    }

    #[tokio::test]
    async fn holds_create_many_with_trigger_returns_stored_rows_in_order() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch(
            "CREATE TABLE r42_trig (id bigserial PRIMARY KEY, n int8 NOT NULL, label text NOT NULL);
             CREATE FUNCTION r42_up() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.label := upper(NEW.label) || ':' || NEW.n; RETURN NEW; END $$;
             CREATE TRIGGER r42_up BEFORE INSERT ON r42_trig FOR EACH ROW EXECUTE FUNCTION r42_up();",
        )
        .await
        .expect("table");
        let rows: Vec<NewTrig> = (0..20_005)
            .map(|i| NewTrig {
                n: (i * 7919) % 20_011,
                label: format!("x{i}"),
            })
            .collect();
        let stored = db.create_many(rows.clone()).await.expect("create_many");
        let bad = rows.iter().zip(&stored).position(|(a, b)| {
            b.n != a.n || b.label != format!("{}:{}", a.label.to_uppercase(), a.n)
        });
        assert_eq!(bad, None);
        assert_eq!(db.insert_many(rows).await.expect("insert_many"), 20_005);
        let n: i64 = raw(&url)
            .await
            .query_one("SELECT count(*) FROM r42_trig WHERE label LIKE 'X%:%'", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 40_010);
    }

    // ---------------------------------------------------------------------------------------
    // is_in on enums and arrays

    #[derive(PgEnum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[pg_enum(name = "r42_mood")]
    enum Mood {
        Happy,
        SoSo,
        VerySad,
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_moods")]
    struct Moody {
        #[table(primary_key, generated)]
        id: i64,
        mood: Mood,
        maybe: Option<Mood>,
        nums: Vec<i64>,
    }

    #[tokio::test]
    async fn holds_is_in_on_enums_cached() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch(
            "CREATE TYPE r42_mood AS ENUM ('happy', 'so_so', 'very_sad');
             CREATE TABLE r42_moods (id bigserial PRIMARY KEY, mood r42_mood NOT NULL, maybe r42_mood, nums int8[] NOT NULL);",
        )
        .await
        .expect("table");
        let db = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&ident("r42"))))
            .await
            .expect("db");
        let all = [Mood::Happy, Mood::SoSo, Mood::VerySad];
        let rows: Vec<NewMoody> = (0..30)
            .map(|i| NewMoody {
                mood: all[i % 3],
                maybe: if i % 4 == 0 {
                    None
                } else {
                    Some(all[(i + 1) % 3])
                },
                nums: vec![i as i64, 1],
            })
            .collect();
        db.insert_many(rows.clone()).await.expect("insert_many");
        let count = |f: tabula::Filter<Moody>| {
            let db = db.clone();
            async move {
                db.query::<Moody>()
                    .filter(f)
                    .cached(60)
                    .count()
                    .await
                    .expect("count")
            }
        };
        assert_eq!(count(Moody::MOOD.is_in([Mood::Happy])).await, 10);
        assert_eq!(count(Moody::MOOD.is_in([Mood::SoSo])).await, 10);
        assert_eq!(
            count(Moody::MOOD.is_in([Mood::SoSo, Mood::Happy])).await,
            20
        );
        let expect_maybe = rows
            .iter()
            .filter(|r| r.maybe == Some(Mood::VerySad))
            .count() as i64;
        assert_eq!(
            count(Moody::MAYBE.is_in([Some(Mood::VerySad), None])).await,
            expect_maybe
        );
        let expect_not = rows
            .iter()
            .filter(|r| r.maybe.is_some() && r.maybe != Some(Mood::VerySad))
            .count() as i64;
        assert_eq!(
            count(Moody::MAYBE.is_in([Mood::VerySad]).not()).await,
            expect_not
        );
    }

    /// `is_in` on an array column (`Vec<i64>` is a column type, so the list is one of
    /// arrays): the rows whose array equals one of the listed arrays.
    #[tokio::test]
    #[ignore = "documented (README, queries): `is_in` on an array column fails with PostgreSQL's 42704 (no array of arrays to bind the list as)"]
    async fn defect_is_in_on_array_column() {
        let (db, _url) = common::db_and_url().await;
        db.execute_batch(
            "CREATE TYPE r42_mood AS ENUM ('happy', 'so_so', 'very_sad');
             CREATE TABLE r42_moods (id bigserial PRIMARY KEY, mood r42_mood NOT NULL, maybe r42_mood, nums int8[] NOT NULL);
             INSERT INTO r42_moods (mood, nums) VALUES ('happy', '{1,2}'), ('happy', '{3}'), ('happy', '{1,2,3}');",
        )
        .await
        .expect("table");
        let got = db
            .query::<Moody>()
            .filter(Moody::NUMS.is_in([vec![1_i64, 2], vec![3]]))
            .count()
            .await
            .map_err(|e| e.to_string());
        assert_eq!(got, Ok(2), "rows whose nums is {{1,2}} or {{3}}");
    }
}

mod stale {
    //! Round 42, part 5: multi-chunk batches after a schema change, and bulk writes and
    //! `is_in` through a real PgBouncer in transaction pooling mode.

    use crate::common;

    use tabula::testkit::PgBouncer;
    use tabula::{Db, DbConfig, Table};

    use common::fixtures::{ident, raw, redis};

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_rows")]
    struct Row42 {
        #[table(primary_key, generated)]
        id: i64,
        n: i64,
        label: String,
    }

    const DDL: &str = "CREATE TABLE r42_rows (
        id bigserial PRIMARY KEY, n int8 NOT NULL CHECK (n <> -1), label text NOT NULL)";

    fn mk(n: i64) -> NewRow42 {
        NewRow42 {
            n,
            label: format!("L{n}"),
        }
    }

    async fn count(url: &str) -> i64 {
        raw(url)
            .await
            .query_one("SELECT count(*) FROM r42_rows", &[])
            .await
            .expect("count")
            .get(0)
    }

    #[tokio::test]
    async fn holds_multi_chunk_create_many_after_retype() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch(DDL).await.expect("table");
        let db = Db::connect_with(DbConfig::new(url.clone()).pool_size(1))
            .await
            .expect("db");
        db.create_many((0..20_001).map(mk).collect())
            .await
            .expect("first");
        db0.execute_batch("ALTER TABLE r42_rows ALTER COLUMN label TYPE varchar(50)")
            .await
            .expect("alter");
        let second = db
            .create_many((0..20_001).map(mk).collect())
            .await
            .map(|v| v.len())
            .map_err(|e| e.to_string());
        assert_eq!((second, count(&url).await), (Ok(20_001), 40_002));
    }

    fn database_name(url: &str) -> String {
        let path = url.rsplit('/').next().unwrap_or_default();
        path.split('?').next().unwrap_or_default().to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_bulk_writes_and_is_in_through_pgbouncer() {
        let bouncer = PgBouncer::start(2).expect("pgbouncer");
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch(DDL).await.expect("table");
        let prefix = ident("r42");
        let via = Db::connect_with(
            DbConfig::new(bouncer.url(&database_name(&url)))
                .transaction_pooling(true)
                .pool_size(4)
                .cache(redis(&prefix)),
        )
        .await
        .expect("via pgbouncer");
        let direct = Db::connect_with(DbConfig::new(url.clone()).cache(redis(&prefix)))
            .await
            .expect("direct");
        assert_eq!(
            direct.query::<Row42>().cached(60).count().await.expect("c"),
            0
        );
        let bad: Vec<NewRow42> = (0..25_000)
            .map(|i| mk(if i == 22_000 { -1 } else { i }))
            .collect();
        let refused = via.insert_many(bad.clone()).await;
        assert!(refused.is_err(), "{refused:?}");
        let refused = via.create_many(bad).await.map(|v| v.len());
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(count(&url).await, 0, "rows after refused batches");
        assert_eq!(
            via.insert_many((0..25_000).map(mk).collect())
                .await
                .expect("insert_many"),
            25_000
        );
        assert_eq!(
            direct.query::<Row42>().cached(60).count().await.expect("c"),
            25_000,
            "cached count on the direct handle"
        );
        let rows: Vec<NewRow42> = (0..20_001).map(|i| mk(50_000 - i)).collect();
        let stored = via.create_many(rows.clone()).await.expect("create_many");
        let bad = rows.iter().zip(&stored).position(|(a, b)| a.n != b.n);
        assert_eq!((stored.len(), bad), (20_001, None));
        let list: Vec<i64> = (24_990..124_990).collect();
        let got = via
            .query::<Row42>()
            .filter(Row42::N.is_in(list.clone()))
            .cached(60)
            .count()
            .await
            .expect("is_in");
        let expect: i64 = raw(&url)
            .await
            .query_one("SELECT count(*) FROM r42_rows WHERE n = ANY($1)", &[&list])
            .await
            .expect("raw")
            .get(0);
        assert_eq!(got, expect);
    }
}

mod spell {
    //! Round 42, part 8: one table, two spellings of its name — bulk writes through one
    //! model, cached reads through the other.

    use crate::common;

    use tabula::{Db, DbConfig, Table};

    use common::fixtures::{ident, redis};

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_sp", cache(ttl = 300))]
    struct Bare {
        #[table(primary_key)]
        id: i64,
        body: String,
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(schema = "public", name = "r42_sp", cache(ttl = 300))]
    struct Qual {
        #[table(primary_key)]
        id: i64,
        body: String,
    }

    #[tokio::test]
    async fn holds_bulk_writes_through_either_spelling_refresh_the_other() {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch("CREATE TABLE r42_sp (id int8 PRIMARY KEY, body text NOT NULL)")
            .await
            .expect("table");
        let db = Db::connect_with(DbConfig::new(url).cache(redis(&ident("r42"))))
            .await
            .expect("db");
        let state = || async {
            (
                db.query::<Bare>()
                    .cached(60)
                    .count()
                    .await
                    .expect("bare count"),
                db.query::<Qual>()
                    .cached(60)
                    .count()
                    .await
                    .expect("qual count"),
                db.read::<Bare>(1).await.expect("bare").is_some(),
                db.read::<Qual>(2).await.expect("qual").is_some(),
                db.read::<Bare>(3).await.expect("bare").is_some(),
                db.read::<Qual>(4).await.expect("qual").is_some(),
            )
        };
        let _ = state().await;
        assert_eq!(state().await, (0, 0, false, false, false, false));
        db.insert_many(vec![NewQual {
            id: 1,
            body: "a".into(),
        }])
        .await
        .expect("insert_many qual");
        assert_eq!(
            state().await,
            (1, 1, true, false, false, false),
            "after insert_many (qual)"
        );
        db.insert_many(vec![NewBare {
            id: 2,
            body: "a".into(),
        }])
        .await
        .expect("insert_many bare");
        assert_eq!(
            state().await,
            (2, 2, true, true, false, false),
            "after insert_many (bare)"
        );
        db.create_many(vec![NewQual {
            id: 3,
            body: "a".into(),
        }])
        .await
        .expect("create_many qual");
        assert_eq!(
            state().await,
            (3, 3, true, true, true, false),
            "after create_many (qual)"
        );
        db.create_many(vec![NewBare {
            id: 4,
            body: "a".into(),
        }])
        .await
        .expect("create_many bare");
        assert_eq!(
            state().await,
            (4, 4, true, true, true, true),
            "after create_many (bare)"
        );
    }
}

mod types {
    //! Round 42, part 6: every scalar column type, with edge values, through `create`,
    //! `create_many` and `insert_many` — PostgreSQL must store the same text for each.

    use crate::common;

    use std::net::IpAddr;
    use std::str::FromStr;

    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
    use rust_decimal::Decimal;
    use tabula::Table;
    use uuid::Uuid;

    use common::fixtures::raw;

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_all")]
    struct All {
        #[table(primary_key, generated)]
        id: i64,
        path: String,
        flag: bool,
        small: i16,
        int: i32,
        big: i64,
        real: f32,
        double: f64,
        text: String,
        maybe: Option<String>,
        bytes: Vec<u8>,
        ip: IpAddr,
        uuid: Uuid,
        at: DateTime<Utc>,
        day: NaiveDate,
        stamp: NaiveDateTime,
        time: NaiveTime,
        dec: Decimal,
        value: serde_json::Value,
        maybe_at: Option<DateTime<Utc>>,
    }

    const DDL: &str = "CREATE TABLE r42_all (
        id bigserial PRIMARY KEY, path text NOT NULL, flag bool NOT NULL, small int2 NOT NULL,
        int int4 NOT NULL, big int8 NOT NULL, real float4 NOT NULL, double float8 NOT NULL,
        text text NOT NULL, maybe text, bytes bytea NOT NULL, ip inet NOT NULL, uuid uuid NOT NULL,
        at timestamptz NOT NULL, day date NOT NULL, stamp timestamp NOT NULL, time time NOT NULL,
        dec numeric NOT NULL, value jsonb NOT NULL, maybe_at timestamptz)";

    fn cases() -> Vec<NewAll> {
        let base = NewAll {
            path: String::new(),
            flag: false,
            small: 0,
            int: 0,
            big: 0,
            real: 0.0,
            double: 0.0,
            text: String::new(),
            maybe: None,
            bytes: Vec::new(),
            ip: IpAddr::from_str("0.0.0.0").expect("ip"),
            uuid: Uuid::nil(),
            at: Utc.timestamp_opt(0, 0).single().expect("at"),
            day: NaiveDate::from_ymd_opt(2000, 1, 1).expect("d"),
            stamp: NaiveDate::from_ymd_opt(2000, 1, 1)
                .expect("d")
                .and_hms_opt(0, 0, 0)
                .expect("t"),
            time: NaiveTime::from_hms_opt(0, 0, 0).expect("t"),
            dec: Decimal::ZERO,
            value: serde_json::Value::Null,
            maybe_at: None,
        };
        let max = NewAll {
            flag: true,
            small: i16::MIN,
            int: i32::MAX,
            big: i64::MIN,
            real: f32::NAN,
            double: f64::INFINITY,
            text: format!("é✓🦀\u{7f}\t'\"\\ {}", "z".repeat(300_000)),
            maybe: Some(String::new()),
            bytes: vec![0, 255, 0, 92, 39],
            ip: IpAddr::from_str("::ffff:1.2.3.4").expect("ip"),
            uuid: Uuid::max(),
            at: Utc
                .with_ymd_and_hms(262_000, 12, 31, 23, 59, 59)
                .single()
                .expect("at")
                + chrono::Duration::nanoseconds(999_999_999),
            day: NaiveDate::from_ymd_opt(-4713, 11, 24).expect("d"),
            stamp: NaiveDate::from_ymd_opt(-4713, 11, 24)
                .expect("d")
                .and_hms_nano_opt(0, 0, 0, 1_999)
                .expect("t"),
            time: NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999).expect("t"),
            dec: Decimal::from_str("-79228162514264337593543950335").expect("dec"),
            value: serde_json::json!({"a": [1.5e300, -0.0, "\u{1F980}"], "": {}}),
            maybe_at: Some(Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).single().expect("at")),
            ..base.clone()
        };
        let other = NewAll {
            real: f32::NEG_INFINITY,
            double: -0.0,
            dec: Decimal::from_str("0.0000000000000000000000000001").expect("dec"),
            time: NaiveTime::from_hms_micro_opt(12, 0, 0, 1).expect("t"),
            ip: IpAddr::from_str("fe80::1").expect("ip"),
            value: serde_json::json!("plain"),
            ..max.clone()
        };
        vec![base, max, other]
    }

    #[tokio::test]
    async fn holds_every_type_stored_alike_by_each_path() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch(DDL).await.expect("table");
        let with = |path: &str| {
            cases()
                .into_iter()
                .map(|c| NewAll {
                    path: path.to_owned(),
                    ..c
                })
                .collect::<Vec<_>>()
        };
        for new in with("create") {
            db.create(new).await.expect("create");
        }
        let stored = db
            .create_many(with("create_many"))
            .await
            .expect("create_many");
        assert_eq!(stored.len(), 3);
        assert_eq!(
            db.insert_many(with("insert_many"))
                .await
                .expect("insert_many"),
            3
        );
        let rows = raw(&url)
            .await
            .query(
                "SELECT path, (to_jsonb(t) - 'id' - 'path')::text FROM r42_all t ORDER BY id",
                &[],
            )
            .await
            .expect("read");
        let texts: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(texts.len(), 9);
        for i in 0..3 {
            assert_eq!(
                texts[i].1,
                texts[3 + i].1,
                "create vs create_many, case {i}"
            );
            assert_eq!(
                texts[i].1,
                texts[6 + i].1,
                "create vs insert_many, case {i}"
            );
        }
        // What create_many returned is what a read returns.
        let read: Vec<All> = db
            .query::<All>()
            .filter(All::PATH.eq("create_many"))
            .order_by(All::ID.asc())
            .all()
            .await
            .expect("read");
        let same = |a: &All, b: &All| format!("{a:?}") == format!("{b:?}");
        for (a, b) in stored.iter().zip(&read) {
            assert!(same(a, b), "returned {a:?}\nread {b:?}");
        }
    }
}

mod rls {
    //! Round 42, part 9: `insert_many` on a user-scoped handle, under a policy that lets a
    //! user insert rows it may not read back (a message to someone else).

    use crate::common;

    use tabula::Table;
    use uuid::Uuid;

    use common::fixtures::raw;

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_msgs")]
    struct Msg {
        #[table(primary_key, generated)]
        id: i64,
        sender: Uuid,
        recipient: Uuid,
        body: String,
    }

    const DDL: &str = "
    CREATE TABLE r42_msgs (id bigserial PRIMARY KEY, sender uuid NOT NULL, recipient uuid NOT NULL, body text NOT NULL);
    GRANT SELECT, INSERT ON r42_msgs TO authenticated;
    GRANT USAGE ON SEQUENCE r42_msgs_id_seq TO authenticated;
    ALTER TABLE r42_msgs ENABLE ROW LEVEL SECURITY;
    CREATE POLICY send ON r42_msgs FOR INSERT WITH CHECK (sender = auth.uid());
    CREATE POLICY read ON r42_msgs FOR SELECT USING (recipient = auth.uid());
    ";

    /// Alice may send messages (INSERT: `sender = alice`) but not read them back (SELECT:
    /// only her inbox). `insert_many` returns a count, not rows; on a scoped handle "the
    /// rows go in through INSERT, where the policy decides" — the INSERT policy allows
    /// these rows, so they must go in, as a plain INSERT (no RETURNING) by her does.
    #[tokio::test]
    async fn defect_scoped_insert_many_refuses_rows_the_insert_policy_allows() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch(DDL).await.expect("table");
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let as_alice = db.as_user(alice);
        // The control: the same INSERT by hand, in her scope, without RETURNING.
        let plain = as_alice
            .with_client(async |c| {
                Ok(c.execute(
                    "INSERT INTO r42_msgs (sender, recipient, body) VALUES ($1, $2, 'plain')",
                    &[&alice, &bob],
                )
                .await?)
            })
            .await
            .map_err(|e| e.to_string());
        let rows = vec![
            NewMsg {
                sender: alice,
                recipient: bob,
                body: "hi bob".into(),
            },
            NewMsg {
                sender: alice,
                recipient: bob,
                body: "again".into(),
            },
        ];
        let sent = as_alice
            .insert_many(rows)
            .await
            .map_err(|e| format!("{e:?}"));
        let n: i64 = raw(&url)
            .await
            .query_one(
                "SELECT count(*) FROM r42_msgs WHERE body IN ('hi bob', 'again')",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            (plain, sent, n),
            (Ok(1), Ok(2), 2),
            "(plain INSERT in her scope, insert_many in her scope, rows landed)"
        );
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_audit")]
    struct Audit {
        #[table(primary_key, generated)]
        id: i64,
        what: String,
    }

    /// A writer role with INSERT but no SELECT on an audit table: COPY needs only INSERT,
    /// and `insert_many` (a count, no rows) works for it directly. Behind a transaction
    /// pooler `insert_many` "uses INSERT instead of COPY" — it must still work.
    #[tokio::test]
    async fn defect_pooled_insert_many_needs_select_privilege() {
        let (db, url) = common::db_and_url().await;
        let role = common::fixtures::ident("r42w");
        db.execute_batch(&format!(
            "CREATE TABLE r42_audit (id bigserial PRIMARY KEY, what text NOT NULL);
             CREATE ROLE {role} LOGIN;
             GRANT INSERT ON r42_audit TO {role};
             GRANT USAGE ON SEQUENCE r42_audit_id_seq TO {role};"
        ))
        .await
        .expect("table and role");
        let config: tokio_postgres::Config = url.parse().expect("url");
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[allow(unreachable_patterns)]
            other => panic!("host {other:?}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config.get_dbname().expect("dbname");
        let as_writer = format!("postgres://{role}@{host}:{port}/{dbname}");
        let direct = tabula::Db::connect(&as_writer).await.expect("direct");
        let pooled = tabula::Db::connect_with(
            tabula::DbConfig::new(as_writer.clone()).transaction_pooling(true),
        )
        .await
        .expect("pooled");
        let rows = || vec![NewAudit { what: "a".into() }, NewAudit { what: "b".into() }];
        let copied = direct
            .insert_many(rows())
            .await
            .map_err(|e| format!("{e:?}"));
        let inserted = pooled
            .insert_many(rows())
            .await
            .map_err(|e| format!("{e:?}"));
        let n: i64 = raw(&url)
            .await
            .query_one("SELECT count(*) FROM r42_audit", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            (copied, inserted, n),
            (Ok(2), Ok(2), 4),
            "(insert_many direct, insert_many behind a pooler, rows) for an INSERT-only role"
        );
    }
}

mod deadline {
    //! Round 42, part 7: bulk writes cut by the handle's statement deadline.

    use crate::common;

    use std::time::Duration;

    use tabula::{Db, DbConfig, Table};

    use common::fixtures::{ident, raw, redis};

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_rows")]
    struct Row42 {
        #[table(primary_key, generated)]
        id: i64,
        n: i64,
        label: String,
    }

    fn mk(n: i64) -> NewRow42 {
        NewRow42 {
            n,
            label: format!("L{n}"),
        }
    }

    async fn count(url: &str) -> i64 {
        raw(url)
            .await
            .query_one("SELECT count(*) FROM r42_rows", &[])
            .await
            .expect("count")
            .get(0)
    }

    async fn setup() -> (Db, String) {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch(
            "CREATE TABLE r42_rows (id bigserial PRIMARY KEY, n int8 NOT NULL, label text NOT NULL)",
        )
        .await
        .expect("table");
        let db = Db::connect_with(
            DbConfig::new(url.clone())
                .pool_size(1)
                .statement_timeout(Duration::from_millis(150))
                .cache(redis(&ident("r42"))),
        )
        .await
        .expect("db");
        (db, url)
    }

    /// A COPY the server cancels at the handle's `statement_timeout` (150 ms) wrote
    /// nothing, and the server says so at once: README promises `Error::Timeout`
    /// ("nothing happened", safe to retry) — not `OutcomeUnknown`, which is for a silent
    /// network.
    #[tokio::test]
    #[ignore = "documented (README, deadlines): COPY streams every row before it reads the server's answer, so a deadline that cuts it is reported as OutcomeUnknown, never as Timeout"]
    async fn defect_insert_many_cancelled_by_server_deadline_is_outcome_unknown() {
        let (db, url) = setup().await;
        let started = std::time::Instant::now();
        let cut = db.insert_many((0..3_000_000).map(mk).collect()).await;
        let took = started.elapsed();
        let after = count(&url).await;
        assert!(
            matches!(cut, Err(tabula::Error::Timeout { .. })) && after == 0,
            "insert_many cut by the server's deadline: {cut:?} after {took:?}, {after} rows"
        );
    }

    /// `create_many` cut the same way: `Timeout`, nothing written, and the handle and its
    /// cached queries fine afterwards.
    #[tokio::test]
    async fn holds_create_many_cut_by_deadline_writes_nothing() {
        let (db, url) = setup().await;
        assert_eq!(db.query::<Row42>().cached(60).count().await.expect("c"), 0);
        let cut = db
            .create_many((0..300_000).map(mk).collect())
            .await
            .map(|v| v.len());
        let after = count(&url).await;
        assert!(
            matches!(cut, Err(tabula::Error::Timeout { .. })) && after == 0,
            "create_many cut: {cut:?}, {after} rows"
        );
        assert_eq!(
            db.insert_many((0..10).map(mk).collect())
                .await
                .expect("after"),
            10
        );
        assert_eq!(
            db.query::<Row42>().cached(60).count().await.expect("c"),
            10,
            "cached count after the cut batch"
        );
    }
}

mod large {
    //! Round 42, part 4: a `create_many` chunk whose arrays pass PostgreSQL's 1 GB limit.

    use crate::common;

    use tabula::Table;

    use common::fixtures::raw;

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_big")]
    struct Big {
        #[table(primary_key, generated)]
        id: i64,
        body: String,
    }

    /// 20,000 rows of 55,000 bytes (1.1 GB): `insert_many` streams them; `create_many`
    /// ("arrays have no bind-parameter limit") must store them too, or refuse them with
    /// a typed error before sending — not break the connection with the server's
    /// message-length limit.
    #[tokio::test]
    #[ignore = "documented (README, batches): one `create_many` chunk must stay under PostgreSQL's 1 GB message limit; 1.1 GB and 2-3 GB of RAM to run"]
    async fn defect_create_many_chunk_over_one_gigabyte() {
        let (db, url) = common::db_and_url().await;
        db.execute_batch("CREATE TABLE r42_big (id bigserial PRIMARY KEY, body text NOT NULL)")
            .await
            .expect("table");
        let body = "x".repeat(55_000);
        let rows: Vec<NewBig> = (0..20_000).map(|_| NewBig { body: body.clone() }).collect();
        let copied = db
            .insert_many(rows.clone())
            .await
            .map_err(|e| e.to_string());
        let started = std::time::Instant::now();
        let created = db
            .create_many(rows)
            .await
            .map(|v| v.len())
            .map_err(|e| format!("{e:?}"));
        let took = started.elapsed();
        let n: i64 = raw(&url)
            .await
            .query_one("SELECT count(*) FROM r42_big", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            (copied, created, n),
            (Ok(20_000), Ok(20_000), 40_000),
            "(insert_many, create_many, rows) of 1.1 GB; create_many took {took:?}"
        );
    }
}

mod keys {
    //! Round 42, part 3: cache keys of `is_in` / `eq` on nullable columns — a bare value
    //! and an `Option` value of one column must never share a cached query's entry when
    //! PostgreSQL answers them differently.

    use crate::common;

    use tabula::{Db, DbConfig, Table};

    use common::fixtures::{ident, redis};

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "r42_nulls")]
    struct Nul {
        #[table(primary_key)]
        id: i64,
        note: Option<String>,
        flag: Option<bool>,
        n: Option<i64>,
    }

    const DDL: &str = "CREATE TABLE r42_nulls (id int8 PRIMARY KEY, note text, flag bool, n int8);
    INSERT INTO r42_nulls VALUES (1, '', false, 0), (2, NULL, NULL, NULL), (3, 'x', true, 1);";

    async fn setup() -> (Db, Db) {
        let (db0, url) = common::db_and_url().await;
        db0.execute_batch(DDL).await.expect("table");
        let db = Db::connect_with(DbConfig::new(url).cache(redis(&ident("r42"))))
            .await
            .expect("db");
        // A first cached query: the handle's first fill may be skipped while it learns its
        // sessions, which would hide the collision in one order.
        let _ = db
            .query::<Nul>()
            .filter(Nul::ID.eq(99))
            .cached(60)
            .all()
            .await
            .expect("warm");
        (db0, db)
    }

    fn ids(rows: Vec<Nul>) -> Vec<i64> {
        let mut v: Vec<i64> = rows.into_iter().map(|r| r.id).collect();
        v.sort_unstable();
        v
    }

    async fn cached(db: &Db, f: tabula::Filter<Nul>) -> Vec<i64> {
        ids(db
            .query::<Nul>()
            .filter(f)
            .cached(60)
            .all()
            .await
            .expect("cached"))
    }

    async fn uncached(db: &Db, f: tabula::Filter<Nul>) -> Vec<i64> {
        ids(db.query::<Nul>().filter(f).all().await.expect("uncached"))
    }

    /// `note IN ('')` finds row 1; `note IN (NULL)` finds nothing. Asked through the
    /// cache (NULL first), the second must not be answered by the first's entry.
    #[tokio::test]
    async fn defect_is_in_empty_string_and_null_share_cache_entry() {
        let (db0, db) = setup().await;
        let b = cached(&db, Nul::NOTE.is_in([None::<String>])).await;
        let a = cached(&db, Nul::NOTE.is_in([""])).await;
        let truth = (
            uncached(&db0, Nul::NOTE.is_in([""])).await,
            uncached(&db0, Nul::NOTE.is_in([None::<String>])).await,
        );
        assert_eq!(truth, (vec![1], vec![]), "what PostgreSQL answers");
        assert_eq!((a, b), truth, "cached (is_in [\"\"], is_in [None])");
    }

    /// The same with `eq`: `note = ''` is row 1, `note = NULL` no row.
    #[tokio::test]
    async fn defect_eq_empty_string_and_none_share_cache_entry() {
        let (db0, db) = setup().await;
        let b = cached(&db, Nul::NOTE.eq(None::<String>)).await;
        let a = cached(&db, Nul::NOTE.eq("")).await;
        let truth = (
            uncached(&db0, Nul::NOTE.eq("")).await,
            uncached(&db0, Nul::NOTE.eq(None::<String>)).await,
        );
        assert_eq!(truth, (vec![1], vec![]), "what PostgreSQL answers");
        assert_eq!((a, b), truth, "cached (eq \"\", eq None)");
    }

    /// `flag = false` is row 1, `flag = NULL` no row — and in the other order too.
    #[tokio::test]
    async fn defect_bool_false_and_none_share_cache_entry() {
        let (db0, db) = setup().await;
        let b = cached(&db, Nul::FLAG.is_in([None::<bool>])).await;
        let a = cached(&db, Nul::FLAG.is_in([false])).await;
        let truth = (
            uncached(&db0, Nul::FLAG.is_in([None::<bool>])).await,
            uncached(&db0, Nul::FLAG.is_in([false])).await,
        );
        assert_eq!(truth, (vec![], vec![1]), "what PostgreSQL answers");
        assert_eq!((b, a), truth, "cached (is_in [None], is_in [false])");
    }

    /// Fixed-width values cannot collide with `None`: holds.
    #[tokio::test]
    async fn holds_int_and_none_keep_apart() {
        let (db0, db) = setup().await;
        let a = cached(&db, Nul::N.is_in([0_i64])).await;
        let b = cached(&db, Nul::N.is_in([None::<i64>])).await;
        let c = cached(&db, Nul::N.is_in([Some(0_i64)])).await;
        let truth = (
            uncached(&db0, Nul::N.is_in([0_i64])).await,
            uncached(&db0, Nul::N.is_in([None::<i64>])).await,
            uncached(&db0, Nul::N.is_in([Some(0_i64)])).await,
        );
        assert_eq!(truth, (vec![1], vec![], vec![1]));
        assert_eq!((a, b, c), truth);
    }
}
