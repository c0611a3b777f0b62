//! `embed_migrations!("dir")`: reads the folder at compile time, relative to the
//! calling crate's `Cargo.toml`, and embeds each file with `include_str!` (so an edited
//! file rebuilds the crate).

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::quote;
use syn::LitStr;

pub(crate) fn embed(dir: &LitStr) -> syn::Result<TokenStream> {
    let root = std::env::var("CARGO_MANIFEST_DIR").map_err(|_| {
        syn::Error::new(
            dir.span(),
            "CARGO_MANIFEST_DIR is not set; build with cargo",
        )
    })?;
    let path = PathBuf::from(root).join(dir.value());
    let entries = std::fs::read_dir(&path).map_err(|e| {
        syn::Error::new(
            dir.span(),
            format!("cannot read migrations folder {}: {e}", path.display()),
        )
    })?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let file = entry.path();
        if !file.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((version, rest)) = parse(&name) else {
            return Err(syn::Error::new(
                dir.span(),
                format!("migration file `{name}` is not named `<version>_<name>.sql`"),
            ));
        };
        files.push((
            version,
            rest.to_owned(),
            file.to_string_lossy().into_owned(),
        ));
    }
    files.sort_by_key(|(version, _, _)| *version);
    if let Some(pair) = files.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(syn::Error::new(
            dir.span(),
            format!(
                "migrations `{}` and `{}` have the same version {}",
                pair[0].1, pair[1].1, pair[0].0
            ),
        ));
    }
    let items = files.iter().map(|(version, name, file)| {
        quote! {
            ::tabula::__private::Migration::new(#version, #name, ::core::include_str!(#file))
        }
    });
    Ok(quote! {
        ::tabula::__private::Migrator::embedded(::std::vec![#(#items),*])
    })
}

fn parse(file_name: &str) -> Option<(i64, &str)> {
    let stem = file_name.strip_suffix(".sql")?;
    let (version, name) = stem.split_once('_')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    Some((version.parse().ok()?, name))
}
