//! Storage under Row Level Security, as Supabase Storage does it: two users with a
//! private and a public bucket. Each reads, signs, moves and deletes only their own
//! objects; anyone reads a public bucket's; nobody's bytes are lost to a refused write.

mod common;

use tabula::storage::{BucketOptions, StorageService, UploadOptions};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Error};
use uuid::Uuid;

const KEY: &[u8] = b"a signing key of at least thirty-two bytes";

struct Kit {
    storage: StorageService,
    root: std::path::PathBuf,
    db: Db,
}

impl Drop for Kit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn kit() -> Kit {
    let (_, url) = common::db_and_url().await;
    let cache = CacheService::in_memory(CacheConfig::default()).expect("cache");
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    let root = std::env::temp_dir().join(format!("tabula-store-rls-{}", Uuid::new_v4()));
    let storage =
        StorageService::local(db.clone(), &root, KEY, "http://files.invalid").expect("storage");
    for (name, public) in [("private", false), ("public", true)] {
        storage
            .create_bucket(
                name,
                BucketOptions {
                    public,
                    ..Default::default()
                },
            )
            .await
            .expect("bucket");
    }
    Kit { storage, root, db }
}

fn options() -> UploadOptions {
    UploadOptions {
        content_type: "text/plain".into(),
        ..Default::default()
    }
}

fn denied(result: tabula::Result<impl std::fmt::Debug>, what: &str) {
    match result {
        Err(Error::NotFound { .. } | Error::PermissionDenied { .. } | Error::AlreadyExists(_)) => {}
        Err(Error::Database { sqlstate, .. }) if sqlstate == "42501" => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn each_user_reaches_only_their_own_objects_and_public_ones() {
    let kit = kit().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (as_alice, as_bob) = (kit.storage.as_user(alice), kit.storage.as_user(bob));

    as_alice
        .upload_file("private", "alice/notes.txt", b"alice's".to_vec(), options())
        .await
        .expect("alice uploads her own");
    as_alice
        .upload_file("public", "alice/hello.txt", b"hello".to_vec(), options())
        .await
        .expect("alice uploads a public one");
    let own = as_alice
        .object("private", "alice/notes.txt")
        .await
        .expect("own");
    assert_eq!(own.owner, Some(alice), "an upload is owned by its user");

    // Alice reads her own; Bob cannot read, sign, list, copy, move, delete or
    // overwrite it.
    assert_eq!(
        as_alice
            .download_file("private", "alice/notes.txt")
            .await
            .expect("download")
            .as_ref(),
        b"alice's"
    );
    denied(
        as_bob.download_file("private", "alice/notes.txt").await,
        "bob downloads",
    );
    denied(
        as_bob
            .create_signed_url("private", "alice/notes.txt", 60)
            .await,
        "bob signs a URL for it",
    );
    assert!(
        as_bob
            .list_files("private", "", Default::default())
            .await
            .expect("list")
            .is_empty(),
        "bob lists alice's files"
    );
    denied(
        as_bob
            .copy_file("private", "alice/notes.txt", "bob/stolen.txt")
            .await,
        "bob copies it",
    );
    denied(
        as_bob
            .move_file("private", "alice/notes.txt", "bob/moved.txt")
            .await,
        "bob moves it",
    );
    assert_eq!(
        as_bob
            .delete_files("private", &["alice/notes.txt"])
            .await
            .expect("delete"),
        0
    );
    let overwrite = UploadOptions {
        upsert: true,
        ..options()
    };
    denied(
        as_bob
            .upload_file("private", "alice/notes.txt", b"bob's".to_vec(), overwrite)
            .await,
        "bob overwrites it",
    );
    denied(
        as_bob
            .upload_file(
                "private",
                "bob/as-alice.txt",
                b"x".to_vec(),
                UploadOptions {
                    owner: Some(alice),
                    ..options()
                },
            )
            .await,
        "bob uploads in alice's name",
    );
    // A file where alice has a folder: refused, without naming her object.
    let clash = as_bob
        .upload_file("private", "alice", b"x".to_vec(), options())
        .await
        .expect_err("a file over alice's folder");
    assert!(matches!(clash, Error::AlreadyExists(_)), "{clash:?}");
    assert!(!clash.to_string().contains("notes"), "{clash}");
    // After all that, alice's object is whole.
    assert_eq!(
        as_alice
            .download_file("private", "alice/notes.txt")
            .await
            .expect("still there")
            .as_ref(),
        b"alice's"
    );

    // A public bucket: bob and an anonymous request read it, and still cannot delete.
    assert_eq!(
        as_bob
            .download_file("public", "alice/hello.txt")
            .await
            .expect("public read")
            .as_ref(),
        b"hello"
    );
    let anon = kit.storage.through(&kit.db.as_anon());
    assert_eq!(
        anon.download_file("public", "alice/hello.txt")
            .await
            .expect("anon public read")
            .as_ref(),
        b"hello"
    );
    denied(
        anon.download_file("private", "alice/notes.txt").await,
        "anon reads private",
    );
    assert_eq!(
        as_bob
            .delete_files("public", &["alice/hello.txt"])
            .await
            .expect("delete"),
        0,
        "bob deleted alice's public object"
    );
    assert_eq!(
        anon.download_file("public", "alice/hello.txt")
            .await
            .expect("bytes survived")
            .as_ref(),
        b"hello"
    );
    // Bob's copy of a public object is his own.
    as_bob
        .copy_file("public", "alice/hello.txt", "bob/hello.txt")
        .await
        .expect("copy a public object");
    let copy = as_bob
        .object("public", "bob/hello.txt")
        .await
        .expect("copy");
    assert_eq!(copy.owner, Some(bob));

    // Alice manages her own; the unscoped service sees everything.
    as_alice
        .move_file("private", "alice/notes.txt", "alice/archive/notes.txt")
        .await
        .expect("alice moves hers");
    assert_eq!(
        kit.storage
            .list_files("private", "", Default::default())
            .await
            .expect("service lists")
            .len(),
        1
    );
    assert_eq!(
        as_alice
            .delete_files("private", &["alice/archive/notes.txt"])
            .await
            .expect("alice deletes hers"),
        1
    );
    denied(
        as_alice
            .create_bucket("mine", BucketOptions::default())
            .await,
        "a user creates a bucket",
    );
}

fn body(
    bytes: &'static [u8],
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(bytes))])
}

/// The token of an upload URL, as the HTTP router would redeem it (through the
/// service it was mounted with).
fn token(url: &str) -> String {
    url.split("token=").nth(1).expect("token").to_owned()
}

#[tokio::test]
async fn signed_urls_carry_who_and_what_they_were_made_for() {
    let kit = kit().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (as_alice, as_bob) = (kit.storage.as_user(alice), kit.storage.as_user(bob));
    as_alice
        .upload_file("private", "alice/notes.txt", b"alice's".to_vec(), options())
        .await
        .expect("alice uploads");

    // Bob may mint an upload URL for a path, but it writes his object: over Alice's,
    // it is refused, and her bytes stay.
    let bobs = as_bob
        .create_signed_upload_url("private", "alice/notes.txt", 60)
        .await
        .expect("a URL for bob");
    let overwrite = UploadOptions {
        upsert: true,
        ..options()
    };
    let refused = kit
        .storage
        .upload_signed_stream(
            "private",
            "alice/notes.txt",
            &token(&bobs),
            body(b"bob was here"),
            overwrite.clone(),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::PermissionDenied { .. })),
        "{refused:?}"
    );
    assert_eq!(
        as_alice
            .download_file("private", "alice/notes.txt")
            .await
            .expect("still hers")
            .as_ref(),
        b"alice's"
    );
    // An anonymous handle mints nothing.
    let anon = kit.storage.through(&kit.db.as_anon());
    assert!(matches!(
        anon.create_signed_upload_url("private", "x.txt", 60).await,
        Err(Error::PermissionDenied { .. })
    ));

    // Alice's own signed upload is hers.
    let hers = as_alice
        .create_signed_upload_url("private", "alice/signed.txt", 60)
        .await
        .expect("a URL for alice");
    kit.storage
        .upload_signed_stream(
            "private",
            "alice/signed.txt",
            &token(&hers),
            body(b"signed"),
            overwrite,
        )
        .await
        .expect("redeemed");
    let object = as_alice
        .object("private", "alice/signed.txt")
        .await
        .expect("hers to read");
    assert_eq!(object.owner, Some(alice));

    // A download URL serves the object it was made for, not the next one at its path.
    let url = as_alice
        .create_signed_url("private", "alice/notes.txt", 60)
        .await
        .expect("signed");
    kit.storage
        .verify_download("private", "alice/notes.txt", &token(&url))
        .await
        .expect("valid for the object");
    as_alice
        .delete_files("private", &["alice/notes.txt"])
        .await
        .expect("delete");
    kit.storage
        .upload_file(
            "private",
            "alice/notes.txt",
            b"someone else's".to_vec(),
            UploadOptions {
                owner: Some(bob),
                ..options()
            },
        )
        .await
        .expect("a new object at the path");
    assert!(matches!(
        kit.storage
            .verify_download("private", "alice/notes.txt", &token(&url))
            .await,
        Err(Error::PermissionDenied { .. })
    ));
}

#[tokio::test]
async fn storage_writes_refuse_a_transaction_handle() {
    let kit = kit().await;
    let storage = kit.storage.clone();
    let refused = kit
        .db
        .transaction(|tx| {
            let storage = storage.clone();
            async move {
                storage
                    .through(&tx)
                    .upload_file("private", "in-tx.txt", b"x".to_vec(), options())
                    .await
            }
        })
        .await;
    assert!(matches!(refused, Err(Error::Misuse(_))), "{refused:?}");
    assert!(kit.storage.object("private", "in-tx.txt").await.is_err());
}
