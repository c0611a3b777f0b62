//! One-dimensional arrays: a `Vec<T>` field is a `T[]` column.

use super::ColumnType;
use crate::table::{CacheCodec, CodecReader, write_len};

/// A column type that can be the element of an array column: a `Vec<T>` field is a
/// one-dimensional PostgreSQL array of `T` (`Vec<i64>` is `int8[]`, `Vec<Option<String>>`
/// a `text[]` that may hold NULLs).
///
/// Implemented for every built-in column type except `Vec<u8>` (which is `bytea`, not an
/// array) and arrays themselves (PostgreSQL arrays are rectangular, Rust's nested
/// vectors are not: a multi-dimensional array does not decode into one, it is a
/// [`Error::Decode`](crate::Error::Decode)). `#[derive(PgEnum)]` enums implement it too.
///
/// ```
/// use tabula::ColumnType;
/// assert_eq!(<Vec<i64> as ColumnType>::SQL_TYPE, "int8[]");
/// assert_eq!(<Option<Vec<Option<String>>> as ColumnType>::SQL_TYPE, "text[]");
/// ```
pub trait ArrayElement: ColumnType {
    /// The array type's name: the element's SQL type followed by `[]`.
    const ARRAY_TYPE: &'static str;
}

macro_rules! elements {
    ($($(#[$attr:meta])* $ty:ty => $name:literal),* $(,)?) => {
        $($(#[$attr])* impl ArrayElement for $ty { const ARRAY_TYPE: &'static str = $name; })*
    };
}

elements! {
    bool => "bool[]",
    i16 => "int2[]",
    i32 => "int4[]",
    i64 => "int8[]",
    f32 => "float4[]",
    f64 => "float8[]",
    String => "text[]",
    std::net::IpAddr => "inet[]",
    #[cfg(feature = "uuid")]
    uuid::Uuid => "uuid[]",
    #[cfg(feature = "chrono")]
    chrono::DateTime<chrono::Utc> => "timestamptz[]",
    #[cfg(feature = "chrono")]
    chrono::NaiveDate => "date[]",
    #[cfg(feature = "chrono")]
    chrono::NaiveDateTime => "timestamp[]",
    #[cfg(feature = "chrono")]
    chrono::NaiveTime => "time[]",
    #[cfg(feature = "decimal")]
    rust_decimal::Decimal => "numeric[]",
    #[cfg(feature = "json")]
    serde_json::Value => "jsonb[]",
}

/// An element that may be NULL.
impl<T: ArrayElement> ArrayElement for Option<T> {
    const ARRAY_TYPE: &'static str = T::ARRAY_TYPE;
}

impl<T: ArrayElement> ColumnType for Vec<T> {
    const SQL_TYPE: &'static str = T::ARRAY_TYPE;
    type NonNull = Self;
}

/// The element count, then each element.
impl<T: ArrayElement> CacheCodec for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        write_len(out, self.len());
        for item in self {
            item.encode(out);
        }
    }

    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        // Every element takes at least one byte, so the count is bounded by the input.
        let count = input.len_prefix()?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(T::decode(input)?);
        }
        Some(items)
    }
}
