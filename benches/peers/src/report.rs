//! The summary of a run: per workload and library the median time per operation over
//! the rounds, and the median over rounds of the ratio to raw tokio-postgres in the
//! same round. Printed as a markdown table, written as JSON for `chart.py`.

use serde::Serialize;

use crate::harness::{Measured, median, quantile};

/// The library every ratio is taken against.
pub(crate) const BASELINE: &str = "tokio-postgres";

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) date: String,
    pub(crate) quick: bool,
    pub(crate) rounds: usize,
    pub(crate) environment: Environment,
    pub(crate) libraries: Vec<LibraryVersion>,
    pub(crate) workloads: Vec<WorkloadResult>,
}

#[derive(Serialize)]
pub(crate) struct Environment {
    pub(crate) cores: usize,
    /// `/proc/loadavg` before and after the run: other work on the machine.
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) postgres: String,
    pub(crate) tabula_commit: String,
}

#[derive(Serialize)]
pub(crate) struct LibraryVersion {
    pub(crate) name: &'static str,
    pub(crate) version: &'static str,
}

#[derive(Serialize)]
pub(crate) struct WorkloadResult {
    pub(crate) name: &'static str,
    pub(crate) ops_per_round: usize,
    pub(crate) results: Vec<LibraryResult>,
}

#[derive(Serialize)]
pub(crate) struct LibraryResult {
    pub(crate) library: &'static str,
    /// Median over rounds of the mean time per operation, in microseconds.
    pub(crate) median_us: f64,
    /// Median over rounds of (this library's time / the baseline's, same round).
    pub(crate) ratio_to_raw: f64,
    /// The quartiles of the per-round ratios: how much the rounds disagree.
    pub(crate) ratio_p25: f64,
    pub(crate) ratio_p75: f64,
    /// Mean time per operation of each round, in microseconds.
    pub(crate) rounds_us: Vec<f64>,
}

pub(crate) fn summarize(measured: &Measured) -> WorkloadResult {
    let baseline = measured
        .rounds
        .iter()
        .find(|(name, _)| *name == BASELINE)
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    let results = measured
        .rounds
        .iter()
        .map(|(library, rounds)| {
            let ratios: Vec<f64> = rounds.iter().zip(&baseline).map(|(t, b)| t / b).collect();
            LibraryResult {
                library,
                median_us: median(rounds) * 1e6,
                ratio_to_raw: median(&ratios),
                ratio_p25: quantile(&ratios, 0.25),
                ratio_p75: quantile(&ratios, 0.75),
                rounds_us: rounds.iter().map(|s| s * 1e6).collect(),
            }
        })
        .collect();
    WorkloadResult {
        name: measured.workload.name,
        ops_per_round: measured.ops_per_round,
        results,
    }
}

/// One row per workload, one column per library: `median time (ratio×)`.
pub(crate) fn markdown(report: &Report) -> String {
    let libraries: Vec<&str> = report.libraries.iter().map(|l| l.name).collect();
    let mut out = String::new();
    out.push_str("| workload | ops/round |");
    for name in &libraries {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|---:|");
    out.push_str(&"---:|".repeat(libraries.len()));
    out.push('\n');
    for workload in &report.workloads {
        out.push_str(&format!(
            "| {} | {} |",
            workload.name, workload.ops_per_round
        ));
        for name in &libraries {
            match workload.results.iter().find(|r| r.library == *name) {
                Some(r) => out.push_str(&format!(
                    " {} ({:.2}×) |",
                    duration(r.median_us),
                    r.ratio_to_raw
                )),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

fn duration(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}
