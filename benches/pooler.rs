//! A read by primary key through PgBouncer in transaction pooling mode, against the raw
//! client in the same run: what `?pgbouncer=true` (unnamed statements) costs, and what
//! the proxy's hop costs.
//!
//! - direct: raw tokio-postgres with a prepared statement, and Tabula;
//! - through PgBouncer: raw tokio-postgres with an unnamed statement (`query_typed`,
//!   the only way a raw client can work there), and Tabula with `?pgbouncer=true`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use tabula::testkit::PgBouncer;
use tabula::{Db, DbConfig, Table};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;
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

const READ: &str = "SELECT id, user_id, username, avatar_url, status, created_at, updated_at \
                    FROM profiles WHERE id = $1";

fn decode(row: &tokio_postgres::Row) -> Profile {
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

fn read_by_key(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bouncer = PgBouncer::start(2).expect("pgbouncer");
    let (direct, pooled, raw, raw_pooled, id) = rt.block_on(async {
        let migrations = tabula::embed_migrations!("migrations").with_builtin();
        let (direct, url) = tabula::testkit::database(&migrations)
            .await
            .expect("database");
        let name = url.rsplit('/').next().unwrap_or_default().to_owned();
        let pooled = Db::connect_with(DbConfig::new(bouncer.url(&name)).pool_size(1))
            .await
            .expect("through pgbouncer");
        let p = direct
            .create(NewProfile {
                user_id: Uuid::new_v4(),
                username: "pooler".into(),
                avatar_url: None,
            })
            .await
            .expect("create");
        let connect = async |url: &str| {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("raw");
            tokio::spawn(connection);
            client
        };
        let raw = connect(&url).await;
        let raw_pooled = connect(&bouncer.url(&name).replace("?pgbouncer=true", "")).await;
        (direct, pooled, raw, raw_pooled, p.id)
    });
    let prepared = rt.block_on(raw.prepare(READ)).expect("prepare");

    let mut group = c.benchmark_group("read_by_key_pooler");
    group.bench_function("direct_raw_prepared", |b| {
        b.to_async(&rt)
            .iter(|| async { decode(&raw.query_one(&prepared, &[&id]).await.expect("row")) })
    });
    group.bench_function("direct_tabula", |b| {
        b.to_async(&rt).iter(|| async {
            direct
                .read::<Profile>(id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.bench_function("pgbouncer_raw_unnamed", |b| {
        b.to_async(&rt).iter(|| async {
            let row = raw_pooled
                .query_typed_opt(READ, &[(&id, Type::UUID)])
                .await
                .expect("row")
                .expect("row");
            decode(&row)
        })
    });
    group.bench_function("pgbouncer_tabula", |b| {
        b.to_async(&rt).iter(|| async {
            pooled
                .read::<Profile>(id)
                .await
                .expect("read")
                .expect("row")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = read_by_key
}
criterion_main!(benches);
