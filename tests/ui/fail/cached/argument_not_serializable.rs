use tabula::cached;

struct Handle;

#[cached(ttl = 60)]
async fn compute(handle: Handle, n: i64) -> i64 {
    let _ = handle;
    n * 2
}

fn main() {}
