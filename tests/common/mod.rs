//! Shared by the integration tests: the repository's migrations, a fresh database per
//! test, and the seed's models.
#![allow(dead_code, unreachable_pub)]

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tabula::migrate::Migrator;
use tabula::{Db, Table};
use uuid::Uuid;

pub static MIGRATIONS: LazyLock<Migrator> =
    LazyLock::new(|| tabula::embed_migrations!("migrations"));

/// A database of this test's own, migrated, on the test kit's server.
pub async fn db() -> Db {
    match tabula::testkit::database(&MIGRATIONS).await {
        Ok((db, _url)) => db,
        Err(e) => panic!("test database: {e}"),
    }
}

/// A database of this test's own and its URL.
pub async fn db_and_url() -> (Db, String) {
    match tabula::testkit::database(&MIGRATIONS).await {
        Ok(pair) => pair,
        Err(e) => panic!("test database: {e}"),
    }
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles")]
pub struct Profile {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub avatar_url: Option<String>,
    #[table(generated)]
    pub status: String,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
    #[table(generated)]
    pub updated_at: DateTime<Utc>,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "experiences")]
pub struct Experience {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub content: String,
    pub metadata: serde_json::Value,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "documents")]
pub struct Document {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub content: String,
    #[table(json)]
    pub metadata: DocumentMeta,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
    #[table(generated)]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DocumentMeta {
    pub tags: Vec<String>,
    pub pages: u32,
}

/// Rows in `profiles`, counted by PostgreSQL.
pub async fn count_profiles(db: &Db) -> i64 {
    db.with_client(async |c| {
        Ok(c.query_one("SELECT count(*) FROM profiles", &[])
            .await?
            .get(0))
    })
    .await
    .expect("count")
}

pub fn new_profile(username: &str) -> NewProfile {
    NewProfile {
        user_id: Uuid::new_v4(),
        username: username.to_owned(),
        avatar_url: None,
    }
}
