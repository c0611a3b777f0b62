//! The [`Db`] handle: a pool of PostgreSQL connections and the typed CRUD API.
//!
//! A `Db` is cheap to clone and safe to share. The same type serves inside a
//! transaction: [`Db::transaction`] hands its closure a `Db` bound to the transaction's
//! connection, so every method — CRUD, queries, nested calls — runs in that transaction
//! without a second API to learn.
//!
//! Every network call has a deadline: pool checkout ([`DbConfig::checkout_timeout`]),
//! connect ([`DbConfig::connect_timeout`]) and each operation
//! ([`DbConfig::statement_timeout`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::Instrument;

use crate::cache::CacheService;
use crate::error::{Error, Result};
use crate::monitor;
use crate::pool::{LastConnectError, PgConn, PgManager};
use crate::sql::{self, Binder};
use crate::table::{ColumnSet, Insert, Param, Patch, Table};

type Pooled = bb8::PooledConnection<'static, PgManager>;

/// Rows per statement in [`Db::create_many`]. Arrays have no bind-parameter limit; the
/// chunk only bounds the size of one message.
const BATCH_CHUNK_ROWS: usize = 20_000;

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
    /// How long one operation may take on the client side. Default 30 s.
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

/// Isolation level of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// PostgreSQL's default.
    #[default]
    ReadCommitted,
    /// One snapshot for the whole transaction.
    RepeatableRead,
    /// As if transactions ran one at a time; conflicts are retried by Tabula.
    Serializable,
}

impl Isolation {
    fn begin(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// A handle to the database. See the [module docs](self).
#[derive(Clone)]
pub struct Db {
    pub(crate) shared: Arc<Shared>,
    /// Set when this handle is bound to a transaction.
    pub(crate) tx: Option<Arc<Mutex<TxConn>>>,
    /// Set for a user-scoped handle (see [`crate::auth`]).
    pub(crate) scope: Option<Arc<crate::auth::Scope>>,
}

pub(crate) struct Shared {
    pool: bb8::Pool<PgManager>,
    pub(crate) config: DbConfig,
    connect_errors: LastConnectError,
}

/// The connection of a transaction; `None` once it committed or rolled back.
pub(crate) struct TxConn {
    conn: Option<Pooled>,
    /// Cache invalidations of the transaction's writes, applied after COMMIT.
    pending: Vec<Invalidation>,
}

/// What a write makes stale: the version counters of the tables it touched (cached
/// queries and `#[cached]` functions) and the rows it changed (row cache).
#[derive(Debug, Default)]
pub(crate) struct Invalidation {
    pub(crate) counters: Vec<String>,
    pub(crate) rows: Vec<String>,
}

impl Invalidation {
    pub(crate) fn merge(all: Vec<Invalidation>) -> Invalidation {
        let mut out = Invalidation::default();
        for inv in all {
            for c in inv.counters {
                if !out.counters.contains(&c) {
                    out.counters.push(c);
                }
            }
            out.rows.extend(inv.rows);
        }
        out
    }
}

/// A connection checked out for one operation. Lives on the stack for one call, so
/// the size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conn {
    Pooled(Pooled),
    Tx(OwnedMutexGuard<TxConn>),
}

impl Conn {
    pub(crate) fn get(&mut self) -> Result<&mut PgConn> {
        match self {
            Conn::Pooled(pooled) => Ok(pooled),
            Conn::Tx(guard) => guard.conn.as_deref_mut().ok_or_else(|| {
                Error::Validation("the transaction this handle belongs to has already ended".into())
            }),
        }
    }
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

    /// Connects to `DATABASE_URL`, with a cache on `REDIS_URL` when it is set and an
    /// in-process cache otherwise (which is only right while one process writes).
    ///
    /// ```no_run
    /// # async fn run() -> tabula::Result<()> {
    /// let db = tabula::Db::connect_from_env().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_from_env() -> Result<Db> {
        let url = std::env::var("DATABASE_URL")
            .map_err(|_| Error::Config("DATABASE_URL is not set".into()))?;
        Db::connect_with(DbConfig::new(url).cache(CacheService::from_env()?)).await
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
        if let Some(cache) = &config.cache {
            cache.install_global();
        }
        let manager = PgManager::new(pg, config.connect_timeout);
        // Open one connection by hand first, so that a wrong URL, password or host is
        // reported at once with the server's own words.
        let first = bb8::ManageConnection::connect(&manager).await?;
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
                config,
                connect_errors,
            }),
            tx: None,
            scope: None,
        })
    }

    /// The configuration this handle was built with.
    pub fn config(&self) -> &DbConfig {
        &self.shared.config
    }

    /// Whether this handle is bound to a transaction.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    async fn checkout(&self) -> Result<Pooled> {
        // A connection whose socket closed while idle is dropped by the pool when it is
        // returned broken; take another. The bound keeps a dead server from looping us.
        for _ in 0..=self.shared.config.pool_size {
            let conn = self
                .shared
                .pool
                .get_owned()
                .await
                .map_err(|e| match Error::from(e) {
                    Error::PoolTimeout(_) => match self.shared.connect_errors.take() {
                        Some(cause) => Error::Connect(cause),
                        None => Error::PoolTimeout(self.shared.config.checkout_timeout),
                    },
                    other => other,
                })?;
            if !conn.is_closed() {
                return Ok(conn);
            }
        }
        Err(Error::PoolTimeout(self.shared.config.checkout_timeout))
    }

    /// A connection for one operation: the transaction's, or one from the pool.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        if let Some(tx) = &self.tx {
            return Ok(Conn::Tx(tx.clone().lock_owned().await));
        }
        if self.scope.is_some() {
            // A scoped statement runs only inside the scoped transaction `timed` opened;
            // anything else would run with the service role's rights, so refuse.
            return match crate::auth::current_scoped_tx() {
                Some(state) => Ok(Conn::Tx(state.lock_owned().await)),
                None => Err(Error::Validation(
                    "this operation is not available on a user-scoped handle outside a transaction; \
                     run it inside `transaction`"
                        .into(),
                )),
            };
        }
        Ok(Conn::Pooled(self.checkout().await?))
    }

    /// Runs `work` inside a span, under the statement deadline, and records the outcome.
    pub(crate) async fn timed<T>(
        &self,
        operation: &'static str,
        table: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let deadline = self.shared.config.statement_timeout;
        let span = tracing::debug_span!("tabula.db", operation, table);
        let work = async {
            match &self.scope {
                Some(scope) if self.tx.is_none() && crate::auth::current_scoped_tx().is_none() => {
                    self.in_scope(scope, work).await
                }
                _ => work.await,
            }
        };
        let result = match tokio::time::timeout(deadline, work.instrument(span)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                operation,
                after: deadline,
            }),
        };
        monitor::record_db(operation, table, started, &result);
        result
    }

    /// Runs `work` in a transaction of its own that switched to the scope's role and
    /// claims (SET LOCAL, set_config(…, true)); COMMIT on `Ok`, ROLLBACK on `Err`.
    /// Both end with the transaction, and a connection abandoned half-way is closed,
    /// so nothing reaches the next user of the pooled connection.
    async fn in_scope<T>(
        &self,
        scope: &crate::auth::Scope,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut conn = self.checkout().await?;
        conn.in_transaction = true;
        // Sent with the first statement, in one round trip (see `PgConn::pending_setup`).
        conn.pending_setup = Some(format!("BEGIN; {}", scope.setup_sql()));
        let state = Arc::new(Mutex::new(TxConn {
            conn: Some(conn),
            pending: Vec::new(),
        }));
        let result = crate::auth::with_scoped_tx(state.clone(), work).await;
        let conn = state.lock().await.conn.take();
        let Some(mut conn) = conn else {
            return Err(Error::Validation("scoped connection taken twice".into()));
        };
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        match conn.batch(end).await {
            Ok(()) => conn.in_transaction = false,
            Err(e) if result.is_ok() => return Err(e),
            Err(_) => {}
        }
        result
    }

    /// Runs `body` on a connection inside a span, under the statement deadline, and
    /// records the outcome.
    pub(crate) async fn run<T>(
        &self,
        operation: &'static str,
        table: &'static str,
        body: impl AsyncFnOnce(&mut PgConn) -> Result<T>,
    ) -> Result<T> {
        self.timed(operation, table, async {
            let mut conn = self.conn().await?;
            body(conn.get()?).await
        })
        .await
    }

    /// Whether a read that failed on a dead connection should be tried again (outside a
    /// transaction, at most once per pooled connection).
    pub(crate) fn retry_read(&self, error: &Error, tries: &mut u32) -> bool {
        let retry = matches!(error, Error::Connection(_))
            && self.tx.is_none()
            && *tries < self.shared.config.pool_size;
        *tries += 1;
        retry
    }

    /// The statement of [`Db::create`], without its cache invalidation.
    async fn create_now<N: Insert>(&self, new: N) -> Result<N::Table> {
        let meta = N::Table::META;
        self.run("create", meta.name, async |conn| {
            let sql = &N::Table::statements().insert;
            let row = conn
                .query_opt(sql, &new.params())
                .await?
                .ok_or(Error::NotFound { table: meta.name })?;
            N::Table::from_row(&row)
        })
        .await
    }

    /// The statement of [`Db::create_many`], without its cache invalidation.
    async fn create_many_now<N: Insert>(&self, rows: Vec<N>) -> Result<Vec<N::Table>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if rows.len() > BATCH_CHUNK_ROWS && self.tx.is_none() {
            let rows = &rows;
            return self
                .transaction(move |tx| async move { tx.insert_chunks(rows).await })
                .await;
        }
        self.insert_chunks(&rows).await
    }

    async fn insert_chunks<N: Insert>(&self, rows: &[N]) -> Result<Vec<N::Table>> {
        let meta = N::Table::META;
        self.run("create_many", meta.name, async |conn| {
            let statements = N::Table::statements();
            let mut out = Vec::with_capacity(rows.len());
            if meta.insert_columns().next().is_none() {
                // Every column is generated: there is nothing to put in an array.
                for _ in rows {
                    let row = conn.query_opt(&statements.insert, &[]).await?;
                    out.extend(row.map(|r| N::Table::from_row(&r)).transpose()?);
                }
                return Ok(out);
            }
            for chunk in rows.chunks(BATCH_CHUNK_ROWS) {
                let arrays = N::column_arrays(chunk);
                let params: Vec<Param<'_>> =
                    arrays.iter().map(|a| a.as_ref() as Param<'_>).collect();
                for row in conn.query(&statements.insert_many, &params).await? {
                    out.push(N::Table::from_row(&row)?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Reads the row with primary key `key` — through the row cache for a model
    /// declared `#[table(cache(ttl = N))]` (outside transactions); see [`crate::cache`].
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let note: Option<Note> = db.read(7).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read<M: Table>(&self, key: impl Into<M::Key>) -> Result<Option<M>> {
        self.read_through::<M>(key.into()).await
    }

    /// Reads the row with primary key `key` from PostgreSQL, never from the cache: for
    /// paths where only the database will do.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let fresh: Option<Note> = db.read_uncached(7).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_uncached<M: Table>(&self, key: impl Into<M::Key>) -> Result<Option<M>> {
        let key = key.into();
        crate::db::read_on_conn!(self, "read", M::META.name, |conn| {
            match conn.query_opt(&M::statements().read, &[&key]).await? {
                Some(row) => M::from_row(&row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    /// The statement of [`Db::update`], without its cache invalidation.
    async fn update_now<M: Table>(&self, key: M::Key, patch: M::Patch) -> Result<M> {
        let key: M::Key = key;
        let meta = M::META;
        let assignments = patch.assignments();
        if assignments.is_empty() {
            return self
                .run("update", meta.name, async |conn| {
                    let row = conn.query_opt(&M::statements().read, &[&key]).await?;
                    row.map(|r| M::from_row(&r)).transpose()
                })
                .await?
                .ok_or(Error::NotFound { table: meta.name });
        }
        // Built in a block: sea-query statements are not Send and must not live
        // across an await.
        let bound = {
            let mut binder = Binder::default();
            let mut update = sea_query::Query::update();
            update.table(sql::table_ref(meta));
            for (index, value) in assignments {
                let column = sea_query::Alias::new(meta.columns[index].name);
                update.value(column, binder.borrowed(value));
            }
            let key_column = sea_query::Alias::new(meta.key_column().name);
            if let Some(live) = sql::live_rows(meta) {
                update.and_where(live);
            }
            update
                .and_where(sea_query::ExprTrait::eq(
                    sea_query::Expr::col(key_column),
                    binder.borrowed(&key),
                ))
                .returning(sql::returning_all(meta));
            binder.finish(update)
        };
        self.run("update", meta.name, async |conn| {
            let row = conn
                .query_opt(&bound.sql, &bound.params())
                .await?
                .ok_or(Error::NotFound { table: meta.name })?;
            M::from_row(&row)
        })
        .await
    }

    /// The statement of [`Db::delete`], without its cache invalidation.
    async fn delete_now<M: Table>(&self, key: M::Key) -> Result<()> {
        let key: M::Key = key;
        let meta = M::META;
        self.run("delete", meta.name, async |conn| {
            match conn.execute(&M::statements().delete, &[&key]).await? {
                0 => Err(Error::NotFound { table: meta.name }),
                _ => Ok(()),
            }
        })
        .await
    }

    /// The statement of [`Db::hard_delete`], without its cache invalidation.
    async fn hard_delete_now<M: Table>(&self, key: M::Key) -> Result<()> {
        let key: M::Key = key;
        let meta = M::META;
        self.run("hard_delete", meta.name, async |conn| {
            match conn.execute(&M::statements().hard_delete, &[&key]).await? {
                0 => Err(Error::NotFound { table: meta.name }),
                _ => Ok(()),
            }
        })
        .await
    }

    /// The statement of [`Db::restore`], without its cache invalidation.
    async fn restore_now<M: Table>(&self, key: M::Key) -> Result<M> {
        let key: M::Key = key;
        let meta = M::META;
        if meta.soft_delete.is_none() {
            return Err(Error::Validation(format!(
                "`{}` has no soft-delete column",
                meta.name
            )));
        }
        self.run("restore", meta.name, async |conn| {
            let row = conn
                .query_opt(&M::statements().restore, &[&key])
                .await?
                .ok_or(Error::NotFound { table: meta.name })?;
            M::from_row(&row)
        })
        .await
    }

    /// The statement of [`Db::upsert`], without its cache invalidation.
    async fn upsert_now<N: Insert>(&self, new: N, target: Vec<usize>) -> Result<N::Table> {
        let meta = N::Table::META;
        if target.is_empty() {
            return Err(Error::Validation(format!(
                "upsert into `{}` needs at least one conflict column",
                meta.name
            )));
        }
        let bound = {
            let mut binder = Binder::default();
            let columns: Vec<sea_query::Alias> = meta
                .insert_columns()
                .map(|c| sea_query::Alias::new(c.name))
                .collect();
            let values: Vec<sea_query::Expr> = new
                .params()
                .into_iter()
                .map(|p| binder.borrowed(p))
                .collect();
            let mut insert = sea_query::Query::insert();
            insert
                .into_table(sql::table_ref(meta))
                .columns(columns)
                .values(values)
                .map_err(|e| Error::Validation(e.to_string()))?
                .on_conflict(sql::upsert_conflict(meta, &target))
                .returning(sql::returning_all(meta));
            binder.finish(insert)
        };
        self.run("upsert", meta.name, async |conn| {
            let row = conn
                .query_opt(&bound.sql, &bound.params())
                .await?
                .ok_or(Error::NotFound { table: meta.name })?;
            N::Table::from_row(&row)
        })
        .await
    }

    /// Inserts one row and returns it as stored, generated columns included
    /// (`INSERT … RETURNING`).
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let note = db.create(NewNote { body: "hello".into() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create<N: Insert>(&self, new: N) -> Result<N::Table> {
        let db = self.clone();
        self.write::<N::Table, _>(async move { db.create_now(new).await }, |_| Vec::new())
            .await
    }

    /// Inserts many rows in one statement per 20,000 rows (each column travels as one
    /// array through `unnest`), all or none: several chunks run in one transaction.
    /// Returns the stored rows in input order. An empty batch does nothing.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let notes = db.create_many(vec![NewNote { body: "a".into() }, NewNote { body: "b".into() }]).await?;
    /// assert_eq!(notes.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn create_many<N: Insert>(&self, rows: Vec<N>) -> Result<Vec<N::Table>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.clone();
        self.write::<N::Table, _>(async move { db.create_many_now(rows).await }, |_| {
            Vec::new()
        })
        .await
    }

    /// Updates the columns set in `patch` of the row with primary key `key` and returns
    /// the row as stored. A missing row is [`Error::NotFound`]. An empty patch changes
    /// nothing and returns the row.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let note = db.update::<Note>(7, NotePatch { body: Some("edited".into()) }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update<M: Table>(&self, key: impl Into<M::Key>, patch: M::Patch) -> Result<M> {
        let (db, key) = (self.clone(), key.into());
        let touched = vec![key.clone()];
        self.write::<M, _>(
            async move { db.update_now::<M>(key, patch).await },
            move |_| touched,
        )
        .await
    }

    /// Deletes the row with primary key `key`. A missing row is [`Error::NotFound`].
    /// For a model with a `#[table(soft_delete)]` column, the row is marked deleted
    /// instead (reads and queries then skip it; see [`Db::restore`] and
    /// [`Db::hard_delete`]).
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.delete::<Note>(7).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete<M: Table>(&self, key: impl Into<M::Key>) -> Result<()> {
        let (db, key) = (self.clone(), key.into());
        let touched = vec![key.clone()];
        self.write::<M, _>(async move { db.delete_now::<M>(key).await }, move |_| {
            touched
        })
        .await
    }

    /// Deletes the row with primary key `key` for good, even for a model with soft
    /// delete. A missing row is [`Error::NotFound`].
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.hard_delete::<Note>(7).await?;
    /// # Ok(()) }
    /// ```
    pub async fn hard_delete<M: Table>(&self, key: impl Into<M::Key>) -> Result<()> {
        let (db, key) = (self.clone(), key.into());
        let touched = vec![key.clone()];
        self.write::<M, _>(
            async move { db.hard_delete_now::<M>(key).await },
            move |_| touched,
        )
        .await
    }

    /// Brings a soft-deleted row back and returns it. A row that is missing or not
    /// deleted is [`Error::NotFound`]; a model without soft delete is
    /// [`Error::Validation`].
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64,
    /// #   #[table(soft_delete)] pub deleted_at: Option<chrono::DateTime<chrono::Utc>> }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let note = db.restore::<Note>(7).await?;
    /// # Ok(()) }
    /// ```
    pub async fn restore<M: Table>(&self, key: impl Into<M::Key>) -> Result<M> {
        let (db, key) = (self.clone(), key.into());
        let touched = vec![key.clone()];
        self.write::<M, _>(async move { db.restore_now::<M>(key).await }, move |_| {
            touched
        })
        .await
    }

    /// Inserts a row, or — when it collides with an existing row on the `conflict`
    /// columns (which need a unique index) — updates that row's other insertable columns
    /// to the new values. Returns the row as stored. For a model with soft delete, an
    /// upsert that lands on a deleted row restores it (clears the mark) and updates it.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Tag { #[table(primary_key)] pub name: String, pub uses: i64 }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let tag = db.upsert(NewTag { name: "rust".into(), uses: 1 }, Tag::NAME).await?;
    /// # Ok(()) }
    /// ```
    pub async fn upsert<N: Insert>(
        &self,
        new: N,
        conflict: impl ColumnSet<N::Table>,
    ) -> Result<N::Table> {
        let meta = N::Table::META;
        let target = conflict.indices();
        if target.is_empty() {
            return Err(Error::Validation(format!(
                "upsert into `{}` needs at least one conflict column",
                meta.name
            )));
        }
        let db = self.clone();
        self.write::<N::Table, _>(async move { db.upsert_now(new, target).await }, |row| {
            vec![row.key().clone()]
        })
        .await
    }

    /// Runs `body` in a transaction: COMMIT when it returns `Ok`, ROLLBACK when it
    /// returns `Err`, panics or is dropped. `body` receives a `Db` bound to the
    /// transaction. On a serialization failure or deadlock the whole body is run again,
    /// with a growing pause, up to [`DbConfig::transaction_attempts`] times — so it
    /// should have no side effects outside the database. A connection lost during
    /// COMMIT is [`Error::CommitOutcomeUnknown`] and is never retried.
    ///
    /// Called on a handle that is already in a transaction, `body` simply joins it.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let (a, b) = db
    ///     .transaction(|tx| async move {
    ///         let a = tx.create(NewNote { body: "a".into() }).await?;
    ///         let b = tx.create(NewNote { body: "b".into() }).await?;
    ///         Ok((a, b))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction<T, F, Fut>(&self, body: F) -> Result<T>
    where
        F: FnMut(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.transaction_with(Isolation::default(), body).await
    }

    /// [`Db::transaction`] at a chosen isolation level.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// db.transaction_with(tabula::Isolation::Serializable, |tx| async move { Ok(()) }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction_with<T, F, Fut>(&self, isolation: Isolation, mut body: F) -> Result<T>
    where
        F: FnMut(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if self.tx.is_some() {
            return body(self.clone()).await;
        }
        let attempts = self.shared.config.transaction_attempts;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.run_transaction_once(isolation, &mut body).await;
            match outcome {
                Err(e) if e.is_retryable_conflict() => {
                    if attempt >= attempts {
                        return Err(Error::Conflict {
                            sqlstate: e.sqlstate().unwrap_or_default().to_owned(),
                            attempts: attempt,
                        });
                    }
                    metrics::counter!(monitor::DB_TRANSACTION_RETRIES).increment(1);
                    tracing::debug!(attempt, error = %e, "retrying transaction");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn run_transaction_once<T, F, Fut>(&self, isolation: Isolation, body: &mut F) -> Result<T>
    where
        F: FnMut(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut conn = self.checkout().await?;
        // Set before BEGIN: if anything below is cut short, the pool closes the
        // connection instead of reusing it mid-transaction.
        conn.in_transaction = true;
        let begin = match &self.scope {
            Some(scope) => format!("{}; {}", isolation.begin(), scope.setup_sql()),
            None => isolation.begin().to_owned(),
        };
        self.with_deadline("begin", conn.batch(&begin)).await?;
        let state = Arc::new(Mutex::new(TxConn {
            conn: Some(conn),
            pending: Vec::new(),
        }));
        let handle = Db {
            shared: self.shared.clone(),
            tx: Some(state.clone()),
            scope: self.scope.clone(),
        };
        let result = body(handle).await;
        let (conn, pending) = {
            let mut state = state.lock().await;
            (state.conn.take(), std::mem::take(&mut state.pending))
        };
        let Some(mut conn) = conn else {
            return Err(Error::Validation(
                "transaction connection taken twice".into(),
            ));
        };
        match result {
            Ok(value) => {
                // COMMIT and the invalidations run in a task of their own, so a caller
                // that gives up half-way cannot leave committed rows stale in the cache.
                let db = self.clone();
                let finish = async move {
                    let outcome = match db.with_deadline("commit", conn.batch("COMMIT")).await {
                        Ok(()) => {
                            conn.in_transaction = false;
                            Ok(())
                        }
                        Err(Error::Connection(_)) | Err(Error::Timeout { .. }) => {
                            Err(Error::CommitOutcomeUnknown)
                        }
                        Err(e) => Err(e),
                    };
                    drop(conn);
                    if matches!(outcome, Ok(()) | Err(Error::CommitOutcomeUnknown)) {
                        db.apply_invalidation(Invalidation::merge(pending)).await;
                    }
                    outcome
                };
                join_task(tokio::spawn(finish)).await?;
                Ok(value)
            }
            Err(e) => {
                if self
                    .with_deadline("rollback", conn.batch("ROLLBACK"))
                    .await
                    .is_ok()
                {
                    conn.in_transaction = false;
                }
                Err(e)
            }
        }
    }

    /// Tells the cache what a write made stale (nothing without a cache).
    pub(crate) async fn apply_invalidation(&self, invalidation: Invalidation) {
        if let Some(cache) = &self.shared.config.cache {
            cache
                .invalidate(&invalidation.counters, &invalidation.rows)
                .await;
        }
    }

    /// Runs a write and invalidates what it touched: `rows` names the keys of the rows
    /// it changed (the table's version counter is always bumped). Inside a transaction
    /// the invalidation waits for COMMIT. Outside one, the statement and its
    /// invalidation run in a task of their own, so dropping the caller's future cannot
    /// separate them.
    pub(crate) async fn write<M: Table, T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
        rows: impl FnOnce(&T) -> Vec<M::Key> + Send + 'static,
    ) -> Result<T> {
        let Some(cache) = self.shared.config.cache.clone() else {
            return work.await;
        };
        let invalidation = move |value: &T| Invalidation {
            counters: vec![crate::cache::row::table_counter(M::META)],
            rows: rows(value)
                .iter()
                .map(crate::cache::row::row_suffix::<M>)
                .collect(),
        };
        match &self.tx {
            Some(tx) => {
                let value = work.await?;
                let inv = invalidation(&value);
                tx.lock().await.pending.push(inv);
                Ok(value)
            }
            None => {
                join_task(tokio::spawn(async move {
                    let value = work.await?;
                    let inv = invalidation(&value);
                    cache.invalidate(&inv.counters, &inv.rows).await;
                    Ok(value)
                }))
                .await
            }
        }
    }

    async fn with_deadline<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let after = self.shared.config.statement_timeout;
        tokio::time::timeout(after, fut)
            .await
            .unwrap_or(Err(Error::Timeout { operation, after }))
    }

    /// Runs raw SQL statements (no parameters, no results), e.g. for set-up scripts.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// db.execute_batch("CREATE TABLE IF NOT EXISTS t (id int)").await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_batch(&self, sql: &str) -> Result<()> {
        self.run("execute_batch", "-", async |conn| conn.batch(sql).await)
            .await
    }

    /// Runs `body` with the raw tokio-postgres client of one pooled connection (or the
    /// transaction's), for the SQL Tabula has no API for.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let n: i64 = db.with_client(async |c| Ok(c.query_one("SELECT 1::int8", &[]).await?.get(0))).await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_client<T>(
        &self,
        body: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T>,
    ) -> Result<T> {
        self.run("raw", "-", async |conn| {
            conn.flush_setup().await?;
            body(conn.client()).await
        })
        .await
    }
}

/// Runs a read on a connection (inside [`Db::timed`]): outside a transaction, a
/// connection found dead (the server restarted, or killed it while idle) is dropped
/// and the read tried on another, instead of failing the caller. A macro rather than a
/// function taking an async closure, so that the returned future stays `Send` for any
/// caller (async closures called by reference trip a known compiler limitation).
macro_rules! read_on_conn {
    ($db:expr, $op:expr, $table:expr, |$conn:ident| $body:block) => {{
        let __db = &$db;
        __db.timed($op, $table, async {
            let mut __tries = 0;
            loop {
                let __attempt: $crate::Result<_> = async {
                    let mut __guard = __db.conn().await?;
                    let $conn = __guard.get()?;
                    $body
                }
                .await;
                match __attempt {
                    Err(e) if __db.retry_read(&e, &mut __tries) => continue,
                    other => break other,
                }
            }
        })
    }};
}
pub(crate) use read_on_conn;

/// Awaits a task that must not be abandoned, passing its panic on.
async fn join_task<T>(handle: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match handle.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Validation(
            "the runtime shut down during a write".into(),
        )),
    }
}

/// 10 ms, 20 ms, 40 ms … capped at 1 s, with up to 50% jitter so that transactions that
/// collided do not collide again in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(10).saturating_mul(1 << attempt.min(7).saturating_sub(1));
    let base = base.min(Duration::from_secs(1));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}
