//! Streaming keeps memory flat: loads 100,000 rows once with `stream()` and once with
//! `all()`, and prints how much the peak resident set grew for each (Linux VmHWM).
//! Streaming runs first, since the peak never goes down.
//!
//! Run with `cargo run --release --example stream_memory`.

use futures_util::StreamExt;
use tabula::Table;

#[derive(Table, Debug)]
#[table(name = "wide_rows")]
struct WideRow {
    #[table(primary_key, generated)]
    id: i64,
    payload: String,
}

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
    let none = tabula::migrate::Migrator::new(Vec::new())?;
    let (db, _) = tabula::testkit::database(&none).await?;
    db.execute_batch("CREATE TABLE wide_rows (id bigserial PRIMARY KEY, payload text NOT NULL)")
        .await?;
    db.execute_batch("INSERT INTO wide_rows (payload) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 100000) g")
        .await?;

    let before = peak_rss_kib();
    let mut stream = db.query::<WideRow>().stream().await?;
    let (mut n, mut bytes) = (0u64, 0usize);
    while let Some(row) = stream.next().await {
        let row = row?;
        n += 1;
        bytes += row.payload.len();
    }
    drop(stream);
    let after_stream = peak_rss_kib();

    let all = db.query::<WideRow>().all().await?;
    let after_all = peak_rss_kib();
    println!(
        "rows: stream {n}, all {} ({} MiB of payload)",
        all.len(),
        bytes / (1024 * 1024)
    );
    println!(
        "peak RSS growth: stream {} KiB, all {} KiB",
        after_stream - before,
        after_all - after_stream
    );
    Ok(())
}
