//! The query builder against the same SQL as a raw tokio-postgres prepared statement,
//! in the same run: a filter + order + limit query returning 10 rows; a read by primary
//! key through the builder against `Db::read`; and the builder's own CPU cost per query
//! (build, shape key, template lookup, binding — the SQL is rendered once per shape).

use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use tabula::Table;
use tokio_postgres::NoTls;
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

fn query_ten_rows(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (db, raw) = rt.block_on(async {
        let migrations = tabula::embed_migrations!("migrations").with_builtin();
        let (db, url) = tabula::testkit::database(&migrations)
            .await
            .expect("database");
        let rows = (0..2000)
            .map(|i| NewProfile {
                user_id: Uuid::new_v4(),
                username: format!("u{i:05}"),
                avatar_url: None,
            })
            .collect();
        db.create_many(rows).await.expect("seed");
        db.execute_batch("ANALYZE profiles").await.expect("analyze");
        let (raw, connection) = tokio_postgres::connect(&url, NoTls).await.expect("raw");
        tokio::spawn(connection);
        (db, raw)
    });
    let sql = db
        .query::<Profile>()
        .filter(Profile::STATUS.eq("active"))
        .order_by(Profile::CREATED_AT.desc())
        .limit(10)
        .to_sql()
        .expect("render");
    let stmt = rt.block_on(raw.prepare(&sql)).expect("prepare");
    let mut group = c.benchmark_group("filter_order_limit_10");
    group.bench_function("raw", |b| {
        b.to_async(&rt).iter(|| async {
            let rows = raw.query(&stmt, &[&"active", &10_i64]).await.expect("raw");
            rows.iter()
                .map(|r| Profile {
                    id: r.get(0),
                    user_id: r.get(1),
                    username: r.get(2),
                    avatar_url: r.get(3),
                    status: r.get(4),
                    created_at: r.get(5),
                    updated_at: r.get(6),
                })
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("tabula", |b| {
        b.to_async(&rt).iter(|| async {
            db.query::<Profile>()
                .filter(Profile::STATUS.eq("active"))
                .order_by(Profile::CREATED_AT.desc())
                .limit(10)
                .all()
                .await
                .expect("query")
        })
    });
    group.finish();

    let id = rt
        .block_on(db.query::<Profile>().first())
        .expect("first")
        .expect("a row")
        .id;
    let mut group = c.benchmark_group("read_by_key_builder");
    group.bench_function("db_read", |b| {
        b.to_async(&rt)
            .iter(|| async { db.read::<Profile>(id).await.expect("read") })
    });
    group.bench_function("query_filter_first", |b| {
        b.to_async(&rt).iter(|| async {
            db.query::<Profile>()
                .filter(Profile::ID.eq(id))
                .first()
                .await
                .expect("first")
        })
    });
    group.finish();

    c.bench_function("builder_build_and_bind", |b| {
        b.iter(|| {
            db.query::<Profile>()
                .filter(Profile::STATUS.eq("active"))
                .order_by(Profile::CREATED_AT.desc())
                .limit(10)
                .to_sql()
                .expect("render")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = query_ten_rows
}
criterion_main!(benches);
