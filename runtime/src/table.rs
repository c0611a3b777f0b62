//! What `#[derive(Table)]` produces: the [`Table`] trait with the model's metadata,
//! typed [`Column`] constants, and the new-row ([`NewRow`]) and update ([`Patch`]) shapes.
//!
//! A model's metadata is a `static`: the column list, which column is the primary key,
//! which are filled by the database, and a hash of the model's shape (used by cache keys
//! so that a deploy that changes the struct never decodes an old entry). The SQL of the
//! fixed statements (read by key, insert, delete, …) is rendered once per model and
//! reused for every call.

mod codec;

use std::fmt;
use std::marker::PhantomData;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::Result;

pub use codec::{CODEC_VERSION, CacheCodec, CodecReader, write_bytes, write_len};
#[doc(hidden)]
pub use codec::{
    decode_json, decode_json_opt, encode_json, encode_json_opt, row_shape, same_encoding, same_json,
};

/// The fixed statements of one model.
#[doc(hidden)]
#[derive(Debug)]
pub struct Statements {
    /// `SELECT <all> FROM t WHERE pk = $1`
    pub(crate) read: String,
    /// `INSERT INTO t (<insertable>) VALUES ($1, …) RETURNING <all>`
    pub(crate) insert: String,
    /// `insert` without `RETURNING`: what `insert_many` runs where it cannot COPY.
    /// `RETURNING` would need the right to read the rows (and under Row Level
    /// Security, a `SELECT` policy that shows them), which an insert alone does not.
    pub(crate) insert_count: String,
    /// `INSERT INTO t (<insertable>) SELECT * FROM unnest($1::type[], …) RETURNING <all>`
    pub(crate) insert_many: String,
    /// `insert_many` without `RETURNING` (see `insert_count`).
    pub(crate) insert_many_count: String,
    /// `DELETE FROM t WHERE pk = $1`, or the soft-delete mark.
    pub(crate) delete: String,
    /// `DELETE FROM t WHERE pk = $1`, whatever the model.
    pub(crate) hard_delete: String,
    /// Clears the soft-delete mark, returning the row (empty without soft delete).
    pub(crate) restore: String,
    /// `COPY t (<insertable>) FROM STDIN (FORMAT binary)` (empty when every column is
    /// generated).
    pub(crate) copy_in: String,
    /// `SELECT <insertable> FROM t LIMIT 0`: prepared for the insertable columns' types,
    /// which binary COPY must know.
    pub(crate) insert_types: String,
}

/// A parameter bound to a statement.
pub type Param<'a> = &'a (dyn ToSql + Sync);

/// A model struct mapped to one PostgreSQL table. Derive it with `#[derive(Table)]`.
///
/// ```
/// use tabula::Table;
///
/// #[derive(Table, Debug)]
/// #[table(name = "notes")]
/// pub struct Note {
///     #[table(primary_key, generated)]
///     pub id: i64,
///     pub body: String,
/// }
///
/// assert_eq!(Note::META.name, "notes");
/// assert_eq!(Note::BODY.name(), "body");
/// let _new = NewNote { body: "hello".into() };
/// let _patch = NotePatch { body: Some("bye".into()) };
/// ```
pub trait Table: Sized + Send + Sync + Unpin + 'static {
    /// The primary key's Rust type.
    type Key: crate::ColumnType
        + Clone
        + fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned;
    /// The insertable shape (`New<Model>`): every column except generated ones.
    type New: NewRow<Table = Self>;
    /// The update shape (`<Model>Patch`): every column but the key, each optional.
    type Patch: Patch<Table = Self>;

    /// The model's metadata.
    const META: &'static TableMeta;

    /// Decodes a row whose columns are [`TableMeta::columns`], in order.
    fn from_row(row: &Row) -> Result<Self> {
        Self::from_row_at(row, 0)
    }

    /// Decodes the model from the row's columns `at..at + META.columns.len()` (a join
    /// puts several models side by side).
    #[doc(hidden)]
    fn from_row_at(row: &Row, at: usize) -> Result<Self>;

    /// This row's primary key.
    fn key(&self) -> &Self::Key;

    /// The model's statements, rendered once.
    #[doc(hidden)]
    fn statements() -> &'static Statements;

    /// The row encoded for the row cache: every column in order, each by its
    /// [`CacheCodec`] (never by the model's serde impls). `None` for models without
    /// `cache(ttl = …)`, and when a `json` field fails to serialize.
    #[doc(hidden)]
    fn cache_encode(&self) -> Option<Vec<u8>> {
        None
    }

    /// A cached row decoded; `None` when the bytes are not exactly one encoded row
    /// (treated as a miss). Never panics, whatever the bytes.
    #[doc(hidden)]
    fn cache_decode(_bytes: &[u8]) -> Option<Self> {
        None
    }

    /// Whether column `index` of this row holds `value` (a value of that column's type;
    /// `false` for any other type), compared by the column's cache encoding. How a
    /// `unique` lookup checks the row it was led to. `false` for models without
    /// `cache(ttl = …)`.
    #[doc(hidden)]
    fn cache_column_holds(&self, _index: usize, _value: &dyn std::any::Any) -> bool {
        false
    }

    /// The row cache's names of this row: its key, and with a row cache the value of
    /// each unique column (the names a read may have cached its absence under).
    #[doc(hidden)]
    fn cache_names(&self) -> Vec<String> {
        vec![key_text::<Self>(self.key())]
    }
}

/// The insertable shape of a model, generated as `New<Model>`.
pub trait NewRow: Send + Sync + Sized + 'static {
    /// The model this inserts into.
    type Table: Table;

    /// The values of [`TableMeta::insert_columns`], in order.
    fn params(&self) -> Vec<Param<'_>>;

    /// One array per insert column, holding that column's value of every row: the
    /// parameters of a batch insert through `unnest`.
    fn column_arrays(rows: &[Self]) -> Vec<Box<dyn ToSql + Sync + Send + '_>>;
}

/// The update shape of a model, generated as `<Model>Patch`: `None` leaves a column
/// unchanged; for a nullable column `Some(None)` sets it to NULL.
pub trait Patch: Default + Send + Sync + 'static {
    /// The model this updates.
    type Table: Table;

    /// `(column index, value)` of every field that is set.
    fn assignments(&self) -> Vec<(usize, Param<'_>)>;
}

/// A model whose foreign-key field names a row of `P` — implemented by
/// `#[derive(Table)]` for a field marked `#[table(belongs_to = P)]` (whose type must be
/// `P::Key`, or `Option<P::Key>` for a nullable foreign key). See [`Db::children`](crate::Db::children) and
/// [`Db::parents`](crate::Db::parents).
pub trait BelongsTo<P: Table>: Table {
    /// The position of the foreign-key column in [`Table::META`]'s columns.
    const FOREIGN_KEY: usize;
    /// The key of the parent this row belongs to (`None`: a NULL foreign key).
    fn parent_key(&self) -> Option<&P::Key>;
}

/// A key as the cache names it (JSON text; keys are scalars or tuples of them).
pub(crate) fn key_text<M: Table>(key: &M::Key) -> String {
    serde_json::to_string(key).unwrap_or_default()
}

/// Two models a declared relation joins: `#[table(belongs_to = Parent)]` on a child's
/// field implements it both ways (`Child: Related<Parent>` and `Parent:
/// Related<Child>`), which is what [`Query::inner_join`](crate::Query::inner_join)
/// and [`Query::left_join`](crate::Query::left_join) follow.
#[diagnostic::on_unimplemented(
    message = "no relation is declared between `{Self}` and `{B}`",
    label = "joined along a relation neither model declares",
    note = "declare it with #[table(belongs_to = …)] on the foreign key, or join with explicit columns: `.inner_join_on(…, …)`"
)]
pub trait Related<B: Table>: Table {
    /// The column of `Self` and the column of `B` that are equal on related rows, as
    /// positions in their [`TableMeta::columns`].
    const ON: (usize, usize);
}

/// Metadata of a model's table.
#[derive(Debug)]
pub struct TableMeta {
    /// The schema, when one was given.
    pub schema: Option<&'static str>,
    /// The table's name.
    pub name: &'static str,
    /// Every column, in field order.
    pub columns: &'static [ColumnMeta],
    /// Index of the primary key in `columns`.
    pub primary_key: usize,
    /// Index of the `#[table(soft_delete)]` column, if the model has one.
    pub soft_delete: Option<usize>,
    /// Index of the `#[table(version)]` column (optimistic locking), if any.
    pub version: Option<usize>,
    /// Seconds rows stay in the row cache (`#[table(cache(ttl = N))]`); `None`: not cached.
    pub cache_ttl: Option<u64>,
    /// Whether a near tier (see [`CacheConfig::near`](crate::cache::CacheConfig::near))
    /// may answer reads of this model's rows and cached queries: `true` unless the
    /// model says `#[table(cache(ttl = N, near = false))]`.
    pub cache_near: bool,
    /// A hash of the model's shape: table, columns and their Rust types, and the row
    /// cache's encoding version ([`CODEC_VERSION`]).
    pub shape: u64,
}

impl TableMeta {
    /// The primary key column.
    pub fn key_column(&self) -> &ColumnMeta {
        &self.columns[self.primary_key]
    }

    /// `schema.table` or `table`: how the cache names this table.
    pub fn qualified_name(&self) -> String {
        match self.schema {
            Some(schema) => format!("{schema}.{}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// The shape hash as the 16 hex digits cached rows start with.
    pub fn shape_hex(&self) -> String {
        format!("{:016x}", self.shape)
    }

    /// The soft-delete column, if the model has one.
    pub fn soft_delete_column(&self) -> Option<&ColumnMeta> {
        self.soft_delete.map(|i| &self.columns[i])
    }

    /// The columns an insert writes: all but the generated ones.
    pub fn insert_columns(&self) -> impl Iterator<Item = &ColumnMeta> {
        self.columns.iter().filter(|c| !c.generated)
    }

    /// The column named `name`, if the model has one.
    pub fn column(&self, name: &str) -> Option<(usize, &ColumnMeta)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }
}

/// Metadata of one column.
#[derive(Debug)]
pub struct ColumnMeta {
    /// The column's name in the database.
    pub name: &'static str,
    /// The Rust field it maps to.
    pub field: &'static str,
    /// The PostgreSQL type the field travels as.
    pub sql_type: &'static str,
    /// Whether this is the primary key.
    pub primary_key: bool,
    /// Filled by a database default; left out of inserts.
    pub generated: bool,
    /// Whether the field is an `Option`.
    pub nullable: bool,
    /// Stored as JSON through serde.
    pub json: bool,
    /// Declared `#[table(unique)]` (a `by_<field>` finder exists).
    pub unique: bool,
}

/// A typed column of model `M` whose values are `T`. Generated as constants on the
/// model (`Profile::USERNAME`), it is how queries name columns, so that a misspelled
/// column or a value of the wrong type does not compile.
///
/// ```
/// # use tabula::Table;
/// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
/// let column: tabula::Column<Note, String> = Note::BODY;
/// assert_eq!(column.name(), "body");
/// ```
pub struct Column<M, T> {
    index: usize,
    name: &'static str,
    _marker: PhantomData<fn() -> (M, T)>,
}

impl<M, T> Column<M, T> {
    #[doc(hidden)]
    pub const fn new(index: usize, name: &'static str) -> Self {
        Column {
            index,
            name,
            _marker: PhantomData,
        }
    }

    /// The column's name in the database.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The column's position in the model's metadata.
    pub const fn index(&self) -> usize {
        self.index
    }
}

impl<M, T> Clone for Column<M, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M, T> Copy for Column<M, T> {}

impl<M, T> fmt::Debug for Column<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Column({})", self.name)
    }
}

/// Decodes column `index` of `row` into the model's field type.
#[doc(hidden)]
pub fn decode_column<M: Table, T: tokio_postgres::types::FromSqlOwned>(
    row: &Row,
    at: usize,
    index: usize,
) -> Result<T> {
    row.try_get(at + index)
        .map_err(|e| decode_error::<M>(index, e))
}

/// The decode error of column `index` of model `M`.
pub(crate) fn decode_error<M: Table>(index: usize, e: tokio_postgres::Error) -> crate::Error {
    crate::Error::Decode {
        table: M::META.name,
        column: M::META.columns.get(index).map_or("?", |c| c.name),
        source: decode_cause(e),
    }
}

/// Why a value did not decode: the driver's own error says only "error deserializing
/// column N" (the column is named already), so its cause — the type's message — is
/// what a reader needs.
pub(crate) fn decode_cause(e: tokio_postgres::Error) -> Box<dyn std::error::Error + Send + Sync> {
    use std::error::Error as _;
    match e.source().is_some() {
        true => e
            .into_source()
            .unwrap_or_else(|| "undecodable value".into()),
        false => Box::new(e),
    }
}

/// One or more columns of model `M`: a [`Column`] or a tuple of them. Used for upsert
/// conflict targets.
///
/// ```
/// # use tabula::{ColumnSet, Table};
/// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String, pub lang: String }
/// assert_eq!((Note::BODY, Note::LANG).indices(), vec![1, 2]);
/// ```
pub trait ColumnSet<M> {
    /// The columns' positions in the model's metadata.
    fn indices(&self) -> Vec<usize>;
}

impl<M, T> ColumnSet<M> for Column<M, T> {
    fn indices(&self) -> Vec<usize> {
        vec![self.index]
    }
}

macro_rules! column_set_tuples {
    ($(($($t:ident $v:ident),+)),* $(,)?) => {$(
        impl<M, $($t),+> ColumnSet<M> for ($(Column<M, $t>,)+) {
            fn indices(&self) -> Vec<usize> {
                let ($($v,)+) = self;
                vec![$($v.index),+]
            }
        }
    )*};
}

column_set_tuples!(
    (A a),
    (A a, B b),
    (A a, B b, C c),
    (A a, B b, C c, D d),
);

/// `name` as a quoted identifier (`"` doubled), for the rare expression sea-query
/// cannot build; everywhere else identifiers go through sea-query's `Alias`.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
