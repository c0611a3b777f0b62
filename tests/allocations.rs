//! What the hot path allocates: a counting allocator around `Db::read` on a
//! current-thread runtime, counting this thread's allocations (the driver's connection
//! task runs on it too, for the raw client and for Tabula alike).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;

struct Counting;

thread_local! {
    /// This thread's allocations: other threads (the test harness, the test kit) do
    /// not disturb the count.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: during thread teardown the slot may be gone; those are not ours.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations per call of `work`, averaged over many calls after a warm-up.
async fn per_call<F: AsyncFnMut()>(mut work: F) -> f64 {
    for _ in 0..50 {
        work().await;
    }
    const CALLS: u64 = 500;
    let before = allocations();
    for _ in 0..CALLS {
        work().await;
    }
    (allocations() - before) as f64 / CALLS as f64
}

#[test]
fn allocations_of_the_hot_paths_stay_within_their_budget() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (db, url) = db_and_url().await;
        let p = db.create(new_profile("alloc")).await.expect("create");
        let (raw, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("raw");
        tokio::spawn(connection);
        let sql = "SELECT id, user_id, username, avatar_url, status, created_at, updated_at \
                   FROM profiles WHERE id = $1";
        let stmt = raw.prepare(sql).await.expect("prepare");
        let raw_read = per_call(async || {
            let row = raw.query_opt(&stmt, &[&p.id]).await.expect("raw");
            assert!(row.is_some());
        })
        .await;
        let read = per_call(async || {
            assert!(db.read::<Profile>(p.id).await.expect("read").is_some());
        })
        .await;
        let query = per_call(async || {
            let rows = db
                .query::<Profile>()
                .filter(Profile::ID.eq(p.id))
                .all()
                .await
                .expect("query");
            assert_eq!(rows.len(), 1);
        })
        .await;
        println!("allocations per call: raw {raw_read:.1}, read {read:.1}, query {query:.1}");
        // The row itself (the struct's strings) and the driver's own work are in the raw
        // figure; what Tabula adds on top is bounded here, so a change that adds
        // allocations to the hot path shows up as a failure, not as a slow drift.
        assert!(
            read <= raw_read + BUDGET_READ,
            "read: {read} vs raw {raw_read}"
        );
        assert!(
            query <= raw_read + BUDGET_QUERY,
            "query: {query} vs raw {raw_read}"
        );
    });
}

/// Allocations a read by key makes beyond the raw client's (which decodes nothing):
/// the row's two strings and nothing else — no boxed state machine, no metrics key,
/// no pool bookkeeping — with half an allocation per call of room for the runtime's
/// own occasional ones; one more per call fails (before the pool of Tabula's own and
/// the interned metrics keys, a read made 3 more).
const BUDGET_READ: f64 = 2.5;
/// … and a one-row query through the builder: the above, plus the query's own parts
/// (filter, its shared value, the shape key, the values and placeholder order bound
/// to the statement's template, the SQL text, the parameter list, the result list).
const BUDGET_QUERY: f64 = 11.5;
