//! The Rust types a column may have, and how JSON columns travel.
//!
//! `uuid::Uuid`, the chrono types and `serde_json::Value` are columns only with
//! tabula's `uuid`, `chrono` and `json` features (all on by default), which also turn
//! on tokio-postgres's support for them. `#[table(json)]` fields need no feature:
//! they are encoded and decoded here, with serde_json.

use std::error::Error as StdError;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, FromSqlOwned, IsNull, ToSql, Type, to_sql_checked};

use crate::error::Result;
use crate::table::Table;

mod array;
mod custom;
mod pg_enum;

pub use array::ArrayElement;
pub use custom::{BoxError, CustomColumn};
#[doc(hidden)]
pub use pg_enum::PgEnum;
#[doc(hidden)]
pub use pg_enum::{enum_accepts, enum_from_sql};

/// A Rust type that can be a column of a [`Table`](crate::Table).
///
/// Implemented for `bool`, `i16`, `i32`, `i64`, `f32`, `f64`, `String`, `Vec<u8>`
/// (`bytea`), `std::net::IpAddr` (`inet`), `uuid::Uuid` (feature `uuid`),
/// `chrono::DateTime<Utc>`, `NaiveDate`, `NaiveDateTime` and `NaiveTime` (feature
/// `chrono`: `timestamptz`, `date`, `timestamp`, `time`), `rust_decimal::Decimal`
/// (feature `decimal`: `numeric`), `serde_json::Value` (feature `json`), `Vec<T>` of
/// any of those as a one-dimensional array (see [`ArrayElement`]), PostgreSQL enums
/// (`#[derive(PgEnum)]`), and `Option` of each. Any other serde type can be stored as
/// `jsonb` with `#[table(json)]` on the field, and any type at all by converting it to
/// one of these: implement [`CustomColumn`].
///
/// ```
/// fn takes_column<T: tabula::ColumnType>() -> &'static str { T::SQL_TYPE }
/// assert_eq!(takes_column::<Option<i64>>(), "int8");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a supported column type",
    label = "unsupported column type",
    note = "supported: bool, i16, i32, i64, f32, f64, String, Vec<u8>, IpAddr, Uuid, DateTime<Utc>, NaiveDate, NaiveDateTime, NaiveTime, Decimal, serde_json::Value, Vec<T> of those (arrays), #[derive(PgEnum)] enums, and Option of each",
    note = "to store any serde type as jsonb, mark the field #[table(json)]; for any other type, implement `tabula::CustomColumn` and invoke `tabula::custom_column!`"
)]
// Notes accumulate: a build without a type's feature says so after the list.
#[cfg_attr(
    not(feature = "uuid"),
    diagnostic::on_unimplemented(
        note = "`Uuid` columns need tabula's `uuid` feature, off in this build"
    )
)]
#[cfg_attr(
    not(feature = "chrono"),
    diagnostic::on_unimplemented(
        note = "`DateTime<Utc>`, `NaiveDate`, `NaiveDateTime` and `NaiveTime` columns need tabula's `chrono` feature, off in this build"
    )
)]
#[cfg_attr(
    not(feature = "decimal"),
    diagnostic::on_unimplemented(
        note = "`Decimal` columns need tabula's `decimal` feature, off in this build"
    )
)]
#[cfg_attr(
    not(feature = "json"),
    diagnostic::on_unimplemented(
        note = "`serde_json::Value` columns need tabula's `json` feature, off in this build"
    )
)]
pub trait ColumnType:
    ToSql + FromSqlOwned + crate::table::CacheCodec + Send + Sync + 'static
{
    /// The PostgreSQL type name used when the column travels as an array (batch insert).
    const SQL_TYPE: &'static str;
    /// Whether the column accepts NULL (`Option<_>`).
    const NULLABLE: bool = false;
    /// The type without its `Option` (itself for a type that is not one): what an
    /// aggregate that may be NULL (`min`, `max`) wraps in one `Option`, not two.
    type NonNull: ColumnType;
}

macro_rules! column_types {
    ($($(#[$attr:meta])* $ty:ty => $name:literal),* $(,)?) => {
        $($(#[$attr])* impl ColumnType for $ty {
            const SQL_TYPE: &'static str = $name;
            type NonNull = Self;
        })*
    };
}

column_types! {
    bool => "bool",
    i16 => "int2",
    i32 => "int4",
    i64 => "int8",
    f32 => "float4",
    f64 => "float8",
    String => "text",
    Vec<u8> => "bytea",
    #[cfg(feature = "uuid")]
    #[cfg_attr(docsrs, doc(cfg(feature = "uuid")))]
    uuid::Uuid => "uuid",
    #[cfg(feature = "chrono")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
    chrono::DateTime<chrono::Utc> => "timestamptz",
    #[cfg(feature = "chrono")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
    chrono::NaiveDate => "date",
    #[cfg(feature = "chrono")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
    chrono::NaiveDateTime => "timestamp",
    #[cfg(feature = "chrono")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
    chrono::NaiveTime => "time",
    std::net::IpAddr => "inet",
    #[cfg(feature = "decimal")]
    #[cfg_attr(docsrs, doc(cfg(feature = "decimal")))]
    rust_decimal::Decimal => "numeric",
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    serde_json::Value => "jsonb",
}

impl<T: ColumnType> ColumnType for Option<T> {
    const SQL_TYPE: &'static str = T::SQL_TYPE;
    const NULLABLE: bool = true;
    type NonNull = T::NonNull;
}

/// A borrowed serde value bound as a `jsonb` parameter without copying it first.
///
/// `#[repr(transparent)]` over `T`, so a `&T` can be viewed as a `&JsonRef<T>` for free;
/// generated code uses it to bind `#[table(json)]` fields.
#[repr(transparent)]
pub struct JsonRef<T: ?Sized>(T);

/// Like [`JsonRef`] for an `Option`: `None` is SQL NULL, not the JSON `null`.
#[repr(transparent)]
pub struct JsonOptRef<T>(Option<T>);

/// Views a reference to a serde value as a `jsonb` parameter.
///
/// ```
/// let tags = vec!["a", "b"];
/// let _param = tabula::__private::json_param(&tags);
/// ```
pub fn json_param<T: ?Sized>(value: &T) -> &JsonRef<T> {
    let ptr = value as *const T as *const JsonRef<T>;
    // SAFETY: JsonRef<T> is #[repr(transparent)] over T: same layout and pointer
    // metadata, and the lifetime is carried over unchanged.
    unsafe { &*ptr }
}

/// Views a reference to an optional serde value as a nullable `jsonb` parameter.
///
/// ```
/// let tags: Option<Vec<String>> = None;
/// let _param = tabula::__private::json_opt_param(&tags);
/// ```
pub fn json_opt_param<T>(value: &Option<T>) -> &JsonOptRef<T> {
    let ptr = value as *const Option<T> as *const JsonOptRef<T>;
    // SAFETY: JsonOptRef<T> is #[repr(transparent)] over Option<T>.
    unsafe { &*ptr }
}

impl<T: ?Sized> fmt::Debug for JsonRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the value: it may be user data.
        f.write_str("JsonRef(..)")
    }
}

impl<T> fmt::Debug for JsonOptRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonOptRef(..)")
    }
}

fn write_json<T: Serialize + ?Sized>(
    value: &T,
    ty: &Type,
    out: &mut bytes::BytesMut,
) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
    use bytes::BufMut;
    if *ty == Type::JSONB {
        out.put_u8(1); // jsonb binary format version
    }
    serde_json::to_writer(out.writer(), value)?;
    Ok(IsNull::No)
}

impl<T: Serialize> ToSql for JsonOptRef<T> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            Some(value) => write_json(value, ty, out),
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

impl<T: Serialize> ToSql for JsonRef<T> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        write_json(&self.0, ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

/// A value a query binds, with its identity in the query cache: two values of one
/// column type with the same identity are the same value to PostgreSQL. Every column
/// type has one — its cache encoding; for a [`CustomColumn`](crate::CustomColumn), the
/// encoding of the value as stored, so the type's own `Debug` (which may redact)
/// plays no part.
#[doc(hidden)]
pub trait SqlValue: ToSql + Sync + Send {
    /// Appends this value's identity to `out`.
    fn identity(&self, out: &mut Vec<u8>);
}

/// NULL and a value never share an identity: a nullable column takes a bare value
/// (`eq("")`) as well as an `Option` (`eq(None)`), and `""`, `false`, `None` and an
/// empty list all encode as one zero byte. An `Option` encodes as a tag (0: NULL, 1: a
/// value) and then its value; a value of a type that is not an `Option` is given the
/// same tag, so `eq("")` and `eq(Some(""))` — one SQL value — stay one identity.
impl<T: ColumnType> SqlValue for T {
    fn identity(&self, out: &mut Vec<u8>) {
        if !T::NULLABLE {
            out.push(1);
        }
        crate::table::CacheCodec::encode(self, out);
    }
}

/// A JSON document bound as `jsonb` (`#[table(json)]` fields, in every build).
impl SqlValue for Json<serde_json::Value> {
    fn identity(&self, out: &mut Vec<u8>) {
        let text = self.0.to_string();
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
}

/// An owned JSON value, in and out of `json` / `jsonb` columns through serde_json: what
/// `#[table(json)]` fields, `QuerySpec` values and `EXPLAIN` plans travel as, whatever
/// tokio-postgres's own serde_json support (feature `json`).
pub(crate) struct Json<T>(pub(crate) T);

/// The value's own `Debug` (a `QuerySpec` value is no more secret than any other
/// parameter); the query cache names it by its text (see `sql::SqlValue`).
impl<T: fmt::Debug> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize + fmt::Debug> ToSql for Json<T> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        write_json(&self.0, ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

impl<'a, T: DeserializeOwned> FromSql<'a> for Json<T> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Json<T>, Box<dyn StdError + Sync + Send>> {
        let text = match (*ty == Type::JSONB, raw.split_first()) {
            (false, _) => raw,
            (true, Some((1, text))) => text,
            (true, _) => return Err("unsupported jsonb binary format version".into()),
        };
        Ok(Json(serde_json::from_slice(text)?))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }
}

/// Decodes a `#[table(json)]` column into its serde type.
#[doc(hidden)]
pub fn decode_json_column<M: Table, T: DeserializeOwned>(
    row: &Row,
    at: usize,
    index: usize,
) -> Result<T> {
    row.try_get::<_, Json<T>>(at + index)
        .map(|json| json.0)
        .map_err(|e| crate::table::decode_error::<M>(index, e))
}

/// Decodes a nullable `#[table(json)]` column: SQL NULL is `None`.
#[doc(hidden)]
pub fn decode_json_opt_column<M: Table, T: DeserializeOwned>(
    row: &Row,
    at: usize,
    index: usize,
) -> Result<Option<T>> {
    row.try_get::<_, Option<Json<T>>>(at + index)
        .map(|json| json.map(|j| j.0))
        .map_err(|e| crate::table::decode_error::<M>(index, e))
}

/// The type a `#[table(soft_delete)]` column must have.
#[cfg_attr(
    feature = "chrono",
    diagnostic::on_unimplemented(
        message = "a #[table(soft_delete)] column must be `Option<DateTime<Utc>>`, not `{Self}`",
        label = "NULL while the row is live, the deletion time once deleted"
    )
)]
#[cfg_attr(
    not(feature = "chrono"),
    diagnostic::on_unimplemented(
        message = "a #[table(soft_delete)] column is an `Option<DateTime<Utc>>`, which needs tabula's `chrono` feature, off in this build",
        label = "NULL while the row is live, the deletion time once deleted"
    )
)]
pub trait SoftDeleteColumn {}

#[cfg(feature = "chrono")]
#[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
impl SoftDeleteColumn for Option<chrono::DateTime<chrono::Utc>> {}

/// Compile-time check used by generated code.
#[doc(hidden)]
pub fn assert_soft_delete_column<T: SoftDeleteColumn>() {}

/// The types a `#[table(version)]` column may have: integers that PostgreSQL adds one
/// to on every update.
#[diagnostic::on_unimplemented(
    message = "a #[table(version)] column must be `i32` or `i64`, not `{Self}`",
    label = "the row's version: compared on update, then incremented"
)]
pub trait VersionColumn: ColumnType + Into<i64> + Copy {}

impl VersionColumn for i32 {}
impl VersionColumn for i64 {}

/// Compile-time check used by generated code.
#[doc(hidden)]
pub fn assert_version_column<T: VersionColumn>() {}
