//! `#[cached(ttl = N, ...)]`: parse the options (`args`), check the function (`item`),
//! generate the memoized function and its `_invalidate` / `_clear` companions
//! (`expand`). On any error the original function is emitted unchanged beside the
//! error, so the rest of the crate still type-checks.

mod args;
mod expand;
mod item;

use proc_macro2::TokenStream;

pub(crate) fn cached(args: TokenStream, input: TokenStream) -> TokenStream {
    let function: syn::ItemFn = match syn::parse2(input.clone()) {
        Ok(function) => function,
        Err(_) => {
            let mut out = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[cached] goes on an `async fn` (a free function or a method)",
            )
            .into_compile_error();
            out.extend(input);
            return out;
        }
    };
    let mut cx = crate::internals::ctxt::Ctxt::default();
    let options = args::Options::parse(&mut cx, args);
    let checked = item::Function::check(&mut cx, &function, &options);
    match (cx.check(), options, checked) {
        (Ok(()), Some(options), Some(checked)) => expand::expand(&function, &options, &checked),
        (result, _, _) => {
            let mut out = result
                .err()
                .map(syn::Error::into_compile_error)
                .unwrap_or_default();
            out.extend(quote::quote!(#function));
            out
        }
    }
}
