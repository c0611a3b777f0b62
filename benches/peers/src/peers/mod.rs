//! One module per library, each doing the same work through its own API, decoding
//! every row into a struct of its own.
//!
//! Every method returns how many rows it loaded or wrote, which the harness checks:
//! a library that silently did less work would not go unnoticed.

pub(crate) mod diesel;
pub(crate) mod raw;
pub(crate) mod sea_orm;
pub(crate) mod sqlx;
pub(crate) mod tabula;

use crate::schema::UserData;

pub(crate) type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The work each library does, one method per workload shape.
pub(crate) trait Peer {
    /// Users with `id <= max_id` (the trivial query).
    async fn users(&mut self, max_id: i32) -> Result<usize>;
    /// The user with primary key `id`.
    async fn user(&mut self, id: i32) -> Result<usize>;
    /// Users with `id <= max_id`, then their posts in a second query (`IN` / `= ANY`).
    async fn users_with_posts(&mut self, max_id: i32) -> Result<usize>;
    /// Inserts one user and returns it as stored.
    async fn create(&mut self, row: &UserData) -> Result<usize>;
    /// Inserts `rows` and returns them as stored (generated ids and timestamps).
    async fn create_many(&mut self, rows: &[UserData]) -> Result<usize>;
    /// Inserts `rows` the fastest way the library offers, nothing returned.
    async fn load(&mut self, rows: &[UserData]) -> Result<usize>;
}

/// One unit of work, as the harness times it.
#[derive(Clone, Copy)]
pub(crate) enum Op<'a> {
    Users(i32),
    User(i32),
    UsersWithPosts(i32),
    Create(&'a UserData),
    CreateMany(&'a [UserData]),
    Load(&'a [UserData]),
}

/// The libraries, as one type the harness can hold in a list.
#[allow(clippy::large_enum_variant)] // five values, made once: their size is no cost
pub(crate) enum Library {
    Raw(raw::Raw),
    Tabula(tabula::Tabula),
    Sqlx(sqlx::Sqlx),
    SeaOrm(sea_orm::SeaOrm),
    Diesel(diesel::Diesel),
}

impl Library {
    /// The name in tables, JSON and the chart.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Library::Raw(_) => "tokio-postgres",
            Library::Tabula(_) => "tabula",
            Library::Sqlx(_) => "sqlx",
            Library::SeaOrm(_) => "sea-orm",
            Library::Diesel(_) => "diesel-async",
        }
    }

    pub(crate) async fn run(&mut self, op: Op<'_>) -> Result<usize> {
        match self {
            Library::Raw(p) => run(p, op).await,
            Library::Tabula(p) => run(p, op).await,
            Library::Sqlx(p) => run(p, op).await,
            Library::SeaOrm(p) => run(p, op).await,
            Library::Diesel(p) => run(p, op).await,
        }
    }
}

async fn run<P: Peer>(peer: &mut P, op: Op<'_>) -> Result<usize> {
    match op {
        Op::Users(max_id) => peer.users(max_id).await,
        Op::User(id) => peer.user(id).await,
        Op::UsersWithPosts(max_id) => peer.users_with_posts(max_id).await,
        Op::Create(row) => peer.create(row).await,
        Op::CreateMany(rows) => peer.create_many(rows).await,
        Op::Load(rows) => peer.load(rows).await,
    }
}
