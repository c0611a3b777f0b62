use tabula::Table;

#[derive(Table)]
struct Note {
    #[table(primary_key)]
    id: i64,
    #[table(soft_delete)]
    deleted: bool,
}

fn main() {}
