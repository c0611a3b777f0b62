//! diesel 2 through diesel-async's `AsyncPgConnection` (tokio-postgres underneath):
//! the `table!` DSL, `Selectable` structs, `belonging_to` for the posts. diesel
//! prepares and caches each statement whose SQL does not depend on its inputs.

use std::hint::black_box;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::{Peer, Result};
use crate::schema::UserData;

mod schema {
    diesel::table! {
        users (id) {
            id -> Int4,
            name -> Text,
            hair_color -> Nullable<Text>,
            created_at -> Timestamptz,
        }
    }

    diesel::table! {
        posts (id) {
            id -> Int4,
            user_id -> Int4,
            title -> Text,
            body -> Nullable<Text>,
        }
    }

    diesel::joinable!(posts -> users (user_id));
    diesel::allow_tables_to_appear_in_same_query!(users, posts);
}

use schema::{posts, users};

#[derive(Queryable, Selectable, Identifiable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
#[allow(dead_code)]
struct User {
    id: i32,
    name: String,
    hair_color: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Identifiable, Associations)]
#[diesel(table_name = posts, belongs_to(User), check_for_backend(diesel::pg::Pg))]
#[allow(dead_code)]
struct Post {
    id: i32,
    user_id: i32,
    title: String,
    body: Option<String>,
}

/// diesel inserts borrowed values: no copy.
#[derive(Insertable)]
#[diesel(table_name = users)]
struct NewUser<'a> {
    name: &'a str,
    hair_color: Option<&'a str>,
}

fn new_user(row: &UserData) -> NewUser<'_> {
    NewUser {
        name: &row.name,
        hair_color: row.hair_color.as_deref(),
    }
}

pub(crate) struct Diesel {
    conn: AsyncPgConnection,
}

impl Diesel {
    pub(crate) async fn connect(url: &str) -> Result<Diesel> {
        Ok(Diesel {
            conn: AsyncPgConnection::establish(url).await?,
        })
    }
}

impl Peer for Diesel {
    async fn users(&mut self, max_id: i32) -> Result<usize> {
        let found: Vec<User> = users::table
            .filter(users::id.le(max_id))
            .select(User::as_select())
            .load(&mut self.conn)
            .await?;
        Ok(black_box(found).len())
    }

    async fn user(&mut self, id: i32) -> Result<usize> {
        let found: Option<User> = users::table
            .find(id)
            .select(User::as_select())
            .first(&mut self.conn)
            .await
            .optional()?;
        Ok(black_box(found).map_or(0, |_| 1))
    }

    async fn users_with_posts(&mut self, max_id: i32) -> Result<usize> {
        let found: Vec<User> = users::table
            .filter(users::id.le(max_id))
            .select(User::as_select())
            .load(&mut self.conn)
            .await?;
        let their_posts: Vec<Post> = Post::belonging_to(&found)
            .select(Post::as_select())
            .load(&mut self.conn)
            .await?;
        Ok(black_box(found).len() + black_box(their_posts).len())
    }

    async fn create(&mut self, row: &UserData) -> Result<usize> {
        let stored: User = diesel::insert_into(users::table)
            .values(new_user(row))
            .returning(User::as_returning())
            .get_result(&mut self.conn)
            .await?;
        black_box(stored);
        Ok(1)
    }

    async fn create_many(&mut self, rows: &[UserData]) -> Result<usize> {
        let values: Vec<NewUser<'_>> = rows.iter().map(new_user).collect();
        let stored: Vec<User> = diesel::insert_into(users::table)
            .values(&values)
            .returning(User::as_returning())
            .get_results(&mut self.conn)
            .await?;
        Ok(black_box(stored).len())
    }

    /// One multi-row `INSERT … VALUES` (diesel's COPY support is for its synchronous
    /// connection only).
    async fn load(&mut self, rows: &[UserData]) -> Result<usize> {
        let values: Vec<NewUser<'_>> = rows.iter().map(new_user).collect();
        let n = diesel::insert_into(users::table)
            .values(&values)
            .execute(&mut self.conn)
            .await?;
        Ok(n)
    }
}
