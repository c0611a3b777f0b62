use tabula::Table;

#[derive(Table)]
struct Profile {
    #[table(primary_key = true)]
    id: i64,
    #[table(rename)]
    name: String,
}

fn main() {}
