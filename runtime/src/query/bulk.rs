//! Writes by filter: `update_where` and `delete_where`, which report how many rows
//! they touched. A bulk write without a filter must be asked for by name
//! (`update_all`, `delete_all`), so a forgotten `.filter(...)` cannot wipe a table.

use sea_query::{Alias, Expr, Query as SeaQuery};

use super::Filter;
use super::filter;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::sql::{self, Binder};
use crate::table::{Patch, Table};

impl Db {
    /// Applies `patch` to every row matching `filter`; returns how many rows changed.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String, pub pinned: bool }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let n = db.update_where(Note::BODY.eq(""), NotePatch { pinned: Some(false), ..Default::default() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_where<M: Table>(
        &self,
        filter: Filter<M>,
        patch: impl Patch<Table = M>,
    ) -> Result<u64> {
        self.bulk_update::<M>(Some(filter), patch).await
    }

    /// Applies `patch` to every row of the table; returns how many rows changed.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub pinned: bool }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.update_all::<Note>(NotePatch { pinned: Some(false) }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_all<M: Table>(&self, patch: impl Patch<Table = M>) -> Result<u64> {
        self.bulk_update::<M>(None, patch).await
    }

    /// Deletes every row matching `filter`; returns how many were deleted.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let n = db.delete_where(Note::BODY.eq("")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_where<M: Table>(&self, filter: Filter<M>) -> Result<u64> {
        self.bulk_delete::<M>(Some(filter)).await
    }

    /// Deletes every row of the table; returns how many were deleted.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64 }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.delete_all::<Note>().await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_all<M: Table>(&self) -> Result<u64> {
        self.bulk_delete::<M>(None).await
    }

    /// Invalidates exactly the rows the statement returned (RETURNING their keys), so
    /// no per-row hook is needed and no row is missed.
    async fn bulk_update<M: Table>(
        &self,
        filter: Option<Filter<M>>,
        patch: impl Patch<Table = M>,
    ) -> Result<u64> {
        Ok(self.bulk_update_keys(filter, patch).await?.len() as u64)
    }

    /// [`update_where`](Self::update_where), answering the keys of the rows changed.
    #[cfg_attr(not(feature = "rest"), allow(dead_code))]
    pub(crate) async fn update_where_keys<M: Table>(
        &self,
        filter: Filter<M>,
        patch: impl Patch<Table = M>,
    ) -> Result<Vec<M::Key>> {
        self.bulk_update_keys(Some(filter), patch).await
    }

    async fn bulk_update_keys<M: Table>(
        &self,
        filter: Option<Filter<M>>,
        patch: impl Patch<Table = M>,
    ) -> Result<Vec<M::Key>> {
        // Refused before the write begins (and invalidates anything).
        if let Some(filter) = &filter {
            filter::check_depth(M::META.name, &filter.node)?;
        }
        let db = self.clone();
        let keys = self
            .write::<M, _>(
                async move { db.update_matching::<M>(filter, patch).await },
                |keys: &Vec<M::Key>| crate::db::names::<M>(keys),
            )
            .await?;
        Ok(keys)
    }

    async fn bulk_delete<M: Table>(&self, filter: Option<Filter<M>>) -> Result<u64> {
        if let Some(filter) = &filter {
            filter::check_depth(M::META.name, &filter.node)?;
        }
        let db = self.clone();
        let keys = self
            .write::<M, _>(
                async move { db.delete_matching::<M>(filter).await },
                |keys: &Vec<M::Key>| crate::db::names::<M>(keys),
            )
            .await?;
        Ok(keys.len() as u64)
    }

    /// UPDATE … RETURNING the keys of the rows it changed.
    pub(crate) async fn update_matching<M: Table>(
        &self,
        filter: Option<Filter<M>>,
        patch: impl Patch<Table = M>,
    ) -> Result<Vec<M::Key>> {
        let meta = M::META;
        let assignments = patch.assignments();
        if assignments.is_empty() {
            return Err(Error::Validation(format!(
                "an update of `{}` needs at least one field set in the patch",
                meta.name
            )));
        }
        // In a block: sea-query statements are not Send.
        let bound = {
            let mut binder = Binder::default();
            let mut update = SeaQuery::update();
            update.table(sql::table_ref(meta));
            for (index, value) in assignments {
                // A version column is never set by a patch: the version it names is
                // the one each row must have (as `update` compares it), and every
                // update adds one.
                if Some(index) == meta.version {
                    let column = Expr::col(Alias::new(meta.columns[index].name));
                    update.and_where(sea_query::ExprTrait::eq(column, binder.borrowed(value)));
                    continue;
                }
                update.value(Alias::new(meta.columns[index].name), binder.borrowed(value));
            }
            if let Some(v) = meta.version {
                let column = sql::quote_ident(meta.columns[v].name);
                update.value(
                    Alias::new(meta.columns[v].name),
                    Expr::cust(format!("{column} + 1")),
                );
            }
            match &filter {
                Some(filter) => update.and_where(filter::render(meta, &filter.node, &mut binder)?),
                None => update.and_where(Expr::cust("TRUE")),
            };
            if let Some(live) = sql::live_rows(meta) {
                update.and_where(live);
            }
            update.returning_col(Alias::new(meta.key_column().name));
            binder.finish(update).within_limits(meta.name)?
        };
        self.run("update_where", meta.name, async |conn| {
            let rows = conn.query(&bound.sql, &bound.params()).await?;
            rows.iter()
                .map(|r| crate::table::decode_column::<M, M::Key>(r, 0, 0))
                .collect()
        })
        .await
    }

    /// [`delete_where`](Self::delete_where), answering the deleted rows' `columns` as
    /// JSON objects — as the statement returned them (`DELETE … RETURNING`), so exactly
    /// the rows it deleted, whatever other policies would show.
    #[cfg(feature = "rest")]
    pub(crate) async fn delete_where_returning<M: Table>(
        &self,
        filter: Filter<M>,
        columns: Vec<usize>,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        filter::check_depth(M::META.name, &filter.node)?;
        let db = self.clone();
        let (_, rows) = self
            .write::<M, _>(
                async move { db.delete_returning::<M>(filter, columns).await },
                |(keys, _): &(Vec<M::Key>, Vec<_>)| crate::db::names::<M>(keys),
            )
            .await?;
        Ok(rows)
    }

    #[cfg(feature = "rest")]
    async fn delete_returning<M: Table>(
        &self,
        filter: Filter<M>,
        columns: Vec<usize>,
    ) -> Result<(Vec<M::Key>, Vec<serde_json::Map<String, serde_json::Value>>)> {
        use super::Decode;
        let meta = M::META;
        let mut binder = Binder::default();
        let key = format!(
            "{} AS {}",
            sql::quote_ident(meta.key_column().name),
            sql::quote_ident(&format!("{}0", super::page::KEY_PREFIX))
        );
        let returned: Vec<String> = std::iter::once(key)
            .chain(columns.iter().map(|i| {
                let name = sql::quote_ident(meta.columns[*i].name);
                match super::spec::json_native(meta.columns[*i].sql_type) {
                    true => name,
                    false => format!("to_jsonb({name}) AS {name}"),
                }
            }))
            .collect();
        let bound = match meta.soft_delete_column() {
            Some(soft) => {
                let mut mark = SeaQuery::update();
                mark.table(sql::table_ref(meta))
                    .value(Alias::new(soft.name), Expr::cust("now()"));
                mark.and_where(filter::render(meta, &filter.node, &mut binder)?);
                if let Some(live) = sql::live_rows(meta) {
                    mark.and_where(live);
                }
                mark.returning(SeaQuery::returning().expr(Expr::cust(returned.join(", "))));
                binder.finish(mark)
            }
            None => {
                let mut delete = SeaQuery::delete();
                delete.from_table(sql::table_ref(meta));
                delete.and_where(filter::render(meta, &filter.node, &mut binder)?);
                delete.returning(SeaQuery::returning().expr(Expr::cust(returned.join(", "))));
                binder.finish(delete)
            }
        }
        .within_limits(meta.name)?;
        self.run("delete_where", meta.name, async |conn| {
            let rows = conn.query(&bound.sql, &bound.params()).await?;
            let mut keys = Vec::with_capacity(rows.len());
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                keys.push(crate::table::decode_column::<M, M::Key>(row, 0, 0)?);
                out.push(<super::spec::JsonRow as Decode<M>>::decode(row)?);
            }
            Ok((keys, out))
        })
        .await
    }

    /// DELETE … RETURNING the keys of the rows it removed.
    /// With soft delete, marks the live matching rows instead.
    pub(crate) async fn delete_matching<M: Table>(
        &self,
        filter: Option<Filter<M>>,
    ) -> Result<Vec<M::Key>> {
        let meta = M::META;
        let key = Alias::new(meta.key_column().name);
        let mut binder = Binder::default();
        let bound = match meta.soft_delete_column() {
            Some(soft) => {
                let mut mark = SeaQuery::update();
                mark.table(sql::table_ref(meta))
                    .value(Alias::new(soft.name), Expr::cust("now()"));
                if let Some(filter) = &filter {
                    mark.and_where(filter::render(meta, &filter.node, &mut binder)?);
                }
                if let Some(live) = sql::live_rows(meta) {
                    mark.and_where(live);
                }
                mark.returning_col(key);
                binder.finish(mark)
            }
            None => {
                let mut delete = SeaQuery::delete();
                delete.from_table(sql::table_ref(meta));
                if let Some(filter) = &filter {
                    delete.and_where(filter::render(meta, &filter.node, &mut binder)?);
                }
                delete.returning_col(key);
                binder.finish(delete)
            }
        }
        .within_limits(meta.name)?;
        self.run("delete_where", meta.name, async |conn| {
            let rows = conn.query(&bound.sql, &bound.params()).await?;
            rows.iter()
                .map(|r| crate::table::decode_column::<M, M::Key>(r, 0, 0))
                .collect()
        })
        .await
    }
}
