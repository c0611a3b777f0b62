//! The cache against the raw clients, in the same run on a current-thread runtime:
//! a cached read by primary key vs a raw redis GET + decode of the same value; a cached
//! vs an uncached read; a `#[cached]` hit vs a raw GET; the in-process backend's read;
//! a unique finder's hit and cached absences against a row hit; a write to a table
//! nothing caches, without a cache, with one, and with one and a registry window; a
//! user-scoped cached read (Row Level Security) against an unscoped one.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table, cached};
use uuid::Uuid;

#[derive(Table, Debug, Clone, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 3600))]
pub struct Profile {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    #[table(unique)]
    pub username: String,
    pub avatar_url: Option<String>,
    #[table(generated)]
    pub status: String,
    #[table(generated)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[table(generated)]
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A table nothing in this benchmark caches.
#[derive(Table, Debug, Clone)]
#[table(name = "experiences")]
pub struct Experience {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub content: String,
}

/// The same table, with no row cache: its writes need no invalidation of rows.
#[derive(Table, Debug, Clone)]
#[table(name = "profiles")]
pub struct Uncached {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub avatar_url: Option<String>,
}

struct Service;

impl Service {
    #[cached(ttl = 3600)]
    async fn profile(&self, id: Uuid) -> Option<String> {
        Some(id.to_string())
    }
}

fn cache_reads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis_url = tabula::testkit::redis_url().expect("redis");
    let (db, raw, memory_db, id, url) = rt.block_on(async {
        let migrations = tabula::embed_migrations!("migrations").with_builtin();
        let (_, url) = tabula::testkit::database(&migrations)
            .await
            .expect("database");
        let cache =
            CacheService::redis(&redis_url, CacheConfig::default().prefix("bench")).expect("cache");
        cache.install_global();
        let db = Db::connect_with(DbConfig::new(url.clone()).cache(cache))
            .await
            .expect("db");
        let memory = CacheService::in_memory(CacheConfig::default()).expect("memory");
        let memory_db = Db::connect_with(DbConfig::new(url.clone()).cache(memory))
            .await
            .expect("db");
        let p = db
            .create(NewProfile {
                user_id: Uuid::new_v4(),
                username: "bench".into(),
                avatar_url: None,
            })
            .await
            .expect("create");
        let client = redis::Client::open(redis_url.as_str()).expect("client");
        let mut raw = client
            .get_multiplexed_async_connection()
            .await
            .expect("raw redis");
        let json = serde_json::to_vec(&p).expect("encode");
        redis::cmd("SET")
            .arg("bench:raw")
            .arg(json)
            .query_async::<()>(&mut raw)
            .await
            .expect("set");
        (db, raw, memory_db, p.id, url)
    });
    let plain_db = rt.block_on(async { Db::connect(&url).await.expect("db without a cache") });
    // A cache of its own namespace with a registry window: writes to tables nothing
    // caches skip Redis.
    let (registry_db, experience) = rt.block_on(async {
        let cache = CacheService::redis(
            &redis_url,
            CacheConfig::default()
                .prefix("benchreg")
                .registry_window(Duration::from_secs(1)),
        )
        .expect("cache");
        let db = Db::connect_with(DbConfig::new(url.clone()).cache(cache))
            .await
            .expect("db");
        let row = db
            .create(NewExperience {
                user_id: Uuid::new_v4(),
                content: "bench".into(),
            })
            .await
            .expect("experience");
        (db, row.id)
    });

    let mut group = c.benchmark_group("cached_read_by_key");
    group.bench_function("raw_redis_get_decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg("bench:raw")
                    .query_async(&mut raw)
                    .await
                    .expect("get");
                serde_json::from_slice::<Profile>(&bytes).expect("decode")
            }
        })
    });
    group.bench_function("tabula_cached_read", |b| {
        b.to_async(&rt)
            .iter(|| async { db.read::<Profile>(id).await.expect("read").expect("row") })
    });
    group.bench_function("tabula_uncached_read", |b| {
        b.to_async(&rt).iter(|| async {
            db.read_uncached::<Profile>(id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.bench_function("tabula_in_process_cached_read", |b| {
        b.to_async(&rt).iter(|| async {
            memory_db
                .read::<Profile>(id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.finish();

    // Warm: the row, its finder mapping, an absent key and an absent value.
    let missing = Uuid::new_v4();
    rt.block_on(async {
        for _ in 0..2 {
            db.read::<Profile>(id).await.expect("read");
            Profile::by_username(&db, "bench").await.expect("finder");
            db.read::<Profile>(missing).await.expect("absent");
            Profile::by_username(&db, "nobody")
                .await
                .expect("absent finder");
        }
    });
    let mut group = c.benchmark_group("finder_and_absence_hits");
    group.bench_function("row_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { db.read::<Profile>(id).await.expect("read").expect("row") })
    });
    group.bench_function("unique_finder_hit", |b| {
        b.to_async(&rt).iter(|| async {
            Profile::by_username(&db, "bench")
                .await
                .expect("finder")
                .expect("row")
        })
    });
    group.bench_function("absent_key_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { db.read::<Profile>(missing).await.expect("absent") })
    });
    group.bench_function("absent_value_hit", |b| {
        b.to_async(&rt).iter(|| async {
            Profile::by_username(&db, "nobody")
                .await
                .expect("absent finder")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("write_to_an_uncached_table");
    let patch = || ExperiencePatch::default().content("bench".to_owned());
    group.bench_function("no_cache_configured", |b| {
        b.to_async(&rt)
            .iter(|| async { plain_db.update(experience, patch()).await.expect("update") })
    });
    group.bench_function("cache_configured", |b| {
        b.to_async(&rt)
            .iter(|| async { db.update(experience, patch()).await.expect("update") })
    });
    group.bench_function("cache_with_registry_window", |b| {
        b.to_async(&rt).iter(|| async {
            registry_db
                .update(experience, patch())
                .await
                .expect("update")
        })
    });
    group.finish();

    // Row Level Security: the profile's owner reads it through a scoped handle.
    let owner = rt.block_on(async {
        let owner = db
            .read::<Profile>(id)
            .await
            .expect("read")
            .expect("row")
            .user_id;
        for _ in 0..2 {
            db.as_user(owner).read::<Profile>(id).await.expect("scoped");
        }
        owner
    });
    let (scoped, scoped_plain) = (db.as_user(owner), plain_db.as_user(owner));
    let mut group = c.benchmark_group("scoped_cached_read");
    group.bench_function("unscoped_cached_read", |b| {
        b.to_async(&rt)
            .iter(|| async { db.read::<Profile>(id).await.expect("read").expect("row") })
    });
    group.bench_function("scoped_cached_read", |b| {
        b.to_async(&rt).iter(|| async {
            scoped
                .read::<Profile>(id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.bench_function("scoped_uncached_read", |b| {
        b.to_async(&rt).iter(|| async {
            scoped_plain
                .read::<Profile>(id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("memo_hit");
    group.bench_function("raw_redis_get", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg("bench:raw")
                    .query_async(&mut raw)
                    .await
                    .expect("get");
                bytes.len()
            }
        })
    });
    group.bench_function("cached_fn_hit", |b| {
        b.to_async(&rt).iter(|| async { Service.profile(id).await })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = cache_reads
}
criterion_main!(benches);
