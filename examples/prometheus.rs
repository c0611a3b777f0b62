//! Tabula's metrics in Prometheus's text format: reads through the row cache and a
//! cached query, then the metrics a Prometheus server would scrape — the cache's hits
//! and misses by table, and the database-operation histogram by `source` (`db`, or
//! `cache` / `near` for reads the cache answered).
//!
//! Run it with `cargo run --example prometheus`. An application serves
//! `handle.render()` on its `/metrics` route; the hit ratio by table is then
//!
//! ```text
//! sum by (table) (rate(tabula_cache_events_total{event="hit"}[5m]))
//!   / sum by (table) (rate(tabula_cache_events_total{event=~"hit|miss"}[5m]))
//! ```

use metrics_exporter_prometheus::PrometheusBuilder;
use tabula::migrate::{Migration, Migrator};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};

#[derive(Table, Debug, Clone)]
#[table(name = "notes", cache(ttl = 60))]
pub struct Note {
    #[table(primary_key, generated)]
    pub id: i64,
    pub body: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> tabula::Result<()> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| tabula::Error::Config(format!("metrics recorder: {e}")))?;

    let migrations = Migrator::new(vec![Migration::new(
        1,
        "notes",
        "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)",
    )])?;
    let (_, url) = tabula::testkit::database(&migrations).await?;
    let cache = CacheService::in_memory(CacheConfig::default())?;
    let db = Db::connect_with(DbConfig::new(url).cache(cache)).await?;

    let note = db
        .create(NewNote {
            body: "hello".into(),
        })
        .await?;
    for _ in 0..5 {
        db.read::<Note>(note.id).await?; // one miss, then hits
        db.query::<Note>().cached(60).count().await?;
    }

    for line in handle.render().lines() {
        if line.starts_with("tabula_cache_events_total")
            || (line.starts_with("tabula_db_operation_seconds_count"))
        {
            println!("{line}");
        }
    }
    Ok(())
}
