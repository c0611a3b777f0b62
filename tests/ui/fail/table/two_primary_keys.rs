use tabula::Table;

#[derive(Table)]
struct Profile {
    #[table(primary_key)]
    id: i64,
    #[table(primary_key)]
    other: i64,
}

fn main() {}
