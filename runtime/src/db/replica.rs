//! Read replicas ([`DbConfig::replica`](super::DbConfig::replica)): reads outside a
//! transaction go to a streaming standby that has replayed every write this handle
//! depends on; writes, transactions and everything else go to the primary.
//!
//! # The rules
//!
//! 1. **A read's floor.** Every write through a [`Db`] (any clone of it) records the
//!    primary's WAL insert position after its COMMIT: a position at or past the
//!    commit record. A read needs a replica that has replayed up to the highest
//!    position recorded so far, or up to the [`ConsistencyToken`] the handle was
//!    given ([`Db::at_least`]), whichever is higher.
//! 2. **The check.** Each replica remembers the highest replay position it reported.
//!    A read whose floor is at or below it goes straight to the replica; otherwise
//!    the replica is asked (`pg_last_wal_replay_lsn()`, one round trip), and when it
//!    is still behind, the read goes to the primary — it never waits for a replica to
//!    catch up.
//! 3. **The cache is filled from the primary.** A read that will fill the row cache,
//!    a cached query or a unique value's mapping reads the primary, and so does every
//!    read of a `#[cached]` function's body (a task-local flag; reads in tasks the
//!    body spawns are not marked): an entry is then never older than the primary was
//!    when its lease was taken, so the lease protocol's guarantee (an invalidation
//!    after the lease refuses the fill) holds as without replicas. A lagging replica
//!    can delay nothing but uncached reads of handles that did not write.
//! 4. **A write dropped mid-way.** A write whose caller stopped waiting before its
//!    position was recorded (a dropped future, a client deadline) may still commit,
//!    until its statement deadline (and grace) has passed: until then the handle's
//!    reads go to the primary, and the first read after asks the primary's position.
//! 5. **What stays on the primary:** transactions, user-scoped handles, raw SQL
//!    (`sql`, `sql_rows`, `execute_batch`, `with_client` may write; their WAL position
//!    is recorded after them), streams, the staleness check's reads.
//! 6. **Failures fall back.** A replica has half the statement deadline to hand out a
//!    connection, report its replay and answer the read; past it the same read starts
//!    on the primary too, and the first answer wins (a slow answer from a healthy
//!    replica that still comes first is taken). A replica that lost that race, or
//!    whose connection broke, is left out for 5 s. A read the standby cancelled for a
//!    conflict with recovery is read on the primary. A replica
//!    must be a standby (in recovery) of the primary's database — same name, oid and,
//!    where the role may read it, system identifier — or it is never read.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Db, Pooled};
use crate::error::{Error, Result};
use crate::pool::Pool;

/// A position in the primary's write-ahead log: what a replica must have replayed
/// before it may answer a read of the handle that holds it. Written as PostgreSQL
/// writes an LSN (`16/B374D848`), so a web application can keep it in a cookie or a
/// header and hand it to the next request's handle ([`Db::at_least`]).
///
/// ```
/// let token: tabula::db::ConsistencyToken = "16/B374D848".parse()?;
/// assert_eq!(token.to_string(), "16/B374D848");
/// # Ok::<(), tabula::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConsistencyToken(u64);

impl ConsistencyToken {
    /// The start of the log: no write to wait for.
    pub const NONE: ConsistencyToken = ConsistencyToken(0);
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for ConsistencyToken {
    type Err = Error;

    fn from_str(text: &str) -> Result<ConsistencyToken> {
        let bad = || Error::Validation(format!("`{text}` is not a WAL position like 16/B374D848"));
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        let part = |s: &str| {
            if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u64::from_str_radix(s, 16).map_err(|_| bad())
        };
        Ok(ConsistencyToken((part(high)? << 32) | part(low)?))
    }
}

/// How long a replica that could not be reached is left out.
const SKIP_UNREACHABLE: Duration = Duration::from_secs(5);

/// One replica's pool and what it last said of its replay.
pub(crate) struct Replica {
    pool: Pool,
    /// Whether it was found to be a standby of the primary's database (asked on its
    /// first connection): 0 not yet, 1 yes, 2 no — never used.
    checked: std::sync::atomic::AtomicU8,
    /// The highest replay position it reported.
    replayed: AtomicU64,
    /// Milliseconds after `started` until which it is skipped (unreachable).
    skip_until: AtomicU64,
    started: Instant,
}

/// The replicas of a [`Db`], and the WAL position of its latest write.
pub(crate) struct Replicas {
    list: Vec<Replica>,
    next: AtomicUsize,
    /// The primary's insert position after this handle's latest write.
    written: AtomicU64,
    /// Writes whose caller's future was dropped before their position was recorded
    /// (counted by [`WriteMark`]), and how many of them a recorded position covers: a
    /// read first asks the primary's position while the first is ahead.
    abandoned: AtomicU64,
    covered: AtomicU64,
    /// Until when (milliseconds after `epoch`) reads stay on the primary: an abandoned
    /// write may still commit until its statement deadline (and grace) has passed.
    hold_until: AtomicU64,
    epoch: Instant,
    /// What a replica must be: the primary's database (name and oid) and cluster
    /// (system identifier, when the role may read it).
    primary: String,
}

impl Replicas {
    pub(crate) fn new(pools: Vec<Pool>, primary: String) -> Replicas {
        Replicas {
            abandoned: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            hold_until: AtomicU64::new(0),
            epoch: Instant::now(),
            primary,
            list: pools
                .into_iter()
                .map(|pool| Replica {
                    pool,
                    checked: std::sync::atomic::AtomicU8::new(0),
                    replayed: AtomicU64::new(0),
                    skip_until: AtomicU64::new(0),
                    started: Instant::now(),
                })
                .collect(),
            next: AtomicUsize::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// A connection to a replica that has replayed up to `floor` and its index, or
    /// `None` (read the primary). Each replica has `patience` to answer the questions
    /// asked here; one that does not is left out for a while.
    async fn checkout(&self, floor: u64, patience: Duration) -> Option<(Pooled, usize)> {
        let n = self.list.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let index = (first + i) % n;
            let replica = &self.list[index];
            if replica.skipped() {
                continue;
            }
            match tokio::time::timeout(patience, self.try_replica(replica, floor)).await {
                Ok(Ok(Some(conn))) => return Some((conn, index)),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    replica.skip();
                    tracing::warn!(error = %e, "a replica cannot be reached: its reads go to the primary for a while");
                }
                Err(_) => {
                    replica.skip();
                    tracing::warn!(
                        "a replica did not answer in time: its reads go to the primary for a while"
                    );
                }
            }
        }
        None
    }

    /// A connection to `replica` if it is a standby of the primary's database that has
    /// replayed up to `floor`; an error when it cannot be reached.
    async fn try_replica(&self, replica: &Replica, floor: u64) -> Result<Option<Pooled>> {
        let mut conn = match replica.pool.get().await {
            Ok(conn) if !conn.is_closed() => conn,
            Ok(_) => return Ok(None),
            Err(e) => return Err(e),
        };
        conn.pending_setup = None;
        match replica.checked.load(Ordering::Acquire) {
            1 => {}
            2 => return Ok(None),
            _ => {
                if same_database(&mut conn, &self.primary).await? {
                    replica.checked.store(1, Ordering::Release);
                } else {
                    replica.checked.store(2, Ordering::Release);
                    tracing::error!(
                        "a configured replica is not a standby of the primary's database \
                         (another database, another cluster, or a server not in recovery): \
                         it is never read"
                    );
                    return Ok(None);
                }
            }
        }
        if replica.replayed.load(Ordering::Acquire) >= floor {
            return Ok(Some(conn));
        }
        let at = replay_position(&mut conn).await?;
        replica.replayed.fetch_max(at, Ordering::AcqRel);
        if at >= floor {
            return Ok(Some(conn));
        }
        metrics::counter!(crate::monitor::DB_REPLICA_BEHIND).increment(1);
        Ok(None)
    }
}

impl Replica {
    fn skipped(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.skip_until.load(Ordering::Relaxed) > now
    }

    /// Leaves it out for [`SKIP_UNREACHABLE`].
    fn skip(&self) {
        let until = self.started.elapsed().as_millis() as u64 + SKIP_UNREACHABLE.as_millis() as u64;
        self.skip_until.store(until, Ordering::Relaxed);
    }
}

/// What a replica has replayed (0 when it says nothing: it is then never ahead).
async fn replay_position(conn: &mut crate::pool::PgConn) -> Result<u64> {
    let row = conn
        .query_opt("SELECT pg_last_wal_replay_lsn()::text", &[])
        .await?;
    let at: Option<String> = match row {
        Some(row) => row.try_get(0)?,
        None => None,
    };
    Ok(at
        .and_then(|t| t.parse::<ConsistencyToken>().ok())
        .map_or(0, |t| t.0))
}

/// What a server must match to serve as a replica: the database's name and oid, and
/// the cluster's system identifier where the role may read it (a standby shares its
/// primary's). Two questions: PostgreSQL checks the right to call
/// `pg_control_system()` when it plans the call, even in a branch never taken, so it
/// is only asked of a role that may.
pub(crate) async fn what_it_is(conn: &mut crate::pool::PgConn) -> Result<(String, bool)> {
    const DATABASE: &str = "SELECT current_database()::text || '/' || \
         (SELECT oid::text FROM pg_database WHERE datname = current_database()), \
         has_function_privilege('pg_control_system()', 'EXECUTE'), pg_is_in_recovery()";
    const CLUSTER: &str = "SELECT system_identifier::text FROM pg_control_system()";
    let Some(row) = conn.query_opt(DATABASE, &[]).await? else {
        return Err(Error::Connect(
            "the server did not say which database it is".into(),
        ));
    };
    let (database, may_ask, recovering): (String, bool, bool) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let cluster = match may_ask {
        true => conn
            .query_opt(CLUSTER, &[])
            .await?
            .map(|row| row.try_get::<_, String>(0))
            .transpose()?
            .unwrap_or_default(),
        false => "?".to_owned(),
    };
    Ok((format!("{database}/{cluster}"), recovering))
}

/// Whether the server behind `conn` is a standby (in recovery) of the primary's
/// database: another database, another cluster, or a server that is not in recovery
/// (it would never replay the primary's writes) is not.
async fn same_database(conn: &mut crate::pool::PgConn, primary: &str) -> Result<bool> {
    let (what, recovering) = what_it_is(conn).await?;
    Ok(recovering && what == primary)
}

/// Marks a write on a handle with replicas; dropped before [`WriteMark::done`] (the
/// caller's future was dropped mid-write), it tells reads to ask the primary's
/// position first: the write may have committed.
pub(crate) struct WriteMark {
    shared: Option<std::sync::Arc<super::Shared>>,
}

impl WriteMark {
    /// Its position was recorded (or it is known not to have written).
    pub(crate) fn done(mut self) {
        self.shared = None;
    }
}

impl Drop for WriteMark {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        if let Some(replicas) = &shared.replicas {
            // The statement may run (and commit) until its deadline and grace: reads
            // stay on the primary until then, and then ask its position once.
            let deadline = shared.config.statement_timeout;
            let until = replicas.epoch.elapsed() + deadline + super::conn::grace(deadline);
            replicas
                .hold_until
                .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
            replicas.abandoned.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Where a handle's reads may go (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Route {
    /// The floor a handle was given ([`Db::at_least`]).
    pub(crate) at_least: u64,
    /// Reads go to the primary (reads that fill the cache).
    pub(crate) primary: bool,
}

impl Db {
    /// The position a replica must have replayed for this handle: its latest write's
    /// (through any clone of it) or the token it was given, whichever is later. Hand it
    /// to another process's handle with [`Db::at_least`] — e.g. in a cookie — and that
    /// handle reads what this one wrote. [`ConsistencyToken::NONE`] without replicas.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// db.execute_batch("UPDATE notes SET body = 'x' WHERE id = 1").await?;
    /// let cookie = db.consistency_token().to_string();
    /// // … next request, maybe another process:
    /// let reader = db.at_least(cookie.parse()?);
    /// # Ok(()) }
    /// ```
    pub fn consistency_token(&self) -> ConsistencyToken {
        let written = self
            .shared
            .replicas
            .as_ref()
            .map_or(0, |r| r.written.load(Ordering::Acquire));
        ConsistencyToken(written.max(self.route.at_least))
    }

    /// This handle, reading from replicas only once they have replayed `token` (see
    /// [`Db::consistency_token`]).
    ///
    /// ```no_run
    /// # fn run(db: tabula::Db, cookie: &str) -> tabula::Result<()> {
    /// let reader = db.at_least(cookie.parse()?);
    /// # Ok(()) }
    /// ```
    pub fn at_least(&self, token: ConsistencyToken) -> Db {
        let mut db = self.clone();
        db.route.at_least = db.route.at_least.max(token.0);
        db
    }

    /// This handle, with every read on the primary: for reads that must not lag, such
    /// as those a `#[cached]` body runs in a task it spawns (the body's own task reads
    /// the primary already; a spawned task is not known to belong to it).
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let fresh = db.on_primary();
    /// let task = tokio::spawn(async move { fresh.sql_rows("SELECT 1", &[]).await });
    /// # Ok(()) }
    /// ```
    pub fn on_primary(&self) -> Db {
        let mut db = self.clone();
        db.route.primary = true;
        db
    }

    /// This handle, reading from the primary: for reads whose rows fill a cache (rule
    /// 3 of the module docs).
    pub(crate) fn for_fill(&self) -> Db {
        let mut db = self.clone();
        if self.shared.replicas.is_some() {
            db.route.primary = true;
        }
        db
    }

    /// A connection for a read, and the index of the replica it reaches with the time
    /// it was asked for: a replica's
    /// when one may answer (see the module docs) and `replicas` allows, else the
    /// primary's (or the transaction's).
    pub(crate) async fn read_conn(
        &self,
        replicas_allowed: bool,
    ) -> Result<(super::Conn, Option<(usize, Instant)>)> {
        if self.shared.replicas.is_some() && replicas_allowed {
            // Boxed: a handle without replicas never carries this branch's state.
            return Box::pin(self.replica_conn()).await;
        }
        Ok((self.conn().await?, None))
    }

    /// [`Db::read_conn`] on a handle with replicas.
    async fn replica_conn(&self) -> Result<(super::Conn, Option<(usize, Instant)>)> {
        if let Some(replicas) = &self.shared.replicas
            && !self.route.primary
            && self.tx.is_none()
            && self.scope.is_none()
            // A memoized body's reads fill the memo.
            && !crate::cache::memo::in_memo_body()
        {
            // The replica's patience counts from here (checkout included); a handle
            // without replicas never reads the clock for it.
            let asked = Instant::now();
            // A write dropped mid-way may commit until its deadline has passed: until
            // then the primary answers; after, its position is asked once.
            let now = replicas.epoch.elapsed().as_millis() as u64;
            let held = now < replicas.hold_until.load(Ordering::Acquire);
            if held {
                return Ok((self.conn().await?, None));
            }
            let abandoned = replicas.abandoned.load(Ordering::Acquire);
            if abandoned > replicas.covered.load(Ordering::Acquire) {
                self.note_write(None).await;
                // Still unknown (the pool busy, the primary slow): a write may be
                // missing from every replica, so the primary answers.
                if abandoned > replicas.covered.load(Ordering::Acquire) {
                    return Ok((self.conn().await?, None));
                }
            }
            let floor = replicas
                .written
                .load(Ordering::Acquire)
                .max(self.route.at_least);
            if let Some((conn, index)) = replicas.checkout(floor, self.replica_patience()).await {
                return Ok((super::Conn::Pooled(conn), Some((index, asked))));
            }
        }
        Ok((self.conn().await?, None))
    }

    /// A mark for a write about to run (see [`WriteMark`]); inert without replicas.
    pub(crate) fn write_mark(&self) -> WriteMark {
        WriteMark {
            shared: self.shared.replicas.is_some().then(|| self.shared.clone()),
        }
    }

    /// How long a read may wait for a replica before the primary is asked too: half
    /// the statement deadline, so that the primary has the other half.
    pub(crate) fn replica_patience(&self) -> Duration {
        self.shared.config.statement_timeout / 2
    }

    /// A read on replica `index` (`on_replica`), hedged: once the replica's patience
    /// (counted from `asked`, checkout included) is spent, the same read starts on the
    /// primary (`on_primary`) and the first answer wins; a replica that fails in a way
    /// the primary can make good (unreachable, a conflict with recovery) hands the read
    /// to the primary at once. A replica that lost the race or broke is left out for a
    /// while; a slow answer that still came first is taken, and costs nothing.
    pub(crate) async fn hedged<T, R, P, F>(
        &self,
        index: usize,
        asked: Instant,
        on_replica: R,
        on_primary: P,
    ) -> Result<T>
    where
        R: std::future::Future<Output = Result<T>>,
        P: FnOnce() -> F,
        F: std::future::Future<Output = Result<T>>,
    {
        let mut on_replica = std::pin::pin!(on_replica);
        let patience = self.replica_patience().saturating_sub(asked.elapsed());
        tokio::select! {
            biased;
            answer = &mut on_replica => {
                return match answer {
                    Err(e) if self.replica_failed(index, &e) => on_primary().await,
                    other => other,
                };
            }
            () = tokio::time::sleep(patience) => {}
        }
        let mut on_primary = std::pin::pin!(on_primary());
        tokio::select! {
            biased;
            answer = &mut on_replica => match answer {
                Err(e) if self.replica_failed(index, &e) => on_primary.await,
                other => other,
            },
            answer = &mut on_primary => {
                self.replica_lost(index);
                answer
            }
        }
    }

    /// Whether a read that failed on replica `index` should be answered by the primary:
    /// the replica's connection broke (it is then left out for a while), or it
    /// cancelled the read for a conflict with recovery.
    fn replica_failed(&self, index: usize, error: &Error) -> bool {
        let Some(replica) = self
            .shared
            .replicas
            .as_ref()
            .and_then(|r| r.list.get(index))
        else {
            return false;
        };
        let unreachable = matches!(error, Error::Timeout { .. } | Error::Connection(_));
        if unreachable {
            replica.skip();
            tracing::warn!(%error, "a replica did not answer: its reads go to the primary for a while");
        }
        // A standby cancels queries that conflict with what it replays (40001), or
        // ends sessions whose database was dropped (57P04).
        let conflict = matches!(error.sqlstate(), Some("40001" | "57P04"));
        if conflict {
            metrics::counter!(crate::monitor::DB_REPLICA_BEHIND).increment(1);
        }
        unreachable || conflict
    }

    /// Replica `index` was slower than the primary asked after its patience: left out
    /// for a while (it is hung, or far slower than the primary).
    fn replica_lost(&self, index: usize) {
        if let Some(replica) = self
            .shared
            .replicas
            .as_ref()
            .and_then(|r| r.list.get(index))
        {
            replica.skip();
            tracing::warn!(
                "a replica answered slower than the primary: its reads go to the primary for a while"
            );
        }
    }

    /// After raw SQL, which may have written: the WAL position, outside a transaction
    /// (a transaction's is recorded at its COMMIT).
    pub(crate) async fn note_raw_write(&self) {
        if self.tx.is_none() && self.shared.replicas.is_some() {
            self.note_write(None).await;
        }
    }

    /// Records the primary's WAL position after a write (rule 1): on `conn` when the
    /// caller still holds the write's connection, else on one from the pool. Without
    /// replicas, nothing. A failure to ask is logged: the floor stays where it was,
    /// and the write's own answer stands.
    ///
    /// Boxed, and only when there are replicas: the write paths' futures stay small.
    pub(crate) async fn note_write(&self, conn: Option<&mut crate::pool::PgConn>) {
        if self.shared.replicas.is_some() {
            Box::pin(self.note_write_now(conn)).await;
        }
    }

    async fn note_write_now(&self, conn: Option<&mut crate::pool::PgConn>) {
        let Some(replicas) = &self.shared.replicas else {
            return;
        };
        const POSITION: &str = "SELECT pg_current_wal_insert_lsn()::text";
        // Writes dropped before this question committed before its answer, if at all.
        let abandoned = replicas.abandoned.load(Ordering::Acquire);
        let asked = match conn {
            Some(conn) => conn.query_opt(POSITION, &[]).await,
            None => match self.checkout().await {
                Ok(mut conn) => conn.query_opt(POSITION, &[]).await,
                Err(e) => Err(e),
            },
        };
        let at = asked.and_then(|row| {
            row.map(|r| r.try_get::<_, String>(0))
                .transpose()
                .map_err(Error::from)
        });
        match at {
            Ok(Some(text)) => match text.parse::<ConsistencyToken>() {
                Ok(token) => {
                    replicas.written.fetch_max(token.0, Ordering::AcqRel);
                    replicas.covered.fetch_max(abandoned, Ordering::AcqRel);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the primary's WAL position could not be read")
                }
            },
            Ok(None) => {}
            Err(e) => {
                // Counted as a write whose position is unknown, like one abandoned
                // mid-way: the next read asks again, and reads the primary until the
                // position is known (see `Db::replica_conn`).
                replicas.abandoned.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(
                    error = %e,
                    "the WAL position after a write could not be read: reads go to the primary until it is"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConsistencyToken;

    #[test]
    fn tokens_read_and_write_as_postgresql_writes_positions() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "1/1"] {
            let token: ConsistencyToken = text.parse().expect("token");
            assert_eq!(token.to_string(), text);
        }
        let low: ConsistencyToken = "0/FFFFFFFF".parse().expect("token");
        let high: ConsistencyToken = "1/0".parse().expect("token");
        assert!(low < high);
        for bad in [
            "",
            "1",
            "/1",
            "1/",
            "G/0",
            "123456789/0",
            "1/2/3",
            " 1/2",
            "+1/+2",
            "1/-0",
        ] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad:?}");
        }
    }
}
