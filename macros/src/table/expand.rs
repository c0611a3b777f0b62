//! Code generation. Everything the generated code names goes through
//! `::tabula::__private`; locals are prefixed `__`; type errors are spanned onto the
//! user's field type.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::ast::{Container, Field};
use super::check::option_inner;

pub(crate) fn expand(cont: &Container<'_>) -> TokenStream {
    let items = items(cont);
    let impls = impls(cont);
    quote! {
        #items
        #[doc(hidden)]
        const _: () = {
            #impls
        };
    }
}

fn p() -> TokenStream {
    quote!(::tabula::__private)
}

/// `New<Model>`, `<Model>Patch` and the column constants: what user code names.
pub(crate) fn items(cont: &Container<'_>) -> TokenStream {
    let p = p();
    let ident = cont.ident;
    let vis = cont.vis;
    let new_ident = format_ident!("New{}", ident);
    let patch_ident = format_ident!("{}Patch", ident);
    let (table, _) = cont.table_name();

    let new_fields = cont.columns().filter(|f| !f.is_generated()).map(|f| {
        let (fvis, fident, ty) = (f.vis, f.ident, f.ty);
        let doc = format!("Column `{}`.", f.column_name().0);
        quote! { #[doc = #doc] #fvis #fident: #ty }
    });
    let patch_fields = patch_columns(cont).map(|(_, f)| {
        let (fvis, fident, ty) = (f.vis, f.ident, f.ty);
        let doc = if option_inner(ty).is_some() {
            format!(
                "Column `{}`: `None` leaves it, `Some(None)` sets NULL.",
                f.column_name().0
            )
        } else {
            format!(
                "Column `{}`: `None` leaves it unchanged.",
                f.column_name().0
            )
        };
        quote! { #[doc = #doc] #fvis #fident: #p::Option<#ty> }
    });
    // Builder methods: `ProfilePatch::default().username("x").avatar_url(None)` — for
    // a nullable column the argument is the `Option` itself, so no `Some(Some(..))`.
    let patch_setters = patch_columns(cont).filter_map(|(_, f)| {
        // Not where it would shadow what the patch's derives give it (`default`,
        // `clone`, `fmt`): such a field is set directly.
        let name = super::ast::unraw(f.ident).to_string();
        if matches!(name.as_str(), "default" | "clone" | "clone_from" | "fmt") {
            return None;
        }
        let (fvis, fident, ty) = (f.vis, f.ident, f.ty);
        let (name, _) = f.column_name();
        let doc = format!("Sets column `{name}`.");
        Some(quote! {
            #[doc = #doc]
            #[must_use]
            #fvis fn #fident(mut self, value: impl ::core::convert::Into<#ty>) -> Self {
                self.#fident = #p::Option::Some(value.into());
                self
            }
        })
    });
    let consts = cont.columns().enumerate().map(|(i, f)| {
        let c = f.const_ident();
        let ty = f.ty;
        let (name, _) = f.column_name();
        let doc = format!("Column `{name}` of `{table}`.");
        quote! {
            #[doc = #doc]
            pub const #c: #p::Column<#ident, #ty> = #p::Column::new(#i, #name);
        }
    });
    let finders = cont.columns().filter(|f| f.attrs.unique.is_set()).map(|f| {
        let c = f.const_ident();
        let ty = f.ty;
        let name = format_ident!("by_{}", super::ast::unraw(f.ident));
        let (column, _) = f.column_name();
        let doc = format!(
            "The row whose `{column}` is `value` (a unique column), through the row cache when `{table}` has one."
        );
        quote! {
            #[doc = #doc]
            pub async fn #name(
                db: &#p::Db,
                value: impl ::core::convert::Into<#ty>,
            ) -> #p::Result<#p::Option<Self>> {
                db.find_unique(Self::#c, value.into()).await
            }
        }
    });
    let new_doc = format!(
        "A row to insert into `{table}`: every column of [`{ident}`] but the generated ones."
    );
    let patch_doc = format!(
        "A partial update of [`{ident}`]: set fields are written, `None` fields are left unchanged."
    );
    let extra = |slot: &super::attr::Slot<Vec<syn::Path>>| -> Vec<syn::Path> {
        slot.get()
            .map(|(_, paths)| paths.clone())
            .unwrap_or_default()
    };
    let (new_derives, patch_derives) = (
        extra(&cont.attrs.derive_new),
        extra(&cont.attrs.derive_patch),
    );
    // A patch from a request body: a missing field is `None` (left unchanged), and for
    // a nullable column an explicit `null` is `Some(None)` (set NULL) — which serde's
    // own `Option<Option<T>>` cannot tell from missing.
    let patch_serde = patch_derives
        .iter()
        .any(is_deserialize)
        .then(|| quote!(#[serde(default)]));
    // For a column that cannot be NULL, a `null` is an error, not "unchanged". A
    // column the database fills (`generated`) is not taken from a request body.
    // Serialized, an unset field is left out: `null` would read back as "set NULL".
    let patch_serialize = patch_derives.iter().any(is_serialize);
    let patch_fields = patch_fields
        .zip(patch_columns(cont))
        .map(|(field, (_, f))| {
            let with = match option_inner(f.ty) {
                Some(_) => "::tabula::__private::double_option",
                None => "::tabula::__private::present",
            };
            let read = match (patch_serde.is_some(), f.is_generated()) {
                (true, true) => quote!(#[serde(skip_deserializing)]),
                (true, false) => quote!(#[serde(deserialize_with = #with)]),
                (false, _) => TokenStream::new(),
            };
            let write = match patch_serialize {
                true => quote!(#[serde(skip_serializing_if = "::core::option::Option::is_none")]),
                false => TokenStream::new(),
            };
            quote! {
                #read
                #write
                #field
            }
        });
    quote! {
        #[doc = #new_doc]
        #[derive(Debug, Clone, #(#new_derives),*)]
        #vis struct #new_ident {
            #(#new_fields,)*
        }

        #[doc = #patch_doc]
        #[derive(Debug, Clone, Default, #(#patch_derives),*)]
        #patch_serde
        #vis struct #patch_ident {
            #(#patch_fields,)*
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #patch_ident {
            #(#patch_setters)*
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #ident {
            #(#consts)*
            #(#finders)*
        }
    }
}

/// Whether a derive is serde's `Deserialize` (by its last segment).
fn is_deserialize(path: &syn::Path) -> bool {
    path.segments
        .last()
        .is_some_and(|s| s.ident == "Deserialize")
}

/// Whether a derive is serde's `Serialize` (by its last segment).
fn is_serialize(path: &syn::Path) -> bool {
    path.segments.last().is_some_and(|s| s.ident == "Serialize")
}

/// Columns a patch can set, with their index in the metadata: all but the primary key.
fn patch_columns<'c, 'a>(cont: &'c Container<'a>) -> impl Iterator<Item = (usize, &'c Field<'a>)> {
    cont.columns()
        .enumerate()
        .filter(|(_, f)| !f.attrs.primary_key.is_set() && !f.is_soft_delete())
}

fn impls(cont: &Container<'_>) -> TokenStream {
    let p = p();
    let ident = cont.ident;
    let new_ident = format_ident!("New{}", ident);
    let patch_ident = format_ident!("{}Patch", ident);
    let (table, _) = cont.table_name();
    let schema = match cont.schema() {
        Some(lit) => quote!(#p::Option::Some(#lit)),
        None => quote!(#p::Option::None),
    };
    let Some(pk) = cont.primary_key() else {
        return TokenStream::new();
    };
    let pk_ident = pk.ident;
    let pk_ty = pk.ty;
    let pk_index = cont
        .columns()
        .position(|f| f.attrs.primary_key.is_set())
        .unwrap_or(0);

    let type_checks = cont.columns().filter(|f| !f.is_json()).map(|f| {
        let ty = f.ty;
        if f.is_soft_delete() {
            quote_spanned! {ty.span()=>
                #p::assert_soft_delete_column::<#ty>();
            }
        } else if f.attrs.version.is_set() {
            quote_spanned! {ty.span()=>
                #p::assert_version_column::<#ty>();
            }
        } else {
            quote_spanned! {ty.span()=>
                let _ = <#ty as #p::ColumnType>::SQL_TYPE;
            }
        }
    });
    let soft_delete = match cont.columns().position(|f| f.is_soft_delete()) {
        Some(i) => quote!(#p::Option::Some(#i)),
        None => quote!(#p::Option::None),
    };
    let version = match cont.columns().position(|f| f.attrs.version.is_set()) {
        Some(i) => quote!(#p::Option::Some(#i)),
        None => quote!(#p::Option::None),
    };
    let column_meta = cont.columns().map(|f| {
        let (name, _) = f.column_name();
        let field = super::ast::unraw(f.ident);
        let ty = f.ty;
        let primary_key = f.attrs.primary_key.is_set();
        let generated = f.is_generated();
        let json = f.is_json();
        let unique = f.attrs.unique.is_set();
        let (sql_type, nullable) = if json {
            let nullable = option_inner(ty).is_some();
            (quote!("jsonb"), quote!(#nullable))
        } else {
            (
                quote_spanned!(ty.span()=> <#ty as #p::ColumnType>::SQL_TYPE),
                quote_spanned!(ty.span()=> <#ty as #p::ColumnType>::NULLABLE),
            )
        };
        quote! {
            #p::ColumnMeta {
                name: #name,
                field: #field,
                sql_type: #sql_type,
                primary_key: #primary_key,
                generated: #generated,
                nullable: #nullable,
                json: #json,
                unique: #unique,
            }
        }
    });
    let decode_fields = cont.fields.iter().map(|f| {
        let fident = f.ident;
        if f.attrs.skip.is_set() {
            return quote!(#fident: #p::Default::default());
        }
        let index = cont.columns().position(|c| c.ident == f.ident).unwrap_or(0);
        let ty = f.ty;
        let value = match (f.is_json(), option_inner(ty)) {
            (true, Some(inner)) => quote_spanned! {ty.span()=>
                #p::decode_json_opt_column::<Self, #inner>(__row, __at, #index)?
            },
            (true, None) => quote_spanned! {ty.span()=>
                #p::decode_json_column::<Self, #ty>(__row, __at, #index)?
            },
            (false, _) => quote_spanned! {ty.span()=>
                #p::decode_column::<Self, #ty>(__row, __at, #index)?
            },
        };
        quote!(#fident: #value)
    });

    let insert_fields: Vec<&Field<'_>> = cont.columns().filter(|f| !f.is_generated()).collect();
    // Each body that binds field values first names `<T as ColumnType>` itself: rustc
    // then counts a later `T: ColumnType` bound at the same span as implied by it, and
    // the identical errors of several bodies are printed once, so an unsupported field
    // type is one error, not one per use.
    let insert_checks: Vec<TokenStream> = insert_fields
        .iter()
        .copied()
        .filter_map(column_type_check)
        .collect();
    let patch_checks = patch_columns(cont).filter_map(|(_, f)| column_type_check(f));
    let params = insert_fields.iter().map(|f| {
        let fident = f.ident;
        param_expr(f, quote!(&self.#fident))
    });
    let arrays = insert_fields.iter().map(|f| {
        let fident = f.ident;
        let ty = f.ty;
        let span = ty.span();
        match (f.is_json(), option_inner(ty)) {
            (true, Some(_)) => quote_spanned! {span=>
                #p::json_opt_array(__rows, |__r| &__r.#fident)
            },
            (true, None) => quote_spanned! {span=>
                #p::json_array(__rows, |__r| &__r.#fident)
            },
            (false, _) => quote_spanned! {span=>
                #p::column_array::<_, #ty>(__rows, |__r| &__r.#fident)
            },
        }
    });
    let assignments = patch_columns(cont).map(|(index, f)| {
        let fident = f.ident;
        let value = param_expr(f, quote!(__value));
        quote! {
            if let #p::Option::Some(__value) = &self.#fident {
                __out.push((#index, #value));
            }
        }
    });
    let shape = shape_hash(cont, &table);
    let (cache_ttl, cache_near, cache_fns) = match cont.attrs.cache_ttl.get() {
        Some((_, (ttl, near))) => (quote!(#p::Option::Some(#ttl)), *near, cache_fns(cont)),
        None => (quote!(#p::Option::None), true, TokenStream::new()),
    };

    // `belongs_to = Parent`: the relation lives on the child, found through the types.
    let relations = cont.columns().enumerate().filter_map(|(index, f)| {
        let (_, parent) = f.attrs.belongs_to.get()?;
        let (field, ty) = (f.ident, f.ty);
        let key = quote_spanned! {ty.span()=> #p::Option<&<#parent as #p::Table>::Key>};
        // A nullable foreign key (`Option<Key>`) may name no parent.
        let body = match super::check::option_inner(ty) {
            Some(_) => quote_spanned! {ty.span()=> #p::Option::as_ref(&self.#field)},
            None => quote_spanned! {ty.span()=> #p::Option::Some(&self.#field)},
        };
        // Spanned at the parent's name: a type that is no model is an error there.
        let header = quote_spanned! {parent.span()=> impl #p::BelongsTo<#parent> for #ident};
        // Joins go both ways along the relation; a model that refers to itself (a
        // tree) is joined with explicit `on` columns instead, as which side is which
        // is then the query's to say.
        let to_self = parent.is_ident("Self") || parent.is_ident(ident);
        let related = (!to_self).then(|| {
            quote! {
                #[automatically_derived]
                impl #p::Related<#parent> for #ident {
                    const ON: (usize, usize) = (#index, <#parent as #p::Table>::META.primary_key);
                }
                #[automatically_derived]
                impl #p::Related<#ident> for #parent {
                    const ON: (usize, usize) = (<#parent as #p::Table>::META.primary_key, #index);
                }
            }
        });
        Some(quote! {
            #[automatically_derived]
            #header {
                const FOREIGN_KEY: usize = #index;
                fn parent_key(&self) -> #key {
                    #body
                }
            }
            #related
        })
    });

    quote! {
        #(#relations)*

        #[automatically_derived]
        impl #p::Table for #ident {
            type Key = #pk_ty;
            type New = #new_ident;
            type Patch = #patch_ident;

            const META: &'static #p::TableMeta = &#p::TableMeta {
                schema: #schema,
                name: #table,
                columns: &[#(#column_meta),*],
                primary_key: #pk_index,
                soft_delete: #soft_delete,
                version: #version,
                cache_ttl: #cache_ttl,
                cache_near: #cache_near,
                shape: #p::row_shape(#shape),
            };

            fn from_row_at(__row: &#p::Row, __at: usize) -> #p::Result<Self> {
                #(#type_checks)*
                #p::Result::Ok(Self { #(#decode_fields,)* })
            }

            fn key(&self) -> &Self::Key {
                &self.#pk_ident
            }

            fn statements() -> &'static #p::Statements {
                static __STATEMENTS: #p::OnceLock<#p::Statements> = #p::OnceLock::new();
                __STATEMENTS.get_or_init(|| #p::Statements::render(<Self as #p::Table>::META))
            }

            #cache_fns
        }

        #[automatically_derived]
        impl #p::NewRow for #new_ident {
            type Table = #ident;

            fn params(&self) -> #p::Vec<#p::Param<'_>> {
                #(#insert_checks)*
                #p::Vec::from([#(#params),*])
            }

            fn column_arrays(__rows: &[Self]) -> #p::Vec<#p::Box<#p::DynParam<'_>>> {
                #(#insert_checks)*
                #p::Vec::from([#(#arrays),*])
            }
        }

        #[automatically_derived]
        impl #p::Patch for #patch_ident {
            type Table = #ident;

            fn assignments(&self) -> #p::Vec<(usize, #p::Param<'_>)> {
                #(#patch_checks)*
                let mut __out: #p::Vec<(usize, #p::Param<'_>)> = #p::Vec::new();
                #(#assignments)*
                __out
            }
        }
    }
}

/// The row cache's encode / decode / compare for a model with `cache(ttl = …)`: they
/// walk the columns in metadata order, each through its type's `CacheCodec` (`json`
/// fields through their serde, the column's own form), so the model's own serde
/// attributes play no part and it needs no serde derives at all.
fn cache_fns(cont: &Container<'_>) -> TokenStream {
    let p = p();
    let columns: Vec<&Field<'_>> = cont.columns().collect();
    let encode = columns.iter().map(|f| {
        let fident = f.ident;
        let ty = f.ty;
        match (f.is_json(), option_inner(ty)) {
            (true, Some(_)) => {
                quote_spanned!(ty.span()=> #p::encode_json_opt(&self.#fident, &mut __out)?;)
            }
            (true, None) => {
                quote_spanned!(ty.span()=> #p::encode_json(&self.#fident, &mut __out)?;)
            }
            (false, _) => quote_spanned! {ty.span()=>
                <#ty as #p::CacheCodec>::encode(&self.#fident, &mut __out);
            },
        }
    });
    let locals: Vec<_> = (0..columns.len())
        .map(|i| format_ident!("__c{}", i))
        .collect();
    let decode = columns.iter().zip(&locals).map(|(f, local)| {
        let ty = f.ty;
        let value = match (f.is_json(), option_inner(ty)) {
            (true, Some(inner)) => {
                quote_spanned!(ty.span()=> #p::decode_json_opt::<#inner>(&mut __reader))
            }
            (true, None) => quote_spanned!(ty.span()=> #p::decode_json::<#ty>(&mut __reader)),
            (false, _) => {
                quote_spanned!(ty.span()=> <#ty as #p::CacheCodec>::decode(&mut __reader))
            }
        };
        quote!(let #local = #value?;)
    });
    let construct = cont.fields.iter().map(|f| {
        let fident = f.ident;
        match columns.iter().position(|c| c.ident == f.ident) {
            Some(i) => {
                let local = &locals[i];
                quote!(#fident: #local)
            }
            None => quote!(#fident: #p::Default::default()),
        }
    });
    let holds = columns.iter().enumerate().map(|(i, f)| {
        let fident = f.ident;
        let ty = f.ty;
        let same = if f.is_json() {
            quote_spanned!(ty.span()=> #p::same_json::<#ty>(__value, &self.#fident))
        } else {
            quote_spanned! {ty.span()=>
                #p::same_encoding(__value, &self.#fident, <#ty as #p::CacheCodec>::encode)
            }
        };
        quote! {
            #i => match __value.downcast_ref::<#ty>() {
                #p::Option::Some(__value) => #same,
                #p::Option::None => false,
            },
        }
    });
    // A unique column's value names the row too: a finder may have cached that no row
    // holds it (see `Db::find_unique`).
    let unique_names = columns.iter().filter(|f| f.attrs.unique.is_set()).map(|f| {
        let fident = f.ident;
        let (name, _) = f.column_name();
        quote!(#p::unique_name(#name, &self.#fident))
    });
    quote! {
        fn cache_encode(&self) -> #p::Option<#p::Vec<u8>> {
            let mut __out = #p::Vec::new();
            #(#encode)*
            #p::Option::Some(__out)
        }

        fn cache_decode(__bytes: &[u8]) -> #p::Option<Self> {
            let mut __reader = #p::CodecReader::new(__bytes);
            #(#decode)*
            __reader.finish()?;
            #p::Option::Some(Self { #(#construct,)* })
        }

        fn cache_column_holds(&self, __index: usize, __value: &dyn #p::Any) -> bool {
            match __index {
                #(#holds)*
                _ => false,
            }
        }

        fn cache_names(&self) -> #p::Vec<#p::String> {
            #p::vec![
                #p::row_name::<Self>(#p::Table::key(self)),
                #(#unique_names,)*
            ]
        }
    }
}

/// `let _ = <T as ColumnType>::SQL_TYPE;` on the field's type span, for plain (not
/// `json`) columns: the one place an unsupported type is reported.
fn column_type_check(f: &Field<'_>) -> Option<TokenStream> {
    let p = p();
    let ty = f.ty;
    (!f.is_json()).then(|| {
        quote_spanned! {ty.span()=>
            let _ = <#ty as #p::ColumnType>::SQL_TYPE;
        }
    })
}

/// A `&(dyn ToSql + Sync)` for the field value behind `place` (a reference): the value
/// itself (checked to be a `ColumnType`, so a wrong type gets one clear error on the
/// field), or a JSON view of it for `json` fields.
fn param_expr(f: &Field<'_>, place: TokenStream) -> TokenStream {
    let p = p();
    let ty = f.ty;
    let span = ty.span();
    match (f.is_json(), option_inner(ty)) {
        (true, Some(_)) => quote_spanned!(span=> #p::json_opt_param(#place) as #p::Param<'_>),
        (true, None) => quote_spanned!(span=> #p::json_param(#place) as #p::Param<'_>),
        (false, _) => quote_spanned!(span=> #p::column_param::<#ty>(#place)),
    }
}

/// FNV-1a over the table name and every column's name, flags (key, JSON, soft delete)
/// and type tokens: a change to any of them changes the hash.
fn shape_hash(cont: &Container<'_>, table: &str) -> u64 {
    let mut text = String::from(table);
    for f in cont.columns() {
        text.push('|');
        text.push_str(&f.column_name().0);
        text.push(':');
        let ty = f.ty;
        text.push_str(&quote!(#ty).to_string());
        text.push_str(if f.is_json() { ":json" } else { "" });
        text.push_str(if f.attrs.primary_key.is_set() {
            ":pk"
        } else {
            ""
        });
        // Which rows the model sees: a soft-delete model never reads a deleted row, so
        // its entries (rows, absences) must not be another model's over the table.
        text.push_str(if f.is_soft_delete() { ":soft" } else { "" });
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
