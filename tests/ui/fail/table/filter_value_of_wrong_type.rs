use tabula::Table;

#[derive(Table)]
struct Profile {
    #[table(primary_key)]
    id: i64,
    age: i32,
}

fn main() {
    let _ = Profile::AGE.eq("forty");
}
