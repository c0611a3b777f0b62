use tabula::Table;

#[derive(Table)]
struct User {
    #[table(primary_key)]
    id: i64,
}

#[derive(Table)]
struct Message {
    #[table(primary_key)]
    id: i64,
    #[table(belongs_to = User)]
    sender_id: i64,
    #[table(belongs_to = User)]
    recipient_id: i64,
}

fn main() {}
