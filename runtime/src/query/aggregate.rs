//! Aggregates over a query's rows: `sum`, `avg`, `min`, `max` of a column, and counts
//! or sums per value of a grouping column — typed as PostgreSQL returns them.

use sea_query::{Alias, Expr, Order};
use tokio_postgres::types::FromSqlOwned;

use super::{Decode, Query};
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
impl<T: Summable> Summable for Option<T>
where
    Option<T>: ColumnType,
{
    type Sum = T::Sum;
    const SUM: &'static str = T::SUM;
}

impl<M: Table, D: Decode<M>> Query<M, D> {
    /// The rows of `SELECT <exprs> FROM … WHERE <filters> [GROUP BY g ORDER BY g]`
    /// (order, limit and offset of the query do not apply to an aggregate).
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
            let mut q = self.statement(&mut binder, &[], &[], None, None)?;
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
    pub async fn min<T: ColumnType>(self, column: Column<M, T>) -> Result<Option<T>> {
        let expr = Self::over(&column, "min({})");
        let rows = self.aggregate_rows("min", vec![expr], None).await?;
        one_value(rows)
    }

    /// The largest value of `column` over the matching rows.
    pub async fn max<T: ColumnType>(self, column: Column<M, T>) -> Result<Option<T>> {
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
