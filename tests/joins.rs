//! Typed joins along declared relations and explicit columns, checked against a
//! plain-Rust oracle over the same rows (a property test over random data and
//! filters), with soft deletes, selections across tables, counts and misuse.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tabula::query::children;
use tabula::{Db, Error, Table};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "j_users")]
struct User {
    #[table(primary_key, generated)]
    id: i64,
    name: String,
    hair_color: Option<String>,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "j_posts")]
struct Post {
    #[table(primary_key, generated)]
    id: i64,
    #[table(belongs_to = User)]
    user_id: i64,
    title: String,
    #[table(soft_delete)]
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "j_comments")]
struct Comment {
    #[table(primary_key, generated)]
    id: i64,
    #[table(belongs_to = Post)]
    post_id: i64,
    body: String,
}

/// No relation declared: joined with explicit columns.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "j_badges")]
struct Badge {
    #[table(primary_key)]
    owner_name: String,
    level: i32,
}

const SCHEMA: &str = "
    CREATE TABLE j_users (id bigserial PRIMARY KEY, name text NOT NULL, hair_color text);
    CREATE TABLE j_posts (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES j_users,
                          title text NOT NULL, deleted_at timestamptz);
    CREATE TABLE j_comments (id bigserial PRIMARY KEY, post_id bigint NOT NULL REFERENCES j_posts,
                             body text NOT NULL);
    CREATE TABLE j_badges (owner_name text PRIMARY KEY, level int4 NOT NULL);";

/// Users with their posts, each with its comments.
type Tree = Vec<(User, Vec<(Post, Vec<Comment>)>)>;

const COLORS: [Option<&str>; 3] = [Some("black"), Some("brown"), None];

struct Data {
    users: Vec<User>,
    posts: Vec<Post>,
    comments: Vec<Comment>,
}

/// `user_posts[i]` posts for user i, post j gets `j % 3` comments; `deleted` posts are
/// soft-deleted.
async fn seed(db: &Db, user_posts: &[usize], colors: &[usize], deleted: &[usize]) -> Data {
    db.execute_batch("TRUNCATE j_users, j_posts, j_comments, j_badges RESTART IDENTITY")
        .await
        .expect("truncate");
    let users = db
        .create_many(
            user_posts
                .iter()
                .enumerate()
                .map(|(i, _)| NewUser {
                    name: format!("u{i}"),
                    hair_color: COLORS[colors.get(i).copied().unwrap_or(0) % 3].map(str::to_owned),
                })
                .collect(),
        )
        .await
        .expect("users");
    let mut new_posts = Vec::new();
    for (user, n) in users.iter().zip(user_posts) {
        for k in 0..*n {
            new_posts.push(NewPost {
                user_id: user.id,
                title: format!("{}-p{k}", user.name),
            });
        }
    }
    let mut posts = db.create_many(new_posts).await.expect("posts");
    let mut doomed: Vec<usize> = deleted.iter().map(|d| d % posts.len().max(1)).collect();
    doomed.sort_unstable();
    doomed.dedup();
    for d in doomed {
        if let Some(post) = posts.get(d).cloned() {
            db.delete::<Post>(post.id).await.expect("soft delete");
        }
    }
    posts = db
        .query::<Post>()
        .with_deleted()
        .order_by(Post::ID.asc())
        .all()
        .await
        .expect("posts back");
    let mut new_comments = Vec::new();
    for (j, post) in posts.iter().enumerate() {
        for c in 0..j % 3 {
            new_comments.push(NewComment {
                post_id: post.id,
                body: format!("c{c}"),
            });
        }
    }
    let comments = db.create_many(new_comments).await.expect("comments");
    Data {
        users,
        posts,
        comments,
    }
}

impl Data {
    fn live_posts(&self) -> impl Iterator<Item = &Post> {
        self.posts.iter().filter(|p| p.deleted_at.is_none())
    }

    /// The oracle of `users LEFT JOIN posts` (inner when `inner`), filtered by hair
    /// colour, ordered by user then post.
    fn user_posts(&self, inner: bool, color: Option<&str>) -> Vec<(User, Option<Post>)> {
        let mut out = Vec::new();
        for user in &self.users {
            if color.is_some_and(|c| user.hair_color.as_deref() != Some(c)) {
                continue;
            }
            let mut theirs: Vec<&Post> =
                self.live_posts().filter(|p| p.user_id == user.id).collect();
            theirs.sort_by_key(|p| p.id);
            if theirs.is_empty() && !inner {
                out.push((user.clone(), None));
            }
            for post in theirs {
                out.push((user.clone(), Some(post.clone())));
            }
        }
        out
    }
}

async fn joined(db: &Db, inner: bool, color: Option<&str>) -> Vec<(User, Option<Post>)> {
    match (inner, color) {
        (true, c) => {
            let mut q = db.query::<User>().inner_join::<Post>();
            if let Some(c) = c {
                q = q.filter(User::HAIR_COLOR.eq(c));
            }
            q.order_by(User::ID.asc())
                .order_by(Post::ID.asc())
                .all()
                .await
                .expect("inner join")
                .into_iter()
                .map(|(u, p)| (u, Some(p)))
                .collect()
        }
        (false, c) => {
            let mut q = db.query::<User>();
            if let Some(c) = c {
                q = q.filter(User::HAIR_COLOR.eq(c));
            }
            q.left_join::<Post>()
                .order_by(User::ID.asc())
                .order_by(Post::ID.asc())
                .all()
                .await
                .expect("left join")
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn joins_agree_with_a_plain_rust_oracle() {
    let rt = runtime();
    let db = rt.block_on(async {
        let db = common::db().await;
        db.execute_batch(SCHEMA).await.expect("schema");
        db
    });
    let case = (
        prop::collection::vec(0usize..4, 0..7),
        prop::collection::vec(0usize..3, 0..7),
        prop::collection::vec(0usize..20, 0..4),
        any::<bool>(),
        prop::option::of(0usize..3),
    );
    let mut runner = TestRunner::new(Config {
        cases: 40,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case, |(user_posts, colors, deleted, inner, color)| {
        rt.block_on(async {
            let data = seed(&db, &user_posts, &colors, &deleted).await;
            let color = color.and_then(|c| COLORS[c]);
            let got = joined(&db, inner, color).await;
            prop_assert_eq!(&got, &data.user_posts(inner, color));
            // Three levels: every live post's comments, users without posts kept.
            let three = db
                .query::<User>()
                .left_join::<Post>()
                .left_join::<Comment>()
                .order_by(User::ID.asc())
                .order_by(Post::ID.asc())
                .order_by(Comment::ID.asc())
                .all()
                .await
                .expect("three-level join");
            let mut expected = Vec::new();
            for (user, post) in data.user_posts(false, None) {
                let comments: Vec<Comment> = post
                    .as_ref()
                    .map(|p| {
                        data.comments
                            .iter()
                            .filter(|c| c.post_id == p.id)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if comments.is_empty() {
                    expected.push((user.clone(), post.clone(), None));
                }
                for comment in comments {
                    expected.push((user.clone(), post.clone(), Some(comment)));
                }
            }
            prop_assert_eq!(three, expected);
            // The eager loader over the same rows: each user, its live posts, their
            // comments — one query a level.
            let tree = db
                .query::<User>()
                .order_by(User::ID.asc())
                .load(children::<Post>().with(children::<Comment>()))
                .await
                .expect("load");
            let oracle: Tree = data
                .users
                .iter()
                .map(|u| {
                    let posts = data
                        .live_posts()
                        .filter(|p| p.user_id == u.id)
                        .map(|p| {
                            let cs = data
                                .comments
                                .iter()
                                .filter(|c| c.post_id == p.id)
                                .cloned()
                                .collect();
                            (p.clone(), cs)
                        })
                        .collect();
                    (u.clone(), posts)
                })
                .collect();
            prop_assert_eq!(tree, oracle);
            let counted = db
                .query::<User>()
                .inner_join::<Post>()
                .count()
                .await
                .expect("count");
            prop_assert_eq!(counted as usize, data.live_posts().count());
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test]
async fn filters_orders_and_selections_reach_every_table() {
    let db = common::db().await;
    db.execute_batch(SCHEMA).await.expect("schema");
    let data = seed(&db, &[2, 0, 3], &[0, 1, 2], &[]).await;
    let titles: Vec<(String, Option<String>)> = db
        .query::<User>()
        .left_join::<Post>()
        .filter(User::NAME.ne("u0"))
        .order_by(Post::TITLE.desc().nulls_last())
        .select((User::NAME, Post::TITLE))
        .all()
        .await
        .expect("selection");
    assert_eq!(
        titles,
        [
            ("u2".to_owned(), Some("u2-p2".to_owned())),
            ("u2".to_owned(), Some("u2-p1".to_owned())),
            ("u2".to_owned(), Some("u2-p0".to_owned())),
            ("u1".to_owned(), None),
        ]
    );
    // A filter on the left-joined table applies after the join, as in SQL.
    let by_title = db
        .query::<User>()
        .left_join::<Post>()
        .filter(Post::TITLE.like("%-p1"))
        .select(User::NAME)
        .all()
        .await
        .expect("filter on the joined table");
    assert_eq!(by_title, ["u0", "u2"]);
    // An anti-join: the users without posts.
    let silent = db
        .query::<User>()
        .left_join::<Post>()
        .missing::<Post, _>()
        .select(User::NAME)
        .all()
        .await
        .expect("anti-join");
    assert_eq!(silent, ["u1"]);
    // Child to parent: the relation declared on the child joins both ways.
    let authors: Vec<(Post, User)> = db
        .query::<Post>()
        .inner_join::<User>()
        .order_by(Post::ID.asc())
        .limit(2)
        .offset(1)
        .all()
        .await
        .expect("child to parent");
    assert_eq!(authors.len(), 2);
    assert_eq!(authors[0].0, data.posts[1]);
    assert!(authors.iter().all(|(p, u)| p.user_id == u.id));
    let page_count = db
        .query::<Post>()
        .inner_join::<User>()
        .limit(2)
        .offset(4)
        .count()
        .await
        .expect("count of a page");
    assert_eq!(page_count, 1, "5 joined rows, offset 4");
}

#[tokio::test]
async fn explicit_columns_join_undeclared_relations() {
    let db = common::db().await;
    db.execute_batch(SCHEMA).await.expect("schema");
    seed(&db, &[1, 1, 0], &[0, 0, 0], &[]).await;
    db.create(NewBadge {
        owner_name: "u1".into(),
        level: 7,
    })
    .await
    .expect("badge");
    let levels: Vec<(String, Option<i32>)> = db
        .query::<User>()
        .left_join_on(User::NAME, Badge::OWNER_NAME)
        .order_by(User::ID.asc())
        .select((User::NAME, Badge::LEVEL))
        .all()
        .await
        .expect("explicit join");
    assert_eq!(
        levels,
        [
            ("u0".into(), None),
            ("u1".into(), Some(7)),
            ("u2".into(), None)
        ]
    );
    // Explicit after declared: posts of users who have a badge.
    let badged: Vec<(User, Post, Badge)> = db
        .query::<User>()
        .inner_join::<Post>()
        .inner_join_on(User::NAME, Badge::OWNER_NAME)
        .all()
        .await
        .expect("declared then explicit");
    assert_eq!(badged.len(), 1);
    assert_eq!(badged[0].1.title, "u1-p0");
}

#[tokio::test]
async fn soft_deleted_children_leave_the_join_not_their_parent() {
    let db = common::db().await;
    db.execute_batch(SCHEMA).await.expect("schema");
    let data = seed(&db, &[1], &[0], &[0]).await;
    let rows = db
        .query::<User>()
        .left_join::<Post>()
        .all()
        .await
        .expect("left join");
    assert_eq!(rows, [(data.users[0].clone(), None)]);
    let with_deleted = db
        .query::<User>()
        .left_join::<Post>()
        .with_deleted()
        .all()
        .await
        .expect("with deleted");
    assert_eq!(with_deleted.len(), 1);
    assert!(
        with_deleted[0]
            .1
            .as_ref()
            .is_some_and(|p| p.deleted_at.is_some())
    );
    // `with_deleted` on the first table's query, before the join, is about its rows.
    let base_only = db
        .query::<User>()
        .with_deleted()
        .left_join::<Post>()
        .all()
        .await
        .expect("base with deleted");
    assert_eq!(base_only, [(data.users[0].clone(), None)]);
    let deleted_posts = db
        .query::<Post>()
        .with_deleted()
        .inner_join::<User>()
        .count()
        .await
        .expect("deleted base rows");
    assert_eq!(deleted_posts, 1);
}

#[tokio::test]
async fn a_join_refuses_a_row_lock_and_renders_qualified_sql() {
    let db = common::db().await;
    db.execute_batch(SCHEMA).await.expect("schema");
    let err = db
        .query::<User>()
        .for_update()
        .inner_join::<Post>()
        .all()
        .await
        .expect_err("lock on a join");
    assert!(matches!(err, Error::Misuse(_)), "{err:?}");
    let sql = db
        .query::<User>()
        .filter(User::NAME.eq("x"))
        .inner_join::<Post>()
        .filter(Post::TITLE.eq("y"))
        .to_sql()
        .expect("sql");
    assert_eq!(
        sql,
        r#"SELECT "t0"."id", "t0"."name", "t0"."hair_color", "t1"."id", "t1"."user_id", "t1"."title", "t1"."deleted_at" FROM "j_users" AS "t0" INNER JOIN "j_posts" AS "t1" ON "t0"."id" = "t1"."user_id" AND "t1"."deleted_at" IS NULL WHERE "t0"."name" = $1 AND "t1"."title" = $2"#
    );
}
