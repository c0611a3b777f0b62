//! `tabula cache …` and `tabula storage …`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Subcommand;

use crate::Failure;

#[derive(Subcommand)]
pub(crate) enum Cache {
    /// Keys per namespace and the memory Redis uses.
    Stats {
        /// The cache's key prefix (`CacheConfig::prefix`).
        #[arg(long, default_value = "tabula")]
        prefix: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Drops Tabula's entries: replaces a namespace's epoch (every entry of it is
    /// unreachable at once, as after a lost invalidation), then deletes its keys in
    /// batches (SCAN + UNLINK, never KEYS).
    Flush {
        /// The cache's key prefix.
        #[arg(long, default_value = "tabula")]
        prefix: String,
        /// One namespace (default: every namespace under the prefix).
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Shows what the row cache holds for one row of a model, decoded (needs a binary
    /// built with your models: `tabula_cli::main_with`).
    Get {
        /// The model: its table, `schema.table`, or its Rust type's name.
        model: String,
        /// The row's primary key: JSON (`42`, `-5`, `[1, "x"]`) or plain text (a UUID).
        #[arg(allow_hyphen_values = true)]
        key: String,
        #[command(flatten)]
        cache: CacheSettings,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Reads a model's rows into the row cache, in key order (needs a binary built
    /// with your models).
    Warm {
        /// The model: its table, `schema.table`, or its Rust type's name.
        model: String,
        /// At most this many rows.
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        cache: CacheSettings,
    },
}

/// Where an application's cache lives in Redis.
#[derive(clap::Args)]
pub(crate) struct CacheSettings {
    /// The cache's key prefix (`CacheConfig::prefix`).
    #[arg(long, default_value = "tabula")]
    pub(crate) prefix: String,
    /// The namespace (`CacheConfig::namespace`; default: the database's identity, as
    /// the library's).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum Storage {
    /// Lists the objects of a bucket (under a prefix).
    Ls {
        bucket: String,
        #[arg(default_value = "")]
        prefix: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Uploads a file.
    Put {
        bucket: String,
        path: String,
        file: PathBuf,
        /// MIME type.
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
        /// Replaces an existing object.
        #[arg(long)]
        upsert: bool,
    },
    /// Downloads an object (to standard output, or a file).
    Get {
        bucket: String,
        path: String,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Deletes objects.
    Rm {
        bucket: String,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// A signed download URL.
    Sign {
        bucket: String,
        path: String,
        /// How long it is valid: `90s`, `15m`, `1h`, `7d` (at most 7 days).
        #[arg(long, default_value = "1h")]
        expires: String,
    },
}

/// The storage service's settings: where objects live, the signing key, the URL
/// signed links point at.
#[derive(clap::Args)]
pub(crate) struct StorageSettings {
    /// The local store's folder.
    #[arg(long, env = "TABULA_STORAGE_ROOT", conflicts_with = "s3_bucket")]
    root: Option<PathBuf>,
    /// The S3 bucket of the store, instead of a folder (credentials from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`).
    #[arg(long, env = "TABULA_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// The S3 region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// An S3-compatible store's URL (default: AWS).
    #[arg(long, env = "TABULA_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// The signing key (at least 32 bytes).
    #[arg(long, env = "TABULA_STORAGE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The base URL of the storage router.
    #[arg(
        long,
        env = "TABULA_STORAGE_URL",
        default_value = "http://localhost:3000"
    )]
    base_url: String,
}

/// The servers the cache's keys are on: one Redis, or every master of a Redis
/// Cluster (`redis+cluster://host:port,…`), each by a connection of its own.
struct Servers {
    masters: Vec<redis::aio::MultiplexedConnection>,
    /// On a cluster: a cluster connection, for deletes (it follows `ASK` and `MOVED`
    /// while a slot moves).
    cluster: Option<redis::cluster_async::ClusterConnection>,
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, Failure> {
    let client =
        redis::Client::open(url).map_err(|e| Failure::setup(format!("invalid redis url: {e}")))?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| Failure::setup(format!("cannot connect to redis: {e}")))
}

async fn redis(url: Option<String>) -> Result<Servers, Failure> {
    let url =
        url.ok_or_else(|| Failure::setup("no cache: pass --redis-url or set REDIS_URL (or .env)"))?;
    let Some(nodes) = url.strip_prefix("redis+cluster://") else {
        return Ok(Servers {
            masters: vec![connect(&url).await?],
            cluster: None,
        });
    };
    let given: Vec<&str> = nodes
        .split('/')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|n| !n.is_empty())
        .collect();
    let first = given
        .first()
        .ok_or_else(|| Failure::setup("a redis+cluster:// URL names no node"))?;
    let credentials = first.rsplit_once('@').map(|(c, _)| format!("{c}@"));
    let with_credentials = |node: &str| match (&credentials, node.contains('@')) {
        (Some(credentials), false) => format!("redis://{credentials}{node}/"),
        _ => format!("redis://{node}/"),
    };
    // The first node that answers tells the cluster's masters; each is asked on its own.
    let mut nodes = None;
    let mut last = None;
    for node in &given {
        let answer = async {
            let mut seed = connect(&with_credentials(node)).await?;
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut seed)
                .await
                .map_err(redis_failure)
        };
        match answer.await {
            Ok(answer) => {
                nodes = Some(answer);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(nodes) = nodes else {
        return Err(last.unwrap_or_else(|| Failure::setup("no cluster node answered")));
    };
    let client =
        redis::cluster::ClusterClientBuilder::new(given.iter().map(|n| with_credentials(n)))
            .build()
            .map_err(|e| Failure::setup(format!("invalid redis url: {e}")))?;
    let cluster = client
        .get_async_connection()
        .await
        .map_err(|e| Failure::setup(format!("cannot connect to the redis cluster: {e}")))?;
    let mut masters = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let is_master = fields
            .get(2)
            .is_some_and(|f| f.contains("master") && !f.contains("fail"));
        let address = fields.get(1).and_then(|a| a.split('@').next());
        if let (true, Some(address)) = (is_master, address) {
            let credentials = credentials.as_deref().unwrap_or_default();
            masters.push(connect(&format!("redis://{credentials}{address}/")).await?);
        }
    }
    Ok(Servers {
        masters,
        cluster: Some(cluster),
    })
}

fn redis_failure(e: redis::RedisError) -> Failure {
    Failure::setup(format!("redis: {e}"))
}

/// Every key matching `pattern`, in batches.
async fn scan(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    mut each: impl FnMut(Vec<String>),
) -> Result<(), Failure> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(redis_failure)?;
        each(keys);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The namespace a key of Tabula's belongs to: `{prefix}:t:{namespace}:…` (the
/// namespace may itself hold `:`, up to the epoch or `epoch`), or the key-value API's
/// `{prefix}:u:…`.
fn namespace_of<'k>(prefix: &str, key: &'k str) -> &'k str {
    let rest = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(key);
    match rest.strip_prefix("t:") {
        Some(tail) => tail.split(':').next().unwrap_or(tail),
        None if rest.starts_with("u:") => "(key-value API)",
        None => "(other)",
    }
}

/// Unlinks `keys`, one command each (a cluster refuses one command over keys of
/// several slots), pipelined; how many existed.
async fn unlink(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Result<i64, Failure> {
    if keys.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("UNLINK").arg(key);
    }
    let counts: Vec<i64> = pipe.query_async(conn).await.map_err(redis_failure)?;
    Ok(counts.iter().sum())
}

/// The registry's mark of a namespace (its longest reader wait, rule 8), from its
/// epoch key (one Redis) or head (a cluster); `None` when it has none.
async fn registry_mark(
    conn: &mut redis::aio::MultiplexedConnection,
    cluster: bool,
    key: &str,
) -> Result<Option<String>, Failure> {
    let mark: Option<String> = if cluster {
        // A key of another shape (not a head Tabula wrote) holds no mark.
        let answer: Option<[Option<String>; 3]> = redis::cmd("HMGET")
            .arg(key)
            .arg(&["e", "@", "w"])
            .query_async(conn)
            .await
            .ok();
        answer.and_then(|[e, at, w]| w.filter(|_| e.is_some() && e == at))
    } else {
        let epoch: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(conn)
            .await
            .ok()
            .flatten();
        match epoch {
            Some(epoch) => {
                let base = key.strip_suffix(":epoch").unwrap_or(key);
                redis::cmd("HGET")
                    .arg(format!("{base}:{epoch}:reg"))
                    .arg("")
                    .query_async(conn)
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        }
    };
    Ok(mark.filter(|m| m.parse::<u64>().is_ok_and(|m| m > 0)))
}

/// A fresh epoch: 16 hex digits never used before (the clock's nanoseconds mixed with
/// a random hasher's key).
fn fresh_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    format!("{:016x}", hasher.finish())
}

/// Unlinks `keys` through the cluster connection, one command a key, all in flight
/// together; how many existed.
async fn unlink_cluster(
    cluster: &mut redis::cluster_async::ClusterConnection,
    keys: &[String],
) -> Result<i64, Failure> {
    let counts = futures_util::future::try_join_all(keys.iter().map(|key| {
        let mut cluster = cluster.clone();
        async move {
            redis::cmd("UNLINK")
                .arg(key)
                .query_async::<i64>(&mut cluster)
                .await
        }
    }))
    .await
    .map_err(redis_failure)?;
    Ok(counts.iter().sum())
}

pub(crate) async fn cache(url: Option<String>, command: Cache) -> Result<(), Failure> {
    let Servers {
        mut masters,
        mut cluster,
    } = redis(url).await?;
    match command {
        // Answered with the models (see `crate::run`).
        Cache::Get { .. } | Cache::Warm { .. } => Ok(()),
        Cache::Stats { prefix, json } => {
            let mut namespaces: BTreeMap<String, u64> = BTreeMap::new();
            let mut used = 0;
            for conn in &mut masters {
                scan(conn, &format!("{prefix}:*"), |keys| {
                    for key in keys {
                        *namespaces
                            .entry(namespace_of(&prefix, &key).to_owned())
                            .or_default() += 1;
                    }
                })
                .await?;
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(conn)
                    .await
                    .map_err(redis_failure)?;
                used += info
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if json {
                let out = serde_json::json!({
                    "prefix": prefix,
                    "used_memory_bytes": used,
                    "keys": namespaces,
                });
                println!("{out}");
                return Ok(());
            }
            println!("redis memory used: {used} bytes");
            if namespaces.is_empty() {
                println!("no keys under `{prefix}:`");
            }
            for (namespace, keys) in namespaces {
                println!("{keys:>10}  {namespace}");
            }
            println!(
                "hit ratios are the cache's metrics (tabula_cache_events_total), not kept in redis"
            );
            Ok(())
        }
        Cache::Flush { prefix, namespace } => {
            let base = match &namespace {
                Some(ns) => format!("{prefix}:t:{ns}"),
                None => format!("{prefix}:t:"),
            };
            // First the epochs (on a cluster, the namespaces' heads, which hold
            // them): from here on no process reads an old entry.
            let epoch_pattern = match (&namespace, cluster.is_some()) {
                (Some(_), false) => format!("{base}:epoch"),
                (None, false) => format!("{base}*:epoch"),
                (Some(_), true) => format!("{base}:{{{base}}}"),
                (None, true) => format!("{base}*:{{{base}*}}"),
            };
            let mut epochs = 0;
            // The registry's marks (rule 8: how long readers wait before they fill),
            // put back under fresh epochs once the keys are gone — without them a
            // reader without a registry window would fill at once while a writer with
            // one may still skip the table.
            let mut marks = Vec::new();
            for conn in &mut masters {
                let mut found = Vec::new();
                scan(conn, &epoch_pattern, |keys| found.extend(keys)).await?;
                for key in &found {
                    if let Some(mark) = registry_mark(conn, cluster.is_some(), key).await? {
                        marks.push((key.clone(), mark));
                    }
                }
                match &mut cluster {
                    Some(cluster) => unlink_cluster(cluster, &found).await?,
                    None => unlink(conn, &found).await?,
                };
                epochs += found.len();
            }
            // Then the keys themselves, to free the memory.
            let pattern = match &namespace {
                Some(_) => format!("{base}:*"),
                None => format!("{base}*"),
            };
            let mut doomed = Vec::new();
            for (i, conn) in masters.iter_mut().enumerate() {
                scan(conn, &pattern, |keys| {
                    doomed.extend(keys.into_iter().map(|key| (i, key)));
                })
                .await?;
            }
            let mut deleted: i64 = 0;
            let bar = crate::progress(doomed.len() as u64, "keys");
            for (i, conn) in masters.iter_mut().enumerate() {
                let here: Vec<String> = doomed
                    .iter()
                    .filter(|(at, _)| *at == i)
                    .map(|(_, key)| key.clone())
                    .collect();
                for batch in here.chunks(500) {
                    deleted += match &mut cluster {
                        Some(cluster) => unlink_cluster(cluster, batch).await?,
                        None => unlink(conn, batch).await?,
                    };
                    bar.inc(batch.len() as u64);
                }
            }
            bar.finish_and_clear();
            for (key, mark) in &marks {
                let fresh = fresh_epoch();
                match (&mut cluster, masters.first_mut()) {
                    (Some(cluster), _) => {
                        redis::cmd("HSET")
                            .arg(key)
                            .arg(&["e", &fresh, "@", &fresh, "w", mark])
                            .query_async::<i64>(cluster)
                            .await
                            .map_err(redis_failure)?;
                    }
                    (None, Some(conn)) => {
                        let base = key.strip_suffix(":epoch").unwrap_or(key);
                        redis::pipe()
                            .cmd("SET")
                            .arg(key)
                            .arg(&fresh)
                            .ignore()
                            .cmd("HSET")
                            .arg(format!("{base}:{fresh}:reg"))
                            .arg("")
                            .arg(mark)
                            .ignore()
                            .query_async::<()>(conn)
                            .await
                            .map_err(redis_failure)?;
                    }
                    (None, None) => {}
                }
            }
            println!(
                "flushed {epochs} namespace(s), {} key(s)",
                deleted + epochs as i64
            );
            Ok(())
        }
    }
}

/// `90s`, `15m`, `1h`, `7d` as seconds.
fn duration(text: &str) -> Result<u64, Failure> {
    let bad = || {
        Failure::refused(format!(
            "`{text}` is not a duration like 90s, 15m, 1h or 7d"
        ))
    };
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number.checked_mul(scale).ok_or_else(bad)
}

pub(crate) async fn storage(
    db: tabula::Db,
    settings: StorageSettings,
    command: Storage,
) -> Result<(), Failure> {
    let key = settings
        .key
        .ok_or_else(|| Failure::setup("no signing key: pass --key or set TABULA_STORAGE_KEY"))?;
    let storage = match (settings.s3_bucket, settings.root) {
        (Some(bucket), _) => {
            let credential = |name: &str| {
                std::env::var(name).map_err(|_| {
                    Failure::setup(format!("S3 storage needs {name} in the environment"))
                })
            };
            let mut options = tabula::storage::S3Options::new(
                bucket,
                settings.s3_region,
                credential("AWS_ACCESS_KEY_ID")?,
                credential("AWS_SECRET_ACCESS_KEY")?,
            );
            if let Some(endpoint) = settings.s3_endpoint {
                options = options.endpoint(endpoint);
            }
            tabula::storage::StorageService::s3(db, options, key.as_bytes(), &settings.base_url)?
        }
        (None, Some(root)) => {
            tabula::storage::StorageService::local(db, &root, key.as_bytes(), &settings.base_url)?
        }
        (None, None) => {
            return Err(Failure::setup(
                "no store: pass --root (or TABULA_STORAGE_ROOT) for a folder, or --s3-bucket \
                 (or TABULA_S3_BUCKET) for S3",
            ));
        }
    };
    match command {
        Storage::Ls {
            bucket,
            prefix,
            json,
        } => {
            let objects = storage
                .list_files(&bucket, &prefix, tabula::storage::ListOptions::default())
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&objects).map_err(|e| Failure::setup(e.to_string()))?
                );
                return Ok(());
            }
            for object in objects {
                println!(
                    "{:>12}  {}  {}",
                    object.size, object.content_type, object.name
                );
            }
            Ok(())
        }
        Storage::Put {
            bucket,
            path,
            file,
            content_type,
            upsert,
        } => {
            let mut reader = std::fs::File::open(&file)
                .map_err(|e| Failure::refused(format!("cannot read {}: {e}", file.display())))?;
            let size = match reader.metadata() {
                Ok(meta) if meta.is_file() => meta.len(),
                _ => {
                    return Err(Failure::refused(format!(
                        "{} is not a file",
                        file.display()
                    )));
                }
            };
            let options = tabula::storage::UploadOptions {
                content_type,
                upsert,
                ..Default::default()
            };
            // Read and sent a chunk at a time: a file larger than memory uploads too.
            let bar = crate::progress(size, "bytes");
            let sent = bar.clone();
            let chunks = std::iter::from_fn(move || {
                use std::io::Read;
                let mut chunk = vec![0u8; 256 * 1024];
                match reader.read(&mut chunk) {
                    Ok(0) => None,
                    Ok(n) => {
                        chunk.truncate(n);
                        sent.inc(n as u64);
                        Some(Ok(tabula::storage::Bytes::from(chunk)))
                    }
                    Err(e) => Some(Err(e)),
                }
            });
            let url = storage
                .upload_stream(&bucket, &path, futures_util::stream::iter(chunks), options)
                .await;
            bar.finish_and_clear();
            println!("{}", url?);
            Ok(())
        }
        Storage::Get {
            bucket,
            path,
            output,
        } => {
            use futures_util::StreamExt;
            use std::io::Write;
            if let Some(file) = &output
                && file.is_dir()
            {
                return Err(Failure::refused(format!(
                    "{} is a directory; name the file to write",
                    file.display()
                )));
            }
            let (object, mut chunks) = storage.download_stream(&bucket, &path).await?;
            // To a new file next to the target, renamed when whole: a failure midway
            // leaves no half-written file under the name asked for, and no file of the
            // user's is overwritten but the target.
            let partial = match &output {
                Some(file) => Some(Partial::create(file)?),
                None => None,
            };
            let mut sink: Box<dyn Write> = match &partial {
                Some(partial) => Box::new(std::io::BufWriter::new(partial.file()?)),
                None => Box::new(std::io::stdout().lock()),
            };
            let bar = crate::progress(u64::try_from(object.size).unwrap_or(0), "bytes");
            let mut written: u64 = 0;
            let outcome: Result<(), Failure> = async {
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk?;
                    sink.write_all(&chunk)
                        .map_err(|e| Failure::setup(format!("cannot write: {e}")))?;
                    written += chunk.len() as u64;
                    bar.set_position(written);
                }
                sink.flush()
                    .map_err(|e| Failure::setup(format!("cannot write: {e}")))
            }
            .await;
            bar.finish_and_clear();
            drop(sink);
            outcome?;
            if let (Some(file), Some(partial)) = (&output, partial) {
                partial.finish(file)?;
                println!("wrote {written} bytes to {}", file.display());
            }
            Ok(())
        }
        Storage::Rm { bucket, paths } => {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            let deleted = storage.delete_files(&bucket, &paths).await?;
            println!("deleted {deleted}");
            if deleted < paths.len() as u64 {
                return Err(Failure::refused(format!(
                    "{} of the paths were not there",
                    paths.len() as u64 - deleted
                )));
            }
            Ok(())
        }
        Storage::Sign {
            bucket,
            path,
            expires,
        } => {
            let seconds = duration(&expires)?;
            let url = storage.create_signed_url(&bucket, &path, seconds).await?;
            println!("{url}");
            Ok(())
        }
    }
}

/// A download's file until it is whole: created new (never someone's file) beside
/// the target, renamed over it at the end, removed if anything fails first.
struct Partial {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Partial {
    fn create(target: &std::path::Path) -> Result<Partial, Failure> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for n in 0..100u32 {
            let path = target.with_file_name(format!(".{name}.{}-{n}.partial", std::process::id()));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Partial {
                        path,
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Failure::setup(format!(
                        "cannot write {}: {e}",
                        target.display()
                    )));
                }
            }
        }
        Err(Failure::setup(format!(
            "cannot write {}: no free temporary name beside it",
            target.display()
        )))
    }

    fn file(&self) -> Result<std::fs::File, Failure> {
        self.file
            .as_ref()
            .and_then(|f| f.try_clone().ok())
            .ok_or_else(|| Failure::setup(format!("cannot write {}", self.path.display())))
    }

    fn finish(mut self, target: &std::path::Path) -> Result<(), Failure> {
        self.file = None;
        std::fs::rename(&self.path, target)
            .map_err(|e| Failure::setup(format!("cannot write {}: {e}", target.display())))?;
        // Renamed: nothing is left to remove.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_namespaces_read_as_documented() {
        assert_eq!(duration("90s").ok(), Some(90));
        assert_eq!(duration("15m").ok(), Some(900));
        assert_eq!(duration("1h").ok(), Some(3600));
        assert_eq!(duration("7d").ok(), Some(604_800));
        assert!(duration("1w").is_err() && duration("h").is_err());
        assert!(duration("99999999999999999999d").is_err());
        assert_eq!(namespace_of("tabula", "tabula:t:db1:abc:r:x"), "db1");
        assert_eq!(namespace_of("tabula", "tabula:u:mine"), "(key-value API)");
    }
}
