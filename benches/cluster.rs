//! Cached reads by primary key on a Redis Cluster of three masters (the test kit's)
//! against one Redis, in the same run on a current-thread runtime, each beside the raw
//! client's GET on the same server: one row, and `read_many` of 100 rows (which on the
//! cluster is one script per slot, all in flight together).

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
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
}

fn cluster_reads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let single_url = tabula::testkit::redis_url().expect("redis");
    let cluster_urls = tabula::testkit::redis_cluster_urls().expect("redis cluster");
    let (single, cluster, ids, raw_one, raw_cluster) = rt.block_on(async {
        let migrations = tabula::embed_migrations!("migrations").with_builtin();
        let (_, url) = tabula::testkit::database(&migrations)
            .await
            .expect("database");
        let connect = async |cache: CacheService| {
            Db::connect_with(DbConfig::new(url.clone()).cache(cache))
                .await
                .expect("db")
        };
        let single = connect(
            CacheService::redis(&single_url, CacheConfig::default().prefix("bench1"))
                .expect("cache"),
        )
        .await;
        let cluster = connect(
            CacheService::redis_cluster(&cluster_urls, CacheConfig::default().prefix("benchc"))
                .expect("cache"),
        )
        .await;
        let rows = single
            .create_many(
                (0..100)
                    .map(|i| NewProfile {
                        user_id: Uuid::new_v4(),
                        username: format!("bench{i}"),
                        avatar_url: None,
                    })
                    .collect(),
            )
            .await
            .expect("rows");
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        single.warm::<Profile>(&ids).await.expect("warm");
        cluster.warm::<Profile>(&ids).await.expect("warm");
        let raw_one = redis::Client::open(single_url.as_str())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("raw");
        let raw_cluster = redis::cluster::ClusterClient::new(cluster_urls.clone())
            .expect("client")
            .get_async_connection()
            .await
            .expect("raw cluster");
        let json = serde_json::to_vec(&rows[0]).expect("encode");
        let mut set = redis::cmd("SET");
        set.arg("benchraw").arg(json);
        let mut one: redis::aio::MultiplexedConnection = raw_one.clone();
        set.query_async::<()>(&mut one).await.expect("set");
        let mut clustered = raw_cluster.clone();
        set.query_async::<()>(&mut clustered).await.expect("set");
        (single, cluster, ids, raw_one, raw_cluster)
    });

    let mut group = c.benchmark_group("cluster_cached_read_by_key");
    group.bench_function("raw_get_one_redis", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw_one.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg("benchraw")
                    .query_async(&mut conn)
                    .await
                    .expect("get");
                serde_json::from_slice::<Profile>(&bytes).expect("decode")
            }
        })
    });
    group.bench_function("raw_get_cluster", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw_cluster.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg("benchraw")
                    .query_async(&mut conn)
                    .await
                    .expect("get");
                serde_json::from_slice::<Profile>(&bytes).expect("decode")
            }
        })
    });
    group.bench_function("tabula_one_redis", |b| {
        b.to_async(&rt).iter(|| async {
            single
                .read::<Profile>(ids[7])
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.bench_function("tabula_cluster", |b| {
        b.to_async(&rt).iter(|| async {
            cluster
                .read::<Profile>(ids[7])
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("cluster_read_many_100");
    group.bench_function("tabula_one_redis", |b| {
        b.to_async(&rt)
            .iter(|| async { single.read_many::<Profile>(&ids).await.expect("read") })
    });
    group.bench_function("tabula_cluster", |b| {
        b.to_async(&rt)
            .iter(|| async { cluster.read_many::<Profile>(&ids).await.expect("read") })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(std::time::Duration::from_secs(3));
    targets = cluster_reads
}
criterion_main!(benches);
