use tabula::Table;

#[derive(Table)]
struct Flag {
    #[table(primary_key)]
    id: uuid::Uuid,
    on: bool,
}

async fn extremes(db: tabula::Db) {
    let _ = db.query::<Flag>().max(Flag::ON).await;
    let _ = db.query::<Flag>().min(Flag::ID).await;
}

fn main() {}
