//! tokio-postgres by hand: every statement prepared once at start-up, rows decoded by
//! column index as they stream in (`query_raw`), so decoding overlaps the server's
//! sending. The floor the others are measured against.

use std::hint::black_box;

use chrono::{DateTime, Utc};
use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::{Peer, Result};
use crate::schema::UserData;

#[allow(dead_code)] // read by nobody: the fields are the decoding work
struct User {
    id: i32,
    name: String,
    hair_color: Option<String>,
    created_at: DateTime<Utc>,
}

#[allow(dead_code)]
struct Post {
    id: i32,
    user_id: i32,
    title: String,
    body: Option<String>,
}

fn user(row: &Row) -> User {
    User {
        id: row.get(0),
        name: row.get(1),
        hair_color: row.get(2),
        created_at: row.get(3),
    }
}

fn post(row: &Row) -> Post {
    Post {
        id: row.get(0),
        user_id: row.get(1),
        title: row.get(2),
        body: row.get(3),
    }
}

pub(crate) struct Raw {
    client: Client,
    users: Statement,
    user: Statement,
    posts: Statement,
    create: Statement,
    create_many: Statement,
}

const USER_COLUMNS: &str = "id, name, hair_color, created_at";

impl Raw {
    pub(crate) async fn connect(url: &str) -> Result<Raw> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let users = client
            .prepare(&format!("SELECT {USER_COLUMNS} FROM users WHERE id <= $1"))
            .await?;
        let user = client
            .prepare(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .await?;
        let posts = client
            .prepare("SELECT id, user_id, title, body FROM posts WHERE user_id = ANY($1)")
            .await?;
        let create = client
            .prepare(&format!(
                "INSERT INTO users (name, hair_color) VALUES ($1, $2) RETURNING {USER_COLUMNS}"
            ))
            .await?;
        // One statement for any number of rows: each column travels as one array.
        let create_many = client
            .prepare(&format!(
                "INSERT INTO users (name, hair_color) \
                 SELECT * FROM unnest($1::text[], $2::text[]) RETURNING {USER_COLUMNS}"
            ))
            .await?;
        Ok(Raw {
            client,
            users,
            user,
            posts,
            create,
            create_many,
        })
    }
}

impl Peer for Raw {
    async fn users(&mut self, max_id: i32) -> Result<usize> {
        let users: Vec<User> = self
            .client
            .query_raw(&self.users, [max_id])
            .await?
            .map_ok(|r| user(&r))
            .try_collect()
            .await?;
        Ok(black_box(users).len())
    }

    async fn user(&mut self, id: i32) -> Result<usize> {
        let found = self.client.query_opt(&self.user, &[&id]).await?;
        Ok(black_box(found.map(|r| user(&r))).map_or(0, |_| 1))
    }

    async fn users_with_posts(&mut self, max_id: i32) -> Result<usize> {
        let users: Vec<User> = self
            .client
            .query_raw(&self.users, [max_id])
            .await?
            .map_ok(|r| user(&r))
            .try_collect()
            .await?;
        let ids: Vec<i32> = users.iter().map(|u| u.id).collect();
        let posts: Vec<Post> = self
            .client
            .query_raw(&self.posts, [&ids])
            .await?
            .map_ok(|r| post(&r))
            .try_collect()
            .await?;
        Ok(black_box(users).len() + black_box(posts).len())
    }

    async fn create(&mut self, row: &UserData) -> Result<usize> {
        let stored = self
            .client
            .query_one(&self.create, &[&row.name, &row.hair_color])
            .await?;
        black_box(user(&stored));
        Ok(1)
    }

    async fn create_many(&mut self, rows: &[UserData]) -> Result<usize> {
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let colors: Vec<Option<&str>> = rows.iter().map(|r| r.hair_color.as_deref()).collect();
        let params: [&(dyn ToSql + Sync); 2] = [&names, &colors];
        let users: Vec<User> = self
            .client
            .query_raw(&self.create_many, params)
            .await?
            .map_ok(|r| user(&r))
            .try_collect()
            .await?;
        Ok(black_box(users).len())
    }

    /// A binary COPY, the column types known in advance.
    async fn load(&mut self, rows: &[UserData]) -> Result<usize> {
        let sink = self
            .client
            .copy_in("COPY users (name, hair_color) FROM STDIN BINARY")
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT]);
        pin_mut!(writer);
        for r in rows {
            writer.as_mut().write(&[&r.name, &r.hair_color]).await?;
        }
        Ok(writer.finish().await? as usize)
    }
}
