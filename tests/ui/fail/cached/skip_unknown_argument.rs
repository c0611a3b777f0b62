use tabula::cached;

#[cached(ttl = 60, skip(handle))]
async fn compute(n: i64) -> i64 {
    n * 2
}

fn main() {}
