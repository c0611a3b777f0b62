//! The cache on a Redis Cluster of three masters started by the test kit: rows spread
//! over every master, each row's entry and lease in one slot, and a slot migration
//! under a read/write workload that fails no request and serves nothing stale. (The
//! whole cache contract runs on the cluster too: `tests/cache.rs`, `backends()`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tabula::testkit::RedisCluster;
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use uuid::Uuid;

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 300))]
struct Cached {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    #[table(unique)]
    username: String,
    avatar_url: Option<String>,
}

fn cluster_cache(urls: &[String], prefix: &str) -> CacheService {
    let config = CacheConfig::default()
        .prefix(prefix)
        .deadline(Duration::from_secs(2));
    CacheService::redis_cluster(urls, config).expect("cache")
}

async fn db_with(cache: CacheService) -> Db {
    let (_, url) = common::db_and_url().await;
    Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db")
}

fn new_cached(name: &str) -> NewCached {
    NewCached {
        user_id: Uuid::new_v4(),
        username: name.into(),
        avatar_url: None,
    }
}

/// Changes a row behind the cache's back: a read that still answers the old value
/// came from the cache.
async fn poke(db: &Db, id: Uuid, avatar: &str) {
    let avatar = avatar.to_owned();
    db.with_client(async |c| {
        c.execute(
            "UPDATE profiles SET avatar_url = $1 WHERE id = $2",
            &[&avatar, &id],
        )
        .await?;
        Ok(())
    })
    .await
    .expect("poke");
}

/// The keys under `pattern` on one node (not the cluster: this node's own).
async fn keys_on(port: u16, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("node");
    conn.keys(pattern).await.expect("keys")
}

#[tokio::test]
async fn rows_spread_over_every_master_each_row_one_key() {
    let cluster = RedisCluster::start().expect("cluster");
    let db = db_with(cluster_cache(&cluster.urls(), "spread")).await;
    let rows = db
        .create_many((0..300).map(|i| new_cached(&format!("c{i}"))).collect())
        .await
        .expect("seed");
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    assert_eq!(db.warm::<Cached>(&ids).await.expect("warm"), 300);

    let mut entries = 0;
    for port in cluster.ports() {
        let here = keys_on(port, "spread:t:*:*:{*}:profiles:*").await;
        assert!(
            here.len() > 30,
            "node {port} holds {} of 300 row entries: rows do not spread",
            here.len()
        );
        entries += here.len();
    }
    assert_eq!(entries, 300, "one key per row, on one node each");

    // Served from the cache: a change behind its back is not seen until a write.
    poke(&db, ids[7], "behind").await;
    let cached = db.read::<Cached>(ids[7]).await.expect("read").expect("row");
    assert_eq!(cached.avatar_url, None, "a hit, from the cluster");
    db.update::<Cached>(
        ids[7],
        CachedPatch {
            avatar_url: Some(Some("written".into())),
            ..Default::default()
        },
    )
    .await
    .expect("write");
    let fresh = db.read::<Cached>(ids[7]).await.expect("read").expect("row");
    assert_eq!(fresh.avatar_url.as_deref(), Some("written"));

    // A row is one key — its entry, its lease, its scoped copies — so a slot being
    // migrated moves it whole; rows of one table spread over many slots.
    let port = cluster.ports()[0];
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let mut node = client
        .get_multiplexed_async_connection()
        .await
        .expect("node");
    let mut slots = std::collections::HashSet::new();
    for row in keys_on(port, "spread:t:*:*:{*}:profiles:*").await {
        let fields: Vec<String> = node.hkeys(&row).await.expect("hkeys");
        assert_eq!(
            fields,
            ["r"],
            "{row}: its entry, no lease left after the fill"
        );
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&row)
            .query_async(&mut node)
            .await
            .expect("keyslot");
        slots.insert(slot);
    }
    assert!(
        slots.len() > 20,
        "rows of one node share few slots: {slots:?}"
    );

    // The namespace's head (epoch, generations, counters) is one slot of its own.
    let mut heads = Vec::new();
    for port in cluster.ports() {
        for key in keys_on(port, "spread:t:*:{spread:t:*}").await {
            heads.push((port, key));
        }
    }
    assert_eq!(heads.len(), 1, "the head is one key: {heads:?}");
    assert!(
        heads.iter().all(|(port, _)| *port == heads[0].0),
        "the head's keys share one node: {heads:?}"
    );
}

/// Rows move between masters while 4 writers and 6 readers work: no request fails,
/// no read answers a version older than one whose write had returned, and the cache
/// keeps answering (a row changed behind its back is still served as cached).
#[tokio::test]
async fn a_reshard_under_load_fails_nothing_and_serves_nothing_stale() {
    let cluster = Arc::new(RedisCluster::start().expect("cluster"));
    let cache = cluster_cache(&cluster.urls(), "moving");
    let db = db_with(cache.clone()).await;
    let rows = db
        .create_many((0..200).map(|i| new_cached(&format!("m{i}"))).collect())
        .await
        .expect("seed");
    let ids: Arc<Vec<Uuid>> = Arc::new(rows.iter().map(|r| r.id).collect());
    let done: Arc<Vec<AtomicI64>> = Arc::new((0..ids.len()).map(|_| AtomicI64::new(-1)).collect());
    let (stale, failed, hits) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    // Every task works until the slots have moved (and at least its minimum).
    let moved = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let moving = {
        let (cluster, moved) = (cluster.clone(), moved.clone());
        tokio::task::spawn_blocking(move || {
            let result = cluster
                .reshard(0, 1, 2000)
                .and_then(|()| cluster.reshard(1, 2, 3000));
            moved.store(true, Ordering::SeqCst);
            result
        })
    };
    let checks = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let (db, ids, done, failed) = (db.clone(), ids.clone(), done.clone(), failed.clone());
        let moved = moved.clone();
        tasks.push(tokio::spawn(async move {
            let mut step = 0usize;
            while step < 100 || !moved.load(Ordering::SeqCst) {
                step += 1;
                let row = (w + 4 * (step * 7)) % 160;
                let row = row - row % 4 + w; // each row has one writer
                let version = done[row].load(Ordering::SeqCst) + 1;
                let patch = CachedPatch {
                    avatar_url: Some(Some(version.to_string())),
                    ..Default::default()
                };
                match db.update::<Cached>(ids[row], patch).await {
                    Ok(_) => done[row].store(version, Ordering::SeqCst),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for r in 0..6usize {
        let (db, ids, done) = (db.clone(), ids.clone(), done.clone());
        let (stale, failed, moved) = (stale.clone(), failed.clone(), moved.clone());
        tasks.push(tokio::spawn(async move {
            let mut step = 0usize;
            while step < 200 || !moved.load(Ordering::SeqCst) {
                step += 1;
                let row = (r * 31 + step * 13) % 160;
                let floor = done[row].load(Ordering::SeqCst);
                match db.read::<Cached>(ids[row]).await {
                    Ok(Some(got)) => {
                        let seen: i64 = got
                            .avatar_url
                            .as_deref()
                            .map_or(-1, |v| v.parse().unwrap_or(-1));
                        if seen < floor {
                            stale.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // Rows 160..200 are never written: each is read (filled), changed behind the
    // cache's back, and read again — the old value means the cache answered.
    {
        let (db, ids, hits, failed) = (db.clone(), ids.clone(), hits.clone(), failed.clone());
        let (moved, checks) = (moved.clone(), checks.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0;
            while round < 2 || !moved.load(Ordering::SeqCst) {
                round += 1;
                for row in 160..200 {
                    checks.fetch_add(1, Ordering::SeqCst);
                    let before = db.read::<Cached>(ids[row]).await;
                    poke(&db, ids[row], &format!("behind{round}")).await;
                    let after = db.read::<Cached>(ids[row]).await;
                    match (before, after) {
                        (Ok(Some(a)), Ok(Some(b))) if a == b => {
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                        (Ok(Some(_)), Ok(Some(_))) => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // A write makes the next round read the new value, then cache it.
                    if db
                        .update::<Cached>(ids[row], CachedPatch::default())
                        .await
                        .is_err()
                    {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // The cache's own API, beside: every call answers.
    {
        let (cache, failed, moved) = (cache.clone(), failed.clone(), moved.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while i < 200 || !moved.load(Ordering::SeqCst) {
                i += 1;
                let key = format!("k{}", i % 97);
                if cache.set(&key, &i, Some(60)).await.is_err() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                match cache.get::<u64>(&key).await {
                    Ok(Some(v)) if v == i => {}
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    moving.await.expect("reshard thread").expect("reshard");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed requests");
    assert_eq!(stale.load(Ordering::SeqCst), 0, "stale reads");
    let (hits, checks) = (hits.load(Ordering::SeqCst), checks.load(Ordering::SeqCst));
    assert!(
        hits * 10 >= checks * 9,
        "the cache answered only {hits} of {checks} checks"
    );
}

/// A command to one node (not routed).
async fn on_node<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("node");
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.expect("command")
}

/// The master that serves `slot`.
async fn owner(ports: &[u16], slot: i64) -> u16 {
    for port in ports {
        let info: String = on_node(*port, &["CLUSTER", "NODES"]).await;
        let mine = info.lines().find(|l| l.contains("myself")).expect("myself");
        let serves = mine.split(' ').skip(8).any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            matches!((a.parse::<i64>(), b.parse::<i64>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
        });
        if serves {
            return *port;
        }
    }
    panic!("no master serves slot {slot}");
}

/// A write to a row whose slot is being migrated (its key still on the source; a
/// reshard's ordinary state) is delivered at once — Redis would refuse a script or a
/// DEL over keys of which only some have moved, which had made every such
/// invalidation "lost" and wiped the namespace — and a second process reads the new
/// row both while the slot moves and after.
#[tokio::test]
async fn a_write_while_its_rows_slot_is_migrating_is_delivered_at_once() {
    let cluster = RedisCluster::start().expect("cluster");
    let ports = cluster.ports();
    let config = || {
        CacheConfig::default()
            .prefix("migrating")
            .namespace("ns")
            .deadline(Duration::from_millis(500))
    };
    let (_, url) = common::db_and_url().await;
    let connect = async |cache: CacheService| {
        Db::connect_with(DbConfig::new(url.clone()).cache(cache))
            .await
            .expect("db")
    };
    let writer =
        connect(CacheService::redis_cluster(&cluster.urls(), config()).expect("cache")).await;
    let reader =
        connect(CacheService::redis_cluster(&cluster.urls(), config()).expect("cache")).await;
    let row = writer.create(new_cached("moving")).await.expect("create");
    assert!(reader.read::<Cached>(row.id).await.expect("read").is_some());
    let head = "migrating:t:ns:{migrating:t:ns}";
    let head_port = owner(
        &ports,
        on_node(ports[0], &["CLUSTER", "KEYSLOT", head]).await,
    )
    .await;
    let epoch: String = on_node(head_port, &["HGET", head, "e"]).await;
    let mut rows = Vec::new();
    for port in &ports {
        rows.extend(keys_on(*port, "migrating:t:ns:*:{*}:profiles:*").await);
    }
    assert_eq!(rows.len(), 1, "{rows:?}");
    let slot: i64 = on_node(ports[0], &["CLUSTER", "KEYSLOT", &rows[0]]).await;
    let from = owner(&ports, slot).await;
    let to = *ports.iter().find(|p| **p != from).expect("another master");
    let from_id: String = on_node(from, &["CLUSTER", "MYID"]).await;
    let to_id: String = on_node(to, &["CLUSTER", "MYID"]).await;
    let s = slot.to_string();
    let () = on_node(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).await;
    let () = on_node(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).await;

    let patch = CachedPatch {
        avatar_url: Some(Some("v1".into())),
        ..Default::default()
    };
    writer.update::<Cached>(row.id, patch).await.expect("write");
    let during = reader
        .read::<Cached>(row.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        during.avatar_url.as_deref(),
        Some("v1"),
        "read while the slot moves"
    );

    // The migration completes: the slot's keys move, the slot changes owner.
    loop {
        let keys: Vec<String> = on_node(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]).await;
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let to_port = to.to_string();
            let _: redis::Value = on_node(
                from,
                &[
                    "MIGRATE",
                    "127.0.0.1",
                    &to_port,
                    "",
                    "0",
                    "5000",
                    "KEYS",
                    &key,
                ],
            )
            .await;
        }
    }
    for port in &ports {
        let () = on_node(*port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
    }
    let after = reader
        .read::<Cached>(row.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        after.avatar_url.as_deref(),
        Some("v1"),
        "read after the move"
    );
    let now: String = on_node(head_port, &["HGET", head, "e"]).await;
    assert_eq!(
        now, epoch,
        "the invalidation was delivered, not replaced by a new epoch"
    );
    // And the cache still serves the row after its move (filled by the read above).
    poke(&reader, row.id, "behind").await;
    let cached = reader
        .read::<Cached>(row.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(cached.avatar_url.as_deref(), Some("v1"), "a hit");
}

/// One Redis and a cluster with the same prefix and namespace are two caches, not
/// one: a write through a handle on either invalidates the other's entries.
#[tokio::test]
async fn one_redis_and_a_cluster_with_one_namespace_are_two_caches() {
    let config = || {
        CacheConfig::default()
            .prefix("both")
            .namespace("same")
            .deadline(Duration::from_secs(2))
    };
    let single = CacheService::redis(&tabula::testkit::redis_url().expect("redis"), config())
        .expect("cache");
    let urls = tabula::testkit::redis_cluster_urls().expect("cluster");
    let cluster = CacheService::redis_cluster(&urls, config()).expect("cache");
    let (_, url) = common::db_and_url().await;
    let on_single = Db::connect_with(DbConfig::new(url.clone()).cache(single))
        .await
        .expect("db");
    let on_cluster = Db::connect_with(DbConfig::new(url).cache(cluster))
        .await
        .expect("db");
    let row = on_single.create(new_cached("both")).await.expect("create");
    for (writer, reader, value) in [
        (&on_single, &on_cluster, "a"),
        (&on_cluster, &on_single, "b"),
    ] {
        assert!(reader.read::<Cached>(row.id).await.expect("fill").is_some());
        let patch = CachedPatch {
            avatar_url: Some(Some(value.into())),
            ..Default::default()
        };
        writer.update::<Cached>(row.id, patch).await.expect("write");
        let seen = reader
            .read::<Cached>(row.id)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(seen.avatar_url.as_deref(), Some(value));
    }
}

/// The master holding a namespace's head is restarted from a snapshot older than a
/// table-wide invalidation: its old generation would bring back entries the other
/// masters still hold. The backend notices the master's new `run_id` within one probe
/// interval and gives the namespace a new epoch: nothing old is served, to this
/// process or to one started after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_from_an_old_snapshot_serves_nothing_old() {
    restarted_head_master(false).await;
}

/// The same when the cache's first call ran on a runtime that stays alive but is
/// never driven again (a `block_on` at start-up): the masters' watch started there
/// misses its beats, and the next call starts another where the work goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_masters_watch_moves_off_a_runtime_no_longer_driven() {
    restarted_head_master(true).await;
}

async fn restarted_head_master(first_call_parked: bool) {
    let mut cluster = RedisCluster::start().expect("cluster");
    let ports = cluster.ports();
    let config = || {
        CacheConfig::default()
            .prefix("restarted")
            .namespace("ns")
            .deadline(Duration::from_secs(1))
            .probe_interval(Duration::from_millis(200))
    };
    let (_, url) = common::db_and_url().await;
    let connect = async |cache: CacheService| {
        Db::connect_with(DbConfig::new(url.clone()).cache(cache))
            .await
            .expect("db")
    };
    let db = connect(CacheService::redis_cluster(&cluster.urls(), config()).expect("cache")).await;
    let mut parked = None;
    if first_call_parked {
        let first = db.clone();
        let (runtime, read) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let read = runtime.block_on(first.read::<Cached>(Uuid::new_v4()));
            (runtime, read.is_ok())
        })
        .join()
        .expect("thread");
        assert!(read);
        parked = Some(runtime);
    }
    let rows = db
        .create_many((0..60).map(|i| new_cached(&format!("r{i}"))).collect())
        .await
        .expect("seed");
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    assert_eq!(db.warm::<Cached>(&ids).await.expect("warm"), 60);
    let head = "restarted:t:ns:{restarted:t:ns}";
    let head_port = owner(
        &ports,
        on_node(ports[0], &["CLUSTER", "KEYSLOT", head]).await,
    )
    .await;
    let head_index = ports.iter().position(|p| *p == head_port).expect("index");
    let () = on_node(head_port, &["SAVE"]).await;
    // Rows changed behind the cache, then the documented table-wide invalidation.
    db.with_client(async |c| {
        c.execute("UPDATE profiles SET avatar_url = 'new'", &[])
            .await?;
        Ok(())
    })
    .await
    .expect("raw update");
    db.invalidate_table::<Cached>().await;
    let fresh = db.read_many::<Cached>(&ids).await.expect("read");
    assert!(
        fresh
            .iter()
            .flatten()
            .all(|r| r.avatar_url.as_deref() == Some("new"))
    );

    let fields: Vec<String> = on_node(head_port, &["HKEYS", head]).await;
    let generation = fields
        .into_iter()
        .find(|f| f.starts_with("g:"))
        .expect("invalidate_table bumped a generation");
    tokio::task::block_in_place(|| cluster.restart_from_snapshot(head_index)).expect("restart");
    // Positive control: the restarted head holds the old generation again.
    let now: Option<String> = on_node(head_port, &["HGET", head, &generation]).await;
    let old_generation = now.is_none();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = |rows: Vec<Option<Cached>>| {
        rows.iter()
            .flatten()
            .filter(|r| r.avatar_url.as_deref() != Some("new"))
            .count()
    };
    if first_call_parked {
        // The watch on the parked runtime has missed its beats by now (three probe
        // intervals and deadlines): the next call replaces it, asking first.
        tokio::time::sleep(Duration::from_millis(3700)).await;
    }
    let here = stale(db.read_many::<Cached>(&ids).await.expect("read"));
    let other =
        connect(CacheService::redis_cluster(&cluster.urls(), config()).expect("cache")).await;
    let there = stale(other.read_many::<Cached>(&ids).await.expect("read"));
    assert!(
        old_generation,
        "the snapshot did not bring the old head back: this proves nothing"
    );
    assert_eq!(
        (here, there),
        (0, 0),
        "stale rows, of 60 (this process, a new one)"
    );
    if let Some(runtime) = parked {
        std::thread::spawn(move || drop(runtime))
            .join()
            .expect("thread");
    }
}

/// A reader that remembers the names it resolved reads its rows under them while the
/// head is asked: after a table-wide invalidation by another process (a new
/// generation: the old entries are all still there) it must not trust them.
#[tokio::test]
async fn remembered_names_are_never_trusted_past_a_new_generation() {
    let urls = tabula::testkit::redis_cluster_urls().expect("cluster");
    let config = || {
        CacheConfig::default()
            .prefix("remembered")
            .deadline(Duration::from_secs(2))
    };
    let (_, url) = common::db_and_url().await;
    let reader = Db::connect_with(
        DbConfig::new(url.clone()).cache(CacheService::redis_cluster(&urls, config()).expect("c")),
    )
    .await
    .expect("db");
    let writer = Db::connect_with(
        DbConfig::new(url).cache(CacheService::redis_cluster(&urls, config()).expect("c")),
    )
    .await
    .expect("db");
    let rows = reader
        .create_many((0..20).map(|i| new_cached(&format!("n{i}"))).collect())
        .await
        .expect("seed");
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    for round in 0..3 {
        // Hits under the remembered names.
        for _ in 0..2 {
            assert_eq!(
                reader.read_many::<Cached>(&ids).await.expect("read").len(),
                20
            );
        }
        let value = format!("round{round}");
        writer
            .with_client(async |c| {
                c.execute("UPDATE profiles SET avatar_url = $1", &[&value])
                    .await?;
                Ok(())
            })
            .await
            .expect("raw update");
        writer.invalidate_table::<Cached>().await;
        let seen = reader.read_many::<Cached>(&ids).await.expect("read");
        let stale = seen
            .iter()
            .flatten()
            .filter(|r| r.avatar_url.as_deref() != Some(value.as_str()))
            .count();
        assert_eq!(
            stale, 0,
            "round {round}: rows read under names the head no longer gives"
        );
    }
}

/// Rule 8 across an epoch replaced after a master restart: a writer W with a registry
/// window holds a snapshot without the table; a reader R without one has registered
/// it (so takes no lease for one and a half windows). A master restarts, R's backend
/// gives the namespace a new epoch — which must carry the registry's mark, or R would
/// take a lease at once, fill, and W's write (skipping Redis on its snapshot) would
/// leave R reading the old row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_after_a_restart_keeps_the_registry_wait() {
    registry_across_a_restart(false).await;
}

/// The same with the head's own master restarted from a snapshot taken before the
/// namespace was used: the head comes back empty, mark and all. The writer's backend
/// notices the restart too: its new epoch carries its own wait, and it trusts no
/// registry snapshot taken before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_lost_with_its_mark_keeps_the_registry_wait() {
    registry_across_a_restart(true).await;
}

async fn registry_across_a_restart(head_master: bool) {
    let mut cluster = RedisCluster::start().expect("cluster");
    let ports = cluster.ports();
    let config = || {
        CacheConfig::default()
            .prefix("window")
            .namespace("ns")
            .deadline(Duration::from_secs(1))
    };
    let (_, url) = common::db_and_url().await;
    let connect = async |cache: CacheService| {
        Db::connect_with(DbConfig::new(url.clone()).cache(cache))
            .await
            .expect("db")
    };
    let head = "window:t:ns:{window:t:ns}";
    let head_port = owner(
        &ports,
        on_node(ports[0], &["CLUSTER", "KEYSLOT", head]).await,
    )
    .await;
    if head_master {
        let () = on_node(head_port, &["SAVE"]).await;
    }
    let w = connect(
        CacheService::redis_cluster(
            &cluster.urls(),
            config()
                .registry_window(Duration::from_secs(20))
                .probe_interval(Duration::from_millis(100)),
        )
        .expect("cache"),
    )
    .await;
    let r = connect(
        CacheService::redis_cluster(
            &cluster.urls(),
            config().probe_interval(Duration::from_millis(100)),
        )
        .expect("cache"),
    )
    .await;
    let other = w.create(new_cached("other")).await.expect("create");
    let row = w.create(new_cached("watched")).await.expect("create");
    // W's invalidation starts the epoch with its mark; its snapshot: nothing cached.
    w.update::<Cached>(other.id, CachedPatch::default())
        .await
        .expect("write");
    // R reads: registers the table, takes no lease.
    assert!(r.read::<Cached>(row.id).await.expect("read").is_some());
    let epoch: Option<String> = on_node(head_port, &["HGET", head, "e"]).await;
    let victim = match head_master {
        true => ports.iter().position(|p| *p == head_port),
        false => ports.iter().position(|p| *p != head_port),
    }
    .expect("a master");
    tokio::task::block_in_place(|| cluster.restart_from_snapshot(victim)).expect("restart");
    // R notices the restart (its watch runs beside its calls) and renews the epoch.
    let mut renewed = false;
    for _ in 0..50 {
        let _ = r.read::<Cached>(row.id).await;
        let now: Option<String> = on_node(head_port, &["HGET", head, "e"]).await;
        if now.is_some() && now != epoch {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewed, "the restart was not noticed: this proves nothing");
    let _ = r.read::<Cached>(row.id).await;
    let _ = r.read::<Cached>(row.id).await;
    // W's watch notices the restart within its probe interval.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let patch = CachedPatch {
        avatar_url: Some(Some("new".into())),
        ..Default::default()
    };
    w.update::<Cached>(row.id, patch).await.expect("write");
    let seen = r.read::<Cached>(row.id).await.expect("read").expect("row");
    assert_eq!(seen.avatar_url.as_deref(), Some("new"));
}

/// A master that holds neither the namespace's head nor the row read is paused
/// (`CLIENT PAUSE`): reads of the row keep being answered by the cache, and nothing
/// wipes the namespace (the masters' watch runs beside the calls and concludes
/// nothing from a master that does not answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_holding_nothing_read_costs_the_reads_nothing() {
    let cluster = RedisCluster::start().expect("cluster");
    let ports = cluster.ports();
    let config = CacheConfig::default()
        .prefix("paused")
        .namespace("ns")
        .deadline(Duration::from_millis(300))
        .probe_interval(Duration::from_millis(100));
    let db = db_with(CacheService::redis_cluster(&cluster.urls(), config).expect("cache")).await;
    let head = "paused:t:ns:{paused:t:ns}";
    let head_port = owner(
        &ports,
        on_node(ports[0], &["CLUSTER", "KEYSLOT", head]).await,
    )
    .await;
    // A row whose key lives on another master than the head's.
    let mut chosen = None;
    for i in 0..50 {
        let row = db
            .create(new_cached(&format!("p{i}")))
            .await
            .expect("create");
        assert!(db.read::<Cached>(row.id).await.expect("fill").is_some());
        let pattern = format!("paused:t:ns:*:\"{}\"", row.id);
        for port in &ports {
            if *port != head_port && !keys_on(*port, &pattern).await.is_empty() {
                chosen = Some((row.clone(), *port));
            }
        }
        if chosen.is_some() {
            break;
        }
    }
    let (row, row_port) = chosen.expect("a row away from the head");
    let victim = *ports
        .iter()
        .find(|p| **p != head_port && **p != row_port)
        .expect("a third master");
    // And a row of the paused master's, whose read times out and so replaces the
    // connection: the new one must not wait on the paused master either.
    let mut on_victim = None;
    for i in 0..100 {
        let other = db
            .create(new_cached(&format!("v{i}")))
            .await
            .expect("create");
        assert!(db.read::<Cached>(other.id).await.expect("fill").is_some());
        let pattern = format!("paused:t:ns:*:\"{}\"", other.id);
        if !keys_on(victim, &pattern).await.is_empty() {
            on_victim = Some(other);
            break;
        }
    }
    let on_victim = on_victim.expect("a row on the third master");
    let epoch: String = on_node(head_port, &["HGET", head, "e"]).await;
    poke(&db, row.id, "behind").await;
    let () = on_node(victim, &["CLIENT", "PAUSE", "1500", "ALL"]).await;
    let fallback = db
        .read::<Cached>(on_victim.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(fallback.id, on_victim.id, "answered by PostgreSQL");
    let (mut hits, mut reads) = (0, 0);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        let seen = db.read::<Cached>(row.id).await.expect("read").expect("row");
        reads += 1;
        if seen.avatar_url.is_none() {
            hits += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now: String = on_node(head_port, &["HGET", head, "e"]).await;
    assert_eq!(
        hits, reads,
        "reads the cache did not answer while an unrelated master paused"
    );
    assert_eq!(now, epoch, "the namespace was wiped");
}

/// The cluster's form of a lost registry: the namespace's head deleted by hand (or
/// evicted) while two processes work. The writer with a window restores a marked head
/// within about one probe interval; the reader then reads the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_head_is_restored_by_the_writer_with_a_window() {
    let urls = tabula::testkit::redis_cluster_urls().expect("cluster");
    let config = || {
        CacheConfig::default()
            .prefix("lost")
            .namespace(format!("ns{}", std::process::id()))
            .deadline(Duration::from_secs(1))
            .probe_interval(Duration::from_millis(100))
    };
    let (_, url) = common::db_and_url().await;
    let connect = async |cache: CacheService| {
        Db::connect_with(DbConfig::new(url.clone()).cache(cache))
            .await
            .expect("db")
    };
    let w = connect(
        CacheService::redis_cluster(&urls, config().registry_window(Duration::from_secs(20)))
            .expect("cache"),
    )
    .await;
    let r = connect(CacheService::redis_cluster(&urls, config()).expect("cache")).await;
    let other = w.create(new_cached("other")).await.expect("create");
    let row = w.create(new_cached("old")).await.expect("create");
    w.update::<Cached>(other.id, CachedPatch::default())
        .await
        .expect("write");
    assert!(r.read::<Cached>(row.id).await.expect("read").is_some());
    let ns = format!("ns{}", std::process::id());
    let head = format!("lost:t:{ns}:{{lost:t:{ns}}}");
    let client = redis::cluster::ClusterClient::new(urls.clone()).expect("client");
    let mut raw = client.get_async_connection().await.expect("cluster");
    let deleted: i64 = redis::cmd("DEL")
        .arg(&head)
        .query_async(&mut raw)
        .await
        .expect("del");
    assert_eq!(deleted, 1);
    let _ = r.read::<Cached>(row.id).await;
    let _ = r.read::<Cached>(row.id).await;
    let patch = CachedPatch {
        avatar_url: Some(Some("new".into())),
        ..Default::default()
    };
    w.update::<Cached>(row.id, patch).await.expect("write");
    let mut seen = None;
    for _ in 0..20 {
        seen = r
            .read::<Cached>(row.id)
            .await
            .expect("read")
            .expect("row")
            .avatar_url;
        if seen.as_deref() == Some("new") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some("new"),
        "still the old row a second after the write"
    );
}
