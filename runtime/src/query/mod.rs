//! The typed query builder: `db.query::<M>()` with selected columns, filters,
//! ordering, limit and offset — the seed's
//! `db.query('profiles', { select, eq, order, limit })`, checked by the compiler.
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
use crate::sql::{self, Binder};
use crate::table::{Column, Table};
use crate::types::ColumnType;

mod filter;

pub use filter::{Filter, IntoValue};
use filter::{Node, condition};

/// One ordering key, from [`Column::asc`] or [`Column::desc`].
pub struct OrderBy<M> {
    column: usize,
    descending: bool,
    nulls: Option<bool>,
    _model: PhantomData<fn() -> M>,
}

impl<M> Clone for OrderBy<M> {
    fn clone(&self) -> Self {
        OrderBy { column: self.column, descending: self.descending, nulls: self.nulls, _model: PhantomData }
    }
}

impl<M> OrderBy<M> {
    pub(crate) fn new(column: usize, descending: bool) -> Self {
        OrderBy { column, descending, nulls: None, _model: PhantomData }
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
    type Output: Send + 'static;
    /// The selected columns' positions in the model's metadata.
    fn indices(&self) -> Vec<usize>;
    /// Decodes one row of the selected columns.
    fn decode(row: &Row) -> Result<Self::Output>;
}

fn get<M: Table, T: FromSqlOwned>(row: &Row, i: usize, column: usize) -> Result<T> {
    row.try_get(i).map_err(|e| Error::Decode {
        table: M::META.name,
        column: M::META.columns.get(column).map_or("?", |c| c.name),
        source: Box::new(e),
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
}

/// Decodes whole rows into the model.
#[doc(hidden)]
pub struct WholeRow;

impl<M: Table> Decode<M> for WholeRow {
    type Output = M;
    fn decode(row: &Row) -> Result<M> {
        M::from_row(row)
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
    _decode: PhantomData<fn() -> D>,
}

impl Db {
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
            _decode: PhantomData,
        }
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

    fn statement(
        self,
        binder: &mut Binder<'static>,
        select: impl FnOnce(&mut SelectStatement),
    ) -> SelectStatement {
        let meta = M::META;
        let mut q = sea_query::Query::select();
        q.from(sql::table_ref(meta));
        select(&mut q);
        if !self.filters.is_empty() {
            let all = Node::And(self.filters);
            q.and_where(condition(meta, all, binder));
        }
        for key in self.order {
            let column = Alias::new(meta.columns[key.column].name);
            let order = if key.descending {
                SeaOrder::Desc
            } else {
                SeaOrder::Asc
            };
            match key.nulls {
                Some(true) => q.order_by_with_nulls(column, order, NullOrdering::First),
                Some(false) => q.order_by_with_nulls(column, order, NullOrdering::Last),
                None => q.order_by(column, order),
            };
        }
        if let Some(n) = self.limit {
            q.limit(n);
        }
        if let Some(n) = self.offset {
            q.offset(n);
        }
        q
    }

    /// Runs the query and returns every row.
    pub async fn all(self) -> Result<Vec<D::Output>> {
        let meta = M::META;
        let db = self.db.clone();
        let columns = self.columns.clone();
        let mut binder = Binder::default();
        let q = self.statement(&mut binder, |q| match &columns {
            Some(indices) => {
                q.columns(indices.iter().map(|i| Alias::new(meta.columns[*i].name)));
            }
            None => {
                q.columns(sql::column_idens(meta));
            }
        });
        let bound = binder.finish(&q);
        db.run_read("query", meta.name, async |conn| {
            let rows = conn.query(&bound.sql, &bound.params()).await?;
            rows.iter().map(D::decode).collect()
        })
        .await
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
        let meta = M::META;
        let db = self.db.clone();
        let paged = self.limit.is_some() || self.offset.is_some();
        let mut binder = Binder::default();
        let mut q = Query {
            order: Vec::new(),
            ..self
        }
        .statement(&mut binder, |q| {
            if paged {
                q.expr(Expr::cust("1"));
            } else {
                q.expr(Expr::cust("count(*)"));
            }
        });
        if paged {
            q = sea_query::Query::select()
                .expr(Expr::cust("count(*)"))
                .from_subquery(q, Alias::new("__page"))
                .to_owned();
        }
        let bound = binder.finish(&q);
        db.run_read("count", meta.name, async |conn| {
            let rows = conn.query(&bound.sql, &bound.params()).await?;
            rows.first()
                .map_or(Ok(0), |r| get::<M, i64>(r, 0, usize::MAX))
        })
        .await
    }

    /// Whether any row matches.
    pub async fn exists(self) -> Result<bool> {
        Ok(self.limit(1).count().await? > 0)
    }
}

