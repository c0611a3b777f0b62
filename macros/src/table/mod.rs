//! `#[derive(Table)]`: parse (`ast`, `attr`), validate (`check`), generate (`expand`);
//! on invalid input, `fallback` still emits a stub so only the real error shows.

mod ast;
mod attr;
mod check;
mod expand;
mod fallback;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::internals::ctxt::Ctxt;

pub(crate) use ast::snake_case;

pub(crate) fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let Some(cont) = ast::Container::from_ast(&mut cx, input) else {
        return cx.check().map(|()| TokenStream::new());
    };
    check::check(&mut cx, &cont);
    match cx.check() {
        Ok(()) => Ok(expand::expand(&cont)),
        // The errors, and a stub of everything the rest of the crate may name, so
        // that only the real mistakes are reported.
        Err(errors) => {
            let mut tokens = errors.into_compile_error();
            tokens.extend(fallback::stub(&cont));
            Ok(tokens)
        }
    }
}
