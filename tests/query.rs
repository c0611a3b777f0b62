//! The typed query builder on a real PostgreSQL.

mod common;

use common::*;
use tabula::{Db, Error};
use uuid::Uuid;

async fn seeded() -> (Db, Vec<Profile>) {
    let db = db().await;
    let mut rows = Vec::new();
    for (i, name) in ["ann", "bob", "cid", "dee", "eve"].iter().enumerate() {
        let avatar = (i % 2 == 0).then(|| format!("{name}.jpg"));
        let p = db
            .create(NewProfile {
                avatar_url: avatar,
                ..new_profile(name)
            })
            .await
            .expect("seed");
        rows.push(p);
    }
    // Two of them inactive.
    db.execute_batch("UPDATE profiles SET status = 'inactive' WHERE username IN ('bob', 'dee')")
        .await
        .expect("statuses");
    (db, rows)
}

fn names(rows: &[Profile]) -> Vec<&str> {
    rows.iter().map(|p| p.username.as_str()).collect()
}

#[tokio::test]
async fn seed_query_selects_filters_orders_and_limits() {
    let (db, _) = seeded().await;
    let rows: Vec<(Uuid, String, Option<String>)> = db
        .query::<Profile>()
        .select((Profile::ID, Profile::USERNAME, Profile::AVATAR_URL))
        .filter(Profile::STATUS.eq("active"))
        .order_by(Profile::USERNAME.desc())
        .limit(2)
        .all()
        .await
        .expect("query");
    let got: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(got, ["eve", "cid"]);
    assert_eq!(rows[0].2.as_deref(), Some("eve.jpg"));
}

#[tokio::test]
async fn comparison_filters_and_combinators() {
    let (db, _) = seeded().await;
    let q = |f| {
        db.query::<Profile>()
            .filter(f)
            .order_by(Profile::USERNAME.asc())
            .all()
    };
    assert_eq!(
        names(&q(Profile::USERNAME.lt("cid")).await.expect("lt")),
        ["ann", "bob"]
    );
    assert_eq!(
        names(&q(Profile::USERNAME.le("bob")).await.expect("le")),
        ["ann", "bob"]
    );
    assert_eq!(
        names(&q(Profile::USERNAME.gt("dee")).await.expect("gt")),
        ["eve"]
    );
    assert_eq!(
        names(&q(Profile::USERNAME.ge("dee")).await.expect("ge")),
        ["dee", "eve"]
    );
    assert_eq!(
        names(&q(Profile::USERNAME.ne("ann")).await.expect("ne")).len(),
        4
    );
    assert_eq!(
        names(
            &q(Profile::USERNAME.between("bob", "dee"))
                .await
                .expect("between")
        ),
        ["bob", "cid", "dee"]
    );
    assert_eq!(
        names(
            &q(Profile::USERNAME.is_in(["eve", "ann", "zed"]))
                .await
                .expect("in")
        ),
        ["ann", "eve"]
    );
    assert!(
        q(Profile::USERNAME.is_in(Vec::<String>::new()))
            .await
            .expect("in ()")
            .is_empty()
    );
    assert_eq!(
        q(Profile::USERNAME.not_in(Vec::<String>::new()))
            .await
            .expect("not in ()")
            .len(),
        5
    );
    assert_eq!(
        names(
            &q(Profile::USERNAME.not_in(["ann", "bob"]))
                .await
                .expect("not in")
        ),
        ["cid", "dee", "eve"]
    );
    assert_eq!(
        names(&q(Profile::USERNAME.like("%e%")).await.expect("like")),
        ["dee", "eve"]
    );
    assert_eq!(
        names(&q(Profile::USERNAME.ilike("A%")).await.expect("ilike")),
        ["ann"]
    );
    assert_eq!(
        names(&q(Profile::AVATAR_URL.is_null()).await.expect("null")),
        ["bob", "dee"]
    );
    assert_eq!(
        q(Profile::AVATAR_URL.is_not_null())
            .await
            .expect("not null")
            .len(),
        3
    );
    assert_eq!(
        names(
            &q(Profile::STATUS
                .eq("inactive")
                .or(Profile::USERNAME.eq("eve")))
            .await
            .expect("or")
        ),
        ["bob", "dee", "eve"]
    );
    assert_eq!(
        names(
            &q(Profile::STATUS
                .eq("active")
                .and(Profile::AVATAR_URL.is_not_null())
                .not())
            .await
            .expect("not")
        ),
        ["bob", "dee"]
    );
    assert_eq!(
        names(
            &q(Profile::AVATAR_URL.eq("cid.jpg"))
                .await
                .expect("nullable eq")
        ),
        ["cid"]
    );
}

#[tokio::test]
async fn order_limit_offset_and_nulls_placement() {
    let (db, _) = seeded().await;
    let page: Vec<String> = db
        .query::<Profile>()
        .select(Profile::USERNAME)
        .order_by(Profile::USERNAME.asc())
        .limit(2)
        .offset(2)
        .all()
        .await
        .expect("page");
    assert_eq!(page, ["cid", "dee"]);
    let by_avatar: Vec<Option<String>> = db
        .query::<Profile>()
        .select(Profile::AVATAR_URL)
        .order_by(Profile::AVATAR_URL.asc().nulls_first())
        .order_by(Profile::USERNAME.asc())
        .all()
        .await
        .expect("nulls first");
    assert_eq!(by_avatar[..2], [None, None]);
    assert_eq!(by_avatar[2].as_deref(), Some("ann.jpg"));
}

#[tokio::test]
async fn first_one_count_and_exists() {
    let (db, rows) = seeded().await;
    let first = db
        .query::<Profile>()
        .order_by(Profile::USERNAME.asc())
        .first()
        .await
        .expect("first");
    assert_eq!(first.map(|p| p.username).as_deref(), Some("ann"));
    let one = db
        .query::<Profile>()
        .filter(Profile::ID.eq(rows[2].id))
        .one()
        .await
        .expect("one");
    assert_eq!(one, rows[2]);
    let none = db
        .query::<Profile>()
        .filter(Profile::USERNAME.eq("zed"))
        .one()
        .await
        .expect_err("none");
    assert!(
        matches!(none, Error::NotFound { table: "profiles" }),
        "got {none:?}"
    );
    let many = db.query::<Profile>().one().await.expect_err("many");
    assert!(matches!(many, Error::Validation(_)), "got {many:?}");
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 5);
    assert_eq!(
        db.query::<Profile>()
            .filter(Profile::STATUS.eq("active"))
            .count()
            .await
            .expect("count"),
        3
    );
    assert_eq!(
        db.query::<Profile>()
            .limit(2)
            .count()
            .await
            .expect("paged count"),
        2
    );
    assert!(
        db.query::<Profile>()
            .filter(Profile::USERNAME.eq("eve"))
            .exists()
            .await
            .expect("exists")
    );
    assert!(
        !db.query::<Profile>()
            .filter(Profile::USERNAME.eq("zed"))
            .exists()
            .await
            .expect("exists")
    );
}

#[tokio::test]
async fn queries_run_inside_transactions_and_see_their_writes() {
    let (db, _) = seeded().await;
    let seen = db
        .transaction(|tx| async move {
            tx.create(new_profile("fay")).await?;
            tx.query::<Profile>().count().await
        })
        .await
        .expect("tx");
    assert_eq!(seen, 6);
}

#[tokio::test]
async fn injection_strings_in_filters_are_just_values() {
    let (db, _) = seeded().await;
    let hits = db
        .query::<Profile>()
        .filter(Profile::USERNAME.eq("ann' OR '1'='1"))
        .all()
        .await
        .expect("query");
    assert!(hits.is_empty());
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 5);
}

/// Statements are rendered once per shape and reused; a reused statement must take
/// this call's values — filter values, list lengths, limit, offset — never the values
/// of the call that rendered it, and a shape that differs in anything the SQL depends
/// on (operator, column, negation, order, selection) must not reuse another's text.
#[tokio::test]
async fn a_statement_rendered_once_per_shape_takes_each_calls_values() {
    let (db, _) = seeded().await;
    let by = |f| {
        db.query::<Profile>()
            .filter(f)
            .order_by(Profile::USERNAME.asc())
            .all()
    };
    // One shape, many values.
    for name in ["ann", "bob", "eve", "nobody"] {
        let rows = by(Profile::USERNAME.eq(name)).await.expect("eq");
        let expected: Vec<&str> = ["ann", "bob", "eve"]
            .into_iter()
            .filter(|n| *n == name)
            .collect();
        assert_eq!(names(&rows), expected, "eq {name}");
    }
    // Same columns, another operator or a negation: another statement.
    assert_eq!(
        names(&by(Profile::USERNAME.ne("bob")).await.expect("ne")),
        ["ann", "cid", "dee", "eve"]
    );
    assert_eq!(
        names(&by(Profile::USERNAME.eq("bob").not()).await.expect("not")),
        ["ann", "cid", "dee", "eve"]
    );
    assert_eq!(
        names(&by(Profile::USERNAME.gt("bob")).await.expect("gt")),
        ["cid", "dee", "eve"]
    );
    // Lists of every length share one statement (one array parameter).
    for list in [vec![], vec!["dee"], vec!["ann", "eve", "zed"]] {
        let rows = by(Profile::USERNAME.is_in(list.clone())).await.expect("in");
        let mut expected: Vec<&str> = list.into_iter().filter(|n| *n != "zed").collect();
        expected.sort_unstable();
        assert_eq!(names(&rows), expected);
    }
    // Limit and offset are values too, and their presence is part of the shape.
    let page = |limit: Option<u64>, offset: Option<u64>| {
        let mut q = db.query::<Profile>().order_by(Profile::USERNAME.asc());
        if let Some(n) = limit {
            q = q.limit(n);
        }
        if let Some(n) = offset {
            q = q.offset(n);
        }
        q.all()
    };
    assert_eq!(
        names(&page(Some(2), Some(1)).await.expect("p")),
        ["bob", "cid"]
    );
    assert_eq!(names(&page(Some(1), Some(3)).await.expect("p")), ["dee"]);
    assert_eq!(
        names(&page(Some(3), Some(3)).await.expect("p")),
        ["dee", "eve"]
    );
    assert_eq!(names(&page(None, Some(4)).await.expect("p")), ["eve"]);
    assert_eq!(names(&page(Some(1), None).await.expect("p")), ["ann"]);
    // The order is part of the shape.
    let last = db
        .query::<Profile>()
        .order_by(Profile::USERNAME.desc())
        .first()
        .await
        .expect("desc");
    assert_eq!(last.map(|p| p.username).as_deref(), Some("eve"));
    // Counts: with and without a page, after rows statements of the same filter.
    let count = |name: &'static str| {
        db.query::<Profile>()
            .filter(Profile::USERNAME.ne(name))
            .count()
    };
    assert_eq!(count("ann").await.expect("count"), 4);
    assert_eq!(count("nobody").await.expect("count"), 5);
    for (limit, offset, expected) in [(2, 0, 2), (10, 3, 2), (1, 4, 1), (3, 5, 0)] {
        let n = db
            .query::<Profile>()
            .limit(limit)
            .offset(offset)
            .count()
            .await
            .expect("count of a page");
        assert_eq!(n, expected, "limit {limit} offset {offset}");
    }
    let paged = db
        .query::<Profile>()
        .filter(Profile::USERNAME.ne("ann"))
        .order_by(Profile::USERNAME.asc())
        .page_offset(2, 3, tabula::query::Total::Exact)
        .await
        .expect("page");
    assert_eq!(paged.total, Some(4));
    assert_eq!(names(&paged.items), ["eve"]);
    // Another selection of the same filter: another statement.
    let ids: Vec<String> = db
        .query::<Profile>()
        .select(Profile::USERNAME)
        .filter(Profile::USERNAME.eq("cid"))
        .all()
        .await
        .expect("select");
    assert_eq!(ids, ["cid"]);
}

/// The profiles table read by a model that disagrees with it about a column's type.
#[derive(tabula::Table, Debug, Clone)]
#[table(name = "profiles")]
#[allow(dead_code)] // read only to fail
struct Mistyped {
    #[table(primary_key, generated)]
    id: Uuid,
    /// `text` in the table.
    username: i32,
}

/// Rows are decoded as they arrive; a row that does not decode is a `Decode` error
/// naming the table and column, the rest of the answer is read off the connection, and
/// the connection serves the next query.
#[tokio::test]
async fn a_row_that_does_not_decode_is_a_decode_error_and_the_connection_serves_on() {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(tabula::DbConfig::new(url).pool_size(1))
        .await
        .expect("db");
    db.create_many((0..500).map(|i| new_profile(&format!("p{i}"))).collect())
        .await
        .expect("rows");
    let err = db
        .query::<Mistyped>()
        .all()
        .await
        .expect_err("text is not an int4");
    match err {
        Error::Decode { table, column, .. } => {
            assert_eq!((table, column), ("profiles", "username"));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // The same (only) connection answers the next query in full.
    assert_eq!(db.query::<Profile>().all().await.expect("next").len(), 500);
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 500);
}
