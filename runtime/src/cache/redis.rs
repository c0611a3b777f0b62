//! The Redis backend: one multiplexed connection shared by every task (requests from
//! concurrent tasks are pipelined on it), replaced after any I/O error or timeout, with
//! a deadline on every call and a circuit breaker in front.
//!
//! Why not a bb8-redis pool: its manager never reports a connection broken, so with the
//! checkout PING off a pool never recovers from a Redis restart, and with it on every
//! read pays a second round trip; its default checkout waits 30 s while Redis is down.
//! A multiplexed connection needs no checkout at all, and dropping it on error is
//! exactly the "broken" signal a pool lacks.
//!
//! # Lost invalidations
//!
//! An invalidation that could not be delivered makes the backend *dirty*. From then
//! on, a background probe (one per backend) tries Redis every probe interval; the
//! first time it answers, the epoch of every namespace this process used is replaced
//! by a fresh random value — orphaning every entry written before, in every process —
//! and only then is the backend clean again. Normal calls do the same first if they
//! reach Redis before the probe does. So the staleness a lost invalidation can cause
//! ends at most one probe interval (plus one deadline) after Redis answers again,
//! whether or not the writer does anything else. Epochs are random, never counted:
//! after Redis loses its data they cannot come back to a value an old entry was
//! written under. A failed or slow GET or fill is only a miss and never dirties
//! anything.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script};

use super::breaker::Breaker;
use super::{CacheConfig, Fault};

pub(crate) struct RedisBackend {
    client: redis::Client,
    /// One connection per runtime: a connection's driver task lives on the runtime
    /// that opened it and dies with it, so another runtime must not borrow it.
    conns: Mutex<Vec<(tokio::runtime::Id, MultiplexedConnection)>>,
    pub(crate) breaker: Breaker,
    deadline: Duration,
    probe_interval: Duration,
    /// The epoch keys of the namespaces this process used.
    epochs: Mutex<Vec<String>>,
    /// Invalidations not delivered since the last epoch change (a count, so that a
    /// failure during a change is never erased by it).
    dirty: AtomicU64,
    probing: AtomicBool,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A fresh epoch: 16 random hex digits.
pub(crate) fn fresh_epoch() -> String {
    super::row::token()[..16].to_owned()
}

impl RedisBackend {
    pub(crate) fn new(url: &str, config: &CacheConfig) -> Result<Self, Fault> {
        let client = redis::Client::open(url)
            .map_err(|e| Fault::Config(format!("invalid redis url: {e}")))?;
        Ok(RedisBackend {
            client,
            conns: Mutex::default(),
            breaker: Breaker::new(config.failure_threshold, config.probe_interval),
            deadline: config.deadline,
            probe_interval: config.probe_interval,
            epochs: Mutex::default(),
            dirty: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        })
    }

    pub(crate) fn register_epoch(&self, key: &str) {
        if let Ok(mut epochs) = self.epochs.lock()
            && !epochs.iter().any(|k| k == key)
        {
            epochs.push(key.to_owned());
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, Fault> {
        let runtime = tokio::runtime::Handle::current().id();
        let known = self.conns.lock().ok().and_then(|conns| {
            conns
                .iter()
                .find(|(id, _)| *id == runtime)
                .map(|(_, c)| c.clone())
        });
        if let Some(conn) = known {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.deadline))
            .set_response_timeout(Some(self.deadline));
        let conn = tokio::time::timeout(
            self.deadline,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| Fault::Timeout)?
        .map_err(Fault::Redis)?;
        if let Ok(mut conns) = self.conns.lock() {
            conns.retain(|(id, _)| *id != runtime);
            if conns.len() >= 8 {
                conns.remove(0); // runtimes that ended leave their entries behind
            }
            conns.push((runtime, conn.clone()));
        }
        Ok(conn)
    }

    fn drop_connection(&self) {
        let runtime = tokio::runtime::Handle::current().id();
        if let Ok(mut conns) = self.conns.lock() {
            conns.retain(|(id, _)| *id != runtime);
        }
    }

    /// Records an invalidation that was not delivered, and makes sure a background
    /// probe delivers it (see the module docs).
    pub(crate) fn mark_dirty(self: &std::sync::Arc<Self>) {
        self.dirty.fetch_add(1, Ordering::AcqRel);
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        let backend = std::sync::Arc::downgrade(self);
        let interval = self.probe_interval.max(Duration::from_millis(10));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(backend) = backend.upgrade() else {
                    return;
                };
                if backend.dirty.load(Ordering::Acquire) == 0 {
                    backend.probing.store(false, Ordering::Release);
                    // A failure may have come in between the check and the store.
                    if backend.dirty.load(Ordering::Acquire) == 0
                        || backend
                            .probing
                            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                            .is_err()
                    {
                        return;
                    }
                    continue;
                }
                let _ = backend.call(async |_| Ok(())).await;
            }
        });
    }

    /// Replaces the epoch of every namespace used, if invalidations were lost.
    async fn clean(&self, conn: &mut MultiplexedConnection) -> Result<(), Fault> {
        let seen = self.dirty.load(Ordering::Acquire);
        if seen == 0 {
            return Ok(());
        }
        let keys = self.epochs.lock().map(|e| e.clone()).unwrap_or_default();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("SET").arg(key).arg(fresh_epoch()).ignore();
        }
        pipe.query_async::<()>(conn).await.map_err(Fault::Redis)?;
        if self
            .dirty
            .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                namespaces = keys.len(),
                "redis reachable again: lost invalidations delivered by new cache epochs"
            );
        }
        Ok(())
    }

    /// Runs `body` on the connection under the deadline and the breaker. While an
    /// invalidation is undelivered, the epochs are replaced before anything else runs.
    pub(crate) async fn call<T>(
        &self,
        body: impl AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    ) -> Result<T, Fault> {
        if !self.breaker.allow() {
            return Err(Fault::Unavailable);
        }
        let work = async {
            let mut conn = self.connection().await?;
            self.clean(&mut conn).await?;
            body(&mut conn).await.map_err(Fault::Redis)
        };
        let result = match tokio::time::timeout(self.deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Fault::Timeout),
        };
        match &result {
            Ok(_) => self.breaker.success(),
            Err(fault) => {
                if fault.is_connection_fault() {
                    self.drop_connection();
                }
                self.breaker.failure();
                tracing::debug!(%fault, "redis call failed");
            }
        }
        result
    }

    /// Runs a script (EVALSHA, loading it once if the server does not know it).
    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, Fault> {
        self.call(async |conn| {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            for arg in args {
                invocation.arg(*arg);
            }
            invocation.invoke_async(conn).await
        })
        .await
    }
}

impl Fault {
    /// A connection that broke (reset, closed by a restart): a retry on a new one may
    /// succeed at once. Not a timeout, which may be a hung server.
    pub(crate) fn is_broken_connection(&self) -> bool {
        matches!(self, Fault::Redis(e)
            if (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout())
    }

    fn is_connection_fault(&self) -> bool {
        match self {
            Fault::Timeout => true,
            Fault::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
            }
            _ => false,
        }
    }
}
