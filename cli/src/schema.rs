//! `tabula schema pull`: `#[derive(Table)]` models (and `#[derive(PgEnum)]` enums) for
//! the tables of a live database, from its catalog.
//!
//! Each table of the schema becomes a struct named after it in singular `CamelCase`
//! (`profiles` → `Profile`); each column a field of the mapped Rust type, `Option<_>`
//! when nullable, `#[table(generated)]` when the database fills it (a default, an
//! identity, a generated column), `#[table(primary_key)]` / `#[table(unique)]` for
//! single-column keys, `#[table(belongs_to = Parent)]` for a single-column foreign key
//! to another table's primary key, `#[table(rename = "…")]` where the column's name is
//! not a Rust identifier. A table without a single-column primary key, or with a column
//! of a type that has no mapping, is left out with a comment saying why.

use std::collections::BTreeMap;
use std::fmt::Write;

const COLUMNS: &str = "SELECT c.relname::text, a.attname::text, t.typname::text, t.typtype::text, \
     coalesce(et.typname::text, ''), coalesce(et.typtype::text, ''), a.attnotnull, \
     (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''), \
     coalesce((SELECT bool_or(k.contype = 'p') FROM pg_constraint k \
               WHERE k.conrelid = c.oid AND k.conkey = ARRAY[a.attnum]::int2[] AND k.contype IN ('p', 'u')), false), \
     coalesce((SELECT bool_or(k.contype = 'u') FROM pg_constraint k \
               WHERE k.conrelid = c.oid AND k.conkey = ARRAY[a.attnum]::int2[] AND k.contype = 'u'), false), \
     a.attndims, \
     (SELECT r.relname::text FROM pg_constraint k JOIN pg_class r ON r.oid = k.confrelid \
      JOIN pg_constraint rp ON rp.conrelid = r.oid AND rp.contype = 'p' AND rp.conkey = k.confkey \
      WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.conkey = ARRAY[a.attnum]::int2[] \
        AND r.relnamespace = c.relnamespace LIMIT 1) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     JOIN pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
       AND c.relname NOT IN ('tabula_migrations', 'tabula_builtin_migrations') \
     ORDER BY c.relname, a.attnum";

const ENUMS: &str = "SELECT t.typname::text, array_agg(e.enumlabel::text ORDER BY e.enumsortorder) \
     FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid \
     JOIN pg_namespace n ON n.oid = t.typnamespace \
     WHERE n.nspname = $1 GROUP BY t.typname ORDER BY t.typname";

struct Column {
    name: String,
    rust: Option<String>,
    unmapped: String,
    not_null: bool,
    generated: bool,
    primary_key: bool,
    unique: bool,
    references: Option<String>,
}

/// The generated Rust source for the tables and enums of `schema`.
pub(crate) async fn pull(db: &tabula::Db, schema: &str) -> tabula::Result<String> {
    let schema = schema.to_owned();
    let (columns, enums) = db
        .with_client(async |c| {
            if c.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
                .await?
                .is_none()
            {
                return Err(tabula::Error::Validation(format!(
                    "schema `{schema}` does not exist"
                )));
            }
            let columns = c.query(COLUMNS, &[&schema]).await?;
            let enums = c.query(ENUMS, &[&schema]).await?;
            Ok((columns, enums))
        })
        .await?;
    let enums: BTreeMap<String, Vec<String>> = enums
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, Vec<String>>(1)))
        .collect();
    let mut tables: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    for row in &columns {
        let (table, name, typname, typtype, elem, elem_type): (
            String,
            String,
            String,
            String,
            String,
            String,
        ) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        let dims: i32 = row.get(10);
        let rust = match (elem.is_empty(), dims > 1) {
            (true, _) => rust_type(&typname, &typtype, &enums),
            // One dimension only: `Vec<Vec<_>>` is not a column type.
            (false, true) => None,
            (false, false) => rust_type(&elem, &elem_type, &enums).map(|t| format!("Vec<{t}>")),
        };
        tables.entry(table).or_default().push(Column {
            name,
            rust,
            unmapped: match (elem.is_empty(), dims > 1) {
                (true, _) => typname,
                (false, true) => format!("{elem}[] in {dims} dimensions"),
                (false, false) => format!("{elem}[]"),
            },
            not_null: row.get(6),
            generated: row.get(7),
            primary_key: row.get(8),
            unique: row.get(9),
            references: row.get(11),
        });
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Generated by `tabula schema pull` from the schema `{schema}`. Edit freely: it is\n\
         // yours now. Needs tabula's features for the types used (uuid, chrono, json,\n\
         // decimal) and serde.\n"
    );
    // What is emitted: tables whose every column maps, with one single-column key.
    let mut left_out: BTreeMap<&String, String> = BTreeMap::new();
    for (table, columns) in &tables {
        if let Some(column) = columns.iter().find(|c| c.rust.is_none()) {
            left_out.insert(
                table,
                format!(
                    "column `{}` has type `{}`, which has no Rust mapping here",
                    column.name, column.unmapped
                ),
            );
        } else if columns.iter().filter(|c| c.primary_key).count() != 1 {
            left_out.insert(table, "it has no single-column primary key".into());
        }
    }
    let used_enums: Vec<&String> = enums
        .keys()
        .filter(|e| {
            tables
                .iter()
                .filter(|(t, _)| !left_out.contains_key(t))
                .flat_map(|(_, cols)| cols)
                .any(|c| c.unmapped == **e || c.unmapped == format!("{e}[]"))
        })
        .collect();
    // Rust names, each once: enums, then structs with the companions the derive makes
    // (`New…`, `…Patch`), never a prelude name.
    let mut taken: Vec<String> = PRELUDE.iter().map(|s| (*s).to_owned()).collect();
    let mut claim = |candidates: Vec<String>, companions: bool| -> String {
        let fits = |name: &String, taken: &Vec<String>| {
            !taken.contains(name)
                && (!companions
                    || (!taken.contains(&format!("New{name}"))
                        && !taken.contains(&format!("{name}Patch"))))
        };
        let base = candidates[0].clone();
        let chosen = candidates
            .into_iter()
            .find(|c| fits(c, &taken))
            .unwrap_or_else(|| {
                (2..)
                    .map(|n| format!("{base}{n}"))
                    .find(|c| fits(c, &taken))
                    .unwrap_or(base)
            });
        taken.push(chosen.clone());
        if companions {
            taken.push(format!("New{chosen}"));
            taken.push(format!("{chosen}Patch"));
        }
        chosen
    };
    let enum_names: BTreeMap<&String, String> = used_enums
        .iter()
        .map(|e| {
            (
                *e,
                claim(vec![camel(e), format!("{}Enum", camel(e))], false),
            )
        })
        .collect();
    let struct_names: BTreeMap<&String, String> = tables
        .keys()
        .filter(|t| !left_out.contains_key(t))
        .map(|t| {
            let name = claim(
                vec![singular(t), camel(t), format!("{}Row", singular(t))],
                true,
            );
            (t, name)
        })
        .collect();
    let schema_attr = match schema.as_str() {
        "public" => String::new(),
        other => format!("schema = {other:?}, "),
    };
    for name in &used_enums {
        let labels = &enums[*name];
        let _ = writeln!(
            out,
            "#[derive(tabula::PgEnum, Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]"
        );
        let _ = writeln!(out, "#[pg_enum({schema_attr}name = {name:?})]");
        let _ = writeln!(out, "pub enum {} {{", enum_names[name]);
        let mut variants: Vec<String> = Vec::new();
        for label in labels {
            let mut variant = camel(label);
            if variant == "Self" {
                variant = "SelfValue".into();
            }
            if variants.contains(&variant) {
                let base = variant.clone();
                variant = (2..)
                    .map(|n| format!("{base}{n}"))
                    .find(|v| !variants.contains(v))
                    .unwrap_or(base);
            }
            variants.push(variant.clone());
            let _ = writeln!(out, "    #[pg_enum(rename = {label:?})]");
            let _ = writeln!(out, "    {variant},");
        }
        let _ = writeln!(out, "}}\n");
    }
    for (table, columns) in &tables {
        if let Some(reason) = left_out.get(table) {
            let _ = writeln!(out, "// `{table}` is left out: {reason}.\n");
            continue;
        }
        let _ = writeln!(
            out,
            "#[derive(tabula::Table, Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]"
        );
        let _ = writeln!(out, "#[table({schema_attr}name = {table:?})]");
        let _ = writeln!(out, "pub struct {} {{", struct_names[table]);
        let mut fields: Vec<String> = Vec::new();
        for column in columns {
            let mut attrs: Vec<String> = Vec::new();
            if column.primary_key {
                attrs.push("primary_key".into());
            }
            if column.generated {
                attrs.push("generated".into());
            }
            if column.unique && !column.primary_key {
                attrs.push("unique".into());
            }
            if let Some(parent) = &column.references
                && parent != table
                && let Some(parent_name) = struct_names.get(parent)
                && tables
                    .get(parent)
                    .is_some_and(|cols| cols.iter().any(|c| c.primary_key && c.rust == column.rust))
            {
                attrs.push(format!("belongs_to = {parent_name}"));
            }
            let mut field = field_name(&column.name);
            if fields.contains(&field) {
                let base = field.clone();
                field = (2..)
                    .map(|n| format!("{base}_{n}"))
                    .find(|f| !fields.contains(f))
                    .unwrap_or(base);
            }
            fields.push(field.clone());
            if field != column.name {
                attrs.push(format!("rename = {:?}", column.name));
            }
            if !attrs.is_empty() {
                let _ = writeln!(out, "    #[table({})]", attrs.join(", "));
            }
            let rust = match &column.rust {
                Some(rust) => match enum_names.iter().find(|(e, _)| camel(e) == *rust) {
                    Some((_, name)) => name.clone(),
                    None => rust.clone(),
                },
                None => String::new(),
            };
            let rust = match rust.strip_prefix("Vec<").and_then(|r| r.strip_suffix('>')) {
                Some(inner) => match enum_names.iter().find(|(e, _)| camel(e) == inner) {
                    Some((_, name)) => format!("Vec<{name}>"),
                    None => rust,
                },
                None => rust,
            };
            let ty = match column.not_null {
                true => rust,
                false => format!("Option<{rust}>"),
            };
            let _ = writeln!(out, "    pub {field}: {ty},");
        }
        let _ = writeln!(out, "}}\n");
    }
    Ok(out.trim_end().to_owned() + "\n")
}

/// Names a generated type must not take: they would shadow the prelude's in the
/// generated file (`Option<_>` fields).
const PRELUDE: &[&str] = &[
    "Option",
    "Some",
    "None",
    "Result",
    "Ok",
    "Err",
    "Vec",
    "String",
    "Box",
    "Self",
    "Copy",
    "Clone",
    "Default",
    "Send",
    "Sync",
    "Sized",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "Iterator",
    "IntoIterator",
    "Extend",
    "ToString",
    "ToOwned",
    "Eq",
    "PartialEq",
    "Ord",
    "PartialOrd",
    "Debug",
    "Hash",
    "From",
    "Into",
    "AsRef",
    "AsMut",
    "Unpin",
    "Table",
    "PgEnum",
];

fn rust_type(
    typname: &str,
    typtype: &str,
    enums: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let mapped = match typname {
        "bool" => "bool",
        "int2" => "i16",
        "int4" => "i32",
        "int8" => "i64",
        "float4" => "f32",
        "float8" => "f64",
        "text" | "varchar" | "bpchar" | "citext" | "name" => "String",
        "uuid" => "uuid::Uuid",
        "timestamptz" => "chrono::DateTime<chrono::Utc>",
        "date" => "chrono::NaiveDate",
        "json" | "jsonb" => "serde_json::Value",
        "bytea" => "Vec<u8>",
        "numeric" => "rust_decimal::Decimal",
        _ if typtype == "e" && enums.contains_key(typname) => return Some(camel(typname)),
        _ => return None,
    };
    Some(mapped.to_owned())
}

/// `order_items` → `OrderItem`, `categories` → `Category`, `status` → `Status`.
fn singular(table: &str) -> String {
    let one = if let Some(stem) = table.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = table.strip_suffix("sses") {
        format!("{stem}ss")
    } else if table.ends_with("ss") || table.ends_with("us") {
        table.to_owned()
    } else if let Some(stem) = table.strip_suffix('s') {
        stem.to_owned()
    } else {
        table.to_owned()
    };
    camel(&one)
}

/// `order_items` → `OrderItems`; anything but letters and digits separates words, and
/// a leading digit gets a `T` before it.
fn camel(name: &str) -> String {
    let mut out = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(&chars.as_str().to_lowercase());
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'T');
    }
    out
}

/// A column's field name: itself when it is a plain Rust identifier, else a snake_case
/// spelling (the column keeps its name through `rename`).
fn field_name(column: &str) -> String {
    let plain = column
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && column.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && column.chars().any(|c| c != '_')
        && !KEYWORDS.contains(&column);
    if plain {
        return column.to_owned();
    }
    let mut out: String = column
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() {
            true => c.to_ascii_lowercase(),
            false => '_',
        })
        .collect();
    if out.chars().all(|c| c == '_')
        || out.starts_with(|c: char| c.is_ascii_digit())
        || KEYWORDS.contains(&out.as_str())
    {
        out.insert_str(0, "col_");
    }
    out
}

const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use",
    "where", "while", "abstract", "become", "box", "do", "final", "macro", "override", "priv",
    "typeof", "unsized", "virtual", "yield", "try", "gen",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_rust_names() {
        assert_eq!(singular("profiles"), "Profile");
        assert_eq!(singular("categories"), "Category");
        assert_eq!(singular("order_items"), "OrderItem");
        assert_eq!(singular("status"), "Status");
        assert_eq!(singular("addresses"), "Address");
        assert_eq!(field_name("user_id"), "user_id");
        assert_eq!(field_name("type"), "col_type");
        assert_eq!(field_name("Created At"), "created_at");
        assert_eq!(camel("very-sad"), "VerySad");
        assert_eq!(camel("2fa"), "T2fa");
        assert_eq!(field_name("_"), "col__");
        assert_eq!(field_name("__"), "col___");
    }
}
