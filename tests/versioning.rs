//! Optimistic locking: a `#[table(version)]` column is compared on update when the
//! patch names the version it read, and incremented by every update.

mod common;

use std::sync::Arc;

use tabula::{Db, Error, Table};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "documents_v")]
struct Doc {
    #[table(primary_key, generated)]
    id: i64,
    title: String,
    #[table(version)]
    version: i64,
}

async fn db() -> Db {
    let db = common::db().await;
    db.execute_batch(
        "CREATE TABLE documents_v (id bigserial PRIMARY KEY, title text NOT NULL UNIQUE, version bigint NOT NULL)",
    )
    .await
    .expect("table");
    db
}

fn retitle(title: &str, expected: Option<i64>) -> DocPatch {
    DocPatch {
        title: Some(title.into()),
        version: expected,
    }
}

#[tokio::test]
async fn an_update_from_a_stale_read_is_refused_and_writes_nothing() {
    let db = db().await;
    let doc = db
        .create(NewDoc {
            title: "draft".into(),
            version: 1,
        })
        .await
        .expect("create");
    let saved = db
        .update::<Doc>(doc.id, retitle("first", Some(1)))
        .await
        .expect("the version read");
    assert_eq!((saved.title.as_str(), saved.version), ("first", 2));

    let stale = db.update::<Doc>(doc.id, retitle("lost", Some(1))).await;
    assert!(
        matches!(
            stale,
            Err(Error::StaleVersion {
                expected: 1,
                found: 2,
                ..
            })
        ),
        "{stale:?}"
    );
    let now = db.read::<Doc>(doc.id).await.expect("read").expect("row");
    assert_eq!(
        (now.title.as_str(), now.version),
        ("first", 2),
        "a refused update wrote"
    );

    // Without an expected version an update still moves it on.
    let blind = db
        .update::<Doc>(doc.id, retitle("blind", None))
        .await
        .expect("blind");
    assert_eq!(blind.version, 3);
    // A version alone in the patch: a checked "touch".
    let touched = db
        .update::<Doc>(
            doc.id,
            DocPatch {
                version: Some(3),
                ..Default::default()
            },
        )
        .await
        .expect("touch");
    assert_eq!(touched.version, 4);
    // Bulk updates compare a version the patch names, and move every row's on.
    let stale = db
        .update_where(Doc::ID.eq(doc.id), retitle("stale bulk", Some(999)))
        .await
        .expect("bulk");
    assert_eq!(stale, 0, "a bulk update at another version wrote");
    db.update_where(Doc::ID.eq(doc.id), retitle("bulk", Some(4)))
        .await
        .expect("bulk");
    let bulk = db.read::<Doc>(doc.id).await.expect("read").expect("row");
    assert_eq!((bulk.title.as_str(), bulk.version), ("bulk", 5));
    // An upsert onto the row moves its version on too, never back to the one inserted.
    let upserted = db
        .upsert(
            NewDoc {
                title: "bulk".into(),
                version: 1,
            },
            Doc::TITLE,
        )
        .await
        .expect("upsert");
    assert_eq!(upserted.version, 6, "an upsert rewound the version");
    // A missing row is not a stale one.
    assert!(matches!(
        db.update::<Doc>(doc.id + 1000, retitle("x", Some(1))).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_from_one_read_exactly_one_wins() {
    let db = db().await;
    let doc = db
        .create(NewDoc {
            title: "shared".into(),
            version: 7,
        })
        .await
        .expect("create");
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (db, barrier) = (db.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                db.update::<Doc>(doc.id, retitle(&format!("writer {w}"), Some(7)))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for writer in writers {
        match writer.await.expect("writer") {
            Ok(doc) => {
                won += 1;
                assert_eq!(doc.version, 8);
            }
            Err(Error::StaleVersion { found: 8, .. }) => {}
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    assert_eq!(won, 1, "lost updates");
}

#[tokio::test]
async fn a_patch_builds_without_nested_options() {
    let db = common::db().await;
    let p = db
        .create(common::new_profile("builder"))
        .await
        .expect("create");
    let patch = common::ProfilePatch::default()
        .username("built")
        .avatar_url("https://example.com/a.png".to_string());
    let updated = db
        .update::<common::Profile>(p.id, patch)
        .await
        .expect("update");
    assert_eq!(updated.username, "built");
    assert_eq!(
        updated.avatar_url.as_deref(),
        Some("https://example.com/a.png")
    );
    let cleared = db
        .update::<common::Profile>(p.id, common::ProfilePatch::default().avatar_url(None))
        .await
        .expect("clear");
    assert_eq!(cleared.avatar_url, None, "a nullable column set to NULL");
    assert_eq!(cleared.username, "built", "an unset field is left alone");
}
