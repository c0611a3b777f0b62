//! SQL rendering with sea-query.
//!
//! Identifiers come only from model metadata and are passed to sea-query as [`Alias`],
//! which it always quotes (doubling any `"` inside), so a name from `rename` cannot
//! break out of its quotes. Values are never rendered into the text: each one is bound
//! through a [`Binder`], which hands sea-query a numbered marker and afterwards lines
//! the real parameters up with the order sea-query placed the markers in.
//!
//! The statements a model runs on every call (read by key, insert, batch insert,
//! delete) are rendered once per model into [`Statements`] and reused, so the hot path
//! does no SQL rendering at all. Query-builder statements are rendered once per
//! *shape* — everything their text depends on, never a value — and kept as a
//! [`Template`] in each handle's [`Rendered`]; later queries of that shape only line
//! their values up.

use bytes::{BufMut, BytesMut};
use sea_query::{
    Alias, Expr, ExprTrait, OnConflict, PostgresQueryBuilder, Query, ReturningClause, TableRef,
    Value,
};
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::error::{Error, Result};
use crate::table::{Param, Statements, TableMeta};

/// The most parameters one statement may bind: the protocol counts them in 16 bits.
pub(crate) const MAX_PARAMS: usize = u16::MAX as usize;

impl Statements {
    /// Renders the fixed statements of a model.
    pub fn render(meta: &'static TableMeta) -> Statements {
        let key = Alias::new(meta.key_column().name);

        let mut read = Query::select()
            .columns(column_idens(meta))
            .from(table_ref(meta))
            .and_where(Expr::col(key.clone()).eq(marker(0)))
            .to_owned();
        if let Some(live) = live_rows(meta) {
            read.and_where(live);
        }

        let insert_cols: Vec<Alias> = meta.insert_columns().map(|c| Alias::new(c.name)).collect();
        let mut insert_count = Query::insert();
        insert_count
            .into_table(table_ref(meta))
            .columns(insert_cols.clone());
        if insert_cols.is_empty() {
            insert_count.or_default_values();
        } else {
            let markers = (0..insert_cols.len()).map(|i| Expr::val(marker_value(i)));
            insert_count.values_panic(markers);
        }
        let insert = insert_count
            .clone()
            .returning(returning_all(meta))
            .to_owned();

        // One array parameter per column: any number of rows in one statement, with no
        // bind-parameter limit. Set-returning functions in one SELECT list advance in
        // lockstep, so `SELECT unnest($1), unnest($2)` yields the rows back in order.
        // The casts name each array's element type, which `unnest` alone cannot infer.
        let unnests = meta
            .insert_columns()
            .enumerate()
            .map(|(i, c)| Expr::cust(format!("unnest(${}::{}[])", i + 1, c.sql_type)));
        let insert_many_count = Query::insert()
            .into_table(table_ref(meta))
            .columns(insert_cols)
            .select_from(Query::select().exprs(unnests).to_owned())
            .map(|q| q.to_owned());
        let insert_many = insert_many_count
            .as_ref()
            .map(|q| q.clone().returning(returning_all(meta)).to_owned());

        // Deletes return the key as stored: the cache must drop the entry of the row's
        // own spelling of it (a `citext` or `char(n)` key matches other spellings).
        let hard_delete = Query::delete()
            .from_table(table_ref(meta))
            .and_where(Expr::col(key.clone()).eq(marker(0)))
            .returning_col(key.clone())
            .to_owned()
            .build_postgres()
            .0;
        // With a soft-delete column, `delete` marks the row and `restore` unmarks it.
        let (delete, restore) = match meta.soft_delete_column() {
            Some(soft) => {
                let soft = Alias::new(soft.name);
                let delete = Query::update()
                    .table(table_ref(meta))
                    .value(soft.clone(), Expr::cust("now()"))
                    .and_where(Expr::col(key.clone()).eq(marker(0)))
                    .and_where(Expr::col(soft.clone()).is_null())
                    .returning_col(key.clone())
                    .to_owned();
                let restore = Query::update()
                    .table(table_ref(meta))
                    .value(soft.clone(), Expr::cust("NULL"))
                    .and_where(Expr::col(key).eq(marker(0)))
                    .and_where(Expr::col(soft).is_not_null())
                    .returning(returning_all(meta))
                    .to_owned();
                (delete.build_postgres().0, restore.build_postgres().0)
            }
            None => (hard_delete.clone(), String::new()),
        };

        let table = match meta.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(meta.name)),
            None => quote_ident(meta.name),
        };
        let insertable: Vec<String> = meta.insert_columns().map(|c| quote_ident(c.name)).collect();
        let (copy_in, insert_types) = if insertable.is_empty() {
            (String::new(), String::new())
        } else {
            let list = insertable.join(", ");
            (
                format!("COPY {table} ({list}) FROM STDIN (FORMAT binary)"),
                format!("SELECT {list} FROM {table} LIMIT 0"),
            )
        };

        // `unnest` takes every dimension apart, so an array column cannot travel as an
        // array of arrays; an enum's array would have to name the enum's type, which a
        // text column holding the enum does not have. Such a model inserts its batches
        // row by row (each value then takes the column's own type), as does one with
        // no column to insert (all generated).
        let row_by_row = meta.insert_columns().next().is_none()
            || meta
                .insert_columns()
                .any(|c| c.sql_type.ends_with("[]") || c.sql_type.starts_with('"'));
        Statements {
            copy_in,
            insert_types,
            // Markers were placed in parameter order, so `$n` already lines up.
            read: read.build_postgres().0,
            insert: insert.build_postgres().0,
            insert_count: insert_count.build_postgres().0,
            insert_many: match row_by_row {
                true => String::new(),
                false => insert_many.map_or_else(|_| String::new(), |q| q.build_postgres().0),
            },
            insert_many_count: match row_by_row {
                true => String::new(),
                false => insert_many_count.map_or_else(|_| String::new(), |q| q.build_postgres().0),
            },
            delete,
            hard_delete,
            restore,
        }
    }
}

/// `<soft-delete column> IS NULL` for models with soft delete: the live rows.
pub(crate) fn live_rows(meta: &TableMeta) -> Option<Expr> {
    meta.soft_delete_column()
        .map(|c| Expr::col(Alias::new(c.name)).is_null())
}

/// `"schema"."table"` or `"table"`.
pub(crate) fn table_ref(meta: &TableMeta) -> TableRef {
    match meta.schema {
        Some(schema) => (Alias::new(schema), Alias::new(meta.name)).into(),
        None => Alias::new(meta.name).into(),
    }
}

pub(crate) use crate::table::quote_ident;

pub(crate) fn column_idens(meta: &TableMeta) -> Vec<Alias> {
    meta.columns.iter().map(|c| Alias::new(c.name)).collect()
}

pub(crate) fn returning_all(meta: &TableMeta) -> ReturningClause {
    Query::returning().columns(column_idens(meta))
}

/// The marker sea-query renders for parameter `i`.
fn marker_value(i: usize) -> Value {
    Value::Unsigned(Some(u32::try_from(i).unwrap_or(u32::MAX)))
}

fn marker(i: usize) -> Expr {
    Expr::val(marker_value(i))
}

/// A value owned by a statement under construction; shared, so a filter can be
/// rendered more than once (a page query and its count) without copying values.
pub(crate) type OwnedParam = std::sync::Arc<dyn SqlValue>;

pub(crate) use crate::types::SqlValue;

/// A list of values bound as ONE array parameter (`col = ANY($1)`), whatever its length:
/// the SQL text does not depend on the length, and no list can exceed the 65,535
/// parameters of a statement. The values are type-erased, so the array is written in
/// PostgreSQL's binary array format here, each element by its own `ToSql` against the
/// array's element type (a value of the wrong type is refused by that check).
#[derive(Debug)]
pub(crate) struct ParamList(Vec<OwnedParam>);

impl ParamList {
    pub(crate) fn collect<V: crate::IntoValue<T>, T>(
        values: impl IntoIterator<Item = V>,
    ) -> OwnedParam {
        std::sync::Arc::new(ParamList(
            values
                .into_iter()
                .map(crate::IntoValue::into_param)
                .collect(),
        ))
    }

    pub(crate) fn from_params(values: Vec<OwnedParam>) -> OwnedParam {
        std::sync::Arc::new(ParamList(values))
    }
}

impl SqlValue for ParamList {
    fn identity(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
        for value in &self.0 {
            let at = out.len();
            out.extend_from_slice(&[0; 8]);
            value.identity(out);
            let len = (out.len() - at - 8) as u64;
            out[at..at + 8].copy_from_slice(&len.to_le_bytes());
        }
    }
}

impl ToSql for ParamList {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let Kind::Array(member) = ty.kind() else {
            return Err(format!("a list of values binds as an array, not as {ty}").into());
        };
        // Header: one dimension, the has-NULL flag (patched below), the element type,
        // then the dimension's length and lower bound.
        out.put_i32(1);
        let has_null_at = out.len();
        out.put_i32(0);
        out.put_u32(member.oid());
        out.put_i32(i32::try_from(self.0.len())?);
        out.put_i32(1);
        for value in &self.0 {
            let len_at = out.len();
            out.put_i32(0);
            let len = match value.to_sql_checked(member, out)? {
                IsNull::Yes => {
                    out[has_null_at..has_null_at + 4].copy_from_slice(&1i32.to_be_bytes());
                    -1
                }
                IsNull::No => i32::try_from(out.len() - len_at - 4)?,
            };
            out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

enum Slot<'a> {
    Borrowed(Param<'a>),
    Owned(OwnedParam),
}

/// Collects the parameters of a statement built with sea-query.
#[derive(Default)]
pub(crate) struct Binder<'a> {
    slots: Vec<Slot<'a>>,
}

/// A rendered statement with its parameters in placeholder order.
pub(crate) struct Bound<'a> {
    pub(crate) sql: String,
    slots: Vec<Slot<'a>>,
    order: Vec<Order>,
}

enum Order {
    Mine(usize),
    Theirs(usize),
}

impl<'a> Binder<'a> {
    /// Binds a borrowed value; returns the expression that stands for it.
    pub(crate) fn borrowed(&mut self, value: Param<'a>) -> Expr {
        self.slots.push(Slot::Borrowed(value));
        marker(self.slots.len() - 1)
    }

    /// Binds an owned value; returns the expression that stands for it.
    pub(crate) fn owned(&mut self, value: OwnedParam) -> Expr {
        self.slots.push(Slot::Owned(value));
        marker(self.slots.len() - 1)
    }

    /// Renders `statement` and lines the bound values up with its placeholders. Values
    /// sea-query added by itself (LIMIT, OFFSET) are bound as `int8`.
    pub(crate) fn finish(self, statement: impl BuildPostgres) -> Bound<'a> {
        let (sql, values) = statement.build_postgres();
        let mut order = Vec::with_capacity(values.0.len());
        let mut theirs: Vec<OwnedParam> = Vec::new();
        for value in values.0 {
            match value {
                Value::Unsigned(Some(i)) if (i as usize) < self.slots.len() => {
                    order.push(Order::Mine(i as usize));
                }
                other => {
                    order.push(Order::Theirs(theirs.len()));
                    theirs.push(sea_value_param(other));
                }
            }
        }
        let mut slots = self.slots;
        let base = slots.len();
        for o in &mut order {
            if let Order::Theirs(j) = o {
                *o = Order::Theirs(base + *j);
            }
        }
        slots.extend(theirs.into_iter().map(Slot::Owned));
        Bound { sql, slots, order }
    }
}

impl Bound<'_> {
    /// Refuses a statement with more parameters than the protocol can carry, as
    /// [`Error::Validation`] before it is sent (the driver would fail it as a broken
    /// connection).
    pub(crate) fn within_limits(self, table: &str) -> Result<Self> {
        if self.order.len() > MAX_PARAMS {
            return Err(Error::Validation(format!(
                "a statement on `{table}` would bind {} values, over PostgreSQL's limit of {MAX_PARAMS}; \
                 pass long lists of values with `is_in` / `not_in`, which bind one array",
                self.order.len()
            )));
        }
        Ok(self)
    }

    /// SHA-256 of the SQL and the values' identities (see `SqlValue`; never a
    /// value's `Debug`, which a custom column type may write as it likes): the identity
    /// of a query in the query cache. A value borrowed from the caller (only writes
    /// bind those, and no write is cached) counts by its `Debug`.
    pub(crate) fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(self.sql.as_bytes());
        let mut identity = Vec::new();
        for o in &self.order {
            let (Order::Mine(i) | Order::Theirs(i)) = o;
            identity.clear();
            match &self.slots[*i] {
                Slot::Owned(value) => {
                    identity.push(1);
                    value.identity(&mut identity);
                }
                Slot::Borrowed(value) => {
                    identity.push(2);
                    identity.extend_from_slice(format!("{value:?}").as_bytes());
                }
            }
            hash.update((identity.len() as u64).to_le_bytes());
            hash.update(&identity);
        }
        hash.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The parameters, in placeholder order.
    pub(crate) fn params(&self) -> Vec<Param<'_>> {
        self.order
            .iter()
            .map(|o| {
                let i = match o {
                    Order::Mine(i) | Order::Theirs(i) => *i,
                };
                match &self.slots[i] {
                    Slot::Borrowed(p) => *p,
                    Slot::Owned(b) => &**b as &(dyn ToSql + Sync) as Param<'_>,
                }
            })
            .collect()
    }
}

/// A value sea-query renders into a statement on its own (as a placeholder), which a
/// [`Template`] must supply again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inline {
    Limit,
    Offset,
}

/// A rendered statement without its values: the SQL, where each placeholder's value
/// comes from, and which inline values (LIMIT, OFFSET) follow the caller's.
#[derive(Debug)]
pub(crate) struct Template {
    sql: String,
    /// Per placeholder: the caller's value `i`, or inline value `j`.
    order: Vec<(bool, usize)>,
    inline: Vec<Inline>,
}

impl Template {
    /// The statement again, with `values` (in the order the caller bound them when it
    /// was rendered) and the inline values of this call.
    pub(crate) fn bind(
        &self,
        values: Vec<OwnedParam>,
        limit: Option<u64>,
        offset: Option<u64>,
    ) -> Bound<'static> {
        let mine = values.len();
        let mut slots: Vec<Slot<'static>> = values.into_iter().map(Slot::Owned).collect();
        for inline in &self.inline {
            let n = match inline {
                Inline::Limit => limit,
                Inline::Offset => offset,
            };
            let n = i64::try_from(n.unwrap_or(0)).unwrap_or(i64::MAX);
            slots.push(Slot::Owned(std::sync::Arc::new(n)));
        }
        let order = self
            .order
            .iter()
            .map(|&(caller, i)| match caller {
                true => Order::Mine(i),
                false => Order::Theirs(mine + i),
            })
            .collect();
        Bound {
            sql: self.sql.clone(),
            slots,
            order,
        }
    }
}

/// A hasher for the process's own keys — statement texts, query shapes, model type
/// ids — in bounded maps: one multiply per 8 bytes. SipHash (the standard map's)
/// resists flooding, which these maps do not need (their keys are the code's own, and
/// each map has a bound), and cost a read more than the rest of its lookup.
pub(crate) type FastHash = std::hash::BuildHasherDefault<FastHasher>;

#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Query-builder statements rendered so far, by model and shape (see [`Template`]).
/// Bounded: when full it starts over, so an application that builds unboundedly many
/// shapes costs a render per query, as without it, and no memory.
#[derive(Debug, Default)]
pub(crate) struct Rendered {
    map: std::sync::Mutex<std::collections::HashMap<std::any::TypeId, Shapes, FastHash>>,
}

type Shapes = std::collections::HashMap<Vec<u64>, std::sync::Arc<Template>, FastHash>;

impl Rendered {
    const CAPACITY: usize = 1024;

    pub(crate) fn get(
        &self,
        model: std::any::TypeId,
        shape: &[u64],
    ) -> Option<std::sync::Arc<Template>> {
        let map = self.map.lock().ok()?;
        map.get(&model)?.get(shape).cloned()
    }

    pub(crate) fn put(&self, model: std::any::TypeId, shape: Vec<u64>, template: Template) {
        if let Ok(mut map) = self.map.lock() {
            let shapes = map.entry(model).or_default();
            if shapes.len() >= Self::CAPACITY {
                shapes.clear();
            }
            shapes.insert(shape, std::sync::Arc::new(template));
        }
    }
}

impl Bound<'static> {
    /// This statement as a template, when its inline values are exactly `limit` then
    /// `offset` (the ones given) — the only values sea-query renders on its own. `None`
    /// otherwise: such a statement is rendered every time.
    pub(crate) fn template(&self, limit: Option<u64>, offset: Option<u64>) -> Option<Template> {
        let expected: Vec<(Inline, u64)> = [(Inline::Limit, limit), (Inline::Offset, offset)]
            .into_iter()
            .filter_map(|(inline, n)| Some((inline, n?)))
            .collect();
        let mine = self
            .order
            .iter()
            .filter_map(|o| match o {
                Order::Mine(i) => Some(*i),
                Order::Theirs(_) => None,
            })
            .max()
            .map_or(0, |m| m + 1);
        let mut order = Vec::with_capacity(self.order.len());
        let mut inline = Vec::new();
        for o in &self.order {
            match *o {
                Order::Mine(i) => order.push((true, i)),
                Order::Theirs(j) => {
                    let (kind, n) = *expected.get(inline.len())?;
                    let Slot::Owned(value) = self.slots.get(j)? else {
                        return None;
                    };
                    let value = format!("{value:?}");
                    if value != i64::try_from(n).unwrap_or(i64::MAX).to_string() {
                        return None;
                    }
                    order.push((false, inline.len()));
                    inline.push(kind);
                }
            }
        }
        // Every caller value is used, and the inline values are all there.
        if inline.len() != expected.len() || mine > self.slots.len() {
            return None;
        }
        Some(Template {
            sql: self.sql.clone(),
            order,
            inline,
        })
    }
}

/// A value sea-query put into a statement on its own (only integers, in practice).
fn sea_value_param(value: Value) -> OwnedParam {
    match value {
        Value::BigUnsigned(Some(v)) => std::sync::Arc::new(i64::try_from(v).unwrap_or(i64::MAX)),
        Value::BigInt(Some(v)) => std::sync::Arc::new(v),
        Value::Unsigned(Some(v)) => std::sync::Arc::new(i64::from(v)),
        Value::Int(Some(v)) => std::sync::Arc::new(v),
        Value::Bool(Some(v)) => std::sync::Arc::new(v),
        Value::String(Some(v)) => std::sync::Arc::new(v),
        _ => std::sync::Arc::new(Option::<i64>::None),
    }
}

/// Statements sea-query can render for PostgreSQL with placeholders.
pub(crate) trait BuildPostgres {
    fn build_postgres(&self) -> (String, sea_query::Values);
}

macro_rules! build_postgres {
    ($($ty:ty),*) => {$(
        impl BuildPostgres for $ty {
            fn build_postgres(&self) -> (String, sea_query::Values) {
                self.build(PostgresQueryBuilder)
            }
        }
    )*};
}

build_postgres!(
    sea_query::SelectStatement,
    sea_query::InsertStatement,
    sea_query::UpdateStatement,
    sea_query::DeleteStatement
);

/// `ON CONFLICT (cols) DO UPDATE SET <every other insert column> = EXCLUDED.<col>`.
/// With no other column, the target is set to itself, so the existing row is still
/// returned (`DO NOTHING` would return no row).
pub(crate) fn upsert_conflict(meta: &TableMeta, target: &[usize]) -> OnConflict {
    let target_cols: Vec<Alias> = target
        .iter()
        .map(|i| Alias::new(meta.columns[*i].name))
        .collect();
    let version = meta.version.map(|v| meta.columns[v].name);
    let update: Vec<Alias> = meta
        .insert_columns()
        .filter(|c| !target.iter().any(|i| meta.columns[*i].name == c.name))
        // A version column is never set from the inserted row: it moves on by one.
        .filter(|c| Some(c.name) != version)
        // Nor is the primary key: the row that collided keeps its identity (a key
        // that moved would leave the old one's cache entries behind).
        .filter(|c| !c.primary_key)
        .map(|c| Alias::new(c.name))
        .collect();
    let update = if update.is_empty() {
        target_cols.clone()
    } else {
        update
    };
    let mut on = OnConflict::columns(target_cols)
        .update_columns(update)
        .to_owned();
    // An upsert that lands on a soft-deleted row brings it back to life.
    if let Some(soft) = meta.soft_delete_column() {
        on.value(Alias::new(soft.name), Expr::cust("NULL"));
    }
    if let Some(version) = version {
        on.value(
            Alias::new(version),
            Expr::cust(format!(
                "{}.{} + 1",
                quote_ident(meta.name),
                quote_ident(version)
            )),
        );
    }
    on
}
