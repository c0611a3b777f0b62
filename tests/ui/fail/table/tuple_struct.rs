use tabula::Table;

#[derive(Table)]
struct Profile(i64, String);

fn main() {}
