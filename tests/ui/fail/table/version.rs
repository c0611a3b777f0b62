use tabula::Table;

#[derive(Table)]
struct Text {
    #[table(primary_key)]
    id: i64,
    #[table(version)]
    version: String,
}

#[derive(Table)]
struct Twice {
    #[table(primary_key)]
    id: i64,
    #[table(version)]
    a: i64,
    #[table(version)]
    b: i64,
}

#[derive(Table)]
struct Key {
    #[table(primary_key, version)]
    id: i64,
}

fn main() {}
