//! The seam between writes and the cache: a write reports *what it touched* — a
//! table, the keys of the rows it changed, or "rows I cannot name" — and the cache
//! (see [`crate::cache`]) turns that into key operations, cascades included. `db`
//! never builds a cache key.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Db;
use crate::cache::row::Touched;
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
    /// Whether the write can change rows of other tables through foreign keys
    /// (`ON DELETE` / `ON UPDATE` actions): anything but an insert.
    pub(crate) cascades: bool,
}

impl Invalidation {
    pub(crate) fn of<M: Table>(keys: &[M::Key]) -> Invalidation {
        Invalidation {
            table: M::META,
            keys: keys.iter().map(key_text::<M>).collect(),
            every_row: false,
            cascades: true,
        }
    }

    /// Every row of `M` (and what its foreign keys' actions reach): for a write whose
    /// rows cannot be named.
    pub(crate) fn every_row_of<M: Table>() -> Invalidation {
        Invalidation {
            every_row: true,
            ..Invalidation::of::<M>(&[])
        }
    }
}

/// The statement of a [`Db::write_in_place`] while it runs: dropped before it finished
/// (the caller stopped waiting), the statement may still land, so a cache there is by
/// then is told again once the server answers (see `Db::settle_later`).
struct LateCache<'a> {
    db: &'a Db,
    running: bool,
    /// What the statement may have touched.
    touched: fn() -> Invalidation,
}

impl Drop for LateCache<'_> {
    fn drop(&mut self) {
        if self.running && tokio::runtime::Handle::try_current().is_ok() {
            self.db.settle_later(None, vec![(self.touched)()]);
        }
    }
}

pub(crate) use crate::table::key_text;

/// The row-cache names of these keys.
pub(crate) fn names<M: Table>(keys: &[M::Key]) -> Vec<String> {
    keys.iter().map(key_text::<M>).collect()
}

/// What a write's invalidation needs from the catalog: which tables a write to a
/// table can change through foreign-key actions (`ON DELETE` / `ON UPDATE`
/// `CASCADE`, `SET NULL`, `SET DEFAULT`), followed transitively, and the other names
/// of each table (see [`WriteCatalog::names_of`]). Read under every name a model may
/// give a table (`schema.name`, and `name` when the search path finds it so — see
/// [`TableMeta::qualified_name`]).
#[derive(Debug, Default)]
pub(crate) struct WriteCatalog {
    dependents: HashMap<String, Vec<String>>,
    /// The other names of each table the search path finds by its bare name: `name`
    /// for `schema.name` and `schema.name` for `name`. Two models may give one table
    /// both, and their cache entries go by the name each gives.
    aliases: HashMap<String, String>,
    /// Every table there was when the catalog was read, under every name a model may
    /// give it: a write to one not among them (created since, by another process's
    /// migration) reads the catalog again — its foreign keys are in no older copy.
    known: std::collections::HashSet<String>,
    /// Names that made this copy be read and were not in it either (a table that does
    /// not exist, or one a tenant's search path finds): not read again for them.
    checked: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Every table (view, materialized view, foreign table) outside PostgreSQL's own
/// schemas, and whether the search path finds it by its bare name (see
/// [`WriteCatalog::aliases`]).
const TABLES: &str = "SELECT n.nspname::text, c.relname::text, pg_table_is_visible(c.oid) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

const FOREIGN_KEY_ACTIONS: &str = "SELECT rn.nspname::text, r.relname::text, cn.nspname::text, c.relname::text, \
     to_regclass(quote_ident(r.relname)) IS NOT DISTINCT FROM r.oid, \
     to_regclass(quote_ident(c.relname)) IS NOT DISTINCT FROM c.oid \
     FROM pg_constraint k \
     JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace \
     JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
     WHERE k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))";

impl WriteCatalog {
    fn from_edges(edges: Vec<(String, String)>) -> WriteCatalog {
        let mut direct: HashMap<&str, Vec<&str>> = HashMap::new();
        for (parent, child) in &edges {
            direct.entry(parent).or_default().push(child);
        }
        let mut dependents = HashMap::new();
        for parent in direct.keys() {
            // Breadth first, with a visited set: cycles in the graph end here. A table
            // reached again — a foreign key to itself — is a dependent of its own: the
            // rows a cascade changes in it cannot be named.
            let mut seen: Vec<String> = Vec::new();
            let mut queue: Vec<&str> = direct[parent].clone();
            while let Some(table) = queue.pop() {
                if seen.iter().any(|s| s == table) {
                    continue;
                }
                seen.push(table.to_owned());
                queue.extend(direct.get(table).into_iter().flatten());
            }
            dependents.insert((*parent).to_owned(), seen);
        }
        WriteCatalog {
            dependents,
            ..WriteCatalog::default()
        }
    }

    /// Whether `table` was there when this copy was read (or was looked for since).
    pub(crate) fn knows(&self, table: &str) -> bool {
        self.known.contains(table)
            || self
                .checked
                .lock()
                .is_ok_and(|checked| checked.contains(table))
    }

    /// Notes that this copy was read for `tables`: found or not, they are not a reason
    /// to read it again.
    fn looked_for(&self, tables: Vec<String>) {
        if let Ok(mut checked) = self.checked.lock() {
            checked.extend(tables);
        }
    }

    /// Every name a model may give `table` (itself first): with and without its
    /// schema when the search path found it by its bare name as the catalog was read —
    /// and, whatever the catalog said (a table created since), `schema.name` is also
    /// `name`, and a bare `name` also `schema.name` for `public` and every schema of
    /// the writing handle's search path (`path`). Naming a table that is not meant
    /// only drops entries; missing one would leave them stale.
    pub(crate) fn names_of(&self, table: &str, path: &[String]) -> Vec<String> {
        let mut names = vec![table.to_owned()];
        let mut add = |name: String| {
            if !names.contains(&name) {
                names.push(name);
            }
        };
        if let Some(other) = self.aliases.get(table) {
            add(other.clone());
        }
        match table.split_once('.') {
            Some((_, bare)) => add(bare.to_owned()),
            None => {
                add(format!("public.{table}"));
                for schema in path {
                    add(format!("{schema}.{table}"));
                }
            }
        }
        names
    }

    /// The tables a write to `table` can change through foreign keys (itself, too, when
    /// a foreign key of it refers to it).
    pub(crate) fn of(&self, table: &str) -> &[String] {
        self.dependents.get(table).map_or(&[], Vec::as_slice)
    }
}

impl Db {
    /// The [`WriteCatalog`] of this database, read once (and again after DDL run
    /// through this handle). Unreadable: empty, logged.
    pub(crate) async fn write_catalog(&self) -> Arc<WriteCatalog> {
        if let Some(known) = self
            .shared
            .write_catalog
            .read()
            .ok()
            .and_then(|g| g.clone())
        {
            return known;
        }
        let schema_epoch = self.schema_epoch();
        let loaded = self
            .run("foreign_keys", "-", async |conn| {
                let rows = conn.query(FOREIGN_KEY_ACTIONS, &[]).await?;
                let mut edges = Vec::with_capacity(rows.len());
                for row in rows {
                    let (ps, p, cs, c): (String, String, String, String) = (
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                    );
                    let (p_bare, c_bare): (bool, bool) = (row.try_get(4)?, row.try_get(5)?);
                    // Every name a model may give either table (see `db/policy.rs`).
                    let children = super::policy::spellings(&cs, &c, c_bare);
                    for parent in super::policy::spellings(&ps, &p, p_bare) {
                        for child in &children {
                            edges.push((parent.clone(), child.clone()));
                        }
                    }
                }
                let mut catalog = WriteCatalog::from_edges(edges);
                for row in conn.query(TABLES, &[]).await? {
                    let (schema, name): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                    let visible: bool = row.try_get(2)?;
                    let qualified = format!("{schema}.{name}");
                    catalog.known.insert(qualified.clone());
                    if visible {
                        catalog.known.insert(name.clone());
                        catalog.aliases.insert(name.clone(), qualified.clone());
                        catalog.aliases.insert(qualified, name);
                    }
                }
                Ok(catalog)
            })
            .await;
        match loaded {
            Ok(catalog) => {
                let catalog = Arc::new(catalog);
                // Kept unless DDL through the handle ran meanwhile.
                if let Ok(mut slot) = self.shared.write_catalog.write()
                    && self.schema_epoch() == schema_epoch
                {
                    *slot = Some(catalog.clone());
                }
                catalog
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the catalog: foreign-key cascades and other names of tables are not invalidated");
                Arc::default()
            }
        }
    }

    /// The count of [`forget_schema`](Self::forget_schema) calls so far.
    pub(crate) fn schema_epoch(&self) -> u64 {
        self.shared
            .schema_epoch
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Tells the handle (and its clones) that the schema may have changed outside it —
    /// another process ran a migration: what it read from the catalog (the foreign-key
    /// actions a write's invalidation follows, the other names of tables, whose cached
    /// rows may be shared, Row Level Security policies) is read again on next need.
    /// DDL through the handle (its migrations, `execute_batch`) needs no call, nor does
    /// a table created since: a write to a table the handle's copy does not have reads
    /// the catalog again. A foreign key added by another process to tables the handle
    /// already knew needs this call (or a restart) before the cache follows it.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) {
    /// // After another service migrated the shared database:
    /// db.schema_changed();
    /// # }
    /// ```
    pub fn schema_changed(&self) {
        self.forget_schema();
    }

    /// Forgets what was read from the catalog — foreign keys, table access, policies
    /// (the schema may have changed). Inside a transaction, again when it ends: an
    /// answer read meanwhile saw the schema before COMMIT.
    pub(crate) fn forget_schema(&self) {
        if let Some(tx) = &self.tx {
            tx.shared
                .schema_touched
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.shared
            .schema_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Ok(mut slot) = self.shared.write_catalog.write() {
            *slot = None;
        }
        if let Ok(mut access) = self.shared.table_access.lock() {
            access.clear();
        }
        if let Ok(mut plans) = self.shared.policy_plans.lock() {
            plans.clear();
        }
    }

    /// Drops the cache entries of the rows of `M` with these keys, and every cached
    /// query and memo over `M`: for writes Tabula cannot see (raw SQL, triggers, other
    /// applications). Cascades along foreign keys are followed as for Tabula's own
    /// writes. Inside a transaction it waits for COMMIT, as the transaction's own
    /// writes do. Never fails: an undelivered invalidation is delivered by the cache's
    /// outage handling (see [`crate::cache`]).
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, serde::Serialize, serde::Deserialize)] #[table(cache(ttl = 60))]
    /// # pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.execute_batch("UPDATE notes SET body = upper(body) WHERE id = 7").await?;
    /// db.invalidate::<Note>(&[7]).await;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate<M: Table>(&self, keys: &[M::Key]) {
        let mut write = Invalidation::of::<M>(keys);
        write.cascades = true;
        self.invalidate_now_or_at_commit(write).await;
    }

    /// Drops every cache entry of table `M` — rows, cached queries, memos — e.g.
    /// after a bulk change made outside Tabula (inside a transaction, at COMMIT).
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, serde::Serialize, serde::Deserialize)] #[table(cache(ttl = 60))]
    /// # pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.invalidate_table::<Note>().await;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_table<M: Table>(&self) {
        let mut write = Invalidation::of::<M>(&[]);
        write.every_row = true;
        write.cascades = true;
        self.invalidate_now_or_at_commit(write).await;
    }

    /// An invalidation asked for by hand: inside a transaction after COMMIT, as the
    /// transaction's own writes; otherwise now.
    async fn invalidate_now_or_at_commit(&self, write: Invalidation) {
        // A user scope's one-shot call this handle runs in (its `with_client` body)
        // commits later, as a transaction does.
        let enclosing = self
            .tx
            .clone()
            .or_else(|| super::scope::current_scoped_tx(self));
        match &enclosing {
            Some(tx) => {
                if let super::conn::Recorded::Late(write) = tx.record(write) {
                    self.apply_invalidation(&[write]).await;
                }
            }
            None => self.apply_invalidation(&[write]).await,
        }
    }

    /// Tells the caches what writes touched (nothing without a cache): this
    /// handle's, and the one `#[cached]` functions use when it is another (its memos
    /// over these tables must not outlive the write either).
    pub(crate) async fn apply_invalidation(&self, writes: &[Invalidation]) {
        let memo = crate::cache::CacheService::global()
            .filter(|memo| !self.cache().is_some_and(|own| own.same_namespace(memo)));
        // Other caches of this process over the same database (another handle's, with
        // another prefix, namespace or backend — or this handle has none) hold the
        // same rows.
        let others = crate::cache::others_for_database(&self.shared.identity, self.cache());
        if self.cache().is_none() && memo.is_none() && others.is_empty() {
            return;
        }
        // Read once per handle (and again after DDL through it, or a write to a table
        // it did not have): the foreign keys, and the other names of each table.
        let mut catalog = self.write_catalog().await;
        let unknown: Vec<String> = writes
            .iter()
            .map(|w| w.table.qualified_name())
            .filter(|table| !catalog.knows(table))
            .collect();
        if !unknown.is_empty() {
            if let Ok(mut slot) = self.shared.write_catalog.write() {
                *slot = None;
            }
            catalog = self.write_catalog().await;
            catalog.looked_for(unknown);
        }
        let schemas = self.shared.names.schemas();
        let mut touched: Vec<Touched> = Vec::with_capacity(writes.len());
        for w in writes {
            // The entries under every name a model may give the table: another
            // model over the same table spelled otherwise caches its rows too.
            for (i, table) in catalog
                .names_of(&w.table.qualified_name(), &schemas)
                .into_iter()
                .enumerate()
            {
                let cascade_to = match w.cascades && i == 0 {
                    true => catalog.of(&table).to_vec(),
                    false => Vec::new(),
                };
                touched.push(Touched {
                    table,
                    keys: w.keys.clone(),
                    every_row: w.every_row,
                    cascade_to,
                });
            }
        }
        if let Some(cache) = self.cache() {
            cache.invalidate_writes(&touched).await;
        }
        for other in others {
            other.invalidate_writes(&touched).await;
        }
        if let Some(memo) = memo {
            memo.invalidate_tables(&touched).await;
        }
    }

    /// Whether no cache of this process holds entries of this handle's database (none
    /// on the handle, no global one, no other handle's), as of now.
    pub(crate) fn no_cache_holds_database(&self) -> bool {
        self.shared.cache.is_none()
            && crate::cache::CacheService::global().is_none()
            && !crate::cache::has_caches_for_database(&self.shared.identity)
    }

    /// Whether a write through this handle may skip naming what it touched: outside a
    /// transaction, with no cache holding the database (see
    /// [`Db::no_cache_holds_database`]). Such a write takes [`Db::write_in_place`].
    /// Inside a transaction every write records what it touched, whatever: COMMIT
    /// applies it to the caches there are *then* — one made meanwhile may have read
    /// the rows as they were.
    pub(crate) fn invalidates_nothing(&self) -> bool {
        self.tx.is_none() && self.no_cache_holds_database()
    }

    /// A write outside a transaction with no cache to tell (see
    /// [`Db::invalidates_nothing`]), run in the caller's task: neither boxed nor moved
    /// into a task of its own. The replicas still learn how far it wrote.
    ///
    /// A cache made while the statement ran (another handle connecting with one) may
    /// have read the rows of `M` as they were before it: once the statement is done
    /// — or dropped half-way, when it may still land — a cache there is then loses
    /// every row and query of `M` it holds (the rows cannot be named: the statement's
    /// answer is not at hand). Writes that find a cache at the start name their rows
    /// instead (see [`Db::write_touching`]).
    pub(crate) async fn write_in_place<M: Table, T>(
        &self,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        if self.scope.is_some() {
            crate::cache::memo::note_scoped();
        }
        let mark = self.write_mark();
        let mut late = LateCache {
            db: self,
            running: true,
            touched: Invalidation::every_row_of::<M>,
        };
        let result = work.await;
        late.running = false;
        self.note_write(None).await;
        mark.done();
        if matches!(&result, Ok(_) | Err(Error::OutcomeUnknown { .. }))
            && !self.no_cache_holds_database()
        {
            // Before the statement's answer a cache appeared.
            let all = Invalidation::every_row_of::<M>();
            self.apply_invalidation(std::slice::from_ref(&all)).await;
            if result.is_err() {
                self.settle_later(None, vec![all]);
            }
        }
        result
    }

    /// Runs a write and invalidates what it touched: `rows` gives the row-cache names
    /// of the rows it changed ([`Table::cache_names`], or [`names`] of keys), from its
    /// result. See [`Db::write_touching`].
    pub(crate) fn write<M: Table, T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
        rows: impl FnOnce(&T) -> Vec<String> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + '_ {
        self.write_touching::<M, T>(work, Vec::new(), rows)
    }

    /// Runs a write whose rows cannot be named (a bulk load of rows whose keys the
    /// database generates): every row entry of the table goes — a cached absence of
    /// one of them included — when the table has a row cache.
    pub(crate) async fn write_unnamed<M: Table, T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        if self.scope.is_some() {
            crate::cache::memo::note_scoped();
        }
        let every_row = M::META.cache_ttl.is_some();
        let work: Pin<Box<dyn Future<Output = Result<T>> + Send>> = Box::pin(work);
        self.write_boxed::<M, T>(work, Vec::new(), |_| Vec::new(), every_row)
            .await
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
        rows: impl FnOnce(&T) -> Vec<String> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + '_ {
        if self.scope.is_some() {
            crate::cache::memo::note_scoped();
        }
        let work: Pin<Box<dyn Future<Output = Result<T>> + Send>> = Box::pin(work);
        self.write_boxed::<M, T>(work, known, rows, false)
    }

    async fn write_boxed<M: Table, T: Send + 'static>(
        &self,
        work: Pin<Box<dyn Future<Output = Result<T>> + Send>>,
        known: Vec<M::Key>,
        rows: impl FnOnce(&T) -> Vec<String> + Send + 'static,
        every_row: bool,
    ) -> Result<T> {
        if self.invalidates_nothing() {
            return self.write_in_place::<M, T>(work).await;
        }
        let touched = move |result: &Result<T>| -> Option<Invalidation> {
            match result {
                Ok(value) => {
                    let mut all = Invalidation::of::<M>(&known);
                    all.keys.extend(rows(value));
                    all.every_row |= every_row;
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
                if let Some(inv) = touched(&result)
                    && let super::conn::Recorded::Late(inv) = tx.record(inv)
                {
                    // A write of a task that outlived the transaction's body, done
                    // after COMMIT came back: nobody else will tell the caches.
                    self.apply_invalidation(&[inv]).await;
                }
                result
            }
            None => {
                let db = self.clone();
                // The task records the position; a caller that stops waiting first
                // leaves the next read to ask for it (see `db/replica.rs`).
                let mark = self.write_mark();
                // A task does not inherit task-locals: the user scope's one-shot
                // transaction this call runs in (a scoped `with_client` body's) goes
                // with it, or the write would run beside it, outside its ROLLBACK.
                let enclosing = super::scope::current_scoped_tx(self);
                let result = super::tx::join_task(tokio::spawn(async move {
                    let result = match enclosing {
                        Some(tx) => super::scope::with_scoped_tx(&db, tx, work).await,
                        None => work.await,
                    };
                    // Before the invalidation: a reader that misses after it reads
                    // at least this far (see `db/replica.rs`).
                    db.note_write(None).await;
                    if let Some(inv) = touched(&result) {
                        db.apply_invalidation(std::slice::from_ref(&inv)).await;
                        if result.is_err() {
                            // It may land later: invalidate again once the server answers.
                            db.settle_later(None, vec![inv]);
                        }
                    }
                    result
                }))
                .await;
                mark.done();
                result
            }
        }
    }
}

impl Db {
    /// Drops every cached query of this database and every `#[cached]` memo carrying
    /// `tag` (see [`CacheService::invalidate_tag`](crate::CacheService::invalidate_tag)).
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) {
    /// db.invalidate_tag("user:42").await;
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) {
        // Inside a transaction: after COMMIT, as the transaction's own writes (a reader
        // before then would cache what COMMIT is about to change).
        let enclosing = self
            .tx
            .clone()
            .or_else(|| super::scope::current_scoped_tx(self));
        if let Some(tx) = &enclosing
            && let super::conn::Recorded::Kept = tx.record_tag(tag)
        {
            return;
        }
        self.drop_tag(tag).await;
    }

    /// Bumps `tag` in every cache a write of this handle tells: its own, the other
    /// caches of this process over the same database, and the memo cache.
    pub(crate) async fn drop_tag(&self, tag: &str) {
        if let Some(cache) = self.cache() {
            cache.bump_tag(tag).await;
        }
        for other in crate::cache::others_for_database(&self.shared.identity, self.cache()) {
            other.bump_tag(tag).await;
        }
        if let Some(global) = crate::cache::CacheService::global()
            && !self.cache().is_some_and(|own| own.same_namespace(global))
        {
            global.bump_tag(tag).await;
        }
    }
}
