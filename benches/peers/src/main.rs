//! Tabula against its peers — raw tokio-postgres, sqlx, SeaORM and diesel-async —
//! doing the same work on the same PostgreSQL, interleaved in one process on a
//! current-thread runtime. See README.md for what is measured and how to read it.
//!
//! `cargo run --release` (about three minutes), `cargo run --release -- --quick` (under
//! a minute, noisier), `--rounds N` to choose the number of rounds.

mod harness;
mod peers;
mod report;
mod schema;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tabula::migrate::{Migration, Migrator};

use crate::harness::{Settings, WORKLOADS};
use crate::peers::{Library, Result};
use crate::report::{Environment, LibraryVersion, Report};

const USAGE: &str = "usage: tabula-peers [--quick] [--rounds N] [--only WORKLOAD[,WORKLOAD…]]";

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("peers: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the command line asks for.
struct Args {
    settings: Settings,
    quick: bool,
    /// Workload names to run (all when empty).
    only: Vec<String>,
}

fn parse_args(args: impl Iterator<Item = String>) -> std::result::Result<Args, String> {
    let mut quick = false;
    let mut rounds = None;
    let mut only = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--rounds" => {
                let value = args.next().ok_or("--rounds needs a number")?;
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("--rounds {value}: not a number"))?;
                if n == 0 {
                    return Err("--rounds must be at least 1".into());
                }
                rounds = Some(n);
            }
            "--only" => {
                let value = args.next().ok_or("--only needs workload names")?;
                for name in value.split(',') {
                    if !WORKLOADS.iter().any(|w| w.name == name) {
                        let known: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
                        return Err(format!(
                            "unknown workload `{name}`; known: {}",
                            known.join(", ")
                        ));
                    }
                    only.push(name.to_owned());
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let settings = if quick {
        Settings {
            rounds: rounds.unwrap_or(5),
            turn: Duration::from_millis(40),
            warm_up: Duration::from_millis(60),
        }
    } else {
        Settings {
            rounds: rounds.unwrap_or(41),
            turn: Duration::from_millis(70),
            warm_up: Duration::from_millis(300),
        }
    };
    Ok(Args {
        settings,
        quick,
        only,
    })
}

async fn run(args: Args) -> Result<()> {
    let Args {
        settings,
        quick,
        only,
    } = args;
    let started = Instant::now();
    let load_before = load_average();
    let migrator = Migrator::new(vec![Migration::new(1, "peers_schema", schema::SCHEMA)])?;
    let (db, url) = tabula::testkit::database(&migrator).await?;

    // A connection of its own for seeding and resetting: never timed.
    let (control, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    control.batch_execute(&schema::seed_sql()).await?;
    let postgres: String = control.query_one("SHOW server_version", &[]).await?.get(0);

    let mut libraries = vec![
        Library::Raw(peers::raw::Raw::connect(&url).await?),
        Library::Tabula(peers::tabula::Tabula::new(db)),
        Library::Sqlx(peers::sqlx::Sqlx::connect(&url).await?),
        Library::SeaOrm(peers::sea_orm::SeaOrm::connect(&url).await?),
        Library::Diesel(peers::diesel::Diesel::connect(&url).await?),
    ];

    let mut workloads = Vec::new();
    for &workload in WORKLOADS
        .iter()
        .filter(|w| only.is_empty() || only.iter().any(|o| o == w.name))
    {
        let t = Instant::now();
        let measured = harness::measure(&mut libraries, &control, workload, settings).await?;
        let summary = report::summarize(&measured);
        eprintln!(
            "{:<22} {:>6} ops/round  {:>5.1} s  {}",
            workload.name,
            measured.ops_per_round,
            t.elapsed().as_secs_f64(),
            summary
                .results
                .iter()
                .map(|r| format!("{} {:.2}×", r.library, r.ratio_to_raw))
                .collect::<Vec<_>>()
                .join("  ")
        );
        workloads.push(summary);
    }

    let report = Report {
        date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        quick,
        rounds: settings.rounds,
        environment: Environment {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_before,
            load_after: load_average(),
            postgres,
            tabula_commit: git_commit(),
        },
        libraries: library_versions(),
        workloads,
    };
    println!("{}", report::markdown(&report));
    // Only a full run of every workload is a result; partial runs are kept apart.
    let suffix = if quick || !only.is_empty() {
        "-partial"
    } else {
        ""
    };
    let path = results_dir().join(format!("{}{suffix}.json", report.date));
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!(
        "wrote {} after {:.0} s; chart: python3 chart.py {}",
        path.display(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}

/// Versions as resolved in this crate's Cargo.lock (read by build.rs).
fn library_versions() -> Vec<LibraryVersion> {
    vec![
        LibraryVersion {
            name: "tokio-postgres",
            version: env!("PEERS_VERSION_TOKIO_POSTGRES"),
        },
        LibraryVersion {
            name: "tabula",
            version: env!("PEERS_VERSION_TABULA"),
        },
        LibraryVersion {
            name: "sqlx",
            version: env!("PEERS_VERSION_SQLX"),
        },
        LibraryVersion {
            name: "sea-orm",
            version: env!("PEERS_VERSION_SEA_ORM"),
        },
        LibraryVersion {
            name: "diesel-async",
            version: env!("PEERS_VERSION_DIESEL_ASYNC"),
        },
    ]
}

fn results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The repository's commit, so a result can be traced to the Tabula it measured.
fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}
