//! CRUD on a real PostgreSQL: create, read, update, delete, batch, upsert, errors.

mod common;

use common::*;
use tabula::{Error, Table};
use uuid::Uuid;

#[tokio::test]
async fn create_returns_the_stored_row_with_generated_columns() {
    let db = db().await;
    let new = new_profile("johndoe");
    let p = db.create(new.clone()).await.expect("create");
    assert_eq!(p.username, "johndoe");
    assert_eq!(p.user_id, new.user_id);
    assert_eq!(
        p.status, "active",
        "database default fills the generated column"
    );
    assert_eq!(p.created_at, p.updated_at);
}

#[tokio::test]
async fn read_finds_a_created_row_and_none_for_a_missing_key() {
    let db = db().await;
    let p = db.create(new_profile("reader")).await.expect("create");
    let found: Option<Profile> = db.read(p.id).await.expect("read");
    assert_eq!(found, Some(p));
    let missing: Option<Profile> = db.read(Uuid::new_v4()).await.expect("read missing");
    assert_eq!(missing, None);
}

#[tokio::test]
async fn update_writes_only_the_set_fields() {
    let db = db().await;
    let p = db
        .create(NewProfile {
            avatar_url: Some("a.jpg".into()),
            ..new_profile("before")
        })
        .await
        .expect("create");
    let patch = ProfilePatch {
        username: Some("after".into()),
        ..Default::default()
    };
    let q = db.update::<Profile>(p.id, patch).await.expect("update");
    assert_eq!(q.username, "after");
    assert_eq!(
        q.avatar_url.as_deref(),
        Some("a.jpg"),
        "unset field left alone"
    );
    assert_eq!(q.user_id, p.user_id);
    assert!(q.updated_at > p.updated_at, "trigger moved updated_at");
    assert_eq!(db.read::<Profile>(p.id).await.expect("read"), Some(q));
}

#[tokio::test]
async fn update_with_some_none_sets_a_nullable_column_to_null() {
    let db = db().await;
    let p = db
        .create(NewProfile {
            avatar_url: Some("a.jpg".into()),
            ..new_profile("nullable")
        })
        .await
        .expect("create");
    let q = db
        .update::<Profile>(
            p.id,
            ProfilePatch {
                avatar_url: Some(None),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(q.avatar_url, None);
}

#[tokio::test]
async fn empty_patch_returns_the_row_unchanged() {
    let db = db().await;
    let p = db.create(new_profile("same")).await.expect("create");
    let q = db
        .update::<Profile>(p.id, ProfilePatch::default())
        .await
        .expect("update");
    assert_eq!(q, p);
}

#[tokio::test]
async fn update_and_delete_of_a_missing_row_are_not_found() {
    let db = db().await;
    let patch = ProfilePatch {
        username: Some("x".into()),
        ..Default::default()
    };
    let err = db
        .update::<Profile>(Uuid::new_v4(), patch)
        .await
        .expect_err("update missing");
    assert!(
        matches!(err, Error::NotFound { table: "profiles" }),
        "got {err:?}"
    );
    let err = db
        .update::<Profile>(Uuid::new_v4(), ProfilePatch::default())
        .await
        .expect_err("empty patch missing");
    assert!(
        matches!(err, Error::NotFound { table: "profiles" }),
        "got {err:?}"
    );
    let err = db
        .delete::<Profile>(Uuid::new_v4())
        .await
        .expect_err("delete missing");
    assert!(
        matches!(err, Error::NotFound { table: "profiles" }),
        "got {err:?}"
    );
}

#[tokio::test]
async fn delete_removes_the_row() {
    let db = db().await;
    let p = db.create(new_profile("doomed")).await.expect("create");
    db.delete::<Profile>(p.id).await.expect("delete");
    assert_eq!(db.read::<Profile>(p.id).await.expect("read"), None);
}

#[tokio::test]
async fn duplicate_key_is_a_unique_violation_naming_the_constraint() {
    let db = db().await;
    db.create(new_profile("taken")).await.expect("first");
    let err = db
        .create(new_profile("taken"))
        .await
        .expect_err("duplicate");
    match err {
        Error::UniqueViolation { table, constraint } => {
            assert_eq!(table, "profiles");
            assert_eq!(constraint, "profiles_username_key");
        }
        other => panic!("expected UniqueViolation, got {other:?}"),
    }
}

#[tokio::test]
async fn create_many_inserts_every_row_in_order_in_one_statement() {
    let db = db().await;
    let rows: Vec<NewProfile> = (0..2_500)
        .map(|i| new_profile(&format!("user{i:05}")))
        .collect();
    let created = db.create_many(rows.clone()).await.expect("create_many");
    assert_eq!(created.len(), rows.len());
    for (new, stored) in rows.iter().zip(&created) {
        assert_eq!(new.username, stored.username, "returned in input order");
        assert_eq!(new.user_id, stored.user_id);
    }
    let last = created.last().map(|p| p.id).expect("rows");
    assert!(db.read::<Profile>(last).await.expect("read").is_some());
}

#[tokio::test]
async fn create_many_of_nothing_is_a_no_op() {
    let db = db().await;
    let created = db
        .create_many(Vec::<NewProfile>::new())
        .await
        .expect("empty batch");
    assert!(created.is_empty());
}

#[tokio::test]
async fn create_many_is_all_or_nothing() {
    let db = db().await;
    let mut rows: Vec<NewProfile> = (0..100)
        .map(|i| new_profile(&format!("batch{i}")))
        .collect();
    rows.push(new_profile("batch5")); // collides with an earlier row of the same batch
    let err = db
        .create_many(rows)
        .await
        .expect_err("duplicate inside batch");
    assert!(matches!(err, Error::UniqueViolation { .. }), "got {err:?}");
    assert_eq!(
        count_profiles(&db).await,
        0,
        "no row of the failed batch was kept"
    );
}

#[tokio::test]
async fn create_many_over_one_chunk_is_still_atomic() {
    let db = db().await;
    let mut rows: Vec<NewProfile> = (0..20_050)
        .map(|i| new_profile(&format!("big{i}")))
        .collect();
    rows.push(new_profile("big20049")); // fails in the second chunk
    let err = db
        .create_many(rows)
        .await
        .expect_err("duplicate in second chunk");
    assert!(matches!(err, Error::UniqueViolation { .. }), "got {err:?}");
    assert_eq!(
        count_profiles(&db).await,
        0,
        "the first chunk was rolled back too"
    );
}

#[tokio::test]
async fn upsert_inserts_then_updates_on_conflict() {
    let db = db().await;
    let first = db
        .upsert(new_profile("upserted"), Profile::USERNAME)
        .await
        .expect("insert");
    let again = NewProfile {
        avatar_url: Some("new.jpg".into()),
        ..new_profile("upserted")
    };
    let second = db
        .upsert(again.clone(), Profile::USERNAME)
        .await
        .expect("update");
    assert_eq!(second.id, first.id, "same row");
    assert_eq!(second.avatar_url.as_deref(), Some("new.jpg"));
    assert_eq!(second.user_id, again.user_id);
}

#[tokio::test]
async fn json_columns_round_trip_as_value_and_as_serde_type() {
    let db = db().await;
    let user = Uuid::new_v4();
    let e = db
        .create(NewExperience {
            user_id: user,
            content: "climbed".into(),
            metadata: serde_json::json!({"peak": "K2", "meters": 8611}),
        })
        .await
        .expect("experience");
    assert_eq!(e.metadata["meters"], 8611);
    let meta = DocumentMeta {
        tags: vec!["a".into(), "b\"c".into()],
        pages: 3,
    };
    let d = db
        .create(NewDocument {
            user_id: user,
            name: "doc".into(),
            content: "text".into(),
            metadata: meta.clone(),
        })
        .await
        .expect("document");
    assert_eq!(d.metadata, meta);
    assert_eq!(
        db.read::<Document>(d.id)
            .await
            .expect("read")
            .map(|d| d.metadata),
        Some(meta)
    );
}

#[tokio::test]
async fn values_are_bound_never_spliced_into_sql() {
    let db = db().await;
    let nasty = "x'); DROP TABLE profiles; --";
    let p = db.create(new_profile(nasty)).await.expect("create");
    assert_eq!(p.username, nasty);
    assert!(
        db.read::<Profile>(p.id)
            .await
            .expect("table still there")
            .is_some()
    );
}

#[tokio::test]
async fn text_postgres_cannot_store_is_a_validation_error_and_writes_nothing() {
    let db = db().await;
    let err = db
        .create(new_profile("nul\0byte"))
        .await
        .expect_err("NUL in text");
    assert!(matches!(err, Error::Validation(_)), "got {err:?}");
    assert_eq!(count_profiles(&db).await, 0);
}

#[tokio::test]
async fn a_schema_change_does_not_break_cached_statements() {
    let (_, url) = db_and_url().await;
    let db = tabula::Db::connect_with(tabula::DbConfig::new(url).pool_size(1))
        .await
        .expect("db");
    let p = db
        .create(new_profile("before-migration"))
        .await
        .expect("create");
    assert!(db.read::<Profile>(p.id).await.expect("read").is_some()); // statement cached
    // A migration changes the column's type under the cached plan.
    db.execute_batch("ALTER TABLE profiles ALTER COLUMN avatar_url TYPE varchar(500)")
        .await
        .expect("alter");
    let again = db
        .read::<Profile>(p.id)
        .await
        .expect("read after the schema change");
    assert_eq!(again.map(|r| r.id), Some(p.id));
}

#[tokio::test]
async fn insert_many_copies_every_row_and_counts_them() {
    let db = db().await;
    let rows: Vec<NewProfile> = (0..2500)
        .map(|i| NewProfile {
            avatar_url: (i % 3 == 0).then(|| format!("a{i}.png")),
            ..new_profile(&format!("copy{i:04}"))
        })
        .collect();
    assert_eq!(db.insert_many(rows.clone()).await.expect("copy"), 2500);
    let stored = db
        .query::<Profile>()
        .order_by(Profile::USERNAME.asc())
        .all()
        .await
        .expect("read back");
    assert_eq!(stored.len(), 2500);
    for (new, got) in rows.iter().zip(&stored) {
        assert_eq!(
            (&got.username, &got.user_id, &got.avatar_url),
            (&new.username, &new.user_id, &new.avatar_url)
        );
        assert_eq!(got.status, "active", "defaults fill the columns not copied");
    }
    assert_eq!(
        db.insert_many(Vec::<NewProfile>::new())
            .await
            .expect("empty"),
        0
    );
}

#[tokio::test]
async fn insert_many_is_all_or_nothing_and_follows_transactions() {
    let db = db().await;
    db.create(new_profile("taken")).await.expect("seed");
    // A duplicate in the middle: nothing of the batch is inserted.
    let mut rows: Vec<NewProfile> = (0..100).map(|i| new_profile(&format!("b{i}"))).collect();
    rows.insert(50, new_profile("taken"));
    let err = db.insert_many(rows).await.expect_err("duplicate");
    assert!(matches!(err, Error::UniqueViolation { .. }), "{err:?}");
    // A value PostgreSQL cannot store (NUL in text): refused, nothing inserted.
    let err = db
        .insert_many(vec![new_profile("fine"), new_profile("nul\0byte")])
        .await
        .expect_err("NUL");
    assert!(!matches!(err, Error::UniqueViolation { .. }), "{err:?}");
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 1);
    // Inside a transaction: rolled back with it, committed with it.
    let rolled: tabula::Result<()> = db
        .transaction(|tx| async move {
            tx.insert_many(vec![new_profile("r1"), new_profile("r2")])
                .await?;
            assert_eq!(tx.query::<Profile>().count().await?, 3, "seen inside");
            Err(Error::Validation("roll back".into()))
        })
        .await;
    assert!(rolled.is_err());
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 1);
    db.transaction(|tx| async move {
        tx.insert_many(vec![new_profile("c1")]).await?;
        tx.create(new_profile("c2")).await?;
        Ok(())
    })
    .await
    .expect("commit");
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 3);
    // The connection is fine afterwards.
    assert_eq!(
        db.insert_many(vec![new_profile("after")])
            .await
            .expect("again"),
        1
    );
}

/// A model whose every column is generated: one INSERT a row, so several rows are all
/// or nothing only inside a transaction — which `create_many` and `insert_many` open.
#[derive(tabula::Table, Debug, Clone)]
#[table(name = "only_generated")]
struct OnlyGenerated {
    #[table(primary_key, generated)]
    id: i64,
}

#[tokio::test]
async fn batches_of_a_model_with_only_generated_columns_are_all_or_nothing() {
    let db = db().await;
    db.execute_batch(
        "CREATE TABLE only_generated (id int8 GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY CHECK (id <= 2))",
    )
    .await
    .expect("table");
    let err = db
        .insert_many(vec![NewOnlyGenerated {}; 4])
        .await
        .expect_err("the third row breaks the check");
    assert!(matches!(err, Error::CheckViolation { .. }), "{err:?}");
    let err = db
        .create_many(vec![NewOnlyGenerated {}; 4])
        .await
        .expect_err("the check again");
    assert!(matches!(err, Error::CheckViolation { .. }), "{err:?}");
    let rows = db.query::<OnlyGenerated>().all().await.expect("rows");
    assert!(rows.is_empty(), "rows kept from a failed batch: {rows:?}");
}

/// `New` and `Patch` straight from request bodies, and `update` with the model inferred
/// from the patch.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(
    name = "bodies",
    derive_new(serde::Deserialize),
    derive_patch(serde::Deserialize, serde::Serialize)
)]
struct Body {
    #[table(primary_key, generated)]
    id: i64,
    name: String,
    bio: Option<String>,
    #[table(json)]
    tags: Vec<String>,
    settings: serde_json::Value,
    #[table(generated)]
    status: String,
}

#[tokio::test]
async fn new_rows_and_patches_deserialize_from_request_bodies() {
    let db = common::db().await;
    db.execute_batch(
        "CREATE TABLE bodies (id bigserial PRIMARY KEY, name text NOT NULL, bio text, tags jsonb NOT NULL,
                              settings jsonb NOT NULL DEFAULT '{}', status text NOT NULL DEFAULT 'new')",
    )
    .await
    .expect("table");
    let new: NewBody =
        serde_json::from_str(r#"{"name": "ada", "bio": "math", "tags": ["x"], "settings": {}}"#)
            .expect("new row from JSON");
    let row = db.create(new).await.expect("create");

    // Missing fields are left alone; no turbofish on update.
    let patch: BodyPatch = serde_json::from_str(r#"{"name": "ada l."}"#).expect("patch");
    let row = db.update(row.id, patch).await.expect("update");
    assert_eq!(
        (row.name.as_str(), row.bio.as_deref(), row.tags.len()),
        ("ada l.", Some("math"), 1)
    );
    // An explicit null on a nullable column sets NULL; an empty body changes nothing.
    let patch: BodyPatch = serde_json::from_str(r#"{"bio": null}"#).expect("patch");
    assert_eq!(patch.bio, Some(None));
    let row = db.update(row.id, patch).await.expect("set NULL");
    assert_eq!(row.bio, None);
    let empty: BodyPatch = serde_json::from_str("{}").expect("empty patch");
    assert_eq!(db.update(row.id, empty).await.expect("no-op"), row);
    // A null for a column that cannot be NULL, or a wrong type, is a serde error.
    assert!(serde_json::from_str::<BodyPatch>(r#"{"name": null}"#).is_err());
    assert!(serde_json::from_str::<BodyPatch>(r#"{"name": 5}"#).is_err());
    // A JSON column that cannot be NULL refuses `null` too (JSON null is a value).
    assert!(serde_json::from_str::<BodyPatch>(r#"{"settings": null}"#).is_err());
    // A column the database fills is not taken from a body.
    let sneaky: BodyPatch = serde_json::from_str(r#"{"status": "admin"}"#).expect("ignored");
    assert_eq!(sneaky.status, None);
    // Serialized, a patch reads back as itself: unset fields are left out.
    let patch = BodyPatch::default().name("b");
    let text = serde_json::to_string(&patch).expect("serialize");
    assert_eq!(text, r#"{"name":"b"}"#);
    let back: BodyPatch = serde_json::from_str(&text).expect("back");
    assert_eq!((back.name, back.bio), (Some("b".to_owned()), None));
    let cleared = BodyPatch::default().bio(None);
    let text = serde_json::to_string(&cleared).expect("serialize");
    assert_eq!(text, r#"{"bio":null}"#);
    let back: BodyPatch = serde_json::from_str(&text).expect("back");
    assert_eq!(back.bio, Some(None));
    // The key is no field of a patch: serde ignores it, as any unknown field.
    let keyed: BodyPatch = serde_json::from_str(r#"{"id": 5}"#).expect("ignored");
    assert!(keyed.name.is_none() && keyed.bio.is_none() && keyed.tags.is_none());
}
