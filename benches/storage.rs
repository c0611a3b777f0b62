//! Storage in the same run as its baselines: a 64 KiB download from the cache vs from
//! the store vs reading the object's file straight from the store's folder, and a
//! 100 MiB streamed upload vs writing the same bytes to a file, and the same upload to
//! the test kit's S3-compatible server (moto, in memory) — multipart, 5 MiB parts.

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tabula::storage::{BucketOptions, StorageService, UploadOptions};
use tabula::{CacheConfig, CacheService, Db, DbConfig};

const KEY: &[u8] = b"benchmark signing key, thirty-two bytes";

fn chunks(total: usize) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    futures_util::stream::iter((0..total / (1 << 20)).map(move |_| Ok(chunk.clone())))
}

fn storage(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let root = std::env::temp_dir().join(format!("tabula-bench-store-{}", std::process::id()));
    let s3_server = tabula::testkit::S3Server::start("bench").expect("moto server");
    let (cached, uncached, redis_cached, on_s3) = rt.block_on(async {
        let migrations = tabula::embed_migrations!("migrations").with_builtin();
        let (_, url) = tabula::testkit::database(&migrations)
            .await
            .expect("database");
        let cache = CacheService::in_memory(CacheConfig::default()).expect("cache");
        let with_cache = Db::connect_with(DbConfig::new(url.clone()).cache(cache))
            .await
            .expect("db");
        let without = Db::connect(&url).await.expect("db");
        let redis = CacheService::redis(
            &tabula::testkit::redis_url().expect("redis"),
            CacheConfig::default().prefix(format!("benchstore{}", std::process::id())),
        )
        .expect("redis cache");
        let with_redis = Db::connect_with(DbConfig::new(url.clone()).cache(redis))
            .await
            .expect("db");
        let redis_cached =
            StorageService::local(with_redis, &root, KEY, "http://localhost").expect("storage");
        let cached =
            StorageService::local(with_cache, &root, KEY, "http://localhost").expect("storage");
        let on_s3 = StorageService::s3(
            without.clone(),
            s3_server.options(),
            KEY,
            "http://localhost",
        )
        .expect("s3 storage");
        let uncached =
            StorageService::local(without, &root, KEY, "http://localhost").expect("storage");
        cached
            .create_bucket("bench", BucketOptions::default())
            .await
            .expect("bucket");
        cached
            .upload_file(
                "bench",
                "64k.bin",
                vec![1u8; 64 * 1024],
                UploadOptions::default(),
            )
            .await
            .expect("upload");
        // Warm: the path's mapping, the row, the bytes.
        for service in [&cached, &redis_cached] {
            for _ in 0..3 {
                service
                    .download_file("bench", "64k.bin")
                    .await
                    .expect("warm");
            }
        }
        (cached, uncached, redis_cached, on_s3)
    });
    // The store's own copy of the object (the local store keeps it as a file).
    let file = root.join("bench").join("64k.bin");
    assert_eq!(std::fs::metadata(&file).expect("stored").len(), 64 * 1024);
    let mut group = c.benchmark_group("download_64k");
    group.bench_function("raw_store_read", |b| {
        b.to_async(&rt)
            .iter(|| async { Bytes::from(std::fs::read(&file).expect("read")) })
    });
    group.bench_function("uncached", |b| {
        b.to_async(&rt).iter(|| async {
            uncached
                .download_file("bench", "64k.bin")
                .await
                .expect("download")
        })
    });
    group.bench_function("cached", |b| {
        b.to_async(&rt).iter(|| async {
            cached
                .download_file("bench", "64k.bin")
                .await
                .expect("download")
        })
    });
    // The floor of a download cached in Redis: one GET of the same 64 KiB.
    let raw = rt.block_on(async {
        let client =
            redis::Client::open(tabula::testkit::redis_url().expect("redis")).expect("client");
        let mut raw = client
            .get_multiplexed_async_connection()
            .await
            .expect("raw redis");
        redis::cmd("SET")
            .arg("benchstore:raw")
            .arg(vec![1u8; 64 * 1024])
            .query_async::<()>(&mut raw)
            .await
            .expect("set");
        raw
    });
    group.bench_function("raw_redis_get", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg("benchstore:raw")
                    .query_async(&mut raw)
                    .await
                    .expect("get");
                Bytes::from(bytes)
            }
        })
    });
    group.bench_function("cached_in_redis", |b| {
        b.to_async(&rt).iter(|| async {
            redis_cached
                .download_file("bench", "64k.bin")
                .await
                .expect("download")
        })
    });
    group.finish();

    const SIZE: usize = 100 << 20;
    let mut group = c.benchmark_group("upload_100mib");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(SIZE as u64));
    let file = root.join("direct.bin");
    group.bench_function("direct_file_write", |b| {
        b.to_async(&rt).iter(|| async {
            use futures_util::StreamExt;
            use tokio::io::AsyncWriteExt;
            let mut out = tokio::fs::File::create(&file).await.expect("create");
            let mut body = std::pin::pin!(chunks(SIZE));
            while let Some(chunk) = body.next().await {
                out.write_all(&chunk.expect("chunk")).await.expect("write");
            }
            out.flush().await.expect("flush");
        })
    });
    group.bench_function("storage_upload_stream", |b| {
        b.to_async(&rt).iter(|| async {
            let options = UploadOptions {
                upsert: true,
                ..Default::default()
            };
            uncached
                .upload_stream("bench", "big.bin", chunks(SIZE), options)
                .await
                .expect("upload")
        })
    });
    group.bench_function("storage_upload_stream_to_s3", |b| {
        b.to_async(&rt).iter(|| async {
            let options = UploadOptions {
                upsert: true,
                ..Default::default()
            };
            // Its own name: the database's rows are shared with the local store.
            on_s3
                .upload_stream("bench", "big-on-s3.bin", chunks(SIZE), options)
                .await
                .expect("upload")
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = storage
}
criterion_main!(benches);
