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
mod policy;
mod raw;
pub mod replica;
mod scope;
mod tx;
mod verify;
mod write;

use std::sync::Arc;
use std::time::Duration;

use crate::cache::CacheService;
use crate::error::{Error, Result};
use crate::pool::{PgManager, Pool};

pub(crate) use conn::{Conn, TxHandle, grace, read_on_conn};
pub use replica::ConsistencyToken;
pub(crate) use replica::Route;
pub(crate) use scope::current_scoped_tx;
pub use tx::Isolation;
#[cfg(feature = "storage")]
pub(crate) use tx::join_task;
pub use verify::ModelSet;
pub(crate) use write::{Invalidation, key_text, names};

use crate::pool::Pooled;

pub use crate::pool::AfterConnect;

/// How a [`Db`] connects and how long it waits.
///
/// ```
/// let config = tabula::DbConfig::new("postgres://app@localhost/app")
///     .pool_size(8)
///     .statement_timeout(std::time::Duration::from_secs(5));
/// assert_eq!(config.pool_size, 8);
/// ```
///
/// The URL may carry the pool's settings too, read by [`DbConfig::new`] (a builder
/// call after it wins): `pool_size`, `pool_min_idle`, `pool_max_lifetime` and
/// `pool_idle_timeout` (seconds; `0` for never), `pool_checkout_timeout` (seconds),
/// `statement_timeout` (milliseconds) — beside PostgreSQL's own parameters such as
/// `connect_timeout` (seconds) and `application_name`.
///
/// ```
/// let config = tabula::DbConfig::new(
///     "postgres://app@db.internal/app?application_name=api&pool_size=20&pool_max_lifetime=600",
/// );
/// assert_eq!(config.pool_size, 20);
/// assert_eq!(config.max_lifetime, Some(std::time::Duration::from_secs(600)));
/// assert_eq!(config.application_name, "api");
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct DbConfig {
    /// The PostgreSQL URL or key=value connection string.
    pub url: String,
    /// Connections kept at most. Default 10.
    pub pool_size: u32,
    /// Idle connections the pool keeps open ahead of demand. Default none: connections
    /// open when first needed.
    pub min_idle: Option<u32>,
    /// How long a connection lives at most before the pool replaces it (`None`: for
    /// ever). Default 30 minutes.
    pub max_lifetime: Option<Duration>,
    /// How long an idle connection stays open (`None`: for ever). Default 10 minutes.
    pub idle_timeout: Option<Duration>,
    /// How long to wait for a free connection. Default 5 s.
    pub checkout_timeout: Duration,
    /// How long opening a connection may take. Default 5 s, or the URL's
    /// `connect_timeout`.
    pub connect_timeout: Duration,
    /// The `application_name` every connection reports (in `pg_stat_activity`, logs).
    /// Default `tabula`, or the URL's `application_name`.
    pub application_name: String,
    /// Runs on every new connection (see [`AfterConnect`]). Default none.
    pub after_connect: Option<AfterConnect>,
    /// Checks the tokens of [`Db::as_jwt`]. Default none (`as_jwt` is then a
    /// configuration error).
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub jwt: Option<crate::jwt::JwtVerifier>,
    /// How long one statement may run; enforced by the server (see the
    /// [module docs](self#deadlines)). Default 30 s.
    pub statement_timeout: Duration,
    /// Whether the URL reaches PostgreSQL through a *transaction-pooling* proxy
    /// (PgBouncer's `pool_mode = transaction`, Supavisor on port 6543), which may send
    /// each transaction to another server connection: no named prepared statement then
    /// outlives a transaction, so statements go unnamed (with their parameter types
    /// learned once per SQL text, inside a transaction), `insert_many` uses INSERT
    /// instead of COPY, and no session setting is sent at connect. Two things stay the
    /// pooler's or the server's: the statement deadline (`statement_timeout` is a
    /// session setting: set it on the role, `ALTER ROLE app SET statement_timeout =
    /// '30s'`, or in the pooler's connect query: Tabula's own deadline still ends the
    /// call, and its cancel request goes out while the connection is open, but whether
    /// the pooler forwards it is the pooler's — PgBouncer 1.18 as tested here did not,
    /// even for the raw client), and what an [`after_connect`](DbConfig::after_connect) hook sets for the
    /// session. Row Level Security scopes are transaction-local and hold. From the URL:
    /// `?pgbouncer=true`. Default `false`.
    pub transaction_pooling: bool,
    /// TLS: libpq's `sslmode` (see [`SslMode`](crate::SslMode)); from the URL
    /// (`?sslmode=verify-full`, or `sslmode=…` in a key=value string). Default
    /// [`SslMode::Prefer`](crate::SslMode::Prefer), as libpq.
    pub ssl_mode: crate::SslMode,
    /// A PEM file of the root certificates to trust instead of the platform's; from the
    /// URL as `sslrootcert=<path>`. With it, `require` checks the chain (as libpq).
    pub ssl_root_cert: Option<std::path::PathBuf>,
    /// How many times a transaction runs at most when it hits a serialization failure
    /// or a deadlock. Default 5.
    pub transaction_attempts: u32,
    /// The cache behind the row cache, cached queries and `#[cached]`. Default none
    /// ([`Db::connect_from_env`] sets one up from `REDIS_URL`).
    pub cache: Option<CacheService>,
    /// Streaming replicas (hot standbys) that reads may go to, each with a pool of
    /// its own sized as the primary's (see [`DbConfig::replica`]). Default none.
    pub replicas: Vec<String>,
    /// A pool setting in the URL that could not be read, reported at connect.
    url_error: Option<String>,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No URL: it may hold a password.
        f.debug_struct("DbConfig")
            .field("pool_size", &self.pool_size)
            .field("min_idle", &self.min_idle)
            .field("max_lifetime", &self.max_lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("transaction_pooling", &self.transaction_pooling)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("application_name", &self.application_name)
            .field("after_connect", &self.after_connect.is_some())
            .field("transaction_attempts", &self.transaction_attempts)
            .field("cache", &self.cache)
            .finish()
    }
}

/// A connection manager for `url` with `config`'s settings (timeouts, TLS, hooks).
fn manager_for(url: &str, config: &DbConfig) -> Result<PgManager> {
    let (url, _) = split_url_settings(url);
    let (url, _) = crate::tls::take_settings(&url);
    let mut pg: tokio_postgres::Config = url.parse().map_err(|e| {
        // A pool setting where PostgreSQL's parser sees it (a key=value string,
        // an escaped name): say so, rather than only "invalid".
        match URL_SETTINGS
            .iter()
            .find(|name| url.contains(&format!("{name}=")))
        {
            Some(name) => Error::Config(format!(
                "invalid database url: `{name}` is read from the query of a \
                     postgres:// URL only; set it with DbConfig for a key=value \
                     connection string ({e})"
            )),
            None => Error::Config(format!("invalid database url: {e}")),
        }
    })?;
    pg.application_name(&config.application_name);
    // An sslmode PostgreSQL's parser found where Tabula's did not (spaced, quoted,
    // escaped): refused, never silently replaced by the default.
    if !matches!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer) {
        return Err(Error::Config(
            "`sslmode` is written in a form Tabula cannot read: write `sslmode=<mode>` \
             (no spaces, quotes or escapes) in the URL query or the key=value string, \
             or use DbConfig::ssl_mode"
                .into(),
        ));
    }
    pg.ssl_mode(config.ssl_mode.negotiation());
    let tls = crate::tls::connector(config.ssl_mode, config.ssl_root_cert.as_deref())?;
    Ok(PgManager::new(
        pg,
        config.connect_timeout,
        config.statement_timeout,
        config.after_connect.clone(),
        tls,
        config.transaction_pooling,
    ))
}

/// A pool of `manager`'s connections with `config`'s sizes and limits.
fn pool_for(manager: PgManager, config: &DbConfig, checkout_timeout: Duration) -> Pool {
    Pool::new(
        manager,
        crate::pool::Settings {
            max_size: config.pool_size,
            min_idle: config.min_idle.unwrap_or(0).min(config.pool_size),
            max_lifetime: config.max_lifetime,
            idle_timeout: config.idle_timeout,
            checkout_timeout: checkout_timeout.max(Duration::from_millis(1)),
        },
    )
}

/// The pool settings a URL may carry (see [`DbConfig`]).
const URL_SETTINGS: &[&str] = &[
    "pool_size",
    "pool_min_idle",
    "pool_max_lifetime",
    "pool_idle_timeout",
    "pool_checkout_timeout",
    "statement_timeout",
    "pgbouncer",
];

/// Splits Tabula's pool settings off a URL's query (see `conninfo::split_query`).
fn split_url_settings(url: &str) -> (String, Vec<(String, String)>) {
    crate::conninfo::split_query(url, URL_SETTINGS)
}

/// The most connections a pool setting may ask for: past it, a typo (an extra digit)
/// would have the pool open connections until the process runs out of memory.
const MAX_POOL_CONNECTIONS: u64 = 10_000;

impl DbConfig {
    /// A configuration for `url` with the defaults, and the pool settings the URL
    /// carries (see [`DbConfig`]); a setting that cannot be read is reported by
    /// [`Db::connect_with`].
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let mut config = DbConfig {
            url,
            pool_size: 10,
            min_idle: None,
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            application_name: "tabula".into(),
            after_connect: None,
            #[cfg(feature = "jwt")]
            jwt: None,
            statement_timeout: Duration::from_secs(30),
            ssl_mode: crate::SslMode::default(),
            ssl_root_cert: None,
            transaction_pooling: false,
            transaction_attempts: 5,
            cache: None,
            replicas: Vec::new(),
            url_error: None,
        };
        if let Err(e) = config.read_url_settings() {
            config.url_error = Some(e);
        }
        config
    }

    fn read_url_settings(&mut self) -> std::result::Result<(), String> {
        let (rest, settings) = split_url_settings(&self.url);
        for (name, value) in settings {
            if name == "pgbouncer" {
                self.transaction_pooling = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(format!(
                            "`pgbouncer={}` in the database url: true or false is expected",
                            other.escape_debug()
                        ));
                    }
                };
                continue;
            }
            let number: u64 = value.parse().map_err(|_| {
                format!(
                    "`{name}={}` in the database url: a whole number is expected",
                    value.escape_debug()
                )
            })?;
            let seconds = (number > 0).then(|| Duration::from_secs(number));
            let connections = || -> std::result::Result<u32, String> {
                match number {
                    0 if name == "pool_size" => Err("`pool_size` must be at least 1".into()),
                    n if n > MAX_POOL_CONNECTIONS => Err(format!(
                        "`{name}={n}` in the database url: at most {MAX_POOL_CONNECTIONS} connections"
                    )),
                    n => Ok(n as u32),
                }
            };
            match name.as_str() {
                "pool_size" => self.pool_size = connections()?,
                "pool_min_idle" => self.min_idle = Some(connections()?),
                "statement_timeout" if number == 0 => {
                    return Err(
                        "`statement_timeout=0` in the database url: every statement has a \
                         deadline in Tabula; give one in milliseconds"
                            .into(),
                    );
                }
                "pool_max_lifetime" => self.max_lifetime = seconds,
                "pool_idle_timeout" => self.idle_timeout = seconds,
                "pool_checkout_timeout" => self.checkout_timeout = Duration::from_secs(number),
                _ => self.statement_timeout = Duration::from_millis(number),
            }
        }
        let (rest, tls) = crate::tls::take_settings(&rest);
        for (name, value) in tls {
            match name.as_str() {
                "sslmode" => {
                    self.ssl_mode = value.parse().map_err(|e: Error| match e {
                        Error::Config(message) => message,
                        other => other.to_string(),
                    })?;
                }
                _ => self.ssl_root_cert = Some(value.into()),
            }
        }
        // PostgreSQL's own parameters that set what a field holds.
        if let Ok(pg) = rest.parse::<tokio_postgres::Config>() {
            if let Some(name) = pg.get_application_name() {
                self.application_name = name.to_owned();
            }
            if let Some(timeout) = pg.get_connect_timeout() {
                self.connect_timeout = *timeout;
            }
        }
        Ok(())
    }

    /// Sets [`DbConfig::jwt`].
    ///
    /// ```
    /// let verifier = tabula::jwt::JwtVerifier::hs256(b"a-secret-of-at-least-thirty-two-bytes!")?;
    /// let config = tabula::DbConfig::new("postgres://app@localhost/app").jwt(verifier);
    /// # Ok::<(), tabula::Error>(())
    /// ```
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn jwt(mut self, verifier: crate::jwt::JwtVerifier) -> Self {
        self.jwt = Some(verifier);
        self
    }

    /// Sets [`DbConfig::min_idle`].
    pub fn min_idle(mut self, connections: u32) -> Self {
        self.min_idle = Some(connections);
        self
    }

    /// Sets [`DbConfig::max_lifetime`].
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Sets [`DbConfig::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`DbConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`DbConfig::application_name`].
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Runs `hook` on every new connection before its first use, and again after
    /// [`Db::with_client`] reset a session (`DISCARD ALL` drops what the hook set). A
    /// hook that fails fails the connection, which the pool does not keep.
    ///
    /// ```
    /// let config = tabula::DbConfig::new("postgres://app@localhost/app").after_connect(|client| {
    ///     Box::pin(async move {
    ///         client.batch_execute("SET search_path TO app, public").await?;
    ///         Ok(())
    ///     })
    /// });
    /// assert!(config.after_connect.is_some());
    /// ```
    pub fn after_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(
                &'c tokio_postgres::Client,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<()>> + Send + 'c>,
            > + Send
            + Sync
            + 'static,
    {
        self.after_connect = Some(Arc::new(hook));
        self
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

    /// Adds a streaming replica (a hot standby of the primary): reads outside a
    /// transaction go to one that has replayed this handle's writes, the rest to the
    /// primary; the cache is filled from the primary. See [`crate::db::replica`]'s
    /// rules and [`Db::consistency_token`]. Pool settings in its URL are ignored (the
    /// primary's apply); TLS settings are its own.
    ///
    /// ```
    /// let config = tabula::DbConfig::new("postgres://app@primary/app")
    ///     .replica("postgres://app@standby-1/app")
    ///     .replica("postgres://app@standby-2/app");
    /// assert_eq!(config.replicas.len(), 2);
    /// ```
    pub fn replica(mut self, url: impl Into<String>) -> Self {
        self.replicas.push(url.into());
        self
    }

    /// Sets [`DbConfig::transaction_pooling`].
    ///
    /// ```
    /// let config = tabula::DbConfig::new("postgres://app@pooler:6543/app").transaction_pooling(true);
    /// assert!(config.transaction_pooling);
    /// ```
    pub fn transaction_pooling(mut self, on: bool) -> Self {
        self.transaction_pooling = on;
        self
    }

    /// Sets [`DbConfig::ssl_mode`].
    ///
    /// ```
    /// let config = tabula::DbConfig::new("postgres://app@db.example.com/app")
    ///     .ssl_mode(tabula::SslMode::VerifyFull);
    /// assert_eq!(config.ssl_mode, tabula::SslMode::VerifyFull);
    /// ```
    pub fn ssl_mode(mut self, mode: crate::SslMode) -> Self {
        self.ssl_mode = mode;
        self
    }

    /// Sets [`DbConfig::ssl_root_cert`].
    pub fn ssl_root_cert(mut self, pem_file: impl Into<std::path::PathBuf>) -> Self {
        self.ssl_root_cert = Some(pem_file.into());
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
    /// Where its reads may go (see [`replica`]).
    pub(crate) route: Route,
}

/// What `db/policy.rs` found for one table (`None`: its scoped reads are not cached).
pub(crate) type PolicyPlan = Option<(Arc<[String]>, Arc<str>)>;

pub(crate) struct Shared {
    pool: Pool,
    /// Opens connections outside the pool (to resolve a lost COMMIT).
    manager: PgManager,
    /// The cache as this database sees it (see [`Db::cache`]).
    pub(crate) cache: Option<CacheService>,
    /// The database's identity (see `PgConn::identity`).
    pub(crate) identity: String,
    /// How this handle's sessions find tables by bare names (see
    /// `Db::shared_reads_allowed`); learned on each connection the pool opens.
    pub(crate) names: Arc<crate::pool::SessionNames>,
    /// What a write's invalidation needs from the catalog (foreign-key actions, other
    /// names of tables); read on first need, forgotten after DDL through this handle.
    pub(crate) write_catalog: std::sync::RwLock<Option<Arc<write::WriteCatalog>>>,
    /// Per table: whether this connection's role sees exactly the rows any other role
    /// that fills the shared cache sees (see `Db::shared_reads_allowed`).
    /// Keyed by the address of the table's `TableMeta`.
    pub(crate) table_access: std::sync::Mutex<std::collections::HashMap<usize, bool>>,
    /// Per table (by `TableMeta` address): the version counters a user scope's cached
    /// copies depend on and the fingerprint of the policies, grants and settings that
    /// decided them, or `None` when they may not be cached (see `db/policy.rs`).
    pub(crate) policy_plans: std::sync::Mutex<std::collections::HashMap<usize, PolicyPlan>>,
    /// Bumped whenever what was read from the catalog is forgotten (DDL through the
    /// handle): an answer read across a bump is not kept.
    pub(crate) schema_epoch: std::sync::atomic::AtomicU64,
    /// Query-builder statements rendered so far (see `sql.rs`).
    pub(crate) rendered: crate::sql::Rendered,
    /// The replicas reads may go to (see [`replica`]).
    pub(crate) replicas: Option<replica::Replicas>,
    pub(crate) config: DbConfig,
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
        if let Some(e) = &config.url_error {
            return Err(Error::Config(e.clone()));
        }
        // The field is public: a pool of none would time every call out.
        if config.pool_size == 0 {
            return Err(Error::Config("`pool_size` must be at least 1".into()));
        }
        let manager = manager_for(&config.url, &config)?;
        let spare = manager.clone();
        let names = manager.names.clone();
        // Open one connection by hand first, so that a wrong URL, password or host is
        // reported at once with the server's own words.
        let mut first = manager.connect().await.map_err(|e| {
            match e.to_string().contains("unsupported startup parameter") {
                // PgBouncer's answer to the statement deadline Tabula sends at connect.
                true => Error::Connect(format!(
                    "{e} — behind a transaction-pooling proxy such as PgBouncer? Add \
                     `?pgbouncer=true` to the URL (DbConfig::transaction_pooling)"
                )),
                false => e,
            }
        })?;
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
        let pool = pool_for(manager, &config, config.checkout_timeout);
        // Hand the connection opened above to the pool instead of wasting it.
        // Replicas are not asked at connect (one that is down is skipped by reads);
        // each is checked on its first connection against what the primary is.
        let replicas = match config.replicas.is_empty() {
            true => None,
            false => {
                let (primary, _) = replica::what_it_is(&mut first).await?;
                let pools = config
                    .replicas
                    .iter()
                    .map(|url| {
                        let manager = manager_for(url, &config)?;
                        // A replica that cannot be reached soon is left for the
                        // primary: its checkouts wait at most a second.
                        let wait = config.checkout_timeout.min(Duration::from_secs(1));
                        Ok(pool_for(manager, &config, wait))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(replica::Replicas::new(pools, primary))
            }
        };
        pool.add(first);
        Ok(Db {
            shared: Arc::new(Shared {
                pool,
                manager: spare,
                names,
                config,
                cache,
                identity,
                write_catalog: std::sync::RwLock::new(None),
                table_access: std::sync::Mutex::default(),
                policy_plans: std::sync::Mutex::default(),
                schema_epoch: std::sync::atomic::AtomicU64::new(0),
                rendered: crate::sql::Rendered::default(),
                replicas,
            }),
            tx: None,
            scope: None,
            route: Route::default(),
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

    /// Whether this handle's statements would run in a transaction that is not theirs
    /// to end: its own, or — for a user-scoped handle inside its own call's
    /// `with_client` body — that call's one-shot transaction (found through a
    /// task-local, so this is asked on the caller's task, before any spawn).
    #[cfg(feature = "storage")]
    pub(crate) fn in_enclosing_transaction(&self) -> bool {
        self.tx.is_some() || scope::current_scoped_tx(self).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::split_url_settings;

    #[test]
    fn settings_come_from_the_query_after_the_host_never_from_a_password() {
        // `?`, `&` and even a setting's name inside a password stay in the password.
        let (url, ours) = split_url_settings(
            "postgres://app:x?pool_size=2&&y@db:5432/app?pool_size=7&sslmode=disable",
        );
        assert_eq!(
            url,
            "postgres://app:x?pool_size=2&&y@db:5432/app?sslmode=disable"
        );
        assert_eq!(ours, [("pool_size".to_owned(), "7".to_owned())]);
        // No query: untouched, whatever the password holds.
        let (url, ours) = split_url_settings("postgresql://app:p?a&s@db/app");
        assert_eq!(
            (url.as_str(), ours.len()),
            ("postgresql://app:p?a&s@db/app", 0)
        );
        // A key=value connection string is never rewritten.
        let kv = "host=db user=app password=pa?&&ss dbname=app";
        assert_eq!(split_url_settings(kv), (kv.to_owned(), Vec::new()));
        // Only our names are taken; the rest keeps its order.
        let (url, ours) = split_url_settings(
            "postgres://db/app?application_name=a&statement_timeout=9&connect_timeout=3",
        );
        assert_eq!(
            url,
            "postgres://db/app?application_name=a&connect_timeout=3"
        );
        assert_eq!(ours.len(), 1);
    }
}
