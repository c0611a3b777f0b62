//! Transactions: BEGIN with the first statement, savepoints for nested calls, and the
//! commit protocol that never reports `Ok` for work the database did not keep.
//!
//! # The commit protocol
//!
//! 1. Inside a transaction, the id PostgreSQL assigns at the first write
//!    (`pg_current_xact_id_if_assigned()`) is asked for in the same pipeline as each
//!    statement until it is known, so it costs no round trip.
//! 2. COMMIT is sent behind that same query. In an aborted transaction (a statement
//!    failed and the body handled the error) the query fails and COMMIT can only roll
//!    back: the transaction is [`Error::TransactionAborted`], never `Ok`.
//! 3. An error COMMIT itself reports (a deferred constraint, a serialization failure,
//!    the server's deadline) means it rolled back: that error is returned, and
//!    serialization failures are retried as anywhere in the body.
//! 4. When COMMIT's answer is lost (the connection dropped, the client's deadline
//!    passed), the connection is closed and the transaction id is looked up with
//!    `pg_xact_status` on a fresh connection until it is `committed` or `aborted`; a
//!    transaction still `in progress` there belongs to a session we gave up, so its
//!    backend is terminated to force an outcome. Committed: `Ok`, and the cache is
//!    invalidated. Aborted: the original error (nothing was kept; retrying is safe).
//! 5. Only when the server cannot be asked within the statement deadline is the result
//!    [`Error::CommitOutcomeUnknown`]. Its cache invalidations are applied at once and
//!    again when the server answers (a background task keeps asking for a while), so a
//!    commit that lands late cannot leave a stale entry behind.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;

use super::conn::{TxHandle, grace};
use super::{Db, Invalidation, Pooled};
use crate::error::{Error, Result};
use crate::monitor;
use crate::pool::Setup;

/// Isolation level of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// PostgreSQL's default.
    #[default]
    ReadCommitted,
    /// One snapshot for the whole transaction.
    RepeatableRead,
    /// As if transactions ran one at a time; conflicts are retried by Tabula.
    Serializable,
}

impl Isolation {
    /// BEGIN, and a transaction-local mark the commit protocol checks: a transaction
    /// ended behind Tabula's back (a raw COMMIT or ROLLBACK) has lost it.
    pub(crate) fn begin(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN; SELECT set_config('tabula.tx', '1', true)",
            Isolation::RepeatableRead => {
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT set_config('tabula.tx', '1', true)"
            }
            Isolation::Serializable => {
                "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT set_config('tabula.tx', '1', true)"
            }
        }
    }
}

/// What became of a transaction whose COMMIT answer was lost.
enum Resolution {
    Committed,
    Aborted,
    Unknown,
}

/// Sent in the same pipeline as COMMIT: the transaction's id (NULL if it never
/// wrote) and the mark BEGIN set. It fails in an aborted transaction; it finds no mark
/// when the transaction was ended behind Tabula's back.
const COMMIT_PROBE: &str = crate::pool::CURRENT_XID;

const XACT_STATUS: &str = "SELECT pg_xact_status(($1::text)::xid8)";
/// The backend still running the transaction (an `xid` is the low 32 bits of the
/// `xid8`), terminated so that its transaction ends one way or the other.
const TERMINATE_XACT: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
     WHERE backend_xid::text::bigint = ($1::text)::bigint % 4294967296";

impl Db {
    /// Runs `body` in a transaction: COMMIT when it returns `Ok`, ROLLBACK when it
    /// returns `Err`, panics or is dropped. `body` receives a `Db` bound to the
    /// transaction. On a serialization failure or deadlock the whole body is run again,
    /// with a growing pause, up to [`DbConfig::transaction_attempts`](crate::DbConfig)
    /// times — and once more, at once, when a schema change made a prepared statement
    /// stale (it is prepared again) — so it should have no side effects outside the
    /// database.
    ///
    /// - **Aborted transactions are errors.** If a statement fails and the body
    ///   handles the error and returns `Ok`, PostgreSQL has already aborted the
    ///   transaction: the result is [`Error::TransactionAborted`], and nothing it wrote
    ///   exists. To handle a failure and go on, put the statement in a nested
    ///   transaction.
    /// - **Nested calls are savepoints.** `transaction` on a handle that is already in
    ///   a transaction runs `body` under a SAVEPOINT: released on `Ok`, rolled back to
    ///   on `Err` or a panic (which then continues), so the outer transaction stays
    ///   usable. While it runs, use its handle, not the outer one
    ///   ([`Error::Misuse`] otherwise).
    /// - **A lost COMMIT answer is resolved**, not guessed (see the commit protocol in
    ///   this module's source docs): `Ok` if the server says it committed, the original
    ///   error if it says it did not, and [`Error::CommitOutcomeUnknown`] only when the
    ///   server cannot be asked. None of these is retried blindly.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, #[table(unique)] pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let (a, b) = db
    ///     .transaction(|tx| async move {
    ///         let a = tx.create(NewNote { body: "a".into() }).await?;
    ///         // A failure we mean to survive goes in a savepoint.
    ///         let b = tx
    ///             .transaction(|sp| async move { sp.create(NewNote { body: "a".into() }).await })
    ///             .await;
    ///         Ok((a, b.is_err()))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction<T, F, Fut>(&self, body: F) -> Result<T>
    where
        F: FnMut(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.transaction_with(Isolation::default(), body).await
    }

    /// [`Db::transaction`] at a chosen isolation level (ignored for a nested call,
    /// which inherits its transaction's).
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// db.transaction_with(tabula::Isolation::Serializable, |tx| async move { Ok(()) }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction_with<T, F, Fut>(&self, isolation: Isolation, mut body: F) -> Result<T>
    where
        F: FnMut(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // Inside a user scope's one-shot call of this handle (a scoped `with_client`
        // body), the call's transaction is this one's enclosing transaction.
        let enclosing = match &self.tx {
            Some(tx) => Some(tx.clone()),
            None if self.scope.is_some() => super::scope::current_scoped_tx(self),
            None => None,
        };
        if let Some(tx) = &enclosing {
            // A handle whose savepoint ended opens nothing, in a later savepoint either.
            tx.check_depth()?;
            // Numbered before its handle exists: the handle belongs to this savepoint
            // alone, not to a later one opened at the same depth.
            let number = tx.shared.savepoints.fetch_add(1, Ordering::AcqRel) + 1;
            return Box::pin(self.savepoint(tx, number, body(self.nested(tx, number)))).await;
        }
        let attempts = self.shared.config.transaction_attempts;
        let mut attempt = 0;
        // Dropped before it returns, the transaction may have committed (see
        // `db/replica.rs`); its COMMIT records the position otherwise.
        let mark = self.write_mark();
        // Each run again after a stale statement made a connection forget all of its
        // statements: as many as there are connections.
        let mut restated = 0;
        let outcome = loop {
            attempt += 1;
            let outcome = Box::pin(self.run_transaction_once(isolation, &mut body)).await;
            match outcome {
                // A statement a schema change made stale doomed this attempt; its
                // connection prepares every statement again (`PgConn::forget_stale_plan`),
                // so one more attempt there, at once, does not meet it again.
                Err(e) if e.is_stale_statement() && restated < self.shared.config.pool_size => {
                    restated += 1;
                    tracing::debug!(error = %e, "transaction run again after a stale statement");
                }
                Err(e) if e.is_retryable_conflict() => {
                    if attempt >= attempts {
                        break Err(Error::Conflict {
                            sqlstate: e.sqlstate().unwrap_or_default().to_owned(),
                            attempts: attempt,
                        });
                    }
                    metrics::counter!(monitor::DB_TRANSACTION_RETRIES).increment(1);
                    tracing::debug!(attempt, error = %e, "retrying transaction");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => break other,
            }
        };
        mark.done();
        outcome
    }

    /// The handle a nested transaction's body gets: one savepoint deeper, savepoint
    /// `number`.
    fn nested(&self, tx: &TxHandle, number: u32) -> Db {
        Db {
            shared: self.shared.clone(),
            tx: Some(TxHandle {
                depth: tx.depth + 1,
                savepoint: number,
                ..tx.clone()
            }),
            scope: self.scope.clone(),
            route: self.route,
        }
    }

    /// Runs `body` under a SAVEPOINT: one nested transaction at a time per level (a
    /// second one started beside it is [`Error::Misuse`]); released on `Ok`, rolled
    /// back to on `Err` or a panic. A nested transaction whose future is dropped
    /// half-way leaves the whole transaction able only to roll back.
    async fn savepoint<T>(
        &self,
        tx: &TxHandle,
        number: u32,
        body: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        tx.shared
            .depth
            .compare_exchange(tx.depth, tx.depth + 1, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| {
                Error::Misuse(
                    "a nested transaction was started beside another one on the same \
                     transaction; run them one after the other"
                        .into(),
                )
            })?;
        // Checked again now that this level is ours: the handle's own savepoint must be
        // the innermost open one (another opened at this depth meanwhile is not).
        if tx.shared.current.load(Ordering::Acquire) != tx.savepoint {
            tx.shared.depth.store(tx.depth, Ordering::Release);
            return Err(Error::Misuse(
                "this transaction handle belongs to a savepoint that has ended; use the \
                 handle of the savepoint that is open"
                    .into(),
            ));
        }
        // The enclosing level's savepoint is the innermost again when this one ends.
        let parent = tx.shared.current.swap(number, Ordering::AcqRel);
        let guard = SavepointGuard {
            tx: tx.clone(),
            parent,
            done: false,
        };
        let inner = self.nested(tx, number);
        let name = format!("tabula_sp_{number}");
        let opened = inner
            .run("savepoint", "-", async |conn| {
                conn.batch(&format!("SAVEPOINT {name}")).await
            })
            .await;
        if let Err(e) = opened {
            guard.finish();
            return Err(e);
        }
        let mut result = std::panic::AssertUnwindSafe(body).catch_unwind().await;
        if tx.shared.streaming.load(Ordering::Acquire) {
            // A stream of the savepoint's handle outlives its body (returned in its
            // value): it holds the connection RELEASE needs. Dropped here, it lets go;
            // the savepoint rolls back, as the call cannot be whole.
            drop(result);
            result = Ok(Err(stream_outlived_body()));
        }
        let end = match &result {
            Ok(Ok(_)) => format!("RELEASE SAVEPOINT {name}"),
            _ => format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
        };
        let rolled_back = !matches!(result, Ok(Ok(_)));
        let ended = inner
            .run("savepoint", "-", async |conn| {
                let ended = conn.batch(&end).await;
                if ended.is_ok() && rolled_back {
                    // Back to the savepoint: the failure inside it no longer aborts
                    // the transaction.
                    conn.failure = None;
                }
                ended
            })
            .await;
        if ended.is_err() {
            // Neither released nor rolled back to: what the savepoint did stays in the
            // transaction, whatever this call reports, so the transaction can only
            // roll back.
            tx.shared.abandoned.store(true, Ordering::Release);
        }
        guard.finish();
        match (result, ended) {
            (Err(panic), _) => std::panic::resume_unwind(panic),
            (Ok(Err(e)), _) => Err(e),
            // RELEASE in an aborted transaction: a statement failed and was handled
            // inside the savepoint's body.
            (Ok(Ok(_)), Err(e)) if e.sqlstate() == Some(crate::error::IN_FAILED_TRANSACTION) => {
                Err(Error::TransactionAborted { sqlstate: None })
            }
            (Ok(Ok(_)), Err(e)) => Err(e),
            (Ok(Ok(value)), Ok(())) => Ok(value),
        }
    }

    async fn run_transaction_once<T, F, Fut>(&self, isolation: Isolation, body: &mut F) -> Result<T>
    where
        F: FnMut(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut conn = self.checkout().await?;
        // BEGIN (and the scope's role and claims) travel with the first statement.
        conn.begin(Setup {
            begin: isolation.begin(),
            scope: self.scope.as_ref().map(|s| s.parts()),
            one_shot: false,
        });
        let tx = TxHandle::new(conn, self.scope.clone());
        let handle = Db {
            shared: self.shared.clone(),
            tx: Some(tx.clone()),
            scope: self.scope.clone(),
            route: self.route,
        };
        // A panic in the body, or this future dropped, ends the transaction at once: a
        // clone of its handle kept elsewhere (a spawned task) can neither use it nor
        // keep its locks.
        let mut abandon = Abandon(Some(tx.clone()));
        let result = std::panic::AssertUnwindSafe(body(handle))
            .catch_unwind()
            .await;
        let result = match result {
            Ok(result) => result,
            Err(panic) => {
                drop(abandon);
                std::panic::resume_unwind(panic)
            }
        };
        let result = match tx.shared.streaming.load(Ordering::Acquire) {
            // A stream of the transaction outlives its body (returned in its value): it
            // holds the connection COMMIT needs. Dropped here, it lets go; the
            // transaction rolls back, as the body's work cannot be whole.
            true => {
                drop(result);
                Err(stream_outlived_body())
            }
            false => result,
        };
        let mut conn = tx.take().await;
        // Disarmed (not forgotten: it holds the handle's references).
        abandon.0 = None;
        if conn.is_some() && tx.shared.depth.load(Ordering::Acquire) != 0 {
            // A nested transaction (run by a task the body spawned) is still open: what
            // it did is neither released nor rolled back, so nothing may commit.
            tx.abandon();
            drop(conn.take());
            tx.finish_pending();
            return Err(Error::Misuse(
                "a nested transaction was still open when its transaction's body returned; \
                 await it inside the body — the transaction was rolled back"
                    .into(),
            ));
        }
        let abandoned = tx.shared.abandoned.load(Ordering::Acquire);
        let Some(conn) = conn else {
            tx.finish_pending();
            return Err(match result {
                Err(e) => e,
                Ok(_) => Error::Misuse(
                    "a stream or a `with_client` body of this transaction outlived its body \
                     and holds its connection; the transaction rolls back when they let go"
                        .into(),
                ),
            });
        };
        match result {
            Ok(value) => {
                // COMMIT and the invalidations run in a task of their own, so a caller
                // that gives up half-way cannot leave committed rows stale in the cache.
                let db = self.clone();
                let touched = tx.shared.schema_touched.load(Ordering::Acquire);
                join_task(tokio::spawn(async move {
                    let outcome = db.end(conn, true, abandoned, &|| tx.pending_so_far()).await;
                    if touched {
                        db.forget_schema();
                    }
                    // Taken after COMMIT came back: a write of the transaction that
                    // finished meanwhile (another task's) is in it.
                    let pending = tx.finish_pending();
                    if matches!(&outcome, Ok(()) | Err(Error::CommitOutcomeUnknown)) {
                        db.apply_invalidation(&pending.writes).await;
                        for tag in &pending.tags {
                            db.drop_tag(tag).await;
                        }
                    }
                    outcome
                }))
                .await?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.end(conn, false, abandoned, &Vec::new).await;
                tx.finish_pending();
                if tx.shared.schema_touched.load(Ordering::Acquire) {
                    self.forget_schema();
                }
                Err(e)
            }
        }
    }

    /// Ends the transaction on `conn`: COMMIT (by the commit protocol) or ROLLBACK.
    pub(crate) async fn end(
        &self,
        mut conn: Pooled,
        commit: bool,
        abandoned: bool,
        writes: &(dyn Fn() -> Vec<Invalidation> + Sync),
    ) -> Result<()> {
        if conn.pending_setup.take().is_some() {
            // No statement ran: BEGIN was never sent, there is nothing to end.
            conn.in_transaction = false;
            return Ok(());
        }
        let deadline = self.shared.config.statement_timeout;
        let aborted = conn.in_flight || conn.failure.is_some() || abandoned;
        if !commit || aborted {
            conn.in_flight = false;
            let rolled_back = tokio::time::timeout(deadline, conn.batch("ROLLBACK")).await;
            if matches!(rolled_back, Ok(Ok(()))) {
                conn.in_transaction = false;
            }
            return match commit {
                true => Err(Error::TransactionAborted {
                    sqlstate: conn.failure.take().filter(|s| !s.is_empty()),
                }),
                false => Ok(()),
            };
        }
        // Prepared already (it travelled behind the transaction's statements); the
        // deadline only matters for a transaction that ran none through Tabula.
        // Unnamed behind a transaction pooler (see `DbConfig::transaction_pooling`).
        let probe = match tokio::time::timeout(deadline, conn.statement(COMMIT_PROBE)).await {
            Ok(Ok(probe)) => probe,
            Ok(Err(e)) => return self.resolve_lost_commit(conn, e, writes).await,
            Err(_) => {
                let lost = Error::Timeout {
                    operation: "commit",
                    after: deadline,
                };
                return self.resolve_lost_commit(conn, lost, writes).await;
            }
        };
        conn.in_flight = true;
        let client = conn.client();
        let exchange = async {
            tokio::join!(
                crate::pool::query_opt_on(client, COMMIT_PROBE, &probe),
                client.batch_execute("COMMIT")
            )
        };
        let (probe, committed) =
            match tokio::time::timeout(deadline + grace(deadline), exchange).await {
                Ok(answers) => answers,
                Err(_) => {
                    let lost = Error::Timeout {
                        operation: "commit",
                        after: deadline,
                    };
                    return self.resolve_lost_commit(conn, lost, writes).await;
                }
            };
        conn.in_flight = false;
        if let Ok(Some(row)) = &probe
            && let Ok(Some(xid)) = row.try_get::<_, Option<String>>(0)
        {
            conn.xid = Some(xid);
        }
        match committed.map_err(Error::from) {
            Ok(()) => {
                conn.in_transaction = false;
                // A transaction that wrote: replicas must replay this far before
                // they answer this handle (see `db/replica.rs`).
                if conn.xid.is_some() {
                    self.note_write(Some(&mut conn)).await;
                }
                match probe.map_err(Error::from) {
                    Ok(Some(row))
                        if row
                            .try_get::<_, Option<String>>(1)
                            .ok()
                            .flatten()
                            .as_deref()
                            != Some("1") =>
                    {
                        // COMMIT found no transaction: it was ended through the raw
                        // client, and what it kept is not Tabula's to report.
                        Err(Error::Misuse(
                            "the transaction was ended through `with_client` (a raw COMMIT or \
                             ROLLBACK); what it kept is unknown to Tabula"
                                .into(),
                        ))
                    }
                    Ok(_) => Ok(()),
                    // The probe failed in an aborted transaction: COMMIT rolled back.
                    Err(e) if !matches!(e, Error::Connection(_)) => {
                        Err(Error::TransactionAborted {
                            sqlstate: conn.failure.take().filter(|s| !s.is_empty()),
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            Err(lost @ Error::Connection(_)) => self.resolve_lost_commit(conn, lost, writes).await,
            // COMMIT itself failed (a deferred constraint, a serialization failure, the
            // server's deadline): the transaction rolled back.
            Err(e) => {
                conn.in_transaction = false;
                Err(match e {
                    Error::Database { ref sqlstate, .. }
                        if sqlstate == crate::error::QUERY_CANCELED =>
                    {
                        Error::Timeout {
                            operation: "commit",
                            after: deadline,
                        }
                    }
                    e => e,
                })
            }
        }
    }

    /// COMMIT's answer was lost: close the connection and ask the server what became
    /// of the transaction.
    async fn resolve_lost_commit(
        &self,
        conn: Pooled,
        lost: Error,
        writes: &(dyn Fn() -> Vec<Invalidation> + Sync),
    ) -> Result<()> {
        let xid = conn.xid.clone();
        // Closed, never reused (it is still marked in a transaction); the server ends
        // the session, and with it any transaction that did not commit.
        drop(conn);
        let Some(xid) = xid else {
            // The transaction never wrote (no id was assigned): whether COMMIT arrived
            // changes nothing.
            return Ok(());
        };
        match self
            .resolve(&xid, self.shared.config.statement_timeout)
            .await
        {
            Resolution::Committed => {
                self.note_write(None).await;
                Ok(())
            }
            Resolution::Aborted => Err(lost),
            Resolution::Unknown => {
                tracing::warn!(xid, "commit outcome unknown: the database cannot be asked");
                self.settle_later(Some(xid), writes());
                Err(Error::CommitOutcomeUnknown)
            }
        }
    }

    /// Asks PostgreSQL, on a connection of its own, what became of transaction `xid`,
    /// for at most `bound`.
    async fn resolve(&self, xid: &str, bound: Duration) -> Resolution {
        let give_up = tokio::time::Instant::now() + bound.max(Duration::from_secs(1));
        let mut asked_in_progress = 0u32;
        while tokio::time::Instant::now() < give_up {
            let attempt = tokio::time::timeout_at(give_up, async {
                let conn = self.shared.manager.connect().await?;
                loop {
                    let row = conn.client().query_one(XACT_STATUS, &[&xid]).await?;
                    match row.try_get::<_, Option<String>>(0)?.as_deref() {
                        Some("committed") => return Ok(Resolution::Committed),
                        Some("aborted") => return Ok(Resolution::Aborted),
                        Some(_) => {
                            // Still running in the session we gave up: end it.
                            asked_in_progress += 1;
                            if asked_in_progress > 2 {
                                conn.client().execute(TERMINATE_XACT, &[&xid]).await?;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        None => return Ok(Resolution::Unknown),
                    }
                }
            })
            .await;
            match attempt {
                Ok(Ok(resolution)) => return resolution,
                Ok(Err::<_, Error>(e)) => {
                    tracing::debug!(error = %e, "cannot ask for a transaction's outcome yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => break,
            }
        }
        Resolution::Unknown
    }

    /// After an unknown outcome: keeps asking in the background — what became of
    /// transaction `xid`, or, without one, only whether the server answers again — and
    /// then applies `writes` again, so a write that landed late cannot leave a stale
    /// entry behind.
    pub(crate) fn settle_later(&self, xid: Option<String>, writes: Vec<Invalidation>) {
        // Asked of every cache of the database (another handle's too), as
        // `apply_invalidation` tells them all.
        if self.no_cache_holds_database() || writes.is_empty() {
            return;
        }
        let db = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            for _ in 0..40 {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(15));
                let known = match &xid {
                    Some(xid) => match db.resolve(xid, Duration::from_secs(2)).await {
                        Resolution::Committed => true,
                        Resolution::Aborted => return,
                        Resolution::Unknown => false,
                    },
                    None => db.answers().await,
                };
                if known {
                    break;
                }
            }
            db.apply_invalidation(&writes).await;
        });
    }

    /// Whether the server answers on a fresh connection.
    async fn answers(&self) -> bool {
        let deadline = self.shared.config.statement_timeout;
        tokio::time::timeout(deadline, async {
            let conn = self.shared.manager.connect().await?;
            conn.client().batch_execute("SELECT 1").await?;
            Ok::<_, Error>(())
        })
        .await
        .is_ok_and(|r| r.is_ok())
    }
}

/// Closes a savepoint's level when it ends — or, dropped half-way, marks the
/// transaction abandoned (it can then only roll back).
struct SavepointGuard {
    tx: TxHandle,
    /// The savepoint that is the innermost again once this one ends.
    parent: u32,
    done: bool,
}

impl SavepointGuard {
    fn finish(mut self) {
        self.done = true;
        self.close();
    }

    fn close(&self) {
        self.tx.shared.current.store(self.parent, Ordering::Release);
        self.tx.shared.depth.store(self.tx.depth, Ordering::Release);
    }
}

impl Drop for SavepointGuard {
    fn drop(&mut self) {
        if !self.done {
            self.tx.shared.abandoned.store(true, Ordering::Release);
            self.close();
        }
    }
}

/// Ends a transaction whose body panicked or whose future was dropped (see
/// [`TxHandle::abandon`]); disarmed on the ordinary ways out.
struct Abandon(Option<TxHandle>);

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            tx.abandon();
        }
    }
}

/// A stream of a transaction (or savepoint) returned from its body.
fn stream_outlived_body() -> Error {
    Error::Misuse(
        "a stream of this transaction outlived its body (returned in its value); read it \
         inside the body — the transaction was rolled back"
            .into(),
    )
}

/// Awaits a task that must not be abandoned, passing its panic on.
pub(crate) async fn join_task<T>(handle: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match handle.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Misuse("the runtime shut down during a write".into())),
    }
}

/// 10 ms, 20 ms, 40 ms … capped at 1 s, with up to 50% jitter so that transactions that
/// collided do not collide again in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(10).saturating_mul(1 << attempt.min(7).saturating_sub(1));
    let base = base.min(Duration::from_secs(1));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}
