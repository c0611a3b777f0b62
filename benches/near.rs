//! The near tier (`CacheConfig::near`) against the raw clients, in the same run:
//!
//! - a near hit vs a raw redis GET + serde decode of the same row (current thread);
//! - cached reads by primary key from 16 concurrent tasks: near tier, Redis only,
//!   uncached;
//! - a write (`update`) with the tier on vs off;
//! - the invalidation delay: from a write's return in one handle to the push's arrival
//!   in another with its own connection and tier, p50/p99 over 10,000 writes (printed;
//!   a distribution, not a criterion timing).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use uuid::Uuid;

#[derive(Table, Debug, Clone, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 3600))]
pub struct Profile {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub avatar_url: Option<String>,
    #[table(generated)]
    pub status: String,
    #[table(generated)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[table(generated)]
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

struct Setup {
    near: Db,
    redis_only: Db,
    /// Another "process": its own connection and near tier.
    other: Db,
    raw: redis::aio::MultiplexedConnection,
    ids: Vec<Uuid>,
}

async fn setup(prefix: &str) -> Setup {
    let redis_url = tabula::testkit::redis_url().expect("redis");
    let migrations = tabula::embed_migrations!("migrations").with_builtin();
    let (_, url) = tabula::testkit::database(&migrations)
        .await
        .expect("database");
    let open = async |near: bool| {
        let mut config = CacheConfig::default().prefix(prefix);
        if near {
            config = config.near(64 << 20);
        }
        let cache = CacheService::redis(&redis_url, config).expect("cache");
        Db::connect_with(DbConfig::new(url.clone()).cache(cache))
            .await
            .expect("db")
    };
    let (near, redis_only, other) = (open(true).await, open(false).await, open(true).await);
    let mut ids = Vec::new();
    for i in 0..16 {
        let p = near
            .create(NewProfile {
                user_id: Uuid::new_v4(),
                username: format!("near-bench-{i}"),
                avatar_url: None,
            })
            .await
            .expect("create");
        ids.push(p.id);
    }
    let client = redis::Client::open(redis_url.as_str()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw redis");
    let row = near.read::<Profile>(ids[0]).await.expect("read");
    redis::cmd("SET")
        .arg(format!("{prefix}:raw"))
        .arg(serde_json::to_vec(&row).expect("encode"))
        .query_async::<()>(&mut raw)
        .await
        .expect("set");
    for db in [&near, &redis_only, &other] {
        for id in &ids {
            for _ in 0..3 {
                db.read::<Profile>(*id).await.expect("warm");
            }
        }
    }
    Setup {
        near,
        redis_only,
        other,
        raw,
        ids,
    }
}

fn near_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = rt.block_on(setup("nearbench1"));
    let id = s.ids[0];
    let mut group = c.benchmark_group("near_hit");
    group.bench_function("raw_redis_get_decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = s.raw.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg("nearbench1:raw")
                    .query_async(&mut raw)
                    .await
                    .expect("get");
                serde_json::from_slice::<Profile>(&bytes).expect("decode")
            }
        })
    });
    group.bench_function("tabula_near_hit", |b| {
        b.to_async(&rt).iter(|| async {
            s.near
                .read::<Profile>(id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.bench_function("tabula_redis_hit", |b| {
        b.to_async(&rt).iter(|| async {
            s.redis_only
                .read::<Profile>(id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.finish();
    let stats = s.near.cache().and_then(|c| c.near_stats());
    println!("near tier after near_hit: {stats:?}");
}

fn concurrent_and_writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = rt.block_on(setup("nearbench2"));
    let mut group = c.benchmark_group("sixteen_concurrent_reads");
    let sixteen = async |db: &Db, uncached: bool| {
        join_all(s.ids.iter().map(|id| async move {
            if uncached {
                db.read_uncached::<Profile>(*id).await
            } else {
                db.read::<Profile>(*id).await
            }
        }))
        .await
    };
    group.bench_function("near_tier", |b| {
        b.to_async(&rt).iter(|| sixteen(&s.near, false))
    });
    group.bench_function("redis_only", |b| {
        b.to_async(&rt).iter(|| sixteen(&s.redis_only, false))
    });
    group.bench_function("uncached", |b| {
        b.to_async(&rt).iter(|| sixteen(&s.redis_only, true))
    });
    group.finish();

    let mut group = c.benchmark_group("write_with_tier");
    let mut n = 0u64;
    let mut write = |db: Db| {
        n += 1;
        let (id, name) = (s.ids[(n % 16) as usize], format!("w{n}"));
        async move {
            db.update::<Profile>(
                id,
                ProfilePatch {
                    avatar_url: Some(Some(name)),
                    ..Default::default()
                },
            )
            .await
            .expect("update")
        }
    };
    group.bench_function("near_on", |b| {
        b.to_async(&rt).iter(|| write(s.near.clone()))
    });
    group.bench_function("near_off", |b| {
        b.to_async(&rt).iter(|| write(s.redis_only.clone()))
    });
    group.finish();
}

/// From a write's return in one handle to the first push at another, which has its
/// own connection and tier (a multi-thread runtime drives both, as two processes'
/// runtimes would).
fn invalidation_delay() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = setup("nearbench3").await;
        let heard = || {
            s.other
                .cache()
                .and_then(|c| c.near_stats())
                .map_or(0, |n| n.invalidations)
        };
        let writes = 10_000;
        let first = heard();
        let mut delays = Vec::with_capacity(writes);
        for n in 0..writes {
            let before = heard();
            s.near
                .update::<Profile>(
                    s.ids[n % 16],
                    ProfilePatch {
                        avatar_url: Some(Some(format!("d{n}"))),
                        ..Default::default()
                    },
                )
                .await
                .expect("update");
            let returned = Instant::now();
            while heard() == before {
                assert!(returned.elapsed() < Duration::from_secs(5), "no push");
                tokio::task::yield_now().await;
            }
            delays.push(returned.elapsed());
        }
        // Broadcast tracking sends every change under the prefix: per write, the
        // table's version, the row entry (and its lease, if a reader held one).
        let names = heard() - first;
        println!(
            "invalidation traffic: {names} names pushed for {writes} writes ({:.2} per write)",
            names as f64 / writes as f64
        );
        delays.sort();
        let at = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
        println!(
            "invalidation delay over {writes} writes: p50 {:?}, p99 {:?}, max {:?}",
            at(0.5),
            at(0.99),
            delays[delays.len() - 1]
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = near_hit, concurrent_and_writes
}

fn main() {
    benches();
    invalidation_delay();
    Criterion::default().configure_from_args().final_summary();
}
