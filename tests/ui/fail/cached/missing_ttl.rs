use tabula::cached;

#[cached(name = "x")]
async fn compute(n: i64) -> i64 {
    n * 2
}

fn main() {}
