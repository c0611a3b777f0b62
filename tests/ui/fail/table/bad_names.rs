use tabula::Table;

#[derive(Table)]
#[table(name = "")]
struct Profile {
    #[table(primary_key)]
    id: i64,
    #[table(rename = "a_column_name_that_is_far_too_long_for_postgres_to_keep_whole_xyz")]
    long: String,
    #[table(rename = "id")]
    again: i64,
}

fn main() {}
