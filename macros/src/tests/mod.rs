//! Expansion snapshots: what `#[derive(Table)]` and `#[cached]` generate for fixed
//! inputs, formatted with prettyplease and compared with the files in `snapshots/`,
//! so that a change to generated code shows up in review as a diff of those files.
//!
//! After an intended change, rewrite them with `TABULA_BLESS=1 cargo test -p
//! tabula-macros` and review the diff before committing.

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::quote;

/// Compares `tokens` (a sequence of items) with `snapshots/<name>.rs`, or writes that
/// file when `TABULA_BLESS` is set.
fn assert_snapshot(name: &str, tokens: TokenStream) {
    let file: syn::File = match syn::parse2(tokens.clone()) {
        Ok(file) => file,
        Err(e) => panic!("the expansion of {name} is not a list of items ({e}):\n{tokens}"),
    };
    let actual = prettyplease::unparse(&file);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/tests/snapshots")
        .join(format!("{name}.rs"));
    if std::env::var_os("TABULA_BLESS").is_some() {
        if let Err(e) = std::fs::write(&path, &actual) {
            panic!("writing {}: {e}", path.display());
        }
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let first_difference = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "the expansion of {name} differs from {} from line {}:\n  snapshot: {:?}\n  now:      {:?}\n\
             if the change is intended, run `TABULA_BLESS=1 cargo test -p tabula-macros` and review the diff",
            path.display(),
            first_difference + 1,
            expected.lines().nth(first_difference).unwrap_or("<end>"),
            actual.lines().nth(first_difference).unwrap_or("<end>"),
        );
    }
}

fn derive(input: TokenStream) -> TokenStream {
    let input: syn::DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => panic!("test input: {e}"),
    };
    crate::internals::ctxt::into_tokens(crate::table::derive(&input))
}

#[test]
fn derive_table_of_a_plain_model() {
    assert_snapshot(
        "table_plain",
        derive(quote! {
            #[table(name = "notes", schema = "app")]
            pub struct Note {
                #[table(primary_key, generated)]
                pub id: i64,
                #[table(unique)]
                pub slug: String,
                #[table(rename = "text")]
                pub body: Option<String>,
                #[table(json)]
                pub meta: Meta,
                #[table(soft_delete)]
                pub deleted_at: Option<DateTime<Utc>>,
                #[table(skip)]
                pub scratch: Vec<u8>,
            }
        }),
    );
}

#[test]
fn derive_table_of_a_cached_model() {
    assert_snapshot(
        "table_cached",
        derive(quote! {
            #[table(cache(ttl = 60))]
            pub struct Profile {
                #[table(primary_key, generated)]
                pub id: Uuid,
                pub username: String,
                pub avatar_url: Option<String>,
                #[table(json)]
                pub settings: Option<Settings>,
                #[table(skip)]
                pub scratch: u64,
            }
        }),
    );
}

#[test]
fn derive_table_after_an_error_emits_the_error_and_stubs() {
    assert_snapshot(
        "table_fallback",
        derive(quote! {
            pub struct Note {
                #[table(primary_key)]
                pub id: i64,
                #[table(uniqe)]
                pub slug: String,
            }
        }),
    );
}

#[test]
fn cached_method_and_free_function() {
    let method = crate::cached::cached(
        quote!(ttl = 300, tables(Profile)),
        quote! {
            pub async fn profile(&self, id: i64) -> tabula::Result<Option<Profile>> {
                self.db.read::<Profile>(id).await
            }
        },
    );
    let free = crate::cached::cached(
        quote!(ttl = 5, skip(conn), name = "double"),
        quote! {
            async fn double(conn: &Conn, n: i64) -> i64 {
                let _ = conn;
                n * 2
            }
        },
    );
    assert_snapshot(
        "cached",
        quote! {
            impl Service {
                #method
            }
            #free
        },
    );
}
