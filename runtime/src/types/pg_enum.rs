//! PostgreSQL enums from Rust enums: the [`PgEnum`] trait, which `#[derive(PgEnum)]`
//! implements with the column traits.

use tokio_postgres::types::{Kind, Type};

use super::custom::BoxError;

/// A fieldless Rust enum stored as a PostgreSQL enum: each variant is a label.
///
/// `#[derive(PgEnum)]` implements it, with everything a column type needs (including
/// arrays of it), for an enum of unit variants. The type's name is the enum's in
/// snake_case unless `#[pg_enum(name = "...")]` (and `schema = "..."`) says otherwise;
/// each label is its variant's name in snake_case unless `#[pg_enum(rename = "...")]`.
///
/// **Storage.** A PostgreSQL enum, created by a migration: [`PgEnum::create_type`]
/// gives its `CREATE TYPE`, labels in declaration order (which is the order
/// PostgreSQL sorts them in). A `text` or `varchar` column (with a `CHECK` constraint,
/// say) holds one too: values are sent and read as their labels either way. Reading a
/// label the enum does not have (a value added to the type by a later migration, before
/// the application knows it) is an [`Error::Decode`](crate::Error::Decode), never a
/// wrong variant.
///
/// ```
/// use tabula::{PgEnum, Table};
///
/// #[derive(PgEnum, Debug, Clone, Copy, PartialEq)]
/// pub enum Mood {
///     Happy,
///     #[pg_enum(rename = "meh")]
///     SoSo,
///     VerySad,
/// }
///
/// #[derive(Table)]
/// pub struct Entry {
///     #[table(primary_key, generated)]
///     pub id: i64,
///     pub mood: Mood,
///     pub history: Vec<Mood>,
/// }
///
/// assert_eq!(Mood::create_type(), r#"CREATE TYPE "mood" AS ENUM ('happy', 'meh', 'very_sad')"#);
/// assert_eq!(Mood::SoSo.label(), "meh");
/// assert_eq!(Mood::from_label("very_sad"), Some(Mood::VerySad));
/// # fn f(db: tabula::Db) {
/// let _sad = db.query::<Entry>().filter(Entry::MOOD.eq(Mood::VerySad));
/// # }
/// ```
pub trait PgEnum: Sized + Send + Sync + 'static {
    /// The PostgreSQL type's name (unquoted).
    const TYPE_NAME: &'static str;
    /// Its schema, when one was named.
    const SCHEMA: Option<&'static str>;
    /// The labels, in declaration order.
    const LABELS: &'static [&'static str];

    /// The variant's position in declaration order.
    fn index(&self) -> usize;

    /// The variant at `index`, if there is one.
    fn from_index(index: usize) -> Option<Self>;

    /// This variant's label.
    fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// The variant with this label, if there is one.
    fn from_label(label: &str) -> Option<Self> {
        Self::LABELS
            .iter()
            .position(|l| *l == label)
            .and_then(Self::from_index)
    }

    /// The `CREATE TYPE … AS ENUM (…)` statement for a migration (names quoted, so a
    /// reserved word or a capital letter is taken as written).
    fn create_type() -> String {
        let labels: Vec<String> = Self::LABELS
            .iter()
            .map(|l| format!("'{}'", l.replace('\'', "''")))
            .collect();
        let name = crate::table::quote_ident(Self::TYPE_NAME);
        let name = match Self::SCHEMA {
            Some(schema) => format!("{}.{name}", crate::table::quote_ident(schema)),
            None => name,
        };
        format!("CREATE TYPE {name} AS ENUM ({})", labels.join(", "))
    }
}

/// Whether a value of `E` may travel as `ty`: the enum type itself (by name, and by
/// schema when the enum names one), or text.
#[doc(hidden)]
pub fn enum_accepts<E: PgEnum>(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Enum(_) => {
            ty.name() == E::TYPE_NAME && E::SCHEMA.is_none_or(|schema| ty.schema() == schema)
        }
        _ => matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME),
    }
}

/// Reads a label sent by PostgreSQL.
#[doc(hidden)]
pub fn enum_from_sql<E: PgEnum>(raw: &[u8]) -> Result<E, BoxError> {
    let label = std::str::from_utf8(raw)?;
    E::from_label(label).ok_or_else(|| {
        format!(
            "`{label}` is not a label of the enum `{}` (known: {})",
            E::TYPE_NAME,
            E::LABELS.join(", ")
        )
        .into()
    })
}
