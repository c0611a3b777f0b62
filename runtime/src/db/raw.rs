//! Hand-written SQL with Tabula's connection handling: the statement deadline, the
//! transaction or user scope of the handle, the monitoring — and, for [`Db::sql`], rows
//! decoded into a model by column name.

use crate::error::{Error, Result};
use crate::sql::quote_ident;
use crate::table::{Param, Table};

/// The longest statement `Db::sql` takes (a bound on what is sent, not a style rule).
const MAX_SQL_BYTES: usize = 1 << 20;

/// `sql` without trailing semicolons and blanks, refused if empty or huge.
fn statement_text(sql: &str) -> Result<&str> {
    let text = sql.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    if text.trim().is_empty() {
        return Err(Error::Validation("an empty SQL statement".into()));
    }
    if text.len() > MAX_SQL_BYTES {
        return Err(Error::Validation(format!(
            "a SQL statement of {} bytes is over the limit of {MAX_SQL_BYTES}",
            text.len()
        )));
    }
    Ok(text)
}

impl super::Db {
    /// Runs hand-written SQL — a `SELECT`, or an `INSERT` / `UPDATE` / `DELETE` with
    /// `RETURNING` — and decodes its rows into `M`, taking each of the model's columns
    /// *by name* from what the statement returns (in any order; extra columns are
    /// ignored). A column the model has and the statement does not return is the
    /// server's error naming it; a value of the wrong type is [`Error::Decode`] naming
    /// the column. Parameters are `$1`, `$2`, …, bound, never spliced.
    ///
    /// It runs like every other call of this handle: under the statement deadline, in
    /// its transaction, under its user scope (Row Level Security applies). What it
    /// writes is not known to the cache: call [`Db::invalidate`](crate::Db::invalidate) or
    /// [`Db::invalidate_table`](crate::Db::invalidate_table) after a write.
    ///
    /// A change it makes to the session's search path or role (`SET search_path`,
    /// `SET ROLE`, `set_config` of either), a temporary table, or a transaction block
    /// left open does not outlive the call: one more round trip reads the session's
    /// state, and a connection no longer in its first state is closed when let go. A
    /// custom setting (`app.tenant`) it changes is not seen (PostgreSQL lists none) and
    /// stays on that pooled connection. Session settings belong in
    /// [`DbConfig::after_connect`](crate::DbConfig::after_connect).
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let long: Vec<Note> = db
    ///     .sql("SELECT * FROM note WHERE length(body) > $1 ORDER BY id", &[&200_i32])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn sql<M: Table>(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<M>> {
        let text = statement_text(sql)?;
        let columns: Vec<String> = M::META
            .columns
            .iter()
            .map(|c| format!("__tabula_sql.{}", quote_ident(c.name)))
            .collect();
        // A CTE takes a data-modifying statement too (`UPDATE … RETURNING *`); the
        // outer SELECT puts the model's columns, by name, where `from_row` expects them.
        let wrapped = format!(
            "WITH __tabula_sql AS ({text}\n) SELECT {} FROM __tabula_sql",
            columns.join(", ")
        );
        let mark = self.write_mark();
        let rows = self
            .run("sql", M::META.name, async |conn| {
                let rows = conn.query_decode(&wrapped, params, M::from_row).await;
                self.learn_names(conn).await;
                rows
            })
            .await;
        // It may have written (see `db/replica.rs`).
        self.note_raw_write().await;
        mark.done();
        rows
    }

    /// Runs hand-written SQL and returns the driver's rows, for results no model
    /// describes (aggregates, joins into tuples): `row.try_get::<_, i64>(0)`. Like
    /// [`Db::sql`](crate::Db::sql), it runs under the handle's deadline, transaction and scope.
    ///
    /// A change it makes to the session's search path or role (`SET search_path`,
    /// `SET ROLE`, `set_config` of either), a temporary table, or a transaction block
    /// left open does not outlive the call: one more round trip reads the session's
    /// state, and a connection no longer in its first state is closed when let go. A
    /// custom setting (`app.tenant`) it changes is not seen (PostgreSQL lists none) and
    /// stays on that pooled connection. Session settings belong in
    /// [`DbConfig::after_connect`](crate::DbConfig::after_connect).
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let rows = db.sql_rows("SELECT status, count(*) FROM profiles GROUP BY status", &[]).await?;
    /// for row in rows {
    ///     let (status, n): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn sql_rows(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let text = statement_text(sql)?;
        let mark = self.write_mark();
        let rows = self
            .run("sql", "-", async |conn| {
                let rows = conn.query(text, params).await;
                self.learn_names(conn).await;
                rows
            })
            .await;
        // It may have written (see `db/replica.rs`).
        self.note_raw_write().await;
        mark.done();
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::statement_text;

    #[test]
    fn trailing_semicolons_go_and_empty_statements_are_refused() {
        assert_eq!(statement_text("SELECT 1 ;\n").ok(), Some("SELECT 1"));
        assert!(statement_text(" ; ").is_err());
        assert!(statement_text(&"x".repeat((1 << 20) + 1)).is_err());
    }
}
