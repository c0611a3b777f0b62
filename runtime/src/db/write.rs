//! The seam between writes and the cache: a write reports *what it touched* — a
//! table, the keys of the rows it changed, or "rows I cannot name" — and the cache
//! (see [`crate::cache`]) turns that into key operations, cascades included. `db`
//! never builds a cache key.

use std::future::Future;
use std::pin::Pin;

use super::Db;
use crate::error::{Error, Result};
use crate::table::{Table, TableMeta};

/// What one write touched.
#[derive(Debug, Clone)]
pub(crate) struct Invalidation {
    /// The table written to.
    pub(crate) table: &'static TableMeta,
    /// The primary keys (as JSON text) of the rows it changed.
    pub(crate) keys: Vec<String>,
    /// Rows changed that cannot be named (a write whose outcome is unknown): every
    /// row entry of the table goes.
    pub(crate) every_row: bool,
}

impl Invalidation {
    pub(crate) fn of<M: Table>(keys: &[M::Key]) -> Invalidation {
        Invalidation {
            table: M::META,
            keys: keys.iter().map(key_text::<M>).collect(),
            every_row: false,
        }
    }
}

/// A key as the cache names it (JSON text; keys are scalars or tuples of them).
pub(crate) fn key_text<M: Table>(key: &M::Key) -> String {
    serde_json::to_string(key).unwrap_or_default()
}

impl Db {
    /// Tells the cache what writes touched (nothing without a cache).
    pub(crate) async fn apply_invalidation(&self, writes: &[Invalidation]) {
        if let Some(cache) = &self.shared.config.cache {
            cache.invalidate_writes(writes).await;
        }
    }

    /// Runs a write and invalidates what it touched: `rows` names the keys of the rows
    /// it changed, from its result. See [`Db::write_touching`].
    pub(crate) fn write<M: Table, T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
        rows: impl FnOnce(&T) -> Vec<M::Key> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + '_ {
        self.write_touching::<M, T>(work, Vec::new(), rows)
    }

    /// Runs a write that touches the rows `known` (and those `rows` names from its
    /// result) and invalidates them. Inside a transaction the invalidation waits for
    /// COMMIT. Outside one, the statement and its invalidation run in a task of their
    /// own, so dropping the caller's future cannot separate them. A write whose
    /// outcome is unknown invalidates what it may have touched all the same; a write
    /// known to have failed touched nothing.
    ///
    /// `work` is boxed at once, so the caller's future stays small.
    pub(crate) fn write_touching<M: Table, T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
        known: Vec<M::Key>,
        rows: impl FnOnce(&T) -> Vec<M::Key> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + '_ {
        let work: Pin<Box<dyn Future<Output = Result<T>> + Send>> = Box::pin(work);
        self.write_boxed::<M, T>(work, known, rows)
    }

    async fn write_boxed<M: Table, T: Send + 'static>(
        &self,
        work: Pin<Box<dyn Future<Output = Result<T>> + Send>>,
        known: Vec<M::Key>,
        rows: impl FnOnce(&T) -> Vec<M::Key> + Send + 'static,
    ) -> Result<T> {
        if self.shared.config.cache.is_none() {
            return work.await;
        }
        let touched = move |result: &Result<T>| -> Option<Invalidation> {
            match result {
                Ok(value) => {
                    let mut all = Invalidation::of::<M>(&known);
                    all.keys
                        .extend(rows(value).iter().map(super::write::key_text::<M>));
                    Some(all)
                }
                Err(Error::OutcomeUnknown { .. } | Error::CommitOutcomeUnknown) => {
                    let mut all = Invalidation::of::<M>(&known);
                    all.every_row = known.is_empty();
                    Some(all)
                }
                Err(_) => None,
            }
        };
        match &self.tx {
            Some(tx) => {
                let result = work.await;
                if let Some(inv) = touched(&result) {
                    tx.conn.lock().await.pending.push(inv);
                }
                result
            }
            None => {
                let db = self.clone();
                super::tx::join_task(tokio::spawn(async move {
                    let result = work.await;
                    if let Some(inv) = touched(&result) {
                        db.apply_invalidation(std::slice::from_ref(&inv)).await;
                        if result.is_err() {
                            // It may land later: invalidate again once the server answers.
                            db.settle_later(None, vec![inv]);
                        }
                    }
                    result
                }))
                .await
            }
        }
    }
}
