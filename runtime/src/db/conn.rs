//! Checking out a connection and running one operation on it: the pool or the
//! transaction's connection, the statement deadline, the user scope of a one-shot
//! scoped call, and the re-entrancy checks that turn a would-be deadlock into
//! [`Error::Misuse`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures_util::future::Either;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Db, Invalidation, Pooled};
use crate::error::{Error, Result};
use crate::monitor;
use crate::pool::{PgConn, Setup};

/// The connection of a transaction; `None` once it committed or rolled back.
pub(crate) struct TxConn {
    pub(crate) conn: Option<Pooled>,
    /// Cache invalidations of the transaction's writes, applied after COMMIT.
    pub(crate) pending: Vec<Invalidation>,
    /// Tags to drop after COMMIT ([`Db::invalidate_tag`] inside the transaction).
    pub(crate) pending_tags: Vec<String>,
}

/// What every handle of one transaction shares besides the connection.
#[derive(Default)]
pub(crate) struct TxShared {
    /// Set while a stream from this transaction holds its connection.
    pub(crate) streaming: AtomicBool,
    /// Set while a `with_client` body holds its connection.
    pub(crate) raw: AtomicBool,
    /// How many savepoints are open.
    pub(crate) depth: AtomicU32,
    /// Savepoints opened so far (their names are unique within the transaction).
    pub(crate) savepoints: AtomicU32,
    /// Set when a nested transaction was abandoned half-way (its future dropped):
    /// what it did is unknown, so the transaction can only roll back.
    pub(crate) abandoned: AtomicBool,
    /// Set when raw SQL ran in it (it may have changed the schema): what the handle
    /// read from the catalog is forgotten again when it ends.
    pub(crate) schema_touched: AtomicBool,
}

/// A handle's link to its transaction: the connection, and the savepoint depth the
/// handle belongs to (0 for the transaction itself).
#[derive(Clone)]
pub(crate) struct TxHandle {
    pub(crate) conn: Arc<Mutex<TxConn>>,
    pub(crate) shared: Arc<TxShared>,
    pub(crate) depth: u32,
}

impl TxHandle {
    pub(crate) fn new(conn: Pooled) -> TxHandle {
        TxHandle {
            conn: Arc::new(Mutex::new(TxConn {
                conn: Some(conn),
                pending: Vec::new(),
                pending_tags: Vec::new(),
            })),
            shared: Arc::default(),
            depth: 0,
        }
    }

    /// The transaction's connection for one statement, or a clear error where waiting
    /// for it could never end.
    async fn acquire(&self) -> Result<OwnedMutexGuard<TxConn>> {
        self.check_depth()?;
        let guard = match self.conn.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) if self.shared.raw.load(Ordering::Acquire) => {
                return Err(Error::Misuse(
                    "a statement on a transaction (or user-scoped handle) was issued while a \
                     `with_client` body holds its connection; use the raw client there, or \
                     make the call outside the body"
                        .into(),
                ));
            }
            Err(_) if self.shared.streaming.load(Ordering::Acquire) => {
                return Err(Error::Misuse(
                    "a stream from this transaction is still open and holds its connection; \
                     read it to the end or drop it first"
                        .into(),
                ));
            }
            Err(_) => self.conn.clone().lock_owned().await,
        };
        // Again: a nested transaction may have opened while this call waited.
        self.check_depth()?;
        if self.shared.abandoned.load(Ordering::Acquire) {
            return Err(Error::TransactionAborted { sqlstate: None });
        }
        match guard.conn.as_deref() {
            None => Err(Error::Misuse(
                "the transaction this handle belongs to has already ended".into(),
            )),
            Some(conn) if conn.in_flight => Err(Error::TransactionAborted {
                sqlstate: None,
                // A statement of this transaction was abandoned mid-flight (a deadline,
                // a dropped future): what it did is unknown, so the transaction can
                // only roll back.
            }),
            Some(_) => Ok(guard),
        }
    }

    fn check_depth(&self) -> Result<()> {
        if self.shared.depth.load(Ordering::Acquire) != self.depth {
            return Err(Error::Misuse(
                "this transaction handle was used while a nested transaction (a savepoint) is \
                 open on it; use the nested transaction's handle until it ends"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Takes the connection and pending invalidations (and tags) out when the
    /// transaction ends.
    pub(crate) async fn take(&self) -> (Option<Pooled>, Vec<Invalidation>, Vec<String>) {
        let mut state = self.conn.lock().await;
        (
            state.conn.take(),
            std::mem::take(&mut state.pending),
            std::mem::take(&mut state.pending_tags),
        )
    }
}

/// Marks a transaction's connection as held by a `with_client` body; cleared when the
/// body ends or is dropped.
struct RawHold(Arc<TxShared>);

impl RawHold {
    fn new(shared: Arc<TxShared>) -> RawHold {
        shared.raw.store(true, Ordering::Release);
        RawHold(shared)
    }
}

impl Drop for RawHold {
    fn drop(&mut self) {
        self.0.raw.store(false, Ordering::Release);
    }
}

/// Marks a transaction's connection as held by an open stream (see
/// [`Db::mark_streaming`]); cleared when the stream ends or is dropped.
pub(crate) struct Streaming(Option<Arc<TxShared>>);

impl Drop for Streaming {
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            shared.streaming.store(false, Ordering::Release);
        }
    }
}

/// A connection checked out for one operation. Lives on the stack for one call, so
/// the size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conn {
    Pooled(Pooled),
    Tx(OwnedMutexGuard<TxConn>),
}

impl Conn {
    pub(crate) fn get(&mut self) -> Result<&mut PgConn> {
        match self {
            Conn::Pooled(pooled) => Ok(pooled),
            Conn::Tx(guard) => guard.conn.as_deref_mut().ok_or_else(|| {
                Error::Misuse("the transaction this handle belongs to has already ended".into())
            }),
        }
    }
}

/// Operations that only read: a client-side deadline on one of them is a plain
/// [`Error::Timeout`]. Anything else may have written, so its lost answer is
/// [`Error::OutcomeUnknown`].
const READS: &[&str] = &[
    "read",
    "read_many",
    "query",
    "count",
    "count_estimate",
    "page",
    "exists",
    "stream",
    "query_spec",
];

/// How long the client waits for an answer beyond the server's own deadline.
pub(crate) fn grace(deadline: Duration) -> Duration {
    (deadline / 2).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

impl Db {
    pub(crate) async fn checkout(&self) -> Result<Pooled> {
        let mut conn = self.shared.pool.get().await?;
        // Nothing opens with a pooled connection but what this caller asks for.
        conn.pending_setup = None;
        Ok(conn)
    }

    /// The scoped transaction this handle's statements run in: the handle's own, or
    /// the one-shot transaction a scoped call opened.
    fn current_tx(&self) -> Option<TxHandle> {
        match (&self.tx, &self.scope) {
            (Some(tx), _) => Some(tx.clone()),
            (None, Some(_)) => super::scope::current_scoped_tx(),
            (None, None) => None,
        }
    }

    /// Marks this handle's transaction (if any) as held by a stream, so that a
    /// statement on it meanwhile is [`Error::Misuse`] instead of waiting forever.
    pub(crate) fn mark_streaming(&self) -> Streaming {
        let shared = self.current_tx().map(|tx| tx.shared);
        if let Some(shared) = &shared {
            shared.streaming.store(true, Ordering::Release);
        }
        Streaming(shared)
    }

    /// A connection for one operation: the transaction's, or one from the pool.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        if self.scope.is_some() {
            crate::cache::memo::note_scoped();
        }
        if let Some(tx) = self.current_tx() {
            return Ok(Conn::Tx(tx.acquire().await?));
        }
        if self.scope.is_some() {
            // A scoped statement runs only inside the scoped transaction `timed` opened;
            // anything else would run with the service role's rights, so refuse.
            return Err(Error::Misuse(
                "this operation is not available on a user-scoped handle outside a transaction; \
                 run it inside `transaction`"
                    .into(),
            ));
        }
        Ok(Conn::Pooled(self.checkout().await?))
    }

    /// Runs `work` inside a span, under the statement deadline, and records the outcome.
    ///
    /// `work` is boxed before anything else: the operations' state machines nest, and
    /// would otherwise make every public future (and the stack of a debug build) as
    /// large as the deepest one. The reads' small state machines take
    /// [`Db::timed_inline`] instead, which allocates nothing.
    pub(crate) fn timed<'a, T: 'a>(
        &'a self,
        operation: &'static str,
        table: &'static str,
        work: impl Future<Output = Result<T>> + 'a,
    ) -> impl Future<Output = Result<T>> + 'a {
        self.timed_inline(operation, table, Box::pin(work))
    }

    /// [`Db::timed`] without boxing `work` (a user scope's transaction around it is
    /// boxed: only scoped handles carry it). The future is one struct holding `work`,
    /// its timer and its span side by side, not wrappers nested in async blocks: each
    /// layer would move `work` again when built (an async block also keeps a slot for
    /// `work` beside the slot of the future it is moved into). The clock is read once,
    /// for both the deadline and the metric.
    #[inline(always)]
    pub(crate) fn timed_inline<'a, T: 'a>(
        &'a self,
        operation: &'static str,
        table: &'static str,
        work: impl Future<Output = Result<T>> + 'a,
    ) -> impl Future<Output = Result<T>> + 'a {
        Timed {
            operation,
            table,
            deadline: self.shared.config.statement_timeout,
            span: tracing::debug_span!("tabula.db", operation, table),
            // Armed on the first poll: a future may be built outside a runtime, and
            // its deadline counts from when it starts.
            expires: Expires::Idle,
            work: self.route(operation, work),
        }
    }

    /// `work` as is, or inside a user scope's transaction of its own (see
    /// [`Db::in_scope`]).
    #[inline(always)]
    fn route<'a, T: 'a, F: Future<Output = Result<T>> + 'a>(
        &'a self,
        operation: &'static str,
        work: F,
    ) -> Either<std::pin::Pin<Box<impl Future<Output = Result<T>> + 'a>>, F> {
        let Some(scope) = &self.scope else {
            return Either::Right(work);
        };
        crate::cache::memo::note_scoped();
        if self.tx.is_some() || super::scope::current_scoped_tx().is_some() {
            return Either::Right(work);
        }
        let read = READS.contains(&operation);
        Either::Left(Box::pin(self.in_scope(scope, read, work)))
    }

    /// Runs `work` in a transaction of its own that switched to the scope's role and
    /// claims (both transaction-local); COMMIT on `Ok`, ROLLBACK on `Err`. Both end
    /// with the transaction, and a connection abandoned half-way is closed, so nothing
    /// reaches the next user of the pooled connection.
    ///
    /// A `read` sends COMMIT in the same pipeline as each statement (BEGIN, role and
    /// claims, the statement, COMMIT: one round trip), and each later statement opens
    /// a scoped transaction of its own — as an unscoped handle runs each statement on
    /// its own. Writes keep the commit protocol of `db/tx.rs`.
    async fn in_scope<T>(
        &self,
        scope: &crate::auth::Scope,
        read: bool,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut conn = self.checkout().await?;
        conn.begin(Setup {
            begin: super::Isolation::ReadCommitted.begin(),
            scope: Some(scope.parts()),
            one_shot: read,
        });
        let tx = TxHandle::new(conn);
        let result = super::scope::with_scoped_tx(tx.clone(), work).await;
        let (conn, _, _) = tx.take().await;
        let abandoned = tx.shared.abandoned.load(Ordering::Acquire);
        let Some(conn) = conn else {
            return Err(Error::Misuse("scoped connection taken twice".into()));
        };
        let ended = self.end(conn, result.is_ok(), abandoned, &[]).await;
        match (result, ended) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(e)) | (Err(e), _) => Err(e),
        }
    }

    /// Runs `body` on a connection inside a span, under the statement deadline, and
    /// records the outcome.
    pub(crate) async fn run<T>(
        &self,
        operation: &'static str,
        table: &'static str,
        body: impl AsyncFnOnce(&mut PgConn) -> Result<T>,
    ) -> Result<T> {
        self.timed(operation, table, async {
            let mut conn = self.conn().await?;
            body(conn.get()?).await
        })
        .await
    }

    /// Whether a read that failed on a dead connection should be tried again (outside a
    /// transaction, at most once per pooled connection).
    pub(crate) fn retry_read(
        &self,
        operation: &'static str,
        error: &Error,
        tries: &mut u32,
    ) -> bool {
        let retry = matches!(error, Error::Connection(_))
            && self.current_tx().is_none()
            && *tries < self.shared.config.pool_size;
        *tries += 1;
        if retry {
            metrics::counter!(crate::monitor::DB_READ_RETRIES, "operation" => operation)
                .increment(1);
            tracing::debug!(operation, %error, "read tried again on another connection");
        }
        retry
    }

    /// Runs raw SQL statements (no parameters, no results), e.g. for set-up scripts.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// db.execute_batch("CREATE TABLE IF NOT EXISTS t (id int)").await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_batch(&self, sql: &str) -> Result<()> {
        let mark = self.write_mark();
        let result = self
            .run("execute_batch", "-", async |conn| conn.batch(sql).await)
            .await;
        // DDL may have changed the foreign keys the cache follows.
        self.forget_schema();
        self.note_raw_write().await;
        mark.done();
        result
    }

    /// Runs `body` with the raw tokio-postgres client of one pooled connection (or the
    /// transaction's), for the SQL Tabula has no API for.
    ///
    /// The connection comes back clean: after a pooled connection's body, `DISCARD ALL`
    /// drops whatever session state the body left (settings, temporary tables, advisory
    /// locks, prepared statements); a transaction's connection that was handed out is
    /// closed when the transaction ends instead of going back to the pool. Inside the
    /// body, a statement through the same transaction or scoped handle is
    /// [`Error::Misuse`] (the body holds its connection) — use the raw client there.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let n: i64 = db.with_client(async |c| Ok(c.query_one("SELECT 1::int8", &[]).await?.get(0))).await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_client<T>(
        &self,
        body: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T>,
    ) -> Result<T> {
        let mark = self.write_mark();
        let result = self
            .timed("raw", "-", async {
                let tx = self.current_tx();
                let mut conn = self.conn().await?;
                let pg = conn.get()?;
                pg.flush_setup().await?;
                pg.in_flight = true;
                // While the body holds the connection, any other statement on this
                // transaction — from this task or another — is refused, not queued forever.
                let raw = tx.as_ref().map(|tx| RawHold::new(tx.shared.clone()));
                let result = body(pg.client()).await;
                drop(raw);
                if pg.in_transaction {
                    // A plain SET inside a transaction outlives its COMMIT.
                    pg.discard = true;
                } else {
                    // Still marked in flight until the reset is done: a caller that
                    // stops waiting during it leaves a connection that is closed, not
                    // one without its after-connect settings.
                    pg.reset_session().await;
                }
                pg.in_flight = false;
                // The body may have changed the schema (a foreign key the cache follows).
                self.forget_schema();
                result
            })
            .await;
        self.note_raw_write().await;
        mark.done();
        result
    }
}

/// Runs a read on a connection (inside [`Db::timed`]): outside a transaction, a
/// connection found dead (the server restarted, or killed it while idle) is dropped
/// and the read tried on another, instead of failing the caller. A macro rather than a
/// function taking an async closure, so that the returned future stays `Send` for any
/// caller (async closures called by reference trip a known compiler limitation).
macro_rules! read_on_conn {
    ($db:expr, $op:expr, $table:expr, $($move:ident)? |$conn:ident| $body:block) => {{
        let __db: &$crate::Db = &$db;
        __db.timed_inline($op, $table, async $($move)? {
            let mut __tries = 0;
            let mut __replicas = true;
            loop {
                let (mut __guard, __replica) = match __db.read_conn(__replicas).await {
                    Ok(routed) => routed,
                    Err(e) => break Err(e),
                };
                let __attempt: $crate::Result<_> = match __replica {
                    // On a replica: hedged by the primary once the replica's patience
                    // is spent (see `db/replica.rs`, rule 6).
                    Some((__index, __asked)) => {
                        let __on_replica = async {
                            let $conn = __guard.get()?;
                            $body
                        };
                        let __on_primary = || async {
                            let mut __primary = __db.conn().await?;
                            let $conn = __primary.get()?;
                            $body
                        };
                        // Boxed: only handles with replicas take this branch, and
                        // its two reads would double every read's future.
                        let __answer = ::std::boxed::Box::pin(__db.hedged(
                            __index,
                            __asked,
                            __on_replica,
                            __on_primary,
                        ))
                        .await;
                        drop(__guard);
                        __answer
                    }
                    None => {
                        let __answer = async {
                            let $conn = __guard.get()?;
                            $body
                        }
                        .await;
                        drop(__guard);
                        __answer
                    }
                };
                match __attempt {
                    Err(e) if __db.retry_read($op, &e, &mut __tries) => {
                        __replicas = false;
                        continue;
                    }
                    other => break other,
                }
            }
        })
    }};
}
pub(crate) use read_on_conn;

pin_project_lite::pin_project! {
    /// The future of [`Db::timed_inline`]: `work` under the statement deadline, in a
    /// span; its outcome recorded when it ends.
    pub(crate) struct Timed<F> {
        operation: &'static str,
        table: &'static str,
        deadline: Duration,
        span: tracing::Span,
        #[pin]
        expires: Expires,
        #[pin]
        work: F,
    }
}

pin_project_lite::pin_project! {
    /// The deadline of a [`Timed`]: when it started (for the metric) and its timer.
    #[project = ExpiresProj]
    enum Expires {
        Idle,
        Armed {
            started: tokio::time::Instant,
            #[pin]
            timer: tokio::time::Sleep,
        },
    }
}

impl<T, F: Future<Output = Result<T>>> Future for Timed<F> {
    type Output = Result<T>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<T>> {
        let mut this = self.project();
        let (operation, table, deadline) = (*this.operation, *this.table, *this.deadline);
        if let Expires::Idle = *this.expires {
            // The clock is read once, for both the deadline and the metric.
            let started = tokio::time::Instant::now();
            let timer = tokio::time::sleep_until(started + deadline + grace(deadline));
            this.expires.set(Expires::Armed { started, timer });
        }
        let ExpiresProj::Armed { started, timer } = this.expires.project() else {
            unreachable!("armed above")
        };
        let started = *started;
        let polled = {
            let _entered = this.span.enter();
            this.work.poll(cx)
        };
        let result = match polled {
            // The server's own deadline: it cancelled the statement, nothing happened.
            std::task::Poll::Ready(Err(e))
                if e.sqlstate() == Some(crate::error::QUERY_CANCELED) =>
            {
                Err(Error::Timeout {
                    operation,
                    after: deadline,
                })
            }
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => {
                std::task::ready!(timer.poll(cx));
                // No answer at all: `work` is dropped with this future, which drops the
                // connection mid-flight (its statement cancelled, the connection
                // closed). A write may or may not have landed.
                match READS.contains(&operation) {
                    true => Err(Error::Timeout {
                        operation,
                        after: deadline,
                    }),
                    false => Err(Error::OutcomeUnknown { operation, table }),
                }
            }
        };
        let started = started.into_std();
        monitor::record_db(operation, table, started, &result);
        std::task::Poll::Ready(result)
    }
}
