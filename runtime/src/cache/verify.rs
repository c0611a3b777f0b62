//! A measured staleness rate (`CacheConfig::verify_sample`): a sample of row-cache hits
//! is read again from PostgreSQL, off the caller's path, and a hit that disagrees with
//! the database — and still disagrees after a grace period, with the cache still
//! holding the same entry — is counted as stale, by table. A write racing the check
//! (committed, its invalidation on the way) is not: the grace period lets its
//! invalidation land, and a changed or dropped entry means the cache was told.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::CacheService;

/// What the staleness check has found, since the cache was built (also exported as the
/// counters `tabula_cache_verified_total` and `tabula_cache_stale_total`, by table).
///
/// ```
/// let stats = tabula::cache::VerifyStats::default();
/// assert_eq!(stats.stale, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyStats {
    /// Hits read again from the database.
    pub checked: u64,
    /// Hits the database disagreed with, after the grace period.
    pub stale: u64,
}

/// The check's counters, shared by every view of one cache.
#[derive(Debug, Default)]
pub(crate) struct Verify {
    hits: AtomicU64,
    checked: AtomicU64,
    stale: AtomicU64,
    /// Checks running now: a few at most, so that checking never takes the
    /// connections the application's own work needs (a sample that finds them all
    /// busy is skipped).
    running: std::sync::atomic::AtomicUsize,
}

/// Checks that may run at once, per cache.
const MAX_RUNNING: usize = 2;

/// A running check's slot, freed when it ends (or is dropped).
pub(crate) struct CheckSlot(std::sync::Arc<Verify>);

impl Drop for CheckSlot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CacheService {
    /// A slot to check this hit in, when it is one of the sample and fewer than a few
    /// checks are running.
    pub(crate) fn sample_hit(&self) -> Option<CheckSlot> {
        let fraction = self.inner.config.verify_sample;
        if fraction.is_nan() || fraction <= 0.0 {
            return None;
        }
        // A random sample: a periodic one (every n-th hit) would never see a stale row
        // read in step with the period (a page of n rows read in order).
        let n = self.inner.verify.hits.fetch_add(1, Ordering::Relaxed);
        if fraction < 1.0 && unit_random(n) >= fraction {
            return None;
        }
        let verify = &self.inner.verify;
        let taken = verify
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < MAX_RUNNING).then_some(running + 1)
            })
            .is_ok();
        taken.then(|| CheckSlot(verify.clone()))
    }

    /// How long a disagreement must last to count: long enough for a racing write's
    /// invalidation to land.
    pub(crate) fn verify_grace(&self) -> Duration {
        (self.inner.config.deadline.saturating_mul(4))
            .clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Counts one check of a hit on `table`.
    pub(crate) fn verified(&self, table: &str, stale: bool) {
        self.inner.verify.checked.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::monitor::CACHE_VERIFIED, "table" => table.to_owned()).increment(1);
        if stale {
            self.inner.verify.stale.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::monitor::CACHE_STALE, "table" => table.to_owned())
                .increment(1);
            tracing::warn!(table, "a row-cache hit disagreed with the database");
        }
    }

    /// What the staleness check found (see [`CacheConfig::verify_sample`](super::CacheConfig::verify_sample)).
    ///
    /// ```
    /// let cache = tabula::CacheService::in_memory(Default::default())?;
    /// assert_eq!(cache.verify_stats().checked, 0);
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn verify_stats(&self) -> VerifyStats {
        VerifyStats {
            checked: self.inner.verify.checked.load(Ordering::Relaxed),
            stale: self.inner.verify.stale.load(Ordering::Relaxed),
        }
    }
}

/// A number in [0, 1), different for each `n` and each process (SplitMix64 over `n`
/// and a per-process seed).
fn unit_random(n: u64) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(u64::from(std::process::id()));
        hasher.finish()
    });
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
