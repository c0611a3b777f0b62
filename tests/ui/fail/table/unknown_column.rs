use tabula::Table;

#[derive(Table)]
struct Profile {
    #[table(primary_key)]
    id: i64,
    username: String,
}

fn main() {
    let _ = Profile::USERNAM.eq("x");
}
