//! A user's own column type, stored as one of the built-in ones.

use std::error::Error as StdError;

use super::ColumnType;

/// A type of your own as a column: say which built-in [`ColumnType`] it is stored as and
/// how to convert, then invoke [`custom_column!`](crate::custom_column) once for the
/// type. The macro implements what a column needs — tokio-postgres's `ToSql` and
/// `FromSql`, the row cache's codec, [`ColumnType`] — all through the stored type, so
/// the database, filters, batch inserts and the cache see exactly the stored value.
///
/// `from_stored` is the one place a bad value can appear (a row written by someone
/// else, a cache entry of an older release): return an error and the read fails with
/// [`Error::Decode`](crate::Error::Decode) naming the column (a cache entry that does
/// not convert is a miss, read again from the database).
///
/// Cached queries are keyed by their parameters' `Debug` forms: a custom type's
/// `Debug` must tell different values apart (a derived one does).
///
/// ```
/// use tabula::{CustomColumn, Table};
///
/// /// An e-mail address, lower-cased, stored as `text`.
/// #[derive(Debug, Clone, PartialEq)]
/// pub struct Email(String);
///
/// impl CustomColumn for Email {
///     type Stored = String;
///     fn to_stored(&self) -> String {
///         self.0.clone()
///     }
///     fn from_stored(text: String) -> Result<Self, tabula::BoxError> {
///         match text.contains('@') {
///             true => Ok(Email(text.to_lowercase())),
///             false => Err(format!("not an e-mail address: {text:?}").into()),
///         }
///     }
/// }
/// tabula::custom_column!(Email);
///
/// #[derive(Table)]
/// pub struct Subscriber {
///     #[table(primary_key, generated)]
///     pub id: i64,
///     pub email: Email,
///     pub backup: Option<Email>,
/// }
///
/// # fn f(db: tabula::Db) {
/// let _query = db.query::<Subscriber>().filter(Subscriber::EMAIL.eq(Email("a@b.c".into())));
/// # }
/// assert_eq!(<Email as tabula::ColumnType>::SQL_TYPE, "text");
/// ```
pub trait CustomColumn: Sized + Send + Sync + std::fmt::Debug + 'static {
    /// The built-in column type the value is stored as.
    type Stored: ColumnType;

    /// The value as stored.
    fn to_stored(&self) -> Self::Stored;

    /// The value back from what was stored; an error for a stored value that is not
    /// one.
    fn from_stored(stored: Self::Stored) -> Result<Self, BoxError>;
}

/// The error type of conversions (and of tokio-postgres's `FromSql`).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Makes a [`CustomColumn`] type a column type; see there.
#[macro_export]
macro_rules! custom_column {
    ($ty:ty) => {
        impl $crate::__private::ToSql for $ty {
            fn to_sql(
                &self,
                ty: &$crate::__private::Type,
                out: &mut $crate::__private::BytesMut,
            ) -> ::core::result::Result<$crate::__private::IsNull, $crate::BoxError> {
                $crate::__private::ToSql::to_sql(
                    &<$ty as $crate::CustomColumn>::to_stored(self),
                    ty,
                    out,
                )
            }
            fn accepts(ty: &$crate::__private::Type) -> bool {
                <<$ty as $crate::CustomColumn>::Stored as $crate::__private::ToSql>::accepts(ty)
            }
            $crate::__private::to_sql_checked!();
        }

        impl<'a> $crate::__private::FromSql<'a> for $ty {
            fn from_sql(
                ty: &$crate::__private::Type,
                raw: &'a [u8],
            ) -> ::core::result::Result<Self, $crate::BoxError> {
                let stored =
                    <<$ty as $crate::CustomColumn>::Stored as $crate::__private::FromSql>::from_sql(
                        ty, raw,
                    )?;
                <$ty as $crate::CustomColumn>::from_stored(stored)
            }
            fn accepts(ty: &$crate::__private::Type) -> bool {
                <<$ty as $crate::CustomColumn>::Stored as $crate::__private::FromSql>::accepts(ty)
            }
        }

        impl $crate::table::CacheCodec for $ty {
            fn encode(&self, out: &mut ::std::vec::Vec<u8>) {
                $crate::table::CacheCodec::encode(
                    &<$ty as $crate::CustomColumn>::to_stored(self),
                    out,
                )
            }
            fn decode(input: &mut $crate::table::CodecReader<'_>) -> ::core::option::Option<Self> {
                let stored =
                    <<$ty as $crate::CustomColumn>::Stored as $crate::table::CacheCodec>::decode(
                        input,
                    )?;
                <$ty as $crate::CustomColumn>::from_stored(stored).ok()
            }
        }

        impl $crate::ColumnType for $ty {
            const SQL_TYPE: &'static str =
                <<$ty as $crate::CustomColumn>::Stored as $crate::ColumnType>::SQL_TYPE;
            type NonNull = Self;
        }
    };
}
