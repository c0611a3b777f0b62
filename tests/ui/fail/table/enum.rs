use tabula::Table;

#[derive(Table)]
enum Profile {
    A,
    B,
}

fn main() {}
