//! [`Db::verify`]: the models against the live tables, at start-up — every mismatch in
//! one error, before the first query meets one.

use super::Db;
use crate::error::{Error, Result};
use crate::table::{Table, TableMeta};

/// A set of models to check: one model, or a tuple of up to twelve.
pub trait ModelSet {
    /// Their metadata.
    fn metas() -> Vec<&'static TableMeta>;
}

impl<M: Table> ModelSet for M {
    fn metas() -> Vec<&'static TableMeta> {
        vec![M::META]
    }
}

macro_rules! model_set_tuples {
    ($(($($m:ident),+)),* $(,)?) => {$(
        impl<$($m: Table),+> ModelSet for ($($m,)+) {
            fn metas() -> Vec<&'static TableMeta> {
                vec![$($m::META),+]
            }
        }
    )*};
}

model_set_tuples!(
    (A),
    (A, B),
    (A, B, C),
    (A, B, C, D),
    (A, B, C, D, E),
    (A, B, C, D, E, F),
    (A, B, C, D, E, F, G),
    (A, B, C, D, E, F, G, H),
    (A, B, C, D, E, F, G, H, I),
    (A, B, C, D, E, F, G, H, I, J),
    (A, B, C, D, E, F, G, H, I, J, K),
    (A, B, C, D, E, F, G, H, I, J, K, L),
);

/// A table's columns as the catalog has them: name, type name, NOT NULL, whether it
/// is the single-column primary key, the type's category, whether the database fills
/// it (a default, an identity, a generated column).
const COLUMNS: &str = "SELECT a.attname::text, t.typname::text, a.attnotnull, \
     coalesce((SELECT true FROM pg_constraint k WHERE k.conrelid = a.attrelid AND k.contype = 'p' \
               AND k.conkey = ARRAY[a.attnum]::int2[]), false), \
     t.typcategory::text, (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') \
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped";

/// A type as the model names it, without quotes or schema (`"public"."mood"` →
/// `mood`).
fn bare(sql_type: &str) -> String {
    let unquoted = sql_type.replace('"', "");
    unquoted.rsplit('.').next().unwrap_or_default().to_owned()
}

/// Whether a column of the catalog's type `actual` holds the model's `expected`.
fn same_type(expected: &str, actual: &str, category: &str) -> bool {
    // Arrays: the model says `int4[]`, the catalog `_int4`: their elements compare.
    if category == "A" {
        return match (expected.strip_suffix("[]"), actual.strip_prefix('_')) {
            (Some(expected), Some(actual)) => {
                same_type(expected, actual, "") || bare(expected) == actual
            }
            _ => false,
        };
    }
    expected == actual
        || matches!(
            (expected, actual),
            ("text", "varchar" | "bpchar" | "citext" | "name") | ("jsonb", "json")
        )
}

impl Db {
    /// Checks models against the live tables and fails with
    /// [`Error::SchemaMismatch`] listing every mismatch: a missing table or column, a
    /// column of another type, a non-`Option` field on a nullable column, a primary
    /// key that is not the table's. Run it at start-up, after migrations.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table)] pub struct Profile { #[table(primary_key)] pub id: i64, pub username: String }
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// db.verify::<(Profile, Note)>().await?;
    /// # Ok(()) }
    /// ```
    pub async fn verify<S: ModelSet>(&self) -> Result<()> {
        let mut problems = Vec::new();
        for meta in S::metas() {
            let name = super::cached::regclass_text(meta);
            let table = meta.qualified_name();
            let columns: Vec<(String, String, bool, bool, String, bool)> = self
                .run("verify_schema", meta.name, async |conn| {
                    let rows = conn.query(COLUMNS, &[&name]).await?;
                    Ok(rows
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
                        .collect())
                })
                .await?;
            if columns.is_empty() {
                problems.push(format!("table `{table}`: not in the database"));
                continue;
            }
            for column in meta.columns {
                let Some((_, actual, not_null, key, category, filled)) =
                    columns.iter().find(|c| c.0 == column.name)
                else {
                    problems.push(format!("`{table}.{}`: no such column", column.name));
                    continue;
                };
                if !same_type(column.sql_type, actual, category) && category != "E" {
                    problems.push(format!(
                        "`{table}.{}`: the model says {}, the database has {actual}",
                        column.name, column.sql_type
                    ));
                }
                // An enum's type as the model names it: quoted, perhaps with its schema.
                if category == "E" && bare(column.sql_type) != *actual && column.sql_type != "text"
                {
                    problems.push(format!(
                        "`{table}.{}`: the model's enum is {}, the database's {actual}",
                        column.name, column.sql_type
                    ));
                }
                if !column.nullable && !not_null && !column.primary_key {
                    problems.push(format!(
                        "`{table}.{}`: the column may be NULL, the field is not an Option",
                        column.name
                    ));
                }
                if column.generated && *not_null && !filled {
                    problems.push(format!(
                        "`{table}.{}`: the model leaves it to the database (generated), but it is \
                         NOT NULL without a default (inserts fail)",
                        column.name
                    ));
                }
                if column.primary_key && !key {
                    problems.push(format!(
                        "`{table}.{}`: the model's primary key is not the table's",
                        column.name
                    ));
                }
            }
            // A NOT NULL column without a default that the model does not know makes
            // every insert fail.
            let known: Vec<&str> = meta.columns.iter().map(|c| c.name).collect();
            for (column, _, not_null, _, _, filled) in &columns {
                if *not_null && !filled && !known.contains(&column.as_str()) {
                    problems.push(format!(
                        "`{table}.{column}`: NOT NULL in the database, unknown to the model (inserts may fail)"
                    ));
                }
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(Error::SchemaMismatch { problems }),
        }
    }
}
