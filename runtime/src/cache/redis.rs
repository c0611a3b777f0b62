//! The Redis backend: one multiplexed connection shared by every task (requests from
//! concurrent tasks are pipelined on it), replaced after any I/O error or timeout, with
//! a deadline on every call and a circuit breaker in front.
//!
//! Why not a bb8-redis pool: its manager never reports a connection broken, so with the
//! checkout PING off a pool never recovers from a Redis restart, and with it on every
//! read pays a second round trip; its default checkout waits 30 s while Redis is down.
//! A multiplexed connection needs no checkout at all, and dropping it on error is
//! exactly the "broken" signal a pool lacks.
//!
//! # Lost invalidations
//!
//! An invalidation that could not be delivered makes the backend *dirty*. From then
//! on, a background probe (one per backend) tries Redis every probe interval; the
//! first time it answers, the epoch of every namespace this process used is replaced
//! by a fresh random value — orphaning every entry written before, in every process —
//! and only then is the backend clean again. Normal calls do the same first if they
//! reach Redis before the probe does. So the staleness a lost invalidation can cause
//! ends at most one probe interval (plus one deadline) after Redis answers again,
//! whether or not the writer does anything else. Epochs are random, never counted:
//! after Redis loses its data they cannot come back to a value an old entry was
//! written under. A failed or slow GET or fill is only a miss and never dirties
//! anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, PushInfo, PushKind, RedisError, Script};

use super::backend::{
    Backend, Namespace, Pending, RowFill, RowGet, RowPeek, Stale, UniqueFound, Versioned,
};
use super::breaker::Breaker;
use super::near::NearTier;
use super::{CacheConfig, Fault};

/// `cmd!("SADD", key, members)`: a command with its arguments.
macro_rules! cmd {
    ($name:literal $(, $arg:expr)* $(,)?) => {{
        let mut cmd = ::redis::cmd($name);
        $(cmd.arg($arg);)*
        cmd
    }};
}

/// The protocol of `backend.rs`, one script a rule, each sharing `prelude.lua`.
pub(super) const PRELUDE: &str = include_str!("lua/prelude.lua");

fn script(body: &str) -> Script {
    // The shebang (Redis 7) declares what a flagless script is: one that may write, so
    // Redis refuses it *before* it runs when it cannot take writes (out of memory,
    // a failing disk save) — a cached read then falls back to PostgreSQL instead of
    // serving entries whose invalidations Redis is refusing.
    Script::new(&format!("#!lua\n{PRELUDE}\n{body}"))
}

/// The near tiers of this process, by the prefix they mirror: a write through one
/// cache evicts the same names from the others at once, instead of waiting for Redis's
/// push (two caches of one Redis in one process are otherwise two processes).
static NEAR_TIERS: Mutex<Vec<(String, Weak<NearTier>)>> = Mutex::new(Vec::new());

/// Whether a near tier was ever made in this process: a write through a process that
/// has none takes no lock for them.
static ANY_NEAR_TIER: AtomicBool = AtomicBool::new(false);

/// Every live near tier of this process that mirrors `prefix` (its own among them).
fn near_tiers(prefix: &str) -> Vec<Arc<NearTier>> {
    if !ANY_NEAR_TIER.load(Ordering::Acquire) {
        return Vec::new();
    }
    let Ok(all) = NEAR_TIERS.lock() else {
        return Vec::new();
    };
    all.iter()
        .filter(|(p, _)| p == prefix)
        .filter_map(|(_, tier)| tier.upgrade())
        .collect()
}

static TOUCH: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/touch.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/renew.lua")));
static RENEW_CLUSTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("#!lua\n{}", include_str!("lua/cluster/renew.lua"))));
static ROW_GET: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/row_get.lua")));
static ROW_FILL: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/row_fill.lua")));
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/invalidate.lua")));
static VERSIONED: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/versioned.lua")));
static UNIQUE_GET: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/unique_get.lua")));
static ROW_PEEK: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/row_peek.lua")));
static SCOPED_GET: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/scoped_get.lua")));
static SCOPED_FILL: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/scoped_fill.lua")));

pub(crate) struct RedisBackend {
    /// Itself, for the background probe it spawns.
    me: Weak<RedisBackend>,
    client: Client,
    /// One connection per runtime: a connection's driver task lives on the runtime
    /// that opened it and dies with it, so another runtime must not borrow it.
    conns: Mutex<Vec<Conn>>,
    /// When this backend was made: the zero of every connection's `heard`.
    born: std::time::Instant,
    serials: AtomicU64,
    /// The `run_id` of the server last connected to.
    run_id: Mutex<Option<String>>,
    /// `{prefix}:t:`: where every key the near tier mirrors lives.
    tracked_prefix: String,
    /// The in-process tier in front (`CacheConfig::near`); its connections speak
    /// RESP3 with `CLIENT TRACKING` on.
    near: Option<Arc<NearTier>>,
    breaker: Breaker,
    deadline: Duration,
    probe_interval: Duration,
    /// The epoch keys of the namespaces this process used.
    epochs: Mutex<Vec<String>>,
    /// Invalidations not delivered since the last epoch change (a count, so that a
    /// failure during a change is never erased by it).
    dirty: AtomicU64,
    probing: AtomicBool,
    /// On a cluster: the masters' `run_id`s when last asked (see `cluster.rs`,
    /// "Restarts").
    pub(super) masters: Mutex<Vec<String>>,
    /// On a cluster: whether the task that watches the masters runs, and when it last
    /// did (nanoseconds after `born`; a task on a runtime no longer driven stops).
    pub(super) watching: AtomicBool,
    pub(super) watch_beat: AtomicU64,
    /// How many times this backend was made dirty or saw a namespace's epoch change
    /// (`Backend::renewals`).
    renewals: AtomicU64,
    /// With a registry window: whether the task that keeps the registry's mark runs,
    /// when it last did, and the epoch it last saw per namespace (`keep_registry`).
    keeping: AtomicBool,
    keep_beat: AtomicU64,
    kept_epochs: Mutex<HashMap<String, String>>,
    /// On a cluster: the names each reader last resolved, by namespace, table and
    /// counters (see `cluster.rs`, "One round trip").
    pub(super) guesses: Mutex<HashMap<String, super::cluster::Names>>,
    /// How long a table's registration must be old before it is filled, in ms
    /// (`ARGV[3]` of every script; `0`: no registry). See `CacheConfig::registry_window`.
    registry_wait: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A fresh epoch: 16 random hex digits.
pub(crate) fn fresh_epoch() -> String {
    super::row::token()[..16].to_owned()
}

/// What connections are made from: one server, or the nodes of a Redis Cluster.
// One per backend, made once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    One(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// One runtime's connection: multiplexed to one server, or a cluster connection
/// (which keeps one to each node and follows `MOVED` and `ASK`).
#[derive(Clone)]
pub(super) enum Wire {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Wire {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Wire::One(c) => c.req_packed_command(cmd),
            Wire::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Wire::One(c) => c.req_packed_commands(pipeline, offset, count),
            Wire::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Wire::One(c) => c.get_db(),
            Wire::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisBackend {
    /// A cache on a Redis Cluster whose nodes include `urls` (the client learns the
    /// rest). The protocol's names carry hash tags (see `cluster.rs`); no near tier.
    pub(crate) fn cluster(urls: &[String], config: &CacheConfig) -> Result<Arc<Self>, Fault> {
        let invalid = |e: RedisError| Fault::Config(format!("invalid redis cluster url: {e}"));
        if urls.is_empty() {
            return Err(Fault::Config(
                "a redis cluster cache needs the URL of at least one node".into(),
            ));
        }
        if config.near.is_some() {
            return Err(Fault::Config(
                "a near tier is not available on a redis cluster cache yet (CacheConfig::near)"
                    .into(),
            ));
        }
        if config.tls_root_cert.is_some() {
            return Err(Fault::Config(
                "CacheConfig::tls_root_cert is not available on a redis cluster cache yet".into(),
            ));
        }
        let client = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
            .connection_timeout(config.deadline)
            .response_timeout(config.deadline)
            .build()
            .map_err(invalid)?;
        Ok(Self::with_client(Client::Cluster(client), None, config))
    }

    pub(crate) fn new(url: &str, config: &CacheConfig) -> Result<Arc<Self>, Fault> {
        let invalid = |e: RedisError| Fault::Config(format!("invalid redis url: {e}"));
        let mut info = redis::IntoConnectionInfo::into_connection_info(url).map_err(invalid)?;
        let near = match config.near {
            Some(0) => {
                return Err(Fault::Config(
                    "a near tier needs a budget of at least 1 byte".into(),
                ));
            }
            Some(budget) => {
                // Invalidation pushes need RESP3 (Redis 6 or later).
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                info = info.set_redis_settings(settings);
                Some(Arc::new(NearTier::new(budget, config.near_max_age)))
            }
            None => None,
        };
        let client = match &config.tls_root_cert {
            None => redis::Client::open(info).map_err(invalid)?,
            #[cfg(feature = "tls")]
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Fault::Config(format!(
                        "cannot read the redis root certificates {}: {e}",
                        path.display()
                    ))
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(info, certs).map_err(invalid)?
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => {
                return Err(Fault::Config(
                    "CacheConfig::tls_root_cert needs tabula's `tls` feature".into(),
                ));
            }
        };
        Ok(Self::with_client(Client::One(client), near, config))
    }

    fn with_client(client: Client, near: Option<Arc<NearTier>>, config: &CacheConfig) -> Arc<Self> {
        let tracked_prefix = format!("{}:t:", config.prefix);
        if let (Some(near), Ok(mut all)) = (&near, NEAR_TIERS.lock()) {
            all.retain(|(_, tier)| tier.strong_count() > 0);
            all.push((tracked_prefix.clone(), Arc::downgrade(near)));
            ANY_NEAR_TIER.store(true, Ordering::Release);
        }
        Arc::new_cyclic(|me| RedisBackend {
            me: me.clone(),
            client,
            conns: Mutex::default(),
            born: std::time::Instant::now(),
            serials: AtomicU64::new(0),
            run_id: Mutex::default(),
            tracked_prefix,
            near,
            breaker: Breaker::new(config.failure_threshold, config.probe_interval),
            deadline: config.deadline,
            probe_interval: config.probe_interval,
            epochs: Mutex::default(),
            dirty: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            masters: Mutex::default(),
            watching: AtomicBool::new(false),
            watch_beat: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            keeping: AtomicBool::new(false),
            keep_beat: AtomicU64::new(0),
            kept_epochs: Mutex::default(),
            guesses: Mutex::default(),
            registry_wait: config
                .registry_window
                .map_or(0, |w| super::registry_wait(w).as_millis())
                .to_string(),
        })
    }

    /// Itself, for tasks it spawns.
    pub(super) fn weak(&self) -> Weak<RedisBackend> {
        self.me.clone()
    }

    /// The deadline of every call.
    pub(super) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The probe interval (how often a cluster's masters are asked who they are).
    pub(super) fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    /// `ARGV[3]` of every script: the registry wait in ms (`0`: none).
    pub(super) fn registry_wait(&self) -> &str {
        &self.registry_wait
    }

    /// Whether this is a Redis Cluster (the protocol of `cluster.rs`).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    async fn connection(&self) -> Result<Link, Fault> {
        let runtime = tokio::runtime::Handle::current().id();
        let known = self.conns.lock().ok().and_then(|conns| {
            conns.iter().find(|c| c.runtime == runtime).map(|c| Link {
                conn: c.conn.clone(),
                heard: c.heard.clone(),
            })
        });
        if let Some(link) = known {
            return Ok(link);
        }
        let serial = self.serials.fetch_add(1, Ordering::Relaxed) + 1;
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.deadline))
            .set_response_timeout(Some(self.deadline));
        if let Some(near) = &self.near {
            config = config.set_push_sender(Pushes {
                near: near.clone(),
                backend: self.me.clone(),
                serial,
            });
        }
        let mut conn = match &self.client {
            Client::One(client) => {
                let mut conn = tokio::time::timeout(
                    self.deadline,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map_err(|_| Fault::Timeout)?
                .map_err(Fault::Redis)?;
                self.check_server(&mut conn).await;
                Wire::One(conn)
            }
            Client::Cluster(client) => {
                let mut conn = tokio::time::timeout(self.deadline, client.get_async_connection())
                    .await
                    .map_err(|_| Fault::Timeout)?
                    .map_err(Fault::Redis)?;
                // Who the masters are, before anything is read — once, on the first
                // connection: the watch compares with it from then on, whenever it runs.
                // (Not on every new connection: a connection is replaced after a
                // timeout, and one master that does not answer would then cost every
                // call its deadline.)
                let known = self.masters.lock().is_ok_and(|seen| !seen.is_empty());
                if !known
                    && let Some(ids) = super::cluster::master_ids(&mut conn, self.deadline).await
                {
                    self.note_masters(ids);
                }
                Wire::Cluster(conn)
            }
        };
        let tracked = match (&self.near, &mut conn) {
            (Some(_), Wire::One(one)) => self.track(one).await,
            _ => false,
        };
        let heard = Arc::new(AtomicU64::new(self.now()));
        if let Ok(mut conns) = self.conns.lock() {
            conns.retain(|c| c.runtime != runtime);
            if conns.len() >= 64 {
                // Runtimes that ended leave their entries behind (with a near tier,
                // the connection's end removes it; see `Pushes`).
                conns.remove(0);
            }
            conns.push(Conn {
                runtime,
                serial,
                conn: conn.clone(),
                tracked,
                heard: heard.clone(),
            });
        }
        Ok(Link { conn, heard })
    }

    /// A server that is not the one this process last talked to — restarted (perhaps
    /// from a snapshot older than the invalidations since), or failed over — may hold
    /// entries that were invalidated since: every namespace used gets a new epoch
    /// before anything is read (as after a lost invalidation).
    async fn check_server(&self, conn: &mut MultiplexedConnection) {
        let info = tokio::time::timeout(
            self.deadline,
            cmd!("INFO", "server").query_async::<String>(conn),
        )
        .await;
        let Ok(Ok(info)) = info else {
            return;
        };
        let Some(run_id) = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
        else {
            return;
        };
        let changed = self.run_id.lock().ok().is_some_and(|mut seen| {
            let changed = seen.as_ref().is_some_and(|old| *old != run_id);
            *seen = Some(run_id);
            changed
        });
        if changed {
            tracing::warn!("redis restarted or failed over: new cache epochs replace the old");
            self.mark_dirty();
        }
    }

    /// Nanoseconds since this backend was made.
    pub(super) fn now(&self) -> u64 {
        self.born.elapsed().as_nanos() as u64
    }

    /// Turns on invalidation pushes on `conn`: broadcast mode, for every key under
    /// `{prefix}:t:`. (Redis 7 tracks only the keys a script *declares*, and the
    /// protocol's scripts resolve their names on the server, so default tracking would
    /// miss them.) `NOLOOP` spares the pushes of this connection's plain commands; its
    /// scripts' changes still come back (Redis counts them as the script's), which
    /// costs traffic, not correctness. A server that refuses (an ACL, an old version)
    /// leaves the near tier unused on this connection, and says so.
    async fn track(&self, conn: &mut MultiplexedConnection) -> bool {
        let tracking = cmd!(
            "CLIENT",
            "TRACKING",
            "ON",
            "BCAST",
            "PREFIX",
            &self.tracked_prefix,
            "NOLOOP"
        );
        let answer = tokio::time::timeout(self.deadline, tracking.query_async::<()>(conn)).await;
        match answer {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis refused CLIENT TRACKING: the near tier stays unused");
                false
            }
            Err(_) => false,
        }
    }

    fn drop_connection(&self) {
        let runtime = tokio::runtime::Handle::current().id();
        let dropped = self.conns.lock().is_ok_and(|mut conns| {
            let before = conns.len();
            conns.retain(|c| c.runtime != runtime);
            conns.len() != before
        });
        // Pushes may have been lost with it (a connection dropped before this was
        // flushed then).
        if dropped && let Some(near) = &self.near {
            near.flush();
        }
    }

    /// A connection ended (its driver said so, or was dropped with its runtime): if
    /// it still served, it goes, and with it everything its pushes covered.
    fn lost(&self, serial: u64) {
        let current = self.conns.lock().is_ok_and(|mut conns| {
            let before = conns.len();
            conns.retain(|c| c.serial != serial);
            conns.len() != before
        });
        if !current {
            return;
        }
        if let Some(near) = &self.near {
            near.flush();
        }
        self.reconnect_soon();
    }

    /// After a lost connection: one call within a probe interval opens another, which
    /// asks the server who it is (`check_server`). A server that came back as another
    /// — restarted, perhaps from an old snapshot — then gets new epochs from this
    /// process, which knew the old one, before a process started since (which has
    /// nothing to compare with) reads what the snapshot brought back; waiting for this
    /// process's next call would leave that to chance.
    fn reconnect_soon(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.me.clone();
        let interval = self.probe_interval.max(Duration::from_millis(10));
        runtime.spawn(async move {
            tokio::time::sleep(interval).await;
            if let Some(backend) = backend.upgrade() {
                let _ = backend.call(async |_| Ok(())).await;
            }
        });
    }

    /// With a registry window (rule 8 of `backend.rs`), starts unless one runs the task
    /// that asks every namespace this process used for its epoch once per probe
    /// interval, the way every script does (`base()`): a registry that lost its mark —
    /// Redis restarted or evicted it, a flush — gets a new epoch with this process's
    /// mark, so readers without a window wait again and what they filled meanwhile is
    /// orphaned; and an epoch that changed voids this process's registry snapshot
    /// (`renewals`), so its writes go to Redis again. Without it a writer that skips
    /// Redis on its snapshot would never learn of the loss. Like the masters' watch, a
    /// task whose runtime stopped driving it is replaced.
    fn keep_registry(&self) {
        if self.registry_wait == "0" {
            return;
        }
        let (now, interval) = (self.now(), self.probe_interval);
        let beat = self.keep_beat.load(Ordering::Acquire);
        let stuck = now.saturating_sub(beat) > 3 * (interval + self.deadline).as_nanos() as u64;
        if self.keeping.swap(true, Ordering::AcqRel) && !stuck {
            return;
        }
        self.keep_beat.store(now, Ordering::Release);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.keeping.store(false, Ordering::Release);
            return;
        };
        let backend = self.me.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(backend) = backend.upgrade() else {
                    return;
                };
                backend.keep_beat.store(backend.now(), Ordering::Release);
                let keys = backend.epochs.lock().map(|e| e.clone()).unwrap_or_default();
                for key in keys {
                    backend.touch(&key).await;
                }
            }
        });
    }

    /// One namespace's epoch, asked as every script asks it (see `keep_registry`).
    async fn touch(&self, epoch_key: &str) {
        let base = epoch_key.strip_suffix(":epoch").unwrap_or(epoch_key);
        let fresh = fresh_epoch();
        let epoch: Result<String, Fault> = if self.is_cluster() {
            self.cluster_epoch(&Namespace::new(base.to_owned())).await
        } else {
            self.call(async |conn| {
                let mut touch = TOUCH.prepare_invoke();
                touch
                    .key(epoch_key)
                    .arg(base)
                    .arg(&fresh)
                    .arg(&self.registry_wait);
                touch.invoke_async(conn).await
            })
            .await
        };
        let Ok(epoch) = epoch else {
            return;
        };
        let changed = self.kept_epochs.lock().is_ok_and(|mut kept| {
            let before = kept.insert(epoch_key.to_owned(), epoch.clone());
            before.is_some_and(|before| before != epoch)
        });
        if changed {
            self.renewals.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records an invalidation that was not delivered, and makes sure a background
    /// probe delivers it (see the module docs).
    pub(super) fn mark_dirty(&self) {
        self.renewals.fetch_add(1, Ordering::AcqRel);
        self.dirty.fetch_add(1, Ordering::AcqRel);
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        let backend = self.me.clone();
        let interval = self.probe_interval.max(Duration::from_millis(10));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(backend) = backend.upgrade() else {
                    return;
                };
                if backend.dirty.load(Ordering::Acquire) == 0 {
                    backend.probing.store(false, Ordering::Release);
                    // A failure may have come in between the check and the store.
                    if backend.dirty.load(Ordering::Acquire) == 0
                        || backend
                            .probing
                            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                            .is_err()
                    {
                        return;
                    }
                    continue;
                }
                let _ = backend.call(async |_| Ok(())).await;
            }
        });
    }

    /// Replaces the epoch of every namespace used, if invalidations were lost.
    async fn clean(&self, conn: &mut Wire) -> Result<(), Fault> {
        let seen = self.dirty.load(Ordering::Acquire);
        if seen == 0 {
            return Ok(());
        }
        let keys = self.epochs.lock().map(|e| e.clone()).unwrap_or_default();
        // One script a namespace (on a cluster, each in its namespace's slot); each
        // carries the registry's mark into the new epoch (`renew.lua`).
        for key in &keys {
            let mut renew = match self.is_cluster() {
                true => {
                    let mut renew = RENEW_CLUSTER.prepare_invoke();
                    renew.key(super::cluster::head_of(key));
                    renew
                }
                false => {
                    let mut renew = RENEW.prepare_invoke();
                    renew
                        .key(key)
                        .arg(key.strip_suffix(":epoch").unwrap_or(key));
                    renew
                }
            };
            renew.arg(fresh_epoch()).arg(&self.registry_wait);
            renew.invoke_async::<()>(conn).await.map_err(Fault::Redis)?;
        }
        // The connection hears nothing of its own plain commands (NOLOOP).
        if let Some(near) = &self.near {
            near.flush();
        }
        if self
            .dirty
            .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                namespaces = keys.len(),
                "redis reachable again: lost invalidations delivered by new cache epochs"
            );
        }
        Ok(())
    }

    /// Runs `body` on the connection under the deadline and the breaker. While an
    /// invalidation is undelivered, the epochs are replaced before anything else runs.
    pub(super) async fn call<T>(
        &self,
        body: impl AsyncFnOnce(&mut Wire) -> Result<T, RedisError>,
    ) -> Result<T, Fault> {
        if !self.breaker.allow() {
            return Err(Fault::Unavailable);
        }
        let heard = std::sync::OnceLock::new();
        let work = async {
            let Link { mut conn, heard: h } = self.connection().await?;
            let _ = heard.set(h);
            self.watch_masters(&conn).await;
            self.keep_registry();
            self.clean(&mut conn).await?;
            body(&mut conn).await.map_err(Fault::Redis)
        };
        let result = match tokio::time::timeout(self.deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Fault::Timeout),
        };
        match &result {
            Ok(_) => {
                self.breaker.success();
                // Every push sent before this answer was handled: they share the
                // connection, in order.
                if let Some(heard) = heard.get() {
                    heard.fetch_max(self.now(), Ordering::AcqRel);
                }
            }
            // Redis answered, about this call (a key of another type, a value that is
            // no number): it is healthy, and a caller's mistakes must not open the
            // breaker for everyone.
            Err(fault) if fault.is_answer() => self.breaker.success(),
            Err(fault) => {
                // A cluster connection keeps one connection per node and mends each
                // by itself; replacing it whole after one node's timeout would make
                // every call wait on that node again while a new one is made.
                if fault.is_connection_fault() && !self.is_cluster() {
                    self.drop_connection();
                }
                self.breaker.failure();
                tracing::debug!(%fault, "redis call failed");
            }
        }
        result
    }

    /// Runs a protocol script on a namespace (EVALSHA, loading it once if the server
    /// does not know it). Every script starts from the namespace's base and a fresh
    /// epoch, used if the namespace has none yet (`prelude.lua`).
    async fn script<T: FromRedisValue>(
        &self,
        script: &Script,
        ns: &Namespace,
        args: &[&[u8]],
    ) -> Result<T, Fault> {
        let fresh = fresh_epoch();
        self.call(async |conn| {
            let mut invocation = script.prepare_invoke();
            invocation.key(&ns.epoch_key);
            invocation
                .arg(&ns.base)
                .arg(&fresh)
                .arg(&self.registry_wait);
            for arg in args {
                invocation.arg(*arg);
            }
            invocation.invoke_async(conn).await
        })
        .await
    }

    /// One command under the deadline and breaker.
    fn command<'a, T: FromRedisValue + Send + 'a>(&'a self, cmd: Cmd) -> Pending<'a, T> {
        Box::pin(async move { self.call(async |c| cmd.query_async(c).await).await })
    }

    /// One command whose integer answer means "yes" when positive.
    fn yes<'a>(&'a self, cmd: Cmd) -> Pending<'a, bool> {
        Box::pin(async move { Ok(self.command::<i64>(cmd).await? > 0) })
    }
}

pub(super) fn millis(d: Duration) -> Vec<u8> {
    d.as_millis().to_string().into_bytes()
}

/// Where a connection's pushes go: invalidations to the near tier; a closed
/// connection (or a broken redirect) flushes it.
struct Pushes {
    near: Arc<NearTier>,
    backend: Weak<RedisBackend>,
    serial: u64,
}

impl redis::aio::AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match info.kind {
            PushKind::Invalidate => {
                // One array of names, or null: everything (FLUSHALL, FLUSHDB).
                let names = match info.data.into_iter().next() {
                    Some(redis::Value::Array(names)) => Some(
                        names
                            .into_iter()
                            .filter_map(|name| match name {
                                redis::Value::BulkString(b) => Some(b),
                                redis::Value::SimpleString(s) => Some(s.into_bytes()),
                                _ => None,
                            })
                            .collect(),
                    ),
                    _ => None,
                };
                self.near.invalidated(names);
            }
            PushKind::Disconnection => match self.backend.upgrade() {
                Some(backend) => backend.lost(self.serial),
                None => self.near.flush(),
            },
            PushKind::Other(kind) if kind == "tracking-redir-broken" => self.near.flush(),
            _ => {}
        }
        Ok(())
    }
}

/// A row lookup's reply: the epoch and generation the script read, and per key its
/// value and the time the entry has left.
struct RowReply {
    epoch: String,
    generation: String,
    values: Vec<Option<Vec<u8>>>,
    left: Vec<Option<Duration>>,
}

/// The bytes of a string reply.
pub(super) fn reply_bytes(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        redis::Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

/// The time a key has left, from its PTTL (`None`: no TTL, or no key).
pub(super) fn reply_left(value: &redis::Value) -> Option<Duration> {
    match value {
        redis::Value::Int(ms) if *ms >= 0 => Some(Duration::from_millis(*ms as u64)),
        _ => None,
    }
}

/// Text Redis holds: names built from anything else would never meet their
/// invalidations, so such a reply is a failed lookup, not a hit.
pub(super) fn reply_text(value: Option<redis::Value>) -> Result<String, Fault> {
    value
        .and_then(reply_bytes)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(Fault::Value("a lookup answered a name that is not text"))
}

/// Parses a row lookup's reply: epoch, generation, then a value (`''` for a miss) and
/// its PTTL per key.
fn row_reply(reply: Vec<redis::Value>, keys: usize) -> Result<RowReply, Fault> {
    if reply.len() != 2 + 2 * keys {
        return Err(Fault::Value(
            "a row lookup answered the wrong number of values",
        ));
    }
    let mut reply = reply.into_iter();
    let epoch = reply_text(reply.next())?;
    let generation = reply_text(reply.next())?;
    let (mut values, mut left) = (Vec::with_capacity(keys), Vec::with_capacity(keys));
    while let (Some(value), Some(ttl)) = (reply.next(), reply.next()) {
        let value = reply_bytes(value).ok_or(Fault::Value("a row lookup answered a non-string"))?;
        values.push((!value.is_empty()).then_some(value));
        left.push(reply_left(&ttl));
    }
    Ok(RowReply {
        epoch,
        generation,
        values,
        left,
    })
}

/// The row name a unique value's entry holds after its shape.
fn mapped_key(entry: &[u8], shape: &str) -> String {
    String::from_utf8_lossy(entry.get(shape.len()..).unwrap_or_default()).into_owned()
}

/// The connection of a runtime.
struct Conn {
    runtime: tokio::runtime::Id,
    /// Tells a late "ended" from a replaced connection apart.
    serial: u64,
    conn: Wire,
    /// Whether invalidation pushes arrive on it (near tier).
    tracked: bool,
    /// When it last answered (nanoseconds after the backend was made).
    heard: Arc<AtomicU64>,
}

/// A connection borrowed for one call, and where to say it answered.
struct Link {
    conn: Wire,
    heard: Arc<AtomicU64>,
}

/// A connection's end (its driver dropped, with its runtime or after an error, with
/// or without a "disconnected" push) is a lost connection.
impl Drop for Pushes {
    fn drop(&mut self) {
        if let Some(backend) = self.backend.upgrade() {
            backend.lost(self.serial);
        }
    }
}

impl RedisBackend {
    /// The near tier, when it may answer now: configured, wanted by the caller, Redis
    /// not skipped by the breaker, and this runtime's connection tracked and heard
    /// from within one deadline — so a Redis that stopped answering (paused, cut off)
    /// never leaves this process serving what it can no longer hear invalidated.
    fn near_now(&self, wanted: bool) -> Option<&NearTier> {
        let near = self.near.as_deref().filter(|_| wanted)?;
        if self.breaker.is_open() {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?.id();
        let conns = self.conns.lock().ok()?;
        let conn = conns.iter().find(|c| c.runtime == runtime)?;
        let silent = self
            .now()
            .saturating_sub(conn.heard.load(Ordering::Acquire));
        (conn.tracked && silent < self.deadline.as_nanos() as u64).then_some(near)
    }
}

impl RedisBackend {
    /// A user scope's copies of rows (rule 6 of `backend.rs`); never from or into the
    /// near tier, which mirrors shared entries only.
    async fn scoped_get(
        &self,
        ns: &Namespace,
        get: &RowGet<'_>,
        scope: &super::backend::Scoped,
    ) -> Result<Vec<Option<Vec<u8>>>, Fault> {
        let lease = millis(get.lease);
        let n = scope.counters.len().to_string();
        let mut args: Vec<&[u8]> = vec![
            get.table.as_bytes(),
            get.token.as_bytes(),
            &lease,
            get.shape.as_bytes(),
            scope.id.as_bytes(),
            n.as_bytes(),
        ];
        args.extend(scope.counters.iter().map(|c| c.as_bytes()));
        args.extend(get.keys.iter().map(|k| k.as_bytes()));
        let reply: Vec<redis::Value> = self.script(&SCOPED_GET, ns, &args).await?;
        if reply.len() != get.keys.len() {
            return Err(Fault::Value(
                "a scoped row lookup answered the wrong number of values",
            ));
        }
        reply
            .into_iter()
            .map(|value| {
                let value = reply_bytes(value)
                    .ok_or(Fault::Value("a scoped row lookup answered a non-string"))?;
                Ok((!value.is_empty()).then_some(value))
            })
            .collect()
    }
}

impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        // A cluster keeps its entries under other names than one server does: the
        // two are never one cache (`CacheService::same_namespace`).
        if self.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn is_degraded(&self) -> bool {
        self.breaker.is_open()
    }

    fn near_stats(&self) -> Option<super::NearStats> {
        self.near.as_ref().map(|near| near.stats())
    }

    fn set_near_hook(&self, hook: Option<super::FillHook>) {
        if let Some(near) = &self.near {
            near.set_hook(hook);
        }
    }

    fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Acquire)
    }

    fn register(&self, ns: &Namespace) {
        if let Ok(mut epochs) = self.epochs.lock()
            && !epochs.contains(&ns.epoch_key)
        {
            epochs.push(ns.epoch_key.clone());
        }
    }

    fn row_get<'a>(
        &'a self,
        ns: &'a Namespace,
        get: RowGet<'a>,
    ) -> Pending<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            if self.is_cluster() {
                return self.cluster_row_get(ns, &get).await;
            }
            if let Some(scope) = get.scope {
                return self.scoped_get(ns, &get, scope).await;
            }
            let mut out = vec![None; get.keys.len()];
            let near = self.near_now(get.near);
            if let Some(near) = near {
                near.rows(ns, get.table, get.shape, get.keys, &mut out);
                if out.iter().all(Option::is_some) {
                    get.answered_near
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(out);
                }
            }
            // Before anything is sent: a push handled from here on refuses the install.
            let start = near.map(NearTier::begin);
            let lease = millis(get.lease);
            let mut args: Vec<&[u8]> = vec![
                get.table.as_bytes(),
                get.token.as_bytes(),
                &lease,
                get.shape.as_bytes(),
            ];
            let asked: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_none()).collect();
            args.extend(asked.iter().map(|i| get.keys[*i].as_bytes()));
            let reply: Vec<redis::Value> = self.script(&ROW_GET, ns, &args).await?;
            let RowReply {
                epoch,
                generation,
                values,
                left,
            } = row_reply(reply, asked.len())?;
            if let (Some(near), Some(start)) = (near, start) {
                near.before_install().await;
                let found: Vec<(&String, &Vec<u8>, Option<Duration>)> = asked
                    .iter()
                    .zip(values.iter().zip(&left))
                    .filter_map(|(i, (v, left))| Some((&get.keys[*i], v.as_ref()?, *left)))
                    .collect();
                near.install_rows(start, ns, get.table, &epoch, &generation, &found, get.ttl);
            }
            for (i, value) in asked.into_iter().zip(values) {
                out[i] = value;
            }
            Ok(out)
        })
    }

    fn row_peek<'a>(
        &'a self,
        ns: &'a Namespace,
        table: &'a str,
        key: &'a str,
    ) -> Pending<'a, RowPeek> {
        Box::pin(async move {
            if self.is_cluster() {
                return self.cluster_row_peek(ns, table, key).await;
            }
            let reply: Vec<redis::Value> = self
                .script(&ROW_PEEK, ns, &[table.as_bytes(), key.as_bytes()])
                .await?;
            let [value, ttl, leased, copies] = <[redis::Value; 4]>::try_from(reply)
                .map_err(|_| Fault::Value("a row peek answered the wrong number of values"))?;
            let value =
                reply_bytes(value).ok_or(Fault::Value("a row peek answered a non-string"))?;
            let count = |v: &redis::Value| match v {
                redis::Value::Int(n) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            Ok(RowPeek {
                entry: (!value.is_empty()).then(|| (value, reply_left(&ttl))),
                leased: count(&leased) > 0,
                scoped_copies: count(&copies),
            })
        })
    }

    fn unique_get<'a>(&'a self, ns: &'a Namespace, get: RowGet<'a>) -> Pending<'a, UniqueFound> {
        Box::pin(async move {
            if self.is_cluster() {
                return self.cluster_unique_get(ns, &get).await;
            }
            let Some(mapping) = get.keys.first() else {
                return Ok(UniqueFound::Nothing);
            };
            let near = self.near_now(get.near);
            if let Some(near) = near {
                // Both from the near tier, or the round trip answers both.
                let mut found = [None];
                near.rows(
                    ns,
                    get.table,
                    get.shape,
                    std::slice::from_ref(mapping),
                    &mut found,
                );
                if let [Some(entry)] = found {
                    let key = mapped_key(&entry, get.shape);
                    let mut row = [None];
                    near.rows(
                        ns,
                        get.table,
                        get.shape,
                        std::slice::from_ref(&key),
                        &mut row,
                    );
                    if let [Some(row)] = row {
                        get.answered_near
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        return Ok(UniqueFound::Both(entry, row));
                    }
                }
            }
            let start = near.map(NearTier::begin);
            let lease = millis(get.lease);
            let args: Vec<&[u8]> = vec![
                get.table.as_bytes(),
                get.token.as_bytes(),
                &lease,
                get.shape.as_bytes(),
                mapping.as_bytes(),
            ];
            let reply: Vec<redis::Value> = self.script(&UNIQUE_GET, ns, &args).await?;
            let RowReply {
                epoch,
                generation,
                mut values,
                left,
            } = row_reply(reply, 2)?;
            let row = values.pop().flatten();
            let Some(entry) = values.pop().flatten() else {
                return Ok(UniqueFound::Nothing);
            };
            if let (Some(near), Some(start)) = (near, start) {
                near.before_install().await;
                let key = mapped_key(&entry, get.shape);
                let mut found = vec![(mapping, &entry, left[0])];
                if let Some(row) = &row {
                    found.push((&key, row, left[1]));
                }
                near.install_rows(start, ns, get.table, &epoch, &generation, &found, get.ttl);
            }
            Ok(match row {
                Some(row) => UniqueFound::Both(entry, row),
                None => UniqueFound::Mapping(entry),
            })
        })
    }

    fn row_fill<'a>(&'a self, ns: &'a Namespace, fill: RowFill<'a>) -> Pending<'a, u64> {
        Box::pin(async move {
            if self.is_cluster() {
                return self.cluster_row_fill(ns, &fill).await;
            }
            let ttl = millis(fill.ttl);
            let mut args: Vec<&[u8]> = vec![fill.table.as_bytes(), fill.token.as_bytes(), &ttl];
            let n = fill.scope.map(|scope| scope.counters.len().to_string());
            if let (Some(scope), Some(n)) = (fill.scope, &n) {
                args.push(scope.id.as_bytes());
                args.push(n.as_bytes());
                args.extend(scope.counters.iter().map(|c| c.as_bytes()));
            }
            for (key, value) in fill.entries {
                args.push(key.as_bytes());
                args.push(value);
            }
            let script = if fill.scope.is_some() {
                &SCOPED_FILL
            } else {
                &ROW_FILL
            };
            self.script(script, ns, &args).await
        })
    }

    fn invalidate<'a>(
        &'a self,
        ns: &'a Namespace,
        stale: Stale<'a>,
    ) -> Pending<'a, Option<Vec<String>>> {
        Box::pin(async move {
            // Read-your-writes in this process without waiting for the push; again
            // after the answer, for replies read before the write that come in after.
            // Every near tier of the process over this Redis prefix, not only this
            // cache's own (see `NEAR_TIERS`).
            let tiers = near_tiers(&self.tracked_prefix);
            let evict = || {
                for near in &tiers {
                    near.own_write(ns, stale.counters, stale.generations, stale.rows);
                }
            };
            evict();
            let (n, g) = (
                stale.counters.len().to_string(),
                stale.generations.len().to_string(),
            );
            let mut args: Vec<&[u8]> = vec![n.as_bytes()];
            args.extend(stale.counters.iter().map(|c| c.as_bytes()));
            args.push(g.as_bytes());
            args.extend(stale.generations.iter().map(|c| c.as_bytes()));
            for (table, key) in stale.rows {
                args.push(table.as_bytes());
                args.push(key.as_bytes());
            }
            let deliver = async || {
                if self.is_cluster() {
                    return self.cluster_invalidate(ns, &stale).await;
                }
                let reply = self
                    .script::<Vec<redis::Value>>(&INVALIDATE, ns, &args)
                    .await?;
                Ok(reply
                    .into_iter()
                    .skip(1)
                    .filter_map(|t| reply_text(Some(t)).ok())
                    .collect())
            };
            let mut delivered = deliver().await;
            if matches!(&delivered, Err(fault) if fault.is_broken_connection()) {
                // A connection broken before this call (Redis restarted): deliver on a
                // new one rather than flush every entry for it.
                delivered = deliver().await;
            }
            if delivered.is_err() {
                self.mark_dirty();
            }
            evict();
            // Under a registry window: the registered tables, read in the same step.
            let registry = match (delivered?, self.registry_wait.as_str()) {
                (_, "0") => None,
                (tables, _) => Some(tables),
            };
            Ok(registry)
        })
    }

    fn versioned<'a>(
        &'a self,
        ns: &'a Namespace,
        name: Versioned<'a>,
        delete: bool,
    ) -> Pending<'a, (String, Option<Vec<u8>>, bool)> {
        Box::pin(async move {
            if self.is_cluster() {
                return self.cluster_versioned(ns, &name, delete).await;
            }
            let near = self.near_now(name.near && !delete);
            if let Some(near) = near
                && let Some((key, value)) =
                    near.versioned(ns, name.kind, name.counters, name.suffix)
            {
                return Ok((key, Some(value), true));
            }
            let start = near.map(NearTier::begin);
            let n = name.counters.len().to_string();
            let mode: &[u8] = if delete { b"del" } else { b"get" };
            let mut args: Vec<&[u8]> = vec![mode, name.kind.as_bytes(), n.as_bytes()];
            args.extend(name.counters.iter().map(|c| c.as_bytes()));
            args.push(name.suffix.as_bytes());
            if delete {
                let (key, _): (String, i64) = self.script(&VERSIONED, ns, &args).await?;
                for near in near_tiers(&self.tracked_prefix) {
                    near.own_delete(&key);
                }
                return Ok((key, None, false));
            }
            let reply: Vec<redis::Value> = self.script(&VERSIONED, ns, &args).await?;
            if reply.len() != 5 + name.counters.len() {
                return Err(Fault::Value("a versioned lookup answered the wrong shape"));
            }
            let mut parts = reply.into_iter();
            let key = reply_text(parts.next())?;
            let value = parts
                .next()
                .and_then(reply_bytes)
                .ok_or(Fault::Value("a versioned lookup answered a non-string"))?;
            let left = parts.next().as_ref().and_then(reply_left);
            let epoch = reply_text(parts.next())?;
            let fill = matches!(parts.next(), Some(redis::Value::Int(1)));
            let counters = parts
                .map(|b| reply_text(Some(b)))
                .collect::<Result<Vec<_>, _>>()?;
            let value = (!value.is_empty()).then_some(value);
            if let (Some(near), Some(start)) = (near, start) {
                near.before_install().await;
                near.install_versioned(
                    start,
                    ns,
                    name.counters,
                    &epoch,
                    &counters,
                    &key,
                    value.as_deref(),
                    name.ttl,
                    left,
                );
            }
            Ok((key, value, fill))
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> Pending<'a, ()> {
        let mut cmd = cmd!("SET", key, value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        self.command(cmd)
    }

    fn get<'a>(&'a self, key: &'a str) -> Pending<'a, Option<Vec<u8>>> {
        self.command(cmd!("GET", key))
    }

    fn delete<'a>(&'a self, key: &'a str) -> Pending<'a, bool> {
        self.yes(cmd!("UNLINK", key))
    }

    fn exists<'a>(&'a self, key: &'a str) -> Pending<'a, bool> {
        self.yes(cmd!("EXISTS", key))
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> Pending<'a, bool> {
        self.yes(cmd!("PEXPIRE", key, millis(ttl)))
    }

    fn claim<'a>(&'a self, key: &'a str, ttl: Duration) -> Pending<'a, bool> {
        Box::pin(async move {
            let set: Option<String> = self
                .command(cmd!("SET", key, "1", "NX", "PX", millis(ttl)))
                .await?;
            Ok(set.is_some())
        })
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64) -> Pending<'a, i64> {
        self.command(cmd!("INCRBY", key, by))
    }

    fn list_push<'a>(&'a self, key: &'a str, value: Vec<u8>) -> Pending<'a, u64> {
        self.command(cmd!("RPUSH", key, value))
    }

    fn list_pop<'a>(&'a self, key: &'a str) -> Pending<'a, Option<Vec<u8>>> {
        self.command(cmd!("LPOP", key))
    }

    fn list_range<'a>(&'a self, key: &'a str, start: i64, stop: i64) -> Pending<'a, Vec<Vec<u8>>> {
        self.command(cmd!("LRANGE", key, start, stop))
    }

    fn list_len<'a>(&'a self, key: &'a str) -> Pending<'a, u64> {
        self.command(cmd!("LLEN", key))
    }

    fn set_add<'a>(&'a self, key: &'a str, members: Vec<Vec<u8>>) -> Pending<'a, u64> {
        self.command(cmd!("SADD", key, members))
    }

    fn set_remove<'a>(&'a self, key: &'a str, members: Vec<Vec<u8>>) -> Pending<'a, u64> {
        self.command(cmd!("SREM", key, members))
    }

    fn set_members<'a>(&'a self, key: &'a str) -> Pending<'a, Vec<Vec<u8>>> {
        self.command(cmd!("SMEMBERS", key))
    }

    fn set_is_member<'a>(&'a self, key: &'a str, member: Vec<u8>) -> Pending<'a, bool> {
        self.yes(cmd!("SISMEMBER", key, member))
    }

    fn hash_set<'a>(&'a self, key: &'a str, field: &'a str, value: Vec<u8>) -> Pending<'a, bool> {
        self.yes(cmd!("HSET", key, field, value))
    }

    fn hash_get<'a>(&'a self, key: &'a str, field: &'a str) -> Pending<'a, Option<Vec<u8>>> {
        self.command(cmd!("HGET", key, field))
    }

    fn hash_get_all<'a>(&'a self, key: &'a str) -> Pending<'a, HashMap<String, Vec<u8>>> {
        self.command(cmd!("HGETALL", key))
    }

    fn hash_delete<'a>(&'a self, key: &'a str, field: &'a str) -> Pending<'a, bool> {
        self.yes(cmd!("HDEL", key, field))
    }

    fn delete_matching<'a>(&'a self, pattern: &'a str) -> Pending<'a, u64> {
        Box::pin(async move {
            if self.is_cluster() {
                return self.cluster_delete_matching(pattern).await;
            }
            let (mut cursor, mut deleted) = (0u64, 0u64);
            loop {
                let (next, keys): (u64, Vec<String>) = self
                    .command(cmd!("SCAN", cursor, "MATCH", pattern, "COUNT", 500))
                    .await?;
                if !keys.is_empty() {
                    deleted += self.command::<u64>(cmd!("UNLINK", keys)).await?;
                }
                if next == 0 {
                    return Ok(deleted);
                }
                cursor = next;
            }
        })
    }
}

impl Fault {
    /// A connection that broke (reset, closed by a restart): a retry on a new one may
    /// succeed at once. Not a timeout, which may be a hung server.
    pub(crate) fn is_broken_connection(&self) -> bool {
        matches!(self, Fault::Redis(e)
            if (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout())
    }

    /// An error reply about the call itself, from a server that is up and can serve:
    /// anything but the codes of a server that cannot serve now — or cannot take
    /// writes (out of memory, a failing save, a replica), which for a cache whose
    /// invalidations are writes is not serving either.
    fn is_answer(&self) -> bool {
        match self {
            Fault::Redis(e) => e.code().is_some_and(|code| {
                !matches!(
                    code,
                    "BUSY"
                        | "LOADING"
                        | "MASTERDOWN"
                        | "TRYAGAIN"
                        | "CLUSTERDOWN"
                        | "OOM"
                        | "MISCONF"
                        | "READONLY"
                        | "NOREPLICAS"
                )
            }),
            _ => false,
        }
    }

    fn is_connection_fault(&self) -> bool {
        match self {
            Fault::Timeout => true,
            Fault::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
            }
            _ => false,
        }
    }
}
