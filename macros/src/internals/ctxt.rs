//! Collects every error found while reading the input so the user sees all of them in
//! one compile, instead of fixing them one build at a time.
//!
//! A `Ctxt` must end in [`Ctxt::check`]: dropping it unchecked would lose the errors it
//! holds and let invalid input expand. That is a bug in the macro, not in the user's
//! code, so it is caught by a debug assertion in `Drop` (as serde_derive's `Ctxt`
//! does), which every test of the macros runs.

use std::fmt::Display;

use proc_macro2::TokenStream;
use quote::ToTokens;

#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Option<syn::Error>,
    checked: bool,
}

impl Ctxt {
    /// Records an error spanning `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&mut self, tokens: T, message: M) {
        self.push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error produced by syn.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(existing) => existing.combine(error),
            None => self.errors = Some(error),
        }
    }

    /// Ends collection: `Err` with every recorded error combined, if there was any.
    pub(crate) fn check(mut self) -> Result<(), syn::Error> {
        self.checked = true;
        match self.errors.take() {
            Some(errors) => Err(errors),
            None => Ok(()),
        }
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.errors.is_some()
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        // Not while unwinding: a second panic would abort and hide the first.
        if !std::thread::panicking() {
            debug_assert!(
                self.checked,
                "internal error in tabula-macros: an error context was dropped without `check()`"
            );
        }
    }
}

/// `Err` turned into the tokens that make rustc print it.
pub(crate) fn into_tokens(result: Result<TokenStream, syn::Error>) -> TokenStream {
    result.unwrap_or_else(syn::Error::into_compile_error)
}

#[cfg(test)]
mod tests {
    use super::Ctxt;

    #[test]
    fn check_returns_every_error_combined() {
        let mut cx = Ctxt::default();
        cx.push(syn::Error::new(proc_macro2::Span::call_site(), "first"));
        cx.push(syn::Error::new(proc_macro2::Span::call_site(), "second"));
        let errors = cx.check().expect_err("two errors");
        let messages: Vec<String> = errors.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages, ["first", "second"]);
    }

    #[test]
    fn a_checked_context_drops_quietly() {
        assert!(Ctxt::default().check().is_ok());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "dropped without `check()`")]
    fn dropping_an_unchecked_context_is_a_bug_caught_in_debug_builds() {
        let mut cx = Ctxt::default();
        cx.push(syn::Error::new(proc_macro2::Span::call_site(), "lost"));
        drop(cx);
    }
}
