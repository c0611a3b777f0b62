//! The circuit breaker in front of Redis.
//!
//! After `threshold` consecutive failures the breaker opens: cache calls are skipped
//! (reads go to PostgreSQL, fills are dropped) until `probe_interval` has passed; then
//! one call is let through as a probe. Failures only decide whether Redis is tried; a
//! lost *invalidation* is tracked by the backend (see `redis.rs`), never by this.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    started: Instant,
    threshold: u32,
    probe_interval: Duration,
    failures: AtomicU32,
    /// Milliseconds since `started` until which the breaker stays open.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, probe_interval: Duration) -> Self {
        Breaker {
            started: Instant::now(),
            threshold: threshold.max(1),
            probe_interval,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to Redis now.
    pub(crate) fn allow(&self) -> bool {
        if self.failures.load(Ordering::Acquire) < self.threshold {
            return true;
        }
        if self.now_ms() < self.open_until.load(Ordering::Acquire) {
            return false;
        }
        // Half-open: exactly one caller probes.
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    pub(crate) fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold {
            let until =
                self.now_ms() + u64::try_from(self.probe_interval.as_millis()).unwrap_or(u64::MAX);
            self.open_until.store(until, Ordering::Release);
        }
        self.probing.store(false, Ordering::Release);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.failures.load(Ordering::Acquire) >= self.threshold
    }
}
