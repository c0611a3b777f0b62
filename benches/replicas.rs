//! Reads by primary key from 16 concurrent tasks on a multi-thread runtime: a handle on
//! the primary alone against one with a streaming standby as its replica (the test
//! kit's `ReplicaSet`, both servers on this machine), and the same with the handle
//! writing between reads (each read then needs the standby to have replayed the write:
//! the cost of read-your-writes).

use criterion::{Criterion, criterion_group, criterion_main};
use tabula::migrate::{Migration, Migrator};
use tabula::testkit::ReplicaSet;
use tabula::{Db, DbConfig, Table};

#[derive(Table, Debug, Clone)]
#[table(name = "notes")]
pub struct Note {
    #[table(primary_key)]
    pub id: i64,
    pub body: String,
}

const TASKS: i64 = 16;
const READS_PER_TASK: i64 = 20;

async fn reads(db: &Db) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..READS_PER_TASK {
                    let id = (t * READS_PER_TASK + i) % 100 + 1;
                    db.read::<Note>(id).await.expect("read").expect("row");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}

fn concurrent_reads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let set = ReplicaSet::start().expect("primary and standby");
    let (primary, with_replica) = rt.block_on(async {
        let migrator = Migrator::new(vec![Migration::new(
            1,
            "notes",
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL); \
             INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) g;",
        )])
        .expect("migrator");
        let name = set.database(&migrator).await.expect("database");
        let primary = Db::connect_with(DbConfig::new(set.primary_url(&name)).pool_size(16))
            .await
            .expect("primary");
        let with_replica = Db::connect_with(
            DbConfig::new(set.primary_url(&name))
                .replica(set.replica_url(&name))
                .pool_size(16),
        )
        .await
        .expect("with replica");
        (primary, with_replica)
    });
    let mut group = c.benchmark_group("16_tasks_x_20_reads");
    group.bench_function("primary", |b| b.to_async(&rt).iter(|| reads(&primary)));
    group.bench_function("primary_and_replica", |b| {
        b.to_async(&rt).iter(|| reads(&with_replica))
    });
    // A write before every batch: the first read of each batch asks the standby where
    // its replay is, and reads the primary until it has caught up.
    group.bench_function("primary_and_replica_after_a_write", |b| {
        b.to_async(&rt).iter(|| async {
            with_replica
                .update::<Note>(
                    1,
                    NotePatch {
                        body: Some("written".into()),
                    },
                )
                .await
                .expect("write");
            reads(&with_replica).await
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(std::time::Duration::from_secs(8))
        .warm_up_time(std::time::Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = concurrent_reads
}
criterion_main!(benches);
