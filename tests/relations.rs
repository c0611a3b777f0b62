//! Relations declared on the child (`#[table(belongs_to = Parent)]`): children of a
//! slice of parents in one query per level, three levels deep, checked against a
//! plain-Rust oracle over the same rows; parents lined up with their children.

mod common;

use std::collections::BTreeMap;

use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r_users")]
struct User {
    #[table(primary_key, generated)]
    id: i64,
    name: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r_posts")]
struct Post {
    #[table(primary_key, generated)]
    id: i64,
    #[table(belongs_to = User)]
    user_id: i64,
    title: String,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r_comments", cache(ttl = 60))]
struct Comment {
    #[table(primary_key, generated)]
    id: i64,
    #[table(belongs_to = Post)]
    post_id: i64,
    body: String,
}

async fn data() -> (Db, Vec<User>, Vec<Post>, Vec<Comment>) {
    let db = common::db().await;
    let (users, posts, comments) = seed(&db).await;
    (db, users, posts, comments)
}

async fn seed(db: &Db) -> (Vec<User>, Vec<Post>, Vec<Comment>) {
    db.execute_batch(
        "CREATE TABLE r_users (id bigserial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE r_posts (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES r_users, title text NOT NULL);
         CREATE TABLE r_comments (id bigserial PRIMARY KEY, post_id bigint NOT NULL REFERENCES r_posts, body text NOT NULL);",
    )
    .await
    .expect("schema");
    let users = db
        .create_many(
            (0..6)
                .map(|i| NewUser {
                    name: format!("u{i}"),
                })
                .collect(),
        )
        .await
        .expect("users");
    // Uneven: user i has i posts; post j has (j % 4) comments.
    let mut new_posts = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for k in 0..i {
            new_posts.push(NewPost {
                user_id: user.id,
                title: format!("{}-{k}", user.name),
            });
        }
    }
    let posts = db.create_many(new_posts).await.expect("posts");
    let mut new_comments = Vec::new();
    for (j, post) in posts.iter().enumerate() {
        for k in 0..(j % 4) {
            new_comments.push(NewComment {
                post_id: post.id,
                body: format!("{}#{k}", post.title),
            });
        }
    }
    let comments = db.create_many(new_comments).await.expect("comments");
    (users, posts, comments)
}

/// Users with their posts, each with its comments.
type Tree = Vec<(User, Vec<(Post, Vec<Comment>)>)>;

/// Each post with its author and its comments.
type PostsWithBoth = Vec<(Post, (Option<User>, Vec<Comment>))>;

/// The oracle of `users → posts → comments`: every row grouped under its parent, in
/// key order.
fn tree(users: &[User], posts: &[Post], comments: &[Comment]) -> Tree {
    users
        .iter()
        .map(|u| {
            let theirs = posts
                .iter()
                .filter(|p| p.user_id == u.id)
                .map(|p| {
                    let below = comments
                        .iter()
                        .filter(|c| c.post_id == p.id)
                        .cloned()
                        .collect();
                    (p.clone(), below)
                })
                .collect();
            (u.clone(), theirs)
        })
        .collect()
}

#[tokio::test]
async fn query_load_nests_three_levels_and_reads_cached_children_through_the_cache() {
    use tabula::query::{children, parent};
    let (_, url) = common::db_and_url().await;
    let cache = CacheService::in_memory(CacheConfig::default()).expect("cache");
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    let (users, posts, comments) = seed(&db).await;
    let load = || {
        db.query::<User>()
            .order_by(User::ID.asc())
            .load(children::<Post>().with(children::<Comment>()))
    };
    assert_eq!(load().await.expect("load"), tree(&users, &posts, &comments));

    // Comments are cached: the second load reads their rows from the cache (a change
    // behind Tabula's back is not seen) while their keys come from the database (a
    // row deleted behind its back is gone).
    let poked = comments[0].id;
    let gone = comments[1].id;
    db.execute_batch(&format!(
        "UPDATE r_comments SET body = 'poked' WHERE id = {poked}; DELETE FROM r_comments WHERE id = {gone}"
    ))
    .await
    .expect("behind the back");
    let left: Vec<Comment> = comments.iter().filter(|c| c.id != gone).cloned().collect();
    assert_eq!(load().await.expect("load"), tree(&users, &posts, &left));
    // A write through Tabula invalidates: the next load sees it.
    db.update::<Comment>(
        poked,
        CommentPatch {
            body: Some("edited".into()),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    let mut edited = left.clone();
    edited[0].body = "edited".into();
    assert_eq!(load().await.expect("load"), tree(&users, &posts, &edited));

    // Two relations of one level: each post's author and comments.
    let both: PostsWithBoth = db
        .query::<Post>()
        .order_by(Post::ID.asc())
        .load((parent::<User>(), children::<Comment>()))
        .await
        .expect("pair of loaders");
    assert_eq!(both.len(), posts.len());
    for (post, (author, theirs)) in &both {
        assert_eq!(author.as_ref().map(|u| u.id), Some(post.user_id));
        let expected: Vec<&Comment> = edited.iter().filter(|c| c.post_id == post.id).collect();
        assert_eq!(theirs.iter().collect::<Vec<_>>(), expected);
    }
    // Filters and limits apply to the top level only.
    let first_two = db
        .query::<User>()
        .filter(User::NAME.ne("u0"))
        .order_by(User::ID.asc())
        .limit(2)
        .load(children::<Post>())
        .await
        .expect("filtered");
    assert_eq!(first_two.len(), 2);
    assert_eq!(first_two[1].1.len(), 2, "u2 has two posts");
}

#[tokio::test]
async fn three_levels_load_as_the_oracle_groups_them() {
    let (db, users, posts, comments) = data().await;
    // The oracle: group every row by its foreign key, in key order.
    let mut posts_of: BTreeMap<i64, Vec<Post>> = BTreeMap::new();
    for post in &posts {
        posts_of.entry(post.user_id).or_default().push(post.clone());
    }
    let mut comments_of: BTreeMap<i64, Vec<Comment>> = BTreeMap::new();
    for comment in &comments {
        comments_of
            .entry(comment.post_id)
            .or_default()
            .push(comment.clone());
    }

    // A subset of parents, with a duplicate: only theirs come back.
    let some: Vec<User> = vec![
        users[5].clone(),
        users[0].clone(),
        users[3].clone(),
        users[5].clone(),
    ];
    let loaded = db.children::<User, Post>(&some).await.expect("posts");
    for user in &some {
        assert_eq!(
            loaded.of(user),
            posts_of.get(&user.id).map_or(&[][..], Vec::as_slice),
            "posts of {}",
            user.name
        );
    }
    assert_eq!(loaded.len(), 5 + 3);
    assert!(loaded.of(&users[1]).is_empty(), "a parent not asked for");

    // The next level, from the children loaded.
    let all_posts: Vec<Post> = db
        .children::<User, Post>(&users)
        .await
        .expect("all posts")
        .all()
        .cloned()
        .collect();
    assert_eq!(all_posts.len(), posts.len());
    let loaded = db
        .children::<Post, Comment>(&all_posts)
        .await
        .expect("comments");
    for post in &all_posts {
        assert_eq!(
            loaded.of(post),
            comments_of.get(&post.id).map_or(&[][..], Vec::as_slice)
        );
    }
    // A parent listed twice gets its children twice.
    let twice = vec![all_posts[0].clone(), all_posts[0].clone()];
    let expected = comments_of
        .get(&all_posts[0].id)
        .cloned()
        .unwrap_or_default();
    let doubled = db
        .children::<Post, Comment>(&twice)
        .await
        .expect("twice")
        .attach(twice);
    assert!(doubled.iter().all(|(_, comments)| *comments == expected));
    let attached = loaded.attach(all_posts.clone());
    assert_eq!(attached.len(), all_posts.len());
    assert!(
        attached
            .iter()
            .all(|(post, comments)| comments.iter().all(|c| c.post_id == post.id))
    );

    // Nothing to load from: no query, nothing loaded.
    assert!(
        db.children::<User, Post>(&[])
            .await
            .expect("empty")
            .is_empty()
    );
}

#[tokio::test]
async fn parents_line_up_with_their_children() {
    let (db, users, posts, comments) = data().await;
    let authors = db.parents::<Post, User>(&posts).await.expect("authors");
    assert_eq!(authors.len(), posts.len());
    for (post, author) in posts.iter().zip(&authors) {
        let author = author.as_ref().expect("every post has its user");
        assert_eq!(author.id, post.user_id);
        assert!(users.contains(author));
    }
    let of_comments = db.parents::<Comment, Post>(&comments).await.expect("posts");
    assert!(
        of_comments
            .iter()
            .zip(&comments)
            .all(|(p, c)| p.as_ref().is_some_and(|p| p.id == c.post_id))
    );
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "r_drafts")]
struct Draft {
    #[table(primary_key, generated)]
    id: i64,
    #[table(belongs_to = User)]
    user_id: Option<i64>,
    title: String,
}

/// A nullable foreign key: a row with NULL belongs to no parent, on either side.
#[tokio::test]
async fn a_null_foreign_key_names_no_parent() {
    let (db, users, _, _) = data().await;
    db.execute_batch(
        "CREATE TABLE r_drafts (id bigserial PRIMARY KEY, user_id bigint REFERENCES r_users, title text NOT NULL)",
    )
    .await
    .expect("drafts");
    let drafts = db
        .create_many(vec![
            NewDraft {
                user_id: Some(users[1].id),
                title: "owned".into(),
            },
            NewDraft {
                user_id: None,
                title: "orphan".into(),
            },
            NewDraft {
                user_id: Some(users[1].id),
                title: "owned too".into(),
            },
        ])
        .await
        .expect("rows");
    let loaded = db.children::<User, Draft>(&users).await.expect("children");
    assert_eq!(loaded.of(&users[1]).len(), 2);
    assert_eq!(loaded.len(), 2, "the orphan belongs to nobody");
    let owners = db.parents::<Draft, User>(&drafts).await.expect("parents");
    assert_eq!(
        owners
            .iter()
            .map(|o| o.as_ref().map(|u| u.id))
            .collect::<Vec<_>>(),
        vec![Some(users[1].id), None, Some(users[1].id)]
    );
}

static NOTE_CLONES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A post whose clones are counted: loading moves rows, it does not copy them.
#[derive(Table, Debug, PartialEq)]
#[table(name = "r_posts")]
struct CountedPost {
    #[table(primary_key, generated)]
    id: i64,
    #[table(belongs_to = User)]
    user_id: i64,
    title: String,
}

impl Clone for CountedPost {
    fn clone(&self) -> Self {
        NOTE_CLONES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CountedPost {
            id: self.id,
            user_id: self.user_id,
            title: self.title.clone(),
        }
    }
}

#[tokio::test]
async fn loading_moves_rows_and_lists_children_in_the_parents_order() {
    use std::sync::atomic::Ordering;
    use tabula::query::children;
    let (db, users, posts, _) = data().await;
    let before = NOTE_CLONES.load(Ordering::SeqCst);
    let loaded = db
        .query::<User>()
        .order_by(User::ID.desc())
        .load(children::<CountedPost>())
        .await
        .expect("load");
    assert_eq!(NOTE_CLONES.load(Ordering::SeqCst), before, "no post copied");
    assert_eq!(
        loaded.iter().map(|(_, p)| p.len()).sum::<usize>(),
        posts.len()
    );

    // `all()` lists children parent by parent, in the parents' order, every run.
    let reversed: Vec<User> = users.iter().rev().cloned().collect();
    let found = db
        .children::<User, Post>(&reversed)
        .await
        .expect("children");
    let order: Vec<i64> = found.all().map(|p| p.id).collect();
    let mut expected: Vec<i64> = Vec::new();
    for user in &reversed {
        expected.extend(posts.iter().filter(|p| p.user_id == user.id).map(|p| p.id));
    }
    assert_eq!(order, expected);
    // `take` moves a parent's children out once.
    let mut found = found;
    assert_eq!(found.take(&users[5]).len(), 5);
    assert!(found.take(&users[5]).is_empty());
}
