use tabula::Table;

#[derive(Table)]
struct Profile {
    id: i64,
    username: String,
}

fn main() {
    // The generated insert shape still exists: no cascade of "cannot find type".
    let _ = NewProfile { id: 1, username: String::new() };
}
