//! SeaORM 2: entities by `DeriveEntityModel`, a pool of one connection. The pool's
//! ping before every checkout (on by default) is turned off, and so is statement
//! logging: both are settings, not ORM work, and Tabula does neither.

use std::hint::black_box;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, Database, DatabaseConnection, EntityTrait,
    QueryFilter, Set,
};

use super::{Peer, Result};
use crate::schema::UserData;

mod user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
        pub hair_color: Option<String>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod post {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, DeriveEntityModel)]
    #[sea_orm(table_name = "posts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub user_id: i32,
        pub title: String,
        pub body: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) struct SeaOrm {
    db: DatabaseConnection,
}

impl SeaOrm {
    pub(crate) async fn connect(url: &str) -> Result<SeaOrm> {
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .sqlx_logging(false);
        Ok(SeaOrm {
            db: Database::connect(options).await?,
        })
    }
}

/// An active model owns its values: the copy is part of the work.
fn active(row: &UserData) -> user::ActiveModel {
    user::ActiveModel {
        name: Set(row.name.clone()),
        hair_color: Set(row.hair_color.clone()),
        ..Default::default()
    }
}

impl Peer for SeaOrm {
    async fn users(&mut self, max_id: i32) -> Result<usize> {
        let users = user::Entity::find()
            .filter(user::Column::Id.lte(max_id))
            .all(&self.db)
            .await?;
        Ok(black_box(users).len())
    }

    async fn user(&mut self, id: i32) -> Result<usize> {
        let found = user::Entity::find_by_id(id).one(&self.db).await?;
        Ok(black_box(found).map_or(0, |_| 1))
    }

    /// A plain filter rather than `load_many`, which would also group the posts by
    /// user: the same two queries as every other library, and no extra work.
    async fn users_with_posts(&mut self, max_id: i32) -> Result<usize> {
        let users = user::Entity::find()
            .filter(user::Column::Id.lte(max_id))
            .all(&self.db)
            .await?;
        let posts = post::Entity::find()
            .filter(post::Column::UserId.is_in(users.iter().map(|u| u.id)))
            .all(&self.db)
            .await?;
        Ok(black_box(users).len() + black_box(posts).len())
    }

    async fn create(&mut self, row: &UserData) -> Result<usize> {
        black_box(active(row).insert(&self.db).await?);
        Ok(1)
    }

    async fn create_many(&mut self, rows: &[UserData]) -> Result<usize> {
        let stored = user::Entity::insert_many(rows.iter().map(active))
            .exec_with_returning(&self.db)
            .await?;
        Ok(black_box(stored).len())
    }

    async fn load(&mut self, rows: &[UserData]) -> Result<usize> {
        let n = user::Entity::insert_many(rows.iter().map(active))
            .exec_without_returning(&self.db)
            .await?;
        Ok(n as usize)
    }
}
