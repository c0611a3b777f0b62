//! Every public async fn of the crate returns a `Send` future when its inputs are
//! `Send`, so it can be spawned on a multi-threaded runtime or awaited in an axum
//! handler.
//!
//! The check is at compile time: [`every_public_future_is_send`] builds each future
//! and hands it to `assert_send`, which only type-checks; nothing is awaited or run. A
//! future that is not `Send` makes this file fail to compile, naming the call.

mod common;

use common::*;
use tabula::cache::CacheService;
use tabula::query::{QuerySpec, SpecLimits};
use tabula::storage::{BucketOptions, ListOptions, StorageService, UploadOptions};
use tabula::{Db, Table, Total};

fn assert_send<T: Send>(_: T) {}

/// A model with a unique column, for the generated `by_<field>` finder and
/// `find_unique`.
#[derive(Table, Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[table(name = "send_notes", cache(ttl = 60))]
pub struct SendNote {
    #[table(primary_key, generated)]
    pub id: i64,
    #[table(unique)]
    pub slug: String,
    pub score: Option<i32>,
}

/// A child of `SendNote`, for relations, joins and loaders.
#[derive(Table, Debug, Clone)]
#[table(name = "send_replies")]
pub struct SendReply {
    #[table(primary_key, generated)]
    pub id: i64,
    #[table(belongs_to = SendNote)]
    pub note_id: i64,
}

#[tabula::cached(ttl = 5)]
async fn memoized(n: i64) -> tabula::Result<i64> {
    Ok(n)
}

/// Builds every public future once, without awaiting any. Never called: compiling it
/// is the test.
#[allow(clippy::too_many_lines)]
fn every_public_future(
    db: &Db,
    cache: &CacheService,
    storage: &StorageService,
    spec: &QuerySpec,
    limits: &SpecLimits,
    cursor: &tabula::Cursor,
) {
    let id = uuid::Uuid::nil();
    // Connecting.
    assert_send(Db::connect("postgres://"));
    assert_send(Db::connect_from_env());
    assert_send(Db::connect_with(tabula::DbConfig::new("postgres://")));
    assert_send(tabula::testkit::database(&MIGRATIONS));
    assert_send(MIGRATIONS.run(db));

    // Tags.
    assert_send(db.invalidate_tag("t"));
    assert_send(cache.invalidate_tag("t"));
    assert_send(db.query::<SendNote>().cached(5).stale(5).tag("t").count());

    // Cached shapes.
    let cached = || db.query::<SendNote>().cached(5);
    assert_send(cached().all());
    assert_send(cached().first());
    assert_send(cached().one());
    assert_send(cached().count());
    assert_send(cached().exists());
    assert_send(cached().page(10, Some(cursor)));

    // Joins and loaders.
    let joined = || db.query::<SendNote>().left_join::<SendReply>();
    assert_send(joined().all());
    assert_send(joined().first());
    assert_send(joined().count());
    assert_send(joined().select((SendNote::ID, SendReply::ID)).all());
    assert_send(
        db.query::<SendNote>()
            .load(tabula::query::children::<SendReply>()),
    );
    assert_send(db.query::<SendNote>().load((
        tabula::query::children::<SendReply>().with(tabula::query::parent::<SendNote>()),
        tabula::query::children::<SendReply>(),
    )));

    // CRUD.
    assert_send(db.create(new_profile("a")));
    assert_send(db.create_many(vec![new_profile("a")]));
    assert_send(db.insert_many(vec![new_profile("a")]));
    assert_send(db.read::<Profile>(id));
    assert_send(db.read_uncached::<Profile>(id));
    assert_send(db.read_many::<Profile>(&[id]));
    assert_send(db.warm::<Profile>(&[id]));
    assert_send(db.update::<Profile>(id, ProfilePatch::default()));
    assert_send(db.delete::<Profile>(id));
    assert_send(db.hard_delete::<Profile>(id));
    assert_send(db.restore::<Profile>(id));
    assert_send(db.upsert(new_profile("a"), Profile::USERNAME));
    assert_send(db.transaction(|tx| async move { tx.query::<Profile>().count().await }));
    assert_send(
        db.transaction_with(tabula::Isolation::Serializable, |tx| async move {
            tx.query::<Profile>().page(10, None).await.map(|p| p.items)
        }),
    );
    assert_send(db.with_client(async |c| Ok(c.execute("SELECT 1", &[]).await?)));
    assert_send(db.execute_batch("SELECT 1"));
    assert_send(db.invalidate::<Profile>(&[]));
    assert_send(db.invalidate_table::<Profile>());
    assert_send(db.find_unique(SendNote::SLUG, "a".to_owned()));
    assert_send(SendNote::by_slug(db, "a"));

    // Bulk writes.
    assert_send(db.update_where(Profile::USERNAME.eq("a"), ProfilePatch::default()));
    assert_send(db.update_all::<Profile>(ProfilePatch::default()));
    assert_send(db.delete_where(Profile::USERNAME.eq("a")));
    assert_send(db.delete_all::<Profile>());

    // Queries.
    let q = || {
        db.query::<Profile>()
            .filter(
                Profile::USERNAME
                    .is_in(["a", "b"])
                    .or(Profile::AVATAR_URL.is_null()),
            )
            .order_by(Profile::CREATED_AT.desc())
    };
    assert_send(q().all());
    assert_send(q().first());
    assert_send(q().one());
    assert_send(q().count());
    assert_send(q().count_estimate());
    assert_send(q().exists());
    assert_send(q().page(10, None));
    assert_send(q().page(10, Some(cursor)));
    assert_send(q().page_before(10, cursor));
    assert_send(q().page_offset(10, 0, Total::Exact));
    assert_send(q().stream());
    assert_send(q().cached(60).all());
    assert_send(q().select((Profile::ID, Profile::USERNAME)).all());
    assert_send(q().select(Profile::ID).page(10, None));
    assert_send(q().select(Profile::ID).cached(60).all());
    assert_send(db.query_spec::<Profile>(spec, limits));

    // The cache service.
    assert_send(cache.set("k", &1, Some(1)));
    assert_send(cache.get::<i64>("k"));
    assert_send(cache.delete("k"));
    assert_send(cache.exists("k"));
    assert_send(cache.expire("k", 1));
    assert_send(cache.incr("k", 1));
    assert_send(cache.list_push("k", &1));
    assert_send(cache.list_pop::<i64>("k"));
    assert_send(cache.list_range::<i64>("k", 0, -1));
    assert_send(cache.list_len("k"));
    assert_send(cache.set_add("k", &[1]));
    assert_send(cache.set_remove("k", &[1]));
    assert_send(cache.set_members::<i64>("k"));
    assert_send(cache.set_is_member("k", &1));
    assert_send(cache.hash_set("k", "f", &1));
    assert_send(cache.hash_get::<i64>("k", "f"));
    assert_send(cache.hash_get_all::<i64>("k"));
    assert_send(cache.hash_delete("k", "f"));
    assert_send(cache.invalidate_pattern("k*"));

    // Memoized functions (`#[cached]`).
    assert_send(memoized(1));
    assert_send(memoized_invalidate(1));
    assert_send(memoized_clear());

    // Storage.
    assert_send(storage.create_bucket("b", BucketOptions::default()));
    assert_send(storage.object("b", "p"));
    assert_send(storage.upload_file("b", "p", vec![1u8], UploadOptions::default()));
    assert_send(storage.upload_stream(
        "b",
        "p",
        futures_util::stream::empty::<std::io::Result<bytes::Bytes>>(),
        UploadOptions::default(),
    ));
    assert_send(storage.download_file("b", "p"));
    assert_send(storage.download("b", "p"));
    assert_send(storage.create_signed_url("b", "p", 60));
    assert_send(storage.create_signed_upload_url("b", "p", 60));
    assert_send(storage.list_files("b", "", ListOptions::default()));
    assert_send(storage.delete_files("b", &["p"]));
    assert_send(storage.move_file("b", "p", "q"));
    assert_send(storage.copy_file("b", "p", "q"));
}

#[test]
fn every_public_future_is_send() {
    // Referencing the function makes the compiler check it; compiling is the test.
    let _check: fn(&Db, &CacheService, &StorageService, &QuerySpec, &SpecLimits, &tabula::Cursor) =
        every_public_future;
}
