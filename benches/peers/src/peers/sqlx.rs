//! sqlx 0.8: one `PgConnection`, `query_as` into `FromRow` structs (sqlx prepares
//! and caches each statement on first use). Many rows go in through `UNNEST`, as
//! sqlx's documentation recommends for PostgreSQL.

use std::hint::black_box;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

use super::{Peer, Result};
use crate::schema::UserData;

#[derive(sqlx::FromRow)]
#[allow(dead_code)]
struct User {
    id: i32,
    name: String,
    hair_color: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
#[allow(dead_code)]
struct Post {
    id: i32,
    user_id: i32,
    title: String,
    body: Option<String>,
}

pub(crate) struct Sqlx {
    conn: PgConnection,
}

impl Sqlx {
    pub(crate) async fn connect(url: &str) -> Result<Sqlx> {
        Ok(Sqlx {
            conn: PgConnection::connect(url).await?,
        })
    }
}

const USERS: &str = "SELECT id, name, hair_color, created_at FROM users WHERE id <= $1";

impl Peer for Sqlx {
    async fn users(&mut self, max_id: i32) -> Result<usize> {
        let users: Vec<User> = sqlx::query_as(USERS)
            .bind(max_id)
            .fetch_all(&mut self.conn)
            .await?;
        Ok(black_box(users).len())
    }

    async fn user(&mut self, id: i32) -> Result<usize> {
        let found: Option<User> =
            sqlx::query_as("SELECT id, name, hair_color, created_at FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut self.conn)
                .await?;
        Ok(black_box(found).map_or(0, |_| 1))
    }

    async fn users_with_posts(&mut self, max_id: i32) -> Result<usize> {
        let users: Vec<User> = sqlx::query_as(USERS)
            .bind(max_id)
            .fetch_all(&mut self.conn)
            .await?;
        let ids: Vec<i32> = users.iter().map(|u| u.id).collect();
        let posts: Vec<Post> =
            sqlx::query_as("SELECT id, user_id, title, body FROM posts WHERE user_id = ANY($1)")
                .bind(ids)
                .fetch_all(&mut self.conn)
                .await?;
        Ok(black_box(users).len() + black_box(posts).len())
    }

    async fn create(&mut self, row: &UserData) -> Result<usize> {
        let stored: User = sqlx::query_as(
            "INSERT INTO users (name, hair_color) VALUES ($1, $2) \
             RETURNING id, name, hair_color, created_at",
        )
        .bind(&row.name)
        .bind(&row.hair_color)
        .fetch_one(&mut self.conn)
        .await?;
        black_box(stored);
        Ok(1)
    }

    async fn create_many(&mut self, rows: &[UserData]) -> Result<usize> {
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let colors: Vec<Option<&str>> = rows.iter().map(|r| r.hair_color.as_deref()).collect();
        let stored: Vec<User> = sqlx::query_as(
            "INSERT INTO users (name, hair_color) \
             SELECT * FROM UNNEST($1::text[], $2::text[]) \
             RETURNING id, name, hair_color, created_at",
        )
        .bind(names)
        .bind(colors)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(black_box(stored).len())
    }

    async fn load(&mut self, rows: &[UserData]) -> Result<usize> {
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let colors: Vec<Option<&str>> = rows.iter().map(|r| r.hair_color.as_deref()).collect();
        let done = sqlx::query(
            "INSERT INTO users (name, hair_color) SELECT * FROM UNNEST($1::text[], $2::text[])",
        )
        .bind(names)
        .bind(colors)
        .execute(&mut self.conn)
        .await?;
        Ok(done.rows_affected() as usize)
    }
}
