use tabula::PgEnum;

#[derive(PgEnum)]
#[pg_enum(nmae = "mood")]
enum Typo {
    A,
}

#[derive(PgEnum)]
enum Clash {
    #[pg_enum(rename = "b")]
    A,
    B,
}

#[derive(PgEnum)]
#[pg_enum(name = "")]
enum EmptyName {
    A,
    #[pg_enum(rename = "")]
    B,
    #[pg_enum(renam = "c")]
    C,
}

fn main() {}
