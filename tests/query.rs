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
