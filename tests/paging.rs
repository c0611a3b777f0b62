//! Keyset and offset pagination, streaming, bulk writes, soft delete, JSON filters.

mod common;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tabula::{Db, Error, Table, Total};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "items")]
struct Item {
    #[table(primary_key, generated)]
    id: i64,
    score: Option<i32>,
    name: String,
    tags: serde_json::Value,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "notes")]
struct Note {
    #[table(primary_key, generated)]
    id: i64,
    body: String,
    #[table(soft_delete)]
    deleted_at: Option<DateTime<Utc>>,
}

const SCHEMA: &str = "
    CREATE TABLE items (id bigserial PRIMARY KEY, score int4, name text NOT NULL, tags jsonb NOT NULL DEFAULT '[]');
    CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL UNIQUE, deleted_at timestamptz);
";

async fn db_with_items(n: usize) -> Db {
    let db = common::db().await;
    db.execute_batch(SCHEMA).await.expect("schema");
    let rows = (0..n)
        .map(|i| NewItem {
            // Many ties and some NULLs, so the tie-breakers matter.
            score: (i % 7 != 0).then_some((i % 13) as i32),
            name: format!("item{:04}", (i * 7919) % n.max(1)),
            tags: serde_json::json!([format!("t{}", i % 3)]),
        })
        .collect();
    db.create_many(rows).await.expect("seed");
    db
}

#[tokio::test]
async fn keyset_walk_sees_every_original_row_once_while_rows_are_inserted() {
    let db = db_with_items(3000).await;
    let original: HashSet<i64> = db
        .query::<Item>()
        .select(Item::ID)
        .all()
        .await
        .expect("ids")
        .into_iter()
        .collect();
    let mut seen = HashSet::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = db
            .query::<Item>()
            .order_by(Item::SCORE.desc().nulls_last())
            .order_by(Item::NAME.asc())
            .page(97, cursor.as_ref())
            .await
            .expect("page");
        for item in &page.items {
            assert!(
                seen.insert(item.id),
                "row {} repeated on page {pages}",
                item.id
            );
        }
        // Concurrent writers: rows land before and after the current position.
        db.create(NewItem {
            score: Some(100),
            name: format!("new-top-{pages}"),
            tags: serde_json::json!([]),
        })
        .await
        .expect("insert");
        db.create(NewItem {
            score: None,
            name: format!("new-bottom-{pages}"),
            tags: serde_json::json!([]),
        })
        .await
        .expect("insert");
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 200, "pagination does not end");
    }
    let missing: Vec<_> = original.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} original rows skipped, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test]
async fn keyset_pages_go_backwards_to_the_same_rows() {
    let db = db_with_items(250).await;
    let q = || {
        db.query::<Item>()
            .order_by(Item::SCORE.asc())
            .order_by(Item::NAME.desc())
    };
    let first = q().page(40, None).await.expect("first");
    let second = q().page(40, first.next.as_ref()).await.expect("second");
    assert!(first.prev.is_none() && second.prev.is_some());
    let back = q()
        .page_before(40, second.prev.as_ref().expect("prev"))
        .await
        .expect("back");
    assert_eq!(
        back.items, first.items,
        "the page before the second is the first"
    );
    assert!(back.prev.is_none(), "nothing precedes the first page");
    let all = q().all().await.expect("all");
    assert_eq!([first.items, second.items].concat(), all[..80].to_vec());
}

#[tokio::test]
async fn a_cursor_from_another_order_or_a_forged_one_is_refused() {
    let db = db_with_items(50).await;
    let page = db
        .query::<Item>()
        .order_by(Item::NAME.asc())
        .page(10, None)
        .await
        .expect("page");
    let cursor = page.next.expect("more pages");
    let err = db
        .query::<Item>()
        .order_by(Item::SCORE.asc())
        .page(10, Some(&cursor))
        .await
        .expect_err("other order");
    assert!(matches!(err, Error::Validation(_)), "got {err:?}");
    for forged in ["zz", "7b", "", "'; DROP TABLE items; --"] {
        let err = db
            .query::<Item>()
            .order_by(Item::NAME.asc())
            .page(10, Some(&tabula::Cursor::new(forged)))
            .await
            .expect_err("forged");
        assert!(matches!(err, Error::Validation(_)), "{forged}: got {err:?}");
    }
}

#[tokio::test]
async fn offset_pages_report_exact_estimated_or_no_total() {
    let db = db_with_items(500).await;
    db.execute_batch("ANALYZE items").await.expect("analyze");
    let q = || {
        db.query::<Item>()
            .filter(Item::SCORE.is_not_null())
            .order_by(Item::ID.asc())
    };
    let exact = q().page_offset(20, 40, Total::Exact).await.expect("exact");
    let matching = q().count().await.expect("count");
    assert_eq!(exact.items.len(), 20);
    assert_eq!(exact.total, Some(matching));
    let estimate = q()
        .page_offset(20, 40, Total::Estimate)
        .await
        .expect("estimate")
        .total
        .expect("total");
    assert!(
        (estimate - matching).abs() <= matching / 5,
        "estimate {estimate} vs exact {matching}"
    );
    assert_eq!(
        q().page_offset(20, 40, Total::None)
            .await
            .expect("none")
            .total,
        None
    );
}

#[tokio::test]
async fn stream_yields_every_row_in_order() {
    let db = db_with_items(2000).await;
    let mut stream = db
        .query::<Item>()
        .order_by(Item::ID.asc())
        .stream()
        .await
        .expect("stream");
    let mut last = 0;
    let mut n = 0;
    while let Some(item) = stream.next().await {
        let item = item.expect("row");
        assert!(item.id > last);
        last = item.id;
        n += 1;
    }
    assert_eq!(n, 2000);
    // A stream dropped half-way does not poison the pool.
    let mut partial = db.query::<Item>().stream().await.expect("stream");
    let _ = partial.next().await;
    drop(partial);
    assert_eq!(
        db.query::<Item>().count().await.expect("count after drop"),
        2000
    );
}

#[tokio::test]
async fn update_where_and_delete_where_report_counts_and_need_a_filter() {
    let db = db_with_items(100).await;
    let changed = db
        .update_where(
            Item::SCORE.is_null(),
            ItemPatch {
                name: Some("was-null".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update_where");
    assert_eq!(changed, 15, "i % 7 == 0 for 15 of 0..100");
    assert_eq!(
        db.query::<Item>()
            .filter(Item::NAME.eq("was-null"))
            .count()
            .await
            .expect("count"),
        15
    );
    let err = db
        .update_where(Item::ID.gt(0), ItemPatch::default())
        .await
        .expect_err("empty patch");
    assert!(matches!(err, Error::Validation(_)));
    let deleted = db
        .delete_where(Item::NAME.eq("was-null"))
        .await
        .expect("delete_where");
    assert_eq!(deleted, 15);
    assert_eq!(db.query::<Item>().count().await.expect("count"), 85);
    assert_eq!(db.delete_all::<Item>().await.expect("delete_all"), 85);
}

#[tokio::test]
async fn json_containment_filter() {
    let db = db_with_items(30).await;
    let n = db
        .query::<Item>()
        .filter(Item::TAGS.contains(serde_json::json!(["t1"])))
        .count()
        .await
        .expect("contains");
    assert_eq!(n, 10);
}

#[tokio::test]
async fn soft_delete_hides_rows_until_restored_and_hard_delete_removes_them() {
    let db = common::db().await;
    db.execute_batch(SCHEMA).await.expect("schema");
    let a = db.create(NewNote { body: "a".into() }).await.expect("a");
    let b = db.create(NewNote { body: "b".into() }).await.expect("b");
    db.delete::<Note>(a.id).await.expect("soft delete");
    assert_eq!(
        db.read::<Note>(a.id).await.expect("read"),
        None,
        "read skips deleted rows"
    );
    assert_eq!(db.query::<Note>().count().await.expect("count"), 1);
    assert_eq!(
        db.query::<Note>()
            .with_deleted()
            .count()
            .await
            .expect("count"),
        2
    );
    let err = db.delete::<Note>(a.id).await.expect_err("twice");
    assert!(matches!(err, Error::NotFound { .. }));
    let err = db
        .update::<Note>(
            a.id,
            NotePatch {
                body: Some("x".into()),
            },
        )
        .await
        .expect_err("update deleted");
    assert!(matches!(err, Error::NotFound { .. }));

    let restored = db.restore::<Note>(a.id).await.expect("restore");
    assert_eq!(restored.deleted_at, None);
    assert!(db.read::<Note>(a.id).await.expect("read").is_some());

    // Bulk delete marks; an upsert onto a deleted row revives it.
    assert_eq!(
        db.delete_where(Note::BODY.eq("b"))
            .await
            .expect("delete_where"),
        1
    );
    assert_eq!(db.read::<Note>(b.id).await.expect("read"), None);
    let revived = db
        .upsert(NewNote { body: "b".into() }, Note::BODY)
        .await
        .expect("upsert");
    assert_eq!((revived.id, revived.deleted_at), (b.id, None));

    db.hard_delete::<Note>(a.id).await.expect("hard delete");
    assert_eq!(
        db.query::<Note>()
            .with_deleted()
            .count()
            .await
            .expect("count"),
        1
    );
    let err = db.restore::<Note>(a.id).await.expect_err("gone for good");
    assert!(matches!(err, Error::NotFound { .. }));
}
