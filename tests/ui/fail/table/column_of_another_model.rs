use tabula::{Db, Table};

#[derive(Table)]
struct Profile {
    #[table(primary_key)]
    id: i64,
}

#[derive(Table)]
struct Document {
    #[table(primary_key)]
    id: i64,
    name: String,
}

async fn run(db: Db) {
    let _ = db.query::<Profile>().filter(Document::NAME.eq("x")).all().await;
}

fn main() {}
