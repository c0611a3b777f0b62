//! Procedural macros of [Tabula](https://docs.rs/tabula). Depend on `tabula`, which
//! re-exports them; generated code only names `::tabula::__private`.

#![warn(missing_docs)]

mod cached;
mod internals;
mod migrations;
mod pg_enum;
mod table;
#[cfg(test)]
mod tests;

use proc_macro::TokenStream;
use syn::{DeriveInput, LitStr, parse_macro_input};

/// Derives `tabula::Table`; documented on the re-export in `tabula`.
#[proc_macro_derive(Table, attributes(table))]
pub fn derive_table(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    internals::ctxt::into_tokens(table::derive(&input)).into()
}

/// Derives `tabula::PgEnum` and the column traits for a fieldless enum; documented on
/// the re-export in `tabula`.
#[proc_macro_derive(PgEnum, attributes(pg_enum))]
pub fn derive_pg_enum(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    internals::ctxt::into_tokens(pg_enum::derive(&input)).into()
}

/// Embeds a migrations folder; documented on the re-export in `tabula`.
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    let dir = parse_macro_input!(input as LitStr);
    internals::ctxt::into_tokens(migrations::embed(&dir)).into()
}

/// Memoizes an async function or method in the cache; documented on the re-export in
/// `tabula`.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, input: TokenStream) -> TokenStream {
    cached::cached(args.into(), input.into()).into()
}
