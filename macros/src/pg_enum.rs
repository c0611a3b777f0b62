//! `#[derive(PgEnum)]`: a fieldless Rust enum as a PostgreSQL enum (or a text column).
//!
//! Attributes: `#[pg_enum(name = "...", schema = "...")]` on the enum (the type's
//! name defaults to the enum's in snake_case), `#[pg_enum(rename = "...")]` on a
//! variant (its label defaults to the variant's name in snake_case).

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Data, DeriveInput, Fields, LitStr};

use crate::internals::ctxt::Ctxt;
use crate::internals::unknown_word_message;
use crate::table::snake_case;

const ATTR: &str = "pg_enum";

pub(crate) fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let ident = &input.ident;
    let mut name: Option<LitStr> = None;
    let mut schema: Option<LitStr> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident(ATTR)) {
        let parsed = attr.parse_nested_meta(|meta| {
            let slot = if meta.path.is_ident("name") {
                &mut name
            } else if meta.path.is_ident("schema") {
                &mut schema
            } else {
                let word = meta.path.get_ident().map(ToString::to_string);
                let word = word.unwrap_or_default();
                return Err(meta.error(unknown_word_message(
                    "enum attribute",
                    &word,
                    &["name", "schema"],
                )));
            };
            let lit: LitStr = meta.value()?.parse()?;
            if slot.is_some() {
                return Err(meta.error("given twice"));
            }
            *slot = Some(lit);
            Ok(())
        });
        if let Err(e) = parsed {
            cx.push(e);
        }
    }
    for lit in name.iter().chain(schema.iter()) {
        if let Err(message) = check_name(&lit.value()) {
            cx.error_spanned_by(lit, message);
        }
    }
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(&input.generics, "a PgEnum cannot be generic");
    }
    let Data::Enum(data) = &input.data else {
        cx.error_spanned_by(ident, "#[derive(PgEnum)] is for enums with unit variants");
        cx.check()?;
        return Ok(TokenStream::new());
    };
    if data.variants.is_empty() {
        cx.error_spanned_by(
            ident,
            "a PgEnum needs at least one variant (PostgreSQL enums are never empty)",
        );
    }
    let mut variants = Vec::new();
    let mut labels: Vec<(String, Span)> = Vec::new();
    for variant in &data.variants {
        if !matches!(variant.fields, Fields::Unit) {
            cx.error_spanned_by(&variant.fields, "a PgEnum variant cannot carry data");
        }
        let mut rename: Option<LitStr> = None;
        for attr in variant.attrs.iter().filter(|a| a.path().is_ident(ATTR)) {
            let parsed = attr.parse_nested_meta(|meta| {
                if !meta.path.is_ident("rename") {
                    let word = meta.path.get_ident().map(ToString::to_string);
                    return Err(meta.error(unknown_word_message(
                        "variant attribute",
                        &word.unwrap_or_default(),
                        &["rename"],
                    )));
                }
                let lit: LitStr = meta.value()?.parse()?;
                if rename.replace(lit).is_some() {
                    return Err(meta.error("given twice"));
                }
                Ok(())
            });
            if let Err(e) = parsed {
                cx.push(e);
            }
        }
        let (label, span) = match &rename {
            Some(lit) => (lit.value(), lit.span()),
            None => (snake_case(&variant.ident.to_string()), variant.ident.span()),
        };
        // PostgreSQL's limits on a label: 1 to 63 bytes.
        if label.is_empty() || label.len() > 63 {
            cx.push(syn::Error::new(span, "an enum label is 1 to 63 bytes long"));
        }
        if labels.iter().any(|(l, _)| *l == label) {
            cx.push(syn::Error::new(
                span,
                format!("the label `{label}` is used twice"),
            ));
        }
        labels.push((label, span));
        variants.push(&variant.ident);
    }
    cx.check()?;

    let type_name = name.map_or_else(|| snake_case(&ident.to_string()), |l| l.value());
    let schema_value = schema.as_ref().map(LitStr::value);
    let sql_type = match &schema_value {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&type_name)),
        None => quote_ident(&type_name),
    };
    let array_type = format!("{sql_type}[]");
    let schema_tokens = match &schema_value {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    };
    let label_strs: Vec<&str> = labels.iter().map(|(l, _)| l.as_str()).collect();
    let p = quote!(::tabula::__private);
    let indices = 0..variants.len();
    let indices2 = 0..variants.len();

    Ok(quote! {
        #[automatically_derived]
        impl ::tabula::PgEnum for #ident {
            const TYPE_NAME: &'static str = #type_name;
            const SCHEMA: ::core::option::Option<&'static str> = #schema_tokens;
            const LABELS: &'static [&'static str] = &[#(#label_strs),*];

            fn index(&self) -> usize {
                match self {
                    #(#ident::#variants => #indices,)*
                }
            }

            fn from_index(index: usize) -> ::core::option::Option<Self> {
                match index {
                    #(#indices2 => ::core::option::Option::Some(#ident::#variants),)*
                    _ => ::core::option::Option::None,
                }
            }
        }

        #[automatically_derived]
        impl #p::ToSql for #ident {
            fn to_sql(
                &self,
                _ty: &#p::Type,
                out: &mut #p::BytesMut,
            ) -> ::core::result::Result<#p::IsNull, ::tabula::BoxError> {
                out.extend_from_slice(::tabula::PgEnum::label(self).as_bytes());
                ::core::result::Result::Ok(#p::IsNull::No)
            }
            fn accepts(ty: &#p::Type) -> bool {
                #p::enum_accepts::<Self>(ty)
            }
            #p::to_sql_checked!();
        }

        #[automatically_derived]
        impl<'a> #p::FromSql<'a> for #ident {
            fn from_sql(
                _ty: &#p::Type,
                raw: &'a [u8],
            ) -> ::core::result::Result<Self, ::tabula::BoxError> {
                #p::enum_from_sql::<Self>(raw)
            }
            fn accepts(ty: &#p::Type) -> bool {
                #p::enum_accepts::<Self>(ty)
            }
        }

        #[automatically_derived]
        impl #p::CacheCodec for #ident {
            fn encode(&self, out: &mut ::std::vec::Vec<u8>) {
                #p::CacheCodec::encode(&::tabula::PgEnum::label(self).to_owned(), out)
            }
            fn decode(input: &mut #p::CodecReader<'_>) -> ::core::option::Option<Self> {
                let label = <::std::string::String as #p::CacheCodec>::decode(input)?;
                <Self as ::tabula::PgEnum>::from_label(&label)
            }
        }

        #[automatically_derived]
        impl #p::ColumnType for #ident {
            const SQL_TYPE: &'static str = #sql_type;
            type NonNull = Self;
        }

        #[automatically_derived]
        impl ::tabula::query::Ordered for #ident {}

        #[automatically_derived]
        impl ::tabula::ArrayElement for #ident {
            const ARRAY_TYPE: &'static str = #array_type;
        }
    })
}

/// A type or schema name as the derive accepts it: what PostgreSQL stores for an
/// identifier, at most 63 bytes, without NUL.
fn check_name(name: &str) -> Result<(), &'static str> {
    match name.is_empty() || name.len() > 63 || name.contains('\0') {
        true => Err("a PostgreSQL name is 1 to 63 bytes long, without NUL"),
        false => Ok(()),
    }
}

/// An identifier as SQL text, always quoted: a reserved word or a capital letter is
/// then taken as written.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
