//! Round 43: an outside attack on relations, joins, eager loading, group by with
//! aggregates, keyset paging and their caching, checked against plain SQL over a raw
//! connection. Each `defect_*` test failed on the code it attacked, 3 of 3 runs, and
//! passes since its fix.

mod common;

mod shapes {
    //! Round 43: relations, joins, aggregates, paging and their caching, checked against
    //! plain SQL over a raw connection.

    use crate::common;

    use chrono::{DateTime, Utc};
    use tabula::query::{children, count_rows, parent};
    use tabula::{Db, DbConfig, Table};

    use common::fixtures::{ident, raw, redis};

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "g_rows")]
    struct GRow {
        #[table(primary_key)]
        id: i64,
        grp: Option<i64>,
        v: i64,
    }

    async fn cached_db(url: &str) -> Db {
        Db::connect_with(DbConfig::new(url.to_owned()).cache(redis(&ident("r43"))))
            .await
            .expect("db")
    }

    /// README: "aggregates of a query with limit / offset cover only the rows it keeps".
    /// A limit set on the query before `group_by` must limit the rows, not the groups
    /// (as `count_by` does).
    #[tokio::test]
    async fn defect_group_by_reinterprets_the_querys_row_limit_as_a_group_limit() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE g_rows (id bigint PRIMARY KEY, grp bigint, v bigint NOT NULL);
             INSERT INTO g_rows SELECT i, i % 3, i FROM generate_series(1, 30) i;",
        )
        .await
        .expect("schema");
        let oracle: Vec<(Option<i64>, i64)> = c
            .query(
                "SELECT grp, count(*) FROM (SELECT * FROM g_rows ORDER BY id LIMIT 4) r GROUP BY grp ORDER BY grp",
                &[],
            )
            .await
            .expect("oracle")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let by_count_by = db
            .query::<GRow>()
            .order_by(GRow::ID.asc())
            .limit(4)
            .count_by(GRow::GRP)
            .await
            .expect("count_by");
        assert_eq!(by_count_by, oracle, "count_by covers the 4 rows kept");
        let grouped: Vec<(Option<i64>, i64)> = db
            .query::<GRow>()
            .order_by(GRow::ID.asc())
            .limit(4)
            .group_by(GRow::GRP)
            .aggregate(count_rows())
            .all()
            .await
            .expect("group_by");
        assert_eq!(
            grouped, oracle,
            "group_by over a query limited to 4 rows must aggregate those 4 rows"
        );
    }

    #[tokio::test]
    async fn holds_group_by_nullable_column_and_empty_aggregates() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE g_rows (id bigint PRIMARY KEY, grp bigint, v bigint NOT NULL);
             INSERT INTO g_rows VALUES (1, NULL, 5), (2, NULL, 7), (3, 1, 9223372036854775807);",
        )
        .await
        .expect("schema");
        type Groups = Vec<(Option<i64>, (i64, Option<i64>))>;
        let got: Groups = db
            .query::<GRow>()
            .filter(GRow::ID.le(2_i64))
            .group_by(GRow::GRP)
            .aggregate((count_rows(), GRow::V.sum()))
            .all()
            .await
            .expect("grouped");
        assert_eq!(got, vec![(None, (2, Some(12)))]);
        let none = db
            .query::<GRow>()
            .filter(GRow::ID.gt(100_i64))
            .sum(GRow::V)
            .await
            .expect("empty sum");
        assert_eq!(none, None);
        let max = db
            .query::<GRow>()
            .filter(GRow::ID.gt(100_i64))
            .max(GRow::V)
            .await
            .expect("empty max");
        assert_eq!(max, None);
        // i64 overflow of a sum: an error, never a wrapped number.
        c.execute("INSERT INTO g_rows VALUES (4, 1, 9223372036854775807)", &[])
            .await
            .expect("insert");
        let over = db.query::<GRow>().sum(GRow::V).await;
        assert!(
            over.is_err(),
            "overflowing sum must be an error, got {over:?}"
        );
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "t_events")]
    struct Event {
        #[table(primary_key)]
        id: i64,
        at: DateTime<Utc>,
    }

    /// A cursor that `page` itself produced, for a row whose timestamp PostgreSQL and
    /// chrono both hold (year 10000), must resume, not be refused as forged.
    #[tokio::test]
    async fn defect_page_cursor_of_a_far_future_timestamp_is_refused() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE t_events (id bigint PRIMARY KEY, at timestamptz NOT NULL);
             INSERT INTO t_events VALUES (1, '2020-01-01Z'), (2, '10000-01-01Z'), (3, '10001-01-01Z');",
        )
        .await
        .expect("schema");
        let all = db
            .query::<Event>()
            .order_by(Event::AT.asc())
            .all()
            .await
            .expect("rows decode");
        assert_eq!(all.len(), 3);
        let first = db
            .query::<Event>()
            .order_by(Event::AT.asc())
            .page(2, None)
            .await
            .expect("first page");
        assert_eq!(first.items.len(), 2);
        let next = first.next.expect("a row follows");
        let second = db
            .query::<Event>()
            .order_by(Event::AT.asc())
            .page(2, Some(&next))
            .await;
        match second {
            Ok(p) => assert_eq!(p.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3]),
            Err(e) => panic!("page's own cursor refused: {e}"),
        }
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "c_parents")]
    struct CParent {
        #[table(primary_key)]
        id: i64,
        name: String,
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "c_kids", cache(ttl = 60))]
    struct CKid {
        #[table(primary_key)]
        id: i64,
        #[table(belongs_to = CParent)]
        parent_id: Option<i64>,
        body: String,
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "c_grand", cache(ttl = 60))]
    struct CGrand {
        #[table(primary_key)]
        id: i64,
        #[table(belongs_to = CKid)]
        kid_id: i64,
    }

    const CASCADE_SCHEMA: &str = "
        CREATE TABLE c_parents (id bigint PRIMARY KEY, name text NOT NULL);
        CREATE TABLE c_kids (id bigint PRIMARY KEY, parent_id bigint REFERENCES c_parents ON DELETE SET NULL, body text NOT NULL);
        CREATE TABLE c_grand (id bigint PRIMARY KEY, kid_id bigint NOT NULL REFERENCES c_kids ON DELETE CASCADE);
        INSERT INTO c_parents VALUES (1, 'a'), (2, 'b');
        INSERT INTO c_kids VALUES (10, 1, 'x'), (11, 1, 'y'), (12, 2, 'z');
        INSERT INTO c_grand VALUES (100, 10), (101, 11), (102, 12);";

    /// Cached queries and eager loads of the child after a parent delete whose
    /// `ON DELETE SET NULL` changed the children (schema present before the handle).
    #[tokio::test]
    async fn holds_cached_child_query_and_eager_load_after_parent_delete_set_null() {
        let (_, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(CASCADE_SCHEMA).await.expect("schema");
        let db = cached_db(&url).await;
        let q = || {
            db.query::<CKid>()
                .filter(CKid::PARENT_ID.eq(1_i64))
                .cached(60)
        };
        assert_eq!(q().count().await.expect("count"), 2);
        let kid = db.read::<CKid>(10).await.expect("read").expect("row");
        assert_eq!(kid.parent_id, Some(1));
        let loaded = db
            .query::<CParent>()
            .order_by(CParent::ID.asc())
            .load(children::<CKid>())
            .await
            .expect("load");
        assert_eq!(loaded[0].1.len(), 2);
        db.delete::<CParent>(1).await.expect("delete parent");
        assert_eq!(
            q().count().await.expect("count after"),
            0,
            "cached count stale"
        );
        let kid = db.read::<CKid>(10).await.expect("read").expect("row");
        assert_eq!(kid.parent_id, None, "row cache stale after SET NULL");
        let posts_with_parent = db
            .query::<CKid>()
            .order_by(CKid::ID.asc())
            .load(parent::<CParent>())
            .await
            .expect("parents");
        assert_eq!(posts_with_parent[0].1, None);
    }

    /// Same, but the tables (and their foreign keys) were created after the handle
    /// had already written once (a migration run by another process after start-up).
    #[tokio::test]
    async fn defect_cascade_into_table_created_after_first_write_leaves_cached_results_stale() {
        let (_, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute("CREATE TABLE c_warm (id bigint PRIMARY KEY, name text NOT NULL)")
            .await
            .expect("warm");
        let db = cached_db(&url).await;
        // Any write through the handle (it reads the catalog of foreign keys then).
        #[derive(Table, Debug, Clone)]
        #[table(name = "c_warm")]
        #[allow(dead_code)]
        struct Warm {
            #[table(primary_key)]
            id: i64,
            name: String,
        }
        db.create(NewWarm {
            id: 1,
            name: "w".into(),
        })
        .await
        .expect("warm write");
        c.batch_execute(CASCADE_SCHEMA).await.expect("schema");
        let q = || {
            db.query::<CGrand>()
                .filter(CGrand::KID_ID.eq(10_i64))
                .cached(60)
        };
        assert_eq!(q().count().await.expect("count"), 1);
        assert!(db.read::<CGrand>(100).await.expect("read").is_some());
        db.delete::<CKid>(10)
            .await
            .expect("delete kid (cascades to c_grand)");
        let raw_count: i64 = c
            .query_one("SELECT count(*) FROM c_grand WHERE kid_id = 10", &[])
            .await
            .expect("raw")
            .get(0);
        assert_eq!(raw_count, 0);
        assert_eq!(
            q().count().await.expect("count after"),
            0,
            "cached count of c_grand stale after a cascading delete returned Ok"
        );
        assert!(
            db.read::<CGrand>(100).await.expect("read").is_none(),
            "row cache of c_grand serves a row the cascade deleted"
        );
    }

    /// Transitive cascade: deleting a grandparent's row reaches grandchildren (SET NULL
    /// on kids does not delete them, so use a second chain with CASCADE all the way).
    #[tokio::test]
    async fn holds_transitive_cascade_invalidates_grandchild_cache() {
        let (_, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE c_parents (id bigint PRIMARY KEY, name text NOT NULL);
             CREATE TABLE c_kids (id bigint PRIMARY KEY, parent_id bigint REFERENCES c_parents ON DELETE CASCADE, body text NOT NULL);
             CREATE TABLE c_grand (id bigint PRIMARY KEY, kid_id bigint NOT NULL REFERENCES c_kids ON DELETE CASCADE);
             INSERT INTO c_parents VALUES (1, 'a'), (2, 'b');
             INSERT INTO c_kids VALUES (10, 1, 'x'), (11, 1, 'y'), (12, 2, 'z');
             INSERT INTO c_grand VALUES (100, 10), (101, 11), (102, 12);",
        )
        .await
        .expect("schema");
        let db = cached_db(&url).await;
        let q = || db.query::<CGrand>().cached(60);
        assert_eq!(q().count().await.expect("count"), 3);
        assert!(db.read::<CGrand>(100).await.expect("read").is_some());
        db.delete_where(CParent::ID.eq(1_i64))
            .await
            .expect("delete_where parent");
        assert_eq!(q().count().await.expect("count"), 1, "cached count stale");
        assert!(db.read::<CGrand>(100).await.expect("read").is_none());
        let tree = db
            .query::<CParent>()
            .order_by(CParent::ID.asc())
            .load(children::<CKid>().with(children::<CGrand>()))
            .await
            .expect("tree");
        assert_eq!(tree.len(), 1);
        assert_eq!(tree[0].1.len(), 1);
        assert_eq!(
            tree[0].1[0].1.iter().map(|g| g.id).collect::<Vec<_>>(),
            vec![102]
        );
    }
}

mod more {
    //! Round 43: joins, eager loads, paging, scopes and sizes against plain SQL.

    use crate::common;

    use chrono::{DateTime, Utc};
    use tabula::query::{Cursor, children, parent};
    use tabula::{Db, DbConfig, Table};
    use uuid::Uuid;

    use common::fixtures::{ident, raw, redis};

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "j_users")]
    struct JUser {
        #[table(primary_key)]
        id: i64,
        name: String,
        #[table(soft_delete)]
        deleted_at: Option<DateTime<Utc>>,
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "j_posts", cache(ttl = 60))]
    struct JPost {
        #[table(primary_key)]
        id: i64,
        #[table(belongs_to = JUser)]
        user_id: Option<i64>,
        title: String,
        #[table(soft_delete)]
        deleted_at: Option<DateTime<Utc>>,
    }

    const JSCHEMA: &str = "
        CREATE TABLE j_users (id bigint PRIMARY KEY, name text NOT NULL, deleted_at timestamptz);
        CREATE TABLE j_posts (id bigint PRIMARY KEY, user_id bigint, title text NOT NULL, deleted_at timestamptz);
        INSERT INTO j_users VALUES (1, 'a', NULL), (2, 'b', NULL), (3, 'gone', now()), (4, 'none', NULL);
        INSERT INTO j_posts VALUES
          (10, 1, 'a1', NULL), (11, 1, 'a2', NULL), (12, 1, 'a3-deleted', now()),
          (13, 2, 'b1', NULL), (14, NULL, 'orphan', NULL), (15, 99, 'dangling', NULL),
          (16, 3, 'of-gone', NULL);";

    async fn cached_db(url: &str) -> Db {
        Db::connect_with(DbConfig::new(url.to_owned()).cache(redis(&ident("r43"))))
            .await
            .expect("db")
    }

    #[tokio::test]
    async fn holds_left_join_fanout_soft_delete_and_nulls_match_sql() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(JSCHEMA).await.expect("schema");
        let oracle: Vec<(i64, Option<i64>)> = c
            .query(
                "SELECT u.id, p.id FROM j_users u LEFT JOIN j_posts p ON u.id = p.user_id AND p.deleted_at IS NULL
                 WHERE u.deleted_at IS NULL ORDER BY u.id, p.id NULLS LAST",
                &[],
            )
            .await
            .expect("oracle")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let got: Vec<(i64, Option<i64>)> = db
            .query::<JUser>()
            .left_join::<JPost>()
            .order_by(JUser::ID.asc())
            .order_by(JPost::ID.asc().nulls_last())
            .select((JUser::ID, JPost::ID))
            .all()
            .await
            .expect("join");
        assert_eq!(got, oracle);
        let count = db
            .query::<JUser>()
            .left_join::<JPost>()
            .count()
            .await
            .expect("count");
        assert_eq!(count, oracle.len() as i64);
        let whole = db
            .query::<JUser>()
            .inner_join::<JPost>()
            .order_by(JPost::ID.asc())
            .all()
            .await
            .expect("inner");
        assert_eq!(
            whole.iter().map(|(u, p)| (u.id, p.id)).collect::<Vec<_>>(),
            vec![(1, 10), (1, 11), (2, 13)]
        );
        let missing: Vec<i64> = db
            .query::<JUser>()
            .left_join::<JPost>()
            .missing::<JPost, _>()
            .select(JUser::ID)
            .all()
            .await
            .expect("missing");
        assert_eq!(missing, vec![4]);
    }

    #[tokio::test]
    async fn holds_eager_load_null_dangling_and_soft_deleted_both_sides() {
        let (_, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(JSCHEMA).await.expect("schema");
        let db = cached_db(&url).await;
        let tree = db
            .query::<JUser>()
            .order_by(JUser::ID.asc())
            .load(children::<JPost>())
            .await
            .expect("load");
        let shape: Vec<(i64, Vec<i64>)> = tree
            .iter()
            .map(|(u, ps)| (u.id, ps.iter().map(|p| p.id).collect()))
            .collect();
        assert_eq!(shape, vec![(1, vec![10, 11]), (2, vec![13]), (4, vec![])]);
        let up = db
            .query::<JPost>()
            .order_by(JPost::ID.asc())
            .load(parent::<JUser>())
            .await
            .expect("parents");
        let shape: Vec<(i64, Option<i64>)> = up
            .iter()
            .map(|(p, u)| (p.id, u.as_ref().map(|u| u.id)))
            .collect();
        assert_eq!(
            shape,
            vec![
                (10, Some(1)),
                (11, Some(1)),
                (13, Some(2)),
                (14, None),
                (15, None),
                (16, None)
            ],
            "soft-deleted parent 3 must not be loaded"
        );
        // A child soft-deleted after its rows were cached leaves the eager load.
        db.delete::<JPost>(11).await.expect("soft delete");
        let tree = db
            .query::<JUser>()
            .filter(JUser::ID.eq(1_i64))
            .load(children::<JPost>())
            .await
            .expect("load");
        assert_eq!(tree[0].1.iter().map(|p| p.id).collect::<Vec<_>>(), vec![10]);
        // A child moved to another parent after caching.
        db.update::<JPost>(10, JPostPatch::default().user_id(Some(2)))
            .await
            .expect("move");
        let tree = db
            .query::<JUser>()
            .order_by(JUser::ID.asc())
            .load(children::<JPost>())
            .await
            .expect("load");
        let shape: Vec<(i64, Vec<i64>)> = tree
            .iter()
            .map(|(u, ps)| (u.id, ps.iter().map(|p| p.id).collect()))
            .collect();
        assert_eq!(shape, vec![(1, vec![]), (2, vec![10, 13]), (4, vec![])]);
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "k_rows")]
    struct KRow {
        #[table(primary_key)]
        id: i64,
        score: Option<i32>,
    }

    /// Walk forward and back through ties and NULLs, descending, nulls first; compare
    /// with SQL's order.
    #[tokio::test]
    async fn holds_keyset_ties_nulls_desc_forward_and_back() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE k_rows (id bigint PRIMARY KEY, score int);
             INSERT INTO k_rows SELECT i, CASE WHEN i % 5 = 0 THEN NULL ELSE i % 3 END FROM generate_series(1, 53) i;",
        )
        .await
        .expect("schema");
        let oracle: Vec<i64> = c
            .query(
                "SELECT id FROM k_rows ORDER BY score DESC NULLS FIRST, id",
                &[],
            )
            .await
            .expect("oracle")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let q = || {
            db.query::<KRow>()
                .order_by(KRow::SCORE.desc().nulls_first())
        };
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut cursor: Option<Cursor> = None;
        loop {
            let p = q().page(7, cursor.as_ref()).await.expect("page");
            seen.extend(p.items.iter().map(|r| r.id));
            pages.push(p.items.iter().map(|r| r.id).collect::<Vec<_>>());
            match p.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, oracle);
        // Back from the last page.
        let last = q().page(7, cursor.as_ref()).await.expect("last");
        let mut back = Vec::new();
        let mut prev = last.prev.clone();
        while let Some(pc) = prev {
            let p = q().page_before(7, &pc).await.expect("before");
            back.push(p.items.iter().map(|r| r.id).collect::<Vec<_>>());
            prev = p.prev;
        }
        back.reverse();
        let mut expect = pages.clone();
        expect.pop();
        assert_eq!(back, expect, "walking back yields the same pages");
        // Huge page size.
        let all = q().page(u64::MAX, None).await.expect("huge");
        assert_eq!(all.items.len(), 53);
        assert!(all.next.is_none());
    }

    /// `page(0, None)` on a non-empty query: either refused, or an empty page that can
    /// still go on. An empty page claiming the end is wrong.
    #[tokio::test]
    async fn defect_page_size_zero_reports_the_end_of_a_nonempty_result() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE k_rows (id bigint PRIMARY KEY, score int);
             INSERT INTO k_rows SELECT i, i FROM generate_series(1, 5) i;",
        )
        .await
        .expect("schema");
        match db.query::<KRow>().page(0, None).await {
            Err(_) => {}
            Ok(p) => assert!(
                p.next.is_some(),
                "an empty page of size 0 says no rows follow (next = None) although 5 do: {p:?}"
            ),
        }
    }

    #[tokio::test]
    async fn holds_tampered_cursors_are_validation_errors() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE k_rows (id bigint PRIMARY KEY, score int);
             INSERT INTO k_rows SELECT i, i FROM generate_series(1, 5) i;",
        )
        .await
        .expect("schema");
        let p = db
            .query::<KRow>()
            .order_by(KRow::SCORE.asc())
            .page(2, None)
            .await
            .expect("page");
        let good = p.next.expect("next");
        // Another order.
        let other = db.query::<KRow>().page(2, Some(&good)).await;
        assert!(
            matches!(other, Err(tabula::Error::Validation(_))),
            "{other:?}"
        );
        // Forged values.
        let forge =
            |json: &str| Cursor::new(json.bytes().map(|b| format!("{b:02x}")).collect::<String>());
        let body = String::from_utf8(
            (0..good.as_str().len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&good.as_str()[i..i + 2], 16).expect("hex"))
                .collect(),
        )
        .expect("utf8");
        let fp = body.split('"').nth(3).expect("fingerprint").to_owned();
        for k in [
            r#"["99999999999","1"]"#,
            r#"["1",null]"#,
            r#"["1"]"#,
            r#"["x","1"]"#,
        ] {
            let c = forge(&format!(r#"{{"o":"{fp}","k":{k}}}"#));
            let r = db
                .query::<KRow>()
                .order_by(KRow::SCORE.asc())
                .page(2, Some(&c))
                .await;
            assert!(matches!(r, Err(tabula::Error::Validation(_))), "{k}: {r:?}");
        }
        for bad in ["", "zz", "7b", "7b7d"] {
            let r = db
                .query::<KRow>()
                .order_by(KRow::SCORE.asc())
                .page_before(2, &Cursor::new(bad))
                .await;
            assert!(
                matches!(r, Err(tabula::Error::Validation(_))),
                "{bad}: {r:?}"
            );
        }
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "s_parents")]
    struct SParent {
        #[table(primary_key)]
        id: i64,
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "s_kids", cache(ttl = 60))]
    struct SKid {
        #[table(primary_key)]
        id: i64,
        #[table(belongs_to = SParent)]
        parent_id: i64,
        owner: Uuid,
        n: i32,
    }

    /// RLS on the child only: eager loads, joins, aggregates and cached queries under
    /// two users show each only their own children, after the unscoped handle warmed
    /// the row cache.
    #[tokio::test]
    async fn holds_scoped_eager_join_aggregate_respect_child_rls() {
        let (_, url) = common::db_and_url().await;
        let c = raw(&url).await;
        let alice = Uuid::new_v4();
        let bob = Uuid::new_v4();
        c.batch_execute(&format!(
            "CREATE TABLE s_parents (id bigint PRIMARY KEY);
             CREATE TABLE s_kids (id bigint PRIMARY KEY, parent_id bigint NOT NULL REFERENCES s_parents, owner uuid NOT NULL, n int NOT NULL);
             GRANT SELECT ON s_parents, s_kids TO authenticated;
             ALTER TABLE s_kids ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own ON s_kids FOR SELECT USING (auth.uid() = owner);
             INSERT INTO s_parents VALUES (1), (2);
             INSERT INTO s_kids VALUES (10, 1, '{alice}', 1), (11, 1, '{bob}', 2), (12, 2, '{alice}', 4), (13, 2, '{bob}', 8);"
        ))
        .await
        .expect("schema");
        let db = cached_db(&url).await;
        let all = db
            .query::<SParent>()
            .order_by(SParent::ID.asc())
            .load(children::<SKid>())
            .await
            .expect("warm");
        assert_eq!(all.iter().map(|(_, k)| k.len()).sum::<usize>(), 4);
        for (user, ids, total) in [(alice, vec![10, 12], 5_i64), (bob, vec![11, 13], 10)] {
            let scoped = db.as_user(user);
            for _ in 0..2 {
                let tree = scoped
                    .query::<SParent>()
                    .order_by(SParent::ID.asc())
                    .load(children::<SKid>())
                    .await
                    .expect("scoped load");
                let got: Vec<i64> = tree
                    .iter()
                    .flat_map(|(_, k)| k.iter().map(|k| k.id))
                    .collect();
                assert_eq!(got, ids, "eager load under scope");
                let joined: Vec<i64> = scoped
                    .query::<SParent>()
                    .inner_join::<SKid>()
                    .order_by(SKid::ID.asc())
                    .select(SKid::ID)
                    .all()
                    .await
                    .expect("join");
                assert_eq!(joined, ids, "join under scope");
                let sum = scoped.query::<SKid>().sum(SKid::N).await.expect("sum");
                assert_eq!(sum, Some(total));
                let cached: Vec<i64> = scoped
                    .query::<SKid>()
                    .order_by(SKid::ID.asc())
                    .cached(60)
                    .all()
                    .await
                    .expect("cached")
                    .iter()
                    .map(|k| k.id)
                    .collect();
                assert_eq!(cached, ids, "cached query under scope");
                let page = scoped
                    .query::<SKid>()
                    .cached(60)
                    .page(10, None)
                    .await
                    .expect("cached page");
                assert_eq!(page.items.iter().map(|k| k.id).collect::<Vec<_>>(), ids);
                let kids = scoped
                    .read_many::<SKid>(&[10, 11, 12, 13])
                    .await
                    .expect("many");
                assert_eq!(
                    kids.iter().flatten().map(|k| k.id).collect::<Vec<_>>(),
                    ids,
                    "read_many under scope"
                );
            }
        }
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "h_parents")]
    struct HParent {
        #[table(primary_key)]
        id: i64,
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "h_kids", cache(ttl = 60))]
    struct HKid {
        #[table(primary_key)]
        id: i64,
        #[table(belongs_to = HParent)]
        parent_id: i64,
    }

    /// 70,000 parents and 100,000 children: one eager load, `is_in` over 70,000 keys.
    #[tokio::test]
    async fn holds_hostile_sizes_eager_load_and_is_in() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE h_parents (id bigint PRIMARY KEY);
             CREATE TABLE h_kids (id bigint PRIMARY KEY, parent_id bigint NOT NULL);
             INSERT INTO h_parents SELECT generate_series(1, 70000);
             INSERT INTO h_kids SELECT i, (i % 70000) + 1 FROM generate_series(1, 100000) i;",
        )
        .await
        .expect("schema");
        let started = std::time::Instant::now();
        let tree = db
            .query::<HParent>()
            .load(children::<HKid>())
            .await
            .expect("eager 70k/100k");
        assert_eq!(tree.len(), 70_000);
        assert_eq!(tree.iter().map(|(_, k)| k.len()).sum::<usize>(), 100_000);
        assert!(
            tree.iter()
                .all(|(p, ks)| ks.iter().all(|k| k.parent_id == p.id))
        );
        let n = db
            .query::<HKid>()
            .filter(HKid::PARENT_ID.is_in(1..=70_000_i64))
            .count()
            .await
            .expect("is_in 70k");
        assert_eq!(n, 100_000);
        let cdb = cached_db(&url).await;
        let tree = cdb
            .query::<HParent>()
            .filter(HParent::ID.le(20_000_i64))
            .load(children::<HKid>())
            .await
            .expect("cached eager");
        let raw_n: i64 = c
            .query_one("SELECT count(*) FROM h_kids WHERE parent_id <= 20000", &[])
            .await
            .expect("raw")
            .get(0);
        assert_eq!(
            tree.iter().map(|(_, k)| k.len()).sum::<usize>() as i64,
            raw_n
        );
        assert!(started.elapsed().as_secs() < 60);
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "n_nodes", cache(ttl = 60))]
    struct Node {
        #[table(primary_key)]
        id: i64,
        #[table(belongs_to = Node)]
        parent_id: Option<i64>,
    }

    /// A self-referencing table with a cycle: two levels down, and parents.
    #[tokio::test]
    async fn holds_self_referencing_relation_with_cycle() {
        let (_, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE n_nodes (id bigint PRIMARY KEY, parent_id bigint REFERENCES n_nodes ON DELETE SET NULL);
             INSERT INTO n_nodes VALUES (1, NULL), (2, 1), (3, 1), (4, 2);
             UPDATE n_nodes SET parent_id = 4 WHERE id = 1;",
        )
        .await
        .expect("schema");
        let db = cached_db(&url).await;
        let tree = db
            .query::<Node>()
            .order_by(Node::ID.asc())
            .load(children::<Node>().with(children::<Node>()))
            .await
            .expect("self load");
        type Tree = Vec<(i64, Vec<(i64, Vec<i64>)>)>;
        let shape: Tree = tree
            .iter()
            .map(|(n, k)| {
                (
                    n.id,
                    k.iter()
                        .map(|(k, g)| (k.id, g.iter().map(|g| g.id).collect()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, vec![(2, vec![4]), (3, vec![])]),
                (2, vec![(4, vec![1])]),
                (3, vec![]),
                (4, vec![(1, vec![2, 3])]),
            ]
        );
        // Delete 2: SET NULL on 4 (same table): the cached rows must follow.
        let _ = db.read::<Node>(4).await.expect("warm");
        db.delete::<Node>(2).await.expect("delete");
        let four = db.read::<Node>(4).await.expect("read").expect("row");
        assert_eq!(
            four.parent_id, None,
            "self-cascade SET NULL stale in row cache"
        );
        let up = db
            .query::<Node>()
            .order_by(Node::ID.asc())
            .load(parent::<Node>())
            .await
            .expect("parents");
        let shape: Vec<(i64, Option<i64>)> = up
            .iter()
            .map(|(n, p)| (n.id, p.as_ref().map(|p| p.id)))
            .collect();
        assert_eq!(shape, vec![(1, Some(4)), (3, Some(1)), (4, None)]);
    }

    #[derive(Table, Debug, Clone, PartialEq)]
    #[table(name = "f_rows")]
    struct FRow {
        #[table(primary_key)]
        id: i64,
        x: Option<f64>,
    }

    /// Keyset paging over float8 with NaN, infinities, -0, NULL: same order as SQL.
    #[tokio::test]
    async fn holds_keyset_over_special_floats() {
        let (db, url) = common::db_and_url().await;
        let c = raw(&url).await;
        c.batch_execute(
            "CREATE TABLE f_rows (id bigint PRIMARY KEY, x float8);
             INSERT INTO f_rows VALUES (1, 'NaN'), (2, 'Infinity'), (3, '-Infinity'), (4, '-0'), (5, 0),
               (6, NULL), (7, 1e-300), (8, 0.1), (9, 'NaN'), (10, 1.7976931348623157e308), (11, 5e-324);",
        )
        .await
        .expect("schema");
        for desc in [false, true] {
            let oracle: Vec<i64> = c
                .query(
                    &format!(
                        "SELECT id FROM f_rows ORDER BY x {} NULLS LAST, id",
                        if desc { "DESC" } else { "ASC" }
                    ),
                    &[],
                )
                .await
                .expect("oracle")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let key = if desc { FRow::X.desc() } else { FRow::X.asc() };
            let mut seen = Vec::new();
            let mut cursor: Option<Cursor> = None;
            loop {
                let p = db
                    .query::<FRow>()
                    .order_by(key.clone().nulls_last())
                    .page(2, cursor.as_ref())
                    .await
                    .expect("page");
                seen.extend(p.items.iter().map(|r| r.id));
                match p.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            assert_eq!(seen, oracle, "desc={desc}");
        }
    }
}
