use tabula::Table;

#[derive(Table)]
#[table(nmae = "profiles")]
struct Profile {
    #[table(primary_key)]
    id: i64,
}

fn main() {}
