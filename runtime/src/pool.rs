//! The connection pool: bb8 with a manager whose connections carry their own
//! prepared-statement cache.
//!
//! Why bb8 and a manager of our own rather than bb8-postgres or deadpool-postgres: bb8
//! is already in the tree for Redis (bb8-redis), and owning the manager lets each
//! connection carry its statement cache and a "mid-transaction" flag. The flag is how a
//! connection abandoned inside a transaction (an error path, a panic, a dropped future)
//! is never handed out again: `has_broken` reports it, bb8 closes it, and PostgreSQL
//! rolls the transaction back when the socket closes. A connection whose socket died is
//! caught the same way (`Client::is_closed`), without a round trip on every checkout.

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::error::{Error, Result};
use crate::table::Param;

/// Statements kept per connection before the cache is emptied. Fixed model statements
/// are few; the bound keeps dynamic SQL (e.g. `IN` lists of many lengths) from growing
/// the cache without limit.
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// A PostgreSQL connection with its prepared-statement cache.
pub(crate) struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// Set between BEGIN and COMMIT/ROLLBACK; a connection returned with it set is closed.
    pub(crate) in_transaction: bool,
    /// Statements (a scoped BEGIN) still to send; they travel in the same pipeline as
    /// the next statement instead of costing a round trip of their own.
    pub(crate) pending_setup: Option<String>,
}

impl PgConn {
    /// The prepared statement for `sql`, preparing it on first use on this connection.
    pub(crate) async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= STATEMENT_CACHE_CAPACITY {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(crate) async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        let result = self.query_once(sql, params).await;
        if self.forget_stale_plan(sql, &result) {
            return self.query_once(sql, params).await;
        }
        result
    }

    async fn query_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        let statement = self.prepare(sql).await?;
        let pending = self.pending_setup.take();
        run_after(&self.client, pending, self.client.query(&statement, params)).await
    }

    pub(crate) async fn query_opt(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>> {
        let result = self.query_opt_once(sql, params).await;
        if self.forget_stale_plan(sql, &result) {
            return self.query_opt_once(sql, params).await;
        }
        result
    }

    async fn query_opt_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
        let statement = self.prepare(sql).await?;
        let pending = self.pending_setup.take();
        run_after(
            &self.client,
            pending,
            self.client.query_opt(&statement, params),
        )
        .await
    }

    pub(crate) async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let result = self.execute_once(sql, params).await;
        if self.forget_stale_plan(sql, &result) {
            return self.execute_once(sql, params).await;
        }
        result
    }

    async fn execute_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let statement = self.prepare(sql).await?;
        let pending = self.pending_setup.take();
        run_after(
            &self.client,
            pending,
            self.client.execute(&statement, params),
        )
        .await
    }

    /// A cached statement whose plan a schema change invalidated ("cached plan must
    /// not change result type", 0A000) or that the server dropped (26000) is prepared
    /// again — once, and only outside a transaction, where the failure did not abort
    /// anything.
    fn forget_stale_plan<T>(&mut self, sql: &str, result: &Result<T>) -> bool {
        let stale = matches!(result, Err(crate::Error::Database { sqlstate, .. }) if sqlstate == "0A000" || sqlstate == "26000");
        if stale && !self.in_transaction {
            self.statements.remove(sql);
            return true;
        }
        false
    }

    /// Runs statements without parameters (BEGIN, COMMIT, migrations) in one round trip.
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<()> {
        match self.pending_setup.take() {
            Some(setup) => Ok(self
                .client
                .batch_execute(&format!("{setup}; {sql}"))
                .await?),
            None => Ok(self.client.batch_execute(sql).await?),
        }
    }

    /// Sends any pending setup now (before handing out the raw client).
    pub(crate) async fn flush_setup(&mut self) -> Result<()> {
        if let Some(setup) = self.pending_setup.take() {
            self.client.batch_execute(&setup).await?;
        }
        Ok(())
    }

    /// The underlying client, for work Tabula has no API for.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Runs `statement` pipelined behind `setup` (if any): both requests go out before
/// either answer is awaited, and PostgreSQL runs them in order. A failed setup fails
/// the call whatever the statement did (it cannot have run in the intended
/// transaction); the connection, still marked in a transaction, is then closed rather
/// than reused.
async fn run_after<T>(
    client: &Client,
    setup: Option<String>,
    statement: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match setup {
        None => Ok(statement.await?),
        Some(setup) => {
            let (setup, result) = tokio::join!(client.batch_execute(&setup), statement);
            setup?;
            Ok(result?)
        }
    }
}

/// Opens connections for bb8.
pub(crate) struct PgManager {
    pub(crate) config: tokio_postgres::Config,
}

impl PgManager {
    pub(crate) fn new(mut config: tokio_postgres::Config, connect_timeout: Duration) -> Self {
        config.connect_timeout(connect_timeout);
        PgManager { config }
    }
}

impl bb8::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = Error;

    async fn connect(&self) -> Result<PgConn> {
        let (client, connection) = self.config.connect(NoTls).await?;
        // The connection task ends when the socket closes; `Client::is_closed` then
        // reports it and the pool drops the client.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection closed");
            }
        });
        Ok(PgConn {
            client,
            statements: HashMap::new(),
            in_transaction: false,
            pending_setup: None,
        })
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<()> {
        conn.batch("").await
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed() || conn.in_transaction
    }
}

/// Keeps the last error bb8 hit while opening a connection. bb8 does not return connect
/// errors to the caller waiting for a connection — the caller only times out — so the
/// pool reports this instead of a bare timeout: a wrong password or an unreachable
/// server is named, not disguised as "pool busy".
#[derive(Debug, Clone, Default)]
pub(crate) struct LastConnectError(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl LastConnectError {
    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().ok()?.take()
    }
}

impl bb8::ErrorSink<Error> for LastConnectError {
    fn sink(&self, error: Error) {
        tracing::warn!(%error, "cannot open a database connection");
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(error.to_string());
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<Error>> {
        Box::new(self.clone())
    }
}
