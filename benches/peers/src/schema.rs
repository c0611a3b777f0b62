//! The one schema every library works on, the rows it is seeded with, and the rows the
//! insert workloads write.

/// Created once at start-up (as the test kit's only migration).
pub(crate) const SCHEMA: &str = "
CREATE TABLE users (
    id serial PRIMARY KEY,
    name text NOT NULL,
    hair_color text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE posts (
    id serial PRIMARY KEY,
    user_id int NOT NULL REFERENCES users (id),
    title text NOT NULL,
    body text
);
CREATE INDEX posts_user_id ON posts (user_id);
";

/// Users in the table the read workloads query.
pub(crate) const SEEDED_USERS: i32 = 10_000;
/// The first this many users have posts.
pub(crate) const USERS_WITH_POSTS: i32 = 1_000;
/// Posts of each of them.
pub(crate) const POSTS_PER_USER: i32 = 10;

/// Fills the tables for the read workloads: 10,000 users (a third without hair
/// colour), ten posts each for the first 1,000 (half without a body), then ANALYZE so
/// every library meets the same plans.
pub(crate) fn seed_sql() -> String {
    format!(
        "TRUNCATE users, posts RESTART IDENTITY;
         INSERT INTO users (name, hair_color)
             SELECT 'User ' || i, (ARRAY[NULL, 'black', 'brown'])[i % 3 + 1]
             FROM generate_series(1, {SEEDED_USERS}) AS i;
         INSERT INTO posts (user_id, title, body)
             SELECT u, 'Post ' || p || ' by user ' || u,
                    CASE WHEN p % 2 = 0 THEN 'A body for post ' || p END
             FROM generate_series(1, {USERS_WITH_POSTS}) AS u,
                  generate_series(1, {POSTS_PER_USER}) AS p;
         ANALYZE users, posts;"
    )
}

/// Empties both tables before a library's turn at an insert workload (untimed), so no
/// library inserts into a table another one grew.
pub(crate) const RESET_SQL: &str = "TRUNCATE users, posts RESTART IDENTITY";

/// A user to insert, as the workloads hand it to every library; each library turns it
/// into what its own API takes (inside the timed work).
#[derive(Debug, Clone)]
pub(crate) struct UserData {
    pub(crate) name: String,
    pub(crate) hair_color: Option<String>,
}

/// `n` users to insert, every other one with a hair colour.
pub(crate) fn users_to_insert(n: usize) -> Vec<UserData> {
    (0..n)
        .map(|i| UserData {
            name: format!("New user {i}"),
            hair_color: (i % 2 == 0).then(|| "red".to_owned()),
        })
        .collect()
}
