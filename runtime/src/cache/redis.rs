//! The Redis backend: one multiplexed connection shared by every task (requests from
//! concurrent tasks are pipelined on it), replaced after any I/O error or timeout, with
//! a deadline on every call and a circuit breaker in front.
//!
//! Why not a bb8-redis pool: its manager never reports a connection broken, so with the
//! checkout PING off a pool never recovers from a Redis restart, and with it on every
//! read pays a second round trip; its default checkout waits 30 s while Redis is down.
//! A multiplexed connection needs no checkout at all, and dropping it on error is
//! exactly the "broken" signal a pool lacks.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script};

use super::breaker::Breaker;
use super::{CacheConfig, Fault};

pub(crate) struct RedisBackend {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    pub(crate) breaker: Breaker,
    deadline: Duration,
    epoch_key: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl RedisBackend {
    pub(crate) fn new(url: &str, config: &CacheConfig, epoch_key: String) -> Result<Self, Fault> {
        let client = redis::Client::open(url)
            .map_err(|e| Fault::Config(format!("invalid redis url: {e}")))?;
        Ok(RedisBackend {
            client,
            conn: Mutex::new(None),
            breaker: Breaker::new(config.failure_threshold, config.probe_interval),
            deadline: config.deadline,
            epoch_key,
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, Fault> {
        if let Some(conn) = self.conn.lock().ok().and_then(|c| c.clone()) {
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
        if let Ok(mut slot) = self.conn.lock() {
            *slot = Some(conn.clone());
        }
        Ok(conn)
    }

    fn drop_connection(&self) {
        if let Ok(mut slot) = self.conn.lock() {
            *slot = None;
        }
    }

    /// Runs `body` on the connection under the deadline and the breaker. After a
    /// failure, the first successful contact bumps the epoch before anything else runs.
    pub(crate) async fn call<T>(
        &self,
        body: impl AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    ) -> Result<T, Fault> {
        if !self.breaker.allow() {
            return Err(Fault::Unavailable);
        }
        let work = async {
            let mut conn = self.connection().await?;
            if self.breaker.is_dirty() {
                redis::cmd("INCR")
                    .arg(&self.epoch_key)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(Fault::Redis)?;
                self.breaker.clean();
                tracing::warn!("redis reachable again: cache epoch bumped, older entries orphaned");
            }
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
