//! The server's own view of a pool's sessions, for the pool tests: named by
//! `application_name`, counted and killed through another handle.

use tabula::Db;

/// Connections open with `application_name` = `name`, as the server counts them.
pub async fn open_connections(watcher: &Db, name: &str) -> i64 {
    let name = name.to_owned();
    watcher
        .with_client(async move |c| {
            Ok(c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await?
            .get(0))
        })
        .await
        .expect("count")
}

/// Ends every session with `application_name` = `name`; how many there were.
pub async fn terminate(watcher: &Db, name: &str) -> i64 {
    let name = name.to_owned();
    watcher
        .with_client(async move |c| {
            Ok(c.query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&name],
            )
            .await?
            .get(0))
        })
        .await
        .expect("terminate")
}
