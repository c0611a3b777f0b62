use tabula::PgEnum;

#[derive(PgEnum)]
enum WithData {
    Plain,
    Carries(i32),
    Named { x: i32 },
}

#[derive(PgEnum)]
struct NotAnEnum {
    a: i32,
}

#[derive(PgEnum)]
enum Empty {}

#[derive(PgEnum)]
enum Generic<T> {
    A,
    B(std::marker::PhantomData<T>),
}

fn main() {}
