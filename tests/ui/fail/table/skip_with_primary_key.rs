use tabula::Table;

#[derive(Table)]
struct Profile {
    #[table(primary_key, skip)]
    id: i64,
    #[table(primary_key)]
    key: i64,
}

fn main() {}
