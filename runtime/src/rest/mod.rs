//! A PostgREST-compatible API over the models (feature `rest`): a registry of the
//! models an application exposes, a dynamic API on it by table name — reads, inserts,
//! upserts, updates and deletes from JSON — and an axum router ([`router`]) that speaks
//! PostgREST's HTTP dialect, so a Supabase client (`@supabase/postgrest-js`) can talk to
//! a Tabula server.
//!
//! Every request goes through the typed code paths: a column name is looked up in the
//! model's metadata (never spliced into SQL), a value is parsed as the column's type
//! and bound, a body is deserialized into the model's `New` or `Patch` type, writes
//! invalidate the cache, and a scoped handle's reads go through its own copies. Errors
//! have PostgREST's JSON shape (`code`, `message`, `details`, `hint`).
//!
//! ```no_run
//! use tabula::rest::{Read, RestApi};
//! # #[derive(tabula::Table, serde::Serialize, serde::Deserialize)]
//! # #[table(derive_new(serde::Deserialize), derive_patch(serde::Deserialize))]
//! # pub struct Profile { #[table(primary_key)] pub id: i64, pub username: String }
//! # async fn run(db: tabula::Db) -> Result<(), tabula::rest::RestError> {
//! let api = RestApi::new().model::<Profile>();
//! let read = Read::from_query("select=id,username&username=eq.ada&limit=1")?;
//! let rows = api.table("profiles")?.select(&db, &read).await?.rows;
//! # Ok(()) }
//! ```
//!
//! Covered: `select` of columns, the filters `eq`, `neq`, `gt`, `gte`, `lt`, `lte`,
//! `like`, `ilike` (`*` as `%`), `in`, `is` (null, true, false), `cs` (JSON
//! containment), `not.` before any of them, `or=(…)` / `and=(…)` nested; `order`
//! (with `nullsfirst` / `nullslast`), `limit`, `offset`, `Range`, `Prefer: count=exact`
//! (and `planned` / `estimated`), inserts (one object or an array), upserts
//! (`Prefer: resolution=merge-duplicates`, `on_conflict`), updates and deletes by
//! filter (refused without one), `Prefer: return=representation|minimal`,
//! `Accept: application/vnd.pgrst.object+json`, and embedded resources along the
//! relations the API declares ([`RestApi::embed`]: `select=id,posts(title)`, nested up to
//! four levels). Not covered (refused with `PGRST100`-style errors, never ignored):
//! aliases, casts and join hints in `select`, filters on embedded resources, full-text
//! and range operators, RPC.

mod http;
mod params;

pub use http::{Cors, RestConfig, router};

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::db::Db;
use crate::error::Error;
use crate::query::filter::Node;
use crate::query::spec::{FilterSpec, JsonRow, OrderKeySpec, SpecLimits};
use crate::query::{Filter, Query};
use crate::table::{ColumnSet, Table, TableMeta};

/// A request's read part, model-free: what PostgREST's query string says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Read {
    /// Columns to return (`None`: all the readable ones).
    pub select: Option<Vec<String>>,
    /// Related rows to embed (`select=id,experiences(content)`), along relations the
    /// API declares ([`RestApi::embed`]).
    pub embeds: Vec<Embed>,
    /// The filter (`None`: every row).
    pub filter: Option<Cond>,
    /// Order keys.
    pub order: Vec<OrderKeySpec>,
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Rows to skip.
    pub offset: Option<u64>,
    /// Whether to count every matching row too.
    pub count: Option<Count>,
}

impl Read {
    /// Reads PostgREST's query string (`select=…&col=op.value&order=…&limit=…`).
    ///
    /// ```
    /// let read = tabula::rest::Read::from_query("id=gt.5&order=id.desc&limit=2")?;
    /// assert_eq!(read.limit, Some(2));
    /// # Ok::<(), tabula::rest::RestError>(())
    /// ```
    pub fn from_query(query: &str) -> Result<Read, RestError> {
        params::parse_query(query)
    }
}

/// A resource embedded in a read's rows: `name(columns, nested(…))`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    /// The related table's name.
    pub name: String,
    /// Its columns to return (`None`: all the readable ones).
    pub select: Option<Vec<String>>,
    /// Resources embedded in it.
    pub embeds: Vec<Embed>,
}

/// A relation the API may embed along: `from`'s column equals `to`'s column.
#[derive(Debug, Clone, Copy)]
struct Relation {
    from_column: &'static str,
    to_column: &'static str,
    /// `to`'s column is its primary key: each row has at most one related row (an
    /// object or `null`); otherwise any number (an array).
    to_one: bool,
}

/// A filter, model-free: a column's condition, or a combination.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// `column op value` (the operators of [`FilterSpec`]; `value` is `Null` for
    /// `is_null`).
    Leaf {
        /// The column's name.
        column: String,
        /// `eq`, `ne`, `lt`, `lte`, `gt`, `gte`, `like`, `ilike`, `in`, `is_null`,
        /// `contains`.
        op: String,
        /// The value (a list for `in`).
        value: Value,
    },
    /// All of them.
    And(Vec<Cond>),
    /// Any of them.
    Or(Vec<Cond>),
    /// Not it.
    Not(Box<Cond>),
}

/// How a read counts its matching rows (`Prefer: count=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// `count(*)` of every matching row.
    Exact,
    /// The planner's estimate (`planned`, `estimated`).
    Estimated,
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    /// The rows, as JSON objects of the selected columns.
    pub rows: Vec<Map<String, Value>>,
    /// Every matching row, when asked.
    pub total: Option<i64>,
    /// Whether rows were left out: a read without a `limit` returns at most
    /// [`SpecLimits::max_limit`] rows, and says so here (the router answers `206
    /// Partial Content`) rather than truncate silently.
    pub more: bool,
}

/// Which operations and columns a model exposes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Expose {
    /// `GET`. Default yes.
    pub read: bool,
    /// `POST`. Default yes.
    pub insert: bool,
    /// `PATCH`. Default yes.
    pub update: bool,
    /// `DELETE`. Default yes.
    pub delete: bool,
    /// Columns never returned, filtered or ordered on.
    pub hidden: Vec<&'static str>,
    /// Columns never written.
    pub read_only: Vec<&'static str>,
    /// Reads (and counts) through the query cache for this many seconds: versioned by
    /// the table like every cached query (any write drops them), a user scope's in its
    /// own copies. Default `None`: every read asks the database.
    pub cache_ttl: Option<u64>,
}

impl Default for Expose {
    fn default() -> Self {
        Expose {
            read: true,
            insert: true,
            update: true,
            delete: true,
            hidden: Vec::new(),
            read_only: Vec::new(),
            cache_ttl: None,
        }
    }
}

impl Expose {
    /// Reads only.
    ///
    /// ```
    /// let expose = tabula::rest::Expose::read_only().hide(["email"]);
    /// assert!(expose.read && !expose.insert);
    /// ```
    pub fn read_only() -> Expose {
        Expose {
            insert: false,
            update: false,
            delete: false,
            ..Expose::default()
        }
    }

    /// Hides these columns (never returned, filtered or ordered on).
    pub fn hide(mut self, columns: impl IntoIterator<Item = &'static str>) -> Expose {
        self.hidden.extend(columns);
        self
    }

    /// Makes these columns read-only.
    pub fn protect(mut self, columns: impl IntoIterator<Item = &'static str>) -> Expose {
        self.read_only.extend(columns);
        self
    }

    /// Serves reads through the query cache (see [`Expose::cache_ttl`]).
    ///
    /// ```
    /// let expose = tabula::rest::Expose::default().cached(60);
    /// assert_eq!(expose.cache_ttl, Some(60));
    /// ```
    pub fn cached(mut self, ttl_seconds: u64) -> Expose {
        self.cache_ttl = Some(ttl_seconds);
        self
    }
}

/// An error in PostgREST's shape: an HTTP status and the JSON body
/// `{"code", "message", "details", "hint"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    /// The HTTP status.
    pub status: u16,
    /// PostgREST's or PostgreSQL's code (`PGRST100`, `23505`, `42501`, …).
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// More about it, if anything.
    pub details: Option<String>,
    /// What to do, if known.
    pub hint: Option<String>,
}

impl std::fmt::Display for RestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for RestError {}

impl RestError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> RestError {
        RestError {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
            hint: None,
        }
    }

    /// A request that does not parse (400, `PGRST100`).
    pub(crate) fn parse(message: impl Into<String>) -> RestError {
        RestError::new(400, "PGRST100", message)
    }

    /// A feature of PostgREST this server does not have (400, `PGRST100`).
    pub(crate) fn unsupported(message: impl Into<String>) -> RestError {
        RestError::new(400, "PGRST100", message)
    }

    /// The body as PostgREST writes it.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "hint": self.hint,
        })
    }
}

impl From<Error> for RestError {
    fn from(error: Error) -> RestError {
        let message = error.to_string();
        match &error {
            Error::Validation(_) => RestError::new(400, "PGRST100", message),
            Error::NotFound { .. } => RestError::new(404, "PGRST116", message),
            Error::UniqueViolation { .. } | Error::AlreadyExists(_) => {
                RestError::new(409, "23505", message)
            }
            Error::ForeignKeyViolation { .. } => RestError::new(409, "23503", message),
            Error::NotNullViolation { .. } => RestError::new(400, "23502", message),
            Error::CheckViolation { .. } => RestError::new(400, "23514", message),
            Error::PermissionDenied { .. } => RestError::new(403, "42501", message),
            Error::Unauthenticated { .. } => RestError::new(401, "PGRST301", message),
            Error::Conflict { .. } | Error::StaleVersion { .. } => {
                RestError::new(409, "PGRST409", message)
            }
            Error::Misuse(_) | Error::Config(_) => RestError::new(500, "PGRST000", message),
            Error::PoolTimeout(_)
            | Error::Connect(_)
            | Error::Timeout { .. }
            | Error::Connection(_) => RestError::new(503, "PGRST001", message),
            // PostgreSQL's own errors, by class, as PostgREST answers them.
            Error::Database { sqlstate, .. } => {
                let status = match sqlstate.get(..2).unwrap_or_default() {
                    "08" | "53" => 503,
                    "23" => 409,
                    "28" | "0L" | "0P" => 403,
                    "54" => 413,
                    "25" | "2D" | "38" | "39" | "3B" | "40" | "55" | "57" | "58" | "XX" => 500,
                    _ => match sqlstate.as_str() {
                        "42P01" | "42883" => 404,
                        "42501" => 403,
                        _ => 400,
                    },
                };
                RestError::new(status, sqlstate, message)
            }
            _ => RestError::new(500, "PGRST000", message),
        }
    }
}

type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, RestError>> + Send + 'a>>;

/// One model's operations, by JSON.
trait Dynamic: Send + Sync {
    fn meta(&self) -> &'static TableMeta;
    fn expose(&self) -> &Expose;
    fn select<'a>(&'a self, db: &'a Db, read: &'a Read) -> Pending<'a, Selected>;
    fn insert<'a>(
        &'a self,
        db: &'a Db,
        rows: Vec<Map<String, Value>>,
        upsert: Option<Vec<String>>,
        returning: Option<&'a [String]>,
    ) -> Pending<'a, Vec<Map<String, Value>>>;
    fn update<'a>(
        &'a self,
        db: &'a Db,
        filter: &'a Cond,
        patch: Map<String, Value>,
        returning: Option<&'a [String]>,
    ) -> Pending<'a, Vec<Map<String, Value>>>;
    fn delete<'a>(
        &'a self,
        db: &'a Db,
        filter: &'a Cond,
        returning: Option<&'a [String]>,
    ) -> Pending<'a, Vec<Map<String, Value>>>;
}

/// The models an API exposes, by table name.
///
/// ```no_run
/// # #[derive(tabula::Table)]
/// # #[table(derive_new(serde::Deserialize), derive_patch(serde::Deserialize))]
/// # pub struct Profile { #[table(primary_key)] pub id: i64, pub username: String, pub email: String }
/// use tabula::rest::{Expose, RestApi};
/// let api = RestApi::new().model_with::<Profile>(Expose::read_only().hide(["email"]));
/// assert!(api.table("profiles").is_ok());
/// ```
#[derive(Clone, Default)]
pub struct RestApi {
    inner: Arc<Registry>,
}

#[derive(Clone, Default)]
struct Registry {
    tables: BTreeMap<&'static str, Arc<dyn Dynamic>>,
    /// By (table, embedded table).
    relations: BTreeMap<(&'static str, &'static str), Relation>,
    limits: SpecLimits,
}

impl std::fmt::Debug for RestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestApi")
            .field("tables", &self.inner.tables.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RestApi {
    /// An API exposing nothing yet.
    pub fn new() -> RestApi {
        RestApi::default()
    }

    /// Exposes `M` under its table's name, every operation and column.
    pub fn model<M>(self) -> RestApi
    where
        M: Table,
        M::New: DeserializeOwned,
        M::Patch: DeserializeOwned,
    {
        self.model_with::<M>(Expose::default())
    }

    /// Exposes `M` under its table's name, as `expose` says.
    pub fn model_with<M>(mut self, expose: Expose) -> RestApi
    where
        M: Table,
        M::New: DeserializeOwned,
        M::Patch: DeserializeOwned,
    {
        let registry = Arc::make_mut(&mut self.inner);
        let limits = registry.limits;
        registry.tables.insert(
            M::META.name,
            Arc::new(Model::<M> {
                expose,
                limits,
                _model: std::marker::PhantomData,
            }),
        );
        self
    }

    /// Lets reads of `A` embed rows of `B` along their declared relation
    /// (`#[table(belongs_to = …)]`), both ways: `select=id,posts(title)` on the parent
    /// gives each row an array of its children, `select=title,users(name)` on the
    /// child an object (or `null`).
    ///
    /// ```no_run
    /// # #[derive(tabula::Table)] #[table(derive_new(serde::Deserialize), derive_patch(serde::Deserialize))]
    /// # pub struct User { #[table(primary_key)] pub id: i64, pub name: String }
    /// # #[derive(tabula::Table)] #[table(derive_new(serde::Deserialize), derive_patch(serde::Deserialize))]
    /// # pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64, pub title: String }
    /// let api = tabula::rest::RestApi::new().model::<User>().model::<Post>().embed::<User, Post>();
    /// ```
    pub fn embed<A: crate::Related<B>, B: crate::Related<A>>(mut self) -> RestApi {
        let registry = Arc::make_mut(&mut self.inner);
        let (a, b) = (A::META, B::META);
        let (a_column, b_column) = <A as crate::Related<B>>::ON;
        let (from, to) = (a.columns[a_column].name, b.columns[b_column].name);
        registry.relations.insert(
            (a.name, b.name),
            Relation {
                from_column: from,
                to_column: to,
                to_one: b_column == b.primary_key,
            },
        );
        registry.relations.insert(
            (b.name, a.name),
            Relation {
                from_column: to,
                to_column: from,
                to_one: a_column == a.primary_key,
            },
        );
        self
    }

    /// Sets the bounds on what a request may ask (rows per read, filters, list
    /// lengths); for the models exposed after it.
    ///
    /// ```
    /// use tabula::{query::SpecLimits, rest::RestApi};
    /// let api = RestApi::new().limits(SpecLimits::default().max_limit(100));
    /// ```
    pub fn limits(mut self, limits: SpecLimits) -> RestApi {
        Arc::make_mut(&mut self.inner).limits = limits;
        self
    }

    /// The exposed table `name`, or PostgREST's 404 (`PGRST205`).
    pub fn table(&self, name: &str) -> Result<RestTable, RestError> {
        let table = self.inner.tables.get(name).cloned().ok_or_else(|| {
            RestError::new(
                404,
                "PGRST205",
                format!(
                    "Could not find the table '{}' in the schema cache",
                    name.chars().take(64).collect::<String>()
                ),
            )
        })?;
        Ok(RestTable {
            table,
            registry: self.inner.clone(),
        })
    }
}

/// One exposed table: reads and writes by JSON, through the model's typed paths.
#[derive(Clone)]
pub struct RestTable {
    table: Arc<dyn Dynamic>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for RestTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RestTable")
            .field(&self.table.meta().name)
            .finish()
    }
}

impl RestTable {
    /// The rows `read` asks for (as `db` sees them: a scoped handle sees what its
    /// policies show).
    pub async fn select(&self, db: &Db, read: &Read) -> Result<Selected, RestError> {
        self.allowed(self.table.expose().read, "read")?;
        if read.embeds.is_empty() {
            return self.table.select(db, read).await;
        }
        self.select_embedding(db, read, 0).await
    }

    /// A read with embedded resources: the rows (with the columns the relations need,
    /// dropped again unless selected), then per embedded resource one read of the
    /// related rows by `in` over this page's values, grouped onto the rows.
    fn select_embedding<'a>(
        &'a self,
        db: &'a Db,
        read: &'a Read,
        depth: usize,
    ) -> Pending<'a, Selected> {
        Box::pin(async move {
            if depth > params::MAX_EMBED_DEPTH {
                return Err(RestError::parse("embedded resources nest too deep"));
            }
            let name = self.table.meta().name;
            let mut relations = Vec::with_capacity(read.embeds.len());
            for embed in &read.embeds {
                let relation = self
                    .registry
                    .relations
                    .get(&(name, embed.name.as_str()))
                    .copied()
                    .ok_or_else(|| {
                        RestError::new(
                            400,
                            "PGRST200",
                            format!(
                                "Could not find a relationship between '{name}' and '{}' in the schema cache",
                                embed.name.chars().take(64).collect::<String>()
                            ),
                        )
                    })?;
                let target = RestApi {
                    inner: self.registry.clone(),
                }
                .table(&embed.name)?;
                target.allowed(target.table.expose().read, "read")?;
                relations.push((embed, relation, target));
            }
            // The columns to return, and those the relations need besides.
            let mut own = read.clone();
            own.embeds = Vec::new();
            let wanted: Option<Vec<String>> = read
                .select
                .clone()
                .filter(|s| !s.is_empty() || read.embeds.is_empty());
            let mut extra = Vec::new();
            if let Some(columns) = &wanted
                && !columns.iter().any(|c| c.trim() == "*")
            {
                let mut columns = columns.clone();
                for (_, relation, _) in &relations {
                    if !columns.iter().any(|c| c.trim() == relation.from_column) {
                        columns.push(relation.from_column.to_owned());
                        extra.push(relation.from_column);
                    }
                }
                own.select = Some(columns);
            } else if wanted.is_none() && read.select.as_ref().is_some_and(Vec::is_empty) {
                // Only embedded resources: just the columns the relations need.
                own.select = Some(
                    relations
                        .iter()
                        .map(|(_, r, _)| r.from_column.to_owned())
                        .collect(),
                );
                extra.extend(relations.iter().map(|(_, r, _)| r.from_column));
            }
            let selected = self.table.select(db, &own).await?;
            let mut rows = selected.rows;
            let max = self.registry.limits.max_limit;
            for (embed, relation, target) in relations {
                // The values this page holds, once each, nulls left out.
                let mut values: Vec<Value> = Vec::new();
                for row in &rows {
                    if let Some(value) = row.get(relation.from_column)
                        && !value.is_null()
                        && !values.contains(value)
                    {
                        values.push(value.clone());
                    }
                }
                let mut related: Vec<Map<String, Value>> = Vec::new();
                let mut dropped_key = false;
                if !values.is_empty() {
                    let mut select = embed.select.clone();
                    if let Some(columns) = &mut select
                        && !columns
                            .iter()
                            .any(|c| c.trim() == "*" || c.trim() == relation.to_column)
                    {
                        columns.push(relation.to_column.to_owned());
                        dropped_key = true;
                    }
                    let child = Read {
                        select,
                        embeds: embed.embeds.clone(),
                        filter: Some(Cond::Leaf {
                            column: relation.to_column.to_owned(),
                            op: "in".into(),
                            value: Value::Array(values),
                        }),
                        order: Vec::new(),
                        // No limit: up to the maximum, and `more` says when rows were
                        // left out — an error here, never a silent truncation.
                        limit: None,
                        offset: None,
                        count: None,
                    };
                    let selected = match child.embeds.is_empty() {
                        true => target.table.select(db, &child).await?,
                        false => target.select_embedding(db, &child, depth + 1).await?,
                    };
                    if selected.more {
                        return Err(RestError::new(
                            400,
                            "PGRST100",
                            format!(
                                "embedding '{}' returns more than {max} rows; filter the parent rows",
                                embed.name
                            ),
                        ));
                    }
                    related = selected.rows;
                }
                for row in &mut rows {
                    let key = row
                        .get(relation.from_column)
                        .cloned()
                        .unwrap_or(Value::Null);
                    let mut matching = related
                        .iter()
                        .filter(|r| !key.is_null() && r.get(relation.to_column) == Some(&key))
                        .cloned()
                        .map(|mut r| {
                            if dropped_key {
                                r.remove(relation.to_column);
                            }
                            Value::Object(r)
                        });
                    let value = match relation.to_one {
                        true => matching.next().unwrap_or(Value::Null),
                        false => Value::Array(matching.collect()),
                    };
                    row.insert(embed.name.clone(), value);
                }
            }
            for row in &mut rows {
                for column in &extra {
                    row.remove(*column);
                }
            }
            Ok(Selected {
                rows,
                total: selected.total,
                more: selected.more,
            })
        })
    }

    /// Inserts `rows` (objects of column values); with `upsert`, on a conflict on those
    /// columns the row is updated instead. Returns the rows written (their `returning`
    /// columns; none when `returning` is `None`).
    pub async fn insert(
        &self,
        db: &Db,
        rows: Vec<Map<String, Value>>,
        upsert: Option<Vec<String>>,
        returning: Option<&[String]>,
    ) -> Result<Vec<Map<String, Value>>, RestError> {
        self.allowed(self.table.expose().insert, "insert")?;
        if upsert.is_some() {
            self.allowed(self.table.expose().update, "update")?;
        }
        self.table.insert(db, rows, upsert, returning).await
    }

    /// Applies `patch` to the rows `filter` matches; returns them (their `returning`
    /// columns).
    pub async fn update(
        &self,
        db: &Db,
        filter: &Cond,
        patch: Map<String, Value>,
        returning: Option<&[String]>,
    ) -> Result<Vec<Map<String, Value>>, RestError> {
        self.allowed(self.table.expose().update, "update")?;
        self.table.update(db, filter, patch, returning).await
    }

    /// Deletes the rows `filter` matches; returns them (their `returning` columns).
    pub async fn delete(
        &self,
        db: &Db,
        filter: &Cond,
        returning: Option<&[String]>,
    ) -> Result<Vec<Map<String, Value>>, RestError> {
        self.allowed(self.table.expose().delete, "delete")?;
        self.table.delete(db, filter, returning).await
    }

    /// The name of the table's primary key column (the default upsert target).
    pub fn key_column(&self) -> &'static str {
        self.table.meta().key_column().name
    }

    fn allowed(&self, yes: bool, what: &str) -> Result<(), RestError> {
        match yes {
            true => Ok(()),
            false => Err(RestError::new(
                405,
                "PGRST105",
                format!("{what} is not allowed on '{}'", self.table.meta().name),
            )),
        }
    }
}

struct Model<M> {
    expose: Expose,
    limits: SpecLimits,
    _model: std::marker::PhantomData<fn() -> M>,
}

/// Upsert targets by position.
struct Indices(Vec<usize>);

impl<M> ColumnSet<M> for Indices {
    fn indices(&self) -> Vec<usize> {
        self.0.clone()
    }
}

impl<M: Table> Model<M> {
    /// A readable column's position (hidden ones are unknown, as in PostgREST with
    /// column privileges).
    fn readable(&self, name: &str) -> Result<usize, RestError> {
        let meta = M::META;
        match meta.column(name.trim()) {
            Some((index, column)) if !self.expose.hidden.contains(&column.name) => Ok(index),
            _ => Err(unknown_column(meta, name)),
        }
    }

    /// The selected columns' positions (`None`/`*`: every readable one).
    fn columns(&self, select: Option<&[String]>) -> Result<Vec<usize>, RestError> {
        let meta = M::META;
        let all = || {
            (0..meta.columns.len())
                .filter(|i| !self.expose.hidden.contains(&meta.columns[*i].name))
                .collect::<Vec<_>>()
        };
        match select {
            None => Ok(all()),
            Some(names) if names.iter().all(|n| n.trim() == "*") => Ok(all()),
            Some(names) => {
                let mut out = Vec::new();
                for name in names {
                    if name.trim() == "*" {
                        out.extend(all());
                        continue;
                    }
                    let index = self.readable(name)?;
                    if !out.contains(&index) {
                        out.push(index);
                    }
                }
                Ok(out)
            }
        }
    }

    /// The filter tree, checked against the model: an explicit stack, however deep
    /// the input (the parser bounds it too).
    fn node(&self, cond: &Cond) -> Result<Node, RestError> {
        let mut leaves = 0usize;
        let node = self.node_at(cond, 0, &mut leaves)?;
        Ok(node)
    }

    fn node_at(&self, cond: &Cond, depth: usize, leaves: &mut usize) -> Result<Node, RestError> {
        if depth > crate::query::MAX_FILTER_DEPTH {
            return Err(RestError::parse("a filter nested too deep"));
        }
        Ok(match cond {
            Cond::Leaf { column, op, value } => {
                *leaves += 1;
                if *leaves > self.limits.max_filters {
                    return Err(RestError::parse(format!(
                        "more than {} conditions",
                        self.limits.max_filters
                    )));
                }
                self.readable(column)?;
                let spec = FilterSpec {
                    column: column.clone(),
                    op: op.clone(),
                    value: (!value.is_null()).then(|| value.clone()),
                };
                crate::query::spec::validate_filter(M::META, &spec, &self.limits)?
            }
            Cond::And(items) => Node::And(
                items
                    .iter()
                    .map(|c| self.node_at(c, depth + 1, leaves))
                    .collect::<Result<_, _>>()?,
            ),
            Cond::Or(items) => Node::Or(
                items
                    .iter()
                    .map(|c| self.node_at(c, depth + 1, leaves))
                    .collect::<Result<_, _>>()?,
            ),
            Cond::Not(inner) => Node::Not(Box::new(self.node_at(inner, depth + 1, leaves)?)),
        })
    }

    /// Checks a body's keys: columns of the model, writable (not generated, not
    /// read-only, not hidden).
    fn writable(&self, row: &Map<String, Value>) -> Result<(), RestError> {
        let meta = M::META;
        for name in row.keys() {
            match meta.column(name) {
                Some((_, column))
                    if !column.generated
                        && !self.expose.read_only.contains(&column.name)
                        && !self.expose.hidden.contains(&column.name) => {}
                Some(_) => {
                    return Err(RestError::new(
                        400,
                        "PGRST204",
                        format!(
                            "Column '{}' of '{}' cannot be written",
                            name.chars().take(64).collect::<String>(),
                            meta.name
                        ),
                    ));
                }
                None => {
                    return Err(RestError::new(
                        400,
                        "PGRST204",
                        format!(
                            "Could not find the '{}' column of '{}' in the schema cache",
                            name.chars().take(64).collect::<String>(),
                            meta.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rows with these keys, as JSON objects of `columns`.
    async fn rows_by_keys(
        db: &Db,
        keys: &[M::Key],
        columns: Vec<usize>,
    ) -> Result<Vec<Map<String, Value>>, RestError> {
        if keys.is_empty() || columns.is_empty() {
            return Ok(keys.iter().map(|_| Map::new()).collect());
        }
        let meta = M::META;
        let list = keys
            .iter()
            .map(|k| serde_json::to_value(k).map_err(|e| RestError::parse(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = FilterSpec {
            column: meta.key_column().name.to_owned(),
            op: "in".into(),
            value: Some(Value::Array(list)),
        };
        let limits = SpecLimits {
            max_list: keys.len(),
            ..SpecLimits::default()
        };
        let node = crate::query::spec::validate_filter(meta, &spec, &limits)?;
        let query = db.query::<M>().filter(Filter::new(node));
        Ok(json_query(query, columns).all().await?)
    }
}

/// A query's rows as JSON objects of these columns.
fn json_query<M: Table>(query: Query<M>, columns: Vec<usize>) -> Query<M, JsonRow> {
    crate::query::spec::as_json(query, Some(columns))
}

fn unknown_column(meta: &TableMeta, name: &str) -> RestError {
    RestError::new(
        400,
        "42703",
        format!(
            "column {}.{} does not exist",
            meta.name,
            name.chars().take(64).collect::<String>()
        ),
    )
}

fn parse_body<T: DeserializeOwned>(
    meta: &TableMeta,
    row: Map<String, Value>,
) -> Result<T, RestError> {
    serde_json::from_value(Value::Object(row)).map_err(|e| {
        RestError::new(
            400,
            "PGRST102",
            format!("a body for '{}' does not fit its columns: {e}", meta.name),
        )
    })
}

impl<M> Dynamic for Model<M>
where
    M: Table,
    M::New: DeserializeOwned,
    M::Patch: DeserializeOwned,
{
    fn meta(&self) -> &'static TableMeta {
        M::META
    }

    fn expose(&self) -> &Expose {
        &self.expose
    }

    fn select<'a>(&'a self, db: &'a Db, read: &'a Read) -> Pending<'a, Selected> {
        Box::pin(async move {
            let meta = M::META;
            let columns = self.columns(read.select.as_deref())?;
            let filtered = || -> Result<Query<M>, RestError> {
                let query = db.query::<M>();
                Ok(match &read.filter {
                    Some(cond) => query.filter(Filter::new(self.node(cond)?)),
                    None => query,
                })
            };
            let mut query = filtered()?;
            let total = match (read.count, self.expose.cache_ttl) {
                (Some(Count::Exact), Some(ttl)) => Some(filtered()?.cached(ttl).count().await?),
                (Some(Count::Exact), None) => Some(filtered()?.count().await?),
                (Some(Count::Estimated), _) => Some(filtered()?.count_estimate().await?),
                (None, _) => None,
            };
            for key in &read.order {
                self.readable(&key.column)?;
                query = query.order_by(crate::query::spec::order_by::<M>(
                    meta,
                    &key.column,
                    key.direction.as_deref(),
                    key.nulls.as_deref(),
                )?);
            }
            let max = self.limits.max_limit;
            // No limit: every row, up to the maximum — one more is asked, to know.
            let limit = read.limit.unwrap_or(max.saturating_add(1));
            if read.limit.is_some_and(|l| l > max) {
                return Err(RestError::parse(format!(
                    "limit {limit} is over the maximum of {max}"
                )));
            }
            query = query.limit(limit);
            if let Some(offset) = read.offset {
                query = query.offset(offset);
            }
            let query = json_query(query, columns);
            let mut rows = match self.expose.cache_ttl {
                Some(ttl) => query.cached(ttl).all().await?,
                None => query.all().await?,
            };
            let more = read.limit.is_none() && rows.len() as u64 > max;
            if more {
                rows.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            }
            Ok(Selected { rows, total, more })
        })
    }

    fn insert<'a>(
        &'a self,
        db: &'a Db,
        rows: Vec<Map<String, Value>>,
        upsert: Option<Vec<String>>,
        returning: Option<&'a [String]>,
    ) -> Pending<'a, Vec<Map<String, Value>>> {
        Box::pin(async move {
            let meta = M::META;
            let columns = match returning {
                Some(select) => Some(self.columns(Some(select))?),
                None => None,
            };
            for row in &rows {
                self.writable(row)?;
            }
            let written: Vec<M> = match upsert {
                None => {
                    let news = rows
                        .into_iter()
                        .map(|row| parse_body::<M::New>(meta, row))
                        .collect::<Result<Vec<_>, _>>()?;
                    db.create_many(news).await?
                }
                Some(target) => {
                    let indices = target
                        .iter()
                        .map(|name| self.readable(name))
                        .collect::<Result<Vec<_>, _>>()?;
                    for row in &rows {
                        parse_body::<M::New>(meta, row.clone())?;
                    }
                    // One statement per row, in one transaction: all or none (a
                    // retried transaction reads the bodies again).
                    db.transaction(|tx: Db| {
                        let (rows, indices) = (rows.clone(), indices.clone());
                        async move {
                            let mut out = Vec::with_capacity(rows.len());
                            for row in rows {
                                let new = parse_body::<M::New>(meta, row)
                                    .map_err(|e| Error::Validation(e.message))?;
                                out.push(tx.upsert(new, Indices(indices.clone())).await?);
                            }
                            Ok(out)
                        }
                    })
                    .await?
                }
            };
            let Some(columns) = columns else {
                return Ok(Vec::new());
            };
            let keys: Vec<M::Key> = written.iter().map(|row| row.key().clone()).collect();
            Self::rows_by_keys(db, &keys, columns).await
        })
    }

    fn update<'a>(
        &'a self,
        db: &'a Db,
        filter: &'a Cond,
        patch: Map<String, Value>,
        returning: Option<&'a [String]>,
    ) -> Pending<'a, Vec<Map<String, Value>>> {
        Box::pin(async move {
            let meta = M::META;
            let columns = match returning {
                Some(select) => Some(self.columns(Some(select))?),
                None => None,
            };
            self.writable(&patch)?;
            if let Some(key) = patch.keys().find(|k| *k == meta.key_column().name) {
                // The model's patch has no key: a changed key would be dropped silently.
                return Err(RestError::new(
                    400,
                    "PGRST204",
                    format!(
                        "Column '{key}' of '{}' (its primary key) cannot be updated",
                        meta.name
                    ),
                ));
            }
            if patch.is_empty() {
                // Nothing to change: PostgREST's no-op.
                return Ok(Vec::new());
            }
            let patch = parse_body::<M::Patch>(meta, patch)?;
            let node = self.node(filter)?;
            let keys = db.update_where_keys::<M>(Filter::new(node), patch).await?;
            match columns {
                Some(columns) => Self::rows_by_keys(db, &keys, columns).await,
                None => Ok(Vec::new()),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        db: &'a Db,
        filter: &'a Cond,
        returning: Option<&'a [String]>,
    ) -> Pending<'a, Vec<Map<String, Value>>> {
        Box::pin(async move {
            let columns = match returning {
                Some(select) => Some(self.columns(Some(select))?),
                None => None,
            };
            let node = self.node(filter)?;
            let Some(columns) = columns else {
                db.delete_where::<M>(Filter::new(node)).await?;
                return Ok(Vec::new());
            };
            // The rows the statement deleted, as it returned them (`DELETE … RETURNING`).
            Ok(db
                .delete_where_returning::<M>(Filter::new(node), columns)
                .await?)
        })
    }
}
