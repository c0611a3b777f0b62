//! The [`Db`] handle: a pool of PostgreSQL connections and the typed CRUD API.
//!
//! A `Db` is cheap to clone and safe to share. The same type serves inside a
//! transaction: [`Db::transaction`] hands its closure a `Db` bound to the transaction's
//! connection, so every method — CRUD, queries, nested calls — runs in that transaction
//! without a second API to learn.
//!
//! The rooms: `mod.rs` (configuration, connecting), `conn.rs` (checking out a
//! connection, deadlines, re-entrancy), `crud.rs` (create / read / update / delete),
//! `tx.rs` (transactions, savepoints, the commit protocol), `write.rs` (what a write
//! reports to the cache).
//!
//! # Deadlines
//!
//! Every network call has a deadline: pool checkout ([`DbConfig::checkout_timeout`]),
//! connect ([`DbConfig::connect_timeout`]) and each statement
//! ([`DbConfig::statement_timeout`]). The statement deadline is enforced by the
//! *server*: every connection carries it as its `statement_timeout`, so a statement
//! that outlives it — a lock wait included — is cancelled by PostgreSQL, its effects
//! undone, and the caller gets [`Error::Timeout`] knowing that nothing happened (it is
//! [transient](Error::is_transient): retrying is safe). The client waits a grace period
//! longer (half the deadline, between 200 ms and 5 s); if even then no answer came (a
//! network that went silent), it sends a cancel request, closes the connection — it is
//! never handed out again while the server may still be running the statement — and
//! reports a read as [`Error::Timeout`] and a write as [`Error::OutcomeUnknown`] (not
//! transient; its cache entries are invalidated all the same).
//!
//! A future dropped half-way (a `select!`, a caller that gave up) is treated the same
//! way: its statement is cancelled and its connection closed. Writes outside a
//! transaction run to completion in a task of their own, so dropping the caller's
//! future never separates a write from its cache invalidation.
//!
//! # Transactions
//!
//! See [`Db::transaction`]: COMMIT's answer is checked (an aborted transaction is
//! [`Error::TransactionAborted`], never `Ok`), nested calls are savepoints, and a
//! COMMIT whose answer was lost is resolved by asking the server.
//!
//! # Re-entrancy
//!
//! A statement on a transaction (or a user-scoped handle) from inside that handle's own
//! [`Db::with_client`] body, or while a [`stream`](crate::Query::stream) from it is
//! open, cannot run — the connection is in use — and is [`Error::Misuse`] at once
//! instead of a deadlock.

mod cached;
mod conn;
mod crud;
mod scope;
mod tx;
mod write;

use std::sync::Arc;
use std::time::Duration;

use crate::cache::CacheService;
use crate::error::{Error, Result};
use crate::pool::{LastConnectError, PgManager};

pub(crate) use conn::{Conn, TxHandle, read_on_conn};
pub use tx::Isolation;
pub(crate) use write::{Invalidation, key_text};

type Pooled = bb8::PooledConnection<'static, PgManager>;

/// How a [`Db`] connects and how long it waits.
///
/// ```
/// let config = tabula::DbConfig::new("postgres://app@localhost/app")
///     .pool_size(8)
///     .statement_timeout(std::time::Duration::from_secs(5));
/// assert_eq!(config.pool_size, 8);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DbConfig {
    /// The PostgreSQL URL or key=value connection string.
    pub url: String,
    /// Connections kept at most. Default 10.
    pub pool_size: u32,
    /// How long to wait for a free connection. Default 5 s.
    pub checkout_timeout: Duration,
    /// How long opening a connection may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long one statement may run; enforced by the server (see the
    /// [module docs](self#deadlines)). Default 30 s.
    pub statement_timeout: Duration,
    /// How many times a transaction runs at most when it hits a serialization failure
    /// or a deadlock. Default 5.
    pub transaction_attempts: u32,
    /// The cache behind the row cache, cached queries and `#[cached]`. Default none
    /// ([`Db::connect_from_env`] sets one up from `REDIS_URL`).
    pub cache: Option<CacheService>,
}

impl DbConfig {
    /// A configuration for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        DbConfig {
            url: url.into(),
            pool_size: 10,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            transaction_attempts: 5,
            cache: None,
        }
    }

    /// Sets [`DbConfig::cache`].
    ///
    /// ```
    /// let cache = tabula::CacheService::in_memory(Default::default())?;
    /// let config = tabula::DbConfig::new("postgres://app@localhost/app").cache(cache);
    /// assert!(config.cache.is_some());
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn cache(mut self, cache: CacheService) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Sets [`DbConfig::pool_size`].
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Sets [`DbConfig::checkout_timeout`].
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// Sets [`DbConfig::statement_timeout`].
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets [`DbConfig::transaction_attempts`] (at least 1).
    pub fn transaction_attempts(mut self, attempts: u32) -> Self {
        self.transaction_attempts = attempts.max(1);
        self
    }
}

/// A handle to the database. See the [module docs](self).
///
/// Its methods, by what they do, with the file each lives in:
///
/// - **Connect** (`db/mod.rs`): [`connect`](Db::connect),
///   [`connect_with`](Db::connect_with), [`connect_from_env`](Db::connect_from_env),
///   [`config`](Db::config), [`cache`](Db::cache), [`in_transaction`](Db::in_transaction).
/// - **Rows by key** (`db/crud.rs`): [`create`](Db::create),
///   [`create_many`](Db::create_many), [`upsert`](Db::upsert), [`read`](Db::read),
///   [`read_uncached`](Db::read_uncached), [`update`](Db::update),
///   [`delete`](Db::delete), [`hard_delete`](Db::hard_delete), [`restore`](Db::restore).
/// - **Through the row cache** (`db/cached.rs`): [`read_many`](Db::read_many),
///   [`warm`](Db::warm), [`find_unique`](Db::find_unique) (generated as
///   `Model::by_<field>`).
/// - **Queries** (`query/mod.rs`): [`query`](Db::query), then
///   [`Query`](crate::Query)'s `all`, `first`, `one`, `count`, `exists`, `stream`,
///   `page`…; from untrusted input (`query/spec/json.rs`): [`query_spec`](Db::query_spec).
/// - **Many rows by filter** (`query/bulk.rs`): [`update_where`](Db::update_where),
///   [`update_all`](Db::update_all), [`delete_where`](Db::delete_where),
///   [`delete_all`](Db::delete_all).
/// - **Transactions** (`db/tx.rs`): [`transaction`](Db::transaction),
///   [`transaction_with`](Db::transaction_with).
/// - **User scopes for Row Level Security** (`db/scope.rs`, rules in `auth.rs`):
///   [`as_user`](Db::as_user), [`as_claims`](Db::as_claims), [`as_anon`](Db::as_anon),
///   [`is_scoped`](Db::is_scoped).
/// - **What Tabula cannot see** (`db/write.rs`): [`invalidate`](Db::invalidate),
///   [`invalidate_table`](Db::invalidate_table).
/// - **Raw SQL** (`db/conn.rs`): [`with_client`](Db::with_client),
///   [`execute_batch`](Db::execute_batch).
///
/// ```no_run
/// # async fn run() -> tabula::Result<()> {
/// let db = tabula::Db::connect("postgres://app@localhost/app").await?;
/// let scoped = db.as_claims(serde_json::json!({ "sub": "42", "role": "authenticated" }))?;
/// assert!(scoped.is_scoped());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Db {
    pub(crate) shared: Arc<Shared>,
    /// Set when this handle is bound to a transaction (or a savepoint in one).
    pub(crate) tx: Option<TxHandle>,
    /// Set for a user-scoped handle (see [`crate::auth`]).
    pub(crate) scope: Option<Arc<crate::auth::Scope>>,
}

pub(crate) struct Shared {
    pool: bb8::Pool<PgManager>,
    /// Opens connections outside the pool (to resolve a lost COMMIT).
    manager: PgManager,
    /// The cache as this database sees it (see [`Db::cache`]).
    pub(crate) cache: Option<CacheService>,
    /// The database's identity (see `PgConn::identity`).
    pub(crate) identity: String,
    /// Which tables a write to a table can change through foreign-key actions; read
    /// from the catalog on first need, forgotten after DDL through this handle.
    pub(crate) foreign_keys: std::sync::RwLock<Option<Arc<write::Cascades>>>,
    /// Query-builder statements rendered so far (see `sql.rs`).
    pub(crate) rendered: crate::sql::Rendered,
    pub(crate) config: DbConfig,
    connect_errors: LastConnectError,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("pool_size", &self.shared.config.pool_size)
            .field("in_transaction", &self.tx.is_some())
            .finish()
    }
}

impl Db {
    /// Connects with the defaults of [`DbConfig`].
    ///
    /// ```no_run
    /// # async fn run() -> tabula::Result<()> {
    /// let db = tabula::Db::connect("postgres://app@localhost/app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Db> {
        Db::connect_with(DbConfig::new(url)).await
    }

    /// Connects to `DATABASE_URL`, with the cache the environment asks for (see
    /// [`CacheService::from_env`]: Redis at `REDIS_URL`; no cache without it, unless
    /// `TABULA_CACHE=memory` asks for an in-process one).
    ///
    /// ```no_run
    /// # async fn run() -> tabula::Result<()> {
    /// let db = tabula::Db::connect_from_env().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_from_env() -> Result<Db> {
        let url = std::env::var("DATABASE_URL")
            .map_err(|_| Error::Config("DATABASE_URL is not set".into()))?;
        let mut config = DbConfig::new(url);
        config.cache = CacheService::from_env()?;
        Db::connect_with(config).await
    }

    /// Connects with an explicit configuration, and checks that a connection opens.
    ///
    /// ```no_run
    /// # async fn run() -> tabula::Result<()> {
    /// let config = tabula::DbConfig::new("postgres://app@localhost/app").pool_size(4);
    /// let db = tabula::Db::connect_with(config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(config: DbConfig) -> Result<Db> {
        let pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| Error::Config(format!("invalid database url: {e}")))?;
        let manager = PgManager::new(pg, config.connect_timeout, config.statement_timeout);
        let spare = PgManager {
            config: manager.config.clone(),
        };
        // Open one connection by hand first, so that a wrong URL, password or host is
        // reported at once with the server's own words.
        let first = bb8::ManageConnection::connect(&manager).await?;
        // The cache's view of this database: its entries under the database's identity
        // (or the configured namespace), so two databases never share one. Known also
        // without a cache: a write through this handle must still reach the caches
        // other handles of the process keep over the same database.
        let identity = first.identity().await?;
        let cache = config.cache.as_ref().map(|cache| {
            let bound = cache.bound(&identity);
            crate::cache::register_for_database(&identity, &bound);
            bound
        });
        let connect_errors = LastConnectError::default();
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size)
            .connection_timeout(config.checkout_timeout.max(Duration::from_millis(1)))
            // Dead sockets are caught by `has_broken` without a round trip per checkout.
            .test_on_check_out(false)
            .retry_connection(false)
            .error_sink(Box::new(connect_errors.clone()))
            .build_unchecked(manager);
        // Hand the connection opened above to the pool instead of wasting it.
        let _ = pool.add(first);
        Ok(Db {
            shared: Arc::new(Shared {
                pool,
                manager: spare,
                config,
                cache,
                identity,
                connect_errors,
                foreign_keys: std::sync::RwLock::new(None),
                rendered: crate::sql::Rendered::default(),
            }),
            tx: None,
            scope: None,
        })
    }

    /// The cache this handle reads through and invalidates: the configured one, with
    /// Tabula's entries in this database's namespace (see
    /// [`CacheConfig::namespace`](crate::CacheConfig::namespace)). Install it for
    /// `#[cached]` functions with [`CacheService::install_global`].
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) {
    /// if let Some(cache) = db.cache() {
    ///     cache.install_global();
    /// }
    /// # }
    /// ```
    pub fn cache(&self) -> Option<&CacheService> {
        self.shared.cache.as_ref()
    }

    /// The configuration this handle was built with.
    pub fn config(&self) -> &DbConfig {
        &self.shared.config
    }

    /// Whether this handle is bound to a transaction.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }
}
