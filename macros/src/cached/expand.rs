//! Generates the memoized function and its companions.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ItemFn;
use syn::spanned::Spanned;

use super::args::Options;
use super::item::Function;

pub(crate) fn expand(function: &ItemFn, options: &Options, checked: &Function) -> TokenStream {
    let p = quote!(::tabula::__private);
    let attrs = &function.attrs;
    let vis = &function.vis;
    let sig = &function.sig;
    let block = &function.block;
    let ident = &sig.ident;
    let ttl = options.ttl;
    let stale = options.stale;
    let tag_exprs = &options.tags;
    let tags = quote! {
        let __tabula_tags: ::std::vec::Vec<::std::string::String> =
            ::std::vec![#(::std::string::ToString::to_string(&(#tag_exprs))),*];
    };
    let tables = options
        .tables
        .iter()
        .map(|t| quote_spanned!(t.span()=> <#t as #p::Table>::META));
    let tables = quote!(&[#(#tables),*]);
    let base_name = match &options.name {
        Some(name) => quote!(::std::string::String::from(#name)),
        None if checked.receiver => quote! {
            ::std::format!("{}::{}::{}", ::core::module_path!(), ::std::any::type_name::<Self>(), ::core::stringify!(#ident))
        },
        None => quote!(::std::format!(
            "{}::{}",
            ::core::module_path!(),
            ::core::stringify!(#ident)
        )),
    };
    let spec = quote! {
        let __tabula_spec = #p::MemoSpec { name: #base_name, ttl: #ttl, tables: #tables, stale: #stale };
    };
    let asserts = checked
        .key_args
        .iter()
        .map(|(_, ty)| quote_spanned!(ty.span()=> #p::assert_key_arg::<#ty>();));
    let key_expr = match &options.key {
        Some(key) => quote!(&(#key)),
        None => {
            let refs = checked.key_args.iter().map(|(a, _)| quote!(&#a));
            quote!(&(#(#refs,)*))
        }
    };
    let key = quote! {
        #(#asserts)*
        let __tabula_key = #p::memo_key(&__tabula_spec, #key_expr);
    };
    let (wrap, unwrap) = if checked.returns_result {
        (quote!(#p::OkOnly), quote!(.0))
    } else {
        (quote!(#p::Plain), quote!(.0))
    };
    let memoized = quote! {
        #(#attrs)*
        #vis #sig {
            #spec
            #key
            #tags
            #p::memo(&__tabula_spec, __tabula_key, __tabula_tags, async move { #wrap(async move #block.await) }).await #unwrap
        }
    };

    // Companions: drop one entry (same arguments as the function) or all of them.
    let invalidate = format_ident!("{}_invalidate", ident);
    let clear = format_ident!("{}_clear", ident);
    let receiver = checked.receiver.then(|| quote!(&self,));
    let silence = checked.receiver.then(|| quote!(let _ = self;));
    let params = checked.all_args.iter().map(|(a, ty)| quote!(#a: #ty));
    let unused = checked.all_args.iter().map(|(a, _)| quote!(let _ = &#a;));
    let generics = &sig.generics;
    let where_clause = &sig.generics.where_clause;
    let invalidate_doc =
        format!("Drops the cached result of [`{ident}`](Self::{ident}) for these arguments.");
    let clear_doc = format!("Drops every cached result of `{ident}`.");
    let companions = quote! {
        #[doc = #invalidate_doc]
        #[allow(dead_code, clippy::too_many_arguments)]
        #vis async fn #invalidate #generics (#receiver #(#params),*) #where_clause {
            #silence
            #(#unused)*
            #spec
            #key
            #tags
            #p::memo_invalidate(&__tabula_spec, __tabula_key, __tabula_tags).await
        }

        #[doc = #clear_doc]
        #[allow(dead_code)]
        #vis async fn #clear #generics (#receiver) #where_clause {
            #silence
            #spec
            #p::memo_clear(&__tabula_spec).await
        }
    };
    quote! {
        #memoized
        #companions
    }
}
