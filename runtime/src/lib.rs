//! # Tabula
//!
//! Typed data access and correct caching for applications on PostgreSQL and Redis.
//!
//! Derive [`Table`] on a model struct and get typed create / read / update / delete,
//! batch inserts and upserts, transactions with retries, typed errors, migrations and
//! monitoring:
//!
//! ```no_run
//! use tabula::{Db, Table};
//!
//! #[derive(Table, Debug)]
//! #[table(name = "notes")]
//! pub struct Note {
//!     #[table(primary_key, generated)]
//!     pub id: i64,
//!     pub body: String,
//!     pub pinned: Option<bool>,
//! }
//!
//! # async fn run() -> tabula::Result<()> {
//! let db = Db::connect_from_env().await?;
//! let note = db.create(NewNote { body: "hello".into(), pinned: None }).await?;
//! let same: Option<Note> = db.read(note.id).await?;
//! let edited = db.update::<Note>(note.id, NotePatch { body: Some("bye".into()), ..Default::default() }).await?;
//! db.delete::<Note>(note.id).await?;
//! # Ok(()) }
//! ```
//!
//! The pieces, one module each: [`db`] (the [`Db`] handle, pool, transactions),
//! [`table`] (the [`Table`] trait and typed columns), [`query`] (the typed query
//! builder, paging, `QuerySpec`), [`cache`] (the cache service, the row cache and its
//! contract, `#[cached]`), [`auth`] (Row Level Security through user-scoped handles),
//! [`storage`] (files), [`migrate`], [`monitor`], [`error`], and `testkit` (feature
//! `testkit`: throwaway servers for tests and examples).

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as tabula;

pub mod auth;
pub mod build;
pub mod cache;
mod conninfo;
pub mod db;
pub mod error;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
pub mod migrate;
pub mod monitor;
mod pool;
pub mod query;
#[cfg(feature = "rest")]
#[cfg_attr(docsrs, doc(cfg(feature = "rest")))]
pub mod rest;
mod sql;
#[cfg(feature = "storage")]
#[cfg_attr(docsrs, doc(cfg(feature = "storage")))]
pub mod storage;
pub mod table;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;
mod tls;
mod types;

pub use cache::{CacheConfig, CacheService};
pub use db::{AfterConnect, Db, DbConfig, Isolation};
pub use error::{Error, Result};
pub use query::{
    Children, Cursor, Filter, IntoValue, JoinQuery, OffsetPage, OrderBy, Page, Query, Selection,
    Total,
};
pub use table::{
    BelongsTo, Column, ColumnMeta, ColumnSet, NewRow, Patch, Related, Table, TableMeta,
};
pub use tls::SslMode;
pub use types::{ArrayElement, BoxError, ColumnType, CustomColumn, PgEnum, VersionColumn};

/// Derives [`Table`] for a struct with named fields; see the [`table`] module.
///
/// Struct attributes: `#[table(name = "...")]` (default: the struct name in
/// snake_case, pluralised: `UserProfile` → `user_profiles`), `schema = "..."`.
/// Field attributes: `primary_key` (exactly one), `generated` (filled by a database
/// default, left out of inserts), `rename = "..."`, `skip` (not a column; filled with
/// `Default` when read), `json` (any serde type, stored as `jsonb`).
///
/// Generates `New<Model>` (the insertable fields), `<Model>Patch` (every non-key field
/// as an `Option`; `Default` leaves everything unchanged) and a typed column constant
/// per field (`Model::FIELD_NAME`).
pub use tabula_macros::Table;

/// Derives [`PgEnum`] for an enum of unit variants, with everything a column type
/// needs: `ToSql` / `FromSql` (as the labels), the row cache's codec, [`ColumnType`]
/// and [`ArrayElement`]. See [`PgEnum`] for the attributes and how the type is stored.
pub use tabula_macros::PgEnum;

/// Memoizes an async function or method in the cache: `#[cached(ttl = 300)]`.
///
/// Options: `ttl = N` (whole seconds, required), `tables(Model, …)` (any write to these
/// tables drops every entry), `tags(expr, …)` (expressions over the arguments, each a tag
/// [`Db::invalidate_tag`] drops), `stale = N` (an expired entry is served for up to `N`
/// more seconds while one caller recomputes it), `skip(arg, …)` (arguments left out of the key),
/// `key = <expr>` (the key instead of the arguments), `name = "..."` (instead of the
/// function's path). The receiver is never part of the key. For a `Result` only `Ok`
/// is cached; any other value (`None` included) is cached as returned. Every argument
/// in the key must be `serde::Serialize` and the cached value `Serialize +
/// DeserializeOwned`. Also generates `<fn>_invalidate(args…)` and `<fn>_clear()`. See
/// [`cache`] for the contract and the cache used.
///
/// ```no_run
/// use tabula::{cached, Table};
///
/// #[derive(Table, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// pub struct Profile { #[table(primary_key)] pub id: i64, pub username: String }
///
/// pub struct UserService { db: tabula::Db }
///
/// impl UserService {
///     #[cached(ttl = 300, tables(Profile))]
///     pub async fn user_profile(&self, id: i64) -> tabula::Result<Option<Profile>> {
///         self.db.read::<Profile>(id).await
///     }
/// }
/// ```
pub use tabula_macros::cached;

/// Embeds the migrations of a folder (relative to the crate's `Cargo.toml`) into the
/// binary as a [`migrate::Migrator`], checked at compile time (file names, duplicate
/// and over-long versions). Edited files are re-embedded by rustc; to re-embed when a
/// file is *added*, call [`build::rerun_if_migrations_change`] from the crate's
/// `build.rs`.
///
/// ```ignore
/// static MIGRATIONS: std::sync::LazyLock<tabula::migrate::Migrator> =
///     std::sync::LazyLock::new(|| tabula::embed_migrations!("migrations").with_builtin());
/// ```
pub use tabula_macros::embed_migrations;

/// What generated code uses. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::cache::memo::{
        MemoSpec, MemoStore, OkOnly, Plain, assert_key_arg, memo, memo_clear, memo_invalidate,
        memo_key,
    };
    pub use crate::migrate::{Migration, Migrator};
    pub use crate::table::Statements;
    pub use crate::table::{
        BelongsTo, CacheCodec, CodecReader, Column, ColumnMeta, NewRow, Param, Patch, Related,
        Table, TableMeta, decode_column, decode_json, decode_json_opt, encode_json,
        encode_json_opt, row_shape, same_encoding, same_json,
    };
    pub use crate::types::{
        ColumnType, JsonOptRef, JsonRef, assert_soft_delete_column, assert_version_column,
        decode_json_column, decode_json_opt_column, json_opt_param, json_param,
    };
    pub use crate::types::{enum_accepts, enum_from_sql};
    pub use crate::{Db, Error, Result};
    pub use bytes::BytesMut;
    pub use std::any::Any;
    pub use std::boxed::Box;
    pub use std::default::Default;
    pub use std::option::Option;
    pub use std::sync::OnceLock;
    pub use std::vec::Vec;
    pub use tokio_postgres::Row;
    pub use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

    /// A patch field of a nullable column from a request body: present (even `null`)
    /// is `Some`, so `null` sets NULL; missing is the field's default, `None`.
    pub fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: serde::Deserialize<'de>,
    {
        <Option<T> as serde::Deserialize<'de>>::deserialize(deserializer).map(Some)
    }

    /// A patch field of a column that cannot be NULL: present is `Some` of a value (a
    /// `null` is an error, also for a type that could read one, as `serde_json::Value`
    /// does); missing is `None`.
    pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: serde::Deserialize<'de>,
    {
        match <Option<T> as serde::Deserialize<'de>>::deserialize(deserializer)? {
            Some(value) => Ok(Some(value)),
            None => Err(<D::Error as serde::de::Error>::custom(
                "null for a column that cannot be NULL",
            )),
        }
    }

    pub use std::string::String;
    pub use std::vec;

    /// The row cache's name of a row: its key as JSON text.
    pub fn row_name<M: Table>(key: &M::Key) -> String {
        crate::db::key_text::<M>(key)
    }

    /// The row cache's name of a unique column's value: `#column:<value as JSON>`.
    pub fn unique_name<T: serde::Serialize + ?Sized>(column: &str, value: &T) -> String {
        let value = serde_json::to_value(value).unwrap_or_default();
        format!("#{column}:{value}")
    }

    /// Sync + Send trait object of a parameter.
    pub type DynParam<'a> = dyn ToSql + Sync + Send + 'a;

    /// A field value as a statement parameter; the bound makes an unsupported field
    /// type one clear error on the field.
    pub fn column_param<T: ColumnType>(value: &T) -> Param<'_> {
        value
    }

    /// One column of a batch as an array parameter.
    pub fn column_array<'a, R, T: ColumnType>(
        rows: &'a [R],
        get: impl Fn(&'a R) -> &'a T,
    ) -> Box<DynParam<'a>> {
        Box::new(rows.iter().map(get).collect::<Vec<&T>>())
    }

    /// One `json` column of a batch as a `jsonb[]` parameter.
    pub fn json_array<'a, R, T: serde::Serialize + Sync + 'a>(
        rows: &'a [R],
        get: impl Fn(&'a R) -> &'a T,
    ) -> Box<DynParam<'a>> {
        Box::new(rows.iter().map(|r| json_param(get(r))).collect::<Vec<_>>())
    }

    /// One nullable `json` column of a batch as a `jsonb[]` parameter.
    pub fn json_opt_array<'a, R, T: serde::Serialize + Sync + 'a>(
        rows: &'a [R],
        get: impl Fn(&'a R) -> &'a Option<T>,
    ) -> Box<DynParam<'a>> {
        Box::new(
            rows.iter()
                .map(|r| json_opt_param(get(r)))
                .collect::<Vec<_>>(),
        )
    }
}
