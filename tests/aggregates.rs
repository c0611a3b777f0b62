//! Aggregates, typed as PostgreSQL returns them, checked against the same sums in
//! plain Rust over the same rows.

mod common;

use std::collections::BTreeMap;

use tabula::Table;

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "a_posts")]
struct Post {
    #[table(primary_key, generated)]
    id: i64,
    user_id: i64,
    likes: i32,
    views: i64,
    score: Option<f64>,
}

#[tokio::test]
async fn sums_counts_and_extremes_match_the_oracle() {
    let db = common::db().await;
    db.execute_batch(
        "CREATE TABLE a_posts (id bigserial PRIMARY KEY, user_id bigint NOT NULL, likes int NOT NULL, views bigint NOT NULL, score float8)",
    )
    .await
    .expect("table");
    let rows: Vec<NewPost> = (0..40)
        .map(|i: i64| NewPost {
            user_id: i % 5,
            likes: (i * 7 % 13) as i32,
            views: i * 1_000_000_007,
            score: (i % 3 != 0).then_some(i as f64 / 4.0),
        })
        .collect();
    let posts = db.create_many(rows).await.expect("rows");

    let likes: i64 = posts.iter().map(|p| i64::from(p.likes)).sum();
    assert_eq!(
        db.query::<Post>().sum(Post::LIKES).await.expect("sum"),
        Some(likes)
    );
    let views: i64 = posts.iter().map(|p| p.views).sum();
    assert_eq!(
        db.query::<Post>().sum(Post::VIEWS).await.expect("sum"),
        Some(views)
    );
    let scores: Vec<f64> = posts.iter().filter_map(|p| p.score).collect();
    let score_sum = db
        .query::<Post>()
        .sum(Post::SCORE)
        .await
        .expect("sum")
        .expect("some");
    assert!((score_sum - scores.iter().sum::<f64>()).abs() < 1e-9);
    let avg = db
        .query::<Post>()
        .avg(Post::LIKES)
        .await
        .expect("avg")
        .expect("some");
    assert!((avg - likes as f64 / posts.len() as f64).abs() < 1e-9);
    assert_eq!(
        db.query::<Post>().max(Post::LIKES).await.expect("max"),
        posts.iter().map(|p| p.likes).max()
    );
    assert_eq!(
        db.query::<Post>()
            .filter(Post::USER_ID.eq(2))
            .min(Post::VIEWS)
            .await
            .expect("min"),
        posts
            .iter()
            .filter(|p| p.user_id == 2)
            .map(|p| p.views)
            .min()
    );
    // Nothing matches: NULL, not zero.
    assert_eq!(
        db.query::<Post>()
            .filter(Post::USER_ID.eq(99))
            .sum(Post::LIKES)
            .await
            .expect("none"),
        None
    );

    // Per group, in the group's order.
    let mut count_of: BTreeMap<i64, i64> = BTreeMap::new();
    let mut likes_of: BTreeMap<i64, i64> = BTreeMap::new();
    for post in posts.iter().filter(|p| p.likes > 3) {
        *count_of.entry(post.user_id).or_default() += 1;
        *likes_of.entry(post.user_id).or_default() += i64::from(post.likes);
    }
    let counted = db
        .query::<Post>()
        .filter(Post::LIKES.gt(3))
        .count_by(Post::USER_ID)
        .await
        .expect("count_by");
    assert_eq!(counted, count_of.into_iter().collect::<Vec<_>>());
    let summed = db
        .query::<Post>()
        .filter(Post::LIKES.gt(3))
        .sum_by(Post::USER_ID, Post::LIKES)
        .await
        .expect("sum_by");
    assert_eq!(
        summed,
        likes_of
            .into_iter()
            .map(|(u, l)| (u, Some(l)))
            .collect::<Vec<_>>()
    );
}

/// Per (user, likes parity) group: how many posts, their views, the best score —
/// for groups whose like total passes a bar — against the same grouping in Rust.
#[tokio::test]
async fn group_by_with_having_matches_the_oracle() {
    use tabula::query::count_rows;
    let db = common::db().await;
    db.execute_batch(
        "CREATE TABLE a_posts (id bigserial PRIMARY KEY, user_id bigint NOT NULL, likes int NOT NULL, views bigint NOT NULL, score float8)",
    )
    .await
    .expect("table");
    let rows: Vec<NewPost> = (0..60)
        .map(|i: i64| NewPost {
            user_id: i % 4,
            likes: (i * 7 % 5) as i32,
            views: i * 1_000,
            score: (i % 3 != 0).then_some(i as f64),
        })
        .collect();
    let posts = db.create_many(rows).await.expect("rows");

    type Stats = (i64, Option<i64>, Option<f64>, i64);
    let mut oracle: BTreeMap<(i64, i32), (Stats, i64)> = BTreeMap::new();
    for p in posts.iter().filter(|p| p.id % 7 != 0) {
        let ((count, views, best, scored), likes) = oracle
            .entry((p.user_id, p.likes))
            .or_insert(((0, None, None, 0), 0));
        *count += 1;
        *views = Some(views.unwrap_or(0) + p.views);
        if let Some(s) = p.score {
            *best = Some(best.map_or(s, |b: f64| b.max(s)));
            *scored += 1;
        }
        *likes += i64::from(p.likes);
    }
    let expected: Vec<((i64, i32), Stats)> = oracle
        .into_iter()
        .filter(|(_, (_, likes))| *likes > 4)
        .map(|(group, (stats, _))| (group, stats))
        .collect();
    assert!(expected.len() > 3, "the bar keeps some groups");

    let got = db
        .query::<Post>()
        .filter(Post::ID.ne(0_i64)) // filters apply before grouping
        .filter(Post::ID.not_in((1..=60).filter(|id| id % 7 == 0)))
        .group_by((Post::USER_ID, Post::LIKES))
        .aggregate((
            count_rows(),
            Post::VIEWS.sum(),
            Post::SCORE.max(),
            Post::SCORE.count(),
        ))
        .having(Post::LIKES.sum().gt(4_i64))
        .all()
        .await
        .expect("group by");
    assert_eq!(got, expected);

    // Limit and offset count groups; an empty result is no error.
    let second = db
        .query::<Post>()
        .group_by(Post::USER_ID)
        .aggregate(count_rows())
        .offset(1)
        .limit(1)
        .all()
        .await
        .expect("paged groups");
    assert_eq!(second, [(1, 15)]);
    let none = db
        .query::<Post>()
        .group_by(Post::USER_ID)
        .aggregate(count_rows())
        .having(count_rows().gt(1_000))
        .all()
        .await
        .expect("no group");
    assert!(none.is_empty());
    let locked = db
        .query::<Post>()
        .for_update()
        .group_by(Post::USER_ID)
        .aggregate(count_rows())
        .all()
        .await;
    assert!(
        matches!(locked, Err(tabula::Error::Misuse(_))),
        "{locked:?}"
    );
}

#[tokio::test]
async fn aggregates_of_a_limited_query_cover_only_its_rows() {
    let db = common::db().await;
    db.execute_batch(
        "CREATE TABLE a_posts (id bigserial PRIMARY KEY, user_id bigint NOT NULL, likes int NOT NULL, views bigint NOT NULL, score float8)",
    )
    .await
    .expect("table");
    let rows: Vec<NewPost> = (1..=10)
        .map(|i: i64| NewPost {
            user_id: i % 2,
            likes: (i * 100) as i32,
            views: i,
            score: None,
        })
        .collect();
    db.create_many(rows).await.expect("rows");
    let top = || db.query::<Post>().order_by(Post::LIKES.desc()).limit(3);
    assert_eq!(top().count().await.expect("count"), 3);
    assert_eq!(
        top().sum(Post::LIKES).await.expect("sum"),
        Some(1000 + 900 + 800)
    );
    assert_eq!(top().min(Post::LIKES).await.expect("min"), Some(800));
    assert_eq!(
        top()
            .offset(1)
            .max(Post::VIEWS)
            .await
            .expect("max after offset"),
        Some(9)
    );
    assert_eq!(
        top().count_by(Post::USER_ID).await.expect("count_by"),
        [(0, 2), (1, 1)]
    );
}
