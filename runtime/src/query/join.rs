//! Typed joins: `db.query::<User>().left_join::<Post>()` returns `(User, Option<Post>)`
//! rows, along the relation `#[table(belongs_to = User)]` declared on `Post` (or with
//! explicit columns, [`Query::inner_join_on`]). Filters, ordering and selections may
//! name a column of any table in the join; a column of a table that is not in it is a
//! compile error.
//!
//! Each table is aliased `t0`, `t1`, … in the order it joined, so one model may not
//! appear twice (a self-join is ambiguous to the types: write it with
//! [`Db::sql`](crate::Db::sql)). Soft-deleted rows of a joined table are left out of
//! the join itself (the condition sits in its `ON`), so a left join still returns the
//! parent of only deleted children, with `None`.
//!
//! Joined reads are never cached: the row cache holds single rows, and a join's
//! freshness depends on every table in it.
//!
//! ```no_run
//! # use tabula::{Db, Table};
//! # #[derive(Table, Debug)] pub struct User { #[table(primary_key)] pub id: i64, pub hair_color: Option<String> }
//! # #[derive(Table, Debug)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64, pub title: String }
//! # async fn run(db: Db) -> tabula::Result<()> {
//! let rows: Vec<(User, Option<Post>)> = db
//!     .query::<User>()
//!     .left_join::<Post>()
//!     .filter(User::HAIR_COLOR.eq("black"))
//!     .order_by(Post::TITLE.asc())
//!     .all()
//!     .await?;
//! let titles: Vec<(i64, Option<String>)> = db
//!     .query::<User>()
//!     .left_join::<Post>()
//!     .select((User::ID, Post::TITLE))
//!     .all()
//!     .await?;
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use sea_query::{
    Alias, Expr, ExprTrait, JoinType, NullOrdering, Order as SeaOrder, SelectStatement,
};
use tokio_postgres::Row;

use super::filter::{self, Node};
use super::{Filter, OrderBy, Query, WholeRow};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::sql::{self, Binder, Bound};
use crate::table::{Column, Related, Table, TableMeta};
use crate::types::ColumnType;

/// A table joined with `INNER JOIN`: its rows come back as the model.
pub struct Inner<M>(PhantomData<fn() -> M>);

/// A table joined with `LEFT JOIN`: its rows come back as `Option` of the model (`None`
/// where no row matched).
pub struct Left<M>(PhantomData<fn() -> M>);

/// A joined table: which model, and how its rows come back.
#[doc(hidden)]
pub trait Joined: Send + 'static {
    type Model: Table;
    type Output: Send + 'static;
    /// A value of a column of this table, as a selection decodes it.
    type Value<T: ColumnType>: ColumnType;
    const LEFT: bool;
    fn decode(row: &Row, at: usize) -> Result<Self::Output>;
}

impl<M: Table> Joined for Inner<M> {
    type Model = M;
    type Output = M;
    type Value<T: ColumnType> = T;
    const LEFT: bool = false;
    fn decode(row: &Row, at: usize) -> Result<M> {
        M::from_row_at(row, at)
    }
}

impl<M: Table> Joined for Left<M> {
    type Model = M;
    type Output = Option<M>;
    type Value<T: ColumnType> = Option<T::NonNull>;
    const LEFT: bool = true;
    fn decode(row: &Row, at: usize) -> Result<Option<M>> {
        // A primary key is never NULL in a stored row: NULL there is the row a left
        // join makes up when nothing matched.
        let key = at + M::META.primary_key;
        let present = row
            .try_get::<_, Option<M::Key>>(key)
            .map_err(|e| crate::table::decode_error::<M>(M::META.primary_key, e))?;
        match present {
            Some(_) => M::from_row_at(row, at).map(Some),
            None => Ok(None),
        }
    }
}

/// The first table of a join: always present.
#[doc(hidden)]
pub struct Base<M>(PhantomData<fn() -> M>);

impl<M: Table> Joined for Base<M> {
    type Model = M;
    type Output = M;
    type Value<T: ColumnType> = T;
    const LEFT: bool = false;
    fn decode(row: &Row, at: usize) -> Result<M> {
        M::from_row_at(row, at)
    }
}

/// The tables of a join, in order, and the rows they decode into.
#[doc(hidden)]
pub trait Tables: Send + 'static {
    type Output: Send + 'static;
    /// The table joined last.
    type Last: Joined;
    fn metas() -> Vec<&'static TableMeta>;
    fn decode(row: &Row) -> Result<Self::Output>;
}

/// Positions of a table in a join (type-level, so that the compiler finds a model's
/// table by its type).
#[doc(hidden)]
pub struct At0;
#[doc(hidden)]
pub struct At1;
#[doc(hidden)]
pub struct At2;
#[doc(hidden)]
pub struct At3;

/// Model `M` is a table of this join, at position `I`.
#[diagnostic::on_unimplemented(
    message = "`{M}` is not a table of this query",
    label = "a column of a table this query does not join",
    note = "join it first (`.inner_join::<{M}>()`, `.left_join::<{M}>()` or an `_on` variant)"
)]
pub trait Has<M, I> {
    /// How the table's rows come back.
    #[doc(hidden)]
    type Slot: Joined;
    /// The table's position (`t0`, `t1`, …).
    #[doc(hidden)]
    const POSITION: usize;
}

macro_rules! tables {
    ($(($($slot:ident $at:ident $pos:tt),+; $last:ident)),* $(,)?) => {$(
        impl<$($slot: Joined),+> Tables for ($($slot,)+) {
            type Output = ($($slot::Output,)+);
            type Last = $last;
            fn metas() -> Vec<&'static TableMeta> {
                vec![$(<$slot::Model as Table>::META),+]
            }
            fn decode(row: &Row) -> Result<Self::Output> {
                let mut _at = 0;
                Ok(($({
                    let value = $slot::decode(row, _at)?;
                    _at += <$slot::Model as Table>::META.columns.len();
                    value
                },)+))
            }
        }
        tables!(@has ($($slot),+) $($slot $at $pos),+);
    )*};
    (@has $all:tt $($slot:ident $at:ident $pos:tt),+) => {$(
        tables!(@one $all $slot $at $pos);
    )+};
    (@one ($($all:ident),+) $slot:ident $at:ident $pos:tt) => {
        impl<$($all: Joined),+> Has<<$slot as Joined>::Model, $at> for ($($all,)+) {
            type Slot = $slot;
            const POSITION: usize = $pos;
        }
    };
}

tables!(
    (A At0 0, B At1 1; B),
    (A At0 0, B At1 1, C At2 2; C),
    (A At0 0, B At1 1, C At2 2, D At3 3; D),
);

/// Appends a joined table to a join's tables (at most four in all).
#[diagnostic::on_unimplemented(message = "a join has at most four tables", label = "a fifth table")]
#[doc(hidden)]
pub trait Push<J> {
    type Out: Tables;
}

impl<A: Joined, B: Joined, J: Joined> Push<J> for (A, B) {
    type Out = (A, B, J);
}

impl<A: Joined, B: Joined, C: Joined, J: Joined> Push<J> for (A, B, C) {
    type Out = (A, B, C, J);
}

/// One `JOIN … ON a.x = b.y`; the joined table is the next one.
struct Link {
    left: bool,
    /// A table already in the query, and its column.
    from: (usize, usize),
    /// The joined table's column.
    to: usize,
}

/// An ordering key on one of the join's tables.
struct Key {
    table: usize,
    column: usize,
    descending: bool,
    nulls: Option<bool>,
}

/// A query over several tables joined together; from [`Query::inner_join`],
/// [`Query::left_join`] and their `_on` variants. See the [module docs](self).
#[must_use = "a query does nothing until .all(), .first() or .count() runs it"]
pub struct JoinQuery<S, D = WholeRow> {
    db: Db,
    links: Vec<Link>,
    filters: Vec<(usize, Node)>,
    order: Vec<Key>,
    limit: Option<u64>,
    offset: Option<u64>,
    with_deleted: bool,
    /// `with_deleted` of the first table's query, before the join: its rows only.
    base_deleted: bool,
    /// The selected columns (table, column); every column of every table without.
    selection: Option<Vec<(usize, usize)>>,
    /// Why this query cannot run (reported when it is run).
    refused: Option<String>,
    _tables: PhantomData<fn() -> (S, D)>,
}

impl<M: Table> Query<M, WholeRow> {
    fn start_join<J: Joined>(self, link: Link) -> JoinQuery<(Base<M>, J)> {
        let refused = self.lock.map(|_| {
            "a join cannot take a row lock: lock the rows with a query on one table".to_owned()
        });
        JoinQuery {
            db: self.db,
            links: vec![link],
            filters: self.filters.into_iter().map(|node| (0, node)).collect(),
            order: self
                .order
                .into_iter()
                .map(|key| Key {
                    table: 0,
                    column: key.column,
                    descending: key.descending,
                    nulls: key.nulls,
                })
                .collect(),
            limit: self.limit,
            offset: self.offset,
            with_deleted: false,
            base_deleted: self.with_deleted,
            selection: None,
            refused,
            _tables: PhantomData,
        }
    }

    /// Joins the table of `J` along the relation declared between the two models.
    fn along<J: Joined>(self) -> JoinQuery<(Base<M>, J)>
    where
        M: Related<J::Model>,
    {
        let (from, to) = <M as Related<J::Model>>::ON;
        self.start_join(Link {
            left: J::LEFT,
            from: (0, from),
            to,
        })
    }

    /// Joins the table of `J` where `mine` equals `theirs`.
    fn on<J: Joined, T>(
        self,
        mine: Column<M, T>,
        theirs: Column<J::Model, T>,
    ) -> JoinQuery<(Base<M>, J)> {
        self.start_join(Link {
            left: J::LEFT,
            from: (0, mine.index()),
            to: theirs.index(),
        })
    }

    /// Joins `B` along the relation declared between the two models
    /// (`#[table(belongs_to = …)]` on either side): the rows of `M` that have a related
    /// `B`, each pair once, as `(M, B)`.
    pub fn inner_join<B: Table>(self) -> JoinQuery<(Base<M>, Inner<B>)>
    where
        M: Related<B>,
    {
        self.along::<Inner<B>>()
    }

    /// Joins `B` along the declared relation keeping every row of `M`: `(M,
    /// Option<B>)`, with `None` for a row that has no related `B`.
    pub fn left_join<B: Table>(self) -> JoinQuery<(Base<M>, Left<B>)>
    where
        M: Related<B>,
    {
        self.along::<Left<B>>()
    }

    /// Joins `B` where `mine` equals `theirs`: a relation the models do not declare.
    pub fn inner_join_on<B: Table, T>(
        self,
        mine: Column<M, T>,
        theirs: Column<B, T>,
    ) -> JoinQuery<(Base<M>, Inner<B>)> {
        self.on::<Inner<B>, T>(mine, theirs)
    }

    /// Left-joins `B` where `mine` equals `theirs`.
    pub fn left_join_on<B: Table, T>(
        self,
        mine: Column<M, T>,
        theirs: Column<B, T>,
    ) -> JoinQuery<(Base<M>, Left<B>)> {
        self.on::<Left<B>, T>(mine, theirs)
    }
}

impl<S: Tables> JoinQuery<S, WholeRow> {
    fn push<J: Joined>(mut self, link: Link) -> JoinQuery<<S as Push<J>>::Out>
    where
        S: Push<J>,
    {
        self.links.push(link);
        self.retyped(None)
    }

    /// The same query over other tables or decoded otherwise, selecting `selection`.
    fn retyped<S2, D2>(self, selection: Option<Vec<(usize, usize)>>) -> JoinQuery<S2, D2> {
        JoinQuery {
            db: self.db,
            links: self.links,
            filters: self.filters,
            order: self.order,
            limit: self.limit,
            offset: self.offset,
            with_deleted: self.with_deleted,
            base_deleted: self.base_deleted,
            selection,
            refused: self.refused,
            _tables: PhantomData,
        }
    }

    /// Joins the table of `J` along its declared relation with the table joined last.
    fn along<J: Joined>(self) -> JoinQuery<<S as Push<J>>::Out>
    where
        S: Push<J>,
        <S::Last as Joined>::Model: Related<J::Model>,
    {
        let (from, to) = <<S::Last as Joined>::Model as Related<J::Model>>::ON;
        let last = self.links.len();
        self.push(Link {
            left: J::LEFT,
            from: (last, from),
            to,
        })
    }

    /// Joins the table of `J` where `existing` (a table already in the query) equals
    /// `theirs`.
    fn on<J: Joined, M, I, T>(
        self,
        existing: Column<M, T>,
        theirs: Column<J::Model, T>,
    ) -> JoinQuery<<S as Push<J>>::Out>
    where
        S: Has<M, I> + Push<J>,
    {
        self.push(Link {
            left: J::LEFT,
            from: (<S as Has<M, I>>::POSITION, existing.index()),
            to: theirs.index(),
        })
    }

    /// Joins `C` along its declared relation with the table joined last (users → posts
    /// → comments): rows with a related `C` only.
    pub fn inner_join<C: Table>(self) -> JoinQuery<<S as Push<Inner<C>>>::Out>
    where
        S: Push<Inner<C>>,
        <S::Last as Joined>::Model: Related<C>,
    {
        self.along::<Inner<C>>()
    }

    /// Left-joins `C` along its declared relation with the table joined last.
    pub fn left_join<C: Table>(self) -> JoinQuery<<S as Push<Left<C>>>::Out>
    where
        S: Push<Left<C>>,
        <S::Last as Joined>::Model: Related<C>,
    {
        self.along::<Left<C>>()
    }

    /// Joins `C` where a column of a table already in the query equals one of `C`'s.
    pub fn inner_join_on<M, I, C: Table, T>(
        self,
        existing: Column<M, T>,
        theirs: Column<C, T>,
    ) -> JoinQuery<<S as Push<Inner<C>>>::Out>
    where
        S: Has<M, I> + Push<Inner<C>>,
    {
        self.on::<Inner<C>, M, I, T>(existing, theirs)
    }

    /// Left-joins `C` where a column of a table already in the query equals one of
    /// `C`'s.
    pub fn left_join_on<M, I, C: Table, T>(
        self,
        existing: Column<M, T>,
        theirs: Column<C, T>,
    ) -> JoinQuery<<S as Push<Left<C>>>::Out>
    where
        S: Has<M, I> + Push<Left<C>>,
    {
        self.on::<Left<C>, M, I, T>(existing, theirs)
    }

    /// Selects these columns — one, or a tuple of up to six, from any of the tables —
    /// instead of whole models. A column of a left-joined table comes back as an
    /// `Option` (`None` where no row matched).
    pub fn select<I, C: JoinSelection<S, I>>(self, columns: C) -> JoinQuery<S, Picked<C, I>> {
        let selection = Some(columns.columns());
        self.retyped(selection)
    }
}

impl<S: Tables, D: JoinDecode<S>> JoinQuery<S, D> {
    /// Keeps the rows matching `filter`, a filter on any table of the join (several
    /// calls combine with AND). On a left-joined table, a filter applies after the
    /// join: `Post::TITLE.eq(..)` drops the users without posts, as in SQL.
    pub fn filter<M, I>(mut self, filter: Filter<M>) -> Self
    where
        S: Has<M, I>,
    {
        self.filters.push((<S as Has<M, I>>::POSITION, filter.node));
        self
    }

    /// Keeps the rows where the left-joined table `M` matched nothing (an anti-join:
    /// "users without posts").
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, Debug)] pub struct User { #[table(primary_key)] pub id: i64 }
    /// # #[derive(Table, Debug)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64 }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let silent: Vec<i64> = db
    ///     .query::<User>()
    ///     .left_join::<Post>()
    ///     .missing::<Post, _>()
    ///     .select(User::ID)
    ///     .all()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn missing<M: Table, I>(mut self) -> Self
    where
        S: Has<M, I>,
    {
        let node = Node::IsNull(M::META.primary_key, true);
        self.filters.push((<S as Has<M, I>>::POSITION, node));
        self
    }

    /// Orders by a column of any table of the join; further calls add tie-breakers.
    pub fn order_by<M, I>(mut self, key: OrderBy<M>) -> Self
    where
        S: Has<M, I>,
    {
        self.order.push(Key {
            table: <S as Has<M, I>>::POSITION,
            column: key.column,
            descending: key.descending,
            nulls: key.nulls,
        });
        self
    }

    /// Returns at most `n` rows (joined rows, not rows of the first table).
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` rows.
    pub fn offset(mut self, n: u64) -> Self {
        self.offset = Some(n);
        self
    }

    /// Includes soft-deleted rows of every table (a no-op for models without soft
    /// delete). `with_deleted()` on the query before the join includes the first
    /// table's only.
    pub fn with_deleted(mut self) -> Self {
        self.with_deleted = true;
        self
    }

    /// The join's SQL, with `$n` placeholders.
    ///
    /// ```
    /// # use tabula::Table;
    /// # #[derive(Table)] pub struct User { #[table(primary_key)] pub id: i64, pub name: String }
    /// # #[derive(Table)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64 }
    /// # fn sketch(db: tabula::Db) -> tabula::Result<()> {
    /// let sql = db.query::<User>().left_join::<Post>().select((User::NAME, Post::ID)).to_sql()?;
    /// assert_eq!(
    ///     sql,
    ///     r#"SELECT "t0"."name", "t1"."id" FROM "users" AS "t0" LEFT JOIN "posts" AS "t1" ON "t0"."id" = "t1"."user_id""#
    /// );
    /// # Ok(()) }
    /// ```
    pub fn to_sql(self) -> Result<String> {
        Ok(self.bind(false)?.sql)
    }

    /// Runs the query and returns every row.
    pub async fn all(self) -> Result<Vec<D::Output>> {
        let bound = self.bind(false)?;
        let table = S::metas()[0].name;
        crate::db::read_on_conn!(self.db, "join", table, |conn| {
            conn.query_decode(&bound.sql, &bound.params(), D::decode)
                .await
        })
        .await
    }

    /// The first row, if any (adds `LIMIT 1`).
    pub async fn first(self) -> Result<Option<D::Output>> {
        Ok(self.limit(1).all().await?.into_iter().next())
    }

    /// How many joined rows match (ignores order; honours limit and offset).
    pub async fn count(self) -> Result<i64> {
        let bound = self.bind(true)?;
        let table = S::metas()[0].name;
        crate::db::read_on_conn!(self.db, "join_count", table, |conn| {
            let rows = conn.query(&bound.sql, &bound.params()).await?;
            match rows.first() {
                Some(row) => row.try_get::<_, i64>(0).map_err(Error::from),
                None => Ok(0),
            }
        })
        .await
    }

    /// The statement — the rows, or (`count`) their number — from this handle's
    /// template of its shape when there is one (rendered once per shape, as for
    /// single-table queries), else rendered now and kept.
    fn bind(&self, count: bool) -> Result<Bound<'static>> {
        if let Some(reason) = &self.refused {
            return Err(Error::Misuse(reason.clone()));
        }
        let join = std::any::TypeId::of::<(S, D)>();
        let rendered = &self.db.shared.rendered;
        let shape = self.shape(count);
        if let Some(shape) = &shape
            && let Some(template) = rendered.get(join, shape)
        {
            let mut values = Vec::new();
            let metas = S::metas();
            for (table, node) in &self.filters {
                filter::values(metas[*table].name, node, &mut values)?;
            }
            return Ok(template.bind(values, self.limit, self.offset));
        }
        let bound = self.render(count)?;
        if let Some(shape) = shape
            && let Some(template) = bound.template(self.limit, self.offset)
        {
            rendered.put(join, shape, template);
        }
        Ok(bound)
    }

    /// Everything the SQL depends on, never a value; `None` for a filter too large to
    /// keep a template for. (The tables are in the template's key, `(S, D)`.)
    fn shape(&self, count: bool) -> Option<Vec<u64>> {
        const LIMIT: usize = 512;
        let mut shape = Vec::with_capacity(32);
        shape.extend([
            u64::from(count),
            u64::from(self.with_deleted),
            u64::from(self.base_deleted),
            u64::from(self.limit.is_some()),
            u64::from(self.offset.is_some()),
            self.links.len() as u64,
        ]);
        for link in &self.links {
            shape.extend([
                u64::from(link.left),
                link.from.0 as u64,
                link.from.1 as u64,
                link.to as u64,
            ]);
        }
        match &self.selection {
            Some(columns) if !count => {
                shape.push(columns.len() as u64);
                for (table, column) in columns {
                    shape.extend([*table as u64, *column as u64]);
                }
            }
            _ => shape.push(u64::MAX),
        }
        if !count {
            shape.push(self.order.len() as u64);
            for key in &self.order {
                let nulls = key.nulls.map_or(0, |first| 1 + u64::from(first));
                shape.extend([
                    key.table as u64,
                    key.column as u64,
                    u64::from(key.descending),
                    nulls,
                ]);
            }
        }
        shape.push(self.filters.len() as u64);
        for (table, node) in &self.filters {
            shape.push(*table as u64);
            if !filter::shape(node, &mut shape, LIMIT) {
                return None;
            }
        }
        Some(shape)
    }

    /// Renders the statement.
    fn render(&self, count: bool) -> Result<Bound<'static>> {
        let metas = S::metas();
        let alias = |i: usize| format!("t{i}");
        let mut binder = Binder::default();
        let mut q = sea_query::Query::select();
        q.from_as(sql::table_ref(metas[0]), Alias::new(alias(0)));
        for (n, link) in self.links.iter().enumerate() {
            let table = n + 1;
            let meta = metas[table];
            let (from_table, from_column) = link.from;
            let mut on =
                filter::column_expr(metas[from_table], Some(&alias(from_table)), from_column)
                    .eq(filter::column_expr(meta, Some(&alias(table)), link.to));
            if !self.with_deleted
                && let Some(soft) = meta.soft_delete
            {
                on = on.and(filter::column_expr(meta, Some(&alias(table)), soft).is_null());
            }
            let kind = match link.left {
                true => JoinType::LeftJoin,
                false => JoinType::InnerJoin,
            };
            q.join_as(kind, sql::table_ref(meta), Alias::new(alias(table)), on);
        }
        if !self.with_deleted
            && !self.base_deleted
            && let Some(soft) = metas[0].soft_delete
        {
            q.and_where(filter::column_expr(metas[0], Some(&alias(0)), soft).is_null());
        }
        for (table, node) in &self.filters {
            q.and_where(filter::render_as(
                metas[*table],
                Some(&alias(*table)),
                node,
                &mut binder,
            )?);
        }
        if count {
            return self.finish_count(q, binder, metas[0].name);
        }
        match &self.selection {
            Some(columns) => {
                for (table, column) in columns {
                    q.expr(filter::column_expr(
                        metas[*table],
                        Some(&alias(*table)),
                        *column,
                    ));
                }
            }
            None => {
                for (table, meta) in metas.iter().enumerate() {
                    for column in 0..meta.columns.len() {
                        q.expr(filter::column_expr(meta, Some(&alias(table)), column));
                    }
                }
            }
        }
        for key in &self.order {
            let expr = filter::column_expr(metas[key.table], Some(&alias(key.table)), key.column);
            let order = match key.descending {
                true => SeaOrder::Desc,
                false => SeaOrder::Asc,
            };
            match key.nulls {
                Some(true) => q.order_by_expr_with_nulls(expr, order, NullOrdering::First),
                Some(false) => q.order_by_expr_with_nulls(expr, order, NullOrdering::Last),
                None => q.order_by_expr(expr, order),
            };
        }
        self.page(&mut q);
        binder.finish(q).within_limits(metas[0].name)
    }

    fn page(&self, q: &mut SelectStatement) {
        if let Some(n) = self.limit {
            q.limit(n);
        }
        if let Some(n) = self.offset {
            q.offset(n);
        }
    }

    /// `count(*)` over the joined rows, through a subquery when limit or offset apply.
    fn finish_count(
        &self,
        mut q: SelectStatement,
        binder: Binder<'static>,
        table: &'static str,
    ) -> Result<Bound<'static>> {
        if self.limit.is_none() && self.offset.is_none() {
            q.expr(Expr::cust("count(*)"));
            return binder.finish(q).within_limits(table);
        }
        q.expr(Expr::cust("1"));
        self.page(&mut q);
        let outer = sea_query::Query::select()
            .expr(Expr::cust("count(*)"))
            .from_subquery(q, Alias::new("__page"))
            .to_owned();
        binder.finish(outer).within_limits(table)
    }
}

/// How a join's rows decode: whole models ([`WholeRow`]) or a selection ([`Picked`]).
#[doc(hidden)]
pub trait JoinDecode<S>: Send + 'static {
    type Output: Send + 'static;
    fn decode(row: &Row) -> Result<Self::Output>;
}

impl<S: Tables> JoinDecode<S> for WholeRow {
    type Output = S::Output;
    fn decode(row: &Row) -> Result<S::Output> {
        S::decode(row)
    }
}

/// Decodes a [`JoinSelection`].
#[doc(hidden)]
pub struct Picked<C, I>(PhantomData<fn() -> (C, I)>);

impl<S, I: 'static, C: JoinSelection<S, I> + 'static> JoinDecode<S> for Picked<C, I> {
    type Output = C::Output;
    fn decode(row: &Row) -> Result<C::Output> {
        C::decode(row)
    }
}

/// Columns of a join to select: one [`Column`] or a tuple of them, from any of its
/// tables.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a selection of this join's columns",
    label = "a column, or a tuple of up to six columns, of tables in the join"
)]
pub trait JoinSelection<S, I> {
    /// What one row decodes into.
    type Output: Send + 'static;
    /// (table position, column position) of each selected column.
    #[doc(hidden)]
    fn columns(&self) -> Vec<(usize, usize)>;
    /// Decodes one row.
    #[doc(hidden)]
    fn decode(row: &Row) -> Result<Self::Output>;
}

type ValueOf<S, M, I, T> = <<S as Has<M, I>>::Slot as Joined>::Value<T>;

fn get<M: Table, V: ColumnType>(row: &Row, i: usize, column: usize) -> Result<V> {
    row.try_get(i)
        .map_err(|e| crate::table::decode_error::<M>(column, e))
}

impl<S: Has<M, I>, M: Table, I, T: ColumnType> JoinSelection<S, I> for Column<M, T> {
    type Output = ValueOf<S, M, I, T>;
    fn columns(&self) -> Vec<(usize, usize)> {
        vec![(<S as Has<M, I>>::POSITION, self.index())]
    }
    fn decode(row: &Row) -> Result<Self::Output> {
        get::<M, _>(row, 0, usize::MAX)
    }
}

macro_rules! join_selections {
    ($(($($m:ident $i:ident $t:ident $v:ident $n:tt),+)),* $(,)?) => {$(
        impl<S, $($m: Table, $i, $t: ColumnType),+> JoinSelection<S, ($($i,)+)>
            for ($(Column<$m, $t>,)+)
        where
            $(S: Has<$m, $i>,)+
        {
            type Output = ($(ValueOf<S, $m, $i, $t>,)+);
            fn columns(&self) -> Vec<(usize, usize)> {
                let ($($v,)+) = self;
                vec![$((<S as Has<$m, $i>>::POSITION, $v.index())),+]
            }
            fn decode(row: &Row) -> Result<Self::Output> {
                Ok(($(get::<$m, _>(row, $n, usize::MAX)?,)+))
            }
        }
    )*};
}

join_selections!(
    (M1 I1 T1 a 0),
    (M1 I1 T1 a 0, M2 I2 T2 b 1),
    (M1 I1 T1 a 0, M2 I2 T2 b 1, M3 I3 T3 c 2),
    (M1 I1 T1 a 0, M2 I2 T2 b 1, M3 I3 T3 c 2, M4 I4 T4 d 3),
    (M1 I1 T1 a 0, M2 I2 T2 b 1, M3 I3 T3 c 2, M4 I4 T4 d 3, M5 I5 T5 e 4),
    (M1 I1 T1 a 0, M2 I2 T2 b 1, M3 I3 T3 c 2, M4 I4 T4 d 3, M5 I5 T5 e 4, M6 I6 T6 f 5),
);
