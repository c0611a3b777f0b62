//! Tabula against raw tokio-postgres doing the same work, in the same run, on a
//! current-thread runtime: read by primary key, load 10,000 rows into structs, single
//! insert, and a 10,000-row batch insert (against a raw binary COPY).
//!
//! Run with `cargo bench --bench crud`. Only the same-run ratios mean anything: single
//! client latency on small machines swings with CPU idleness.
//!
//! `TABULA_BENCH_CPU=0 cargo bench --bench crud` pins the benchmark — and the
//! PostgreSQL the test kit starts from it, which inherits the pinning — to CPU 0. A
//! round trip then costs the client's CPU plus the server's, with no wake-up of an
//! idle core in between: on a small shared machine the raw client's own read by key
//! swings between ~27 and ~80 µs depending on where the scheduler puts the two
//! processes, and pinned it holds within a few percent, so ratios of a few percent can
//! be told apart. Pinned, a ratio weighs the client's extra CPU against the whole
//! round trip's work on one core.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::pin_mut;
use tabula::{Db, Table};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

#[derive(Table, Debug, Clone)]
#[table(name = "profiles")]
pub struct Profile {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub avatar_url: Option<String>,
    #[table(generated)]
    pub status: String,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
    #[table(generated)]
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, user_id, username, avatar_url, status, created_at, updated_at";

fn raw_decode(row: &tokio_postgres::Row) -> Profile {
    Profile {
        id: row.get(0),
        user_id: row.get(1),
        username: row.get(2),
        avatar_url: row.get(3),
        status: row.get(4),
        created_at: row.get(5),
        updated_at: row.get(6),
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn new_profile() -> NewProfile {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    NewProfile {
        user_id: Uuid::new_v4(),
        username: format!("bench-{n}"),
        avatar_url: Some("https://example.com/a.jpg".into()),
    }
}

struct Setup {
    db: Db,
    raw: Client,
    read_id: Uuid,
    url: String,
}

async fn setup(big_table: bool) -> Setup {
    let migrations = tabula::embed_migrations!("migrations").with_builtin();
    let (db, url) = tabula::testkit::database(&migrations)
        .await
        .expect("database");
    let (raw, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("raw client");
    tokio::spawn(connection);
    let rows = if big_table { 10_000 } else { 100 };
    let created = db
        .create_many((0..rows).map(|_| new_profile()).collect())
        .await
        .expect("seed");
    raw.batch_execute("ANALYZE profiles")
        .await
        .expect("analyze");
    Setup {
        db,
        raw,
        read_id: created[rows / 2].id,
        url,
    }
}

/// Pins this process (every thread, and the servers the test kit starts afterwards)
/// to the CPU named by `TABULA_BENCH_CPU`, once, before anything else runs.
fn pin_when_asked() {
    static PINNED: std::sync::Once = std::sync::Once::new();
    PINNED.call_once(|| {
        let Ok(cpu) = std::env::var("TABULA_BENCH_CPU") else {
            return;
        };
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu, &pid])
            .stdout(std::process::Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => eprintln!("pinned to CPU {cpu}"),
            other => panic!("TABULA_BENCH_CPU={cpu}: taskset failed: {other:?}"),
        }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    pin_when_asked();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Registers `interleaved/tabula` and `interleaved/raw`: the raw client and Tabula in
/// turn, call by call (which goes first alternates), each sample the time of one
/// side's calls alone within the same run — so drift of the machine, or a table
/// growing under inserts, weighs on both alike and cannot make a ratio.
fn interleaved<R, T>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    raw: impl AsyncFn() -> R,
    tabula: impl AsyncFn() -> T,
) {
    for (name, tabula_side) in [("interleaved/tabula", true), ("interleaved/raw", false)] {
        group.bench_function(name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (raw, tabula) = (&raw, &tabula);
                async move {
                    let (mut on_raw, mut on_tabula) = (Duration::ZERO, Duration::ZERO);
                    for i in 0..iters {
                        // Which goes first alternates: the call after another side's
                        // write pays for some of the server's work on it.
                        for raw_now in [i % 2 == 0, i % 2 == 1] {
                            let started = Instant::now();
                            match raw_now {
                                true => {
                                    std::hint::black_box(raw().await);
                                    on_raw += started.elapsed();
                                }
                                false => {
                                    std::hint::black_box(tabula().await);
                                    on_tabula += started.elapsed();
                                }
                            }
                        }
                    }
                    if tabula_side { on_tabula } else { on_raw }
                }
            })
        });
    }
}

fn read_by_key(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup(false));
    let stmt = rt
        .block_on(
            s.raw
                .prepare(&format!("SELECT {COLUMNS} FROM profiles WHERE id = $1")),
        )
        .expect("prepare");
    let mut group = c.benchmark_group("read_by_key");
    group.bench_function("raw", |b| {
        b.to_async(&rt).iter(|| async {
            let row = s
                .raw
                .query_opt(&stmt, &[&s.read_id])
                .await
                .expect("raw read");
            row.map(|r| raw_decode(&r)).expect("row")
        })
    });
    group.bench_function("tabula", |b| {
        b.to_async(&rt).iter(|| async {
            s.db.read::<Profile>(s.read_id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    // The same read through the query builder: its statement is rendered once per
    // shape, then found by a shape key computed without rendering.
    group.bench_function("tabula_query", |b| {
        b.to_async(&rt).iter(|| async {
            s.db.query::<Profile>()
                .filter(Profile::ID.eq(s.read_id))
                .first()
                .await
                .expect("query")
                .expect("row")
        })
    });
    // The raw client and Tabula in turn, call by call (see `interleaved`).
    interleaved(
        &mut group,
        &rt,
        async || {
            let row = s.raw.query_opt(&stmt, &[&s.read_id]).await.expect("raw");
            row.map(|r| raw_decode(&r))
        },
        async || s.db.read::<Profile>(s.read_id).await.expect("read"),
    );
    // The same read with a metrics recorder installed (a registry keyed by name and
    // labels, as exporters keep one): what monitoring costs per call.
    let registry = Registry::default();
    group.bench_function("tabula_with_recorder", |b| {
        let _installed = metrics::set_default_local_recorder(&registry);
        b.to_async(&rt).iter(|| async {
            s.db.read::<Profile>(s.read_id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.finish();
    // (Zero when a filter skipped that function.)
    eprintln!("the recorder saw {} samples", registry.samples());
}

/// A minimal metrics registry: one atomic histogram per key.
#[derive(Default)]
struct Registry {
    histograms: std::sync::Mutex<std::collections::HashMap<metrics::Key, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(std::sync::atomic::AtomicU64);

impl metrics::HistogramFn for Samples {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Registry {
    fn samples(&self) -> u64 {
        self.histograms.lock().map_or(0, |h| {
            h.values()
                .map(|s| s.0.load(std::sync::atomic::Ordering::Relaxed))
                .sum()
        })
    }
}

impl metrics::Recorder for Registry {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        let samples = match self.histograms.lock() {
            Ok(mut h) => h.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        metrics::Histogram::from_arc(samples)
    }
}

/// What monitoring costs per operation: the histogram sample `Db` records (name and
/// three labels), with no recorder and with a registry recorder installed, and the
/// span each operation runs in (no subscriber).
fn monitoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("monitoring_per_call");
    let sample = || {
        metrics::histogram!(
            tabula::monitor::DB_OPERATION_SECONDS,
            "operation" => std::hint::black_box("read"),
            "table" => std::hint::black_box("profiles"),
            "outcome" => "ok"
        )
        .record(std::hint::black_box(0.000_1));
    };
    group.bench_function("metrics_no_recorder", |b| b.iter(sample));
    let registry = Registry::default();
    group.bench_function("metrics_with_recorder", |b| {
        let _installed = metrics::set_default_local_recorder(&registry);
        b.iter(sample)
    });
    // What `Db` records since its keys are built once (`monitor::db_key`): a key of
    // static parts, handed to the recorder.
    static LABELS: [metrics::Label; 4] = [
        metrics::Label::from_static_parts("operation", "read"),
        metrics::Label::from_static_parts("table", "profiles"),
        metrics::Label::from_static_parts("outcome", "ok"),
        metrics::Label::from_static_parts("source", "db"),
    ];
    static METADATA: metrics::Metadata<'static> =
        metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    let key = metrics::Key::from_static_parts(tabula::monitor::DB_OPERATION_SECONDS, &LABELS);
    let interned = || {
        metrics::with_recorder(|r| {
            r.register_histogram(std::hint::black_box(&key), &METADATA)
                .record(std::hint::black_box(0.000_1))
        })
    };
    group.bench_function("interned_key_no_recorder", |b| b.iter(interned));
    group.bench_function("interned_key_with_recorder", |b| {
        let _installed = metrics::set_default_local_recorder(&registry);
        b.iter(interned)
    });
    group.bench_function("span_no_subscriber", |b| {
        b.iter(|| {
            let span = tracing::debug_span!("tabula.db", operation = "read", table = "profiles");
            let _entered = std::hint::black_box(span.enter());
        })
    });
    group.finish();
    eprintln!("the recorder saw {} samples", registry.samples());
}

/// A page that needs a profile and the answers of two more queries: one after the
/// other, then issued together with `tokio::join!` (each takes its own pooled
/// connection, so none waits for another's round trip). On loopback (where the round
/// trip is the servers' CPU, shared by two cores here) and through a link with 1 ms of
/// latency each way, as between an application and a managed database.
fn page_of_three(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup(false));
    let (far, proxy) = rt.block_on(async {
        let config: tokio_postgres::Config = s.url.parse().expect("url");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let proxy = latency_proxy(port, Duration::from_millis(1)).await;
        let url = format!(
            "postgres://{}@127.0.0.1:{proxy}/{}",
            config.get_user().expect("user"),
            config.get_dbname().expect("dbname")
        );
        let db = Db::connect_with(tabula::DbConfig::new(url).pool_size(4))
            .await
            .expect("db behind the slow link");
        (db, proxy)
    });
    let (far_raw, far_stmt) = rt.block_on(async {
        let config: tokio_postgres::Config = s.url.parse().expect("url");
        let url = format!(
            "postgres://{}@127.0.0.1:{}/{}",
            config.get_user().expect("user"),
            proxy,
            config.get_dbname().expect("dbname")
        );
        let (raw, connection) = tokio_postgres::connect(&url, NoTls).await.expect("raw");
        tokio::spawn(connection);
        let stmt = raw
            .prepare(&format!("SELECT {COLUMNS} FROM profiles WHERE id = $1"))
            .await
            .expect("prepare");
        (raw, stmt)
    });
    let mut group = c.benchmark_group("page_of_three_reads");
    group.bench_function("1ms_link/one_read_raw", |b| {
        b.to_async(&rt).iter(|| async {
            far_raw
                .query_opt(&far_stmt, &[&s.read_id])
                .await
                .expect("raw")
                .map(|r| raw_decode(&r))
        })
    });
    group.bench_function("1ms_link/one_read_tabula", |b| {
        b.to_async(&rt)
            .iter(|| async { far.read::<Profile>(s.read_id).await.expect("read") })
    });
    for (link, db) in [("loopback", &s.db), ("1ms_link", &far)] {
        let profile = || db.read::<Profile>(s.read_id);
        let recent = || {
            db.query::<Profile>()
                .order_by(Profile::CREATED_AT.desc())
                .limit(10)
                .all()
        };
        let active = || {
            db.query::<Profile>()
                .filter(Profile::STATUS.eq("active"))
                .count()
        };
        group.bench_function(format!("{link}/sequential"), |b| {
            b.to_async(&rt).iter(|| async {
                let p = profile().await.expect("profile");
                let r = recent().await.expect("recent");
                let n = active().await.expect("count");
                (p, r, n)
            })
        });
        group.bench_function(format!("{link}/join"), |b| {
            b.to_async(&rt).iter(|| async {
                let (p, r, n) = tokio::join!(profile(), recent(), active());
                (p.expect("profile"), r.expect("recent"), n.expect("count"))
            })
        });
    }
    group.finish();
}

/// A TCP proxy to the loopback `port` that delivers every chunk `delay` after it was
/// read, in each direction — a link with that latency and no bandwidth limit. Returns
/// the port it listens on.
async fn latency_proxy(port: u16, delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(server_read), Box::new(client_write)),
            ] {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buf).await {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some((due, bytes)) = rx.recv().await {
                        tokio::time::sleep_until(due.into()).await;
                        if to.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    local
}

fn scoped_read(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup(false));
    let owner: Uuid = rt
        .block_on(s.db.read::<Profile>(s.read_id))
        .expect("read")
        .expect("row")
        .user_id;
    let scoped = s.db.as_user(owner);
    // The floor: the raw client doing what a scoped read must — BEGIN, the role and the
    // claims, the statement under the policy, COMMIT — pipelined in one round trip.
    let read = rt
        .block_on(
            s.raw
                .prepare(&format!("SELECT {COLUMNS} FROM profiles WHERE id = $1")),
        )
        .expect("prepare");
    let set_scope = rt
        .block_on(s.raw.prepare(
            "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
        ))
        .expect("prepare");
    let claims = format!(r#"{{"sub":"{owner}","role":"authenticated"}}"#);
    let mut group = c.benchmark_group("scoped_read_by_key");
    group.bench_function("raw_unscoped", |b| {
        b.to_async(&rt).iter(|| async {
            let row = s
                .raw
                .query_opt(&read, &[&s.read_id])
                .await
                .expect("raw read");
            row.map(|r| raw_decode(&r)).expect("row")
        })
    });
    group.bench_function("raw_scoped_pipelined", |b| {
        b.to_async(&rt).iter(|| async {
            let (role, claims, key) = ("authenticated", claims.as_str(), s.read_id);
            let scope_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&role, &claims];
            let read_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
            let (begun, scope, row, committed) = tokio::join!(
                s.raw.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
                s.raw.execute(&set_scope, &scope_params),
                s.raw.query_opt(&read, &read_params),
                s.raw.batch_execute("COMMIT"),
            );
            begun.expect("begin");
            scope.expect("scope");
            committed.expect("commit");
            raw_decode(&row.expect("raw read").expect("row visible to its owner"))
        })
    });
    group.bench_function("unscoped", |b| {
        b.to_async(&rt).iter(|| async {
            s.db.read::<Profile>(s.read_id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.bench_function("as_user", |b| {
        b.to_async(&rt).iter(|| async {
            scoped
                .read::<Profile>(s.read_id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.finish();
}

fn load_all(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup(true));
    let stmt = rt
        .block_on(s.raw.prepare(&format!("SELECT {COLUMNS} FROM profiles")))
        .expect("prepare");
    let mut group = c.benchmark_group("load_10k_rows");
    group.bench_function("raw", |b| {
        b.to_async(&rt).iter(|| async {
            let rows = s.raw.query(&stmt, &[]).await.expect("raw");
            rows.iter().map(raw_decode).collect::<Vec<_>>()
        })
    });
    group.bench_function("tabula", |b| {
        b.to_async(&rt)
            .iter(|| async { s.db.query::<Profile>().all().await.expect("all") })
    });
    group.finish();
}

fn insert_one(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup(false));
    let stmt = rt
        .block_on(s.raw.prepare(&format!(
            "INSERT INTO profiles (user_id, username, avatar_url) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
        )))
        .expect("prepare");
    let mut group = c.benchmark_group("insert_one");
    group.bench_function("raw", |b| {
        b.to_async(&rt).iter(|| async {
            let p = new_profile();
            let row = s
                .raw
                .query_one(&stmt, &[&p.user_id, &p.username, &p.avatar_url])
                .await
                .expect("raw");
            raw_decode(&row)
        })
    });
    group.bench_function("tabula", |b| {
        b.to_async(&rt)
            .iter(|| async { s.db.create(new_profile()).await.expect("create") })
    });
    // In turn, call by call (see `interleaved`).
    interleaved(
        &mut group,
        &rt,
        async || {
            let p = new_profile();
            let row = s
                .raw
                .query_one(&stmt, &[&p.user_id, &p.username, &p.avatar_url])
                .await
                .expect("raw");
            raw_decode(&row)
        },
        async || s.db.create(new_profile()).await.expect("create"),
    );
    group.finish();
}

/// 100 rows with every column back, through the same statement: the raw client
/// binds the three arrays itself.
fn insert_100(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup(false));
    let stmt = rt
        .block_on(s.raw.prepare(&format!(
            "INSERT INTO profiles (user_id, username, avatar_url) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) RETURNING {COLUMNS}"
        )))
        .expect("prepare");
    let raw = || async {
        let rows: Vec<NewProfile> = (0..100).map(|_| new_profile()).collect();
        let users: Vec<Uuid> = rows.iter().map(|p| p.user_id).collect();
        let names: Vec<&str> = rows.iter().map(|p| p.username.as_str()).collect();
        let avatars: Vec<Option<&str>> = rows.iter().map(|p| p.avatar_url.as_deref()).collect();
        let back = s
            .raw
            .query(&stmt, &[&users, &names, &avatars])
            .await
            .expect("raw");
        back.iter().map(raw_decode).collect::<Vec<_>>()
    };
    let tabula = || async {
        let rows: Vec<NewProfile> = (0..100).map(|_| new_profile()).collect();
        s.db.create_many(rows).await.expect("create_many")
    };
    let mut group = c.benchmark_group("insert_100_rows");
    group.bench_function("raw", |b| b.to_async(&rt).iter(raw));
    group.bench_function("tabula", |b| b.to_async(&rt).iter(tabula));
    // In turn, batch by batch: the table grows under both alike (measured one after
    // the other, the second runs against a larger table and index).
    interleaved(&mut group, &rt, raw, tabula);
    group.finish();
}

fn insert_10k(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup(false));
    let mut group = c.benchmark_group("insert_10k_rows");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (name, work) in [
        ("raw_copy", Work::RawCopy),
        ("tabula_create_many", Work::CreateMany),
        ("tabula_insert_many", Work::InsertMany),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter_custom(|iters| insert_rounds(&s, work, iters))
        });
    }
    group.finish();
}

#[derive(Clone, Copy)]
enum Work {
    RawCopy,
    CreateMany,
    InsertMany,
}

/// `iters` inserts of 10,000 rows, each into an emptied table (untimed): otherwise
/// every function would insert into a table (and unique index) its predecessors grew.
async fn insert_rounds(s: &Setup, work: Work, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        s.raw
            .batch_execute("TRUNCATE profiles CASCADE")
            .await
            .expect("truncate");
        let rows: Vec<NewProfile> = (0..10_000).map(|_| new_profile()).collect();
        let started = Instant::now();
        let n = match work {
            Work::RawCopy => raw_copy(&s.raw, &rows).await,
            Work::CreateMany => s.db.create_many(rows).await.expect("create_many").len() as u64,
            Work::InsertMany => s.db.insert_many(rows).await.expect("insert_many"),
        };
        total += started.elapsed();
        assert_eq!(n, 10_000);
    }
    total
}

/// Binary COPY of `rows` with the raw client, the column types known in advance.
async fn raw_copy(raw: &Client, rows: &[NewProfile]) -> u64 {
    let sink = raw
        .copy_in("COPY profiles (user_id, username, avatar_url) FROM STDIN BINARY")
        .await
        .expect("copy");
    let writer = BinaryCopyInWriter::new(sink, &[Type::UUID, Type::TEXT, Type::TEXT]);
    pin_mut!(writer);
    for p in rows {
        writer
            .as_mut()
            .write(&[&p.user_id, &p.username, &p.avatar_url])
            .await
            .expect("write");
    }
    writer.finish().await.expect("finish")
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = read_by_key, monitoring, page_of_three, scoped_read, load_all, insert_one, insert_100, insert_10k
}
criterion_main!(benches);
