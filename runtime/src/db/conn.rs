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
}

/// What a transaction tells the caches after COMMIT. Kept beside the connection, not
/// behind its lock: recording an invalidation never waits for a statement, a stream or
/// a `with_client` body that holds the connection.
#[derive(Default)]
pub(crate) struct Pending {
    /// Cache invalidations of the transaction's writes.
    pub(crate) writes: Vec<Invalidation>,
    /// Tags to drop ([`Db::invalidate_tag`] inside the transaction).
    pub(crate) tags: Vec<String>,
}

/// What [`TxHandle::record`] did with an invalidation.
pub(crate) enum Recorded<T> {
    /// Kept for the end of the transaction.
    Kept,
    /// The transaction had already ended (a write of a task that outlived its body):
    /// the caller applies it now.
    Late(T),
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
    /// The number of the innermost open savepoint (0: none). A nested handle is used
    /// only while its own savepoint is the innermost one — not in a later savepoint
    /// that happens to open at the same depth.
    pub(crate) current: AtomicU32,
    /// The invalidations to apply after COMMIT; `None` once the transaction ended.
    pub(crate) pending: std::sync::Mutex<Option<Pending>>,
    /// Ends the transaction's connection when the transaction is abandoned while
    /// another holder (a clone's statement, a stream, a raw body) has it.
    pub(crate) canceller: Option<Arc<crate::pool::StatementCanceller>>,
    /// Woken when a stream or a raw body takes the connection (see
    /// [`TxHandle::take`]).
    pub(crate) held: tokio::sync::Notify,
}

/// A handle's link to its transaction: the connection, and the savepoint depth the
/// handle belongs to (0 for the transaction itself).
#[derive(Clone)]
pub(crate) struct TxHandle {
    pub(crate) conn: Arc<Mutex<TxConn>>,
    pub(crate) shared: Arc<TxShared>,
    pub(crate) depth: u32,
    /// The number of the savepoint this handle belongs to (0 for the transaction).
    pub(crate) savepoint: u32,
    /// The user scope the transaction switched to when it began (none: the
    /// connection's own role). A handle with any other scope may not use it.
    pub(crate) scope: Option<Arc<crate::auth::Scope>>,
}

impl TxHandle {
    pub(crate) fn new(conn: Pooled, scope: Option<Arc<crate::auth::Scope>>) -> TxHandle {
        let shared = TxShared {
            pending: std::sync::Mutex::new(Some(Pending::default())),
            canceller: conn.stopper(),
            ..TxShared::default()
        };
        TxHandle {
            conn: Arc::new(Mutex::new(TxConn { conn: Some(conn) })),
            shared: Arc::new(shared),
            depth: 0,
            savepoint: 0,
            scope,
        }
    }

    /// Keeps `write` for the end of the transaction, or hands it back when the
    /// transaction already ended.
    pub(crate) fn record(&self, write: Invalidation) -> Recorded<Invalidation> {
        let Ok(mut pending) = self.shared.pending.lock() else {
            return Recorded::Late(write);
        };
        match pending.as_mut() {
            Some(pending) => {
                pending.writes.push(write);
                Recorded::Kept
            }
            None => Recorded::Late(write),
        }
    }

    /// [`record`](Self::record) for a tag.
    pub(crate) fn record_tag(&self, tag: &str) -> Recorded<String> {
        let Ok(mut pending) = self.shared.pending.lock() else {
            return Recorded::Late(tag.to_owned());
        };
        match pending.as_mut() {
            Some(pending) => {
                pending.tags.push(tag.to_owned());
                Recorded::Kept
            }
            None => Recorded::Late(tag.to_owned()),
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

    pub(crate) fn check_depth(&self) -> Result<()> {
        if self.shared.depth.load(Ordering::Acquire) != self.depth
            || self.shared.current.load(Ordering::Acquire) != self.savepoint
        {
            return Err(Error::Misuse(
                "this transaction handle was used while a nested transaction (a savepoint) is \
                 open on it; use the nested transaction's handle until it ends"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Takes the connection out when the transaction ends. Waits for a statement in
    /// flight (bounded by its deadline), never for a stream or a `with_client` body
    /// that outlived the transaction's body: the transaction is then abandoned
    /// (`None`), and its connection is closed — rolling it back — when they let go of
    /// it.
    pub(crate) async fn take(&self) -> Option<Pooled> {
        let state = loop {
            // Registered before the flags are read: a stream or raw body that takes
            // the connection from the queue ahead of this call wakes it.
            let taken = self.shared.held.notified();
            let held = self.shared.streaming.load(Ordering::Acquire)
                || self.shared.raw.load(Ordering::Acquire);
            if held {
                break None;
            }
            tokio::select! {
                state = self.conn.clone().lock_owned() => break Some(state),
                () = taken => continue,
            }
        };
        match state {
            Some(mut state) => state.conn.take(),
            None => {
                // Closed (rolling the transaction back) as soon as they let go of it.
                self.abandon();
                None
            }
        }
    }

    /// The invalidations recorded so far, for a COMMIT whose outcome is being
    /// resolved; the transaction still records.
    pub(crate) fn pending_so_far(&self) -> Vec<Invalidation> {
        self.shared
            .pending
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.writes.clone()))
            .unwrap_or_default()
    }

    /// Stops recording, after COMMIT (or ROLLBACK) came back, and returns everything
    /// recorded until then — a write of the transaction that finished during COMMIT
    /// included. A write recorded later is applied by its caller at once.
    pub(crate) fn finish_pending(&self) -> Pending {
        self.shared
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.take())
            .unwrap_or_default()
    }

    /// Ends the transaction on a way out that cannot wait (a panic, a dropped
    /// future): it is marked abandoned, and its connection — closed, never pooled,
    /// while it is in a transaction — is dropped now, or by a task once a statement
    /// in flight on it lets go. A clone of the handle kept elsewhere (a spawned task)
    /// can then neither use it nor keep its locks.
    pub(crate) fn abandon(&self) {
        self.shared.abandoned.store(true, Ordering::Release);
        self.finish_pending();
        match self.conn.clone().try_lock_owned() {
            Ok(mut state) => drop(state.conn.take()),
            Err(_) => {
                // Whatever holds the connection (a clone's statement waiting on a lock,
                // a stream, a raw body) is stopped, so the locks go now, not at the
                // statement's deadline.
                if let Some(canceller) = &self.shared.canceller {
                    canceller.stop();
                }
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let conn = self.conn.clone();
                    runtime.spawn(async move {
                        drop(conn.lock_owned().await.conn.take());
                    });
                }
            }
        }
    }
}

impl Db {
    /// Whether a call of this handle runs outside any enclosing transaction: its
    /// statements commit on their own or, for a user scope's one-shot call, in a
    /// transaction of its own whose COMMIT is under the call's deadline — either way
    /// a lost answer may have committed. (Inside a transaction, a lost answer dooms it.)
    fn alone(&self) -> bool {
        self.tx.is_none() && super::scope::current_scoped_tx(self).is_none()
    }

    /// Whether a call of this handle commits statement by statement (outside any
    /// transaction, no user scope's transaction around it).
    fn autocommit(&self) -> bool {
        self.tx.is_none() && self.scope.is_none()
    }
}

/// How far a call got, for telling what a deadline that cut it means.
#[derive(Default)]
pub(crate) struct Progress {
    /// Set once the call holds a connection (before that, nothing was sent).
    pub(crate) held: AtomicBool,
    /// Set when a user scope's one-shot transaction sends its COMMIT (before that,
    /// closing the connection rolls everything back).
    pub(crate) committing: AtomicBool,
}

/// Whether a handle's scope is the one its transaction began with.
pub(crate) fn same_scope(
    handle: Option<&crate::auth::Scope>,
    tx: Option<&crate::auth::Scope>,
) -> bool {
    match (handle, tx) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b) || a.parts() == b.parts(),
        _ => false,
    }
}

/// Marks a transaction's connection as held by a `with_client` body; cleared when the
/// body ends or is dropped.
struct RawHold(Arc<TxShared>);

impl RawHold {
    fn new(shared: Arc<TxShared>) -> RawHold {
        shared.raw.store(true, Ordering::Release);
        shared.held.notify_waiters();
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

/// Operations that only read beside [`READS`] (those run as one-shot scoped reads):
/// for telling what a lost answer means, as [`READS`].
const OTHER_READS: &[&str] = &[
    "verify",
    "join",
    "join_count",
    "group_by",
    "sum",
    "avg",
    "min",
    "max",
    "count_by",
    "sum_by",
    "foreign_keys",
    "table_access",
    "policies",
    "verify_schema",
];

/// Whether `operation` may have written when its answer is lost.
fn may_write(operation: &str) -> bool {
    !READS.contains(&operation) && !OTHER_READS.contains(&operation)
}

/// Operations that run the caller's SQL or code (several statements, a procedure that
/// commits as it goes): the server cancelling one at its deadline does not mean nothing
/// was kept.
const OPAQUE: &[&str] = &["raw", "execute_batch", "sql"];

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
            (None, Some(_)) => super::scope::current_scoped_tx(self),
            (None, None) => None,
        }
    }

    /// Marks this handle's transaction (if any) as held by a stream, so that a
    /// statement on it meanwhile is [`Error::Misuse`] instead of waiting forever.
    pub(crate) fn mark_streaming(&self) -> Streaming {
        let shared = self.current_tx().map(|tx| tx.shared);
        if let Some(shared) = &shared {
            shared.streaming.store(true, Ordering::Release);
            shared.held.notify_waiters();
        }
        Streaming(shared)
    }

    /// A connection for one operation: the transaction's, or one from the pool.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        if self.scope.is_some() {
            crate::cache::memo::note_scoped();
        }
        if let Some(tx) = self.current_tx() {
            if !same_scope(self.scope.as_deref(), tx.scope.as_deref()) {
                // `tx.as_user(..)`: the transaction runs in the role it began with, and
                // a statement outside it would escape its ROLLBACK.
                return Err(Error::Misuse(
                    "a handle scoped (`as_user` / `as_claims`) inside a transaction cannot use \
                     that transaction, which runs in the role it began with; scope the handle \
                     first and open the transaction on it: `db.as_user(id).transaction(..)`"
                        .into(),
                ));
            }
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
    ///
    /// `progress` says how far the call got, so a deadline tells a write that may
    /// have landed from one that cannot have (see [`Progress`]).
    pub(crate) fn timed<'a, T: 'a>(
        &'a self,
        operation: &'static str,
        table: &'static str,
        progress: &'a Progress,
        work: impl Future<Output = Result<T>> + 'a,
    ) -> impl Future<Output = Result<T>> + 'a {
        self.timed_with(operation, table, Some(progress), Box::pin(work))
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
    ) -> Timed<'a, impl Future<Output = Result<T>> + 'a> {
        self.timed_with(operation, table, None, work)
    }

    #[inline(always)]
    fn timed_with<'a, T: 'a>(
        &'a self,
        operation: &'static str,
        table: &'static str,
        progress: Option<&'a Progress>,
        work: impl Future<Output = Result<T>> + 'a,
    ) -> Timed<'a, impl Future<Output = Result<T>> + 'a> {
        Timed {
            operation,
            table,
            db: self,
            progress,
            deadline: self.shared.config.statement_timeout,
            span: tracing::debug_span!("tabula.db", operation, table),
            // Armed on the first poll: a future may be built outside a runtime, and
            // its deadline counts from when it starts.
            expires: Expires::Idle,
            work: self.route(operation, progress, work),
        }
    }

    /// `work` as is, or inside a user scope's transaction of its own (see
    /// [`Db::in_scope`]).
    #[inline(always)]
    fn route<'a, T: 'a, F: Future<Output = Result<T>> + 'a>(
        &'a self,
        operation: &'static str,
        progress: Option<&'a Progress>,
        work: F,
    ) -> Either<std::pin::Pin<Box<impl Future<Output = Result<T>> + 'a>>, F> {
        if self.shared.names.own() {
            // Its bare table names may mean other tables than another handle's: a
            // memo whose body reads through it is not shared either (see
            // `Db::shared_reads_allowed`).
            crate::cache::memo::note_scoped();
        }
        let Some(scope) = &self.scope else {
            return Either::Right(work);
        };
        crate::cache::memo::note_scoped();
        if self.tx.is_some() || super::scope::current_scoped_tx(self).is_some() {
            return Either::Right(work);
        }
        let read = READS.contains(&operation);
        Either::Left(Box::pin(self.in_scope(scope, read, progress, work)))
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
        scope: &Arc<crate::auth::Scope>,
        read: bool,
        progress: Option<&Progress>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut conn = self.checkout().await?;
        conn.begin(Setup {
            begin: super::Isolation::ReadCommitted.begin(),
            scope: Some(scope.parts()),
            one_shot: read,
        });
        let tx = TxHandle::new(conn, Some(scope.clone()));
        let result = super::scope::with_scoped_tx(self, tx.clone(), work).await;
        let conn = tx.take().await;
        let abandoned = tx.shared.abandoned.load(Ordering::Acquire);
        let Some(conn) = conn else {
            return Err(Error::Misuse(
                "the connection of a user-scoped call is still held (a stream or a raw body \
                 outlived the call); it is closed, rolling the call back, when let go"
                    .into(),
            ));
        };
        let value = match result {
            Ok(value) => value,
            Err(e) => {
                // Refused or failed: nothing can commit. The ROLLBACK runs in a task of
                // its own, so the caller has the answer now, not after another round
                // trip that the deadline might cut (and without a runtime, the
                // connection is closed, which rolls back as well).
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let db = self.clone();
                    runtime.spawn(async move {
                        let _ = db.end(conn, false, abandoned, &Vec::new).await;
                    });
                }
                return Err(e);
            }
        };
        if let Some(progress) = progress {
            // From here the call's own COMMIT may land whatever happens to its answer.
            progress.committing.store(true, Ordering::Release);
        }
        let ended = self
            .end(conn, true, abandoned, &|| tx.pending_so_far())
            .await;
        // What was recorded for after COMMIT (an invalidation asked for inside the
        // call's `with_client` body), once COMMIT came back.
        let pending = tx.finish_pending();
        // Nothing recorded (every call but a hand-made invalidation inside the call's
        // `with_client` body): no cache is asked.
        if matches!(&ended, Ok(()) | Err(Error::CommitOutcomeUnknown)) {
            if !pending.writes.is_empty() {
                self.apply_invalidation(&pending.writes).await;
            }
            for tag in &pending.tags {
                self.drop_tag(tag).await;
            }
        }
        ended?;
        Ok(value)
    }

    /// Runs `body` on a connection inside a span, under the statement deadline, and
    /// records the outcome.
    pub(crate) async fn run<T>(
        &self,
        operation: &'static str,
        table: &'static str,
        body: impl AsyncFnOnce(&mut PgConn) -> Result<T>,
    ) -> Result<T> {
        let progress = Progress::default();
        self.timed(operation, table, &progress, async {
            let mut conn = self.conn().await?;
            progress.held.store(true, Ordering::Release);
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
    /// db.execute_batch("CREATE TABLE IF NOT EXISTS t (id int)").await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_batch(&self, sql: &str) -> Result<()> {
        let mark = self.write_mark();
        let result = self
            .run("execute_batch", "-", async |conn| {
                let done = conn.batch(sql).await;
                self.learn_names(conn).await;
                done
            })
            .await;
        // DDL may have changed the foreign keys the cache follows.
        self.forget_schema();
        self.note_raw_write().await;
        mark.done();
        result
    }

    /// After the caller's own SQL on `conn` (which may have run `SET search_path`,
    /// `SET ROLE`, `set_config`, created a temporary table, left a transaction block
    /// open or aborted, or called a function doing any of these): a session that is
    /// no longer in its first state is closed when let go, never pooled again — as
    /// `with_client` resets its session — and the handle learns the schemas it found
    /// (see `SessionNames`). One round trip, marked in flight: a caller that stops
    /// waiting during it leaves a connection that is closed. No answer outside a
    /// transaction of Tabula's (the caller's own block failed): closed too.
    pub(crate) async fn learn_names(&self, conn: &mut PgConn) {
        conn.in_flight = true;
        let learned = self.shared.names.learn(conn.client(), false).await;
        conn.in_flight = false;
        match learned {
            // Inside a transaction of Tabula's the block is its own.
            Ok((changed, in_block)) => {
                if changed || (in_block && !conn.in_transaction) {
                    conn.discard = true;
                }
            }
            Err(_) if !conn.in_transaction => conn.discard = true,
            // An aborted transaction of Tabula's: its settings are undone with it.
            Err(_) => {}
        }
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
        let progress = Progress::default();
        let result = self
            .timed("raw", "-", &progress, async {
                let tx = self.current_tx();
                let mut conn = self.conn().await?;
                progress.held.store(true, Ordering::Release);
                let pg = conn.get()?;
                pg.flush_setup().await?;
                pg.in_flight = true;
                // While the body holds the connection, any other statement on this
                // transaction — from this task or another — is refused, not queued forever.
                let raw = tx.as_ref().map(|tx| RawHold::new(tx.shared.clone()));
                let mut result = body(pg.client()).await;
                drop(raw);
                if pg.in_transaction {
                    // A plain SET inside a transaction outlives its COMMIT.
                    pg.discard = true;
                    // A search path set there: the transaction's writes to bare names
                    // may land in its schemas.
                    self.learn_names(pg).await;
                    pg.in_flight = true;
                    // The body may have written: the commit protocol needs the id.
                    if let (Ok(_), Err(e)) = (&result, pg.learn_xid().await) {
                        result = Err(e);
                    }
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
    pub(crate) struct Timed<'a, F> {
        operation: &'static str,
        table: &'static str,
        // The handle, asked only when the call failed (see `Db::alone`).
        db: &'a Db,
        // How far the call got (none: not tracked).
        progress: Option<&'a Progress>,
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

impl<T, F: Future<Output = Result<T>>> Future for Timed<'_, F> {
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
            // The server's own deadline: it cancelled the statement — and with it,
            // outside a transaction, everything but what the caller's own SQL (a
            // procedure, several statements) had committed before.
            std::task::Poll::Ready(Err(e))
                if e.sqlstate() == Some(crate::error::QUERY_CANCELED) =>
            {
                match this.db.autocommit() && OPAQUE.contains(&operation) {
                    true => Err(Error::OutcomeUnknown { operation, table }),
                    false => Err(Error::Timeout {
                        operation,
                        after: deadline,
                    }),
                }
            }
            // The connection closed before the answer: a write alone may have been
            // committed by the server all the same.
            std::task::Poll::Ready(Err(Error::Connection(_)))
                if may_write(operation) && this.db.autocommit() =>
            {
                Err(Error::OutcomeUnknown { operation, table })
            }
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => {
                std::task::ready!(timer.poll(cx));
                // No answer at all: `work` is dropped with this future, which drops the
                // connection mid-flight (its statement cancelled, the connection
                // closed). A write may or may not have landed — unless it never held a
                // connection.
                // Inside a transaction the statement's loss dooms the transaction:
                // nothing it did is kept.
                let landed = may_write(operation)
                    && this.db.alone()
                    && this.progress.is_none_or(|p| {
                        match this.db.autocommit() {
                            // A statement on its own: once it holds a connection.
                            true => p.held.load(Ordering::Acquire),
                            // A user scope's one-shot transaction: once its COMMIT went out.
                            false => p.committing.load(Ordering::Acquire),
                        }
                    });
                match landed {
                    false => Err(Error::Timeout {
                        operation,
                        after: deadline,
                    }),
                    true => Err(Error::OutcomeUnknown { operation, table }),
                }
            }
        };
        let started = started.into_std();
        monitor::record_db(operation, table, started, &result);
        std::task::Poll::Ready(result)
    }
}
