//! Create, read, update, delete, upsert: one statement each, rendered once per model
//! (see [`crate::table`]) and run through [`Db::run`]; writes report what they touched
//! to the cache through [`Db::write`].

use std::future::Future;

use futures_util::future::Either;

use super::Db;
use crate::error::{Error, Result};
use crate::sql::{self, Binder};
use crate::table::{ColumnSet, NewRow, Param, Patch, Table};

/// Rows per statement in [`Db::create_many`]. Arrays have no bind-parameter limit; the
/// chunk only bounds the size of one message.
const BATCH_CHUNK_ROWS: usize = 20_000;

/// The integer a version parameter holds (an `i64` or `i32`, by its binary encoding).
fn version_value(value: Param<'_>) -> Option<i64> {
    use tokio_postgres::types::Type;
    let mut buf = bytes::BytesMut::new();
    if value.to_sql_checked(&Type::INT8, &mut buf).is_ok() {
        return <[u8; 8]>::try_from(&buf[..]).ok().map(i64::from_be_bytes);
    }
    buf.clear();
    value
        .to_sql_checked(&Type::INT4, &mut buf)
        .ok()
        .and_then(|_| <[u8; 4]>::try_from(&buf[..]).ok())
        .map(|b| i64::from(i32::from_be_bytes(b)))
}

impl Db {
    async fn create_now<N: NewRow>(&self, new: N) -> Result<N::Table> {
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
    async fn create_many_now<N: NewRow>(&self, rows: Vec<N>) -> Result<Vec<N::Table>> {
        self.insert_batch(&rows, true)
            .await
            .map(|(_, stored)| stored)
    }

    /// Inserts `rows` through INSERT, all or none: the count inserted, and — when
    /// `returning` — the rows as stored, in input order. Without `returning` the
    /// statements ask for nothing back, so the insert needs no right to read the rows
    /// (nor, under Row Level Security, a `SELECT` policy that shows them).
    async fn insert_batch<N: NewRow>(
        &self,
        rows: &[N],
        returning: bool,
    ) -> Result<(u64, Vec<N::Table>)> {
        if rows.is_empty() {
            return Ok((0, Vec::new()));
        }
        // Several statements (chunks, or one INSERT a row when every column is
        // generated) are all or nothing only inside a transaction.
        let row_by_row = N::Table::statements().insert_many.is_empty();
        let statements = match row_by_row {
            true => rows.len(),
            false => rows.len().div_ceil(BATCH_CHUNK_ROWS),
        };
        if statements > 1 && self.tx.is_none() {
            return self
                .transaction(move |tx| async move { tx.insert_chunks(rows, returning).await })
                .await;
        }
        self.insert_chunks(rows, returning).await
    }

    async fn insert_chunks<N: NewRow>(
        &self,
        rows: &[N],
        returning: bool,
    ) -> Result<(u64, Vec<N::Table>)> {
        let meta = N::Table::META;
        let operation = if returning {
            "create_many"
        } else {
            "insert_many"
        };
        self.run(operation, meta.name, async |conn| {
            let statements = N::Table::statements();
            let (one, many) = match returning {
                true => (&statements.insert, &statements.insert_many),
                false => (&statements.insert_count, &statements.insert_many_count),
            };
            let mut stored = Vec::with_capacity(if returning { rows.len() } else { 0 });
            let mut count = 0;
            if many.is_empty() {
                // Every column is generated (nothing to put in an array), or one is an
                // array itself (see `Statements::render`): one INSERT a row.
                for new in rows {
                    match returning {
                        true => {
                            let row = conn.query_opt(one, &new.params()).await?;
                            stored.extend(row.map(|r| N::Table::from_row(&r)).transpose()?);
                        }
                        false => count += conn.execute(one, &new.params()).await?,
                    }
                }
            } else {
                for chunk in rows.chunks(BATCH_CHUNK_ROWS) {
                    let arrays = N::column_arrays(chunk);
                    let params: Vec<Param<'_>> =
                        arrays.iter().map(|a| a.as_ref() as Param<'_>).collect();
                    match returning {
                        true => {
                            for row in conn.query(many, &params).await? {
                                stored.push(N::Table::from_row(&row)?);
                            }
                        }
                        false => count += conn.execute(many, &params).await?,
                    }
                }
            }
            if returning {
                count = stored.len() as u64;
            }
            Ok((count, stored))
        })
        .await
    }

    /// The statement of [`Db::insert_many`], without its cache invalidation.
    async fn copy_in_now<N: NewRow>(&self, rows: Vec<N>) -> Result<u64> {
        let meta = N::Table::META;
        let statements = N::Table::statements();
        // Every column generated: COPY has no column to fill. A user-scoped handle:
        // PostgreSQL refuses COPY FROM into a table under Row Level Security, so the
        // rows go in through INSERT, where the policy decides. Behind a transaction
        // pooler: the COPY's statement would be named, so INSERT too.
        if statements.copy_in.is_empty()
            || self.scope.is_some()
            || self.shared.config.transaction_pooling
        {
            return Ok(self.insert_batch(&rows, false).await?.0);
        }
        self.run("insert_many", meta.name, async |conn| {
            // Asked of the server each time, never from the statement cache: a
            // statement only described, never run, is not made stale by a column
            // changing type, and COPY would then send values in the old type.
            let types = conn.column_types(&statements.insert_types).await?;
            conn.copy_in(&statements.copy_in, &types, &rows, |row| row.params())
                .await
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
    pub fn read<M: Table>(
        &self,
        key: impl Into<M::Key>,
    ) -> impl Future<Output = Result<Option<M>>> + '_ {
        let key = key.into();
        // A table without a cache, or a handle that cannot use it, reads the database
        // without allocating; the cache lookup and fill nest several state machines,
        // and are boxed. Not an `async fn`: each layer would move the read's future
        // again.
        if M::META.cache_ttl.is_none() || self.tx.is_some() || self.shared.cache.is_none() {
            return Either::Left(self.read_as::<M>("read", key));
        }
        Either::Right(Box::pin(self.read_through::<M>(key)))
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
    pub fn read_uncached<M: Table>(
        &self,
        key: impl Into<M::Key>,
    ) -> impl Future<Output = Result<Option<M>>> + '_ {
        self.read_as::<M>("read", key.into())
    }

    /// A read by key recorded as `operation` (the staleness check's own reads are
    /// `verify`, not application reads).
    pub(crate) fn read_as<M: Table>(
        &self,
        operation: &'static str,
        key: M::Key,
    ) -> impl Future<Output = Result<Option<M>>> + '_ {
        crate::db::read_on_conn!(*self, operation, M::META.name, move |conn| {
            match conn.query_opt(&M::statements().read, &[&key]).await? {
                Some(row) => M::from_row(&row).map(Some),
                None => Ok(None),
            }
        })
    }

    /// The statement of [`Db::update`], without its cache invalidation.
    async fn update_now<M: Table>(&self, key: M::Key, patch: impl Patch<Table = M>) -> Result<M> {
        let key: M::Key = key;
        let meta = M::META;
        let mut assignments = patch.assignments();
        // Optimistic locking: the version the patch names is the one expected (compared,
        // never written); every update adds one to it.
        let expected = meta.version.and_then(|v| {
            let at = assignments.iter().position(|(i, _)| *i == v)?;
            Some(assignments.remove(at).1)
        });
        if assignments.is_empty() && meta.version.is_none() {
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
            if let Some(v) = meta.version {
                let column = sql::quote_ident(meta.columns[v].name);
                update.value(
                    sea_query::Alias::new(meta.columns[v].name),
                    sea_query::Expr::cust(format!("{column} + 1")),
                );
                if let Some(expected) = expected {
                    update.and_where(sea_query::ExprTrait::eq(
                        sea_query::Expr::col(sea_query::Alias::new(meta.columns[v].name)),
                        binder.borrowed(expected),
                    ));
                }
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
            let Some(row) = conn.query_opt(&bound.sql, &bound.params()).await? else {
                // Missing, or at another version than the one expected: say which.
                let (Some(v), Some(expected)) = (meta.version, expected) else {
                    return Err(Error::NotFound { table: meta.name });
                };
                let Some(current) = conn.query_opt(&M::statements().read, &[&key]).await? else {
                    return Err(Error::NotFound { table: meta.name });
                };
                let found = current
                    .try_get::<_, i64>(v)
                    .or_else(|_| current.try_get::<_, i32>(v).map(i64::from))?;
                let expected = version_value(expected).unwrap_or(-1);
                // At the version expected, yet not updated: not a race, a row this
                // handle may read but not change (a policy), as without a version.
                if found == expected {
                    return Err(Error::NotFound { table: meta.name });
                }
                return Err(Error::StaleVersion {
                    table: meta.name,
                    expected,
                    found,
                });
            };
            M::from_row(&row)
        })
        .await
    }

    /// The statement of [`Db::delete`], without its cache invalidation.
    /// Returns the key as stored (see `sql.rs`).
    async fn delete_now<M: Table>(&self, key: M::Key) -> Result<M::Key> {
        let key: M::Key = key;
        let meta = M::META;
        self.run("delete", meta.name, async |conn| {
            match conn.query_opt(&M::statements().delete, &[&key]).await? {
                None => Err(Error::NotFound { table: meta.name }),
                Some(row) => Ok(row.try_get(0)?),
            }
        })
        .await
    }

    /// The statement of [`Db::hard_delete`], without its cache invalidation.
    /// Returns the key as stored (see `sql.rs`).
    async fn hard_delete_now<M: Table>(&self, key: M::Key) -> Result<M::Key> {
        let key: M::Key = key;
        let meta = M::META;
        self.run("hard_delete", meta.name, async |conn| {
            match conn
                .query_opt(&M::statements().hard_delete, &[&key])
                .await?
            {
                None => Err(Error::NotFound { table: meta.name }),
                Some(row) => Ok(row.try_get(0)?),
            }
        })
        .await
    }

    /// The statement of [`Db::restore`], without its cache invalidation.
    async fn restore_now<M: Table>(&self, key: M::Key) -> Result<M> {
        let key: M::Key = key;
        let meta = M::META;
        if meta.soft_delete.is_none() {
            return Err(Error::Misuse(format!(
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
    async fn upsert_now<N: NewRow>(&self, new: N, target: Vec<usize>) -> Result<N::Table> {
        let meta = N::Table::META;
        if target.is_empty() {
            return Err(Error::Misuse(format!(
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
    pub async fn create<N: NewRow>(&self, new: N) -> Result<N::Table> {
        if self.invalidates_nothing() {
            return self
                .write_in_place::<N::Table, _>(self.create_now(new))
                .await;
        }
        let db = self.clone();
        // The new row's names: a read may have cached that it did not exist.
        self.write::<N::Table, _>(async move { db.create_now(new).await }, |row| {
            row.cache_names()
        })
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
    pub async fn create_many<N: NewRow>(&self, rows: Vec<N>) -> Result<Vec<N::Table>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if self.invalidates_nothing() {
            return self
                .write_in_place::<N::Table, _>(self.create_many_now(rows))
                .await;
        }
        let db = self.clone();
        self.write::<N::Table, _>(async move { db.create_many_now(rows).await }, |rows| {
            rows.iter().flat_map(Table::cache_names).collect()
        })
        .await
    }

    /// Inserts `rows` with one binary `COPY` and returns how many were inserted — the
    /// fastest way to load many rows, for when you need no row back. All or nothing:
    /// one statement, so a bad row (a unique violation, a failed check) inserts none.
    /// Cached queries of the table are invalidated, as by every write.
    ///
    /// Use [`create_many`](Db::create_many) when you need the rows as stored (generated
    /// keys, defaults): it runs one `INSERT … SELECT unnest(…) RETURNING` per 20,000
    /// rows and decodes every row it gets back. `insert_many` streams the rows to
    /// PostgreSQL in its binary format instead and decodes nothing. On a user-scoped
    /// handle (see [`crate::auth`]) and behind a transaction pooler the rows go in
    /// through `INSERT` (PostgreSQL allows no `COPY` into a table under Row Level
    /// Security), asking nothing back: like `COPY`, it needs only the right to insert,
    /// and the policy's `INSERT` check decides — a row it refuses is
    /// [`Error::PermissionDenied`] and none is inserted.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let rows = (0..10_000).map(|i| NewNote { body: format!("note {i}") }).collect();
    /// assert_eq!(db.insert_many(rows).await?, 10_000);
    /// # Ok(()) }
    /// ```
    pub async fn insert_many<N: NewRow>(&self, rows: Vec<N>) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let db = self.clone();
        self.write_unnamed::<N::Table, _>(async move { db.copy_in_now(rows).await })
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
    pub async fn update<M: Table>(
        &self,
        key: impl Into<M::Key>,
        patch: impl Patch<Table = M>,
    ) -> Result<M> {
        let key = key.into();
        if self.invalidates_nothing() {
            return self
                .write_in_place::<M, _>(self.update_now::<M>(key, patch))
                .await;
        }
        let db = self.clone();
        let touched = vec![key.clone()];
        // The row's own spelling of its key too (see `sql.rs`).
        self.write_touching::<M, _>(
            async move { db.update_now::<M>(key, patch).await },
            touched,
            |row: &M| row.cache_names(),
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
        let key = key.into();
        if self.invalidates_nothing() {
            return self
                .write_in_place::<M, _>(self.delete_now::<M>(key))
                .await
                .map(|_| ());
        }
        let db = self.clone();
        let touched = vec![key.clone()];
        self.write_touching::<M, _>(
            async move { db.delete_now::<M>(key).await },
            touched,
            |stored: &M::Key| vec![super::key_text::<M>(stored)],
        )
        .await
        .map(|_| ())
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
        self.write_touching::<M, _>(
            async move { db.hard_delete_now::<M>(key).await },
            touched,
            |stored: &M::Key| vec![super::key_text::<M>(stored)],
        )
        .await
        .map(|_| ())
    }

    /// Brings a soft-deleted row back and returns it. A row that is missing or not
    /// deleted is [`Error::NotFound`]; a model without soft delete is
    /// [`Error::Misuse`].
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
        self.write_touching::<M, _>(
            async move { db.restore_now::<M>(key).await },
            touched,
            |row: &M| row.cache_names(),
        )
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
    pub async fn upsert<N: NewRow>(
        &self,
        new: N,
        conflict: impl ColumnSet<N::Table>,
    ) -> Result<N::Table> {
        let meta = N::Table::META;
        let target = conflict.indices();
        if target.is_empty() {
            return Err(Error::Misuse(format!(
                "upsert into `{}` needs at least one conflict column",
                meta.name
            )));
        }
        if self.invalidates_nothing() {
            return self
                .write_in_place::<N::Table, _>(self.upsert_now(new, target))
                .await;
        }
        let db = self.clone();
        self.write::<N::Table, _>(async move { db.upsert_now(new, target).await }, |row| {
            row.cache_names()
        })
        .await
    }
}
