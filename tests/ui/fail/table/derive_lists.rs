use tabula::Table;

#[derive(Table)]
#[table(derive_new = "Deserialize")]
struct A {
    #[table(primary_key)]
    id: i64,
}

#[derive(Table)]
#[table(derive_patch())]
struct B {
    #[table(primary_key)]
    id: i64,
}

#[derive(Table)]
#[table(derive_patch(NoSuchDerive))]
struct C {
    #[table(primary_key)]
    id: i64,
    name: String,
}

fn main() {}
