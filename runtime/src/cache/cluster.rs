//! The protocol of `backend.rs` on a Redis Cluster, where a script may touch only keys
//! it declares, all in one hash slot.
//!
//! # Names
//!
//! Every script touches one key. A slot being migrated (`redis-cli --cluster
//! reshard`) refuses a script whose keys are partly moved (`TRYAGAIN`), and the keys
//! of a row — its entry, its lease, its scoped copies — would be partly there most of
//! the time (a lease exists only during a fill). So each is one hash:
//!
//! - A namespace's *head*, `{base}:{{base}}` in the namespace's slot (the base holds
//!   letters, digits and `_-.:` only, never a brace): the epoch, the registry of cached
//!   tables (rule 8), table generations and version counters (`head.lua`).
//! - A *row*, `{base}:{epoch}:{{tag}}:{table}:{g}:{key}`, tagged with a hash of its
//!   table and key so rows spread over the cluster: its entry, its lease and every
//!   scope's copy and lease, each field with its own expiry (`prelude.lua`).
//! - A versioned name is one plain key, in whatever slot its name hashes to.
//!
//! # Two steps instead of one
//!
//! Every operation first runs `head.lua` on the namespace's slot (the epoch, the
//! generations and counters it needs, rule 8's registration), then the row scripts on
//! each row slot with names built from what the head answered. A step in between may
//! see a write's head change and not yet its row deletions, or the reverse; the rules
//! still hold:
//!
//! - A writer bumps the head first, then deletes the rows it names under the epoch and
//!   generation its own head step answered. A reader's lease taken before that deletion
//!   is deleted with it, so its fill is refused (rule 3); a lease taken after it was
//!   taken after the write committed, so its database read sees the write.
//! - A generation or epoch bumped since a reader's head step leaves that reader
//!   working on names no later reader resolves: a late fill lands where nobody looks
//!   (and expires with its TTL).
//! - An invalidation that fails half-way is reported (`Err`), which makes the backend
//!   dirty and replaces the namespace's epoch (rule 4's later delivery, `redis.rs`).
//!
//! # Restarts
//!
//! On one Redis, a server that is not the one last talked to (restarted, perhaps from
//! a snapshot older than the invalidations since, or failed over) makes every
//! namespace get a new epoch before anything is read (`redis.rs`). On a cluster the
//! client reconnects to nodes by itself, so the backend asks every master its
//! `run_id` once per probe interval, in a task beside the calls: when a `run_id`
//! seen before is no longer among the masters' — a master restarted, or replaced by
//! its replica — every namespace this process used gets a new epoch before the next
//! call runs. Stale entries a restarted master brought back are therefore served for
//! at most about one probe interval, by a process that had talked to the cluster
//! before (a process started after the restart has nothing to compare with, as on one
//! Redis). A master that does not answer concludes nothing. The first connection asks
//! the same before anything is read, so what a watch compares with never depends on
//! when the watch ran.
//!
//! # One round trip
//!
//! The head's answer changes only when a write bumps a generation or the epoch is
//! replaced; otherwise each read would ask it the same question first. So a reader
//! remembers the names it last resolved (per namespace, table and scope counters) and
//! reads the rows under them *while* it asks the head; it trusts those rows only when
//! the head answers the same names. Epochs are fresh random values and generations and
//! counters only grow, so equal names at the head mean they were current when the rows
//! were read: the read is the same as one that asked the head first. The early read
//! takes no lease — rule 8's verdict comes with the head — so a miss takes it in a
//! second step. A fill uses the remembered names too: its lease lives in the row's own
//! hash, so under names that moved on it finds none and stores nothing.
//!
//! What this costs: a cached hit is one round trip (the head and the rows in flight
//! together), a miss two, a fill one; a write two (the head, then the rows).

use std::sync::LazyLock;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{FromRedisValue, RedisError, Script};

use super::Fault;
use super::backend::{Namespace, RowFill, RowGet, RowPeek, Scoped, Stale, UniqueFound, Versioned};
use super::redis::{RedisBackend, Wire, millis, reply_bytes, reply_left, reply_text};

fn script(body: &str) -> Script {
    Script::new(&format!("#!lua\n{body}"))
}

/// The row scripts' shared helpers.
const PRELUDE: &str = include_str!("lua/cluster/prelude.lua");

fn row_script(body: &str) -> Script {
    // The single server's prelude brings `now_ms` and `live` (its other functions,
    // which name undeclared keys, are never called here).
    let shared = super::redis::PRELUDE;
    Script::new(&format!("#!lua\n{shared}\n{PRELUDE}\n{body}"))
}

static HEAD: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/cluster/head.lua")));
static ROWS_GET: LazyLock<Script> =
    LazyLock::new(|| row_script(include_str!("lua/cluster/rows_get.lua")));
static ROWS_FILL: LazyLock<Script> =
    LazyLock::new(|| row_script(include_str!("lua/cluster/rows_fill.lua")));
static SCOPED_GET: LazyLock<Script> =
    LazyLock::new(|| row_script(include_str!("lua/cluster/scoped_get.lua")));
static SCOPED_FILL: LazyLock<Script> =
    LazyLock::new(|| row_script(include_str!("lua/cluster/scoped_fill.lua")));
static PEEK: LazyLock<Script> = LazyLock::new(|| row_script(include_str!("lua/cluster/peek.lua")));
static GET: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/cluster/get.lua")));

/// The head of a namespace on the cluster, from its single-server epoch key
/// (`{base}:epoch`, the name `register` records).
pub(super) fn head_of(epoch_key: &str) -> String {
    head_key(epoch_key.strip_suffix(":epoch").unwrap_or(epoch_key))
}

fn head_key(base: &str) -> String {
    format!("{base}:{{{base}}}")
}

/// The slot tag of a row: 16 hex digits of a 64-bit FNV-1a hash of its table and key
/// (a key may hold braces; the hash never does).
fn row_tag(table: &str, key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in table.bytes().chain([0]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A row's hash: its entry, lease and scoped copies.
fn row_name(base: &str, epoch: &str, table: &str, g: &str, key: &str) -> String {
    let tag = row_tag(table, key);
    format!("{base}:{epoch}:{{{tag}}}:{table}:{g}:{key}")
}

/// What a head step does besides answering the epoch.
#[derive(Clone, Copy)]
enum Mode {
    /// Registers tables (rule 8) and answers whether leases may be taken.
    Read,
    /// Bumps counters and generations; under a window answers the registered tables.
    Write,
    /// Changes nothing.
    Peek,
}

#[derive(Default)]
struct Ask<'a> {
    bump_counters: &'a [String],
    bump_tables: &'a [String],
    tables: Vec<&'a str>,
    counters: &'a [String],
    register: Vec<&'a str>,
}

/// What a head step answered.
struct Head {
    /// `None`: a peek of a namespace that has no epoch (nothing cached in it).
    epoch: Option<String>,
    /// Whether leases may be taken (rule 8).
    leases: bool,
    generations: Vec<String>,
    counters: Vec<String>,
    registered: Vec<String>,
}

/// The tables of the version counters among `counters` (rule 8 registers them).
fn counter_tables(counters: &[String]) -> impl Iterator<Item = &str> {
    counters.iter().filter_map(|c| c.strip_prefix("v:"))
}

async fn eval<T: FromRedisValue>(
    conn: &mut Wire,
    script: &Script,
    keys: &[&str],
    args: &[&[u8]],
) -> Result<T, RedisError> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(*key);
    }
    for arg in args {
        invocation.arg(*arg);
    }
    invocation.invoke_async(conn).await
}

impl RedisBackend {
    /// The head step (see the module docs).
    async fn head(
        &self,
        conn: &mut Wire,
        ns: &Namespace,
        mode: Mode,
        ask: &Ask<'_>,
    ) -> Result<Head, RedisError> {
        let head = head_key(&ns.base);
        let fresh = super::redis::fresh_epoch();
        let mode_word: &[u8] = match mode {
            Mode::Read => b"read",
            Mode::Write => b"write",
            Mode::Peek => b"peek",
        };
        let lens = [
            ask.bump_counters.len(),
            ask.bump_tables.len(),
            ask.tables.len(),
            ask.counters.len(),
            ask.register.len(),
        ]
        .map(|n| n.to_string());
        let mut args: Vec<&[u8]> =
            vec![fresh.as_bytes(), self.registry_wait().as_bytes(), mode_word];
        args.push(lens[0].as_bytes());
        args.extend(ask.bump_counters.iter().map(|c| c.as_bytes()));
        args.push(lens[1].as_bytes());
        args.extend(ask.bump_tables.iter().map(|t| t.as_bytes()));
        args.push(lens[2].as_bytes());
        args.extend(ask.tables.iter().map(|t| t.as_bytes()));
        args.push(lens[3].as_bytes());
        args.extend(ask.counters.iter().map(|c| c.as_bytes()));
        args.push(lens[4].as_bytes());
        args.extend(ask.register.iter().map(|t| t.as_bytes()));
        let reply: Vec<redis::Value> = eval(conn, &HEAD, &[head.as_str()], &args).await?;
        let wrong = || {
            RedisError::from((
                redis::ErrorKind::Parse,
                "a head step answered the wrong shape",
            ))
        };
        let mut parts = reply.into_iter();
        let epoch = reply_text(parts.next()).map_err(|_| wrong())?;
        if epoch.is_empty() {
            return Ok(Head {
                epoch: None,
                leases: false,
                generations: Vec::new(),
                counters: Vec::new(),
                registered: Vec::new(),
            });
        }
        let leases = matches!(parts.next(), Some(redis::Value::Int(1)));
        let mut text = |n: usize| -> Result<Vec<String>, RedisError> {
            (0..n)
                .map(|_| reply_text(parts.next()).map_err(|_| wrong()))
                .collect()
        };
        let generations = text(ask.tables.len())?;
        let counters = text(ask.counters.len())?;
        let registered = parts.filter_map(|t| reply_text(Some(t)).ok()).collect();
        Ok(Head {
            epoch: Some(epoch),
            leases,
            generations,
            counters,
            registered,
        })
    }

    /// The names a reader of `table` (with a scope's `counters`) last resolved, if any.
    fn guess(&self, ns: &Namespace, table: &str, counters: &[String]) -> Option<Names> {
        let guesses = self.guesses.lock().ok()?;
        guesses.get(&names_key(ns, table, counters)).cloned()
    }

    fn remember(&self, ns: &Namespace, table: &str, counters: &[String], names: &Names) {
        if let Ok(mut guesses) = self.guesses.lock() {
            if guesses.len() >= 4096 {
                guesses.clear(); // names of many scopes' counter sets: start again
            }
            guesses.insert(names_key(ns, table, counters), names.clone());
        }
    }

    /// Reads `keys` of `get.table` under `names`: one script per row, all in flight
    /// together; a miss takes the reader's lease when `leases`.
    async fn rows_at(
        conn: &mut Wire,
        ns: &Namespace,
        get: &RowGet<'_>,
        names: &Names,
        leases: bool,
        keys: &[&String],
    ) -> Result<Vec<Option<Vec<u8>>>, RedisError> {
        let lease = millis(get.lease);
        let leases: &[u8] = if leases { b"1" } else { b"0" };
        let field = get.scope.map(|scope| scoped_field(scope, &names.counters));
        let mut args: Vec<&[u8]> = vec![get.token.as_bytes(), &lease, get.shape.as_bytes(), leases];
        let script: &Script = match &field {
            Some(field) => {
                args.push(field.as_bytes());
                &SCOPED_GET
            }
            None => &ROWS_GET,
        };
        let answers = try_join_all(keys.iter().map(|key| {
            let mut conn = conn.clone();
            let name = row_name(&ns.base, &names.epoch, get.table, &names.generation, key);
            let args = &args;
            async move { eval::<redis::Value>(&mut conn, script, &[name.as_str()], args).await }
        }))
        .await?;
        Ok(answers
            .into_iter()
            .map(|value| reply_bytes(value).filter(|v| !v.is_empty()))
            .collect())
    }

    /// Rule 2 (and 6 for a scope) on the cluster, in one round trip when the names
    /// this process last resolved still hold: the rows are read under them (taking no
    /// lease) at the same time as the head is asked, and the answer is used only if
    /// the head names the same epoch, generation and counters — which only ever grow
    /// or change to fresh random values, so the names were current when the rows were
    /// read, exactly as if the head had been asked first. A miss then takes its lease in
    /// a second step (when rule 8 allows one); names that moved on cost the two steps.
    pub(super) async fn cluster_row_get(
        &self,
        ns: &Namespace,
        get: &RowGet<'_>,
    ) -> Result<Vec<Option<Vec<u8>>>, Fault> {
        self.call(async |conn| {
            let counters: &[String] = get.scope.map_or(&[], |s| &s.counters);
            let mut register: Vec<&str> = counter_tables(counters).collect();
            register.push(get.table);
            let ask = Ask {
                tables: vec![get.table],
                counters,
                register,
                ..Ask::default()
            };
            let all: Vec<&String> = get.keys.iter().collect();
            let guess = self.guess(ns, get.table, counters);
            let (head, early) = match &guess {
                Some(names) => {
                    let mut head_conn = conn.clone();
                    let (head, rows) = futures_util::future::join(
                        self.head(&mut head_conn, ns, Mode::Read, &ask),
                        Self::rows_at(conn, ns, get, names, false, &all),
                    )
                    .await;
                    (head?, Some(rows?))
                }
                None => (self.head(conn, ns, Mode::Read, &ask).await?, None),
            };
            let names = Names::of(&head);
            self.remember(ns, get.table, counters, &names);
            let mut out = match early {
                Some(rows) if guess.as_ref() == Some(&names) => rows,
                _ => return Self::rows_at(conn, ns, get, &names, head.leases, &all).await,
            };
            let missed: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_none()).collect();
            if head.leases && !missed.is_empty() {
                let keys: Vec<&String> = missed.iter().map(|i| &get.keys[*i]).collect();
                let again = Self::rows_at(conn, ns, get, &names, true, &keys).await?;
                for (i, value) in missed.into_iter().zip(again) {
                    out[i] = value;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Rule 3 (and 6) on the cluster, under the names this process last resolved
    /// (asking the head when it has none): a lease lives in its row's hash, so a fill
    /// under names that moved on finds no lease and stores nothing.
    pub(super) async fn cluster_row_fill(
        &self,
        ns: &Namespace,
        fill: &RowFill<'_>,
    ) -> Result<u64, Fault> {
        self.call(async |conn| {
            let counters: &[String] = fill.scope.map_or(&[], |s| &s.counters);
            let names = match self.guess(ns, fill.table, counters) {
                Some(names) => names,
                None => {
                    let ask = Ask {
                        tables: vec![fill.table],
                        counters,
                        ..Ask::default()
                    };
                    let head = self.head(conn, ns, Mode::Peek, &ask).await?;
                    if head.epoch.is_none() {
                        return Ok(0);
                    }
                    Names::of(&head)
                }
            };
            let ttl = millis(fill.ttl);
            let field = fill.scope.map(|scope| scoped_field(scope, &names.counters));
            let filled = try_join_all(fill.entries.iter().map(|(key, value)| {
                let mut conn = conn.clone();
                let name = row_name(&ns.base, &names.epoch, fill.table, &names.generation, key);
                let mut args: Vec<&[u8]> = vec![fill.token.as_bytes(), &ttl];
                let script: &Script = match &field {
                    Some(field) => {
                        args.push(field.as_bytes());
                        &SCOPED_FILL
                    }
                    None => &ROWS_FILL,
                };
                args.push(value);
                async move { eval::<u64>(&mut conn, script, &[name.as_str()], &args).await }
            }))
            .await?;
            Ok(filled.into_iter().sum())
        })
        .await
    }

    /// Rule 7 on the cluster: the mapping, then the row it names.
    pub(super) async fn cluster_unique_get(
        &self,
        ns: &Namespace,
        get: &RowGet<'_>,
    ) -> Result<UniqueFound, Fault> {
        let Some(mapping) = get.keys.first() else {
            return Ok(UniqueFound::Nothing);
        };
        let found = self
            .cluster_row_get(
                ns,
                &RowGet {
                    keys: std::slice::from_ref(mapping),
                    ..*get
                },
            )
            .await?;
        let Some(entry) = found.into_iter().next().flatten() else {
            return Ok(UniqueFound::Nothing);
        };
        let key =
            String::from_utf8_lossy(entry.get(get.shape.len()..).unwrap_or_default()).into_owned();
        let row = self
            .cluster_row_get(
                ns,
                &RowGet {
                    keys: std::slice::from_ref(&key),
                    ..*get
                },
            )
            .await?;
        Ok(match row.into_iter().next().flatten() {
            Some(row) => UniqueFound::Both(entry, row),
            None => UniqueFound::Mapping(entry),
        })
    }

    pub(super) async fn cluster_row_peek(
        &self,
        ns: &Namespace,
        table: &str,
        key: &str,
    ) -> Result<RowPeek, Fault> {
        self.call(async |conn| {
            let ask = Ask {
                tables: vec![table],
                ..Ask::default()
            };
            let head = self.head(conn, ns, Mode::Peek, &ask).await?;
            let Some(epoch) = head.epoch.as_deref() else {
                return Ok(RowPeek::default());
            };
            let g = head.generations.first().map_or("0", String::as_str);
            let name = row_name(&ns.base, epoch, table, g, key);
            let reply: Vec<redis::Value> = eval(conn, &PEEK, &[name.as_str()], &[]).await?;
            let [value, ttl, leased, copies] =
                <[redis::Value; 4]>::try_from(reply).map_err(|_| {
                    RedisError::from((
                        redis::ErrorKind::Parse,
                        "a row peek answered the wrong shape",
                    ))
                })?;
            let count = |v: &redis::Value| match v {
                redis::Value::Int(n) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            let value = reply_bytes(value).unwrap_or_default();
            Ok(RowPeek {
                entry: (!value.is_empty()).then(|| (value, reply_left(&ttl))),
                leased: count(&leased) > 0,
                scoped_copies: count(&copies),
            })
        })
        .await
    }

    /// Rule 4 on the cluster: the head's bumps, then each named row deleted — one key,
    /// one command each — under the epoch and generation the head answered. Under a
    /// registry window, the registered tables.
    pub(super) async fn cluster_invalidate(
        &self,
        ns: &Namespace,
        stale: &Stale<'_>,
    ) -> Result<Vec<String>, Fault> {
        self.call(async |conn| {
            let mut tables: Vec<&str> = stale.rows.iter().map(|(t, _)| t.as_str()).collect();
            tables.sort_unstable();
            tables.dedup();
            let ask = Ask {
                bump_counters: stale.counters,
                bump_tables: stale.generations,
                tables: tables.clone(),
                ..Ask::default()
            };
            let head = self.head(conn, ns, Mode::Write, &ask).await?;
            let epoch = head.epoch.as_deref().unwrap_or_default();
            try_join_all(stale.rows.iter().map(|(table, key)| {
                let g = tables
                    .iter()
                    .position(|t| t == table)
                    .and_then(|i| head.generations.get(i))
                    .map_or("0", String::as_str);
                let name = row_name(&ns.base, epoch, table, g, key);
                let mut conn = conn.clone();
                async move {
                    redis::cmd("DEL")
                        .arg(name)
                        .query_async::<i64>(&mut conn)
                        .await
                }
            }))
            .await?;
            Ok(head.registered)
        })
        .await
    }

    /// Rule 5 on the cluster: the head resolves the name, then one key is read (or
    /// deleted) in its own slot.
    pub(super) async fn cluster_versioned(
        &self,
        ns: &Namespace,
        name: &Versioned<'_>,
        delete: bool,
    ) -> Result<(String, Option<Vec<u8>>, bool), Fault> {
        self.call(async |conn| {
            let ask = Ask {
                counters: name.counters,
                register: if delete {
                    Vec::new()
                } else {
                    counter_tables(name.counters).collect()
                },
                ..Ask::default()
            };
            let head = self.head(conn, ns, Mode::Read, &ask).await?;
            let epoch = head.epoch.as_deref().unwrap_or_default();
            let key = format!(
                "{}:{epoch}:{}:{}:{}",
                ns.base,
                name.kind,
                head.counters.join(","),
                name.suffix
            );
            if delete {
                redis::cmd("DEL").arg(&key).query_async::<i64>(conn).await?;
                return Ok((key, None, false));
            }
            let reply: Vec<redis::Value> = eval(conn, &GET, &[key.as_str()], &[]).await?;
            let value = reply
                .into_iter()
                .next()
                .and_then(reply_bytes)
                .filter(|v| !v.is_empty());
            Ok((key, value, head.leases))
        })
        .await
    }

    /// Starts, unless one runs, the task that asks every master its `run_id` once per
    /// probe interval, beside the calls (a master that does not answer costs them
    /// nothing: the question is dropped after one deadline and nothing is concluded
    /// from it). A `run_id` seen before and gone now (a master restarted or failed
    /// over) makes the backend dirty, so every namespace gets a new epoch before the
    /// next call goes on. The task ends with the backend or its runtime.
    pub(super) async fn watch_masters(&self, conn: &Wire) {
        let Wire::Cluster(cluster) = conn else {
            return;
        };
        let (now, interval) = (self.now(), self.probe_interval());
        let beat = self.watch_beat.load(std::sync::atomic::Ordering::Acquire);
        // A watch whose runtime is no longer driven (parked, or gone without its task
        // being dropped) misses its beats: another one starts on this call's runtime.
        let missed = 3 * (interval + self.deadline()).as_nanos() as u64;
        let stuck = now.saturating_sub(beat) > missed;
        let running = self
            .watching
            .swap(true, std::sync::atomic::Ordering::AcqRel);
        if running && !stuck {
            return;
        }
        self.watch_beat
            .store(now, std::sync::atomic::Ordering::Release);
        if running {
            // The stalled watch may have missed a restart: this call asks first, so
            // that what a restarted master brought back is not read by it.
            let mut asking = cluster.clone();
            if let Some(ids) = master_ids(&mut asking, self.deadline()).await {
                self.note_masters(ids);
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watching
                .store(false, std::sync::atomic::Ordering::Release);
            return;
        };
        let (mut cluster, backend) = (cluster.clone(), self.weak());
        let deadline = self.deadline();
        runtime.spawn(async move {
            // Lets another runtime start a watch when this one ends.
            let _watching = Watching(backend.clone());
            loop {
                let ids = master_ids(&mut cluster, deadline).await;
                let Some(backend) = backend.upgrade() else {
                    return;
                };
                backend
                    .watch_beat
                    .store(backend.now(), std::sync::atomic::Ordering::Release);
                if let Some(ids) = ids {
                    backend.note_masters(ids);
                }
                drop(backend);
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// The masters' `run_id`s as just asked (by the watch, or when a connection is
    /// made): one seen before and gone now makes the backend dirty.
    pub(super) fn note_masters(&self, ids: Vec<String>) {
        let gone = self.masters.lock().is_ok_and(|mut seen| {
            let gone = seen.iter().any(|id| ids.binary_search(id).is_err());
            *seen = ids;
            gone
        });
        if gone {
            tracing::warn!(
                "a redis cluster master restarted or failed over: new cache epochs replace the old"
            );
            self.mark_dirty();
        }
    }

    /// A namespace's epoch, asked as every head step asks it (an epoch whose registry
    /// lost its mark is replaced; see `keep_registry` in `redis.rs`).
    pub(super) async fn cluster_epoch(&self, ns: &Namespace) -> Result<String, Fault> {
        self.call(async |conn| {
            let head = self.head(conn, ns, Mode::Read, &Ask::default()).await?;
            Ok(head.epoch.unwrap_or_default())
        })
        .await
    }

    /// Deletes every key matching `pattern` on every master of the cluster.
    pub(super) async fn cluster_delete_matching(&self, pattern: &str) -> Result<u64, Fault> {
        let nodes: String = self
            .call(async |conn| redis::cmd("CLUSTER").arg("NODES").query_async(conn).await)
            .await?;
        let masters: Vec<(String, u16)> = nodes
            .lines()
            .filter(|line| {
                line.split(' ')
                    .nth(2)
                    .is_some_and(|flags| flags.contains("master"))
            })
            .filter_map(|line| {
                let address = line.split(' ').nth(1)?.split('@').next()?;
                let (host, port) = address.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect();
        let mut deleted = 0;
        for (host, port) in masters {
            let mut cursor = 0u64;
            loop {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port,
                });
                let (next, keys): (u64, Vec<String>) = self
                    .call(async |conn| {
                        let Wire::Cluster(cluster) = conn else {
                            return Err(RedisError::from((
                                redis::ErrorKind::Client,
                                "not a cluster",
                            )));
                        };
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(500);
                        let value = cluster.route_command(scan, route).await?;
                        Ok(redis::from_redis_value(value)?)
                    })
                    .await?;
                for key in &keys {
                    deleted += self
                        .call(async |conn| {
                            redis::cmd("UNLINK").arg(key).query_async::<u64>(conn).await
                        })
                        .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}

/// The names a head step resolved for one table (and a scope's counters).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) struct Names {
    epoch: String,
    generation: String,
    counters: Vec<String>,
}

impl Names {
    fn of(head: &Head) -> Names {
        Names {
            epoch: head.epoch.clone().unwrap_or_default(),
            generation: head
                .generations
                .first()
                .cloned()
                .unwrap_or_else(|| "0".into()),
            counters: head.counters.clone(),
        }
    }
}

fn names_key(ns: &Namespace, table: &str, counters: &[String]) -> String {
    let mut key = format!("{}\0{table}", ns.base);
    for counter in counters {
        key.push('\0');
        key.push_str(counter);
    }
    key
}

/// Every master's `run_id`, sorted; `None` when the masters did not all answer in
/// time.
pub(super) async fn master_ids(
    cluster: &mut ClusterConnection,
    deadline: Duration,
) -> Option<Vec<String>> {
    let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let mut info = redis::cmd("INFO");
    info.arg("server");
    let asked = tokio::time::timeout(deadline, cluster.route_command(info, route)).await;
    let Ok(Ok(redis::Value::Map(answers))) = asked else {
        return None;
    };
    let mut ids: Vec<String> = answers
        .into_iter()
        .filter_map(|(_, answer)| {
            let text = reply_bytes(answer)?;
            let text = String::from_utf8_lossy(&text);
            let id = text.lines().find_map(|l| l.strip_prefix("run_id:"))?;
            Some(id.trim().to_owned())
        })
        .collect();
    ids.sort_unstable();
    Some(ids)
}

/// Clears the backend's "a watch runs" flag when the watch's task ends.
struct Watching(std::sync::Weak<RedisBackend>);

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(backend) = self.0.upgrade() {
            backend
                .watching
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

/// A scope's field in a row's scoped hash: its id, then the counter values the head
/// answered.
fn scoped_field(scope: &Scoped, values: &[String]) -> String {
    let mut field = scope.id.to_string();
    for value in values {
        field.push(',');
        field.push_str(value);
    }
    field
}
