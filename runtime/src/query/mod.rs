//! The typed query builder: `db.query::<M>()` with selected columns, filters,
//! ordering, limit and offset, checked by the compiler.
//!
//! Filters are built from a model's typed [`Column`] constants, so a misspelled column
//! or a value of the wrong type does not compile. Every value is a bound parameter.
//!
//! ```no_run
//! # use tabula::{Db, Table};
//! # #[derive(Table)] pub struct Profile { #[table(primary_key)] pub id: i64, pub username: String,
//! #     pub status: String, pub created_at: chrono::DateTime<chrono::Utc> }
//! # async fn run(db: Db) -> tabula::Result<()> {
//! let rows: Vec<(i64, String)> = db
//!     .query::<Profile>()
//!     .select((Profile::ID, Profile::USERNAME))
//!     .filter(Profile::STATUS.eq("active"))
//!     .order_by(Profile::CREATED_AT.desc())
//!     .limit(10)
//!     .all()
//!     .await?;
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use sea_query::{Alias, Expr, NullOrdering, Order as SeaOrder, SelectStatement};
use tokio_postgres::Row;
use tokio_postgres::types::FromSqlOwned;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::sql::{self, Binder, Bound};
use crate::table::{Column, Table};
use crate::types::{ColumnType, Json};

mod bulk;
pub(crate) mod filter;
pub mod page;
pub mod spec;

use filter::Node;

mod aggregate;
mod cached;
pub mod join;
mod relations;
pub use aggregate::{Aggregate, Aggregates, GroupQuery, Having, Ordered, Summable, count_rows};
pub use cached::CachedQuery;
pub use filter::{Filter, IntoValue, MAX_FILTER_DEPTH};
pub use join::{Has, Inner, JoinQuery, JoinSelection, Left};
pub use page::{Cursor, Page};
pub use relations::{Children, LoadChildren, LoadParent, Loader, Nested, children, parent};
pub use spec::{QuerySpec, SpecLimits, SpecPage};

/// One ordering key, from [`Column::asc`] or [`Column::desc`].
pub struct OrderBy<M> {
    column: usize,
    descending: bool,
    nulls: Option<bool>,
    _model: PhantomData<fn() -> M>,
}

impl<M> Clone for OrderBy<M> {
    fn clone(&self) -> Self {
        OrderBy {
            column: self.column,
            descending: self.descending,
            nulls: self.nulls,
            _model: PhantomData,
        }
    }
}

impl<M> OrderBy<M> {
    pub(crate) fn new(column: usize, descending: bool) -> Self {
        OrderBy {
            column,
            descending,
            nulls: None,
            _model: PhantomData,
        }
    }

    /// Whether NULLs come first under this key (PostgreSQL's default: last when
    /// ascending, first when descending).
    pub(crate) fn nulls_come_first(&self) -> bool {
        self.nulls.unwrap_or(self.descending)
    }

    /// The same key, the other way round (for paging backwards).
    pub(crate) fn reversed(&self) -> Self {
        OrderBy {
            column: self.column,
            descending: !self.descending,
            nulls: Some(!self.nulls_come_first()),
            _model: PhantomData,
        }
    }

    fn render(&self, meta: &crate::TableMeta, q: &mut SelectStatement) {
        let column = Alias::new(meta.columns[self.column].name);
        let order = if self.descending {
            SeaOrder::Desc
        } else {
            SeaOrder::Asc
        };
        match self.nulls {
            Some(true) => q.order_by_with_nulls(column, order, NullOrdering::First),
            Some(false) => q.order_by_with_nulls(column, order, NullOrdering::Last),
            None => q.order_by(column, order),
        };
    }

    /// NULLs before other values.
    pub fn nulls_first(mut self) -> Self {
        self.nulls = Some(true);
        self
    }

    /// NULLs after other values.
    pub fn nulls_last(mut self) -> Self {
        self.nulls = Some(false);
        self
    }
}

/// Columns to select instead of the whole row: one [`Column`] or a tuple of them. The
/// query then returns the columns' values (a tuple for a tuple).
pub trait Selection<M> {
    /// What one row decodes into.
    type Output: Send + crate::table::CacheCodec + 'static;
    /// The selected columns' positions in the model's metadata.
    fn indices(&self) -> Vec<usize>;
    /// Decodes one row of the selected columns.
    fn decode(row: &Row) -> Result<Self::Output>;
}

fn get<M: Table, T: FromSqlOwned>(row: &Row, i: usize, column: usize) -> Result<T> {
    row.try_get(i).map_err(|e| Error::Decode {
        table: M::META.name,
        column: M::META.columns.get(column).map_or("?", |c| c.name),
        source: crate::table::decode_cause(e),
    })
}

impl<M: Table, T: ColumnType> Selection<M> for Column<M, T> {
    type Output = T;
    fn indices(&self) -> Vec<usize> {
        vec![self.index()]
    }
    fn decode(row: &Row) -> Result<T> {
        get::<M, T>(row, 0, usize::MAX)
    }
}

macro_rules! selection_tuples {
    ($(($($t:ident $v:ident $i:tt),+)),* $(,)?) => {$(
        impl<M: Table, $($t: ColumnType),+> Selection<M> for ($(Column<M, $t>,)+) {
            type Output = ($($t,)+);
            fn indices(&self) -> Vec<usize> {
                let ($($v,)+) = self;
                vec![$($v.index()),+]
            }
            fn decode(row: &Row) -> Result<Self::Output> {
                Ok(($(get::<M, $t>(row, $i, usize::MAX)?,)+))
            }
        }
    )*};
}

selection_tuples!(
    (A a 0),
    (A a 0, B b 1),
    (A a 0, B b 1, C c 2),
    (A a 0, B b 1, C c 2, D d 3),
    (A a 0, B b 1, C c 2, D d 3, E e 4),
    (A a 0, B b 1, C c 2, D d 3, E e 4, F f 5),
);

/// How rows are decoded: whole models, or a [`Selection`].
#[doc(hidden)]
pub trait Decode<M>: Send + Sync {
    type Output: Send + 'static;
    fn decode(row: &Row) -> Result<Self::Output>;
    /// The rows as a cached query stores them: by Tabula's column codec, never by the
    /// caller's serde attributes. `None` when a row cannot be encoded.
    fn encode_rows(rows: &[Self::Output]) -> Option<Vec<u8>>;
    /// The rows back; `None` for bytes that are not a valid encoding (a miss).
    fn decode_rows(bytes: &[u8]) -> Option<Vec<Self::Output>>;
    /// Whether the selected columns are asked as JSON where their type has no native
    /// JSON decoding (`to_jsonb(column)`: `numeric`, `timestamp`, arrays, enums, …) —
    /// for rows decoded into JSON objects.
    #[doc(hidden)]
    const JSON_COLUMNS: bool = false;
}

/// Encodes each item with `each` after the count.
fn encode_all<T>(
    items: &[T],
    mut each: impl FnMut(&T, &mut Vec<u8>) -> Option<()>,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    crate::table::write_len(&mut out, items.len());
    for item in items {
        each(item, &mut out)?;
    }
    Some(out)
}

/// Decodes a count, then that many items with `each`; every byte must be used.
fn decode_all<T>(
    bytes: &[u8],
    mut each: impl FnMut(&mut crate::table::CodecReader<'_>) -> Option<T>,
) -> Option<Vec<T>> {
    let mut input = crate::table::CodecReader::new(bytes);
    // Each item takes at least one byte, so the count is bounded by the input.
    let count = input.len_prefix()?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(each(&mut input)?);
    }
    input.finish()?;
    Some(items)
}

/// Decodes whole rows into the model.
#[doc(hidden)]
pub struct WholeRow;

impl<M: Table> Decode<M> for WholeRow {
    type Output = M;
    fn decode(row: &Row) -> Result<M> {
        M::from_row(row)
    }
    fn encode_rows(rows: &[M]) -> Option<Vec<u8>> {
        encode_all(rows, |row, out| {
            crate::table::write_bytes(out, &row.cache_encode()?);
            Some(())
        })
    }
    fn decode_rows(bytes: &[u8]) -> Option<Vec<M>> {
        decode_all(bytes, |input| M::cache_decode(input.bytes()?))
    }
}

/// Decodes a [`Selection`].
#[doc(hidden)]
pub struct Selected<S>(PhantomData<fn() -> S>);

impl<M, S: Selection<M>> Decode<M> for Selected<S> {
    type Output = S::Output;
    fn decode(row: &Row) -> Result<S::Output> {
        S::decode(row)
    }
    fn encode_rows(rows: &[S::Output]) -> Option<Vec<u8>> {
        use crate::table::CacheCodec;
        encode_all(rows, |row, out| {
            row.encode(out);
            Some(())
        })
    }
    fn decode_rows(bytes: &[u8]) -> Option<Vec<S::Output>> {
        use crate::table::CacheCodec;
        decode_all(bytes, S::Output::decode)
    }
}

/// Decodes only the primary key (see `Query::keys`).
#[doc(hidden)]
pub struct KeyOnly;

impl<M: Table> Decode<M> for KeyOnly {
    type Output = M::Key;
    fn decode(row: &Row) -> Result<M::Key> {
        get::<M, M::Key>(row, 0, M::META.primary_key)
    }
    fn encode_rows(_: &[M::Key]) -> Option<Vec<u8>> {
        None
    }
    fn decode_rows(_: &[u8]) -> Option<Vec<M::Key>> {
        None
    }
}

impl<M: Table> Query<M, WholeRow> {
    /// The primary keys of the matching rows, in the query's order.
    pub(crate) async fn keys(self) -> Result<Vec<M::Key>> {
        let query: Query<M, KeyOnly> = Query {
            db: self.db,
            columns: Some(vec![M::META.primary_key]),
            filters: self.filters,
            order: self.order,
            limit: self.limit,
            offset: self.offset,
            with_deleted: self.with_deleted,
            lock: self.lock,
            _decode: PhantomData,
        };
        query.all().await
    }
}

/// Which statement of a query (part of its shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `all`, `first`, `one`, `stream`: the rows.
    Rows = 1,
    /// `count` ignoring limit and offset.
    Count = 2,
    /// The count of one page (limit and offset honoured).
    CountPage = 3,
}

/// A query on model `M` under construction; see the [module docs](self).
#[must_use = "a query does nothing until .all(), .first(), .one(), .count() or .exists() runs it"]
pub struct Query<M, D = WholeRow> {
    db: Db,
    columns: Option<Vec<usize>>,
    filters: Vec<Node>,
    order: Vec<OrderBy<M>>,
    limit: Option<u64>,
    offset: Option<u64>,
    with_deleted: bool,
    lock: Option<Lock>,
    _decode: PhantomData<fn() -> D>,
}

/// A row lock a query takes (`FOR UPDATE` …) and how it waits for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lock {
    exclusive: bool,
    /// 0: wait, 1: `SKIP LOCKED`, 2: `NOWAIT`.
    wait: u8,
}

/// `column = ANY($1)` over `values`, on the column at `index`.
pub(crate) fn in_list(index: usize, values: Vec<crate::sql::OwnedParam>) -> Node {
    Node::In(index, crate::sql::ParamList::from_params(values), true)
}

impl<M: Table, D: Decode<M>> Query<M, D> {
    /// Adds a filter made inside the crate.
    pub(crate) fn filter_node(mut self, node: Node) -> Self {
        self.filters.push(node);
        self
    }

    /// Orders by the primary key, ascending.
    pub(crate) fn order_by_key(mut self) -> Self {
        self.order.push(OrderBy {
            column: M::META.primary_key,
            descending: false,
            nulls: None,
            _model: PhantomData,
        });
        self
    }
}

impl Db {
    /// The rows whose primary key is one of `keys` (one query, uncached).
    pub(crate) async fn read_keys<M: Table>(&self, keys: Vec<M::Key>) -> Result<Vec<M>> {
        let values: Vec<crate::sql::OwnedParam> = keys
            .into_iter()
            .map(|k| std::sync::Arc::new(k) as crate::sql::OwnedParam)
            .collect();
        let mut query = self.query::<M>();
        query.filters.push(Node::In(
            M::META.primary_key,
            crate::sql::ParamList::from_params(values),
            true,
        ));
        query.all().await
    }

    /// Starts a query on model `M`.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let notes: Vec<Note> = db.query::<Note>().filter(Note::BODY.like("%rust%")).all().await?;
    /// # Ok(()) }
    /// ```
    pub fn query<M: Table>(&self) -> Query<M> {
        Query {
            db: self.clone(),
            columns: None,
            filters: Vec::new(),
            order: Vec::new(),
            limit: None,
            offset: None,
            with_deleted: false,
            lock: None,
            _decode: PhantomData,
        }
    }
}

impl<M: Table, D: Decode<M>> Query<M, D> {
    /// Selects only these columns; rows come back as their values.
    pub fn select<S: Selection<M>>(self, selection: S) -> Query<M, Selected<S>> {
        Query {
            db: self.db,
            columns: Some(selection.indices()),
            filters: self.filters,
            order: self.order,
            limit: self.limit,
            offset: self.offset,
            with_deleted: self.with_deleted,
            lock: self.lock,
            _decode: PhantomData,
        }
    }

    /// Includes soft-deleted rows (a no-op for models without soft delete).
    pub fn with_deleted(mut self) -> Self {
        self.with_deleted = true;
        self
    }

    /// Keeps the rows matching `filter` (several calls combine with AND).
    pub fn filter(mut self, filter: Filter<M>) -> Self {
        self.filters.push(filter.node);
        self
    }

    /// Orders by `key`; further calls add tie-breakers.
    pub fn order_by(mut self, key: OrderBy<M>) -> Self {
        self.order.push(key);
        self
    }

    /// Locks the rows it returns against writes by other transactions until this one
    /// ends (`FOR UPDATE`). It matters inside [`Db::transaction`]: outside one, each
    /// statement is its own transaction and the lock ends with it. Combine with
    /// [`skip_locked`](Self::skip_locked) for a work queue.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Job { #[table(primary_key, generated)] pub id: i64, pub done: bool }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.transaction(|tx| async move {
    ///     let next = tx.query::<Job>().filter(Job::DONE.eq(false)).for_update().skip_locked().first().await?;
    ///     // … work on `next`, then mark it done, in the same transaction
    ///     Ok(next.map(|job| job.id))
    /// }).await?;
    /// # Ok(()) }
    /// ```
    pub fn for_update(mut self) -> Self {
        self.lock = Some(Lock {
            exclusive: true,
            wait: self.lock.map_or(0, |l| l.wait),
        });
        self
    }

    /// Locks the rows it returns against changes, letting others read and share-lock
    /// them (`FOR SHARE`); see [`for_update`](Self::for_update).
    pub fn for_share(mut self) -> Self {
        self.lock = Some(Lock {
            exclusive: false,
            wait: self.lock.map_or(0, |l| l.wait),
        });
        self
    }

    /// With a row lock, skips rows another transaction has locked instead of waiting
    /// (`SKIP LOCKED`); alone, it implies [`for_update`](Self::for_update).
    pub fn skip_locked(mut self) -> Self {
        let exclusive = self.lock.is_none_or(|l| l.exclusive);
        self.lock = Some(Lock { exclusive, wait: 1 });
        self
    }

    /// With a row lock, fails at once instead of waiting for a row another transaction
    /// has locked (`NOWAIT`: SQLSTATE 55P03, an error [`Error::is_transient`] calls
    /// transient); alone, it implies [`for_update`](Self::for_update).
    pub fn nowait(mut self) -> Self {
        let exclusive = self.lock.is_none_or(|l| l.exclusive);
        self.lock = Some(Lock { exclusive, wait: 2 });
        self
    }

    /// Returns at most `n` rows.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` rows.
    pub fn offset(mut self, n: u64) -> Self {
        self.offset = Some(n);
        self
    }

    /// The selected column positions (all of them without `select`).
    fn selected(&self) -> Vec<usize> {
        self.columns
            .clone()
            .unwrap_or_else(|| (0..M::META.columns.len()).collect())
    }

    /// `SELECT <columns> FROM t WHERE <live rows and filters> ORDER BY … LIMIT … OFFSET …`,
    /// after checking every filter's depth.
    ///
    /// Rendering is synchronous and ends in a [`Bound`], which is `Send`: sea-query's
    /// statements are not, so none of them may live in an `async fn` (its future would
    /// not be `Send`, and could not be spawned or awaited in an axum handler).
    fn statement(
        &self,
        binder: &mut Binder<'static>,
        columns: &[usize],
        order: &[OrderBy<M>],
        limit: Option<u64>,
        offset: Option<u64>,
    ) -> Result<SelectStatement> {
        let meta = M::META;
        let mut q = sea_query::Query::select();
        q.from(sql::table_ref(meta));
        if D::JSON_COLUMNS {
            for i in columns {
                let column = &meta.columns[*i];
                match spec::json_native(column.sql_type) {
                    true => {
                        q.column(Alias::new(column.name));
                    }
                    false => {
                        let name = sql::quote_ident(column.name);
                        q.expr(sea_query::Expr::cust(format!("to_jsonb({name}) AS {name}")));
                    }
                }
            }
        } else {
            q.columns(columns.iter().map(|i| Alias::new(meta.columns[*i].name)));
        }
        if !self.with_deleted
            && let Some(live) = sql::live_rows(meta)
        {
            q.and_where(live);
        }
        for node in &self.filters {
            q.and_where(filter::render(meta, node, binder)?);
        }
        for key in order {
            key.render(meta, &mut q);
        }
        if let Some(n) = limit {
            q.limit(n);
        }
        if let Some(n) = offset {
            q.offset(n);
        }
        Ok(q)
    }

    /// PostgreSQL takes no row lock on an aggregate: asking for one is a mistake to
    /// report, not a lock to drop quietly.
    pub(crate) fn no_lock(&self, operation: &str) -> Result<()> {
        match self.lock {
            Some(_) => Err(Error::Misuse(format!(
                "`{operation}` cannot take a row lock (PostgreSQL locks no rows behind an \
                 aggregate): lock with `.all()` or `.first()`"
            ))),
            None => Ok(()),
        }
    }

    /// The row lock clause on a statement that returns rows.
    fn render_lock(&self, q: &mut SelectStatement) {
        use sea_query::{LockBehavior, LockType};
        if let Some(lock) = self.lock {
            let kind = match lock.exclusive {
                true => LockType::Update,
                false => LockType::Share,
            };
            match lock.wait {
                1 => q.lock_with_behavior(kind, LockBehavior::SkipLocked),
                2 => q.lock_with_behavior(kind, LockBehavior::Nowait),
                _ => q.lock(kind),
            };
        }
    }

    /// The statement of [`all`](Self::all), bound.
    fn bind(&self) -> Result<Bound<'static>> {
        self.bind_rendered(Kind::Rows, self.limit, self.offset, |binder| {
            let mut q = self.statement(
                binder,
                &self.selected(),
                &self.order,
                self.limit,
                self.offset,
            )?;
            self.render_lock(&mut q);
            Ok(q)
        })
    }

    /// The statement that counts the matching rows, bound: honouring limit and offset
    /// when `paged`, ignoring them otherwise.
    fn bind_count(&self, paged: bool) -> Result<Bound<'static>> {
        if paged && (self.limit.is_some() || self.offset.is_some()) {
            return self.bind_rendered(Kind::CountPage, self.limit, self.offset, |binder| {
                let mut page = self.statement(binder, &[], &[], self.limit, self.offset)?;
                page.expr(Expr::cust("1"));
                Ok(sea_query::Query::select()
                    .expr(Expr::cust("count(*)"))
                    .from_subquery(page, Alias::new("__page"))
                    .to_owned())
            });
        }
        self.bind_rendered(Kind::Count, None, None, |binder| {
            let mut q = self.statement(binder, &[], &[], None, None)?;
            q.expr(Expr::cust("count(*)"));
            Ok(q)
        })
    }

    /// The statement `render` builds, from this handle's template of its shape when
    /// there is one (rendered once per shape; see `sql.rs`), else rendered now and kept.
    fn bind_rendered(
        &self,
        kind: Kind,
        limit: Option<u64>,
        offset: Option<u64>,
        render: impl FnOnce(&mut Binder<'static>) -> Result<SelectStatement>,
    ) -> Result<Bound<'static>> {
        let model = std::any::TypeId::of::<M>();
        let rendered = &self.db.shared.rendered;
        let shape = self.shape(kind);
        if let Some(shape) = &shape
            && let Some(template) = rendered.get(model, shape)
        {
            let mut values = Vec::new();
            for node in &self.filters {
                filter::values(M::META.name, node, &mut values)?;
            }
            return Ok(template.bind(values, limit, offset));
        }
        let mut binder = Binder::default();
        let q = render(&mut binder)?;
        let bound = binder.finish(q).within_limits(M::META.name)?;
        if let Some(shape) = shape
            && let Some(template) = bound.template(limit, offset)
        {
            rendered.put(model, shape, template);
        }
        Ok(bound)
    }

    /// Everything the SQL of a `kind` statement of this query depends on — never a
    /// value. `None` for a filter too large to keep a template for.
    fn shape(&self, kind: Kind) -> Option<Vec<u64>> {
        const LIMIT: usize = 512;
        let mut shape = Vec::with_capacity(16);
        shape.push(kind as u64);
        shape.push(u64::from(self.with_deleted));
        // The same columns render otherwise for rows decoded into JSON.
        shape.push(u64::from(D::JSON_COLUMNS));
        if kind == Kind::Rows {
            match &self.columns {
                Some(columns) => {
                    shape.push(columns.len() as u64);
                    shape.extend(columns.iter().map(|c| *c as u64));
                }
                None => shape.push(u64::MAX),
            }
            shape.push(
                self.lock
                    .map_or(0, |l| 1 + u64::from(l.exclusive) * 3 + u64::from(l.wait)),
            );
            shape.push(self.order.len() as u64);
            for key in &self.order {
                let nulls = key.nulls.map_or(0, |first| 1 + u64::from(first));
                shape.extend([key.column as u64, u64::from(key.descending), nulls]);
            }
        }
        if kind != Kind::Count {
            shape.extend([
                u64::from(self.limit.is_some()),
                u64::from(self.offset.is_some()),
            ]);
        }
        shape.push(self.filters.len() as u64);
        for node in &self.filters {
            if !filter::shape(node, &mut shape, LIMIT) {
                return None;
            }
        }
        Some(shape)
    }

    /// The SQL this query runs, with `$n` placeholders (values are never in the text).
    /// A filter nested deeper than [`MAX_FILTER_DEPTH`] is an
    /// [`Error::Validation`].
    ///
    /// ```
    /// # use tabula::Table;
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # fn sketch(db: tabula::Db) -> tabula::Result<()> {
    /// let sql = db.query::<Note>().filter(Note::BODY.eq("x")).limit(5).to_sql()?;
    /// assert_eq!(sql, r#"SELECT "id", "body" FROM "notes" WHERE "body" = $1 LIMIT $2"#);
    /// let listed = db.query::<Note>().filter(Note::ID.is_in([1_i64, 2, 3])).to_sql()?;
    /// assert_eq!(listed, r#"SELECT "id", "body" FROM "notes" WHERE "id" = ANY($1)"#);
    /// # Ok(()) }
    /// ```
    pub fn to_sql(self) -> Result<String> {
        Ok(self.bind()?.sql)
    }

    /// Runs the query and returns every row.
    pub fn all(self) -> impl Future<Output = Result<Vec<D::Output>>> + use<M, D> {
        // Rendered before the future exists: it carries the handle and the bound
        // statement, not the builder.
        let bound = self.bind();
        let db = self.db;
        async move { fetch::<M, D>(&db, &bound?).await }
    }

    /// Caches this query's result for `ttl_seconds` under the table's version counter:
    /// any write to the table makes every cached query of it miss (see
    /// [`crate::cache`]). Inside a transaction, or without a cache, it runs uncached.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let ids: Vec<i64> = db.query::<Note>().select(Note::ID).limit(10).cached(60).all().await?;
    /// # Ok(()) }
    /// ```
    pub fn cached(mut self, ttl_seconds: u64) -> CachedQuery<M, D> {
        // Its answer fills the cache: from the primary (see `db/replica.rs`).
        if self.db.cache().is_some() {
            self.db = self.db.for_fill();
        }
        CachedQuery {
            query: self,
            ttl_seconds,
            stale_seconds: 0,
            tags: Vec::new(),
        }
    }

    /// The first row, if any (adds `LIMIT 1`).
    pub async fn first(self) -> Result<Option<D::Output>> {
        Ok(self.limit(1).all().await?.into_iter().next())
    }

    /// Exactly one row: none is [`Error::NotFound`], more than one is
    /// [`Error::Validation`].
    pub async fn one(self) -> Result<D::Output> {
        let mut rows = self.limit(2).all().await?.into_iter();
        match (rows.next(), rows.next()) {
            (Some(row), None) => Ok(row),
            (None, _) => Err(Error::NotFound {
                table: M::META.name,
            }),
            (Some(_), Some(_)) => Err(Error::Validation(format!(
                "expected one row of `{}`, found more",
                M::META.name
            ))),
        }
    }

    /// How many rows match (ignores order; honours limit and offset).
    pub async fn count(self) -> Result<i64> {
        self.no_lock("count")?;
        let bound = self.bind_count(true)?;
        run_count::<M>(&self.db, &bound).await
    }

    /// The planner's estimate of how many rows match, from `EXPLAIN`: instant on any
    /// table size, but only as good as the table's statistics.
    pub async fn count_estimate(self) -> Result<i64> {
        let bound = self.bind_count(false)?;
        run_estimate::<M>(&self.db, bound).await
    }

    /// Whether any row matches.
    pub async fn exists(self) -> Result<bool> {
        Ok(self.limit(1).count().await? > 0)
    }

    /// One page by limit and offset, with the total number of matching rows counted as
    /// asked: exactly (a second query that scans every match), estimated by the
    /// planner, or not at all.
    pub async fn page_offset(
        self,
        limit: u64,
        offset: u64,
        total: Total,
    ) -> Result<OffsetPage<D::Output>> {
        // Both statements are bound before either runs, so a bad filter fails first.
        let counter = match total {
            Total::None => None,
            _ => Some(self.bind_count(false)?),
        };
        let db = self.db.clone();
        let items = self.limit(limit).offset(offset).all().await?;
        let total = match (total, counter) {
            (Total::Exact, Some(bound)) => Some(run_count::<M>(&db, &bound).await?),
            (Total::Estimate, Some(bound)) => Some(run_estimate::<M>(&db, bound).await?),
            _ => None,
        };
        Ok(OffsetPage { items, total })
    }

    /// Streams the rows as PostgreSQL sends them, without holding the whole result in
    /// memory: the driver reads the socket only as fast as the stream is consumed. The
    /// stream keeps one pooled connection (or the transaction's) until it ends or is
    /// dropped.
    pub async fn stream(self) -> Result<RowStream<D::Output>> {
        let bound = self.bind()?;
        let db = &self.db;
        let deadline = db.shared.config.statement_timeout;
        // Opening the stream (the statement prepared, the first answer back) is under
        // the statement deadline and its grace, as every call is: on a silent network
        // it is a `Timeout`, its connection closed.
        let opening = async {
            let mut conn = db.conn().await?;
            let mark = db.mark_streaming();
            let pooled = matches!(conn, crate::db::Conn::Pooled(_));
            let rows = {
                let pg = conn.get()?;
                let statement = pg.statement(&bound.sql).await?;
                pg.flush_setup().await?;
                let params = bound.params();
                // Given up before the answer: the connection is closed (and a
                // transaction's can only roll back).
                pg.in_flight = true;
                let mut started =
                    crate::pool::query_raw_on(pg.client(), &bound.sql, &statement, &params)
                        .await
                        .map_err(Error::from);
                // An answer came (rows or an error): the connection is in order.
                pg.in_flight = false;
                // A statement a schema change made stale: prepared again (inside a
                // transaction, which it doomed, by the transaction's next run).
                if pg.forget_stale_plan(&started) {
                    let statement = pg.statement(&bound.sql).await?;
                    pg.in_flight = true;
                    started =
                        crate::pool::query_raw_on(pg.client(), &bound.sql, &statement, &params)
                            .await
                            .map_err(Error::from);
                    pg.in_flight = false;
                }
                let rows = started?;
                // A pooled connection dropped before the stream ends is closed (and
                // its statement cancelled) rather than handed out with rows still
                // coming.
                pg.in_flight = pooled;
                rows
            };
            Ok::<_, Error>((rows, conn, mark))
        };
        let limit = deadline + crate::db::grace(deadline);
        let (rows, conn, mark) = match tokio::time::timeout(limit, opening).await {
            Ok(opened) => opened?,
            Err(_) => {
                return Err(Error::Timeout {
                    operation: "stream",
                    after: deadline,
                });
            }
        };
        let state = (Box::pin(rows), conn, mark);
        let stream = futures_util::stream::unfold(state, |(mut rows, mut conn, mark)| async move {
            use futures_util::StreamExt;
            let Some(next) = rows.next().await else {
                if let Ok(pg) = conn.get() {
                    pg.in_flight = false;
                }
                return None;
            };
            let item = next.map_err(Error::from).and_then(|row| D::decode(&row));
            Some((item, (rows, conn, mark)))
        });
        Ok(Box::pin(stream))
    }
}

/// Runs a bound `count(*)`.
async fn run_count<M: Table>(db: &Db, bound: &Bound<'static>) -> Result<i64> {
    crate::db::read_on_conn!(db, "count", M::META.name, |conn| {
        let rows = conn.query(&bound.sql, &bound.params()).await?;
        rows.first()
            .map_or(Ok(0), |r| get::<M, i64>(r, 0, usize::MAX))
    })
    .await
}

/// Runs a bound `count(*)` under `EXPLAIN` and reads the planner's estimate.
async fn run_estimate<M: Table>(db: &Db, mut bound: Bound<'static>) -> Result<i64> {
    bound.sql = format!("EXPLAIN (FORMAT JSON) {}", bound.sql);
    crate::db::read_on_conn!(db, "count_estimate", M::META.name, |conn| {
        let rows = conn.query(&bound.sql, &bound.params()).await?;
        let plan: serde_json::Value = match rows.first() {
            Some(row) => get::<M, Json<serde_json::Value>>(row, 0, usize::MAX)?.0,
            None => serde_json::Value::Null,
        };
        // The count node sits on top; the rows it reads are its child's estimate.
        let top = &plan[0]["Plan"];
        let estimate = top["Plans"][0]["Plan Rows"]
            .as_f64()
            .or_else(|| top["Plan Rows"].as_f64())
            .unwrap_or(0.0);
        Ok(estimate.round() as i64)
    })
    .await
}

/// Runs a rendered query and decodes its rows.
async fn fetch<M: Table, D: Decode<M>>(
    db: &Db,
    bound: &crate::sql::Bound<'static>,
) -> Result<Vec<D::Output>> {
    crate::db::read_on_conn!(db, "query", M::META.name, |conn| {
        conn.query_decode(&bound.sql, &bound.params(), D::decode)
            .await
    })
    .await
}

/// The rows of [`Query::stream`], decoded one at a time.
pub type RowStream<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T>> + Send + 'static>>;

/// Whether [`Query::page_offset`] counts the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Total {
    /// `count(*)` over every match: exact, and as slow as scanning them.
    Exact,
    /// The planner's estimate from `EXPLAIN`: constant time, approximate.
    Estimate,
    /// No total.
    None,
}

/// A page from [`Query::page_offset`].
#[derive(Debug, Clone, PartialEq)]
pub struct OffsetPage<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// The number of matching rows, when asked for.
    pub total: Option<i64>,
}
