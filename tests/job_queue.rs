//! A job queue under load: 500 jobs, 8 workers, each job taken with
//! `FOR UPDATE SKIP LOCKED` and recorded (in `job_runs`, in the same transaction as
//! the job's `done` mark) by the worker that took it. PostgreSQL's rows are the
//! oracle: every job has exactly one run. And `NOWAIT` on a locked row is a transient
//! error, at once.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tabula::{Db, Table};

#[derive(Table, Debug, Clone)]
#[table(name = "q_jobs")]
struct Job {
    #[table(primary_key, generated)]
    id: i64,
    done: bool,
}

/// One job done by one worker. Only inserted, never updated: a job taken twice leaves
/// two rows here, whatever the second taker wrote to `q_jobs`.
#[derive(Table, Debug, Clone)]
#[table(name = "q_job_runs")]
struct JobRun {
    #[table(primary_key, generated)]
    id: i64,
    #[table(belongs_to = Job)]
    job_id: i64,
    worker: i32,
}

async fn queue(jobs: usize) -> Db {
    let db = common::db().await;
    db.execute_batch(
        "CREATE TABLE q_jobs (id bigserial PRIMARY KEY, done boolean NOT NULL);
         CREATE TABLE q_job_runs (id bigserial PRIMARY KEY, job_id bigint NOT NULL REFERENCES q_jobs, worker int NOT NULL);",
    )
    .await
    .expect("schema");
    let new = (0..jobs).map(|_| NewJob { done: false }).collect();
    db.insert_many(new).await.expect("jobs");
    db
}

/// Takes the oldest open job, records the run and marks the job done, in one
/// transaction; `None` when no open job is left to take.
async fn take_one(db: &Db, worker: i32) -> tabula::Result<Option<i64>> {
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
        // Hold the row a moment, as real work would: without the lock, others read it
        // as open meanwhile.
        tokio::time::sleep(Duration::from_millis(1)).await;
        tx.create(NewJobRun {
            job_id: job.id,
            worker,
        })
        .await?;
        tx.update::<Job>(job.id, JobPatch::default().done(true))
            .await?;
        Ok(Some(job.id))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_workers_do_every_job_exactly_once() {
    const JOBS: usize = 500;
    const WORKERS: i32 = 8;
    let db = queue(JOBS).await;
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut taken = 0_usize;
                while take_one(&db, worker).await.expect("take a job").is_some() {
                    taken += 1;
                }
                taken
            })
        })
        .collect();
    let mut per_worker = Vec::new();
    for worker in workers {
        per_worker.push(worker.await.expect("worker"));
    }

    let jobs = db.query::<Job>().all().await.expect("jobs");
    let runs = db
        .children::<Job, JobRun>(&jobs)
        .await
        .expect("runs of each job");
    let twice: Vec<(i64, Vec<i32>)> = jobs
        .iter()
        .filter(|job| runs.of(job).len() > 1)
        .map(|job| (job.id, runs.of(job).iter().map(|r| r.worker).collect()))
        .collect();
    let missed: Vec<i64> = jobs
        .iter()
        .filter(|job| runs.of(job).is_empty() || !job.done)
        .map(|job| job.id)
        .collect();
    assert!(
        twice.is_empty(),
        "{} jobs were done more than once; the first (job, workers): {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert!(missed.is_empty(), "jobs never done: {missed:?}");
    assert_eq!(jobs.len(), JOBS);
    assert_eq!(runs.len(), JOBS, "one run per job");
    assert_eq!(
        per_worker.iter().sum::<usize>(),
        JOBS,
        "the workers' own counts: {per_worker:?}"
    );
    let busy = per_worker.iter().filter(|&&n| n > 0).count();
    assert!(
        busy > 1,
        "only {busy} worker took jobs (per worker: {per_worker:?}): nothing ran concurrently"
    );
}

/// `NOWAIT` on a row another open transaction has locked fails at once, with an error
/// a caller may retry (`is_transient`), and leaves the holder's transaction unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nowait_on_a_locked_row_is_a_prompt_transient_error() {
    let db = queue(1).await;
    let (locked, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let holder = {
        let (db, locked, release) = (db.clone(), locked.clone(), release.clone());
        tokio::spawn(async move {
            db.transaction(|tx| {
                let (locked, release) = (locked.clone(), release.clone());
                async move {
                    let job = tx
                        .query::<Job>()
                        .for_update()
                        .first()
                        .await?
                        .expect("the one job");
                    locked.notify_one();
                    release.notified().await;
                    tx.update::<Job>(job.id, JobPatch::default().done(true))
                        .await
                }
            })
            .await
        })
    };
    locked.notified().await;

    // In a transaction, and on its own (a statement is its own transaction).
    let started = Instant::now();
    let in_tx = db
        .transaction(|tx| async move { tx.query::<Job>().for_update().nowait().first().await })
        .await;
    let alone = db.query::<Job>().for_update().nowait().first().await;
    let waited = started.elapsed();
    for (how, refused) in [("in a transaction", &in_tx), ("alone", &alone)] {
        match refused {
            Err(e) => assert!(
                e.is_transient() && e.sqlstate() == Some("55P03"),
                "{how}: a lock not available should be transient 55P03, got {e:?}"
            ),
            Ok(row) => panic!("{how}: NOWAIT read a locked row: {row:?}"),
        }
    }
    assert!(
        waited < Duration::from_secs(2),
        "NOWAIT waited {waited:?} for the lock"
    );

    release.notify_one();
    let done = holder.await.expect("holder").expect("holder's transaction");
    assert!(done.done, "the holder's update was lost");
}
