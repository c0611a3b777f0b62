//! Checks across fields, in their own pass after every attribute has been read.

use std::collections::HashMap;

use super::ast::Container;
use crate::internals::ctxt::Ctxt;

/// PostgreSQL cuts identifiers at 63 bytes, which would silently address another name.
const MAX_IDENTIFIER_BYTES: usize = 63;

pub(crate) fn check(cx: &mut Ctxt, cont: &Container<'_>) {
    check_generics(cx, cont);
    check_identifiers(cx, cont);
    check_primary_key(cx, cont);
    check_field_flags(cx, cont);
    check_relations(cx, cont);
}

/// One relation per parent model: a relation is found through the two types
/// (`BelongsTo<Parent>`), so a second foreign key to the same parent would make every
/// use of it ambiguous.
fn check_relations(cx: &mut Ctxt, cont: &Container<'_>) {
    let mut parents: Vec<String> = Vec::new();
    for field in cont.columns() {
        let Some((_, parent)) = field.attrs.belongs_to.get() else {
            continue;
        };
        let name = quote::ToTokens::to_token_stream(parent).to_string();
        if parents.contains(&name) {
            cx.error_spanned_by(
                parent,
                format!(
                    "a second `belongs_to = {name}`: a model declares one relation per parent \
                     (relations are found by type); join the other foreign key with explicit \
                     columns (`inner_join_on`) and load it with `Db::sql`"
                ),
            );
        }
        parents.push(name);
    }
}

fn check_generics(cx: &mut Ctxt, cont: &Container<'_>) {
    let generics = &cont.input.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        cx.error_spanned_by(
            generics,
            "#[derive(Table)] does not support generic structs: a table has one fixed set of column types",
        );
    }
}

fn check_identifier(cx: &mut Ctxt, what: &str, name: &str, span: proc_macro2::Span) {
    let problem = if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Some(format!(
            "is {} bytes long; PostgreSQL truncates identifiers to {MAX_IDENTIFIER_BYTES} bytes",
            name.len()
        ))
    } else if name.contains('\0') {
        Some("contains a NUL character".to_owned())
    } else {
        None
    };
    if let Some(problem) = problem {
        cx.push(syn::Error::new(
            span,
            format!("{what} `{}` {problem}", name.escape_debug()),
        ));
    }
}

fn check_identifiers(cx: &mut Ctxt, cont: &Container<'_>) {
    let (table, span) = cont.table_name();
    check_identifier(cx, "table name", &table, span);
    if let Some(schema) = cont.schema() {
        check_identifier(cx, "schema name", &schema.value(), schema.span());
    }
    let mut seen: HashMap<String, ()> = HashMap::new();
    for field in cont.columns() {
        let (name, span) = field.column_name();
        check_identifier(cx, "column name", &name, span);
        if seen.insert(name.clone(), ()).is_some() {
            cx.push(syn::Error::new(
                span,
                format!("column `{name}` appears twice in table `{table}`"),
            ));
        }
    }
}

fn check_primary_key(cx: &mut Ctxt, cont: &Container<'_>) {
    let keys: Vec<_> = cont
        .fields
        .iter()
        .filter(|f| f.attrs.primary_key.is_set())
        .collect();
    match keys.as_slice() {
        // A misspelled `primary_key` was already reported; "no primary key" would only
        // repeat it.
        [] if cx.has_errors() => {}
        [] => cx.error_spanned_by(
            cont.ident,
            format!(
                "`{}` has no primary key; mark one field with #[table(primary_key)]",
                cont.ident
            ),
        ),
        [_] => {}
        [_, rest @ ..] => {
            for extra in rest {
                let span = extra.attrs.primary_key.get().map(|(s, _)| *s);
                cx.push(syn::Error::new(
                    span.unwrap_or_else(|| extra.ident.span()),
                    "a second #[table(primary_key)]; Tabula supports exactly one primary key column",
                ));
            }
        }
    }
}

fn check_field_flags(cx: &mut Ctxt, cont: &Container<'_>) {
    for field in cont.fields.iter().filter(|f| f.attrs.unique.is_set()) {
        let span = field
            .attrs
            .unique
            .get()
            .map_or_else(|| field.ident.span(), |(s, _)| *s);
        if field.attrs.json.is_set() {
            cx.push(syn::Error::new(
                span,
                "`unique` finders compare plain column values; a `json` field cannot be one",
            ));
        }
        if field.attrs.primary_key.is_set() {
            cx.push(syn::Error::new(
                span,
                "the primary key is already unique: read it with `db.read`",
            ));
        }
    }
    let soft: Vec<_> = cont
        .fields
        .iter()
        .filter(|f| f.attrs.soft_delete.is_set())
        .collect();
    for extra in soft.iter().skip(1) {
        let span = extra
            .attrs
            .soft_delete
            .get()
            .map_or_else(|| extra.ident.span(), |(s, _)| *s);
        cx.push(syn::Error::new(
            span,
            "a second #[table(soft_delete)]; a table has one deletion-time column",
        ));
    }
    for field in &soft {
        let span = field
            .attrs
            .soft_delete
            .get()
            .map_or_else(|| field.ident.span(), |(s, _)| *s);
        for (word, set) in [
            ("primary_key", field.attrs.primary_key.is_set()),
            ("generated", field.attrs.generated.is_set()),
            ("json", field.attrs.json.is_set()),
        ] {
            if set {
                cx.push(syn::Error::new(
                    span,
                    format!("`soft_delete` cannot be combined with `{word}`"),
                ));
            }
        }
    }
    let versions: Vec<_> = cont
        .fields
        .iter()
        .filter(|f| f.attrs.version.is_set())
        .collect();
    for (i, field) in versions.iter().enumerate() {
        let span = field
            .attrs
            .version
            .get()
            .map_or_else(|| field.ident.span(), |(s, _)| *s);
        if i > 0 {
            cx.push(syn::Error::new(
                span,
                "a second #[table(version)]; a table has one version column",
            ));
        }
        for (word, set) in [
            ("primary_key", field.attrs.primary_key.is_set()),
            ("generated", field.attrs.generated.is_set()),
            ("json", field.attrs.json.is_set()),
            ("soft_delete", field.attrs.soft_delete.is_set()),
            ("unique", field.attrs.unique.is_set()),
        ] {
            if set {
                cx.push(syn::Error::new(
                    span,
                    format!("`version` cannot be combined with `{word}`"),
                ));
            }
        }
    }
    for field in &cont.fields {
        let Some((skip_span, ())) = field.attrs.skip.get() else {
            continue;
        };
        let conflicts = [
            ("primary_key", field.attrs.primary_key.is_set()),
            ("generated", field.attrs.generated.is_set()),
            ("rename", field.attrs.rename.is_set()),
            ("json", field.attrs.json.is_set()),
            ("soft_delete", field.attrs.soft_delete.is_set()),
            ("unique", field.attrs.unique.is_set()),
            ("version", field.attrs.version.is_set()),
            ("belongs_to", field.attrs.belongs_to.is_set()),
        ];
        for (word, set) in conflicts {
            if set {
                cx.push(syn::Error::new(
                    *skip_span,
                    format!(
                        "`skip` cannot be combined with `{word}`: a skipped field is not a column"
                    ),
                ));
            }
        }
    }
}

/// The `T` of a field typed `Option<T>` (by its last path segment).
pub(crate) fn option_inner(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(inner) if args.args.len() == 1 => Some(inner),
        _ => None,
    }
}
