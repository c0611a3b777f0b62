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

pub(crate) fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let Some(cont) = ast::Container::from_ast(&mut cx, input) else {
        return cx.check().map(|()| TokenStream::new());
    };
    check::check(&mut cx, &cont);
    if cx.has_errors() {
        let stub = fallback::stub(&cont);
        return match cx.check() {
            Err(errors) => {
                let mut tokens = errors.into_compile_error();
                tokens.extend(stub);
                Ok(tokens)
            }
            Ok(()) => Ok(stub),
        };
    }
    Ok(expand::expand(&cont))
}
