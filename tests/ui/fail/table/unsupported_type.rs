use std::collections::HashMap;
use tabula::Table;

#[derive(Table)]
struct Profile {
    #[table(primary_key)]
    id: i64,
    tags: HashMap<String, String>,
}

fn main() {}
