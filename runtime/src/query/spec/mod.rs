//! Queries from untrusted input: a [`QuerySpec`] read by serde from JSON, or from a
//! query string, shaped as an options object
//! (`{ select, eq, order, limit }`), checked against the model's metadata before any
//! SQL exists.
//!
//! Nothing from the input reaches SQL except a column name that the model declares
//! (looked up, never spliced) or a value bound as a parameter after it parsed as the
//! column's type. An unknown column or operator, a value that does not parse, a limit
//! over [`SpecLimits::max_limit`], too many filters or too long a list is an
//! [`Error::Validation`] naming the offending part.
//!
//! ```no_run
//! # use tabula::{Db, Table, query::{QuerySpec, SpecLimits}};
//! # #[derive(Table)] pub struct Profile { #[table(primary_key)] pub id: i64, pub username: String,
//! #     pub status: String, pub created_at: chrono::DateTime<chrono::Utc> }
//! # async fn run(db: Db) -> tabula::Result<()> {
//! let spec: QuerySpec = serde_json::from_str(r#"{
//!     "select": "id, username",
//!     "eq": { "status": "active" },
//!     "order": { "created_at": "desc" },
//!     "limit": 10
//! }"#).map_err(|e| tabula::Error::Validation(e.to_string()))?;
//! let page = db.query_spec::<Profile>(&spec, &SpecLimits::default()).await?;
//! let same = QuerySpec::from_query_string("select=id,username&status=eq.active&order=created_at.desc&limit=10")?;
//! # Ok(()) }
//! ```
//!
//! The rooms: `mod.rs` (the wire types and limits), `parse.rs` (the query-string form),
//! `validate.rs` (checking a spec against the model, building filters), `json.rs`
//! (rows out as JSON objects, and [`Db::query_spec`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

mod json;
mod parse;
mod validate;

pub use json::JsonRow;
pub(crate) use json::json_native;

/// A filter of a spec checked against a model (see `validate.rs`), for the REST API.
#[cfg_attr(not(feature = "rest"), allow(dead_code))]
pub(crate) fn validate_filter(
    meta: &TableMeta,
    spec: &FilterSpec,
    limits: &SpecLimits,
) -> Result<Node> {
    validate::filter_node(meta, spec, limits)
}

/// An order key of a spec checked against a model.
#[cfg_attr(not(feature = "rest"), allow(dead_code))]
pub(crate) fn order_by<M>(
    meta: &TableMeta,
    column: &str,
    direction: Option<&str>,
    nulls: Option<&str>,
) -> Result<OrderBy<M>> {
    validate::order_key(meta, column, direction, nulls)
}

/// A query's rows as JSON objects of these columns (all when `None`).
pub(crate) fn as_json<M: Table>(query: Query<M>, columns: Option<Vec<usize>>) -> Query<M, JsonRow> {
    Query {
        db: query.db,
        columns,
        filters: query.filters,
        order: query.order,
        limit: query.limit,
        offset: query.offset,
        with_deleted: query.with_deleted,
        lock: query.lock,
        _decode: std::marker::PhantomData,
    }
}

use super::filter::{MAX_FILTER_DEPTH, Node, Op};
use super::page::{Cursor, KEY_PREFIX};
use super::{Decode, OrderBy, Query};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::sql::OwnedParam;
use crate::table::{ColumnMeta, Table, TableMeta};
use crate::types::Json;

/// A query described by data; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// Columns to return: `"id, username"` or `["id", "username"]`; all when absent.
    #[serde(default)]
    pub select: Option<SelectSpec>,
    /// Equality filters: `{ "status": "active" }`.
    #[serde(default)]
    pub eq: BTreeMap<String, Value>,
    /// Other filters: `[{ "column": "age", "op": "gte", "value": 18 }]`, all ANDed.
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Order: `{ "created_at": "desc" }`, or for several keys a list
    /// `[{ "column": "a", "direction": "asc", "nulls": "last" }, …]`.
    #[serde(default)]
    pub order: Option<OrderSpec>,
    /// At most this many rows (default [`SpecLimits::default_limit`]).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Rows to skip (offset pagination).
    #[serde(default)]
    pub offset: Option<u64>,
    /// Resume after this cursor (keyset pagination).
    #[serde(default)]
    pub cursor: Option<Cursor>,
}

/// The `select` of a [`QuerySpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SelectSpec {
    /// `"id, username"`
    List(String),
    /// `["id", "username"]`
    Columns(Vec<String>),
}

/// One filter of a [`QuerySpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// The column's name.
    pub column: String,
    /// `eq`, `ne`, `lt`, `lte`, `gt`, `gte`, `like`, `ilike`, `in`, `not_in`,
    /// `is_null`, `not_null`, `contains`.
    pub op: String,
    /// The value (a list for `in` / `not_in`; nothing for `is_null` / `not_null`).
    #[serde(default)]
    pub value: Option<Value>,
}

/// The `order` of a [`QuerySpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OrderSpec {
    /// `{ "column": "asc" | "desc" }` (one key; a map has no order between keys).
    Map(BTreeMap<String, String>),
    /// Several keys, in order.
    Keys(Vec<OrderKeySpec>),
}

/// One key of an [`OrderSpec::Keys`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderKeySpec {
    /// The column's name.
    pub column: String,
    /// `asc` (default) or `desc`.
    #[serde(default)]
    pub direction: Option<String>,
    /// `first` or `last` (default: PostgreSQL's, last for asc and first for desc).
    #[serde(default)]
    pub nulls: Option<String>,
}

/// Bounds on what a [`QuerySpec`] may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpecLimits {
    /// Largest `limit` accepted. Default 1000.
    pub max_limit: u64,
    /// `limit` when none is given. Default 100.
    pub default_limit: u64,
    /// Most filters (eq entries included). Default 32.
    pub max_filters: usize,
    /// Most values in an `in` / `not_in` list. Default 1000.
    pub max_list: usize,
    /// Longest string value, in bytes. Default 10,000.
    pub max_value_bytes: usize,
}

impl Default for SpecLimits {
    fn default() -> Self {
        SpecLimits {
            max_limit: 1000,
            default_limit: 100,
            max_filters: 32,
            max_list: 1000,
            max_value_bytes: 10_000,
        }
    }
}

impl SpecLimits {
    /// Sets [`SpecLimits::max_limit`].
    ///
    /// ```
    /// let limits = tabula::query::SpecLimits::default().max_limit(50);
    /// assert_eq!(limits.max_limit, 50);
    /// ```
    pub fn max_limit(mut self, n: u64) -> Self {
        self.max_limit = n;
        self.default_limit = self.default_limit.min(n);
        self
    }
}

/// What [`Db::query_spec`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecPage {
    /// The rows, as JSON objects of the selected columns.
    pub rows: Vec<Map<String, Value>>,
    /// The cursor of the next page, when more rows follow (keyset pagination; absent
    /// when the spec used `offset`).
    pub next: Option<Cursor>,
}

fn invalid(message: String) -> Error {
    Error::Validation(message)
}

const OPS: &[&str] = &[
    "eq", "ne", "lt", "lte", "gt", "gte", "like", "ilike", "in", "not_in", "is_null", "not_null",
    "contains",
];
