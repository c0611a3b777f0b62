//! When the input has errors, still define what the user's other code refers to
//! (`New<Model>`, `<Model>Patch`, the column constants) but no trait impls, so rustc
//! reports the one real mistake instead of a cascade of "cannot find type `NewProfile`".

use proc_macro2::TokenStream;

use super::ast::Container;
use super::expand;

pub(crate) fn stub(cont: &Container<'_>) -> TokenStream {
    if !cont.input.generics.params.is_empty() {
        return TokenStream::new();
    }
    expand::items(cont)
}
