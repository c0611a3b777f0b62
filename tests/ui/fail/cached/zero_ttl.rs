use tabula::cached;

#[cached(ttl = 0)]
async fn compute(n: i64) -> i64 {
    n * 2
}

fn main() {}
