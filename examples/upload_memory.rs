//! A 100 MiB upload is streamed, not held: prints how much the peak resident set grew
//! while `upload_stream` stored 100 MiB arriving in 1 MiB chunks (Linux VmHWM).
//!
//! Run with `cargo run --release --example upload_memory`.

use bytes::Bytes;
use tabula::storage::{BucketOptions, StorageService, UploadOptions};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> tabula::Result<()> {
    let migrations = tabula::embed_migrations!("migrations").with_builtin();
    let (db, _) = tabula::testkit::database(&migrations).await?;
    let root = std::env::temp_dir().join(format!("tabula-upload-{}", std::process::id()));
    let storage = StorageService::local(
        db,
        &root,
        b"example signing key, thirty-two bytes",
        "http://localhost",
    )?;
    storage
        .create_bucket("big", BucketOptions::default())
        .await?;
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let body =
        futures_util::stream::iter((0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let before = peak_rss_kib();
    storage
        .upload_stream("big", "100mib.bin", body, UploadOptions::default())
        .await?;
    let after = peak_rss_kib();
    let size = storage.object("big", "100mib.bin").await?.size;
    println!(
        "uploaded {} MiB; peak RSS grew by {} KiB",
        size >> 20,
        after - before
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
