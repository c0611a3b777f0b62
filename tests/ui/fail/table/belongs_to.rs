use tabula::Table;

#[derive(Table)]
struct Parent {
    #[table(primary_key)]
    id: i64,
}

struct NotAModel;

#[derive(Table)]
struct WrongType {
    #[table(primary_key)]
    id: i64,
    #[table(belongs_to = Parent)]
    parent_id: String,
}

#[derive(Table)]
struct NotAParent {
    #[table(primary_key)]
    id: i64,
    #[table(belongs_to = NotAModel)]
    parent_id: i64,
}

#[derive(Table)]
struct NoValue {
    #[table(primary_key)]
    id: i64,
    #[table(belongs_to)]
    parent_id: i64,
}

fn main() {}
