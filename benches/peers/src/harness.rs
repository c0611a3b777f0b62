//! The timing loop: for each workload a warm-up, then rounds in which every library
//! runs the same operation `n` times, in an order that rotates from round to round.
//!
//! Why rounds rather than one long run per library: on a small shared machine the
//! speed of everything drifts with the neighbours' load. Within a round the libraries
//! run back to back, so a ratio taken inside one round compares them under the same
//! conditions; the median over rounds then discards the rounds a burst disturbed.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::peers::{Library, Op, Result};
use crate::schema::{self, RESET_SQL, SEEDED_USERS, UserData};

/// What a workload does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// Users with `id <= n`: n rows.
    Users(i32),
    /// One user by primary key, a different one each time.
    User,
    /// Users with `id <= n` and their posts.
    UsersWithPosts(i32),
    /// One insert, the row returned.
    Create,
    /// n rows inserted and returned.
    CreateMany(usize),
    /// n rows inserted, nothing returned.
    Load(usize),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
}

/// Reads first: the insert workloads empty the tables the reads need.
pub(crate) const WORKLOADS: &[Workload] = &[
    Workload {
        name: "trivial_query_1",
        kind: Kind::Users(1),
    },
    Workload {
        name: "trivial_query_100",
        kind: Kind::Users(100),
    },
    Workload {
        name: "trivial_query_10000",
        kind: Kind::Users(10_000),
    },
    Workload {
        name: "read_by_pk",
        kind: Kind::User,
    },
    Workload {
        name: "loading_associations",
        kind: Kind::UsersWithPosts(100),
    },
    Workload {
        name: "insert_1",
        kind: Kind::Create,
    },
    Workload {
        name: "insert_100",
        kind: Kind::CreateMany(100),
    },
    Workload {
        name: "insert_1000",
        kind: Kind::CreateMany(1_000),
    },
    Workload {
        name: "batch_insert_10000",
        kind: Kind::Load(10_000),
    },
];

impl Workload {
    fn writes(&self) -> bool {
        matches!(
            self.kind,
            Kind::Create | Kind::CreateMany(_) | Kind::Load(_)
        )
    }

    /// Rows each operation must report.
    fn expected(&self) -> usize {
        match self.kind {
            Kind::Users(n) => n as usize,
            Kind::User | Kind::Create => 1,
            Kind::UsersWithPosts(n) => n as usize * (1 + schema::POSTS_PER_USER as usize),
            Kind::CreateMany(n) | Kind::Load(n) => n,
        }
    }

    fn inputs(&self) -> Vec<UserData> {
        match self.kind {
            Kind::Create => schema::users_to_insert(1),
            Kind::CreateMany(n) | Kind::Load(n) => schema::users_to_insert(n),
            _ => Vec::new(),
        }
    }

    /// The `i`-th operation of a turn; the same sequence for every library.
    fn op<'a>(&self, i: usize, inputs: &'a [UserData]) -> Op<'a> {
        match self.kind {
            Kind::Users(n) => Op::Users(n),
            // A stride coprime with the table size visits the keys in a scattered order.
            Kind::User => Op::User(1 + ((i * 7_919) % SEEDED_USERS as usize) as i32),
            Kind::UsersWithPosts(n) => Op::UsersWithPosts(n),
            Kind::Create => Op::Create(&inputs[0]),
            Kind::CreateMany(_) => Op::CreateMany(inputs),
            Kind::Load(_) => Op::Load(inputs),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) rounds: usize,
    /// How long one library's turn in a round should take, roughly.
    pub(crate) turn: Duration,
    /// How long each library warms up per workload.
    pub(crate) warm_up: Duration,
}

/// One workload's measurements.
pub(crate) struct Measured {
    pub(crate) workload: Workload,
    /// Operations per library per round.
    pub(crate) ops_per_round: usize,
    /// Per library (in the order of the list given), the mean seconds per operation of
    /// each round.
    pub(crate) rounds: Vec<(&'static str, Vec<f64>)>,
}

pub(crate) async fn measure(
    libraries: &mut [Library],
    control: &Client,
    workload: Workload,
    settings: Settings,
) -> Result<Measured> {
    let inputs = workload.inputs();
    let mut per_op = Vec::new();
    for library in libraries.iter_mut() {
        per_op.push(warm_up(library, control, workload, &inputs, settings.warm_up).await?);
    }
    per_op.sort_by(f64::total_cmp);
    let typical = per_op[per_op.len() / 2];
    let ops_per_round =
        ((settings.turn.as_secs_f64() / typical).round() as usize).clamp(1, 100_000);

    let mut rounds: Vec<(&'static str, Vec<f64>)> =
        libraries.iter().map(|l| (l.name(), Vec::new())).collect();
    let count = libraries.len();
    for round in 0..settings.rounds {
        for k in 0..count {
            let index = (k + round) % count;
            let library = &mut libraries[index];
            if workload.writes() {
                control.batch_execute(RESET_SQL).await?;
            }
            let started = Instant::now();
            for i in 0..ops_per_round {
                run_checked(library, workload, workload.op(i, &inputs)).await?;
            }
            let seconds = started.elapsed().as_secs_f64() / ops_per_round as f64;
            rounds[index].1.push(seconds);
        }
    }
    Ok(Measured {
        workload,
        ops_per_round,
        rounds,
    })
}

/// Runs the workload for `time` (at least three operations) and returns the mean
/// seconds per operation after the first, which prepares statements and fills caches.
async fn warm_up(
    library: &mut Library,
    control: &Client,
    workload: Workload,
    inputs: &[UserData],
    time: Duration,
) -> Result<f64> {
    if workload.writes() {
        control.batch_execute(RESET_SQL).await?;
    }
    run_checked(library, workload, workload.op(0, inputs)).await?;
    let started = Instant::now();
    let mut done = 0;
    while done < 2 || started.elapsed() < time {
        run_checked(library, workload, workload.op(done + 1, inputs)).await?;
        done += 1;
    }
    Ok(started.elapsed().as_secs_f64() / done as f64)
}

async fn run_checked(library: &mut Library, workload: Workload, op: Op<'_>) -> Result<()> {
    let rows = library.run(op).await?;
    if rows != workload.expected() {
        return Err(format!(
            "{} on {}: {rows} rows, expected {}",
            library.name(),
            workload.name,
            workload.expected()
        )
        .into());
    }
    Ok(())
}

/// The median of `values`.
pub(crate) fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The `q`-quantile of `values` (0 ≤ q ≤ 1), interpolating between neighbours; NaN
/// for no values.
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}
