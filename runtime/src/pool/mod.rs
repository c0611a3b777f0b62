//! PostgreSQL connections and their pool (`slots.rs`): each connection carries its
//! own prepared-statement cache and a "mid-transaction" flag.
//!
//! The flag is how a connection abandoned inside a transaction (an error path, a
//! panic, a dropped future) is never handed out again: [`PgConn::release`] reports it,
//! the pool closes it, and PostgreSQL rolls the transaction back when the socket
//! closes. A connection whose socket died is caught the same way
//! (`Client::is_closed`), without a round trip on every checkout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use tokio_postgres::types::Type;
use tokio_postgres::{CancelToken, Client, Row, Statement};

use crate::tls::Connector;

mod slots;
pub(crate) use slots::{Pool, Pooled, Settings};

use crate::error::{Error, Result};
use crate::table::Param;

/// Statements kept per connection before the cache is emptied. Fixed model statements
/// are few; the bound keeps dynamic SQL (e.g. `IN` lists of many lengths) from growing
/// the cache without limit.
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// How the per-connection statement caches hash SQL text (see [`crate::sql::FastHash`]).
type TextHash = crate::sql::FastHash;

/// Switches a transaction to a user's role and claims. Both are bound parameters, never
/// spliced into SQL text, so no server setting (`standard_conforming_strings = off`)
/// and no claim value can change what the statement means.
const SET_SCOPE: &str =
    "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)";

/// The transaction id of the current transaction (NULL until it has written), and the
/// mark BEGIN set (see `db/tx.rs`). Asked behind statements until the id is known, and
/// in the same pipeline as COMMIT — so it is always prepared by then.
pub(crate) const CURRENT_XID: &str =
    "SELECT pg_current_xact_id_if_assigned()::text, current_setting('tabula.tx', true)";

/// What opens a transaction on a connection: sent in the same pipeline as the next
/// statement, so it costs no round trip of its own.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// `BEGIN` with its isolation level.
    pub(crate) begin: &'static str,
    /// The user scope to switch to (role, claims as JSON text).
    pub(crate) scope: Option<(&'static str, Arc<str>)>,
    /// A read of one's own: COMMIT travels in the same pipeline, behind the next
    /// statement, and the setup is armed again for any statement after it — so a user
    /// scope costs no round trip, and no statement ever runs outside it.
    pub(crate) one_shot: bool,
}

/// A PostgreSQL connection with its prepared-statement cache.
pub(crate) struct PgConn {
    /// Shared only with a cancel request in flight, which keeps the connection open
    /// until it was sent (a pooler forgets a cancel key with its client connection).
    client: Arc<Client>,
    /// Run again after a session reset (see `reset_session`).
    after_connect: Option<AfterConnect>,
    cancel: CancelToken,
    /// Where a cancel request for this connection goes out: the runtime its driver
    /// task runs on (the caller that gave up may be on another, or on none), and how
    /// long it may take (the connect timeout: a server that accepts and never answers
    /// must not hold the connection's place in the pool).
    canceller: Canceller,
    /// The task that drives the connection's socket: aborted, it closes the socket
    /// whoever holds the connection (see [`StatementCanceller::stop`]).
    driver: tokio::task::AbortHandle,
    /// Set when the connection's place in the pool was given back (see
    /// `slots::SharedPlace`).
    pub(crate) freed: Arc<std::sync::atomic::AtomicBool>,
    /// This connection's [`StatementCanceller`], built on first need (see
    /// `Pooled::stopper`).
    pub(crate) stopper: std::sync::OnceLock<Arc<StatementCanceller>>,
    /// How a cancel request reaches the server: as the connection did.
    tls: Connector,
    statements: HashMap<String, Statement, TextHash>,
    /// Behind a transaction-pooling proxy (PgBouncer, Supavisor): no named statement
    /// outlives a transaction, so statements go unnamed with the parameter types
    /// learned once per SQL text (see [`PgConn::statement`]).
    unnamed: bool,
    types: HashMap<String, Arc<[Type]>, TextHash>,
    /// Set between BEGIN and COMMIT/ROLLBACK; a connection returned with it set is closed.
    pub(crate) in_transaction: bool,
    /// Set while a statement is on its way or its answer is not read yet. A connection
    /// dropped with it set (a deadline fired, the caller's future was dropped) has its
    /// statement cancelled on the server and is closed, never handed out again.
    pub(crate) in_flight: bool,
    /// Set when the session may carry state Tabula did not put there (the raw client
    /// was handed out inside a transaction): the connection is closed on release.
    pub(crate) discard: bool,
    /// The transaction to open with the next statement (see [`Setup`]).
    pub(crate) pending_setup: Option<Setup>,
    /// The current transaction's id, once it has written (captured in the same
    /// pipeline as the write; see [`crate::db`]'s commit protocol).
    pub(crate) xid: Option<String>,
    /// The SQLSTATE of the last statement that failed in the current transaction.
    pub(crate) failure: Option<String>,
}

impl PgConn {
    /// The identity of the database this connection reaches, for cache namespaces:
    /// `db` + 16 hex digits of a hash of the cluster's system identifier (or, where
    /// the role may not read it, the server's address, port and start time — two
    /// clusters behind one address differ there; a restart then starts a cold cache)
    /// and the database's name and oid.
    pub(crate) async fn identity(&self) -> Result<String> {
        use sha2::Digest;
        // The simple protocol: no statement is prepared (a transaction-pooling proxy
        // may send each request to another server connection).
        let first_row = async |sql: &str| -> Result<Vec<Option<String>>> {
            let messages = self.client.simple_query(sql).await?;
            let row = messages.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            });
            let row = row.ok_or_else(|| Error::Connect(format!("no answer to {sql}")))?;
            Ok((0..row.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect())
        };
        let sysid = first_row("SELECT system_identifier::text FROM pg_control_system()")
            .await
            .ok()
            .and_then(|row| row.into_iter().next().flatten());
        let row = first_row(
            "SELECT current_database()::text, \
                    (SELECT oid::text FROM pg_database WHERE datname = current_database()), \
                    coalesce(host(inet_server_addr()), 'local') || ':' || \
                    coalesce(inet_server_port()::text, current_setting('port')) || '@' || \
                    pg_postmaster_start_time()::text",
        )
        .await?;
        let mut row = row.into_iter();
        let (name, oid, server) = (
            row.next().flatten().unwrap_or_default(),
            row.next().flatten(),
            row.next().flatten().unwrap_or_default(),
        );
        let seed = format!(
            "{}\0{name}\0{}",
            sysid.unwrap_or(server),
            oid.unwrap_or_default()
        );
        let digest = sha2::Sha256::digest(seed.as_bytes());
        Ok(format!(
            "db{}",
            digest
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }

    /// Opens a transaction with the next statement (see [`Setup`]).
    pub(crate) fn begin(&mut self, setup: Setup) {
        self.in_transaction = true;
        self.xid = None;
        self.failure = None;
        self.pending_setup = Some(setup);
    }

    /// The prepared statement for `sql`, preparing it on first use on this connection.
    pub(crate) async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        // A prepare is a round trip like any statement: given up half-way (a deadline,
        // a dropped future), the connection must not be trusted — nor, inside a
        // transaction, the transaction (see `db/tx.rs`, `end`).
        // A refusal is an answer: the connection is fine, the transaction (if any) is
        // aborted by the server, and its SQLSTATE is recorded like a statement's.
        let was_in_flight = std::mem::replace(&mut self.in_flight, true);
        let prepared = self.client.prepare(sql).await;
        self.in_flight = was_in_flight;
        let statement = match prepared {
            Ok(statement) => statement,
            Err(e) => return self.settle(Answer::failed(Error::from(e))),
        };
        if self.statements.len() >= STATEMENT_CACHE_CAPACITY {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// How `sql` is run on this connection: its prepared statement, or — behind a
    /// transaction-pooling proxy — its parameter types for an unnamed one.
    pub(crate) async fn statement(&mut self, sql: &str) -> Result<Stmt> {
        if !self.unnamed {
            return self.prepare(sql).await.map(Stmt::Named);
        }
        if let Some(types) = self.types.get(sql) {
            return Ok(Stmt::Unnamed(types.clone()));
        }
        let types: Arc<[Type]> = self.describe(sql).await?.into();
        if self.types.len() >= STATEMENT_CACHE_CAPACITY {
            self.types.clear();
        }
        self.types.insert(sql.to_owned(), types.clone());
        Ok(Stmt::Unnamed(types))
    }

    /// The types of the columns `sql` returns, asked of the server now — never from
    /// the statement cache (see `Db::insert_many`: a statement that is only described
    /// is not told stale when a column changes type).
    pub(crate) async fn column_types(&mut self, sql: &str) -> Result<Vec<Type>> {
        let was_in_flight = std::mem::replace(&mut self.in_flight, true);
        let prepared = self.client.prepare(sql).await;
        self.in_flight = was_in_flight;
        match prepared {
            // Dropping the statement closes it on the server.
            Ok(statement) => Ok(statement
                .columns()
                .iter()
                .map(|c| c.type_().clone())
                .collect()),
            Err(e) => self.settle(Answer::failed(Error::from(e))),
        }
    }

    /// The parameter types of `sql`, from a named statement that lives only inside a
    /// transaction — which a transaction-pooling proxy keeps on one server connection —
    /// and is closed before it ends, so no other client can ever meet its name.
    async fn describe(&mut self, sql: &str) -> Result<Vec<Type>> {
        // Inside a transaction the server already has open, the statement is pinned.
        let own = !(self.in_transaction && self.pending_setup.is_none());
        let was_in_flight = std::mem::replace(&mut self.in_flight, true);
        let client = &self.client;
        let described = async {
            if own {
                client.batch_execute("BEGIN").await?;
            }
            // Dropping the statement sends its Close ahead of COMMIT.
            let types = client.prepare(sql).await.map(|s| s.params().to_vec());
            if own {
                client.batch_execute("COMMIT").await?;
            }
            types
        }
        .await;
        self.in_flight = was_in_flight;
        match described {
            Ok(types) => Ok(types),
            Err(e) => self.settle(Answer::failed(Error::from(e))),
        }
    }

    pub(crate) async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        if let Some(statement) = self.ready(sql) {
            self.in_flight = true;
            let answer = match &statement {
                Stmt::Named(s) => self.client.query(s, params).await,
                Stmt::Unnamed(_) => {
                    let pairs = typed(params, &statement);
                    self.client.query_typed(sql, &pairs).await
                }
            };
            let result = self.settle_alone(answer);
            if !self.forget_stale_plan(&result) {
                return result;
            }
        }
        Box::pin(self.query_slow(sql, params)).await
    }

    /// [`PgConn::query`] with its statement to prepare or requests to pipeline.
    async fn query_slow(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        let result = self.query_once(sql, params).await;
        if self.forget_stale_plan(&result) {
            return self.query_once(sql, params).await;
        }
        result
    }

    /// The statement for `sql` when the next call is that statement alone: prepared
    /// already, and nothing to pipeline around it (no transaction to open, no
    /// transaction id to ask). The hot path: no lookup but one map probe, no request
    /// but the statement, and no future of the pipeline's size.
    fn ready(&self, sql: &str) -> Option<Stmt> {
        if self.pending_setup.is_some() || (self.in_transaction && self.xid.is_none()) {
            return None;
        }
        match self.unnamed {
            false => self.statements.get(sql).cloned().map(Stmt::Named),
            true => self.types.get(sql).cloned().map(Stmt::Unnamed),
        }
    }

    /// Records the answer of a statement that travelled alone (see [`PgConn::ready`]).
    fn settle_alone<T>(
        &mut self,
        answer: std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        self.in_flight = false;
        let result = answer.map_err(Error::from);
        if let Err(e) = &result
            && self.in_transaction
        {
            self.failure = Some(e.sqlstate().unwrap_or_default().to_owned());
        }
        result
    }

    async fn query_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        let statement = self.statement(sql).await?;
        let extras = self.extras(true).await?;
        self.in_flight = true;
        let client = &self.client;
        let pairs = typed(params, &statement);
        let query = match &statement {
            Stmt::Named(s) => Either::Left(client.query(s, params)),
            Stmt::Unnamed(_) => Either::Right(client.query_typed(sql, &pairs)),
        };
        let outcome = pipelined(client, extras, query).await;
        self.settle(outcome)
    }

    /// Runs `sql` for the count of rows it affected (its command tag): for statements
    /// without `RETURNING`. Pipelined as [`PgConn::query`] is (a scoped one-shot
    /// transaction's BEGIN and role go with it), and a stale plan is prepared again.
    pub(crate) async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let result = self.execute_once(sql, params).await;
        if self.forget_stale_plan(&result) {
            return self.execute_once(sql, params).await;
        }
        result
    }

    async fn execute_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let statement = self.statement(sql).await?;
        let extras = self.extras(true).await?;
        self.in_flight = true;
        let client = &self.client;
        let pairs = typed(params, &statement);
        let execute = match &statement {
            Stmt::Named(s) => Either::Left(client.execute(s, params)),
            Stmt::Unnamed(_) => Either::Right(client.execute_typed(sql, &pairs)),
        };
        let outcome = pipelined(client, extras, execute).await;
        self.settle(outcome)
    }

    /// The rows of `sql`, each decoded by `decode` as it arrives: decoding overlaps
    /// the server sending the rest, and no list of driver rows is kept. A decode
    /// failure is the answer once the statement ended (its rows are drained).
    pub(crate) async fn query_decode<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        mut decode: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        if let Some(statement) = self.ready(sql) {
            self.in_flight = true;
            let answer = decode_rows(&self.client, sql, &statement, params, &mut decode).await;
            let result = self.settle_alone(answer).and_then(|decoded| decoded);
            if !self.forget_stale_plan(&result) {
                return result;
            }
        }
        Box::pin(self.query_decode_slow(sql, params, &mut decode)).await
    }

    /// [`PgConn::query_decode`] with its statement to prepare or requests to pipeline.
    async fn query_decode_slow<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        decode: &mut impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let result = self.query_decode_once(sql, params, decode).await;
        if self.forget_stale_plan(&result) {
            return self.query_decode_once(sql, params, decode).await;
        }
        result
    }

    async fn query_decode_once<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        decode: &mut impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let statement = self.statement(sql).await?;
        let extras = self.extras(true).await?;
        self.in_flight = true;
        let rows = decode_rows(&self.client, sql, &statement, params, decode);
        let outcome = pipelined(&self.client, extras, rows).await;
        self.settle(outcome)?
    }

    pub(crate) async fn query_opt(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>> {
        if let Some(statement) = self.ready(sql) {
            self.in_flight = true;
            let answer = match &statement {
                Stmt::Named(s) => self.client.query_opt(s, params).await,
                Stmt::Unnamed(_) => {
                    let pairs = typed(params, &statement);
                    self.client.query_typed_opt(sql, &pairs).await
                }
            };
            let result = self.settle_alone(answer);
            if !self.forget_stale_plan(&result) {
                return result;
            }
        }
        Box::pin(self.query_opt_slow(sql, params)).await
    }

    /// [`PgConn::query_opt`] with its statement to prepare or requests to pipeline.
    async fn query_opt_slow(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
        let result = self.query_opt_once(sql, params).await;
        if self.forget_stale_plan(&result) {
            return self.query_opt_once(sql, params).await;
        }
        result
    }

    async fn query_opt_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
        let statement = self.statement(sql).await?;
        let extras = self.extras(true).await?;
        self.in_flight = true;
        let client = &self.client;
        let pairs = typed(params, &statement);
        let query = match &statement {
            Stmt::Named(s) => Either::Left(client.query_opt(s, params)),
            Stmt::Unnamed(_) => Either::Right(client.query_typed_opt(sql, &pairs)),
        };
        let outcome = pipelined(client, extras, query).await;
        self.settle(outcome)
    }

    /// A cached statement whose plan a schema change invalidated ("cached plan must
    /// not change result type") or that the server dropped is prepared again by its
    /// next use — and so is every other statement of the connection: the change that
    /// made one stale may have made others stale too, and a transaction (which the
    /// failure doomed) is run again only once (see `Error::is_stale_statement`).
    /// `true` when it may be run again at once: outside a transaction, where the
    /// failure aborted nothing.
    pub(crate) fn forget_stale_plan<T>(&mut self, result: &Result<T>) -> bool {
        if !matches!(result, Err(e) if e.is_stale_statement()) {
            return false;
        }
        self.statements.clear();
        self.types.clear();
        !self.in_transaction
    }

    /// Runs statements without parameters (BEGIN, COMMIT, migrations) in one round trip.
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<()> {
        let extras = self.extras(false).await?;
        self.in_flight = true;
        let outcome = pipelined(&self.client, extras, self.client.batch_execute(sql)).await;
        self.settle(outcome)
    }

    /// Streams `rows` into `copy` (a `COPY … FROM STDIN (FORMAT binary)` statement)
    /// with each row's values from `values`, in the order of `types`; returns how many
    /// rows were copied. One statement: a failure copies nothing.
    pub(crate) async fn copy_in<R>(
        &mut self,
        copy: &str,
        types: &[tokio_postgres::types::Type],
        rows: &[R],
        values: impl Fn(&R) -> Vec<Param<'_>>,
    ) -> Result<u64> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        self.flush_setup().await?;
        self.in_flight = true;
        let copied = async {
            let sink = self.client.copy_in::<_, bytes::Bytes>(copy).await?;
            let writer = BinaryCopyInWriter::new(sink, types);
            let mut writer = std::pin::pin!(writer);
            for row in rows {
                writer.as_mut().write(&values(row)).await?;
            }
            writer.finish().await
        }
        .await;
        self.in_flight = false;
        let copied = copied.map_err(Error::from);
        if let Err(e) = &copied
            && self.in_transaction
        {
            self.failure = Some(e.sqlstate().unwrap_or_default().to_owned());
        }
        // The commit protocol needs the id of a transaction that wrote (see
        // `db/tx.rs`): other statements carry the probe in their pipeline, a COPY
        // cannot, so it travels alone behind it.
        if copied.is_ok() && self.in_transaction && self.xid.is_none() {
            self.send_extras().await?;
        }
        copied
    }

    /// Asks for the transaction's id if it is not known yet: after the raw client ran
    /// what Tabula cannot see (a `with_client` body may have written), so that a lost
    /// COMMIT is resolved by the id rather than taken for a transaction that never
    /// wrote.
    pub(crate) async fn learn_xid(&mut self) -> Result<()> {
        if !self.in_transaction || self.xid.is_some() {
            return Ok(());
        }
        self.send_extras().await
    }

    /// Sends any pending setup now (before handing out the raw client).
    pub(crate) async fn flush_setup(&mut self) -> Result<()> {
        if self.pending_setup.is_none() {
            return Ok(());
        }
        self.send_extras().await
    }

    /// Sends what would travel with the next statement (setup, transaction-id probe)
    /// on its own.
    async fn send_extras(&mut self) -> Result<()> {
        let extras = self.extras(false).await?;
        self.in_flight = true;
        let outcome = pipelined(&self.client, extras, async { Ok(()) }).await;
        self.settle(outcome)
    }

    /// What travels in front of (setup) and behind (the transaction id, or COMMIT for
    /// a one-shot read when `statement` says the call is one statement) the next
    /// statement. Prepares what it needs first, outside any pipeline.
    async fn extras(&mut self, statement: bool) -> Result<Extras> {
        let pending = self.pending_setup.as_ref();
        // A one-shot read commits behind its statement; before the raw client or a
        // batch, the caller ends the transaction.
        let one_shot = pending.is_some_and(|s| s.one_shot && statement);
        let scoped = pending.is_some_and(|s| s.scope.is_some());
        // Inside a transaction that has not written yet, ask for its id behind every
        // statement: NULL until one of them writes, then kept for the commit protocol.
        let ask_xid = (self.in_transaction || pending.is_some()) && self.xid.is_none() && !one_shot;
        // Prepared (or, behind a pooler, described) while the setup is still pending:
        // a description then runs in a transaction of its own, as a pooler needs.
        let scope_statement = match scoped {
            true => Some(self.statement(SET_SCOPE).await?),
            false => None,
        };
        let xid = match ask_xid {
            true => Some(self.statement(CURRENT_XID).await?),
            false => None,
        };
        let mut setup = self.pending_setup.take();
        if let Some(setup) = setup.as_mut().filter(|_| !one_shot) {
            setup.one_shot = false;
        }
        let commit = setup.as_ref().filter(|s| s.one_shot).cloned();
        let scope = match (
            setup.as_ref().and_then(|s| s.scope.clone()),
            scope_statement,
        ) {
            (Some((role, claims)), Some(set)) => Some((set, role, claims)),
            _ => None,
        };
        Ok(Extras {
            // A one-shot read's transaction ends in its own pipeline: the commit
            // protocol's mark (set by `Setup::begin`) is not needed there.
            begin: setup.map(|s| match s.one_shot {
                true => "BEGIN ISOLATION LEVEL READ COMMITTED",
                false => s.begin,
            }),
            scope,
            xid,
            commit,
        })
    }

    /// Records what a pipelined call learned (the transaction id, a failure inside
    /// the transaction) and clears the in-flight mark: the answer was read.
    fn settle<T>(&mut self, answer: Answer<T>) -> Result<T> {
        let Answer {
            result,
            xid,
            committed,
        } = answer;
        self.in_flight = false;
        if xid.is_some() {
            self.xid = xid;
        }
        match committed {
            Some(Ok(setup)) => {
                // The one-shot transaction ended; the next statement opens another.
                self.in_transaction = false;
                self.failure = None;
                self.pending_setup = Some(setup);
                return result;
            }
            // Its end is unknown: the connection is closed on release.
            Some(Err(())) => self.discard = true,
            None => {}
        }
        if let Err(e) = &result
            && self.in_transaction
        {
            self.failure = Some(e.sqlstate().unwrap_or_default().to_owned());
        }
        result
    }

    /// Closes what the raw client may have left in the session (settings, temporary
    /// tables, advisory locks, LISTEN, prepared statements): `DISCARD ALL`. A
    /// connection it fails on (a transaction left open) is closed instead.
    pub(crate) async fn reset_session(&mut self) {
        self.statements.clear();
        if self.client.batch_execute("DISCARD ALL").await.is_err() {
            self.discard = true;
            return;
        }
        // DISCARD ALL dropped what the after-connect hook set: set it again.
        if let Some(hook) = &self.after_connect {
            let deadline = Duration::from_secs(5);
            if !matches!(
                tokio::time::timeout(deadline, hook(&self.client)).await,
                Ok(Ok(()))
            ) {
                self.discard = true;
            }
        }
    }

    /// The underlying client, for work Tabula has no API for.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// How a statement runs: prepared on this connection, or unnamed with its parameter
/// types (see [`PgConn::statement`]).
pub(crate) enum Stmt {
    Named(Statement),
    Unnamed(Arc<[Type]>),
}

/// `query_opt` of a statement without parameters, prepared or unnamed.
pub(crate) fn query_opt_on<'a>(
    client: &'a Client,
    sql: &'a str,
    statement: &'a Stmt,
) -> impl std::future::Future<Output = std::result::Result<Option<Row>, tokio_postgres::Error>> + 'a
{
    match statement {
        Stmt::Named(s) => Either::Left(client.query_opt(s, &[])),
        Stmt::Unnamed(_) => Either::Right(client.query_typed_opt(sql, &[])),
    }
}

/// The rows of `sql` as a stream, prepared or unnamed.
pub(crate) async fn query_raw_on(
    client: &Client,
    sql: &str,
    statement: &Stmt,
    params: &[Param<'_>],
) -> std::result::Result<tokio_postgres::RowStream, tokio_postgres::Error> {
    match statement {
        Stmt::Named(s) => client.query_raw(s, params.iter().copied()).await,
        Stmt::Unnamed(types) => {
            let pairs = params.iter().copied().zip(types.iter().cloned());
            client.query_typed_raw(sql, pairs).await
        }
    }
}

/// Runs `sql` and decodes each row as it arrives, prepared or unnamed: decoding
/// overlaps the server sending the rest. A decode failure is the answer once the
/// statement ended (its rows are drained, the connection stays usable).
async fn decode_rows<T>(
    client: &Client,
    sql: &str,
    statement: &Stmt,
    params: &[Param<'_>],
    decode: &mut impl FnMut(&Row) -> Result<T>,
) -> std::result::Result<Result<Vec<T>>, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let stream = query_raw_on(client, sql, statement, params).await?;
    let mut stream = std::pin::pin!(stream);
    let mut decoded = Ok(Vec::new());
    while let Some(row) = stream.try_next().await? {
        if let Ok(out) = &mut decoded {
            match decode(&row) {
                Ok(value) => out.push(value),
                Err(e) => decoded = Err(e),
            }
        }
    }
    Ok(decoded)
}

/// Parameters paired with their types, for an unnamed statement (nothing, and no
/// allocation, for a prepared one).
fn typed<'a>(params: &[Param<'a>], statement: &Stmt) -> Vec<(Param<'a>, Type)> {
    match statement {
        Stmt::Named(_) => Vec::new(),
        Stmt::Unnamed(types) => params.iter().copied().zip(types.iter().cloned()).collect(),
    }
}

/// Requests pipelined around a statement; see [`PgConn::extras`].
struct Extras {
    begin: Option<&'static str>,
    scope: Option<(Stmt, &'static str, Arc<str>)>,
    xid: Option<Stmt>,
    /// COMMIT behind the statement, and the setup to arm again once it answered.
    commit: Option<Setup>,
}

impl<T> Answer<T> {
    /// A call that failed before anything was pipelined.
    fn failed(error: Error) -> Answer<T> {
        Answer {
            result: Err(error),
            xid: None,
            committed: None,
        }
    }
}

/// What a pipelined call answered.
struct Answer<T> {
    result: Result<T>,
    xid: Option<String>,
    /// A one-shot transaction's end: the setup to arm again, or `Err` when COMMIT got
    /// no answer.
    committed: Option<std::result::Result<Setup, ()>>,
}

/// Runs `statement` pipelined between the extras: every request goes out before any
/// answer is awaited, and PostgreSQL runs them in order. A failed setup fails the call
/// whatever the statement did (it cannot have run in the intended transaction); the
/// connection, still marked in a transaction, is then closed rather than reused.
async fn pipelined<T>(
    client: &Client,
    extras: Extras,
    statement: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Answer<T> {
    let begin = async {
        match extras.begin {
            Some(begin) => client.batch_execute(begin).await,
            None => Ok(()),
        }
    };
    let scope = async {
        match &extras.scope {
            Some((Stmt::Named(set), role, claims)) => client
                .execute(set, &[role, &claims.as_ref()])
                .await
                .map(|_| ()),
            Some((Stmt::Unnamed(_), role, claims)) => client
                .execute_typed(
                    SET_SCOPE,
                    &[(role, Type::TEXT), (&claims.as_ref(), Type::TEXT)],
                )
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    };
    let xid = async {
        match &extras.xid {
            Some(Stmt::Named(query)) => client.query_opt(query, &[]).await.ok().flatten(),
            Some(Stmt::Unnamed(_)) => client
                .query_typed_opt(CURRENT_XID, &[])
                .await
                .ok()
                .flatten(),
            None => None,
        }
    };
    // After a failed statement COMMIT only rolls back; either way the transaction ends.
    let commit = async {
        match &extras.commit {
            Some(_) => Some(client.batch_execute("COMMIT").await),
            None => None,
        }
    };
    let (begin, scope, result, xid, commit) = tokio::join!(begin, scope, statement, xid, commit);
    let xid = xid.and_then(|row| row.try_get::<_, Option<String>>(0).ok().flatten());
    let result = match (begin, scope) {
        (Err(e), _) | (_, Err(e)) => Err(Error::from(e)),
        _ => result.map_err(Error::from),
    };
    let committed = match (commit, extras.commit) {
        (Some(Ok(())), Some(setup)) => Some(Ok(setup)),
        (Some(Err(_)), _) => Some(Err(())),
        _ => None,
    };
    Answer {
        result,
        xid,
        committed,
    }
}

/// Sends a cancel request for a statement whose answer nobody will read (from a
/// destructor, so without waiting for it), on the connection's own runtime and within
/// the connect timeout. `after` is dropped once the connection closed.
pub(crate) fn cancel_in_background(
    canceller: &Canceller,
    token: CancelToken,
    tls: Connector,
    client: Arc<Client>,
    after: impl Send + 'static,
) {
    let limit = canceller.limit;
    // On a runtime that shut down, the task is dropped unrun, and with it the client
    // and `after`: that runtime's connection task is gone too.
    canceller.runtime.spawn(async move {
        let cancelled = tokio::time::timeout(limit, token.cancel_query(tls)).await;
        drop(client); // only now may the connection close
        drop(after);
        match cancelled {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cancel request failed"),
            Err(_) => tracing::debug!("cancel request not answered within {limit:?}"),
        }
    });
}

/// Ends a connection from outside it, whoever holds it, without keeping it open (it
/// holds no client): for a transaction abandoned while a clone of its handle still
/// holds the connection (a statement, a stream, a raw body).
pub(crate) struct StatementCanceller {
    canceller: Canceller,
    token: CancelToken,
    tls: Connector,
    driver: tokio::task::AbortHandle,
    place: slots::SharedPlace,
}

impl StatementCanceller {
    /// Cancels the statement running on the connection, then closes its socket: the
    /// server rolls the transaction back and releases its locks now, not when the
    /// holder lets go. In a task of its own, on the connection's runtime; the cancel
    /// request is bounded by the connect timeout, and the socket closes either way.
    pub(crate) fn stop(&self) {
        let (token, tls, limit) = (
            self.token.clone(),
            crate::tls::copy(&self.tls),
            self.canceller.limit,
        );
        let (driver, place) = (self.driver.clone(), self.place.clone());
        self.canceller.runtime.spawn(async move {
            match tokio::time::timeout(limit, token.cancel_query(tls)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "cancel request failed"),
                Err(_) => tracing::debug!("cancel request not answered within {limit:?}"),
            }
            // A backend waiting on a lock notices a closed socket only when its
            // statement ends: cancelled first, then closed.
            driver.abort();
            // The connection is dead whoever still holds it: its place is the next
            // caller's.
            place.give_back();
        });
    }
}

impl PgConn {
    /// A [`StatementCanceller`] for this connection, which holds `place`.
    pub(crate) fn statement_canceller(&self, place: slots::SharedPlace) -> StatementCanceller {
        StatementCanceller {
            canceller: self.canceller.clone(),
            token: self.cancel.clone(),
            tls: crate::tls::copy(&self.tls),
            driver: self.driver.clone(),
            place,
        }
    }
}

/// Where and how long a connection's cancel request runs (see `PgConn::canceller`).
#[derive(Clone)]
pub(crate) struct Canceller {
    runtime: tokio::runtime::Handle,
    limit: Duration,
}

/// Runs on every new connection before its first use, and again after
/// `Db::with_client` reset a session — e.g. `SET search_path TO app, public`. See
/// `DbConfig::after_connect`.
pub type AfterConnect = Arc<
    dyn for<'c> Fn(
            &'c tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = crate::error::Result<()>> + Send + 'c>,
        > + Send
        + Sync,
>;

/// What the sessions of one handle read tables through, learned on every connection
/// it opens (after its own setup, `DbConfig::after_connect`, ran) and after the
/// caller's own SQL (see `Db::learn_names`).
///
/// A handle *names tables as others do* while each of its sessions finds bare names
/// along a search path every handle on the database shares (the server's or the
/// database's default, not one set for the session, by the URL or for the role) that
/// leads to `public` alone — a `"$user"` schema of its role, or a temporary table,
/// included. Once a new session does otherwise, or differs from the first, the handle
/// never does again (see `Db::shared_reads_allowed`).
#[derive(Debug, Default)]
pub(crate) struct SessionNames {
    own: std::sync::atomic::AtomicBool,
    /// The first session's state (see [`Session`]).
    first: std::sync::OnceLock<Session>,
    /// Every schema a bare name may have meant to one of the handle's sessions: those
    /// their search paths listed (`"$user"` as the role's name), and those they found.
    schemas: std::sync::Mutex<Vec<String>>,
}

/// What decides which tables a session's statements read: its search path as set,
/// its role, and the schemas it searches (temporary ones included).
#[derive(Debug, PartialEq, Eq)]
struct Session {
    path: String,
    role: String,
    searched: String,
}

/// Asked with every name qualified, and operators as `OPERATOR(pg_catalog.…)`: a
/// session may have put its own functions or operators earlier on its search path.
const SESSION_STATE: &str = "SELECT \
     (SELECT s.source FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) 'search_path'), \
     pg_catalog.array_to_string(pg_catalog.current_schemas(true), ','), \
     pg_catalog.current_setting('search_path'), \
     current_user::pg_catalog.text, \
     pg_catalog.statement_timestamp() OPERATOR(pg_catalog.<>) pg_catalog.transaction_timestamp()";

impl SessionNames {
    /// Whether the handle's sessions find tables along a search path of their own.
    pub(crate) fn own(&self) -> bool {
        self.own.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every schema a bare name may have meant to one of the handle's sessions, for
    /// naming every table a write to a bare name may have touched.
    pub(crate) fn schemas(&self) -> Vec<String> {
        self.schemas.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads the state of `client`'s session: whether it is not the first session's,
    /// and whether it is inside a transaction block (Tabula's, or the caller's own).
    /// A new session (`opened`) that reads tables its own way marks the handle (see
    /// the type's docs); a session the caller's own SQL changed is closed instead
    /// (see `Db::learn_names`), so the handle is not marked for it.
    pub(crate) async fn learn(&self, client: &Client, opened: bool) -> Result<(bool, bool)> {
        let messages = client.simple_query(SESSION_STATE).await?;
        let Some(row) = messages.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        }) else {
            if opened {
                self.own.store(true, std::sync::atomic::Ordering::Release);
            }
            return Ok((true, false));
        };
        let field = |i: usize| row.get(i).unwrap_or_default().to_owned();
        let source = field(0);
        let session = Session {
            searched: field(1),
            path: field(2),
            role: field(3),
        };
        let in_block = field(4) == "t";
        let shared_source = matches!(
            source.as_str(),
            "default" | "configuration file" | "database" | "environment variable"
        );
        let listed = session.path.split(',').map(|s| {
            let s = s.trim();
            match s {
                "\"$user\"" | "$user" => session.role.clone(),
                quoted if quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"') => {
                    quoted[1..quoted.len() - 1].replace("\"\"", "\"")
                }
                plain => plain.to_lowercase(),
            }
        });
        if let Ok(mut schemas) = self.schemas.lock() {
            for schema in listed.chain(session.searched.split(',').map(str::to_owned)) {
                if !schema.is_empty() && !schema.starts_with("pg_") && !schemas.contains(&schema) {
                    schemas.push(schema);
                }
            }
        }
        let searches_public_alone = session.searched == "pg_catalog,public";
        let first = self.first.get_or_init(|| Session {
            path: session.path.clone(),
            role: session.role.clone(),
            searched: session.searched.clone(),
        });
        let changed = *first != session;
        if opened && (!shared_source || !searches_public_alone || changed || in_block) {
            self.own.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok((changed, in_block))
    }
}

/// Opens connections.
#[derive(Clone)]
pub(crate) struct PgManager {
    pub(crate) config: tokio_postgres::Config,
    after_connect: Option<AfterConnect>,
    /// How the sessions of this manager find tables by their bare names.
    pub(crate) names: Arc<SessionNames>,
    tls: Connector,
    /// Behind a transaction-pooling proxy: statements go unnamed.
    unnamed: bool,
}

impl PgManager {
    /// Every connection carries the statement deadline as its session default
    /// (`statement_timeout` in the startup options), so the server itself stops a
    /// statement that outlives it — a lock wait included — and the failure is known.
    /// `RESET ALL` and `DISCARD ALL` return to it.
    pub(crate) fn new(
        mut config: tokio_postgres::Config,
        connect_timeout: Duration,
        statement_timeout: Duration,
        after_connect: Option<AfterConnect>,
        tls: Connector,
        transaction_pooling: bool,
    ) -> Self {
        config.connect_timeout(connect_timeout);
        if transaction_pooling {
            // A pooler passes no startup options on (PgBouncer refuses them), and a
            // session default would not follow the transactions anyway: the server's
            // own deadline then comes from the role or the pooler's connect query.
            return PgManager {
                config,
                after_connect,
                names: Arc::default(),
                tls,
                unnamed: true,
            };
        }
        let ms = statement_timeout.as_millis().clamp(1, i32::MAX as u128);
        let options = match config.get_options() {
            Some(user) if !user.trim().is_empty() => {
                format!("{user} -c statement_timeout={ms}")
            }
            _ => format!("-c statement_timeout={ms}"),
        };
        config.options(&options);
        PgManager {
            config,
            after_connect,
            names: Arc::default(),
            tls,
            unnamed: false,
        }
    }
}

impl PgManager {
    /// Opens a connection and runs the after-connect hook on it.
    pub(crate) async fn connect(&self) -> Result<PgConn> {
        // The driver's connect timeout bounds opening the socket only; a server that
        // accepts and never answers the startup would hold the caller for ever.
        let deadline = self.config.get_connect_timeout().copied();
        let deadline = deadline.unwrap_or(Duration::from_secs(5));
        let opening = self.config.connect(crate::tls::copy(&self.tls));
        let (client, connection) = match tokio::time::timeout(deadline, opening).await {
            Ok(opened) => opened?,
            Err(_) => {
                return Err(Error::Connect(format!(
                    "the server did not finish the connection's start-up within {deadline:?}"
                )));
            }
        };
        // The connection task ends when the socket closes; `Client::is_closed` then
        // reports it and the pool drops the client.
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection closed");
            }
        })
        .abort_handle();
        if let Some(hook) = &self.after_connect {
            // The hook is part of opening the connection, and shares its deadline.
            let deadline = self.config.get_connect_timeout().copied();
            let deadline = deadline.unwrap_or(Duration::from_secs(5));
            match tokio::time::timeout(deadline, hook(&client)).await {
                Ok(done) => done?,
                Err(_) => {
                    return Err(Error::Connect(format!(
                        "the after-connect hook did not finish within {deadline:?}"
                    )));
                }
            }
        }
        // How this session finds tables, before anything runs on it.
        self.names.learn(&client, true).await?;
        Ok(PgConn {
            after_connect: self.after_connect.clone(),
            cancel: client.cancel_token(),
            driver,
            freed: Arc::default(),
            stopper: std::sync::OnceLock::new(),
            canceller: Canceller {
                runtime: tokio::runtime::Handle::current(),
                limit: deadline,
            },
            tls: crate::tls::copy(&self.tls),
            client: Arc::new(client),
            statements: HashMap::default(),
            unnamed: self.unnamed,
            types: HashMap::default(),
            in_transaction: false,
            in_flight: false,
            discard: false,
            pending_setup: None,
            xid: None,
            failure: None,
        })
    }
}

impl PgConn {
    /// Whether a statement's answer is still on its way to nobody.
    pub(crate) fn unread(&self) -> bool {
        self.in_flight && !self.client.is_closed()
    }

    /// Cancels the unread statement and closes the connection once the cancel request
    /// went out; `place` is dropped only then.
    pub(crate) fn cancel_and_close(self: Box<Self>, place: impl Send + 'static) {
        let PgConn {
            client,
            cancel,
            tls,
            canceller,
            ..
        } = *self;
        cancel_in_background(&canceller, cancel, tls, client, place);
    }

    /// Whether this connection, given back, may serve another caller: not when its
    /// socket closed, a transaction is open on it, an answer is unread (its statement
    /// is then cancelled on the server), or its session may hold state Tabula did
    /// not put there.
    pub(crate) fn release(&mut self) -> bool {
        if self.unread() {
            // Nobody will read the answer: stop the statement on the server too.
            cancel_in_background(
                &self.canceller,
                self.cancel.clone(),
                crate::tls::copy(&self.tls),
                self.client.clone(),
                (),
            );
        }
        // A setup never sent is client-side only — the server holds nothing of it —
        // but must not reach the next user: a scope armed again behind a one-shot read
        // whose caller went away would open the next statement in that user's role.
        self.pending_setup = None;
        !(self.client.is_closed() || self.in_transaction || self.in_flight || self.discard)
    }
}
