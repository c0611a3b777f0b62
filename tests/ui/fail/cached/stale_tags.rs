use tabula::cached;

#[cached(ttl = 60, stale = 0)]
async fn no_window(n: i64) -> i64 {
    n
}

#[cached(ttl = 60, tags())]
async fn no_tags(n: i64) -> i64 {
    n
}

fn main() {}
