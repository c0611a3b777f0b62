//! When the input has errors, still define everything the user's other code refers to
//! — `New<Model>`, `<Model>Patch`, the column constants, and stub `Table`, `NewRow` and
//! `Patch` impls — so that rustc reports the one real mistake instead of a cascade of
//! "cannot find type `NewProfile`" and "`Profile: Table` is not satisfied" wherever the
//! model is used (thiserror's `fallback.rs` does the same for `Error`).
//!
//! The stubs' bodies are `unreachable!()`: a crate with a derive error never links, so
//! they never run.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote};

use super::ast::Container;
use super::expand;

pub(crate) fn stub(cont: &Container<'_>) -> TokenStream {
    // A generic struct is itself the error; no impl would match the user's uses.
    if !cont.input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let p = quote!(::tabula::__private);
    let ident = cont.ident;
    let new_ident = format_ident!("New{}", ident);
    let patch_ident = format_ident!("{}Patch", ident);
    let (table, _) = cont.table_name();
    // Without a usable primary key (that is an error of its own), any key type will do.
    let key = cont
        .primary_key()
        .map_or_else(|| quote!(i64), |f| f.ty.to_token_stream());
    let items = expand::items(cont);
    quote! {
        #items
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #p::Table for #ident {
                type Key = #key;
                type New = #new_ident;
                type Patch = #patch_ident;

                const META: &'static #p::TableMeta = &#p::TableMeta {
                    schema: #p::Option::None,
                    name: #table,
                    columns: &[],
                    primary_key: 0,
                    soft_delete: #p::Option::None,
                    version: #p::Option::None,
                    cache_ttl: #p::Option::None,
                    cache_near: true,
                    shape: 0,
                };

                fn from_row_at(_: &#p::Row, _: usize) -> #p::Result<Self> {
                    ::core::unreachable!()
                }

                fn key(&self) -> &Self::Key {
                    ::core::unreachable!()
                }

                fn statements() -> &'static #p::Statements {
                    ::core::unreachable!()
                }
            }

            #[automatically_derived]
            impl #p::NewRow for #new_ident {
                type Table = #ident;

                fn params(&self) -> #p::Vec<#p::Param<'_>> {
                    ::core::unreachable!()
                }

                fn column_arrays(_: &[Self]) -> #p::Vec<#p::Box<#p::DynParam<'_>>> {
                    ::core::unreachable!()
                }
            }

            #[automatically_derived]
            impl #p::Patch for #patch_ident {
                type Table = #ident;

                fn assignments(&self) -> #p::Vec<(usize, #p::Param<'_>)> {
                    ::core::unreachable!()
                }
            }
        };
    }
}
