//! Checks on the function `#[cached]` is applied to.

use syn::{FnArg, Ident, ItemFn, Pat, Type};

use super::args::Options;
use crate::internals::ctxt::Ctxt;

pub(crate) struct Function {
    /// Whether it takes `self` (a method).
    pub(crate) receiver: bool,
    /// The arguments that make up the key, with their types.
    pub(crate) key_args: Vec<(Ident, Type)>,
    /// Every named argument, for the `_invalidate` companion's signature.
    pub(crate) all_args: Vec<(Ident, Type)>,
    /// Whether the return type is a `Result` (only `Ok` is cached).
    pub(crate) returns_result: bool,
}

impl Function {
    pub(crate) fn check(
        cx: &mut Ctxt,
        function: &ItemFn,
        options: &Option<Options>,
    ) -> Option<Function> {
        let sig = &function.sig;
        if sig.asyncness.is_none() {
            cx.error_spanned_by(
                sig.fn_token,
                "#[cached] needs an `async fn`: the cache is read and filled asynchronously",
            );
        }
        let mut receiver = false;
        let mut all_args = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(_) => receiver = true,
                FnArg::Typed(typed) => match &*typed.pat {
                    Pat::Ident(pat) => all_args.push((pat.ident.clone(), (*typed.ty).clone())),
                    other => cx.error_spanned_by(
                        other,
                        "#[cached] needs plain argument names (no patterns) to build its key",
                    ),
                },
            }
        }
        let skip = options.as_ref().map(|o| o.skip.clone()).unwrap_or_default();
        for ident in &skip {
            if !all_args.iter().any(|(a, _)| a == ident) {
                cx.error_spanned_by(
                    ident,
                    format!("`skip({ident})`: the function has no argument `{ident}`"),
                );
            }
        }
        let key_args = all_args
            .iter()
            .filter(|(a, _)| !skip.contains(a))
            .cloned()
            .collect();
        let returns_result = match &sig.output {
            syn::ReturnType::Type(_, ty) => match &**ty {
                Type::Path(path) => path
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "Result"),
                _ => false,
            },
            syn::ReturnType::Default => false,
        };
        Some(Function {
            receiver,
            key_args,
            all_args,
            returns_result,
        })
    }
}
