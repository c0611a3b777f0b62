//! The pool itself: at most `pool_size` connections, idle ones kept on a stack.
//!
//! Why not bb8 (which Tabula used before): its checkout is a future of 4.4 KB that
//! always arms a timer, takes a mutex and updates statistics, and a connect error
//! reaches the caller only as a timeout. Here a checkout that finds an idle connection
//! is one semaphore permit and one uncontended lock — no timer, no clock, no await
//! that can suspend; the timer exists only for a caller that must wait. A connect
//! error is the caller's answer at once.
//!
//! The invariant: every connection that exists (idle, handed out, or being opened)
//! holds one of `permits`' permits or sits on `idle` — so at most `pool_size` exist.
//! A permit is taken before a connection is handed out or opened, and given back only
//! after the connection is back on the stack or closed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{PgConn, PgManager};
use crate::error::{Error, Result};

/// The pool's sizes and limits (see `DbConfig`).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_size: u32,
    pub(crate) min_idle: u32,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    /// How long a caller waits for a free connection.
    pub(crate) checkout_timeout: Duration,
}

/// A pool of PostgreSQL connections. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Pool(Arc<Inner>);

struct Inner {
    manager: PgManager,
    settings: Settings,
    /// One permit per connection that may still exist: a connection handed out or
    /// being opened holds one (see the module docs).
    permits: Semaphore,
    /// Idle connections, the most recently returned on top (it is the warmest, and
    /// the ones at the bottom age out).
    idle: Mutex<Vec<Idle>>,
    /// Connections that exist: idle, handed out, or being opened.
    open: AtomicU32,
    /// Whether a reaper task runs. It lives on the runtime that spawned it; when that
    /// runtime shuts down the task's guard clears this, and the next checkout (on
    /// whatever runtime it runs) starts another.
    reaping: std::sync::atomic::AtomicBool,
}

struct Idle {
    conn: Box<PgConn>,
    born: Instant,
    since: Instant,
}

/// A connection out of the pool; back on the stack (or closed, when it cannot be
/// trusted: see [`PgConn::release`]) when dropped.
pub(crate) struct Pooled {
    /// Boxed: checkouts and returns move a pointer, not the connection's state.
    conn: Option<Box<PgConn>>,
    born: Instant,
    pool: Arc<Inner>,
}

impl Pool {
    /// A pool that opens connections when first asked for them (and keeps
    /// `min_idle` open ahead of demand, from a task next to the caller's runtime).
    pub(crate) fn new(manager: PgManager, settings: Settings) -> Pool {
        let inner = Arc::new(Inner {
            permits: Semaphore::new(settings.max_size as usize),
            manager,
            settings,
            idle: Mutex::new(Vec::new()),
            open: AtomicU32::new(0),
            reaping: std::sync::atomic::AtomicBool::new(false),
        });
        inner.keep_reaper();
        Pool(inner)
    }

    /// A connection: an idle one, or a new one when none is idle and the pool has
    /// room; else waits up to the checkout timeout for one to come back.
    pub(crate) async fn get(&self) -> Result<Pooled> {
        let inner = &self.0;
        inner.keep_reaper();
        // The checkout's one deadline, read from the clock only by a caller that must
        // wait: waiting for a place and opening a connection share it.
        let mut deadline = None;
        match inner.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                let until = tokio::time::Instant::now() + inner.settings.checkout_timeout;
                deadline = Some(until);
                Box::pin(self.wait(until)).await?
            }
        }
        // The permit is ours from here: `Held` gives it back on every way out, a
        // dropped future included.
        let held = Held(inner);
        if let Some(idle) = inner.take_idle() {
            std::mem::forget(held);
            return Ok(Pooled {
                conn: Some(idle.conn),
                born: idle.born,
                pool: inner.clone(),
            });
        }
        Box::pin(inner.open_into(held, deadline)).await
    }

    /// Waits for a permit, up to the checkout's deadline.
    async fn wait(&self, until: tokio::time::Instant) -> Result<()> {
        let limit = self.0.settings.checkout_timeout;
        match tokio::time::timeout_at(until, self.0.permits.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Ok(())
            }
            Ok(Err(_)) => Err(Error::PoolTimeout(limit)), // never closed
            Err(_) => Err(Error::PoolTimeout(limit)),
        }
    }

    /// Puts a connection opened by hand into the pool (if it has room).
    pub(crate) fn add(&self, conn: PgConn) {
        let inner = &self.0;
        let Ok(permit) = inner.permits.try_acquire() else {
            return;
        };
        permit.forget();
        inner.open.fetch_add(1, Ordering::AcqRel);
        drop(Pooled {
            conn: Some(Box::new(conn)),
            born: Instant::now(),
            pool: inner.clone(),
        });
    }
}

impl Inner {
    /// Starts the reaper when none runs and there is work for one (one atomic load on
    /// the checkout path).
    fn keep_reaper(self: &Arc<Self>) {
        let s = &self.settings;
        let needed = s.min_idle > 0 || s.idle_timeout.is_some() || s.max_lifetime.is_some();
        if !needed || self.reaping.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let alive = Reaping(Arc::downgrade(self));
        runtime.spawn(async move {
            let pool = alive.0.clone();
            reap(pool).await;
            drop(alive);
        });
    }

    /// A new connection in the place `held`, which goes back if opening fails or is
    /// given up.
    async fn open_into(
        self: &Arc<Self>,
        held: Held<'_>,
        until: Option<tokio::time::Instant>,
    ) -> Result<Pooled> {
        self.open.fetch_add(1, Ordering::AcqRel);
        let opened = Opening(self);
        let conn = self.open_one(until).await?;
        std::mem::forget(opened);
        std::mem::forget(held);
        Ok(Pooled {
            conn: Some(Box::new(conn)),
            born: Instant::now(),
            pool: self.clone(),
        })
    }

    /// A new connection, by the checkout's deadline when the caller waited for its
    /// place (waiting and opening share it). A refusal — the server down, a password
    /// changed, connections to the database not allowed — is [`Error::Connect`]: no
    /// connection could be opened (not a connection lost, which a read would try
    /// again on another).
    async fn open_one(&self, until: Option<tokio::time::Instant>) -> Result<PgConn> {
        // Opening is bounded by the connect timeout (see `PgManager::connect`); a
        // caller that waited for its place has the checkout's deadline too.
        let opened = match until {
            Some(until) => match tokio::time::timeout_at(until, self.manager.connect()).await {
                Ok(opened) => opened,
                Err(_) => return Err(Error::PoolTimeout(self.settings.checkout_timeout)),
            },
            None => self.manager.connect().await,
        };
        match opened {
            Ok(conn) => Ok(conn),
            Err(e @ (Error::Connect(_) | Error::PoolTimeout(_))) => Err(e),
            Err(e) => Err(Error::Connect(e.to_string())),
        }
    }

    /// The top idle connection that is still open; closed ones found on the way are
    /// dropped.
    fn take_idle(&self) -> Option<Idle> {
        loop {
            let idle = self.idle.lock().ok()?.pop()?;
            if !idle.conn.is_closed() {
                return Some(idle);
            }
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn expired(&self, born: Instant, since: Instant, now: Instant) -> bool {
        let old = self
            .settings
            .max_lifetime
            .is_some_and(|limit| now.saturating_duration_since(born) >= limit);
        let unused = self
            .settings
            .idle_timeout
            .is_some_and(|limit| now.saturating_duration_since(since) >= limit);
        old || unused
    }
}

/// A permit taken and not yet attached to a connection: given back if the checkout
/// ends without one.
struct Held<'a>(&'a Inner);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.permits.add_permits(1);
    }
}

/// A connection being opened: counted as open until it is, or fails.
struct Opening<'a>(&'a Inner);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::ops::Deref for Pooled {
    type Target = PgConn;
    fn deref(&self) -> &PgConn {
        self.conn
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut PgConn {
        self.conn
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let pool = &self.pool;
        if let Some(mut conn) = self.conn.take() {
            if conn.freed.swap(true, Ordering::AcqRel) {
                // Its place was given back when its socket was closed from outside
                // (see `SharedPlace`): the connection is dead, and counted no more.
                return;
            }
            if conn.unread() {
                // Its statement is cancelled on the server, and the socket stays open
                // until the cancel request went out: the connection keeps its place in
                // the pool until then, so no more than `pool_size` ever exist.
                conn.cancel_and_close(Place(pool.clone()));
                return;
            }
            let now = Instant::now();
            let reusable = conn.release() && !pool.expired(self.born, now, now);
            match pool.idle.lock() {
                Ok(mut idle) if reusable => idle.push(Idle {
                    conn: {
                        // Its place is its own again for the next checkout.
                        conn.freed.store(false, Ordering::Release);
                        conn
                    },
                    born: self.born,
                    since: now,
                }),
                // Closed: PostgreSQL rolls back whatever it held open.
                _ => {
                    pool.open.fetch_sub(1, Ordering::AcqRel);
                    drop(conn);
                }
            }
        }
        // Only now: a caller woken by the permit finds the connection on the stack.
        pool.permits.add_permits(1);
    }
}

/// A closing connection's place in the pool, given back when dropped.
pub(crate) struct Place(Arc<Inner>);

/// A connection's place in the pool as a transaction that may be abandoned sees it:
/// given back once, by whichever comes first — the connection's own return (see
/// [`Pooled`]'s drop) or [`StatementCanceller::stop`](super::StatementCanceller::stop)
/// once it closed the socket of a connection something else still holds (a dead
/// stream kept by an idle task must not keep the place from the next caller).
#[derive(Clone)]
pub(crate) struct SharedPlace {
    // Weak: the connection that keeps this (in its `stopper`) may sit in the pool's
    // own idle stack, and a strong reference would keep the pool alive for ever.
    pool: Weak<Inner>,
    freed: Arc<std::sync::atomic::AtomicBool>,
}

impl SharedPlace {
    /// Gives the place back, unless it was already.
    pub(crate) fn give_back(&self) {
        if !self.freed.swap(true, Ordering::AcqRel)
            && let Some(pool) = self.pool.upgrade()
        {
            pool.open.fetch_sub(1, Ordering::AcqRel);
            pool.permits.add_permits(1);
        }
    }
}

impl Pooled {
    /// What ends this connection, and gives its place back, from outside (see
    /// [`super::StatementCanceller`]).
    ///
    /// Built once per connection and shared: every transaction and every user-scoped
    /// call asks for it, and building it clones the cancel token (its host name).
    pub(crate) fn stopper(&self) -> Option<Arc<super::StatementCanceller>> {
        let conn = self.conn.as_ref()?;
        let stopper = conn.stopper.get_or_init(|| {
            let place = SharedPlace {
                pool: Arc::downgrade(&self.pool),
                freed: conn.freed.clone(),
            };
            Arc::new(conn.statement_canceller(place))
        });
        Some(stopper.clone())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.permits.add_permits(1);
    }
}

/// Marks the reaper gone when its task ends or is dropped with its runtime.
struct Reaping(Weak<Inner>);

impl Drop for Reaping {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.reaping.store(false, Ordering::Release);
        }
    }
}

/// Closes idle connections past their idle timeout or lifetime, and keeps `min_idle`
/// open (looking at least once a second when it is set: connections the server
/// killed are replaced within a second), until the pool is dropped.
async fn reap(pool: Weak<Inner>) {
    let Some(rate) = pool.upgrade().map(|inner| {
        let s = &inner.settings;
        [s.idle_timeout, s.max_lifetime]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::from_secs(30), |d| {
                (d / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
            })
            .min(match s.min_idle {
                0 => Duration::MAX,
                _ => Duration::from_secs(1),
            })
    }) else {
        return;
    };
    loop {
        let Some(inner) = pool.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<Idle> = match inner.idle.lock() {
            Ok(mut idle) => {
                let (old, kept) = idle
                    .drain(..)
                    .partition(|i| i.conn.is_closed() || inner.expired(i.born, i.since, now));
                *idle = kept;
                old
            }
            Err(_) => Vec::new(),
        };
        inner.open.fetch_sub(expired.len() as u32, Ordering::AcqRel);
        drop(expired); // closes them, outside the lock
        fill(&inner).await;
        drop(inner);
        tokio::time::sleep(rate).await;
    }
}

/// Opens connections until `min_idle` exist (as far as the pool has room).
async fn fill(inner: &Arc<Inner>) {
    while inner.open.load(Ordering::Acquire) < inner.settings.min_idle {
        let Ok(permit) = inner.permits.try_acquire() else {
            return;
        };
        permit.forget();
        // No caller waits here: the connect timeout alone bounds it.
        match inner.open_into(Held(inner), None).await {
            Ok(conn) => drop(conn), // onto the idle stack
            Err(error) => {
                tracing::warn!(%error, "cannot open a database connection ahead of demand");
                return;
            }
        }
    }
}
