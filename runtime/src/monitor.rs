//! Monitoring: every operation runs in a `tracing` span and records its duration in a
//! `metrics` histogram; failures are logged with operation, table and error.
//!
//! Tabula only emits through the `metrics` and `tracing` facades; install whichever
//! recorder and subscriber your application uses. Every metric name is defined here.

use std::time::Instant;

use crate::error::{Error, Result};

/// Histogram, seconds: duration of a database operation, and of a read the cache
/// answered instead. Labels: `operation`, `table` (the table's name as the model
/// declares it, without its schema), `outcome` (`ok` or `error`), `source` (`db`;
/// `cache` or `near` for an answer from Redis / the in-process backend, or from a
/// near tier). A read the cache answers carries the operation and table the database
/// path would have recorded for it.
pub const DB_OPERATION_SECONDS: &str = "tabula_db_operation_seconds";

/// Counter: reads tried again on another connection after theirs turned out dead
/// (closed by the server, a failover) before any answer. Label: `operation`.
pub const DB_READ_RETRIES: &str = "tabula_db_read_retries_total";

/// Counter: reads that went to the primary because no replica had replayed the
/// writes they depend on (see [`crate::db::replica`]).
pub const DB_REPLICA_BEHIND: &str = "tabula_db_replica_behind_total";

/// Counter: transactions retried after a serialization failure or deadlock.
pub const DB_TRANSACTION_RETRIES: &str = "tabula_db_transaction_retries_total";

/// Histogram, seconds: duration of a cache call. Labels: `operation`, `outcome`.
pub const CACHE_OPERATION_SECONDS: &str = "tabula_cache_operation_seconds";

/// Counter: cache events. Label `event`: `hit`, `miss`, `fill`, `fill_rejected`
/// (a lease voided by a write), `error`, `invalidation_failed`, `delete`, `too_large`
/// (a value over the size limit, not cached); label `table`: the table (a row, a
/// cached query; `schema.table` for a model that names its schema, as the cache's keys
/// do) or the `#[cached]` function the entry belongs to (`-` when none does).
/// The near tier's own events (`near_hit`, `near_miss`, `near_eviction`, `near_flush`)
/// carry no table.
pub const CACHE_EVENTS: &str = "tabula_cache_events_total";

/// Counter: row-cache hits read again from the database by the staleness check
/// (`CacheConfig::verify_sample`). Label: `table`.
pub const CACHE_VERIFIED: &str = "tabula_cache_verified_total";

/// Counter: checked row-cache hits the database disagreed with (and still did after a
/// grace period): the measured staleness. Label: `table`.
pub const CACHE_STALE: &str = "tabula_cache_stale_total";

/// Counter: `#[cached]` calls that ran without the cache. Label `reason`: `key` (the
/// arguments could not be encoded) or `scoped` (the body ran under a user scope).
pub const MEMO_BYPASS: &str = "tabula_memo_bypass_total";

/// Histogram, seconds: duration of a storage operation. Labels: `operation`, `outcome`.
pub const STORAGE_OPERATION_SECONDS: &str = "tabula_storage_operation_seconds";

/// Counter: migrations applied.
pub const MIGRATIONS_APPLIED: &str = "tabula_migrations_applied_total";

/// Records the outcome of one database operation: the histogram sample, and a log line
/// when it failed — at `error` for failures, at `debug` for answers the caller is
/// expected to handle (see `is_expected`).
pub(crate) fn record_db(
    operation: &'static str,
    table: &'static str,
    started: Instant,
    result: &Result<impl Sized>,
) {
    let seconds = started.elapsed().as_secs_f64();
    match db_key(operation, table, result.is_ok(), "db") {
        Some(key) => metrics::with_recorder(|recorder| {
            recorder
                .register_histogram(key, &DB_METADATA)
                .record(seconds)
        }),
        None => {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::histogram!(
                DB_OPERATION_SECONDS,
                "operation" => operation,
                "table" => table,
                "outcome" => outcome,
                "source" => "db"
            )
            .record(seconds)
        }
    }
    if let Err(error) = result {
        if is_expected(error) {
            tracing::debug!(operation, table, %error, "database operation refused");
        } else {
            tracing::error!(operation, table, %error, "database error");
        }
    }
}

/// What the `metrics` macros would give the recorder for a database operation.
static DB_METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Keys of [`DB_OPERATION_SECONDS`] built so far, by the addresses of their
/// operation and table names and the outcome (both names are `'static`: code
/// constants, one per call site and model).
type DbKeys = std::collections::HashMap<
    (usize, usize, usize, usize, bool, usize),
    &'static metrics::Key,
    crate::sql::FastHash,
>;

/// How many keys [`db_key`] keeps at most: operation and table names are the code's
/// own, so a handful per model; past the bound, keys are built per call again.
const DB_KEYS_MAX: usize = 4096;

/// The histogram key of one database operation, built once: the `metrics` macro builds
/// its key (a list of labels, hashed) on every call, an allocation and a hash per
/// read, recorder or not. The keys live as long as the process, like the names they
/// are made of. A pure memo: every handle would build the same key.
fn db_key(
    operation: &'static str,
    table: &'static str,
    ok: bool,
    source: &'static str,
) -> Option<&'static metrics::Key> {
    static KEYS: std::sync::OnceLock<std::sync::RwLock<DbKeys>> = std::sync::OnceLock::new();
    let id = (
        operation.as_ptr() as usize,
        operation.len(),
        table.as_ptr() as usize,
        table.len(),
        ok,
        // `db`, `cache` or `near`, told apart by address (two copies of one word make
        // two equal keys, which a recorder counts as one).
        source.as_ptr() as usize,
    );
    let keys = KEYS.get_or_init(Default::default);
    if let Some(key) = keys.read().ok()?.get(&id) {
        return Some(key);
    }
    let mut keys = keys.write().ok()?;
    // Another caller may have built it meanwhile: only one is kept (and leaked).
    if let Some(key) = keys.get(&id) {
        return Some(key);
    }
    if keys.len() >= DB_KEYS_MAX {
        return None;
    }
    let outcome = if ok { "ok" } else { "error" };
    let labels: &'static [metrics::Label] = Box::leak(Box::new([
        metrics::Label::from_static_parts("operation", operation),
        metrics::Label::from_static_parts("table", table),
        metrics::Label::from_static_parts("outcome", outcome),
        metrics::Label::from_static_parts("source", source),
    ]));
    let key: &'static metrics::Key = Box::leak(Box::new(metrics::Key::from_static_parts(
        DB_OPERATION_SECONDS,
        labels,
    )));
    keys.insert(id, key);
    Some(key)
}

/// Errors that are answers the caller is expected to handle (a duplicate, a missing
/// row, refused input, a policy): logged at `debug`, still counted in the metric.
fn is_expected(error: &Error) -> bool {
    matches!(
        error,
        Error::NotFound { .. }
            | Error::UniqueViolation { .. }
            | Error::ForeignKeyViolation { .. }
            | Error::NotNullViolation { .. }
            | Error::CheckViolation { .. }
            | Error::PermissionDenied { .. }
            | Error::Validation(_)
    )
}

/// Records a read the cache answered in place of the database (`source`: `cache` or
/// `near`), so that the database-operation histogram counts every read.
pub(crate) fn record_cache_answer(
    operation: &'static str,
    table: &'static str,
    started: Instant,
    source: &'static str,
) {
    let seconds = started.elapsed().as_secs_f64();
    match db_key(operation, table, true, source) {
        Some(key) => metrics::with_recorder(|recorder| {
            recorder
                .register_histogram(key, &DB_METADATA)
                .record(seconds)
        }),
        None => metrics::histogram!(
            DB_OPERATION_SECONDS,
            "operation" => operation,
            "table" => table,
            "outcome" => "ok",
            "source" => source
        )
        .record(seconds),
    }
}

/// Records one cache call.
pub(crate) fn record_cache(operation: &'static str, started: Instant, outcome: &'static str) {
    metrics::histogram!(CACHE_OPERATION_SECONDS, "operation" => operation, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Records one storage operation; failures are logged with the operation and error.
#[cfg(feature = "storage")]
pub(crate) fn record_storage(
    operation: &'static str,
    started: Instant,
    result: &Result<impl Sized>,
) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!(STORAGE_OPERATION_SECONDS, "operation" => operation, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = result
        && !matches!(
            error,
            Error::NotFound { .. } | Error::Validation(_) | Error::AlreadyExists(_)
        )
    {
        tracing::error!(operation, %error, "storage error");
    }
}
