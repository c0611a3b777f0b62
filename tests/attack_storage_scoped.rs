//! Round 32 (an outside attack on the fix of round 31: other paths that lose the
//! task-local scoped transaction). Storage writes run in tasks of their own; inside a
//! user-scoped handle's own `with_client` body they committed beside the body. Each
//! `defect_*` test failed 7 of 7 runs on the code it attacked and passes since its fix.
//! (The round's pool finding — a raw body's pipelined statements outliving its closed
//! socket — is flaky and left out; see the session's note.)

mod common;

use common::fixtures::{raw, uniq};

use std::time::Duration;

use common::db_and_url;
use tabula::storage::{BucketOptions, StorageService, UploadOptions};
use tabula::{Db, DbConfig, Error};

const KEY: &[u8] = b"test signing key, thirty-two bytes or more";

async fn objects_named(url: &str, bucket: &str, name: &str) -> i64 {
    raw(url)
        .await
        .query_one(
            "SELECT count(*) FROM storage.objects WHERE bucket_id = $1 AND name = $2",
            &[&bucket, &name],
        )
        .await
        .expect("count")
        .get(0)
}

// ---- 1. storage through a scoped handle inside that handle's own `with_client` body ----

struct StorageKit {
    db: Db,
    url: String,
    storage: StorageService,
    _dir: std::path::PathBuf,
}

async fn storage_kit() -> StorageKit {
    let (_d, url) = db_and_url().await;
    let db = Db::connect_with(
        DbConfig::new(&url)
            .pool_size(4)
            .statement_timeout(Duration::from_secs(5))
            .checkout_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("attack setup");
    let dir = std::env::temp_dir().join(uniq("store"));
    let storage =
        StorageService::local(db.clone(), &dir, KEY, "http://127.0.0.1:1").expect("attack setup");
    storage
        .create_bucket(
            "docs",
            BucketOptions {
                public: false,
                ..Default::default()
            },
        )
        .await
        .expect("bucket");
    StorageKit {
        db,
        url,
        storage,
        _dir: dir,
    }
}

/// `Db::with_client` (runtime/src/db/conn.rs): "Inside the body, a statement through
/// the same transaction or scoped handle is [`Error::Misuse`] (the body holds its
/// connection) — use the raw client there." and `StorageService::own_transactions`
/// (storage/mod.rs): "a service over a transaction handle would move them at a
/// savepoint that the outer transaction may still roll back" (hence refused).
///
/// `delete_files` hands its work to `tokio::spawn` (storage/objects.rs), which does not
/// carry the task-local scoped transaction of the body: the delete runs in a scoped
/// transaction of its own on another connection and commits — row and bytes gone —
/// though the body fails and its transaction rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_scoped_storage_delete_inside_its_own_raw_body_escapes_it() {
    let kit = storage_kit().await;
    let u = uuid::Uuid::new_v4();
    let scoped = kit.db.as_user(u);
    let mine = kit.storage.through(&scoped);
    let path = format!("{}/a.txt", uniq("p"));
    mine.upload_file("docs", &path, b"hello".to_vec(), UploadOptions::default())
        .await
        .expect("upload as the user");
    assert_eq!(objects_named(&kit.url, "docs", &path).await, 1);

    let (m2, p2) = (mine.clone(), path.clone());
    let inner_seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = inner_seen.clone();
    let outer: tabula::Result<()> = tokio::time::timeout(
        Duration::from_secs(30),
        scoped.with_client(async move |_c| {
            let inner = m2.delete_files("docs", &[p2.as_str()]).await;
            let failed = inner.is_err();
            *seen.lock().expect("lock") = Some(format!("{inner:?}"));
            match failed {
                true => inner.map(|_| ()),
                // The caller changes its mind: the body fails, nothing may be kept.
                false => Err(Error::Misuse("body gave up after the inner delete".into())),
            }
        }),
    )
    .await
    .expect("ends");
    let kept = objects_named(&kit.url, "docs", &path).await;
    let inner = inner_seen.lock().expect("lock").clone();
    assert_eq!(
        kept, 1,
        "a storage delete through the scoped handle inside its own with_client body committed \
         on another connection (inner: {inner:?}); the body failed with {outer:?}"
    );
    // The bytes too: still downloadable by their owner.
    let bytes = mine.download_file("docs", &path).await;
    assert!(bytes.is_ok(), "bytes of the object gone: {bytes:?}");
}

/// The same through `move_file` (storage/objects.rs `relocate_in_task`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_scoped_storage_move_inside_its_own_raw_body_escapes_it() {
    let kit = storage_kit().await;
    let u = uuid::Uuid::new_v4();
    let scoped = kit.db.as_user(u);
    let mine = kit.storage.through(&scoped);
    let base = uniq("m");
    let (from, to) = (format!("{base}/from.txt"), format!("{base}/to.txt"));
    mine.upload_file("docs", &from, b"hello".to_vec(), UploadOptions::default())
        .await
        .expect("upload as the user");

    let (m2, f2, t2) = (mine.clone(), from.clone(), to.clone());
    let outer: tabula::Result<()> = tokio::time::timeout(
        Duration::from_secs(30),
        scoped.with_client(async move |_c| {
            m2.move_file("docs", &f2, &t2).await?;
            Err(Error::Misuse("body gave up after the inner move".into()))
        }),
    )
    .await
    .expect("ends");
    let (at_from, at_to) = (
        objects_named(&kit.url, "docs", &from).await,
        objects_named(&kit.url, "docs", &to).await,
    );
    assert_eq!(
        (at_from, at_to),
        (1, 0),
        "a storage move through the scoped handle inside its own with_client body committed on \
         another connection; the body failed with {outer:?}"
    );
}

/// Control: the same delete through a transaction handle is refused (own_transactions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_delete_through_a_transaction_handle_is_refused() {
    let kit = storage_kit().await;
    let u = uuid::Uuid::new_v4();
    let mine = kit.storage.as_user(u);
    let path = format!("{}/a.txt", uniq("t"));
    mine.upload_file("docs", &path, b"hello".to_vec(), UploadOptions::default())
        .await
        .expect("upload");
    let st = kit.storage.clone();
    let p2 = path.clone();
    let outer: tabula::Result<()> = kit
        .db
        .as_user(u)
        .transaction(move |tx| {
            let (st, p2) = (st.clone(), p2.clone());
            async move {
                st.through(&tx).delete_files("docs", &[p2.as_str()]).await?;
                Err(Error::Misuse("body gave up".into()))
            }
        })
        .await;
    assert!(matches!(&outer, Err(Error::Misuse(_))), "{outer:?}");
    assert_eq!(objects_named(&kit.url, "docs", &path).await, 1, "{outer:?}");
}
