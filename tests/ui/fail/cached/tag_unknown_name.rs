use tabula::cached;

#[cached(ttl = 60, tags(format!("user:{missing_arg}")))]
async fn unknown_name(n: i64) -> i64 {
    n
}

fn main() {}
