//! Eager loading three levels deep, diesel_bench's `loading_associations` shape: every
//! user, their posts, and those posts' comments, assembled as
//! `Vec<(User, Vec<(Post, Vec<Comment>)>)>` — Tabula's `query().all()` and two
//! `Db::children` calls (`tabula`), the same through the eager loader
//! `query().load(children::<Post>().with(children::<Comment>()))` (`tabula_load`),
//! against raw tokio-postgres running the same three statements
//! (prepared once) and grouping with `HashMap`s, in the same run. The raw side runs
//! twice: `raw` buffers each result (`Client::query`, as `benches/crud.rs` does),
//! `raw_stream` decodes rows as they arrive (`query_raw`), as Tabula does.
//!
//! Sizes: 1, 10 and 100 users, ten posts per user and ten comments per post (100 users
//! is 11,100 rows a load).
//!
//! And diesel_bench's `medium_complex_query`: users LEFT JOIN posts, filtered by hair
//! colour, as `(User, Option<Post>)` pairs — the typed join against the same SQL
//! prepared once — for 1, 100 and 1,000 users (half of them match, each with one post).
//!
//! Run with `cargo bench --bench orm`; only the same-run ratios mean anything.

use std::collections::HashMap;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::TryStreamExt;
use tabula::migrate::{Migration, Migrator};
use tabula::query::children;
use tabula::{Db, Table};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "users")]
pub struct User {
    #[table(primary_key, generated)]
    pub id: i32,
    pub name: String,
    pub hair_color: Option<String>,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "posts")]
pub struct Post {
    #[table(primary_key, generated)]
    pub id: i32,
    #[table(belongs_to = User)]
    pub user_id: i32,
    pub title: String,
    pub body: Option<String>,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "comments")]
pub struct Comment {
    #[table(primary_key, generated)]
    pub id: i32,
    #[table(belongs_to = Post)]
    pub post_id: i32,
    pub text: String,
}

/// diesel_bench's schema.
const SCHEMA: &str = "
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, hair_color text);
CREATE TABLE posts (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users,
                    title text NOT NULL, body text);
CREATE TABLE comments (id serial PRIMARY KEY, post_id int NOT NULL REFERENCES posts,
                       text text NOT NULL);
CREATE INDEX posts_user_id ON posts (user_id);
CREATE INDEX comments_post_id ON comments (post_id);";

const POSTS_PER_USER: usize = 10;
const COMMENTS_PER_POST: usize = 10;

type Loaded = Vec<(User, Vec<(Post, Vec<Comment>)>)>;

/// A fresh database seeded with `users` users, their posts and comments.
async fn seeded(migrations: &Migrator, users: usize) -> (Db, Client) {
    let (db, url) = tabula::testkit::database(migrations)
        .await
        .expect("database");
    let new_users = (0..users)
        .map(|i| NewUser {
            name: format!("User {i}"),
            hair_color: (i % 2 == 0).then(|| "black".to_owned()),
        })
        .collect();
    let users = db.create_many(new_users).await.expect("users");
    let new_posts = users
        .iter()
        .flat_map(|u| {
            (0..POSTS_PER_USER).map(move |i| NewPost {
                user_id: u.id,
                title: format!("Post {i} by user {}", u.id),
                body: (i % 2 == 0).then(|| "a body".to_owned()),
            })
        })
        .collect();
    let posts = db.create_many(new_posts).await.expect("posts");
    let new_comments: Vec<NewComment> = posts
        .iter()
        .flat_map(|p| {
            (0..COMMENTS_PER_POST).map(move |i| NewComment {
                post_id: p.id,
                text: format!("Comment {i} on post {}", p.id),
            })
        })
        .collect();
    db.insert_many(new_comments).await.expect("comments");
    // Nothing left for autovacuum to do while a side is measured.
    db.execute_batch("VACUUM ANALYZE").await.expect("vacuum");
    let (raw, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("raw client");
    tokio::spawn(connection);
    (db, raw)
}

async fn load_tabula(db: &Db) -> tabula::Result<Loaded> {
    let users = db.query::<User>().all().await?;
    let posts = db.children::<User, Post>(&users).await?;
    let comments = db
        .children::<Post, Comment>(&posts.all().cloned().collect::<Vec<_>>())
        .await?;
    Ok(users
        .into_iter()
        .map(|user| {
            let theirs = posts
                .of(&user)
                .iter()
                .map(|post| (post.clone(), comments.of(post).to_vec()))
                .collect();
            (user, theirs)
        })
        .collect())
}

/// The same tree through the eager loader, `Query::load`.
async fn load_tabula_loader(db: &Db) -> tabula::Result<Loaded> {
    db.query::<User>()
        .load(children::<Post>().with(children::<Comment>()))
        .await
}

struct Raw {
    client: Client,
    users: Statement,
    posts: Statement,
    comments: Statement,
}

impl Raw {
    async fn prepare(client: Client) -> Raw {
        let users = client
            .prepare("SELECT id, name, hair_color FROM users")
            .await
            .expect("prepare users");
        let posts = client
            .prepare(
                "SELECT id, user_id, title, body FROM posts WHERE user_id = ANY($1) ORDER BY id",
            )
            .await
            .expect("prepare posts");
        let comments = client
            .prepare("SELECT id, post_id, text FROM comments WHERE post_id = ANY($1) ORDER BY id")
            .await
            .expect("prepare comments");
        Raw {
            client,
            users,
            posts,
            comments,
        }
    }

    /// The rows of `statement` decoded by `decode`: buffered by `Client::query` (as
    /// `benches/crud.rs` does), or decoded as they stream in (`query_raw`, as Tabula
    /// does).
    async fn rows<T>(
        &self,
        statement: &Statement,
        keys: Option<&Vec<i32>>,
        streaming: bool,
        decode: fn(&Row) -> T,
    ) -> Result<Vec<T>, tokio_postgres::Error> {
        let params: Vec<&(dyn ToSql + Sync)> = keys.iter().map(|k| *k as _).collect();
        if !streaming {
            let rows = self.client.query(statement, &params).await?;
            return Ok(rows.iter().map(decode).collect());
        }
        let stream = self.client.query_raw(statement, params).await?;
        let mut stream = std::pin::pin!(stream);
        let mut out = Vec::new();
        while let Some(row) = stream.try_next().await? {
            out.push(decode(&row));
        }
        Ok(out)
    }

    async fn load(&self, streaming: bool) -> Result<Loaded, tokio_postgres::Error> {
        let users = self
            .rows(&self.users, None, streaming, |r| User {
                id: r.get(0),
                name: r.get(1),
                hair_color: r.get(2),
            })
            .await?;
        let user_ids: Vec<i32> = users.iter().map(|u| u.id).collect();
        let posts = self
            .rows(&self.posts, Some(&user_ids), streaming, |r| Post {
                id: r.get(0),
                user_id: r.get(1),
                title: r.get(2),
                body: r.get(3),
            })
            .await?;
        let post_ids: Vec<i32> = posts.iter().map(|p| p.id).collect();
        let mut posts_of: HashMap<i32, Vec<Post>> = HashMap::new();
        for post in posts {
            posts_of.entry(post.user_id).or_default().push(post);
        }
        let comments = self
            .rows(&self.comments, Some(&post_ids), streaming, |r| Comment {
                id: r.get(0),
                post_id: r.get(1),
                text: r.get(2),
            })
            .await?;
        let mut comments_of: HashMap<i32, Vec<Comment>> = HashMap::new();
        for comment in comments {
            comments_of
                .entry(comment.post_id)
                .or_default()
                .push(comment);
        }
        Ok(users
            .into_iter()
            .map(|user| {
                let theirs = posts_of
                    .remove(&user.id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|post| {
                        let comments = comments_of.remove(&post.id).unwrap_or_default();
                        (post, comments)
                    })
                    .collect();
                (user, theirs)
            })
            .collect())
    }
}

fn loading_associations(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let migrations =
        Migrator::new(vec![Migration::new(1, "diesel_bench", SCHEMA)]).expect("migrations");
    for users in [1, 10, 100] {
        let (db, raw) = rt.block_on(async {
            let (db, client) = seeded(&migrations, users).await;
            (db, Raw::prepare(client).await)
        });
        // Both sides load the same thing, or the comparison means nothing.
        let (ours, loader, buffered, streamed) = rt.block_on(async {
            (
                load_tabula(&db).await.expect("tabula"),
                load_tabula_loader(&db).await.expect("tabula_load"),
                raw.load(false).await.expect("raw"),
                raw.load(true).await.expect("raw_stream"),
            )
        });
        assert_eq!(ours, loader, "children and load loaded different rows");
        assert_eq!(ours, buffered, "tabula and raw loaded different rows");
        assert_eq!(
            ours, streamed,
            "tabula and raw_stream loaded different rows"
        );
        let comments: usize = ours
            .iter()
            .flat_map(|(_, posts)| posts.iter().map(|(_, c)| c.len()))
            .sum();
        assert_eq!(comments, users * POSTS_PER_USER * COMMENTS_PER_POST);

        let mut group = c.benchmark_group(format!("loading_associations_{users}_users"));
        group.bench_function("tabula", |b| {
            b.to_async(&rt)
                .iter(|| async { load_tabula(&db).await.expect("tabula") })
        });
        group.bench_function("tabula_load", |b| {
            b.to_async(&rt)
                .iter(|| async { load_tabula_loader(&db).await.expect("tabula_load") })
        });
        group.bench_function("raw", |b| {
            b.to_async(&rt)
                .iter(|| async { raw.load(false).await.expect("raw") })
        });
        group.bench_function("raw_stream", |b| {
            b.to_async(&rt)
                .iter(|| async { raw.load(true).await.expect("raw_stream") })
        });
        group.finish();
    }
}

type Pairs = Vec<(User, Option<Post>)>;

async fn join_tabula(db: &Db) -> tabula::Result<Pairs> {
    db.query::<User>()
        .filter(User::HAIR_COLOR.eq("black"))
        .left_join::<Post>()
        .all()
        .await
}

async fn join_raw(client: &Client, statement: &Statement) -> Result<Pairs, tokio_postgres::Error> {
    let rows = client.query(statement, &[&"black"]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let user = User {
                id: r.get(0),
                name: r.get(1),
                hair_color: r.get(2),
            };
            let post = r.get::<_, Option<i32>>(3).map(|id| Post {
                id,
                user_id: r.get(4),
                title: r.get(5),
                body: r.get(6),
            });
            (user, post)
        })
        .collect())
}

fn medium_complex_query(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let migrations =
        Migrator::new(vec![Migration::new(1, "diesel_bench", SCHEMA)]).expect("migrations");
    for size in [1_usize, 100, 1000] {
        let (db, raw, statement) = rt.block_on(async {
            let (db, url) = tabula::testkit::database(&migrations)
                .await
                .expect("database");
            let users = db
                .create_many(
                    (0..size)
                        .map(|i| NewUser {
                            name: format!("User {i}"),
                            hair_color: Some(if i % 2 == 0 { "black" } else { "brown" }.into()),
                        })
                        .collect(),
                )
                .await
                .expect("users");
            let posts = users
                .iter()
                .map(|u| NewPost {
                    user_id: u.id,
                    title: format!("Post by user {}", u.id),
                    body: None,
                })
                .collect();
            db.create_many(posts).await.expect("posts");
            db.execute_batch("VACUUM ANALYZE").await.expect("vacuum");
            let (raw, connection) = tokio_postgres::connect(&url, NoTls)
                .await
                .expect("raw client");
            tokio::spawn(connection);
            let statement = raw
                .prepare(
                    "SELECT u.id, u.name, u.hair_color, p.id, p.user_id, p.title, p.body \
                     FROM users u LEFT JOIN posts p ON u.id = p.user_id WHERE u.hair_color = $1",
                )
                .await
                .expect("prepare");
            (db, raw, statement)
        });
        let (ours, theirs) = rt.block_on(async {
            (
                join_tabula(&db).await.expect("tabula"),
                join_raw(&raw, &statement).await.expect("raw"),
            )
        });
        assert_eq!(ours.len(), size.div_ceil(2));
        let sorted = |mut v: Pairs| {
            v.sort_by_key(|(u, _)| u.id);
            v
        };
        assert_eq!(sorted(ours), sorted(theirs), "different rows");

        let mut group = c.benchmark_group(format!("medium_complex_query_{size}_users"));
        group.bench_function("tabula", |b| {
            b.to_async(&rt)
                .iter(|| async { join_tabula(&db).await.expect("tabula") })
        });
        group.bench_function("raw", |b| {
            b.to_async(&rt)
                .iter(|| async { join_raw(&raw, &statement).await.expect("raw") })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = loading_associations, medium_complex_query
}
criterion_main!(benches);
