//! Queries from untrusted input: a [`QuerySpec`] read by serde from JSON, or from a
//! query string, in the shape of the seed's options object
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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::filter::{MAX_FILTER_DEPTH, Node, Op};
use super::page::{Cursor, KEY_PREFIX};
use super::{Decode, OrderBy, Query};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::sql::OwnedParam;
use crate::table::{ColumnMeta, Table, TableMeta};

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

impl QuerySpec {
    /// Reads a query string:
    /// `select=id,username&status=eq.active&age=gte.18&name=in.(ann,bob)&avatar_url=is_null&order=created_at.desc,id.asc&limit=10&offset=20&cursor=…`.
    /// Every key other than `select`, `order`, `limit`, `offset`, `cursor` is a column
    /// with `op.value`. Values are percent-decoded.
    ///
    /// ```
    /// let spec = tabula::query::QuerySpec::from_query_string("status=eq.active&limit=5")?;
    /// assert_eq!(spec.limit, Some(5));
    /// assert_eq!(spec.filters[0].op, "eq");
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn from_query_string(query: &str) -> Result<QuerySpec> {
        let mut spec = QuerySpec::default();
        for pair in query
            .trim_start_matches('?')
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (percent_decode(key)?, percent_decode(value)?);
            match key.as_str() {
                "select" => spec.select = Some(SelectSpec::List(value)),
                "limit" => spec.limit = Some(parse_count("limit", &value)?),
                "offset" => spec.offset = Some(parse_count("offset", &value)?),
                "cursor" => spec.cursor = Some(Cursor::new(value)),
                "order" => {
                    let keys = value
                        .split(',')
                        .map(|part| {
                            let mut bits = part.trim().split('.');
                            let column = bits.next().unwrap_or_default().to_owned();
                            let direction = bits.next().map(str::to_owned);
                            let nulls = bits
                                .next()
                                .map(|n| n.trim_start_matches("nulls").to_owned());
                            OrderKeySpec {
                                column,
                                direction,
                                nulls,
                            }
                        })
                        .collect();
                    spec.order = Some(OrderSpec::Keys(keys));
                }
                column => {
                    let (op, raw) = value.split_once('.').unwrap_or((value.as_str(), ""));
                    let value = match op {
                        "is_null" | "not_null" => None,
                        "in" | "not_in" => {
                            let inner = raw.strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(|| {
                                invalid(format!("filter on `{column}`: `{op}` takes a list like `{op}.(a,b)`"))
                            })?;
                            let items = if inner.is_empty() {
                                Vec::new()
                            } else {
                                inner
                                    .split(',')
                                    .map(|s| Value::String(s.to_owned()))
                                    .collect()
                            };
                            Some(Value::Array(items))
                        }
                        _ => Some(Value::String(raw.to_owned())),
                    };
                    spec.filters.push(FilterSpec {
                        column: column.to_owned(),
                        op: op.to_owned(),
                        value,
                    });
                }
            }
        }
        Ok(spec)
    }
}

fn parse_count(what: &str, value: &str) -> Result<u64> {
    value.parse().map_err(|_| {
        invalid(format!(
            "`{what}` must be a whole number, not `{}`",
            value.escape_debug()
        ))
    })
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or_else(|| {
                    invalid("malformed percent-escape in the query string".into())
                })?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| invalid("the query string is not UTF-8".into()))
}

fn column<'m>(meta: &'m TableMeta, name: &str, part: &str) -> Result<(usize, &'m ColumnMeta)> {
    meta.column(name.trim()).ok_or_else(|| {
        invalid(format!(
            "unknown column `{}` in {part} of a query on `{}`",
            name.escape_debug(),
            meta.name
        ))
    })
}

/// Parses a JSON value as the column's type; strings are accepted for every type, as
/// query strings only have strings.
fn parse_value(
    meta: &TableMeta,
    column: &ColumnMeta,
    value: &Value,
    limits: &SpecLimits,
) -> Result<OwnedParam> {
    let bad = || {
        invalid(format!(
            "value {} does not parse as column `{}` of `{}` ({})",
            truncate(value),
            column.name,
            meta.name,
            column.sql_type
        ))
    };
    // First, before anything walks the value by recursion (printing, cloning, binding).
    check_json_depth(column, value)?;
    if let Value::String(s) = value
        && s.len() > limits.max_value_bytes
    {
        return Err(invalid(format!(
            "value for column `{}` is longer than {} bytes",
            column.name, limits.max_value_bytes
        )));
    }
    if contains_nul(value) {
        return Err(invalid(format!(
            "value for column `{}` contains a NUL character, which PostgreSQL text cannot hold",
            column.name
        )));
    }
    let text = value.as_str();
    let int = || {
        value
            .as_i64()
            .or_else(|| text.and_then(|t| t.trim().parse().ok()))
    };
    let float = || {
        value
            .as_f64()
            .or_else(|| text.and_then(|t| t.trim().parse().ok()))
    };
    let param: OwnedParam = match column.sql_type {
        "bool" => Arc::new(
            value
                .as_bool()
                .or_else(|| text.and_then(|t| t.parse().ok()))
                .ok_or_else(bad)?,
        ),
        "int2" => Arc::new(int().and_then(|v| i16::try_from(v).ok()).ok_or_else(bad)?),
        "int4" => Arc::new(int().and_then(|v| i32::try_from(v).ok()).ok_or_else(bad)?),
        "int8" => Arc::new(int().ok_or_else(bad)?),
        "float4" => Arc::new(float().ok_or_else(bad)? as f32),
        "float8" => Arc::new(float().ok_or_else(bad)?),
        "text" => Arc::new(text.ok_or_else(bad)?.to_owned()),
        "uuid" => Arc::new(
            text.and_then(|t| uuid::Uuid::parse_str(t.trim()).ok())
                .ok_or_else(bad)?,
        ),
        "timestamptz" => Arc::new(
            text.and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok_or_else(bad)?,
        ),
        "date" => Arc::new(
            text.and_then(|t| chrono::NaiveDate::parse_from_str(t.trim(), "%Y-%m-%d").ok())
                .ok_or_else(bad)?,
        ),
        "jsonb" => match text {
            // From a query string: the text is the JSON document.
            Some(t) => {
                let parsed = serde_json::from_str::<Value>(t).map_err(|_| bad())?;
                check_json_depth(column, &parsed)?;
                Arc::new(parsed)
            }
            None => Arc::new(value.clone()),
        },
        _ => {
            return Err(invalid(format!(
                "column `{}` of `{}` ({}) cannot be filtered on",
                column.name, meta.name, column.sql_type
            )));
        }
    };
    Ok(param)
}

/// Refuses a JSON value nested deeper than [`MAX_FILTER_DEPTH`], measured with an
/// explicit stack: a value built in memory (not parsed from text, where serde_json
/// stops at 128) can be nested without bound.
fn check_json_depth(column: &ColumnMeta, value: &Value) -> Result<()> {
    let mut stack = vec![(value, 1)];
    while let Some((value, depth)) = stack.pop() {
        if depth > MAX_FILTER_DEPTH {
            return Err(invalid(format!(
                "value for column `{}` nests deeper than {MAX_FILTER_DEPTH} levels",
                column.name
            )));
        }
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

fn contains_nul(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

fn truncate(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn filter_node(meta: &TableMeta, spec: &FilterSpec, limits: &SpecLimits) -> Result<Node> {
    let (index, col) = column(meta, &spec.column, "a filter")?;
    let value = || {
        spec.value.as_ref().filter(|v| !v.is_null()).ok_or_else(|| {
            invalid(format!(
                "filter `{}` on column `{}` needs a value (use `is_null` to match NULL)",
                spec.op, col.name
            ))
        })
    };
    let compare = |op: Op| -> Result<Node> {
        Ok(Node::Compare(
            index,
            op,
            parse_value(meta, col, value()?, limits)?,
        ))
    };
    match spec.op.as_str() {
        "eq" => compare(Op::Eq),
        "ne" | "neq" => compare(Op::Ne),
        "lt" => compare(Op::Lt),
        "lte" | "le" => compare(Op::Le),
        "gt" => compare(Op::Gt),
        "gte" | "ge" => compare(Op::Ge),
        "like" | "ilike" => {
            if col.sql_type != "text" {
                return Err(invalid(format!(
                    "`{}` needs a text column; `{}` is {}",
                    spec.op, col.name, col.sql_type
                )));
            }
            compare(if spec.op == "like" {
                Op::Like
            } else {
                Op::ILike
            })
        }
        "contains" => {
            if col.sql_type != "jsonb" {
                return Err(invalid(format!(
                    "`contains` needs a JSON column; `{}` is {}",
                    col.name, col.sql_type
                )));
            }
            compare(Op::Contains)
        }
        "in" | "not_in" => {
            let Some(Value::Array(items)) = &spec.value else {
                return Err(invalid(format!(
                    "`{}` on column `{}` needs a list of values",
                    spec.op, col.name
                )));
            };
            if items.len() > limits.max_list {
                return Err(invalid(format!(
                    "`{}` list on `{}` has more than {} values",
                    spec.op, col.name, limits.max_list
                )));
            }
            let values = items
                .iter()
                .map(|v| parse_value(meta, col, v, limits))
                .collect::<Result<Vec<_>>>()?;
            // One array parameter, whatever the length (see `Column::is_in`).
            Ok(Node::In(
                index,
                crate::sql::ParamList::from_params(values),
                spec.op == "in",
            ))
        }
        "is_null" => Ok(Node::IsNull(index, true)),
        "not_null" => Ok(Node::IsNull(index, false)),
        other => Err(invalid(crate::error::unknown_word(
            "filter operator",
            other,
            OPS,
        ))),
    }
}

fn order_key<M>(
    meta: &TableMeta,
    column_name: &str,
    direction: Option<&str>,
    nulls: Option<&str>,
) -> Result<OrderBy<M>> {
    let (index, _) = column(meta, column_name, "the order")?;
    let descending = match direction.map(str::trim).unwrap_or("asc") {
        "asc" | "" => false,
        "desc" => true,
        other => {
            return Err(invalid(crate::error::unknown_word(
                "order direction",
                other,
                &["asc", "desc"],
            )));
        }
    };
    let key = OrderBy::new(index, descending);
    Ok(match nulls.map(str::trim) {
        None | Some("") => key,
        Some("first") => key.nulls_first(),
        Some("last") => key.nulls_last(),
        Some(other) => {
            return Err(invalid(crate::error::unknown_word(
                "nulls placement",
                other,
                &["first", "last"],
            )));
        }
    })
}

impl<M: Table, D: Decode<M>> Query<M, D> {
    /// Adds the filters, order, limit and offset of `spec` (its `select` and `cursor`
    /// are for [`Db::query_spec`]), after checking them against the model.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table, query::{QuerySpec, SpecLimits}};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # async fn run(db: Db, spec: QuerySpec) -> tabula::Result<()> {
    /// let notes: Vec<Note> = db.query::<Note>().apply(&spec, &SpecLimits::default())?.all().await?;
    /// # Ok(()) }
    /// ```
    pub fn apply(mut self, spec: &QuerySpec, limits: &SpecLimits) -> Result<Self> {
        let meta = M::META;
        if spec.eq.len() + spec.filters.len() > limits.max_filters {
            return Err(invalid(format!("more than {} filters", limits.max_filters)));
        }
        for (name, value) in &spec.eq {
            let as_filter = FilterSpec {
                column: name.clone(),
                op: "eq".into(),
                value: Some(value.clone()),
            };
            self.filters.push(filter_node(meta, &as_filter, limits)?);
        }
        for filter in &spec.filters {
            self.filters.push(filter_node(meta, filter, limits)?);
        }
        let keys: Vec<OrderBy<M>> = match &spec.order {
            Some(OrderSpec::Map(map)) => map
                .iter()
                .map(|(name, direction)| order_key(meta, name, Some(direction), None))
                .collect::<Result<_>>()?,
            Some(OrderSpec::Keys(keys)) => keys
                .iter()
                .map(|key| {
                    order_key(
                        meta,
                        &key.column,
                        key.direction.as_deref(),
                        key.nulls.as_deref(),
                    )
                })
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        // A second key on the same column never changes the order; refusing it bounds
        // the keys (and the keyset condition, quadratic in them) by the model's columns.
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.column == key.column) {
                return Err(invalid(format!(
                    "column `{}` appears twice in the order",
                    meta.columns[key.column].name
                )));
            }
        }
        self.order.extend(keys);
        let limit = spec.limit.unwrap_or(limits.default_limit);
        if limit > limits.max_limit {
            return Err(invalid(format!(
                "limit {limit} is over the maximum of {}",
                limits.max_limit
            )));
        }
        self.limit = Some(limit);
        self.offset = spec.offset;
        Ok(self)
    }
}

/// Decodes any row into a JSON object by the column types PostgreSQL reports.
#[doc(hidden)]
pub struct JsonRow;

impl<M: Table> Decode<M> for JsonRow {
    type Output = Map<String, Value>;

    fn decode(row: &Row) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for (i, column) in row.columns().iter().enumerate() {
            if column.name().starts_with(KEY_PREFIX) {
                continue;
            }
            let value = json_value(row, i, column.type_()).map_err(|e| Error::Decode {
                table: M::META.name,
                column: M::META.column(column.name()).map_or("?", |(_, c)| c.name),
                source: Box::new(e),
            })?;
            out.insert(column.name().to_owned(), value);
        }
        Ok(out)
    }

    fn encode_rows(rows: &[Map<String, Value>]) -> Option<Vec<u8>> {
        // JSON objects are this decoder's own output: no user serde is involved.
        serde_json::to_vec(rows).ok()
    }

    fn decode_rows(bytes: &[u8]) -> Option<Vec<Map<String, Value>>> {
        serde_json::from_slice(bytes).ok()
    }
}

fn json_value(row: &Row, i: usize, ty: &Type) -> std::result::Result<Value, tokio_postgres::Error> {
    fn num<T: Into<serde_json::Number>>(v: Option<T>) -> Value {
        v.map_or(Value::Null, |n| Value::Number(n.into()))
    }
    fn float(v: Option<f64>) -> Value {
        match v {
            Some(f) => serde_json::Number::from_f64(f)
                .map_or_else(|| Value::String(f.to_string()), Value::Number),
            None => Value::Null,
        }
    }
    Ok(match *ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map_or(Value::Null, Value::Bool),
        Type::INT2 => num(row.try_get::<_, Option<i16>>(i)?),
        Type::INT4 => num(row.try_get::<_, Option<i32>>(i)?),
        Type::INT8 => num(row.try_get::<_, Option<i64>>(i)?),
        Type::FLOAT4 => float(row.try_get::<_, Option<f32>>(i)?.map(f64::from)),
        Type::FLOAT8 => float(row.try_get::<_, Option<f64>>(i)?),
        Type::UUID => row
            .try_get::<_, Option<uuid::Uuid>>(i)?
            .map_or(Value::Null, |u| Value::String(u.to_string())),
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)?
            .map_or(Value::Null, |t| Value::String(t.to_rfc3339())),
        Type::DATE => row
            .try_get::<_, Option<chrono::NaiveDate>>(i)?
            .map_or(Value::Null, |d| Value::String(d.to_string())),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)?
            .map_or(Value::Null, |b| {
                Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
            }),
        Type::JSON | Type::JSONB => row.try_get::<_, Option<Value>>(i)?.unwrap_or(Value::Null),
        _ => row
            .try_get::<_, Option<String>>(i)?
            .map_or(Value::Null, Value::String),
    })
}

impl Db {
    /// Runs a [`QuerySpec`] from untrusted input on model `M` and returns the selected
    /// columns of each row as a JSON object, with the cursor of the next page (unless
    /// the spec pages by `offset`).
    ///
    /// ```no_run
    /// # use tabula::{Db, Table, query::{QuerySpec, SpecLimits}};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let spec = QuerySpec::from_query_string("select=id&body=like.%25rust%25&limit=20")?;
    /// let page = db.query_spec::<Note>(&spec, &SpecLimits::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn query_spec<M: Table>(
        &self,
        spec: &QuerySpec,
        limits: &SpecLimits,
    ) -> Result<SpecPage> {
        let meta = M::META;
        let columns = match &spec.select {
            None => None,
            Some(select) => {
                let names: Vec<String> = match select {
                    SelectSpec::List(list) => list.split(',').map(str::to_owned).collect(),
                    SelectSpec::Columns(list) => list.clone(),
                };
                let names: Vec<&str> = names
                    .iter()
                    .map(|n| n.trim())
                    .filter(|n| !n.is_empty() && *n != "*")
                    .collect();
                if names.len() > meta.columns.len() * 2 {
                    return Err(invalid("too many selected columns".into()));
                }
                let indices = names
                    .iter()
                    .map(|n| column(meta, n, "the select list").map(|(i, _)| i))
                    .collect::<Result<Vec<_>>>()?;
                (!indices.is_empty()).then_some(indices)
            }
        };
        let query = self.query::<M>().apply(spec, limits)?;
        let query: Query<M, JsonRow> = Query {
            db: query.db,
            columns,
            filters: query.filters,
            order: query.order,
            limit: query.limit,
            offset: query.offset,
            with_deleted: query.with_deleted,
            _decode: std::marker::PhantomData,
        };
        if spec.offset.is_some() {
            if spec.cursor.is_some() {
                return Err(invalid("use either `offset` or `cursor`, not both".into()));
            }
            return Ok(SpecPage {
                rows: query.all().await?,
                next: None,
            });
        }
        let size = query.limit.unwrap_or(limits.default_limit);
        let page = query.page(size, spec.cursor.as_ref()).await?;
        Ok(SpecPage {
            rows: page.items,
            next: page.next,
        })
    }
}
