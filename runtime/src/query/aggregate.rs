//! Aggregates over a query's rows: `sum`, `avg`, `min`, `max` of a column, and counts
//! or sums per value of a grouping column — typed as PostgreSQL returns them.

use std::marker::PhantomData;

use sea_query::{Alias, BinOper, Expr, ExprTrait, Order};
use tokio_postgres::Row;
use tokio_postgres::types::FromSqlOwned;

use super::{Decode, IntoValue, Query, Selection};
use crate::error::Result;
use crate::sql::{self, Binder};
use crate::table::{Column, Table};
use crate::types::ColumnType;

/// A numeric column type, and the type of PostgreSQL's `sum` of it: `int2` and `int4`
/// sum to `int8` (`i64`); `int8` sums to `numeric`, read back as `i64` (an overflow is
/// PostgreSQL's error, never a wrapped number); `real` and `double precision` sum to
/// themselves.
pub trait Summable: ColumnType {
    /// What the sum decodes to.
    type Sum: FromSqlOwned + Send + 'static;
    /// The SQL of the sum, `{}` standing for the column.
    const SUM: &'static str = "sum({})";
}

impl Summable for i16 {
    type Sum = i64;
}
impl Summable for i32 {
    type Sum = i64;
}
impl Summable for i64 {
    type Sum = i64;
    const SUM: &'static str = "sum({})::int8";
}
impl Summable for f32 {
    type Sum = f32;
}
impl Summable for f64 {
    type Sum = f64;
}
#[cfg(feature = "decimal")]
impl Summable for rust_decimal::Decimal {
    type Sum = rust_decimal::Decimal;
}

/// A column type PostgreSQL orders, so `min` and `max` exist for it: numbers, text,
/// dates and times, `inet`, `numeric`, enums (in declaration order), arrays
/// (element by element), and `Option` of each. Not `bool`, `uuid`, `bytea` or JSON,
/// which PostgreSQL has no `min` / `max` of.
#[diagnostic::on_unimplemented(
    message = "PostgreSQL has no `min` / `max` of `{Self}`",
    label = "not an ordered column type"
)]
pub trait Ordered: ColumnType {}

macro_rules! ordered {
    ($($(#[$attr:meta])* $ty:ty),* $(,)?) => {$($(#[$attr])* impl Ordered for $ty {})*};
}

ordered!(
    i16,
    i32,
    i64,
    f32,
    f64,
    String,
    std::net::IpAddr,
    #[cfg(feature = "chrono")]
    chrono::DateTime<chrono::Utc>,
    #[cfg(feature = "chrono")]
    chrono::NaiveDate,
    #[cfg(feature = "chrono")]
    chrono::NaiveDateTime,
    #[cfg(feature = "chrono")]
    chrono::NaiveTime,
    #[cfg(feature = "decimal")]
    rust_decimal::Decimal,
);

impl<T: Ordered> Ordered for Option<T> {}
impl<T: crate::ArrayElement> Ordered for Vec<T> {}

impl<T: Summable> Summable for Option<T>
where
    Option<T>: ColumnType,
{
    type Sum = T::Sum;
    const SUM: &'static str = T::SUM;
}

impl<M: Table, D: Decode<M>> Query<M, D> {
    /// The rows of `SELECT <exprs> FROM … WHERE <filters> [GROUP BY g ORDER BY g]`;
    /// with a limit or an offset, over the rows they keep (in the query's order), as
    /// `count` counts them.
    async fn aggregate_rows(
        self,
        operation: &'static str,
        exprs: Vec<String>,
        group: Option<usize>,
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.no_lock(operation)?;
        let meta = M::META;
        // In a block: sea-query statements are not Send.
        let bound = {
            let mut binder = Binder::default();
            let mut q = self.rows_to_aggregate(&mut binder)?;
            if let Some(g) = group {
                let column = Alias::new(meta.columns[g].name);
                q.column(column.clone())
                    .group_by_col(column.clone())
                    .order_by(column, Order::Asc);
            }
            for expr in exprs {
                q.expr(Expr::cust(expr));
            }
            binder.finish(q).within_limits(meta.name)?
        };
        let db = self.db.clone();
        crate::db::read_on_conn!(db, operation, meta.name, |conn| {
            conn.query(&bound.sql, &bound.params()).await
        })
        .await
    }

    /// `SELECT … FROM` the rows an aggregate covers: the matching rows, or — with a
    /// limit or an offset — the rows they keep, in the query's order, as a subquery.
    fn rows_to_aggregate(
        &self,
        binder: &mut Binder<'static>,
    ) -> Result<sea_query::SelectStatement> {
        match (self.limit, self.offset) {
            (None, None) => self.statement(binder, &[], &[], None, None),
            (limit, offset) => {
                let all: Vec<usize> = (0..M::META.columns.len()).collect();
                let rows = self.statement(binder, &all, &self.order, limit, offset)?;
                Ok(sea_query::Query::select()
                    .from_subquery(rows, Alias::new("__rows"))
                    .to_owned())
            }
        }
    }

    fn over<T>(column: &Column<M, T>, template: &str) -> String {
        template.replace(
            "{}",
            &sql::quote_ident(M::META.columns[column.index()].name),
        )
    }

    /// The sum of `column` over the matching rows (`None` when none match, or all are
    /// NULL).
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Order { #[table(primary_key)] pub id: i64, pub cents: i32 }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let total: Option<i64> = db.query::<Order>().sum(Order::CENTS).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sum<T: Summable>(self, column: Column<M, T>) -> Result<Option<T::Sum>> {
        let expr = Self::over(&column, T::SUM);
        let rows = self.aggregate_rows("sum", vec![expr], None).await?;
        one_value(rows)
    }

    /// The average of `column` over the matching rows, as `f64`.
    pub async fn avg<T: Summable>(self, column: Column<M, T>) -> Result<Option<f64>> {
        let expr = Self::over(&column, "avg({})::float8");
        let rows = self.aggregate_rows("avg", vec![expr], None).await?;
        one_value(rows)
    }

    /// The smallest value of `column` over the matching rows.
    pub async fn min<T: Ordered>(self, column: Column<M, T>) -> Result<Option<T::NonNull>> {
        let expr = Self::over(&column, "min({})");
        let rows = self.aggregate_rows("min", vec![expr], None).await?;
        one_value(rows)
    }

    /// The largest value of `column` over the matching rows.
    pub async fn max<T: Ordered>(self, column: Column<M, T>) -> Result<Option<T::NonNull>> {
        let expr = Self::over(&column, "max({})");
        let rows = self.aggregate_rows("max", vec![expr], None).await?;
        one_value(rows)
    }

    /// How many matching rows have each value of `column`, in the column's order.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Post { #[table(primary_key)] pub id: i64, pub user_id: i64 }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let per_user: Vec<(i64, i64)> = db.query::<Post>().count_by(Post::USER_ID).await?;
    /// # Ok(()) }
    /// ```
    pub async fn count_by<G: ColumnType>(self, group: Column<M, G>) -> Result<Vec<(G, i64)>> {
        let rows = self
            .aggregate_rows("count_by", vec!["count(*)".into()], Some(group.index()))
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The sum of `column` for each value of `group`, in the group column's order.
    pub async fn sum_by<G: ColumnType, T: Summable>(
        self,
        group: Column<M, G>,
        column: Column<M, T>,
    ) -> Result<Vec<(G, Option<T::Sum>)>> {
        let expr = Self::over(&column, T::SUM);
        let rows = self
            .aggregate_rows("sum_by", vec![expr], Some(group.index()))
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }
}

/// The single value of a one-row aggregate (NULL → `None`).
fn one_value<T: FromSqlOwned>(rows: Vec<tokio_postgres::Row>) -> Result<Option<T>> {
    match rows.first() {
        Some(row) => Ok(row.try_get::<_, Option<T>>(0)?),
        None => Ok(None),
    }
}

/// An aggregate of model `M`'s rows whose value decodes to `T`: from a column's
/// [`sum`](Column::sum), [`avg`](Column::avg), [`min`](Column::min),
/// [`max`](Column::max) or [`count`](Column::count), or [`count_rows`]. Used in
/// [`GroupQuery::aggregate`] and, compared with a value, in [`GroupQuery::having`].
pub struct Aggregate<M, T> {
    sql: String,
    _types: PhantomData<fn() -> (M, T)>,
}

impl<M, T> Aggregate<M, T> {
    fn new(sql: String) -> Self {
        Aggregate {
            sql,
            _types: PhantomData,
        }
    }

    fn compare<V: IntoValue<T>>(self, op: BinOper, value: V) -> Having<M> {
        Having {
            sql: self.sql,
            op,
            value: value.into_param(),
            _model: PhantomData,
        }
    }

    /// The aggregate equals `value` (for [`GroupQuery::having`]).
    pub fn eq<V: IntoValue<T>>(self, value: V) -> Having<M> {
        self.compare(BinOper::Equal, value)
    }

    /// The aggregate differs from `value`.
    pub fn ne<V: IntoValue<T>>(self, value: V) -> Having<M> {
        self.compare(BinOper::NotEqual, value)
    }

    /// The aggregate is greater than `value`.
    pub fn gt<V: IntoValue<T>>(self, value: V) -> Having<M> {
        self.compare(BinOper::GreaterThan, value)
    }

    /// The aggregate is at least `value`.
    pub fn ge<V: IntoValue<T>>(self, value: V) -> Having<M> {
        self.compare(BinOper::GreaterThanOrEqual, value)
    }

    /// The aggregate is less than `value`.
    pub fn lt<V: IntoValue<T>>(self, value: V) -> Having<M> {
        self.compare(BinOper::SmallerThan, value)
    }

    /// The aggregate is at most `value`.
    pub fn le<V: IntoValue<T>>(self, value: V) -> Having<M> {
        self.compare(BinOper::SmallerThanOrEqual, value)
    }
}

/// `count(*)`: how many rows each group has.
pub fn count_rows<M: Table>() -> Aggregate<M, i64> {
    Aggregate::new("count(*)".to_owned())
}

impl<M: Table, T: ColumnType> Column<M, T> {
    fn aggregate<O>(self, template: &str) -> Aggregate<M, O> {
        Aggregate::new(
            template.replace("{}", &sql::quote_ident(M::META.columns[self.index()].name)),
        )
    }

    /// The sum of this column in each group (`None` when all are NULL); typed as
    /// [`Summable`] says.
    pub fn sum(self) -> Aggregate<M, Option<T::Sum>>
    where
        T: Summable,
        Option<T::Sum>: ColumnType,
    {
        self.aggregate(T::SUM)
    }

    /// The average of this column in each group, as `f64`.
    pub fn avg(self) -> Aggregate<M, Option<f64>>
    where
        T: Summable,
    {
        self.aggregate("avg({})::float8")
    }

    /// The smallest value of this column in each group (`None` when all are NULL).
    pub fn min(self) -> Aggregate<M, Option<T::NonNull>>
    where
        T: Ordered,
    {
        self.aggregate("min({})")
    }

    /// The largest value of this column in each group (`None` when all are NULL).
    pub fn max(self) -> Aggregate<M, Option<T::NonNull>>
    where
        T: Ordered,
    {
        self.aggregate("max({})")
    }

    /// How many rows of each group have a value (not NULL) in this column.
    pub fn count(self) -> Aggregate<M, i64> {
        self.aggregate("count({})")
    }
}

/// A condition on a group's aggregate; see [`GroupQuery::having`].
pub struct Having<M> {
    sql: String,
    op: BinOper,
    value: crate::sql::OwnedParam,
    _model: PhantomData<fn() -> M>,
}

/// The aggregates a [`GroupQuery`] computes per group: one [`Aggregate`] or a tuple
/// of up to six.
pub trait Aggregates<M> {
    /// What they decode into.
    type Output: Send + 'static;
    /// Their SQL, in order.
    #[doc(hidden)]
    fn sql(self) -> Vec<String>;
    /// Decodes them from `row`, starting at column `at`.
    #[doc(hidden)]
    fn decode(row: &Row, at: usize) -> Result<Self::Output>;
}

impl<M, T: ColumnType> Aggregates<M> for Aggregate<M, T> {
    type Output = T;
    fn sql(self) -> Vec<String> {
        vec![self.sql]
    }
    fn decode(row: &Row, at: usize) -> Result<T> {
        Ok(row.try_get(at)?)
    }
}

macro_rules! aggregate_tuples {
    ($(($($t:ident $v:ident $i:tt),+)),* $(,)?) => {$(
        impl<M, $($t: ColumnType),+> Aggregates<M> for ($(Aggregate<M, $t>,)+) {
            type Output = ($($t,)+);
            fn sql(self) -> Vec<String> {
                let ($($v,)+) = self;
                vec![$($v.sql),+]
            }
            fn decode(row: &Row, at: usize) -> Result<Self::Output> {
                Ok(($(row.try_get::<_, $t>(at + $i)?,)+))
            }
        }
    )*};
}

aggregate_tuples!(
    (A a 0),
    (A a 0, B b 1),
    (A a 0, B b 1, C c 2),
    (A a 0, B b 1, C c 2, D d 3),
    (A a 0, B b 1, C c 2, D d 3, E e 4),
    (A a 0, B b 1, C c 2, D d 3, E e 4, F f 5),
);

/// A query grouped by some columns; from [`Query::group_by`]. Call
/// [`aggregate`](Self::aggregate) to say what to compute per group.
#[must_use = "a grouped query does nothing until .aggregate(…).all() runs it"]
pub struct GroupQuery<M, G, A = ()> {
    query: Query<M>,
    group: Vec<usize>,
    aggregates: Vec<String>,
    having: Vec<Having<M>>,
    /// How many groups to return and to skip ([`GroupQuery::limit`] / `offset`); the
    /// query's own limit and offset count rows, before grouping.
    groups_limit: Option<u64>,
    groups_offset: Option<u64>,
    _types: PhantomData<fn() -> (G, A)>,
}

impl<M: Table> Query<M> {
    /// Groups the matching rows by `columns` (one [`Column`] or a tuple of up to six):
    /// the query then returns one row per group, with the aggregates asked for by
    /// [`GroupQuery::aggregate`], ordered by the group columns.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Post { #[table(primary_key)] pub id: i64, pub user_id: i64, pub score: i32, pub draft: bool }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// use tabula::query::count_rows;
    ///
    /// // Per author of published posts: how many, their total score (int4 sums to int8)
    /// // — for authors with more than 10.
    /// let per_user: Vec<(i64, (i64, Option<i64>))> = db
    ///     .query::<Post>()
    ///     .filter(Post::DRAFT.eq(false))
    ///     .group_by(Post::USER_ID)
    ///     .aggregate((count_rows(), Post::SCORE.sum()))
    ///     .having(count_rows().gt(10))
    ///     .all()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn group_by<G: Selection<M>>(self, columns: G) -> GroupQuery<M, G> {
        GroupQuery {
            query: self,
            group: columns.indices(),
            aggregates: Vec::new(),
            having: Vec::new(),
            groups_limit: None,
            groups_offset: None,
            _types: PhantomData,
        }
    }
}

impl<M: Table, G: Selection<M>> GroupQuery<M, G> {
    /// The aggregates to compute for each group.
    pub fn aggregate<A: Aggregates<M>>(self, aggregates: A) -> GroupQuery<M, G, A> {
        GroupQuery {
            query: self.query,
            group: self.group,
            aggregates: aggregates.sql(),
            having: self.having,
            groups_limit: self.groups_limit,
            groups_offset: self.groups_offset,
            _types: PhantomData,
        }
    }
}

impl<M: Table, G: Selection<M>, A: Aggregates<M>> GroupQuery<M, G, A> {
    /// Keeps the groups whose aggregate meets `condition` (`HAVING`; several calls
    /// combine with AND). The aggregate need not be one of those returned.
    pub fn having(mut self, condition: Having<M>) -> Self {
        self.having.push(condition);
        self
    }

    /// Returns at most `n` groups. (A `limit` on the query before `group_by` counts
    /// rows: the groups then cover only the rows it keeps, in the query's order.)
    pub fn limit(mut self, n: u64) -> Self {
        self.groups_limit = Some(n);
        self
    }

    /// Skips the first `n` groups. (An `offset` on the query before `group_by` counts
    /// rows, as [`limit`](Self::limit) does.)
    pub fn offset(mut self, n: u64) -> Self {
        self.groups_offset = Some(n);
        self
    }

    /// Every group (after `having`), ordered by the group columns, with its
    /// aggregates; this `limit` and `offset` count groups, the query's count rows.
    pub async fn all(self) -> Result<Vec<(G::Output, A::Output)>> {
        let GroupQuery {
            query,
            group,
            aggregates,
            having,
            groups_limit,
            groups_offset,
            ..
        } = self;
        query.no_lock("group_by")?;
        let meta = M::META;
        // In a block: sea-query statements are not Send.
        let bound = {
            let mut binder = Binder::default();
            let mut q = query.rows_to_aggregate(&mut binder)?;
            for &g in &group {
                let column = Alias::new(meta.columns[g].name);
                q.column(column.clone()).group_by_col(column);
            }
            for sql in aggregates {
                q.expr(Expr::cust(sql));
            }
            for condition in having {
                let value = binder.owned(condition.value);
                q.and_having(Expr::cust(condition.sql).binary(condition.op, value));
            }
            for &g in &group {
                q.order_by(Alias::new(meta.columns[g].name), Order::Asc);
            }
            if let Some(n) = groups_limit {
                q.limit(n);
            }
            if let Some(n) = groups_offset {
                q.offset(n);
            }
            binder.finish(q).within_limits(meta.name)?
        };
        let at = group.len();
        let db = query.db.clone();
        crate::db::read_on_conn!(db, "group_by", meta.name, |conn| {
            conn.query_decode(&bound.sql, &bound.params(), |row| {
                Ok((G::decode(row)?, A::decode(row, at)?))
            })
            .await
        })
        .await
    }
}
