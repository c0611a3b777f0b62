use tabula::Table;

#[derive(Table)]
#[table(name = "a", name = "b")]
struct Profile {
    #[table(primary_key, primary_key)]
    id: i64,
}

fn main() {}
