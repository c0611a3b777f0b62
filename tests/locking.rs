//! Row locks in the query builder: `FOR UPDATE … SKIP LOCKED` makes a work queue in
//! which concurrent workers never take the same job; `NOWAIT` fails at once.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tabula::{Db, Error, Table};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "jobs")]
struct Job {
    #[table(primary_key, generated)]
    id: i64,
    payload: String,
    done_by: Option<i32>,
}

async fn queue(jobs: usize) -> Db {
    let db = common::db().await;
    db.execute_batch(
        "CREATE TABLE jobs (id bigserial PRIMARY KEY, payload text NOT NULL, done_by int)",
    )
    .await
    .expect("table");
    let new: Vec<NewJob> = (0..jobs)
        .map(|i| NewJob {
            payload: format!("job {i}"),
            done_by: None,
        })
        .collect();
    db.create_many(new).await.expect("jobs");
    db
}

/// Takes one open job, marks it done by `worker`, in one transaction; `None` when no
/// job is left to take.
async fn take_one(db: &Db, worker: i32) -> Result<Option<i64>, Error> {
    db.transaction(|tx| async move {
        let Some(job) = tx
            .query::<Job>()
            .filter(Job::DONE_BY.is_null())
            .order_by(Job::ID.asc())
            .for_update()
            .skip_locked()
            .first()
            .await?
        else {
            return Ok(None);
        };
        // Hold the lock a moment, as real work would.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        tx.update::<Job>(
            job.id,
            JobPatch {
                done_by: Some(Some(worker)),
                ..Default::default()
            },
        )
        .await?;
        Ok(Some(job.id))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_skip_locked_never_take_the_same_job() {
    let jobs = 60;
    let db = queue(jobs).await;
    let taken = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..6)
        .map(|worker| {
            let (db, taken) = (db.clone(), taken.clone());
            tokio::spawn(async move {
                while let Some(id) = take_one(&db, worker).await.expect("take") {
                    taken.lock().expect("taken").push(id);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let taken = taken.lock().expect("taken").clone();
    let distinct: HashSet<i64> = taken.iter().copied().collect();
    assert_eq!(taken.len(), jobs, "every job taken once: {taken:?}");
    assert_eq!(distinct.len(), jobs, "a job taken twice");
    let open = db
        .query::<Job>()
        .filter(Job::DONE_BY.is_null())
        .count()
        .await
        .expect("count");
    assert_eq!(open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nowait_fails_at_once_on_a_locked_row_and_skip_locked_passes_it() {
    let db = queue(2).await;
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
                    tx.query::<Job>()
                        .filter(Job::ID.eq(1))
                        .for_update()
                        .all()
                        .await?;
                    locked.notify_one();
                    release.notified().await;
                    Ok(())
                }
            })
            .await
        })
    };
    locked.notified().await;
    let started = std::time::Instant::now();
    let refused = db
        .transaction(
            |tx| async move { tx.query::<Job>().filter(Job::ID.eq(1)).nowait().all().await },
        )
        .await;
    assert!(
        matches!(&refused, Err(e) if e.sqlstate() == Some("55P03")),
        "{refused:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let next = db
        .transaction(|tx| async move {
            tx.query::<Job>()
                .order_by(Job::ID.asc())
                .skip_locked()
                .first()
                .await
        })
        .await
        .expect("skip locked");
    assert_eq!(
        next.map(|j| j.id),
        Some(2),
        "the locked row was not skipped"
    );
    release.notify_one();
    holder.await.expect("holder").expect("holder tx");
    let sql = db
        .query::<Job>()
        .for_share()
        .nowait()
        .limit(1)
        .to_sql()
        .expect("sql");
    assert!(sql.ends_with("FOR SHARE NOWAIT"), "{sql}");
}

/// PostgreSQL locks no rows behind an aggregate: a lock asked of one is refused, not
/// dropped quietly.
#[tokio::test]
async fn a_lock_on_an_aggregate_is_refused() {
    let db = queue(3).await;
    for refused in [
        db.query::<Job>().for_update().count().await.map(|_| ()),
        db.query::<Job>()
            .for_update()
            .nowait()
            .exists()
            .await
            .map(|_| ()),
        db.query::<Job>().for_share().max(Job::ID).await.map(|_| ()),
    ] {
        assert!(matches!(refused, Err(Error::Misuse(_))), "{refused:?}");
    }
    assert!(
        db.query::<Job>()
            .for_update()
            .skip_locked()
            .page(2, None)
            .await
            .is_ok()
    );
}
