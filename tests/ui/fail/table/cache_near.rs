use tabula::Table;

#[derive(Table)]
#[table(cache(ttl = 60, near = "no"))]
struct Quoted {
    #[table(primary_key)]
    id: i64,
}

#[derive(Table)]
#[table(cache(ttl = 60, near = false, near = true))]
struct Twice {
    #[table(primary_key)]
    id: i64,
}

#[derive(Table)]
#[table(cache(ttl = 60, far = true))]
struct Unknown {
    #[table(primary_key)]
    id: i64,
}

fn main() {}
