//! `#[table(...)]` attributes turned into typed settings. Each setting is a slot that
//! reports a second occurrence, and every unknown key lists the accepted ones.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, LitStr};

use crate::internals::ctxt::Ctxt;
use crate::internals::symbol::*;
use crate::internals::unknown_word_message;

/// A setting that may be given at most once.
pub(crate) struct Slot<T> {
    key: &'static str,
    value: Option<(Span, T)>,
}

impl<T> Slot<T> {
    fn new(key: &'static str) -> Self {
        Slot { key, value: None }
    }

    fn set(&mut self, cx: &mut Ctxt, span: Span, value: T) {
        if self.value.is_some() {
            cx.push(syn::Error::new(
                span,
                format!("duplicate `{}` in #[table(...)]", self.key),
            ));
        } else {
            self.value = Some((span, value));
        }
    }

    pub(crate) fn get(&self) -> Option<&(Span, T)> {
        self.value.as_ref()
    }

    pub(crate) fn is_set(&self) -> bool {
        self.value.is_some()
    }
}

/// Struct-level settings.
pub(crate) struct ContainerAttrs {
    pub(crate) name: Slot<LitStr>,
    pub(crate) schema: Slot<LitStr>,
    /// `cache(ttl = N, near = false)`: seconds, at least 1, and whether a near tier
    /// may answer (default yes).
    pub(crate) cache_ttl: Slot<(u64, bool)>,
    /// `derive_new(Trait, …)`: more derives for `New<Model>`.
    pub(crate) derive_new: Slot<Vec<syn::Path>>,
    /// `derive_patch(Trait, …)`: more derives for `<Model>Patch`.
    pub(crate) derive_patch: Slot<Vec<syn::Path>>,
}

/// Field-level settings.
pub(crate) struct FieldAttrs {
    pub(crate) primary_key: Slot<()>,
    pub(crate) generated: Slot<()>,
    pub(crate) rename: Slot<LitStr>,
    pub(crate) skip: Slot<()>,
    pub(crate) json: Slot<()>,
    pub(crate) soft_delete: Slot<()>,
    pub(crate) unique: Slot<()>,
    pub(crate) version: Slot<()>,
    /// `belongs_to = Parent`: this field is a foreign key to `Parent`'s key.
    pub(crate) belongs_to: Slot<syn::Path>,
}

impl ContainerAttrs {
    pub(crate) fn from_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = ContainerAttrs {
            name: Slot::new(NAME),
            schema: Slot::new(SCHEMA),
            cache_ttl: Slot::new(CACHE),
            derive_new: Slot::new(DERIVE_NEW),
            derive_patch: Slot::new(DERIVE_PATCH),
        };
        for_each_table_meta(cx, attrs, |cx, meta| {
            let span = meta
                .path
                .get_ident()
                .map_or_else(Span::call_site, |i| i.span());
            if meta.path.is_ident(NAME) {
                let lit = string_value(&meta, NAME)?;
                out.name.set(cx, span, lit);
            } else if meta.path.is_ident(SCHEMA) {
                let lit = string_value(&meta, SCHEMA)?;
                out.schema.set(cx, span, lit);
            } else if meta.path.is_ident(CACHE) {
                let ttl = cache_ttl(&meta)?;
                out.cache_ttl.set(cx, span, ttl);
            } else if meta.path.is_ident(DERIVE_NEW) {
                out.derive_new.set(cx, span, derive_list(&meta)?);
            } else if meta.path.is_ident(DERIVE_PATCH) {
                out.derive_patch.set(cx, span, derive_list(&meta)?);
            } else {
                return Err(unknown_key(&meta, "table attribute", STRUCT_KEYS));
            }
            Ok(())
        });
        out
    }
}

impl FieldAttrs {
    pub(crate) fn from_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = FieldAttrs {
            primary_key: Slot::new(PRIMARY_KEY),
            generated: Slot::new(GENERATED),
            rename: Slot::new(RENAME),
            skip: Slot::new(SKIP),
            json: Slot::new(JSON),
            soft_delete: Slot::new(SOFT_DELETE),
            unique: Slot::new(UNIQUE),
            version: Slot::new(VERSION),
            belongs_to: Slot::new(BELONGS_TO),
        };
        for_each_table_meta(cx, attrs, |cx, meta| {
            let span = meta
                .path
                .get_ident()
                .map_or_else(Span::call_site, |i| i.span());
            let flag = |slot: &mut Slot<()>, cx: &mut Ctxt| -> syn::Result<()> {
                if meta.input.peek(syn::Token![=]) || meta.input.peek(syn::token::Paren) {
                    return Err(meta.error(format!(
                        "`{}` takes no value; write `#[table({})]`",
                        slot.key, slot.key
                    )));
                }
                slot.set(cx, span, ());
                Ok(())
            };
            if meta.path.is_ident(PRIMARY_KEY) {
                flag(&mut out.primary_key, cx)
            } else if meta.path.is_ident(GENERATED) {
                flag(&mut out.generated, cx)
            } else if meta.path.is_ident(SKIP) {
                flag(&mut out.skip, cx)
            } else if meta.path.is_ident(JSON) {
                flag(&mut out.json, cx)
            } else if meta.path.is_ident(SOFT_DELETE) {
                flag(&mut out.soft_delete, cx)
            } else if meta.path.is_ident(UNIQUE) {
                flag(&mut out.unique, cx)
            } else if meta.path.is_ident(VERSION) {
                flag(&mut out.version, cx)
            } else if meta.path.is_ident(BELONGS_TO) {
                if !meta.input.peek(syn::Token![=]) {
                    return Err(meta.error(
                        "`belongs_to` names the parent model: write `#[table(belongs_to = Parent)]`",
                    ));
                }
                let parent: syn::Path = meta.value()?.parse()?;
                out.belongs_to.set(cx, span, parent);
                Ok(())
            } else if meta.path.is_ident(RENAME) {
                let lit = string_value(&meta, RENAME)?;
                out.rename.set(cx, span, lit);
                Ok(())
            } else {
                Err(unknown_key(&meta, "field attribute", FIELD_KEYS))
            }
        });
        out
    }
}

/// `cache(ttl = N)`: N whole seconds, at least 1; `near = false` opts the model out of
/// a near tier.
fn cache_ttl(meta: &ParseNestedMeta<'_>) -> syn::Result<(u64, bool)> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error("write `cache(ttl = N)` with N in whole seconds"));
    }
    let mut ttl = None;
    let mut near: Option<bool> = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident(TTL) {
            let lit: syn::LitInt = inner.value()?.parse()?;
            let seconds: u64 = lit.base10_parse()?;
            if seconds == 0 {
                return Err(syn::Error::new(
                    lit.span(),
                    "`ttl` is in whole seconds and must be at least 1",
                ));
            }
            ttl = Some(seconds);
            Ok(())
        } else if inner.path.is_ident(NEAR) {
            let lit: syn::LitBool = inner.value()?.parse()?;
            if near.is_some() {
                return Err(syn::Error::new(lit.span, "`near` is given twice"));
            }
            near = Some(lit.value);
            Ok(())
        } else {
            let error = unknown_key(&inner, "cache option", &[TTL, NEAR]);
            // Consume the value, so the unknown key is the only error.
            if inner.input.peek(syn::Token![=]) {
                inner.value()?.parse::<syn::Expr>()?;
            }
            Err(error)
        }
    })?;
    let ttl = ttl.ok_or_else(|| meta.error("`cache(...)` needs `ttl = N` (whole seconds)"))?;
    Ok((ttl, near.unwrap_or(true)))
}

/// The string of `key = "..."`, with the expected form in the error when it is missing.
fn string_value(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<LitStr> {
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error(format!(
            "`{key}` needs a value: write `#[table({key} = \"...\")]`"
        )));
    }
    meta.value()?.parse()
}

/// Runs `each` on every key of every `#[table(...)]` attribute, recording parse errors.
fn for_each_table_meta(
    cx: &mut Ctxt,
    attrs: &[Attribute],
    mut each: impl FnMut(&mut Ctxt, ParseNestedMeta<'_>) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|a| a.path().is_ident(TABLE)) {
        if let syn::Meta::Path(_) = attr.meta {
            cx.error_spanned_by(attr, "expected `#[table(...)]` with at least one key");
            continue;
        }
        let mut errors = Vec::new();
        let result = attr.parse_nested_meta(|meta| {
            // Keep going after a bad key so that every mistake is reported at once.
            let input = meta.input;
            if let Err(e) = each(cx, meta) {
                errors.push(e);
                skip_value(input);
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.push(e);
        }
        for e in errors {
            cx.push(e);
        }
    }
}

/// Consumes what is left of a rejected key (`= value` or `(...)`), so that one bad key
/// does not turn into a second, confusing "expected `,`" error.
fn skip_value(input: syn::parse::ParseStream<'_>) {
    if input.peek(syn::Token![=]) {
        let _ = input.parse::<syn::Token![=]>();
        let _ = input.parse::<syn::Expr>();
    } else if input.peek(syn::token::Paren) {
        let _ = input.parse::<proc_macro2::Group>();
    }
}

fn unknown_key(meta: &ParseNestedMeta<'_>, kind: &str, accepted: &[&str]) -> syn::Error {
    let word = meta.path.get_ident().map_or_else(
        || quote::ToTokens::to_token_stream(&meta.path).to_string(),
        ToString::to_string,
    );
    syn::Error::new_spanned(&meta.path, unknown_word_message(kind, &word, accepted))
}

/// `derive_new(Deserialize, serde::Serialize)`: the paths of the derives, at least one.
fn derive_list(meta: &ParseNestedMeta<'_>) -> syn::Result<Vec<syn::Path>> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error("expected a list of derives, as in `derive_new(Deserialize)`"));
    }
    let mut paths = Vec::new();
    meta.parse_nested_meta(|inner| {
        if !inner.input.is_empty() && !inner.input.peek(syn::Token![,]) {
            return Err(inner.error("expected the name of a derive macro"));
        }
        paths.push(inner.path);
        Ok(())
    })?;
    if paths.is_empty() {
        return Err(meta.error("expected at least one derive"));
    }
    Ok(paths)
}
