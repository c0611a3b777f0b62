//! The REST API against the typed API in the same run: `GET
//! /rest/v1/profiles?id=eq.X` through the router (HTTP/1.1 keep-alive on loopback) vs
//! `db.read` of the same row, uncached and cached (the router's reads through the query
//! cache with `Expose::cached`); and 16 concurrent clients' throughput through the
//! router.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tabula::rest::{Expose, RestApi, RestConfig};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;

#[derive(Table, Debug, Clone, Serialize, Deserialize)]
#[table(
    name = "profiles",
    cache(ttl = 3600),
    derive_new(serde::Deserialize),
    derive_patch(serde::Deserialize)
)]
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

/// A keep-alive HTTP/1.1 connection: one GET at a time, the body read by its length.
struct Client {
    stream: BufReader<TcpStream>,
    request: Vec<u8>,
}

impl Client {
    async fn connect(addr: &str, path: &str) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
        Client {
            stream: BufReader::new(stream),
            request,
        }
    }

    async fn get(&mut self) -> Vec<u8> {
        self.stream
            .get_mut()
            .write_all(&self.request)
            .await
            .expect("write");
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.expect("head");
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.expect("body");
        body
    }
}

fn rest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (db, plain, addr, cached_addr, id) = rt.block_on(async {
        let migrations = tabula::embed_migrations!("migrations").with_builtin();
        let (_, url) = tabula::testkit::database(&migrations)
            .await
            .expect("database");
        let cache = CacheService::redis(
            &tabula::testkit::redis_url().expect("redis"),
            CacheConfig::default().prefix("benchrest"),
        )
        .expect("cache");
        let db = Db::connect_with(DbConfig::new(url.clone()).cache(cache).pool_size(16))
            .await
            .expect("db");
        let plain = Db::connect_with(DbConfig::new(url).pool_size(16))
            .await
            .expect("db");
        let row = db
            .create(NewProfile {
                user_id: Uuid::new_v4(),
                username: "bench".into(),
                avatar_url: None,
            })
            .await
            .expect("row");
        // The service role's view (no token: `anon` would see nothing under the
        // example's policies), so the API runs unscoped for the benchmark: the
        // router's own cost is what is measured.
        let app = tabula::rest::router(
            plain.clone(),
            RestApi::new().model::<Profile>(),
            RestConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // The same API with reads through the query cache (Redis).
        let cached_app = tabula::rest::router(
            db.clone(),
            RestApi::new().model_with::<Profile>(Expose::default().cached(3600)),
            RestConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let cached_addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move { axum::serve(listener, cached_app).await });
        (db, plain, addr, cached_addr, row.id)
    });
    // Anonymous requests see no row under the example's policies: the benchmark
    // reads a table without them.
    rt.block_on(async {
        plain
            .execute_batch("ALTER TABLE profiles DISABLE ROW LEVEL SECURITY")
            .await
            .expect("no RLS");
        db.read::<Profile>(id).await.expect("warm");
    });
    let path = format!("/rest/v1/profiles?id=eq.{id}");
    let mut client = rt.block_on(Client::connect(&addr, &path));
    assert!(!rt.block_on(client.get()).is_empty());
    let mut cached_client = rt.block_on(Client::connect(&cached_addr, &path));
    assert_eq!(rt.block_on(cached_client.get()), rt.block_on(client.get()));

    let mut group = c.benchmark_group("rest_read_by_key");
    group.bench_function("db_read_uncached", |b| {
        b.to_async(&rt)
            .iter(|| async { plain.read::<Profile>(id).await.expect("read").expect("row") })
    });
    group.bench_function("db_read_cached", |b| {
        b.to_async(&rt)
            .iter(|| async { db.read::<Profile>(id).await.expect("read").expect("row") })
    });
    group.bench_function("router_get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    client.get().await;
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("router_get_cached", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    cached_client.get().await;
                }
                started.elapsed()
            })
        })
    });
    group.finish();

    const CLIENTS: usize = 16;
    const EACH: usize = 20;
    let mut clients: Vec<Client> = rt.block_on(async {
        let mut all = Vec::new();
        for _ in 0..CLIENTS {
            all.push(Client::connect(&addr, &path).await);
        }
        all
    });
    let mut group = c.benchmark_group("rest_16_clients");
    group.throughput(Throughput::Elements((CLIENTS * EACH) as u64));
    group.bench_function("router_get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let tasks: Vec<_> = clients
                        .drain(..)
                        .map(|mut client| {
                            tokio::spawn(async move {
                                for _ in 0..EACH {
                                    client.get().await;
                                }
                                client
                            })
                        })
                        .collect();
                    for task in tasks {
                        clients.push(task.await.expect("client"));
                    }
                    total += started.elapsed();
                }
                total
            })
        })
    });
    group.bench_function("db_read_uncached", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..CLIENTS)
                        .map(|_| {
                            let plain = plain.clone();
                            tokio::spawn(async move {
                                for _ in 0..EACH {
                                    plain.read::<Profile>(id).await.expect("read");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                    total += started.elapsed();
                }
                total
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = rest
}
criterion_main!(benches);
