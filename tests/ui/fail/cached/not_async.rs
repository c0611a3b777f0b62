use tabula::cached;

#[cached(ttl = 60)]
fn compute(n: i64) -> i64 {
    n * 2
}

fn main() {
    let _ = compute(1);
}
