use tabula::Table;

#[derive(Table)]
struct Profile {
    #[table(primary_kye)]
    id: i64,
}

fn main() {}
