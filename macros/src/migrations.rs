//! `embed_migrations!("dir")`: reads the folder at compile time, relative to the
//! calling crate's `Cargo.toml`, and embeds each file with `include_str!`, so rustc
//! rebuilds the crate when an embedded file is edited. A file *added* to the folder is
//! invisible to rustc: the crate's build script watches the folder with
//! `tabula_build::rerun_if_migrations_change` (stable Rust lets a build script, not a
//! procedural macro, depend on a folder).
//!
//! File names follow `tabula_build::parse_migration_file_name`, the rule
//! `Migrator::from_dir` applies at run time too. Every bad name is reported in one
//! compile, on the folder literal (the only span a file name can have).

use std::path::{Path, PathBuf};

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::LitStr;

use crate::internals::ctxt::Ctxt;

pub(crate) fn embed(dir: &LitStr) -> syn::Result<TokenStream> {
    let root = std::env::var("CARGO_MANIFEST_DIR").map_err(|_| {
        syn::Error::new(
            dir.span(),
            "CARGO_MANIFEST_DIR is not set; build with cargo",
        )
    })?;
    embed_from(&PathBuf::from(root).join(dir.value()), dir.span())
}

/// The expansion for the folder `path`; errors point at `span`.
fn embed_from(path: &Path, span: Span) -> syn::Result<TokenStream> {
    let entries = std::fs::read_dir(path).map_err(|e| {
        syn::Error::new(
            span,
            format!("cannot read migrations folder {}: {e}", path.display()),
        )
    })?;
    let mut ctxt = Ctxt::default();
    let mut files = Vec::new();
    let mut downs: Vec<(i64, String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                ctxt.push(syn::Error::new(
                    span,
                    format!("cannot read migrations folder {}: {e}", path.display()),
                ));
                continue;
            }
        };
        let file = entry.path();
        if !file.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match tabula_build::parse_migration_file(&name) {
            Ok((version, rest, false)) => files.push((version, rest.to_owned(), file)),
            Ok((version, rest, true)) => downs.push((version, rest.to_owned(), file)),
            Err(e) => ctxt.push(syn::Error::new(span, e)),
        }
    }
    for (version, name, _) in &downs {
        if !files.iter().any(|(v, n, _)| v == version && n == name) {
            ctxt.push(syn::Error::new(
                span,
                format!(
                    "down file `{version}_{name}.down.sql` has no migration `{version}_{name}.sql`"
                ),
            ));
        }
    }
    files.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    for pair in files.windows(2).filter(|w| w[0].0 == w[1].0) {
        ctxt.push(syn::Error::new(
            span,
            format!(
                "migrations `{}` and `{}` have the same version {}",
                pair[0].1, pair[1].1, pair[0].0
            ),
        ));
    }
    ctxt.check()?;
    let items = files.iter().map(|(version, name, file)| {
        let file = file.to_string_lossy();
        let down = downs
            .iter()
            .find(|(v, n, _)| v == version && n == name)
            .map(|(_, _, down)| {
                let down = down.to_string_lossy();
                quote! { .with_down(::core::include_str!(#down)) }
            });
        quote! {
            ::tabula::__private::Migration::new(#version, #name, ::core::include_str!(#file)) #down
        }
    });
    Ok(quote! {
        ::tabula::__private::Migrator::embedded(::std::vec![#(#items),*])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(test: &str, files: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tabula-macros-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for file in files {
            std::fs::write(dir.join(file), "SELECT 1").expect("write");
        }
        dir
    }

    #[test]
    fn an_over_long_version_is_named_precisely() {
        let dir = folder("over-long", &["0001_ok.sql", "99999999999999999999_x.sql"]);
        let err = embed_from(&dir, Span::call_site()).expect_err("over-long version");
        let message = err.to_string();
        assert!(
            message.contains("`99999999999999999999_x.sql` has a version too large"),
            "{message}"
        );
        assert!(message.contains("9223372036854775807"), "{message}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_bad_name_is_reported_in_one_compile() {
        let dir = folder(
            "bad-names",
            &[
                "notes.sql",
                "99999999999999999999_x.sql",
                "1_a.sql",
                "01_b.sql",
            ],
        );
        let err = embed_from(&dir, Span::call_site()).expect_err("bad names");
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`notes.sql` is not named"))
        );
        assert!(messages.iter().any(|m| m.contains("version too large")));
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`a` and `b` have the same version 1"))
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_down_file_is_embedded_with_its_migration_and_an_orphan_is_refused() {
        let dir = folder("down", &["0001_a.sql", "0001_a.down.sql", "0002_b.sql"]);
        let expanded = embed_from(&dir, Span::call_site())
            .expect("embed")
            .to_string();
        assert_eq!(expanded.matches("with_down").count(), 1, "{expanded}");
        assert!(expanded.contains("0001_a.down.sql"), "{expanded}");
        std::fs::remove_dir_all(&dir).ok();
        let dir = folder("orphan-down", &["0001_a.sql", "0002_b.down.sql"]);
        let err = embed_from(&dir, Span::call_site()).expect_err("orphan");
        assert!(err.to_string().contains("has no migration"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
