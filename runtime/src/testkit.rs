//! Throwaway PostgreSQL and Redis servers for tests and examples (feature `testkit`).
//!
//! Where `DATABASE_URL` (or `REDIS_URL`) is set, that server is used. Otherwise the
//! first call starts a private server for this process: `initdb` + `postgres` (or
//! `redis-server`) in a fresh temporary folder, listening on a free loopback port.
//! Each server runs under a small `sh` supervisor that reads from a pipe only this
//! process holds; when the process ends — normally, by a panic, or killed — the pipe
//! closes, the supervisor stops the server and deletes its folder. So test binaries
//! running in parallel never share a port or a folder, and leave nothing behind.
//!
//! PostgreSQL refuses to run as root: when the process is root, the server runs as the
//! `postgres` system user that Debian's package creates. Debian keeps the server
//! binaries in `/usr/lib/postgresql/<version>/bin`, which is searched before `PATH`.
//!
//! [`database`] gives each test a database of its own, cloned from a template that has
//! the migrations applied, so tests can run in parallel without seeing each other's rows.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::db::{Db, DbConfig};
use crate::error::{Error, Result};
use crate::migrate::Migrator;

const INSTALL_HINT: &str =
    "install the servers with: sudo apt-get install -y postgresql redis-server";

/// A server started by the test kit, stopped when this process exits.
#[derive(Debug)]
pub struct Server {
    /// Loopback port it listens on.
    pub port: u16,
    /// The server's own process id (not the supervisor's).
    pub pid: u32,
    // Closing this pipe (at process exit) tells the supervisor to stop the server.
    _lifeline: ChildStdin,
    _supervisor: Child,
}

static POSTGRES: OnceLock<std::result::Result<Server, String>> = OnceLock::new();
static REDIS: Mutex<Option<Server>> = Mutex::new(None);
static TEMPLATES: tokio::sync::Mutex<Vec<(String, String)>> =
    tokio::sync::Mutex::const_new(Vec::new());
static DATABASE_SEQ: AtomicU64 = AtomicU64::new(0);

/// The admin URL of the PostgreSQL server for tests: `DATABASE_URL`, or a throwaway
/// server started on first use.
///
/// ```no_run
/// let url = tabula::testkit::postgres_url()?;
/// # Ok::<(), tabula::Error>(())
/// ```
pub fn postgres_url() -> Result<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(url);
    }
    let server = POSTGRES
        .get_or_init(|| start_postgres().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Config(e.clone()))?;
    Ok(format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        server.port
    ))
}

/// The throwaway PostgreSQL server, if this process started one.
pub fn postgres_server() -> Option<&'static Server> {
    POSTGRES.get().and_then(|s| s.as_ref().ok())
}

/// A URL for Redis: `REDIS_URL`, or a throwaway `redis-server` started on first use
/// — or, with `TABULA_TEST_REDIS=cluster`, the `redis+cluster://` URL of
/// [`redis_cluster_urls`], so a test suite written against one Redis runs on a
/// cluster unchanged.
///
/// ```no_run
/// let url = tabula::testkit::redis_url()?;
/// # Ok::<(), tabula::Error>(())
/// ```
pub fn redis_url() -> Result<String> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Ok(url);
    }
    if std::env::var("TABULA_TEST_REDIS").is_ok_and(|kind| kind == "cluster") {
        let nodes: Vec<String> = redis_cluster_urls()?
            .iter()
            .map(|url| {
                url.trim_start_matches("redis://")
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect();
        return Ok(format!("redis+cluster://{}/", nodes.join(",")));
    }
    let mut redis = REDIS
        .lock()
        .map_err(|_| Error::Config("test kit lock poisoned".into()))?;
    if redis.is_none() {
        *redis = Some(start_redis()?);
    }
    let port = redis.as_ref().map_or(0, |s| s.port);
    Ok(format!("redis://127.0.0.1:{port}/"))
}

/// The process id of the throwaway redis-server, if one is running.
pub fn redis_pid() -> Option<u32> {
    REDIS.lock().ok()?.as_ref().map(|s| s.pid)
}

/// A fresh database with `migrator`'s migrations applied, and a [`Db`] connected to it.
///
/// The first call per migration set builds a template database; later calls clone it
/// (`CREATE DATABASE … TEMPLATE`), which takes milliseconds.
///
/// ```no_run
/// # async fn run() -> tabula::Result<()> {
/// let migrator = tabula::migrate::Migrator::from_dir("migrations")?.with_builtin();
/// let (db, url) = tabula::testkit::database(&migrator).await?;
/// # Ok(()) }
/// ```
pub async fn database(migrator: &Migrator) -> Result<(Db, String)> {
    let admin_url = tokio::task::spawn_blocking(postgres_url)
        .await
        .map_err(|e| Error::Config(format!("test kit start-up panicked: {e}")))??;
    let template = template_for(&admin_url, migrator).await?;
    let name = format!(
        "tabula_t_{}_{}",
        std::process::id(),
        DATABASE_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let admin = Db::connect_with(DbConfig::new(&admin_url).pool_size(1)).await?;
    admin
        .execute_batch(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .await?;
    let url = with_database(&admin_url, &name)?;
    Ok((Db::connect(&url).await?, url))
}

async fn template_for(admin_url: &str, migrator: &Migrator) -> Result<String> {
    let fingerprint: String = {
        // Every migration by version, name and checksum, and which track it is on: two
        // sets that would build different databases never share a template.
        let describe = |track: &str, m: &crate::migrate::Migration| {
            format!("{track}\0{}\0{}\0{}\n", m.version, m.name, m.checksum())
        };
        let mut all: String = migrator
            .migrations()
            .iter()
            .map(|m| describe("app", m))
            .collect();
        if migrator.includes_builtin() {
            all.extend(
                Migrator::builtin()
                    .migrations()
                    .iter()
                    .map(|m| describe("builtin", m)),
            );
        }
        crate::migrate::Migration::new(0, "all", all).checksum()[..16].to_owned()
    };
    let mut templates = TEMPLATES.lock().await;
    if let Some((_, name)) = templates.iter().find(|(f, _)| *f == fingerprint) {
        return Ok(name.clone());
    }
    let name = format!("tabula_tpl_{}_{fingerprint}", std::process::id());
    let admin = Db::connect_with(DbConfig::new(admin_url).pool_size(1)).await?;
    admin
        .execute_batch(&format!("DROP DATABASE IF EXISTS \"{name}\""))
        .await?;
    admin
        .execute_batch(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    {
        let template =
            Db::connect_with(DbConfig::new(with_database(admin_url, &name)?).pool_size(1)).await?;
        migrator.run(&template).await?;
    } // the template's pool closes here: CREATE DATABASE … TEMPLATE needs it unused
    templates.push((fingerprint, name.clone()));
    Ok(name)
}

fn with_database(url: &str, database: &str) -> Result<String> {
    let (base, _) = url
        .rsplit_once('/')
        .ok_or_else(|| Error::Config(format!("cannot replace the database in `{url}`")))?;
    if base.ends_with('/') || !url.starts_with("postgres") {
        return Err(Error::Config(
            "the test kit needs DATABASE_URL as postgres://…/dbname".into(),
        ));
    }
    let query = url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{base}/{database}{query}"))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `(uid, gid)` of a system user, from /etc/passwd.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn find_postgres_bin(program: &str) -> Option<PathBuf> {
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(program))
        .filter(|p| p.is_file())
        .collect();
    // Highest major version first.
    versioned.sort_by_key(|p| {
        std::cmp::Reverse(
            p.components()
                .nth(4)
                .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    versioned
        .into_iter()
        .next()
        .or_else(|| find_on_path(program))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Config(format!("cannot find a free loopback port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Config(format!("cannot find a free loopback port: {e}")))
}

fn scratch_dir(kind: &str, owner: Option<(u32, u32)>) -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "tabula-{kind}-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| {
            Error::Config(format!(
                "cannot hand {} to the server user: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(dir)
}

fn as_user(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

/// Starts `program args…` under a supervisor that stops it (SIGINT) and deletes `dir`
/// when our end of its stdin pipe closes. Returns once `ready` says the server is up.
fn supervise(
    program: &Path,
    args: &[String],
    dir: &Path,
    owner: Option<(u32, u32)>,
    port: u16,
) -> Result<Server> {
    supervise_until(
        program,
        args,
        dir,
        owner,
        port,
        "eady to accept connections",
    )
}

/// [`supervise`], ready when the server's log contains `ready`.
fn supervise_until(
    program: &Path,
    args: &[String],
    dir: &Path,
    owner: Option<(u32, u32)>,
    port: u16,
    ready: &str,
) -> Result<Server> {
    // $1 = log file, $2 = folder to delete, then the server's command line.
    let script = r#"log="$1"; dir="$2"; shift 2
"$@" </dev/null >"$log" 2>&1 &
server=$!
echo "$server"
read -r _ignored
kill -INT "$server" 2>/dev/null
wait "$server"
rm -rf "$dir""#;
    let log = dir.join("server.log");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg("tabula-supervisor")
        .arg(&log)
        .arg(dir)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    as_user(&mut command, owner);
    let mut child = command
        .spawn()
        .map_err(|e| Error::Config(format!("cannot start {}: {e}", program.display())))?;
    let lifeline = child
        .stdin
        .take()
        .ok_or_else(|| Error::Config("no supervisor pipe".into()))?;
    let mut pid_line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut pid_line).ok();
    }
    let pid: u32 = pid_line
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("{} did not start", program.display())))?;

    let started = Instant::now();
    loop {
        // Both servers accept TCP before they accept work; their log says when they do
        // ("database system is ready to accept connections", "Ready to accept connections").
        let up = std::fs::read_to_string(&log).is_ok_and(|l| l.contains(ready));
        if up && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(Error::Config(format!(
                "{} exited at start:\n{log}",
                program.display()
            )));
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(Error::Config(format!(
                "{} did not listen within 30 s",
                program.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Server {
        port,
        pid,
        _lifeline: lifeline,
        _supervisor: child,
    })
}

fn start_postgres() -> Result<Server> {
    start_postgres_with(|_, _| Ok(Vec::new())).map(|(server, _)| server)
}

/// Starts a PostgreSQL of its own; `extra` gets the server's folder and owner before
/// it starts, may write files there, and returns more `-c` settings.
fn start_postgres_with(
    extra: impl Fn(&Path, Option<(u32, u32)>) -> Result<Vec<String>>,
) -> Result<(Server, PathBuf)> {
    let (Some(initdb), Some(postgres)) =
        (find_postgres_bin("initdb"), find_postgres_bin("postgres"))
    else {
        return Err(Error::Config(format!(
            "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin or on PATH; {INSTALL_HINT}; or set DATABASE_URL"
        )));
    };
    let owner = if is_root() {
        Some(system_user("postgres").ok_or_else(|| {
            Error::Config(format!(
                "running as root, and PostgreSQL refuses to: no `postgres` system user to run it as; {INSTALL_HINT}"
            ))
        })?)
    } else {
        None
    };
    let dir = scratch_dir("pg", owner)?;
    let data = dir.join("data");
    let mut init = Command::new(&initdb);
    init.arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_user(&mut init, owner);
    let output = init
        .output()
        .map_err(|e| Error::Config(format!("cannot run {}: {e}", initdb.display())))?;
    if !output.status.success() {
        return Err(Error::Config(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let settings = extra(&dir, owner)?;
    // A port found free may be taken before the server binds it: try a few.
    let mut last = None;
    for _ in 0..5 {
        let port = free_port()?;
        let mut args: Vec<String> = [
            "-D",
            &data.to_string_lossy(),
            "-p",
            &port.to_string(),
            "-k",
            &dir.to_string_lossy(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=400",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for setting in &settings {
            args.push("-c".into());
            args.push(setting.clone());
        }
        match supervise(&postgres, &args, &dir, owner, port) {
            Ok(server) => return Ok((server, dir)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Config("postgres did not start".into())))
}

/// A redis-server of one test's own, which the test may stop, start again on the
/// same port, or freeze (SIGSTOP) to simulate an outage or a hung server.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    server: Mutex<Option<Server>>,
}

impl PrivateRedis {
    /// Starts one on a free loopback port.
    ///
    /// ```no_run
    /// let redis = tabula::testkit::PrivateRedis::start()?;
    /// redis.stop();
    /// redis.restart()?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn start() -> Result<PrivateRedis> {
        let server = start_redis_on(None)?;
        Ok(PrivateRedis {
            port: server.port,
            server: Mutex::new(Some(server)),
        })
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it and waits until its port refuses connections.
    pub fn stop(&self) {
        if let Ok(mut server) = self.server.lock() {
            *server = None; // closing the lifeline makes the supervisor stop it
        }
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&self) -> Result<()> {
        let server = start_redis_on(Some(self.port))?;
        if let Ok(mut slot) = self.server.lock() {
            *slot = Some(server);
        }
        Ok(())
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .server
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.pid));
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .status();
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // A frozen server would ignore the supervisor's SIGINT.
        self.resume();
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback, each a `redis-server
/// --cluster-enabled yes` of its own, joined and given the 16,384 slots by `redis-cli
/// --cluster create`. Stopped when dropped (or when this process exits).
///
/// ```no_run
/// let cluster = tabula::testkit::RedisCluster::start()?;
/// let cache = tabula::cache::CacheService::redis_cluster(&cluster.urls(), Default::default())?;
/// # Ok::<(), tabula::Error>(())
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Server>,
    /// Supervisors of nodes restarted in their folder: kept until the end, since
    /// letting one go deletes the folder the new server uses.
    retired: Vec<Server>,
}

impl RedisCluster {
    /// Starts three masters and waits until every one reports `cluster_state:ok`.
    pub fn start() -> Result<RedisCluster> {
        let cli = redis_cli()?;
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(start_redis_with(Some(cluster_port()?), "--port", |_| {
                Ok(cluster_args())
            })?);
        }
        let mut create = Command::new(&cli);
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        run_cli(&mut create, "redis-cli --cluster create")?;
        let cluster = RedisCluster {
            nodes,
            retired: Vec::new(),
        };
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// Kills master `index` at once (SIGKILL: nothing saved) and starts it again on its
    /// port and in its folder: it comes back with its cluster identity and slots, and
    /// with the data of its last snapshot (`SAVE`) — a server restarted from a backup
    /// older than the writes since.
    ///
    /// ```no_run
    /// let mut cluster = tabula::testkit::RedisCluster::start()?;
    /// cluster.restart_from_snapshot(0)?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn restart_from_snapshot(&mut self, index: usize) -> Result<()> {
        let Some(node) = self.nodes.get(index) else {
            return Err(Error::Config("no such cluster node".into()));
        };
        let (port, pid) = (node.port, node.pid);
        let out = Command::new(redis_cli()?)
            .args(["-p", &port.to_string(), "CONFIG", "GET", "dir"])
            .output()
            .map_err(|e| Error::Config(format!("cannot run redis-cli: {e}")))?;
        let dir = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .map(str::to_owned)
            .ok_or_else(|| Error::Config(format!("no folder from port {port}")))?;
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_ok()
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let server = start_redis_with(Some(port), "--port", |_| {
            let mut args = cluster_args();
            args.extend(["--dir".to_owned(), dir.clone()]);
            Ok(args)
        })?;
        let old = std::mem::replace(&mut self.nodes[index], server);
        self.retired.push(old);
        self.wait_ok()
    }

    /// `redis://127.0.0.1:<port>/` of every master, in start order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// The ports of the masters, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Moves `slots` hash slots from master `from` to master `to` (indices into
    /// [`ports`](Self::ports)) with `redis-cli --cluster reshard`, keys and all, while
    /// clients keep working (they follow `ASK` and `MOVED`).
    pub fn reshard(&self, from: usize, to: usize, slots: u32) -> Result<()> {
        let (Some(source), Some(target)) = (self.nodes.get(from), self.nodes.get(to)) else {
            return Err(Error::Config("no such cluster node".into()));
        };
        let (source, target) = (node_id(source.port)?, node_id(target.port)?);
        let mut reshard = Command::new(redis_cli()?);
        reshard
            .args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{}", self.nodes[0].port))
            .args(["--cluster-from", &source, "--cluster-to", &target])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .args(["--cluster-pipeline", "100"]);
        run_cli(&mut reshard, "redis-cli --cluster reshard")?;
        self.wait_ok()
    }

    fn wait_ok(&self) -> Result<()> {
        let cli = redis_cli()?;
        let started = Instant::now();
        loop {
            let ok = self.nodes.iter().all(|node| {
                Command::new(&cli)
                    .args(["-p", &node.port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .is_ok_and(|out| {
                        String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
                    })
            });
            if ok {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(Error::Config(
                    "the redis cluster did not become ready".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The URLs of the Redis Cluster for tests: `REDIS_CLUSTER_URLS` (comma-separated), or
/// a throwaway [`RedisCluster`] started on first use and kept for this process.
///
/// ```no_run
/// let urls = tabula::testkit::redis_cluster_urls()?;
/// # Ok::<(), tabula::Error>(())
/// ```
pub fn redis_cluster_urls() -> Result<Vec<String>> {
    if let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") {
        return Ok(urls.split(',').map(|u| u.trim().to_owned()).collect());
    }
    static CLUSTER: OnceLock<std::result::Result<RedisCluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| RedisCluster::start().map_err(|e| e.to_string()))
        .as_ref()
        .map(RedisCluster::urls)
        .map_err(|e| Error::Config(e.clone()))
}

/// A free port for a cluster node: its cluster bus listens on the port + 10,000, so
/// that must be a port too (below 65,536) and free.
fn cluster_port() -> Result<u16> {
    for _ in 0..200 {
        let port = free_port()?;
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Config("no free port pair for a cluster node".into()))
}

fn cluster_args() -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "5000",
    ]
    .map(String::from)
    .to_vec()
}

fn redis_cli() -> Result<PathBuf> {
    find_on_path("redis-cli")
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-cli")).filter(|p| p.is_file()))
        .ok_or_else(|| Error::Config(format!("redis-cli not found; {INSTALL_HINT}")))
}

fn run_cli(command: &mut Command, what: &str) -> Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Config(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// A cluster node's id.
fn node_id(port: u16) -> Result<String> {
    let out = Command::new(redis_cli()?)
        .args(["-p", &port.to_string(), "CLUSTER", "MYID"])
        .output()
        .map_err(|e| Error::Config(format!("cannot run redis-cli: {e}")))?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if id.len() != 40 {
        return Err(Error::Config(format!("no node id from port {port}: {id}")));
    }
    Ok(id)
}

fn start_redis() -> Result<Server> {
    start_redis_on(None)
}

fn start_redis_on(fixed_port: Option<u16>) -> Result<Server> {
    start_redis_with(fixed_port, "--port", |_| Ok(Vec::new()))
}

/// Starts a redis-server; `extra` gets its folder and returns arguments put after
/// `{port_flag} <port>` and the defaults (`--port`, or `--tls-port` for a TLS-only
/// server), so they win over the defaults.
fn start_redis_with(
    fixed_port: Option<u16>,
    port_flag: &str,
    extra: impl Fn(&Path) -> Result<Vec<String>>,
) -> Result<Server> {
    let redis = find_on_path("redis-server")
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            Error::Config(format!(
                "redis-server not found; {INSTALL_HINT}; or set REDIS_URL"
            ))
        })?;
    let dir = scratch_dir("redis", None)?;
    let listen = extra(&dir)?;
    let mut last = None;
    for _ in 0..5 {
        let port = match fixed_port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut args: Vec<String> = Vec::new();
        args.extend(
            [
                port_flag,
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        // Last, so that they win over the defaults above.
        args.extend(listen.iter().cloned());
        match supervise(&redis, &args, &dir, None, port) {
            Ok(server) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Config("redis-server did not start".into())))
}

/// Certificates for a TLS test: a throwaway CA and a server certificate for
/// `localhost` only (so `127.0.0.1` is a *wrong* host name for `verify-full`).
#[cfg(feature = "tls")]
struct TestCerts {
    ca: String,
    cert: String,
    key: String,
}

#[cfg(feature = "tls")]
fn test_certs() -> Result<TestCerts> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let fail = |e: rcgen::Error| Error::Config(format!("cannot make test certificates: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tabula test CA");
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca = ca_params.self_signed(&ca_key).map_err(fail)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(fail)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().map_err(fail)?;
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(fail)?;
    Ok(TestCerts {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Writes `contents` to `dir/name`, readable by its owner only, owned by `owner`.
#[cfg(feature = "tls")]
fn private_file(
    dir: &Path,
    name: &str,
    contents: &str,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let io = |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    std::fs::write(&path, contents).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io)?;
    }
    Ok(path)
}

/// A PostgreSQL of one test's own with TLS on (`ssl=on`), its certificate issued for
/// `localhost` by a throwaway CA ([`TlsPostgres::ca_file`]); plain connections are
/// accepted too. Stopped when dropped (or when the process exits).
///
/// ```no_run
/// let pg = tabula::testkit::TlsPostgres::start()?;
/// let url = pg.url("localhost", "verify-full");
/// # Ok::<(), tabula::Error>(())
/// ```
#[cfg(feature = "tls")]
#[derive(Debug)]
pub struct TlsPostgres {
    server: Server,
    dir: PathBuf,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
}

#[cfg(feature = "tls")]
impl TlsPostgres {
    /// Starts one on a free loopback port.
    pub fn start() -> Result<TlsPostgres> {
        let certs = test_certs()?;
        let other = test_certs()?;
        let ca = std::sync::Mutex::new(None);
        let (server, dir) = start_postgres_with(|dir, owner| {
            let cert = private_file(dir, "server.crt", &certs.cert, owner)?;
            let key = private_file(dir, "server.key", &certs.key, owner)?;
            *ca.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                private_file(dir, "ca.crt", &certs.ca, None)?,
                private_file(dir, "other-ca.crt", &other.ca, None)?,
            ));
            Ok(vec![
                "ssl=on".into(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ])
        })?;
        let (ca_file, other_ca_file) = ca
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| Error::Config("no test CA written".into()))?;
        Ok(TlsPostgres {
            server,
            dir,
            ca_file,
            other_ca_file,
        })
    }

    /// A URL of its `postgres` database through `host` (`localhost` matches the
    /// certificate, `127.0.0.1` does not) with this `sslmode`.
    pub fn url(&self, host: &str, sslmode: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={sslmode}",
            self.server.port
        )
    }

    /// The PEM file of the CA that issued the server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A key=value connection string through its Unix socket (no TLS there).
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.server.port
        )
    }

    /// The PEM file of another CA, which issued nothing this server presents.
    pub fn other_ca_file(&self) -> &Path {
        &self.other_ca_file
    }
}

/// A redis-server of one test's own that speaks only TLS (`rediss://`), with a
/// certificate for `localhost` from a throwaway CA ([`TlsRedis::ca_file`]).
///
/// ```no_run
/// let redis = tabula::testkit::TlsRedis::start()?;
/// let url = redis.url();
/// # Ok::<(), tabula::Error>(())
/// ```
#[cfg(feature = "tls")]
#[derive(Debug)]
pub struct TlsRedis {
    server: Server,
    ca_file: PathBuf,
}

#[cfg(feature = "tls")]
impl TlsRedis {
    /// Starts one on a free loopback port (no plain port).
    pub fn start() -> Result<TlsRedis> {
        let certs = test_certs()?;
        let ca_file = std::sync::Mutex::new(PathBuf::new());
        let server = start_redis_with(None, "--tls-port", |dir| {
            let cert = private_file(dir, "server.crt", &certs.cert, None)?;
            let key = private_file(dir, "server.key", &certs.key, None)?;
            let ca = private_file(dir, "ca.crt", &certs.ca, None)?;
            *ca_file.lock().unwrap_or_else(|p| p.into_inner()) = ca.clone();
            Ok(vec![
                "--port".into(),
                "0".into(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ])
        })?;
        let ca_file = ca_file.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(TlsRedis { server, ca_file })
    }

    /// `rediss://localhost:<port>/`.
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}/", self.server.port)
    }

    /// The PEM file of the CA that issued the server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

/// A PgBouncer of one test's own in *transaction* pooling mode, in front of the test
/// kit's PostgreSQL, with few server connections (so clients share them). Debian's
/// `pgbouncer` package; run as the `postgres` user when this process is root.
///
/// ```no_run
/// let bouncer = tabula::testkit::PgBouncer::start(2)?;
/// let url = bouncer.url("postgres");
/// # Ok::<(), tabula::Error>(())
/// ```
#[derive(Debug)]
pub struct PgBouncer {
    server: Server,
}

impl PgBouncer {
    /// Starts one whose pools hold at most `server_connections` connections per
    /// database and user.
    pub fn start(server_connections: u32) -> Result<PgBouncer> {
        let program = find_on_path("pgbouncer")
            .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()))
            .ok_or_else(|| {
                Error::Config(
                    "pgbouncer not found; install it with: sudo apt-get install -y pgbouncer"
                        .into(),
                )
            })?;
        let upstream = crate::db::DbConfig::new(postgres_url()?);
        let pg: tokio_postgres::Config = upstream
            .url
            .parse()
            .map_err(|e| Error::Config(format!("test kit url: {e}")))?;
        let upstream_port = pg.get_ports().first().copied().unwrap_or(5432);
        // PgBouncer refuses to run as root.
        let owner = if is_root() {
            Some(system_user("postgres").ok_or_else(|| {
                Error::Config("running as root: no `postgres` user to run pgbouncer as".into())
            })?)
        } else {
            None
        };
        let dir = scratch_dir("pgbouncer", owner)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let users = dir.join("userlist.txt");
            let ini = dir.join("pgbouncer.ini");
            let config = format!(
                "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = {server_connections}\nmax_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 server_reset_query =\n",
                users.display()
            );
            let io = |e: std::io::Error| Error::Config(format!("pgbouncer config: {e}"));
            std::fs::write(&users, "\"postgres\" \"\"\n").map_err(io)?;
            std::fs::write(&ini, config).map_err(io)?;
            if let Some((uid, gid)) = owner {
                for file in [&users, &ini] {
                    std::os::unix::fs::chown(file, Some(uid), Some(gid)).map_err(io)?;
                }
            }
            let args = vec![ini.display().to_string()];
            match supervise_until(&program, &args, &dir, owner, port, "process up") {
                Ok(server) => return Ok(PgBouncer { server }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("pgbouncer did not start".into())))
    }

    /// A URL of `database` through it, with `?pgbouncer=true`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?pgbouncer=true",
            self.server.port
        )
    }
}

/// A PostgreSQL primary with a streaming hot standby of its own, for one test: the
/// primary by `initdb`, the standby by `pg_basebackup -R` from it, each on a free
/// loopback port and stopped when the value is dropped (or the process ends).
///
/// The primary commits synchronously to its WAL (the shared test server does not), so
/// the standby is usually a few milliseconds behind; [`ReplicaSet::pause_replay`]
/// holds it behind on purpose.
///
/// ```no_run
/// # async fn run() -> tabula::Result<()> {
/// let set = tabula::testkit::ReplicaSet::start()?;
/// let db = tabula::Db::connect_with(
///     tabula::DbConfig::new(set.primary_url("postgres")).replica(set.replica_url("postgres")),
/// )
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReplicaSet {
    primary: Server,
    standby: Server,
}

impl ReplicaSet {
    /// Starts both and waits until the standby streams from the primary.
    pub fn start() -> Result<ReplicaSet> {
        let (primary, _) = start_postgres_with(|_, _| {
            Ok(vec![
                "synchronous_commit=on".into(),
                "wal_level=replica".into(),
                "max_wal_senders=4".into(),
            ])
        })?;
        let basebackup = find_postgres_bin("pg_basebackup")
            .ok_or_else(|| Error::Config(format!("pg_basebackup not found; {INSTALL_HINT}")))?;
        let postgres = find_postgres_bin("postgres")
            .ok_or_else(|| Error::Config(format!("postgres not found; {INSTALL_HINT}")))?;
        let owner = if is_root() {
            system_user("postgres")
        } else {
            None
        };
        let dir = scratch_dir("pg-standby", owner)?;
        let data = dir.join("data");
        let mut backup = Command::new(&basebackup);
        backup
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-R", "-X", "stream", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut backup, owner);
        let output = backup
            .output()
            .map_err(|e| Error::Config(format!("cannot run pg_basebackup: {e}")))?;
        if !output.status.success() {
            return Err(Error::Config(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let args: Vec<String> = [
                "-D",
                &data.to_string_lossy(),
                "-p",
                &port.to_string(),
                "-k",
                &dir.to_string_lossy(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "hot_standby=on",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=400",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            match supervise_until(
                &postgres,
                &args,
                &dir,
                owner,
                port,
                "ready to accept read-only connections",
            ) {
                Ok(standby) => return Ok(ReplicaSet { primary, standby }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("the standby did not start".into())))
    }

    /// The primary's URL of `database`.
    pub fn primary_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.primary.port
        )
    }

    /// The standby's URL of `database`.
    pub fn replica_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.standby.port
        )
    }

    /// A fresh database on the primary with `migrator`'s migrations applied, once the
    /// standby has it too; its name.
    pub async fn database(&self, migrator: &Migrator) -> Result<String> {
        let name = format!(
            "tabula_r_{}_{}",
            std::process::id(),
            DATABASE_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let admin =
            Db::connect_with(DbConfig::new(self.primary_url("postgres")).pool_size(1)).await?;
        admin
            .execute_batch(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        let db = Db::connect_with(DbConfig::new(self.primary_url(&name)).pool_size(1)).await?;
        migrator.run(&db).await?;
        self.caught_up().await?;
        Ok(name)
    }

    /// Waits (up to 30 s) until the standby has replayed everything the primary wrote
    /// so far.
    pub async fn caught_up(&self) -> Result<()> {
        let primary =
            Db::connect_with(DbConfig::new(self.primary_url("postgres")).pool_size(1)).await?;
        let standby =
            Db::connect_with(DbConfig::new(self.replica_url("postgres")).pool_size(1)).await?;
        let target: String = primary
            .sql_rows("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .first()
            .map(|r| r.get(0))
            .unwrap_or_default();
        let started = Instant::now();
        loop {
            let done: bool = standby
                .sql_rows(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&target],
                )
                .await?
                .first()
                .is_some_and(|r| r.get(0));
            if done {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(Error::Config(
                    "the standby did not catch up within 30 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Holds the standby's replay (`pg_wal_replay_pause`): it keeps receiving WAL and
    /// answering reads, from the state it had.
    pub async fn pause_replay(&self) -> Result<()> {
        self.standby_call("SELECT pg_wal_replay_pause()").await
    }

    /// Lets the standby replay again (`pg_wal_replay_resume`).
    pub async fn resume_replay(&self) -> Result<()> {
        self.standby_call("SELECT pg_wal_replay_resume()").await
    }

    async fn standby_call(&self, sql: &str) -> Result<()> {
        let standby =
            Db::connect_with(DbConfig::new(self.replica_url("postgres")).pool_size(1)).await?;
        standby.sql_rows(sql, &[]).await.map(|_| ())
    }
}

/// An S3-compatible server for one test: moto's standalone server (`moto_server`,
/// from PyPI; `./tabula setup` installs it in `~/.cache/tabula/moto`), in memory, on
/// a free loopback port, with one bucket made; stopped when dropped (or the process
/// ends). Moto because it is an installable package that speaks S3's REST protocol
/// with multipart uploads, copies and listings, starts in a second, and keeps
/// nothing on disk.
///
/// ```no_run
/// let s3 = tabula::testkit::S3Server::start("files")?;
/// let endpoint = s3.endpoint();
/// # Ok::<(), tabula::Error>(())
/// ```
#[derive(Debug)]
pub struct S3Server {
    server: Server,
    bucket: String,
}

impl S3Server {
    /// Starts one and creates `bucket` in it.
    pub fn start(bucket: &str) -> Result<S3Server> {
        let program = std::env::var_os("TABULA_MOTO_SERVER")
            .map(PathBuf::from)
            .or_else(|| find_on_path("moto_server"))
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/tabula/moto/bin/moto_server"))
                    .filter(|p| p.is_file())
            })
            .ok_or_else(|| {
                Error::Config(
                    "moto_server not found: run ./tabula setup, or pip install 'moto[s3,server]', \
                     or set TABULA_MOTO_SERVER"
                        .into(),
                )
            })?;
        let dir = scratch_dir("s3", None)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let args = vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ];
            match supervise_until(&program, &args, &dir, None, port, "Running on") {
                Ok(server) => {
                    let s3 = S3Server {
                        server,
                        bucket: bucket.to_owned(),
                    };
                    s3.create_bucket()?;
                    return Ok(s3);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("moto_server did not start".into())))
    }

    /// `http://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    /// Options for [`StorageService::s3`](crate::storage::StorageService::s3) on its
    /// bucket (any credentials pass).
    #[cfg(feature = "s3")]
    pub fn options(&self) -> crate::storage::S3Options {
        crate::storage::S3Options::new(&self.bucket, "us-east-1", "testing", "testing")
            .endpoint(self.endpoint())
    }

    /// `PUT /{bucket}`: moto takes unsigned requests.
    fn create_bucket(&self) -> Result<()> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.server.port))
            .map_err(|e| Error::Config(format!("moto: {e}")))?;
        let request = format!(
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket, self.server.port
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| Error::Config(format!("moto: {e}")))?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        match answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
            true => Ok(()),
            false => Err(Error::Config(format!(
                "moto refused to create the bucket: {}",
                answer.lines().next().unwrap_or_default()
            ))),
        }
    }
}
