// A cached model with a field type that is neither a column type nor has a row-cache
// encoding: one error for each missing capability, on the field.
use std::collections::HashMap;
use tabula::Table;

#[derive(Table)]
#[table(cache(ttl = 60))]
struct Profile {
    #[table(primary_key)]
    id: i64,
    tags: HashMap<String, String>,
}

fn main() {}
