use tabula::Table;

#[derive(Table)]
struct User {
    #[table(primary_key)]
    id: i64,
}

#[derive(Table)]
struct Post {
    #[table(primary_key)]
    id: i64,
    #[table(belongs_to = User)]
    user_id: i64,
    title: String,
}

#[derive(Table)]
struct Tag {
    #[table(primary_key)]
    id: i64,
    label: String,
}

fn main() {}

fn queries(db: tabula::Db) {
    // Tag is not joined: its column cannot be filtered on.
    let _ = db.query::<User>().inner_join::<Post>().filter(Tag::LABEL.eq("x"));
    // No relation is declared between User and Tag.
    let _ = db.query::<User>().inner_join::<Tag>();
    // Joined columns must have the same type.
    let _ = db.query::<User>().inner_join_on(User::ID, Tag::LABEL);
}
