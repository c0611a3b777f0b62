// Generated code must not depend on what the user's module calls `Result`, `Option`,
// `Vec`, `String`, `Box`, `Default` or `Any`.
#![allow(dead_code)]

mod shadowing {
    type Result = ();
    type Option = ();
    type Vec = ();
    type Box = ();
    struct Default;
    struct String;
    struct Any;

    #[derive(tabula::Table)]
    pub struct Model {
        #[table(primary_key)]
        pub id: i64,
        pub name: std::string::String,
        pub maybe: core::option::Option<i32>,
    }

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct Doc {
        pub tags: std::vec::Vec<std::string::String>,
    }

    /// A cached model: its row codec is generated code too.
    #[derive(tabula::Table)]
    #[table(cache(ttl = 60))]
    pub struct Cached {
        #[table(primary_key)]
        pub id: i64,
        #[table(unique)]
        pub name: std::string::String,
        pub maybe: core::option::Option<i32>,
        #[table(json)]
        pub doc: Doc,
        #[table(json)]
        pub maybe_doc: core::option::Option<Doc>,
        #[table(skip)]
        pub scratch: std::vec::Vec<u8>,
    }
}

fn main() {}
