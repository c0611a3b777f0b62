//! `tabula`: the command line of the Tabula data layer.
//!
//! ```text
//! tabula migrate add <name> [--down]     the next migration file (and its down file)
//! tabula migrate run [--dry-run] [--target N] [--no-builtin]
//! tabula migrate info [--json]           applied / pending / edited / missing
//! tabula migrate revert                  undo the latest applied migration
//! tabula migrate verify                  exit 1 if an applied file was edited or is gone
//! tabula schema pull [--schema S] [-o F]  #[derive(Table)] models from a live database
//! tabula schema check <file>             exit 1 if the database no longer pulls as <file>
//! tabula cache stats | flush [--namespace N]
//! tabula cache get <model> <key> [--json]  a row's cache entry, decoded (*)
//! tabula cache warm <model> [--limit N]   reads a model's rows into the row cache (*)
//! tabula storage ls | put | get | rm | sign
//! tabula completions <shell>             shell completions (bash, zsh, fish, …)
//! ```
//!
//! The database is `--database-url`, else `DATABASE_URL` from the environment or a
//! `.env` file in the current directory. Exit status: 0 done; 1 a check failed or the
//! operation was refused (nothing changed); 2 bad usage; 3 the database could not be
//! reached or the configuration is wrong.
//!
//! (*) These need your models compiled in: the published binary knows none. Build
//! your own `tabula` next to your models (`src/bin/tabula.rs` in your application):
//!
//! ```no_run
//! # mod app { #[derive(tabula::Table, Clone, serde::Serialize)] #[table(cache(ttl = 60))]
//! #   pub struct Profile { #[table(primary_key)] pub id: i64, pub username: String }
//! #   #[derive(tabula::Table, Clone, serde::Serialize)] #[table(cache(ttl = 60))]
//! #   pub struct Note { #[table(primary_key)] pub id: i64, pub body: String } }
//! use app::{Note, Profile};
//!
//! fn main() -> std::process::ExitCode {
//!     tabula_cli::main_with::<(Profile, Note)>()
//! }
//! ```
//!
//! Then `cargo run --bin tabula -- cache get profiles 42` prints the entry of row 42
//! (`row`, `absent`, `missing` or `other-shape`, with its time left, whether a fill is
//! on its way and how many user scopes keep their own copy).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tabula::migrate::{MigrationState, Migrator};

mod models;
mod schema;
mod tools;

pub use models::{Model, Models};

#[derive(Parser)]
#[command(
    name = "tabula",
    version,
    about = "The Tabula data layer's command line"
)]
struct Cli {
    /// The PostgreSQL URL (default: `DATABASE_URL`, also read from `.env`).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The Redis URL of the cache (default: `REDIS_URL`, also read from `.env`).
    #[arg(long, global = true, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Versioned SQL migrations.
    #[command(subcommand)]
    Migrate(Migrate),
    /// The database's schema.
    #[command(subcommand)]
    Schema(Schema),
    /// Tabula's entries in Redis.
    #[command(subcommand)]
    Cache(tools::Cache),
    /// The file storage service (a local store).
    Storage {
        #[command(flatten)]
        settings: tools::StorageSettings,
        #[command(subcommand)]
        command: tools::Storage,
    },
    /// Prints a completion script for a shell.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum Migrate {
    /// Creates the next migration file, `<version>_<name>.sql`.
    Add {
        /// Letters, digits and `_`.
        name: String,
        /// Also creates `<version>_<name>.down.sql`, which `revert` runs.
        #[arg(long)]
        down: bool,
        #[command(flatten)]
        dir: Dir,
    },
    /// Applies the pending migrations (Tabula's built-in track first).
    Run {
        /// Prints what would be applied, and applies nothing.
        #[arg(long)]
        dry_run: bool,
        /// Stops after this version.
        #[arg(long)]
        target: Option<i64>,
        /// Leaves out Tabula's built-in migrations (auth roles, storage schema).
        #[arg(long)]
        no_builtin: bool,
        /// Applies a pending migration below the latest applied one (see
        /// `Migrator::allow_out_of_order`).
        #[arg(long)]
        allow_out_of_order: bool,
        #[command(flatten)]
        dir: Dir,
    },
    /// Shows every migration: applied, pending, edited or missing.
    Info {
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: Dir,
    },
    /// Undoes the latest applied migration with its down file.
    Revert {
        #[command(flatten)]
        dir: Dir,
    },
    /// Fails (exit status 1) when an applied migration was edited or its file is gone.
    Verify {
        #[command(flatten)]
        dir: Dir,
    },
}

#[derive(Subcommand)]
enum Schema {
    /// Writes `#[derive(Table)]` models for the tables of a live database.
    Pull {
        /// The PostgreSQL schema to read.
        #[arg(long, default_value = "public")]
        schema: String,
        /// The file to write (default: standard output). An existing file is not
        /// overwritten unless `--force`.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Overwrite `--output` if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Fails (exit status 1) when the database no longer pulls as `file` does — a
    /// drift check for generated models kept as `schema pull` wrote them. (Models you
    /// edited: check them at start-up with `Db::verify`.)
    Check {
        /// A file `schema pull` wrote.
        file: PathBuf,
        /// The PostgreSQL schema to read.
        #[arg(long, default_value = "public")]
        schema: String,
    },
}

#[derive(clap::Args)]
struct Dir {
    /// The migrations folder.
    #[arg(long, default_value = "migrations")]
    dir: PathBuf,
}

/// A failure and its exit status.
pub(crate) struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    pub(crate) fn refused(message: impl Into<String>) -> Failure {
        Failure {
            status: 1,
            message: message.into(),
        }
    }

    pub(crate) fn setup(message: impl Into<String>) -> Failure {
        Failure {
            status: 3,
            message: message.into(),
        }
    }
}

impl From<tabula::Error> for Failure {
    fn from(error: tabula::Error) -> Failure {
        match error {
            tabula::Error::Migration { .. }
            | tabula::Error::Validation(_)
            | tabula::Error::Misuse(_)
            | tabula::Error::NotFound { .. }
            | tabula::Error::AlreadyExists(_)
            | tabula::Error::PermissionDenied { .. } => Failure::refused(error.to_string()),
            other => Failure::setup(other.to_string()),
        }
    }
}

/// Runs the command line of the published `tabula` binary (no application models).
pub fn main() -> ExitCode {
    main_with::<()>()
}

/// Runs the command line with `M`'s models compiled in (a tuple of up to twelve:
/// `(Profile,)` for one), for `cache get` and `cache warm`; see the crate's documentation.
pub fn main_with<M: Models>() -> ExitCode {
    // A `.env` file is read when present; its absence is no error.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tabula: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    let models = M::models();
    match runtime.block_on(run(cli, &models)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tabula: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

async fn run(cli: Cli, models: &[Model]) -> Result<(), Failure> {
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tabula", &mut std::io::stdout());
            Ok(())
        }
        Command::Migrate(Migrate::Add { name, down, dir }) => add(&dir.dir, &name, down),
        Command::Schema(Schema::Check { file, schema }) => {
            let url = cli.database_url.ok_or_else(|| {
                Failure::setup("no database: pass --database-url or set DATABASE_URL (or .env)")
            })?;
            let expected = std::fs::read_to_string(&file)
                .map_err(|e| Failure::setup(format!("cannot read {}: {e}", file.display())))?;
            let db = connect(&url).await?;
            let now = schema::pull(&db, &schema).await?;
            if now == expected {
                println!("{} matches the database", file.display());
                return Ok(());
            }
            let (old, new): (Vec<&str>, Vec<&str>) =
                (expected.lines().collect(), now.lines().collect());
            for line in old.iter().filter(|l| !new.contains(l)) {
                println!("- {line}");
            }
            for line in new.iter().filter(|l| !old.contains(l)) {
                println!("+ {line}");
            }
            Err(Failure::refused(format!(
                "{} no longer matches the database (- in the file, + in the database); \
                 `tabula schema pull -o {} --force` rewrites it",
                file.display(),
                file.display()
            )))
        }
        Command::Cache(tools::Cache::Get {
            model,
            key,
            cache,
            json,
        }) => {
            let model = models::find(models, &model)?;
            let db = connect_cached(cli.database_url, cli.redis_url, cache).await?;
            let answer = model.get(&db, &key).await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            let field = |name: &str| answer.get(name).cloned().unwrap_or_default();
            let text = |v: serde_json::Value| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            println!(
                "{} {}: {}",
                text(field("table")),
                text(field("key")),
                text(field("state"))
            );
            if let Some(ms) = field("ttl_ms").as_u64() {
                println!("expires in {:.1}s", ms as f64 / 1000.0);
            }
            if field("leased").as_bool() == Some(true) {
                println!("a reader holds its lease: a fill is on its way");
            }
            if let Some(n @ 1..) = field("scoped_copies").as_u64() {
                println!("{n} user scope(s) keep their own copy");
            }
            if !field("row").is_null() {
                let row = serde_json::to_string_pretty(&field("row"))
                    .map_err(|e| Failure::setup(e.to_string()))?;
                println!("{row}");
            }
            Ok(())
        }
        Command::Cache(tools::Cache::Warm {
            model,
            limit,
            cache,
        }) => {
            let model = models::find(models, &model)?;
            let db = connect_cached(cli.database_url, cli.redis_url, cache).await?;
            let bar = progress(0, "rows");
            let (read, filled) = model.warm(&db, limit, &bar).await?;
            bar.finish_and_clear();
            println!(
                "{}: read {read} row(s), filled {filled} entr{}",
                model.name(),
                if filled == 1 { "y" } else { "ies" }
            );
            Ok(())
        }
        Command::Cache(command) => tools::cache(cli.redis_url, command).await,
        Command::Storage { settings, command } => {
            let url = cli.database_url.ok_or_else(|| {
                Failure::setup("no database: pass --database-url or set DATABASE_URL (or .env)")
            })?;
            tools::storage(connect(&url).await?, settings, command).await
        }
        Command::Schema(Schema::Pull {
            schema,
            output,
            force,
        }) => {
            let url = cli.database_url.ok_or_else(|| {
                Failure::setup("no database: pass --database-url or set DATABASE_URL (or .env)")
            })?;
            if let Some(path) = &output
                && path.exists()
                && !force
            {
                return Err(Failure::refused(format!(
                    "{} exists; pass --force to overwrite it",
                    path.display()
                )));
            }
            let db = connect(&url).await?;
            let source = schema::pull(&db, &schema).await?;
            match output {
                Some(path) => {
                    std::fs::write(&path, source).map_err(|e| {
                        Failure::setup(format!("cannot write {}: {e}", path.display()))
                    })?;
                    println!("wrote {}", path.display());
                }
                None => print!("{source}"),
            }
            Ok(())
        }
        Command::Migrate(command) => {
            let url = cli.database_url.ok_or_else(|| {
                Failure::setup("no database: pass --database-url or set DATABASE_URL (or .env)")
            })?;
            migrate(&url, command).await
        }
    }
}

fn migrator(dir: &Path) -> Result<Migrator, Failure> {
    Migrator::from_dir(dir).map_err(|e| Failure::setup(e.to_string()))
}

async fn connect(url: &str) -> Result<tabula::Db, Failure> {
    tabula::Db::connect(url)
        .await
        .map_err(|e| Failure::setup(format!("cannot connect: {e}")))
}

/// A handle with the cache an application's handle would have: the same Redis,
/// prefix and namespace (by default the database's identity, as the library does).
async fn connect_cached(
    url: Option<String>,
    redis_url: Option<String>,
    cache: tools::CacheSettings,
) -> Result<tabula::Db, Failure> {
    let url = url.ok_or_else(|| {
        Failure::setup("no database: pass --database-url or set DATABASE_URL (or .env)")
    })?;
    let redis_url = redis_url
        .ok_or_else(|| Failure::setup("no cache: pass --redis-url or set REDIS_URL (or .env)"))?;
    let mut config = tabula::CacheConfig::default().prefix(cache.prefix);
    if let Some(namespace) = cache.namespace {
        config = config.namespace(namespace);
    }
    let service = tabula::CacheService::redis(&redis_url, config)
        .map_err(|e| Failure::setup(e.to_string()))?;
    tabula::Db::connect_with(tabula::DbConfig::new(url).cache(service))
        .await
        .map_err(|e| Failure::setup(format!("cannot connect: {e}")))
}

async fn migrate(url: &str, command: Migrate) -> Result<(), Failure> {
    match command {
        Migrate::Add { .. } => Ok(()),
        Migrate::Run {
            dry_run,
            target,
            no_builtin,
            allow_out_of_order,
            dir,
        } => {
            let mut migrator = migrator(&dir.dir)?.allow_out_of_order(allow_out_of_order);
            if !no_builtin {
                migrator = migrator.with_builtin();
            }
            let db = connect(url).await?;
            if dry_run {
                let pending = migrator.plan(&db, target).await?;
                if pending.is_empty() {
                    println!("nothing to apply");
                }
                for version in pending {
                    let name = migrator
                        .migrations()
                        .iter()
                        .find(|m| m.version == version)
                        .map_or("", |m| m.name.as_ref());
                    println!("would apply {version} {name}");
                }
                return Ok(());
            }
            // One version at a time, so the bar moves (each step is a run of its own,
            // under the same lock and checks).
            let pending = migrator.plan(&db, target).await?;
            let bar = progress(pending.len() as u64, "migrations");
            let mut applied = Vec::new();
            let mut builtin = Vec::new();
            let steps: Vec<Option<i64>> = match pending.is_empty() {
                true => vec![target],
                false => pending.iter().copied().map(Some).collect(),
            };
            for step in steps {
                let report = migrator.run_to(&db, step).await?;
                builtin.extend(report.builtin_applied);
                applied.extend(report.applied);
                bar.inc(1);
            }
            bar.finish_and_clear();
            for version in &builtin {
                println!("applied built-in {version}");
            }
            for version in &applied {
                let name = migrator
                    .migrations()
                    .iter()
                    .find(|m| m.version == *version)
                    .map_or("", |m| m.name.as_ref());
                println!("applied {version} {name}");
            }
            if applied.is_empty() {
                println!("nothing to apply");
            }
            Ok(())
        }
        Migrate::Info { json, dir } => {
            let migrator = migrator(&dir.dir)?;
            let db = connect(url).await?;
            let lines = migrator.status(&db).await?;
            if json {
                let out: Vec<serde_json::Value> = lines
                    .iter()
                    .map(|line| {
                        serde_json::json!({
                            "version": line.version,
                            "name": line.name,
                            "state": state_word(line.state),
                            "checksum": line.checksum,
                            "applied_at": line.applied_at.and_then(|t| {
                                t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
                            }),
                            "reversible": line.reversible,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(out));
                return Ok(());
            }
            if lines.is_empty() {
                println!("no migrations");
            }
            for line in lines {
                println!(
                    "{:>6}  {:<8}  {}{}",
                    line.version,
                    state_word(line.state),
                    line.name,
                    if line.reversible {
                        "  (reversible)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Migrate::Revert { dir } => {
            let migrator = migrator(&dir.dir)?;
            let db = connect(url).await?;
            let version = migrator.revert(&db).await?;
            println!("reverted {version}");
            Ok(())
        }
        Migrate::Verify { dir } => {
            let migrator = migrator(&dir.dir)?;
            let db = connect(url).await?;
            migrator.verify(&db).await?;
            println!("every applied migration matches its file");
            Ok(())
        }
    }
}

/// A progress bar on standard error when it is a terminal; hidden otherwise (pipes,
/// CI logs, tests).
pub(crate) fn progress(length: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(length);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

fn state_word(state: MigrationState) -> &'static str {
    match state {
        MigrationState::Applied => "applied",
        MigrationState::Pending => "pending",
        MigrationState::Edited => "edited",
        MigrationState::Missing => "missing",
    }
}

/// Creates the next migration file in `dir` (made if missing): its version one above
/// the highest there, zero-padded like the others (4 digits for the first).
fn add(dir: &Path, name: &str, down: bool) -> Result<(), Failure> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Failure::refused(format!(
            "a migration name is letters, digits and `_`, not `{}`",
            name.escape_debug()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::setup(format!("cannot create {}: {e}", dir.display())))?;
    let existing = migrator(dir)?;
    let last = existing.migrations().last();
    let version = match last {
        None => 1,
        Some(m) => m.version.checked_add(1).ok_or_else(|| {
            Failure::refused(format!(
                "migration {} has the largest version there is; no file can follow it",
                m.version
            ))
        })?,
    };
    let width = std::fs::read_dir(dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            tabula::migrate::parse_file_name(&file)?;
            file.split_once('_').map(|(digits, _)| digits.len())
        })
        .max()
        .unwrap_or(4);
    let up = dir.join(format!("{version:0width$}_{name}.sql"));
    let header = format!("-- Migration {version}: {name}\n");
    write_new(&up, &header)?;
    if down {
        let down = dir.join(format!("{version:0width$}_{name}.down.sql"));
        if let Err(failure) = write_new(&down, &format!("-- Undoes migration {version}: {name}\n"))
        {
            // Both files or neither.
            let _ = std::fs::remove_file(&up);
            return Err(failure);
        }
        println!("created {}", up.display());
        println!("created {}", down.display());
        return Ok(());
    }
    println!("created {}", up.display());
    Ok(())
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Failure::refused(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())))
}
