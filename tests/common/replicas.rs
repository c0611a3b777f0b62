//! Shared by the replica suites (`tests/replicas.rs`, `attack_replicas*.rs`,
//! `attack_cacheless_replica.rs`): one primary and standby per test binary, taken in
//! turns (the tests pause the standby's replay), and a guard that resumes it.

use std::sync::OnceLock;

use tabula::testkit::ReplicaSet;

/// One primary and standby for this test binary, started on first use.
pub fn set() -> &'static ReplicaSet {
    static SET: OnceLock<ReplicaSet> = OnceLock::new();
    SET.get_or_init(|| ReplicaSet::start().expect("primary and standby"))
}

/// Held by a test for its whole run: the tests of a binary take turns.
pub static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resumes the standby's replay when dropped — a failing test included.
pub struct Resume;

impl Drop for Resume {
    fn drop(&mut self) {
        let set = set();
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let _ = rt.block_on(set.resume_replay());
            });
        });
    }
}

/// Waits until the standby has replayed everything, then pauses its replay.
pub async fn paused() -> Resume {
    set().caught_up().await.expect("caught up");
    set().pause_replay().await.expect("pause");
    Resume
}
