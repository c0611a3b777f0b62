use tabula::Table;

#[derive(Table)]
struct Profile<T> {
    #[table(primary_key)]
    id: i64,
    value: T,
}

fn main() {}
