//! A job queue on PostgreSQL row locks: workers take the oldest open job with
//! `FOR UPDATE SKIP LOCKED`, so two workers never take the same job and none waits for
//! another; each job is taken and marked done in one transaction, so a worker that
//! fails leaves its job open for the next one.
//!
//! Run it with `cargo run --example job_queue`. It runs on a fresh database of its own
//! (on `DATABASE_URL`'s server when it is set, otherwise on a throwaway PostgreSQL that
//! the test kit starts and stops when this program exits).

use std::time::Duration;

use tabula::migrate::{Migration, Migrator};
use tabula::{Db, Table};

const JOBS: usize = 200;
const WORKERS: i32 = 4;

#[derive(Table, Debug, Clone)]
#[table(name = "jobs")]
pub struct Job {
    #[table(primary_key, generated)]
    pub id: i64,
    pub payload: String,
    pub done: bool,
    pub taken_by: Option<i32>,
}

const SCHEMA: &str = "CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    payload text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    taken_by int
);
-- Workers look for the oldest open job: an index on exactly those rows.
CREATE INDEX jobs_open ON jobs (id) WHERE NOT done;";

/// Takes the oldest open job, does it, and marks it done by `worker` — all in one
/// transaction, so the row stays locked until the job is recorded as done. `None` when
/// no open job is left (or every open one is being worked on right now).
async fn work_one(db: &Db, worker: i32) -> tabula::Result<Option<i64>> {
    db.transaction(|tx| async move {
        let Some(job) = tx
            .query::<Job>()
            .filter(Job::DONE.eq(false))
            .order_by(Job::ID.asc())
            .for_update()
            .skip_locked()
            .first()
            .await?
        else {
            return Ok(None);
        };
        // The work itself; the row lock keeps every other worker off this job.
        tokio::time::sleep(Duration::from_millis(1)).await;
        tx.update::<Job>(
            job.id,
            JobPatch::default().done(true).taken_by(Some(worker)),
        )
        .await?;
        Ok(Some(job.id))
    })
    .await
}

#[tokio::main]
async fn main() -> tabula::Result<()> {
    let migrations = Migrator::new(vec![Migration::new(1, "jobs", SCHEMA)])?;
    let (db, _url) = tabula::testkit::database(&migrations).await?;

    let new_jobs = (0..JOBS)
        .map(|i| NewJob {
            payload: format!("send newsletter #{i}"),
            done: false,
            taken_by: None,
        })
        .collect();
    db.insert_many(new_jobs).await?;
    println!("queued {JOBS} jobs for {WORKERS} workers");

    let workers: Vec<_> = (1..=WORKERS)
        .map(|worker| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut done = 0_usize;
                while work_one(&db, worker).await?.is_some() {
                    done += 1;
                }
                Ok::<_, tabula::Error>(done)
            })
        })
        .collect();
    for (worker, handle) in (1..=WORKERS).zip(workers) {
        let done = handle.await.expect("a worker panicked")?;
        println!("worker {worker} did {done} jobs");
    }

    let open = db
        .query::<Job>()
        .filter(Job::DONE.eq(false))
        .count()
        .await?;
    let unclaimed = db
        .query::<Job>()
        .filter(Job::TAKEN_BY.is_null())
        .count()
        .await?;
    println!("left open: {open}, done by nobody: {unclaimed}");
    Ok(())
}
