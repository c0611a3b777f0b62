//! Tabula: `#[derive(Table)]` models and the `Db` handle the test kit returns (its
//! pool, its defaults; no cache is configured, so `read` goes to PostgreSQL).

use std::hint::black_box;

use chrono::{DateTime, Utc};
use tabula::{Db, Table};

use super::{Peer, Result};
use crate::schema::UserData;

#[derive(Table)]
#[table(name = "users")]
#[allow(dead_code)] // the fields are the decoding work
pub(crate) struct User {
    #[table(primary_key, generated)]
    pub(crate) id: i32,
    pub(crate) name: String,
    pub(crate) hair_color: Option<String>,
    #[table(generated)]
    pub(crate) created_at: DateTime<Utc>,
}

#[derive(Table)]
#[table(name = "posts")]
#[allow(dead_code)]
pub(crate) struct Post {
    #[table(primary_key, generated)]
    pub(crate) id: i32,
    pub(crate) user_id: i32,
    pub(crate) title: String,
    pub(crate) body: Option<String>,
}

pub(crate) struct Tabula {
    db: Db,
}

impl Tabula {
    pub(crate) fn new(db: Db) -> Tabula {
        Tabula { db }
    }
}

/// Tabula takes its rows by value: the copy is part of the work.
fn new_user(row: &UserData) -> NewUser {
    NewUser {
        name: row.name.clone(),
        hair_color: row.hair_color.clone(),
    }
}

impl Peer for Tabula {
    async fn users(&mut self, max_id: i32) -> Result<usize> {
        let users = self
            .db
            .query::<User>()
            .filter(User::ID.le(max_id))
            .all()
            .await?;
        Ok(black_box(users).len())
    }

    async fn user(&mut self, id: i32) -> Result<usize> {
        let found = self.db.read::<User>(id).await?;
        Ok(black_box(found).map_or(0, |_| 1))
    }

    async fn users_with_posts(&mut self, max_id: i32) -> Result<usize> {
        let users = self
            .db
            .query::<User>()
            .filter(User::ID.le(max_id))
            .all()
            .await?;
        let posts = self
            .db
            .query::<Post>()
            .filter(Post::USER_ID.is_in(users.iter().map(|u| u.id)))
            .all()
            .await?;
        Ok(black_box(users).len() + black_box(posts).len())
    }

    async fn create(&mut self, row: &UserData) -> Result<usize> {
        black_box(self.db.create(new_user(row)).await?);
        Ok(1)
    }

    async fn create_many(&mut self, rows: &[UserData]) -> Result<usize> {
        let stored = self
            .db
            .create_many(rows.iter().map(new_user).collect())
            .await?;
        Ok(black_box(stored).len())
    }

    /// `insert_many`: one binary COPY.
    async fn load(&mut self, rows: &[UserData]) -> Result<usize> {
        let n = self
            .db
            .insert_many(rows.iter().map(new_user).collect())
            .await?;
        Ok(n as usize)
    }
}
