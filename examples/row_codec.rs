//! What a row-cache hit costs to decode: a profile row as JSON through its serde
//! impls (how the row cache stored rows before) and in the column codec it uses now.
//! No servers; prints ns per row and the entry sizes.
//!
//! Run with `cargo run --release --example row_codec`.

use std::hint::black_box;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tabula::Table;
use uuid::Uuid;

/// A profile (as in tests/common), with a row cache.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 60))]
struct Profile {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    username: String,
    avatar_url: Option<String>,
    #[table(generated)]
    status: String,
    #[table(generated)]
    created_at: DateTime<Utc>,
    #[table(generated)]
    updated_at: DateTime<Utc>,
}

const ITERATIONS: u32 = 100_000;

fn ns_per_op(mut op: impl FnMut()) -> f64 {
    for _ in 0..ITERATIONS / 10 {
        op(); // warm up
    }
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        op();
    }
    started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
}

fn main() {
    let now = Utc::now();
    let row = Profile {
        id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        username: "ada_lovelace".into(),
        avatar_url: Some("https://cdn.example.invalid/avatars/ada.png".into()),
        status: "active".into(),
        created_at: now,
        updated_at: now,
    };
    let json = serde_json::to_vec(&row).expect("json");
    let binary = row.cache_encode().expect("binary");
    assert_eq!(
        serde_json::from_slice::<Profile>(&json).ok().as_ref(),
        Some(&row)
    );
    assert_eq!(Profile::cache_decode(&binary).as_ref(), Some(&row));

    let json_decode = ns_per_op(|| {
        black_box(serde_json::from_slice::<Profile>(black_box(&json)).ok());
    });
    let binary_decode = ns_per_op(|| {
        black_box(Profile::cache_decode(black_box(&binary)));
    });
    let json_encode = ns_per_op(|| {
        black_box(serde_json::to_vec(black_box(&row)).ok());
    });
    let binary_encode = ns_per_op(|| {
        black_box(black_box(&row).cache_encode());
    });
    println!("profile row, {ITERATIONS} iterations each");
    println!(
        "decode  json {json_decode:7.1} ns/op   codec {binary_decode:7.1} ns/op   ({:.1}x)",
        json_decode / binary_decode
    );
    println!(
        "encode  json {json_encode:7.1} ns/op   codec {binary_encode:7.1} ns/op   ({:.1}x)",
        json_encode / binary_encode
    );
    println!(
        "size    json {:4} bytes        codec {:4} bytes",
        json.len(),
        binary.len()
    );
}
