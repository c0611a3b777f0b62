//! The options of `#[cached(...)]`: `ttl = N` (whole seconds, required), `stale = N`,
//! `name = "..."`, `key = <expr>`, `tables(Model, ...)`, `tags(<expr>, ...)`,
//! `skip(arg, ...)`.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::{Expr, Ident, LitStr, Path};

use crate::internals::ctxt::Ctxt;
use crate::internals::unknown_word_message;

const TTL: &str = "ttl";
const NAME: &str = "name";
const KEY: &str = "key";
const TABLES: &str = "tables";
const SKIP: &str = "skip";
const STALE: &str = "stale";
const TAGS: &str = "tags";
const KEYS: &[&str] = &[TTL, STALE, NAME, KEY, TABLES, TAGS, SKIP];

pub(crate) struct Options {
    pub(crate) ttl: u64,
    pub(crate) name: Option<LitStr>,
    pub(crate) key: Option<Expr>,
    pub(crate) tables: Vec<Path>,
    pub(crate) skip: Vec<Ident>,
    /// Seconds an expired entry may be served while one caller refreshes it.
    pub(crate) stale: u64,
    /// Expressions over the arguments, each a tag of the call's entry.
    pub(crate) tags: Vec<Expr>,
}

impl Options {
    pub(crate) fn parse(cx: &mut Ctxt, args: TokenStream) -> Option<Options> {
        let mut ttl = None;
        let mut name = None;
        let mut key = None;
        let mut tables = Vec::new();
        let mut skip = Vec::new();
        let mut stale = 0;
        let mut tags = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let parser = syn::meta::parser(|meta: ParseNestedMeta<'_>| {
            let word = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if KEYS.contains(&word.as_str()) && seen.contains(&word) {
                return Err(meta.error(format!("duplicate `{word}` in #[cached(...)]")));
            }
            seen.push(word.clone());
            match word.as_str() {
                TTL => {
                    let lit: syn::LitInt = meta.value()?.parse()?;
                    let seconds: u64 = lit.base10_parse()?;
                    if seconds == 0 {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`ttl` is in whole seconds and must be at least 1",
                        ));
                    }
                    ttl = Some(seconds);
                }
                STALE => {
                    let lit: syn::LitInt = meta.value()?.parse()?;
                    let seconds: u64 = lit.base10_parse()?;
                    if seconds == 0 {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`stale` is in whole seconds and must be at least 1 (leave it out for none)",
                        ));
                    }
                    stale = seconds;
                }
                TAGS => {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let list = content
                        .parse_terminated(<Expr as syn::parse::Parse>::parse, syn::Token![,])?;
                    if list.is_empty() {
                        return Err(meta.error("`tags(...)` needs at least one expression"));
                    }
                    tags.extend(list);
                }
                NAME => name = Some(meta.value()?.parse::<LitStr>()?),
                KEY => key = Some(meta.value()?.parse::<Expr>()?),
                TABLES => meta.parse_nested_meta(|table| {
                    tables.push(table.path.clone());
                    Ok(())
                })?,
                SKIP => meta.parse_nested_meta(|arg| {
                    let ident = arg
                        .path
                        .get_ident()
                        .cloned()
                        .ok_or_else(|| arg.error("expected an argument name"))?;
                    skip.push(ident);
                    Ok(())
                })?,
                _ => {
                    return Err(syn::Error::new_spanned(
                        &meta.path,
                        unknown_word_message("#[cached] option", &word, KEYS),
                    ));
                }
            }
            Ok(())
        });
        if let Err(e) = syn::parse::Parser::parse2(parser, args) {
            cx.push(e);
            return None;
        }
        let Some(ttl) = ttl else {
            cx.push(syn::Error::new(
                Span::call_site(),
                "#[cached] needs `ttl = N` (whole seconds), e.g. #[cached(ttl = 300)]",
            ));
            return None;
        };
        Some(Options {
            ttl,
            name,
            key,
            tables,
            skip,
            stale,
            tags,
        })
    }
}
