// Generated code must not depend on what the user's module calls `Result`, `Option`,
// `Vec`, `String`, `Box` or `Default`.
#![allow(dead_code)]

mod shadowing {
    type Result = ();
    type Option = ();
    type Vec = ();
    type Box = ();
    struct Default;
    struct String;

    #[derive(tabula::Table)]
    pub struct Model {
        #[table(primary_key)]
        pub id: i64,
        pub name: std::string::String,
        pub maybe: core::option::Option<i32>,
    }
}

fn main() {}
