//! Reads through the row cache: by primary key (with leases), by a unique column,
//! many keys at once. The protocol itself is the cache's (see `crate::cache`); this is
//! its use by `Db`.

use std::time::Duration;

use crate::cache::CacheService;
use crate::cache::row::{Lookup, RowCache, UniqueLookup};

/// Whether the connection's role reads a table as any role filling the cache would:
/// it may `SELECT` it, and no Row Level Security narrows what it sees. For a view,
/// whether its rows are the same in every session, for every relation under it
/// (followed through the views it reads): none has Row Level Security that applies to
/// the view's owner, none is `security_invoker`, the views among them share one owner
/// (or one Row Level Security never applies to), none names the role or the schema in
/// its text (`current_user`, `current_date`, …) or converts through text, and every
/// function its stored query calls — directly, as an aggregate or window, or through an
/// operator; read from the rule's node tree, since PostgreSQL records no dependency on
/// its own functions — is immutable (`nextval` aside): a stable or volatile one may
/// read the session (`current_setting`, `pg_has_role`, `to_regclass`, `to_char` of a
/// `timestamptz` under the session's time zone). Otherwise the view is never shared. A
/// materialized view's rows are the same for every session. Every name is qualified:
/// the session may have put its own operators earlier on its search path.
const TABLE_ACCESS: &str = "SELECT pg_catalog.has_table_privilege(c.oid, 'SELECT') \
     AND (NOT c.relrowsecurity OR r.rolsuper OR r.rolbypassrls \
          OR (c.relowner OPERATOR(pg_catalog.=) r.oid AND NOT c.relforcerowsecurity)) \
     AND (c.relkind OPERATOR(pg_catalog.<>) 'v' OR (WITH RECURSIVE under(oid) AS ( \
            SELECT c.oid \
            UNION \
            SELECT d.refobjid FROM under u \
            JOIN pg_catalog.pg_rewrite w ON w.ev_class OPERATOR(pg_catalog.=) u.oid \
            JOIN pg_catalog.pg_depend d \
                 ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                 AND d.objid OPERATOR(pg_catalog.=) w.oid \
                 AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                 AND d.refobjid OPERATOR(pg_catalog.<>) u.oid) \
          SELECT pg_catalog.bool_and( \
                 (NOT x.relrowsecurity OR vo.rolsuper OR vo.rolbypassrls \
                      OR (x.relowner OPERATOR(pg_catalog.=) vo.oid AND NOT x.relforcerowsecurity)) \
                 AND NOT coalesce(x.reloptions OPERATOR(pg_catalog.@>) '{security_invoker=true}'::pg_catalog.text[], false) \
                 AND NOT coalesce(x.reloptions OPERATOR(pg_catalog.@>) '{security_invoker=on}'::pg_catalog.text[], false) \
                 AND (x.relkind OPERATOR(pg_catalog.<>) 'v' \
                      OR x.relowner OPERATOR(pg_catalog.=) c.relowner OR xo.rolsuper OR xo.rolbypassrls) \
                 AND (x.relkind OPERATOR(pg_catalog.<>) 'v' OR pg_catalog.pg_get_viewdef(x.oid) \
                      OPERATOR(pg_catalog.!~*) '(current_user|session_user|current_role|current_schema|current_catalog|\\muser\\M)') \
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w2 \
                      WHERE w2.ev_class OPERATOR(pg_catalog.=) x.oid \
                        AND w2.ev_action::pg_catalog.text OPERATOR(pg_catalog.~) '(SQLVALUEFUNCTION|COERCEVIAIO)') \
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w2 \
                      CROSS JOIN LATERAL pg_catalog.regexp_matches(w2.ev_action::pg_catalog.text, \
                           ':(funcid|aggfnoid|winfnoid|opno) ([0-9]+)', 'g') AS m(a) \
                      LEFT JOIN pg_catalog.pg_operator o ON m.a[1] OPERATOR(pg_catalog.=) 'opno' \
                           AND o.oid OPERATOR(pg_catalog.=) m.a[2]::pg_catalog.oid \
                      JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) CASE \
                           WHEN m.a[1] OPERATOR(pg_catalog.=) 'opno' THEN o.oprcode::pg_catalog.oid \
                           ELSE m.a[2]::pg_catalog.oid END \
                      WHERE w2.ev_class OPERATOR(pg_catalog.=) x.oid \
                        AND p.provolatile OPERATOR(pg_catalog.<>) 'i' \
                        AND p.oid OPERATOR(pg_catalog.<>) 'pg_catalog.nextval(pg_catalog.regclass)'::pg_catalog.regprocedure)) \
          FROM under u JOIN pg_catalog.pg_class x ON x.oid OPERATOR(pg_catalog.=) u.oid \
          JOIN pg_catalog.pg_roles xo ON xo.oid OPERATOR(pg_catalog.=) x.relowner \
          JOIN pg_catalog.pg_roles vo ON vo.oid OPERATOR(pg_catalog.=) c.relowner)) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.rolname OPERATOR(pg_catalog.=) current_user \
     WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)";

/// What `map` knows of the table whose metadata lives at `id` (answers read once per
/// table and kept by the metadata's address: no allocation on a read path).
pub(super) fn per_table<T: Clone>(
    map: &std::sync::Mutex<std::collections::HashMap<usize, T>>,
    id: usize,
) -> Option<T> {
    map.lock().ok().and_then(|known| known.get(&id).cloned())
}

/// The table's name as `to_regclass` reads it (quoted identifiers).
pub(super) fn regclass_text(meta: &crate::TableMeta) -> String {
    match meta.schema {
        Some(schema) => format!(
            "{}.{}",
            crate::sql::quote_ident(schema),
            crate::sql::quote_ident(meta.name)
        ),
        None => crate::sql::quote_ident(meta.name),
    }
}

/// The row-cache name of a row within its table (the key as JSON text).
fn row_suffix<M: crate::Table>(key: &M::Key) -> String {
    super::key_text::<M>(key)
}

/// The entry that records the absence of the row `suffix` of `table` (a negative
/// entry): the model's shape, a tag byte, and a hash of the row's name. Never a row's
/// entry cut short or corrupted into that form by chance: it names its row.
fn absence(shape: &str, table: &str, suffix: &str) -> Vec<u8> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"absent\0"
        .iter()
        .chain(table.as_bytes())
        .chain(b"\0")
        .chain(suffix.as_bytes())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut entry = shape.as_bytes().to_vec();
    entry.push(0xa5);
    entry.extend_from_slice(&hash.to_le_bytes());
    entry
}

/// Whether an absence of a key of this model may be cached under the key's own name:
/// only when PostgreSQL's equality of the key type is Rust's. A text key may be
/// `citext` or have a nondeterministic collation, a numeric one `1.0` and `1.00`: a
/// create of another spelling of the key would not drop the absence.
fn exact_key<M: crate::Table>() -> bool {
    matches!(
        M::META.key_column().sql_type,
        "int2" | "int4" | "int8" | "uuid" | "bool"
    )
}

/// A row entry's answer: the row, or its absence (`Some(None)`); `None` when the entry
/// cannot be decoded.
fn decode_hit<M: crate::Table>(
    bytes: &[u8],
    shape: &str,
    table: &str,
    suffix: &str,
) -> Option<Option<M>> {
    if bytes == absence(shape, table, suffix) {
        return Some(None);
    }
    bytes.get(16..).and_then(M::cache_decode).map(Some)
}

/// The key a unique value's entry maps to.
fn mapped<M: crate::Table>(entry: &[u8]) -> Option<M::Key> {
    entry
        .get(16..)
        .and_then(|b| serde_json::from_slice::<M::Key>(b).ok())
}

/// Whether a column type's values decode into Rust without loss, so that Rust's
/// equality of two decoded values implies PostgreSQL's.
fn lossless(sql_type: &str) -> bool {
    matches!(
        sql_type,
        "int2"
            | "int4"
            | "int8"
            | "uuid"
            | "bool"
            | "text"
            | "varchar"
            | "bytea"
            | "date"
            | "timestamptz"
            | "timestamp"
    )
}

/// Whether `row`'s column `index` still holds `wanted` (compared as the row cache
/// encodes the column, not through the model's serde).
fn holds<M: crate::Table, T: 'static>(row: &M, index: usize, wanted: &T) -> bool {
    row.cache_column_holds(index, wanted)
}

impl super::Db {
    /// The cache of this handle, when reads of `M` go through it: the model declares
    /// `cache(ttl = …)`, a cache is configured, and the handle is not in a transaction
    /// (a transaction must see its own writes). A user-scoped handle reads its scope's
    /// own copies, when the table's policies allow caching them (see `db/policy.rs`).
    async fn row_cache<M: crate::Table>(&self) -> Option<(CacheService, RowCache)> {
        let ttl = M::META.cache_ttl?;
        // Inside a transaction — its own, or a user scope's one-shot call this handle
        // runs in (its `with_client` body) — a read must see the transaction's writes.
        if self.tx.is_some() || super::scope::current_scoped_tx(self).is_some() {
            return None;
        }
        let cache = self.shared.cache.clone()?;
        let scope = match &self.scope {
            // Only what the policy shows this scope, never another's copy (see
            // `crate::auth`).
            Some(scope) => Some(self.scoped_entries(scope, M::META).await?),
            None if self.shared_reads_allowed(M::META).await => None,
            None => return None,
        };
        let how = RowCache {
            label: M::META.name,
            ttl: Duration::from_secs(ttl),
            near: M::META.cache_near,
            scope,
        };
        Some((cache, how))
    }

    /// Whether this handle may read `meta`'s rows through the shared cache: its
    /// connection's role can `SELECT` the table and sees every row of it — no Row Level
    /// Security applies to it (not enabled, or the role is a superuser, bypasses it, or
    /// owns the table without `FORCE`). The cache holds rows as any handle on the
    /// database read them; a role that may see fewer (no grant, a policy) would be
    /// served rows it cannot read. Such a handle reads and writes the database
    /// directly (its writes still invalidate). Asked once per table and connection
    /// configuration (again after DDL through the handle); an error answers no, this
    /// time.
    ///
    /// Nor may a handle whose sessions find tables along a search path of their own
    /// (tenants in schemas of their own, each handle's `DbConfig::after_connect`
    /// setting its `search_path`) share entries of a model that names its table
    /// without a schema: the name may mean another table to it than to other
    /// handles — or, once a schema is created, than it meant before. Give such a
    /// model its schema (`#[table(schema = "…")]`) to cache it.
    pub(crate) async fn shared_reads_allowed(&self, meta: &'static crate::TableMeta) -> bool {
        if !self.names_as_others(meta) {
            return false;
        }
        // Keyed by the metadata's address (a `static` per model): no allocation on the
        // read path, which asks on every cached read.
        let id = std::ptr::from_ref(meta) as usize;
        if let Some(known) = per_table(&self.shared.table_access, id) {
            return known;
        }
        let name = regclass_text(meta);
        let schema_epoch = self.schema_epoch();
        let asked = self
            .run("table_access", meta.name, async |conn| {
                let row = conn.query_opt(TABLE_ACCESS, &[&name]).await?;
                Ok(row
                    .and_then(|r| r.get::<_, Option<bool>>(0))
                    .unwrap_or(false))
            })
            .await;
        match asked {
            Ok(allowed) => {
                // Kept unless DDL through the handle ran meanwhile.
                if let Ok(mut access) = self.shared.table_access.lock()
                    && self.schema_epoch() == schema_epoch
                {
                    access.insert(id, allowed);
                }
                allowed
            }
            Err(_) => false,
        }
    }

    /// Whether `meta`'s name means to this handle what it means to every handle on
    /// the database: it carries its schema, or the handle's search path is the
    /// server's or the database's (see `Db::shared_reads_allowed`).
    pub(crate) fn names_as_others(&self, meta: &crate::TableMeta) -> bool {
        meta.schema.is_some() || !self.shared.names.own()
    }

    /// When this hit is in the staleness check's sample: reads the row again from the
    /// database in a task of its own and compares (see `cache/verify.rs`).
    fn check_hit<M: crate::Table>(
        &self,
        cache: &CacheService,
        how: &RowCache,
        key: &M::Key,
        cached: &[u8],
    ) {
        // Nothing is copied for a hit outside the sample (the common case).
        let Some(slot) = cache.sample_hit() else {
            return;
        };
        // A check runs in a task of its own: none outside a Tokio runtime.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The database's answer is the primary's (a replica may lag the cache).
        let (db, cache, how) = (self.for_fill(), cache.clone(), how.clone());
        let (key, cached) = (key.clone(), cached.to_vec());
        runtime.spawn(async move {
            let _slot = slot;
            let table = M::META.qualified_name();
            let shape = M::META.shape_hex();
            let suffix = row_suffix::<M>(&key);
            // The entry the database's row would make (none for a row that cannot be
            // encoded: nothing to compare).
            let expected = |row: &Option<M>| -> Option<Vec<u8>> {
                match row {
                    Some(row) => {
                        let mut entry = shape.clone().into_bytes();
                        entry.extend(row.cache_encode()?);
                        Some(entry)
                    }
                    None => Some(absence(&shape, &table, &suffix)),
                }
            };
            let Ok(row) = db.read_as::<M>("verify", key.clone()).await else {
                return;
            };
            if expected(&row).is_none_or(|e| e == cached) {
                cache.verified(&table, false);
                return;
            }
            // A write may have committed and be invalidating now: count the hit stale
            // only if, after the grace period, the cache still holds it and the
            // database still disagrees.
            tokio::time::sleep(cache.verify_grace()).await;
            let still = matches!(
                cache.row_get_counted(&table, &suffix, &shape, &how, false).await,
                Lookup::Hit(now) if now == cached
            );
            let Ok(row) = db.read_as::<M>("verify", key).await else {
                return;
            };
            let disagrees = expected(&row).is_some_and(|e| e != cached);
            cache.verified(&table, still && disagrees);
        });
    }

    /// What the row cache holds for `key` of `M`, read without taking a lease or
    /// filling anything: for inspection (`tabula cache get`), never for serving. The
    /// shared entry, whatever this handle's scope; [`Misuse`](crate::Error::Misuse)
    /// when no cache is configured or `M` declares no `cache(ttl = …)`.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # use tabula::cache::CachedEntry;
    /// # #[derive(Table, Debug)] #[table(cache(ttl = 60))] #[derive(serde::Serialize, serde::Deserialize)]
    /// # pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let cached = db.cache_entry::<Note>(&7).await?;
    /// if let CachedEntry::Row(note) = &cached.entry {
    ///     println!("{note:?}, for {:?} more", cached.ttl);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cache_entry<M: crate::Table>(
        &self,
        key: &M::Key,
    ) -> crate::Result<crate::cache::CachedRow<M>> {
        let Some(cache) = &self.shared.cache else {
            return Err(crate::Error::Misuse("no cache is configured".into()));
        };
        if M::META.cache_ttl.is_none() {
            return Err(crate::Error::Misuse(format!(
                "{} declares no cache(ttl = ...): its rows are never cached",
                M::META.name
            )));
        }
        let suffix = row_suffix::<M>(key);
        let table = M::META.qualified_name();
        let shape = M::META.shape_hex();
        let peek = cache.row_peek(&table, &suffix).await?;
        let (entry, ttl) = match peek.entry {
            None => (crate::cache::CachedEntry::Missing, None),
            Some((bytes, ttl)) if bytes.starts_with(shape.as_bytes()) => {
                match decode_hit::<M>(&bytes, &shape, &table, &suffix) {
                    Some(Some(row)) => (crate::cache::CachedEntry::Row(row), ttl),
                    Some(None) => (crate::cache::CachedEntry::Absent, ttl),
                    None => (crate::cache::CachedEntry::OtherShape, ttl),
                }
            }
            Some((_, ttl)) => (crate::cache::CachedEntry::OtherShape, ttl),
        };
        Ok(crate::cache::CachedRow {
            entry,
            ttl,
            leased: peek.leased,
            scoped_copies: peek.scoped_copies,
        })
    }

    /// [`Db::read`] through the row cache.
    pub(crate) async fn read_through<M: crate::Table>(
        &self,
        key: M::Key,
    ) -> crate::Result<Option<M>> {
        let Some((cache, how)) = self.row_cache::<M>().await else {
            return self.read_uncached::<M>(key).await;
        };
        let suffix = row_suffix::<M>(&key);
        let table = M::META.qualified_name();
        let shape = M::META.shape_hex();
        let token = match cache.row_get(&table, &suffix, &shape, &how).await {
            Lookup::Hit(bytes) => match decode_hit::<M>(&bytes, &shape, &table, &suffix) {
                Some(row) => {
                    self.check_hit::<M>(&cache, &how, &key, &bytes);
                    return Ok(row);
                }
                // Undecodable: a miss, and not ours to overwrite.
                None => None,
            },
            Lookup::Miss(token) => token,
        };
        self.read_and_fill::<M>(&cache, &how, key, token).await
    }

    /// A row the cache missed, read from the database and filled under the reader's
    /// lease `token` (none: the cache failed, or the entry is not ours to overwrite).
    async fn read_and_fill<M: crate::Table>(
        &self,
        cache: &CacheService,
        how: &RowCache,
        key: M::Key,
        token: Option<String>,
    ) -> crate::Result<Option<M>> {
        let suffix = row_suffix::<M>(&key);
        // From the primary: a replica's older row would fill the cache (see
        // `db/replica.rs`).
        let row = self.for_fill().read_uncached::<M>(key).await?;
        let Some(token) = token else {
            return Ok(row);
        };
        let (table, shape) = (M::META.qualified_name(), M::META.shape_hex());
        // Filled only under the row's own spelling of its key: writes drop that one
        // (a `citext` or `char(n)` key read by another spelling stays uncached). No
        // row: its absence is cached under the lease like a row, for a key whose
        // equality is exact (see `exact_key`) — a create drops it (see
        // `Table::cache_names`), and one that committed before the fill refuses the
        // fill.
        let value = match &row {
            Some(row) if row_suffix::<M>(row.key()) == suffix => {
                row.cache_encode().map(|encoded| {
                    let mut value = shape.into_bytes();
                    value.extend(encoded);
                    value
                })
            }
            Some(_) => None,
            None if exact_key::<M>() => Some(absence(&shape, &table, &suffix)),
            None => None,
        };
        // A session opened meanwhile may have shown the handle's names to be its own
        // (see `SessionNames`): what it read is then not shared.
        if let Some(value) = value
            && self.names_as_others(M::META)
        {
            cache
                .row_fill(&table, &token, &[(suffix, value)], how)
                .await;
        }
        Ok(row)
    }

    /// The row whose unique `column` equals `value` (generated as `Model::by_<field>` for
    /// fields marked `#[table(unique)]`). With a row cache, the value maps to the row's
    /// key under a lease like any row, and the row itself comes from the row cache; a
    /// mapping is trusted only if the row it leads to still holds `value` — so a
    /// changed or reused value can never answer with the wrong row, and writes need no
    /// extra invalidation for it.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, #[table(unique)] pub slug: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let note: Option<Note> = Note::by_slug(&db, "hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn find_unique<M: crate::Table, T>(
        &self,
        column: crate::Column<M, T>,
        value: T,
    ) -> crate::Result<Option<M>>
    where
        T: crate::ColumnType + Clone + serde::Serialize,
    {
        // The mapping is trusted when the row still holds the value as Rust compares
        // it; that proves the database's equality only for types decoded without loss
        // (a `numeric` past 28 digits, a JSON number past f64, a custom type may
        // compare equal here and not there): others are looked up uncached.
        let meta = M::META;
        if !lossless(meta.columns[column.index()].sql_type) {
            return self.query::<M>().filter(column.eq(value)).first().await;
        }
        let name = crate::__private::unique_name(meta.columns[column.index()].name, &value);
        let wanted = value.clone();
        let reader = self.for_fill();
        self.find_unique_by::<M, _>(
            name,
            move |row: &M| holds(row, column.index(), &wanted),
            || reader.query::<M>().filter(column.eq(value)).first(),
        )
        .await
    }

    /// The row a unique value names, through the row cache (see
    /// [`find_unique`](Self::find_unique)): `name` is the value's entry under the table
    /// (`#column:value`), `holds` says whether a row still holds the value, `query`
    /// finds it in the database.
    pub(crate) async fn find_unique_by<M: crate::Table, Q>(
        &self,
        name: String,
        holds: impl Fn(&M) -> bool,
        query: impl FnOnce() -> Q,
    ) -> crate::Result<Option<M>>
    where
        Q: std::future::Future<Output = crate::Result<Option<M>>>,
    {
        // A user scope's unique-finder reads run uncached: the value's mapping and its
        // absence are shared entries.
        let cached = match self.scope {
            Some(_) => None,
            None => self.row_cache::<M>().await,
        };
        let Some((cache, how)) = cached else {
            return query().await;
        };
        let meta = M::META;
        let table = meta.qualified_name();
        let suffix = name;
        let shape = meta.shape_hex();
        // One round trip: the mapping and the row it leads to (rule 7 of
        // `cache/backend.rs`). The row's answer is trusted only if it still holds the
        // value.
        let found = match cache.unique_get(&table, &suffix, &shape, &how).await {
            UniqueLookup::Miss(token) => Ok(token),
            UniqueLookup::Both(mapping, entry) => {
                let row = mapped::<M>(&mapping).and_then(|key| {
                    let name = row_suffix::<M>(&key);
                    let row = decode_hit::<M>(&entry, &shape, &table, &name)??;
                    Some((key, row))
                });
                match row {
                    Some((key, row)) if holds(&row) => {
                        self.check_hit::<M>(&cache, &how, &key, &entry);
                        return Ok(Some(row));
                    }
                    _ => Err(()),
                }
            }
            UniqueLookup::Mapping(mapping, token) => match mapped::<M>(&mapping) {
                Some(key) => match self.read_and_fill::<M>(&cache, &how, key, token).await? {
                    Some(row) if holds(&row) => return Ok(Some(row)),
                    _ => Err(()),
                },
                None => Err(()),
            },
        };
        let token = match found {
            Ok(token) => token,
            // A stale mapping: drop it, and take a lease to fill the right one.
            Err(()) => {
                cache
                    .invalidate(&[], &[], &[(table.clone(), suffix.clone())])
                    .await;
                match cache.row_get(&table, &suffix, &shape, &how).await {
                    Lookup::Miss(token) => token,
                    Lookup::Hit(_) => None,
                }
            }
        };
        // The value's absence lives under the table's version (kind `n`), not under a
        // lease: every write to the table drops it — whatever spelling of the value it
        // wrote (`citext`, `1.00`), whichever column was searched, and `Db::invalidate`
        // too, none of which could name it.
        let absent_suffix = format!("{table}:{shape}:{suffix}");
        let counters = [crate::cache::row::table_counter(meta)];
        let absent = match token {
            Some(_) => {
                cache
                    .versioned("n", &counters, &absent_suffix, false, &how)
                    .await
            }
            None => None,
        };
        if let Some((_, Some(_))) = &absent {
            return Ok(None);
        }
        // One query for the row by the unique column — exactly what an uncached read
        // costs, also while the cache is unavailable — and, when a lease was taken, the
        // mapping to its key is filled (the row entry fills on its first read by key).
        let row = query().await?;
        let token = token.filter(|_| self.names_as_others(M::META));
        match (&row, token) {
            (Some(row), Some(token)) => {
                if let Ok(key) = serde_json::to_vec(row.key()) {
                    let mut entry = shape.into_bytes();
                    entry.extend(key);
                    cache
                        .row_fill(&table, &token, &[(suffix, entry)], &how)
                        .await;
                }
            }
            (None, Some(_)) => {
                if let Some((name, None)) = absent {
                    cache.versioned_fill(&name, b"0", how.ttl, &table).await;
                }
            }
            _ => {}
        }
        Ok(row)
    }

    /// Reads many rows by primary key: one cache round trip for all of them, one query
    /// for the misses, one round trip to fill them. The result lines up with `keys`.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, Clone)] pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let notes: Vec<Option<Note>> = db.read_many(&[1, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_many<M: crate::Table + Clone>(
        &self,
        keys: &[M::Key],
    ) -> crate::Result<Vec<Option<M>>> {
        Ok(self.read_many_counted(keys).await?.rows)
    }

    /// Fills the row cache with these rows in one pipelined round trip
    /// (cache warming); returns how many entries were filled.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, Clone)] #[table(cache(ttl = 60))] #[derive(serde::Serialize, serde::Deserialize)]
    /// # pub struct Note { #[table(primary_key, generated)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.warm::<Note>(&[1, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A cache that cannot be reached (or whose circuit breaker is open) is
    /// [`Error::Cache`](crate::Error::Cache): a warm that filled nothing says so, where
    /// a read would quietly fall back to the database.
    pub async fn warm<M: crate::Table + Clone>(&self, keys: &[M::Key]) -> crate::Result<u64> {
        let read = self.read_many_counted::<M>(keys).await?;
        if read.cache_failed {
            return Err(crate::Error::cache(format!(
                "the cache could not be reached: no row of {} was filled",
                M::META.name
            )));
        }
        Ok(read.filled)
    }

    async fn read_many_counted<M: crate::Table + Clone>(
        &self,
        keys: &[M::Key],
    ) -> crate::Result<ManyRead<M>> {
        if keys.is_empty() {
            return Ok(ManyRead::default());
        }
        let cache = self.row_cache::<M>().await;
        let suffixes: Vec<String> = keys.iter().map(row_suffix::<M>).collect();
        let table = M::META.qualified_name();
        let shape = M::META.shape_hex();
        let (cached, token) = match &cache {
            Some((cache, how)) => cache.row_get_many(&table, &suffixes, &shape, how).await,
            None => (vec![None; keys.len()], None),
        };
        let cache_failed = cache.is_some() && token.is_none();
        let mut out: Vec<Option<M>> = cached
            .iter()
            .map(|b| {
                b.as_ref()
                    .and_then(|b| b.get(16..))
                    .and_then(M::cache_decode)
            })
            .collect();
        // Known absent: not read again.
        let absent = |i: &usize| {
            cached[*i]
                .as_deref()
                .is_some_and(|entry| entry == absence(&shape, &table, &suffixes[*i]))
        };
        // Every hit, a row or an absence, may be in the staleness check's sample.
        if let Some((cache, how)) = &cache {
            for (i, entry) in cached.iter().enumerate() {
                if let Some(entry) = entry
                    && (out[i].is_some() || absent(&i))
                {
                    self.check_hit::<M>(cache, how, &keys[i], entry);
                }
            }
        }
        let missing: Vec<usize> = (0..keys.len())
            .filter(|i| out[*i].is_none() && !absent(i))
            .collect();
        if missing.is_empty() {
            return Ok(ManyRead {
                rows: out,
                filled: 0,
                cache_failed,
            });
        }
        let wanted: Vec<M::Key> = missing.iter().map(|i| keys[*i].clone()).collect();
        let reader = match &cache {
            Some(_) => self.for_fill(),
            None => self.clone(),
        };
        let found: std::collections::HashMap<String, M> = reader
            .read_keys::<M>(wanted)
            .await?
            .into_iter()
            .map(|row| (row_suffix::<M>(row.key()), row))
            .collect();
        let mut fills = Vec::new();
        let mut unmatched = Vec::new();
        let mut matched = std::collections::HashSet::new();
        for i in missing {
            let Some(row) = found.get(&suffixes[i]) else {
                unmatched.push(i);
                continue;
            };
            matched.insert(&suffixes[i]);
            if token.is_some()
                && let Some(encoded) = row.cache_encode()
            {
                let mut value = shape.clone().into_bytes();
                value.extend(encoded);
                fills.push((suffixes[i].clone(), value));
            }
            out[i] = Some(row.clone());
        }
        // A key no row answered is absent — unless a row came back under another
        // spelling of a key (`citext`): then which key it answered is unknown, and no
        // absence is cached.
        if token.is_some() && matched.len() == found.len() && exact_key::<M>() {
            for i in unmatched {
                fills.push((suffixes[i].clone(), absence(&shape, &table, &suffixes[i])));
            }
        }
        let filled = match (&cache, &token) {
            (Some((cache, how)), Some(token)) if self.names_as_others(M::META) => {
                cache.row_fill(&table, token, &fills, how).await
            }
            _ => 0,
        };
        Ok(ManyRead {
            rows: out,
            filled,
            cache_failed,
        })
    }
}

/// What a read of many keys found: the rows (in key order), the entries it filled, and
/// whether the cache failed (the rows then came from the database alone).
struct ManyRead<M> {
    rows: Vec<Option<M>>,
    filled: u64,
    cache_failed: bool,
}

impl<M> Default for ManyRead<M> {
    fn default() -> Self {
        ManyRead {
            rows: Vec::new(),
            filled: 0,
            cache_failed: false,
        }
    }
}
