//! The storage service on real PostgreSQL, a real filesystem store and real HTTP.

mod common;

use std::time::Duration;

use bytes::Bytes;
use tabula::storage::{BucketOptions, ListOptions, SortColumn, StorageService, UploadOptions};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Error};

const KEY: &[u8] = b"test signing key, thirty-two bytes or more";

struct Kit {
    storage: StorageService,
    root: std::path::PathBuf,
    base: String,
    db: Db,
}

/// The store's folder goes with the test: hundreds of runs must not fill the disk.
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
    let root = std::env::temp_dir().join(format!(
        "tabula-store-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let storage = StorageService::local(db.clone(), &root, KEY, &base).expect("storage");
    let app = tabula::storage::http::router(storage.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    storage
        .create_bucket(
            "avatars",
            BucketOptions {
                public: true,
                ..Default::default()
            },
        )
        .await
        .expect("bucket");
    storage
        .create_bucket("documents", BucketOptions::default())
        .await
        .expect("bucket");
    Kit {
        storage,
        root,
        base,
        db,
    }
}

fn jpeg() -> UploadOptions {
    UploadOptions {
        content_type: "image/jpeg".into(),
        cache_control: "3600".into(),
        ..Default::default()
    }
}

use common::http::{header, http_get, http_request};

#[tokio::test]
async fn upload_then_download_round_trips_bytes_and_metadata() {
    let k = kit().await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let url = k
        .storage
        .upload_file("avatars", "user123/avatar.jpg", body.clone(), jpeg())
        .await
        .expect("upload");
    assert_eq!(
        url,
        format!("{}/object/public/avatars/user123/avatar.jpg", k.base)
    );
    let (meta, bytes) = k
        .storage
        .download("avatars", "user123/avatar.jpg")
        .await
        .expect("download");
    assert_eq!(bytes.as_ref(), body.as_slice());
    assert_eq!(
        (
            meta.size,
            meta.content_type.as_str(),
            meta.cache_control.as_str()
        ),
        (100_000, "image/jpeg", "max-age=3600")
    );
    assert_eq!(meta.etag.len(), 64);
}

#[tokio::test]
async fn an_existing_object_is_a_conflict_without_upsert() {
    let k = kit().await;
    k.storage
        .upload_file("avatars", "a.jpg", b"one".to_vec(), jpeg())
        .await
        .expect("first");
    let err = k
        .storage
        .upload_file("avatars", "a.jpg", b"two".to_vec(), jpeg())
        .await
        .expect_err("second");
    assert!(matches!(err, Error::AlreadyExists(_)), "got {err:?}");
    assert_eq!(
        k.storage
            .download_file("avatars", "a.jpg")
            .await
            .expect("download")
            .as_ref(),
        b"one"
    );
    k.storage
        .upload_file(
            "avatars",
            "a.jpg",
            b"two".to_vec(),
            UploadOptions {
                upsert: true,
                ..jpeg()
            },
        )
        .await
        .expect("upsert");
    assert_eq!(
        k.storage
            .download_file("avatars", "a.jpg")
            .await
            .expect("download")
            .as_ref(),
        b"two"
    );
}

#[tokio::test]
async fn a_cached_download_is_invalidated_by_an_overwrite() {
    let k = kit().await;
    k.storage
        .upload_file("avatars", "c.jpg", b"v1".to_vec(), jpeg())
        .await
        .expect("upload");
    assert_eq!(
        k.storage
            .download_file("avatars", "c.jpg")
            .await
            .expect("fill")
            .as_ref(),
        b"v1"
    );
    // Change the bytes behind the service's back: the cached copy still answers.
    std::fs::write(k.root.join("avatars/c.jpg"), b"XX").expect("poke");
    assert_eq!(
        k.storage
            .download_file("avatars", "c.jpg")
            .await
            .expect("cached")
            .as_ref(),
        b"v1"
    );
    k.storage
        .upload_file(
            "avatars",
            "c.jpg",
            b"v2".to_vec(),
            UploadOptions {
                upsert: true,
                ..jpeg()
            },
        )
        .await
        .expect("overwrite");
    assert_eq!(
        k.storage
            .download_file("avatars", "c.jpg")
            .await
            .expect("after overwrite")
            .as_ref(),
        b"v2"
    );
    let nocache = UploadOptions {
        cache_control: "no-store".into(),
        ..jpeg()
    };
    k.storage
        .upload_file("avatars", "n.jpg", b"n1".to_vec(), nocache)
        .await
        .expect("upload");
    let _ = k
        .storage
        .download_file("avatars", "n.jpg")
        .await
        .expect("download");
    std::fs::write(k.root.join("avatars/n.jpg"), b"n2").expect("poke");
    assert_eq!(
        k.storage
            .download_file("avatars", "n.jpg")
            .await
            .expect("no-store")
            .as_ref(),
        b"n2"
    );
}

#[tokio::test]
async fn listing_sorts_by_every_column_both_ways_and_pages() {
    let k = kit().await;
    for (name, size) in [
        ("u/b.txt", 3),
        ("u/a.txt", 1),
        ("u/c.txt", 2),
        ("other/z.txt", 9),
    ] {
        k.storage
            .upload_file(
                "documents",
                name,
                vec![b'x'; size],
                UploadOptions::default(),
            )
            .await
            .expect("upload");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let names = |files: Vec<tabula::storage::FileObject>| {
        files.into_iter().map(|f| f.name).collect::<Vec<_>>()
    };
    let list = |sort_by, descending| {
        k.storage.list_files(
            "documents",
            "u",
            ListOptions {
                sort_by,
                descending,
                ..Default::default()
            },
        )
    };
    assert_eq!(
        names(list(SortColumn::Name, false).await.expect("list")),
        ["u/a.txt", "u/b.txt", "u/c.txt"]
    );
    assert_eq!(
        names(list(SortColumn::Name, true).await.expect("list")),
        ["u/c.txt", "u/b.txt", "u/a.txt"]
    );
    assert_eq!(
        names(list(SortColumn::Size, false).await.expect("list")),
        ["u/a.txt", "u/c.txt", "u/b.txt"]
    );
    assert_eq!(
        names(list(SortColumn::Size, true).await.expect("list")),
        ["u/b.txt", "u/c.txt", "u/a.txt"]
    );
    assert_eq!(
        names(list(SortColumn::CreatedAt, false).await.expect("list")),
        ["u/b.txt", "u/a.txt", "u/c.txt"]
    );
    assert_eq!(
        names(list(SortColumn::CreatedAt, true).await.expect("list")),
        ["u/c.txt", "u/a.txt", "u/b.txt"]
    );
    assert_eq!(
        names(list(SortColumn::UpdatedAt, true).await.expect("list")),
        ["u/c.txt", "u/a.txt", "u/b.txt"]
    );
    let page = k
        .storage
        .list_files(
            "documents",
            "u",
            ListOptions {
                limit: 2,
                offset: 1,
                ..Default::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(names(page), ["u/b.txt", "u/c.txt"]);
    let search = k
        .storage
        .list_files(
            "documents",
            "",
            ListOptions {
                search: Some("Z.T".into()),
                ..Default::default()
            },
        )
        .await
        .expect("search");
    assert_eq!(names(search), ["other/z.txt"]);
}

#[tokio::test]
async fn signed_urls_are_refused_when_expired_or_tampered() {
    let k = kit().await;
    k.storage
        .upload_file(
            "documents",
            "private/doc.pdf",
            b"%PDF".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("upload");
    let url = k
        .storage
        .create_signed_url("documents", "private/doc.pdf", 3600)
        .await
        .expect("sign");
    let (status, _, body) = http_get(&url, &[]).await;
    assert_eq!((status, body.as_slice()), (200, b"%PDF".as_slice()));
    let token = url.split("token=").nth(1).expect("token").to_owned();
    k.storage
        .verify_download("documents", "private/doc.pdf", &token)
        .await
        .expect("valid");
    // One changed byte in the path, the expiry or the signature.
    assert!(
        k.storage
            .verify_download("documents", "private/doc.pdX", &token)
            .await
            .is_err()
    );
    let (expiry, sig) = token.split_once('.').expect("parts");
    let later: i64 = expiry.parse::<i64>().expect("expiry") + 1;
    assert!(
        k.storage
            .verify_download("documents", "private/doc.pdf", &format!("{later}.{sig}"))
            .await
            .is_err()
    );
    let mut flipped = sig.to_owned();
    flipped.replace_range(0..1, if sig.starts_with('0') { "1" } else { "0" });
    assert!(
        k.storage
            .verify_download(
                "documents",
                "private/doc.pdf",
                &format!("{expiry}.{flipped}")
            )
            .await
            .is_err()
    );
    let expired = format!("{}.{sig}", chrono::Utc::now().timestamp() - 10);
    assert!(
        k.storage
            .verify_download("documents", "private/doc.pdf", &expired)
            .await
            .is_err()
    );
    // Over HTTP: a token for one path does not open another; no token is 403.
    k.storage
        .upload_file(
            "documents",
            "private/other.pdf",
            b"secret".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("upload");
    let other = url.replace("doc.pdf", "other.pdf");
    assert_eq!(http_get(&other, &[]).await.0, 403);
    assert_eq!(
        http_get(
            &format!("{}/object/sign/documents/private/doc.pdf", k.base),
            &[]
        )
        .await
        .0,
        403
    );
    // A private bucket is not served on the public route.
    assert_eq!(
        http_get(
            &format!("{}/object/public/documents/private/doc.pdf", k.base),
            &[]
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn traversal_and_malformed_keys_are_refused() {
    let k = kit().await;
    for bad in [
        "../escape",
        "/abs",
        "a//b",
        "a\\b",
        "nul\u{0}",
        "a/../b",
        ".tmp/x",
        "",
    ] {
        let err = k
            .storage
            .upload_file("avatars", bad, b"x".to_vec(), jpeg())
            .await
            .expect_err(bad);
        assert!(matches!(err, Error::Validation(_)), "{bad:?}: {err:?}");
    }
    let long = "a".repeat(1025);
    assert!(matches!(
        k.storage
            .upload_file("avatars", &long, b"x".to_vec(), jpeg())
            .await,
        Err(Error::Validation(_))
    ));
    assert!(!k.root.join("escape").exists());
    assert_eq!(
        http_get(&format!("{}/object/public/avatars/a/%2E%2E/b", k.base), &[])
            .await
            .0,
        400
    );
    assert_eq!(
        http_get(
            &format!("{}/object/public/avatars/missing.jpg", k.base),
            &[]
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn bucket_limits_on_size_and_content_type() {
    let k = kit().await;
    let options = BucketOptions {
        public: false,
        max_size: Some(10),
        allowed_types: Some(vec!["image/*".into()]),
    };
    k.storage
        .create_bucket("limited", options)
        .await
        .expect("bucket");
    let err = k
        .storage
        .upload_file("limited", "big.jpg", vec![0u8; 11], jpeg())
        .await
        .expect_err("too big");
    assert!(matches!(err, Error::Validation(_)));
    let err = k
        .storage
        .upload_file(
            "limited",
            "page.html",
            vec![0u8; 5],
            UploadOptions {
                content_type: "text/html".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(err, Err(Error::Validation(_))));
    k.storage
        .upload_file(
            "limited",
            "ok.png",
            vec![0u8; 10],
            UploadOptions {
                content_type: "image/png".into(),
                ..Default::default()
            },
        )
        .await
        .expect("fits");
    assert_eq!(
        k.storage
            .list_files("limited", "", ListOptions::default())
            .await
            .expect("list")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_failed_upload_leaves_no_row_and_no_visible_object() {
    let k = kit().await;
    let chunks = vec![
        Ok(Bytes::from_static(b"partial")),
        Err(std::io::Error::other("client went away")),
    ];
    let err = k
        .storage
        .upload_stream(
            "avatars",
            "broken.jpg",
            futures_util::stream::iter(chunks),
            jpeg(),
        )
        .await
        .expect_err("broken body");
    assert!(matches!(err, Error::Storage { .. }), "got {err:?}");
    assert!(matches!(
        k.storage.object("avatars", "broken.jpg").await,
        Err(Error::NotFound { .. })
    ));
    assert!(!k.root.join("avatars/broken.jpg").exists());
}

#[tokio::test]
async fn concurrent_uploads_to_one_key_end_with_one_consistent_object() {
    let k = kit().await;
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let storage = k.storage.clone();
        tasks.push(tokio::spawn(async move {
            let body = vec![i; 1000 + usize::from(i)];
            storage
                .upload_file(
                    "avatars",
                    "race.bin",
                    body,
                    UploadOptions {
                        upsert: true,
                        ..Default::default()
                    },
                )
                .await
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("upload");
    }
    let (meta, bytes) = k
        .storage
        .download("avatars", "race.bin")
        .await
        .expect("download");
    assert_eq!(meta.size as usize, bytes.len());
    let fill = bytes[0];
    assert!(bytes.iter().all(|b| *b == fill), "bytes of one upload only");
    assert_eq!(
        bytes.len(),
        1000 + usize::from(fill),
        "metadata matches those bytes"
    );
}

#[tokio::test]
async fn the_router_serves_headers_conditional_and_range_requests() {
    let k = kit().await;
    let body: Vec<u8> = (0..=255u8).collect();
    let url = k
        .storage
        .upload_file("avatars", "dir/pic.jpg", body.clone(), jpeg())
        .await
        .expect("upload");
    let (status, headers, got) = http_get(&url, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(got, body);
    assert_eq!(header(&headers, "content-type"), Some("image/jpeg"));
    assert_eq!(header(&headers, "cache-control"), Some("max-age=3600"));
    let etag = header(&headers, "etag").expect("etag").to_owned();
    let (status, _, got) = http_get(&url, &[("If-None-Match", &etag)]).await;
    assert_eq!((status, got.len()), (304, 0));
    let (status, headers, got) = http_get(&url, &[("Range", "bytes=10-19")]).await;
    assert_eq!(status, 206);
    assert_eq!(got, body[10..20].to_vec());
    assert_eq!(header(&headers, "content-range"), Some("bytes 10-19/256"));
    assert_eq!(http_get(&url, &[("Range", "bytes=300-")]).await.0, 416);
}

#[tokio::test]
async fn delete_move_and_copy() {
    let k = kit().await;
    k.storage
        .upload_file(
            "documents",
            "a.txt",
            b"A".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("upload");
    k.storage
        .upload_file(
            "documents",
            "b.txt",
            b"B".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("upload");
    k.storage
        .copy_file("documents", "a.txt", "copy/a.txt")
        .await
        .expect("copy");
    k.storage
        .move_file("documents", "b.txt", "moved/b.txt")
        .await
        .expect("move");
    assert_eq!(
        k.storage
            .download_file("documents", "copy/a.txt")
            .await
            .expect("copy")
            .as_ref(),
        b"A"
    );
    assert_eq!(
        k.storage
            .download_file("documents", "moved/b.txt")
            .await
            .expect("moved")
            .as_ref(),
        b"B"
    );
    assert!(matches!(
        k.storage.object("documents", "b.txt").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        k.storage
            .copy_file("documents", "a.txt", "copy/a.txt")
            .await,
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(
        k.storage
            .delete_files("documents", &["a.txt", "copy/a.txt", "nope.txt"])
            .await
            .expect("delete"),
        2
    );
    assert!(!k.root.join("documents/a.txt").exists());
    assert_eq!(
        k.storage
            .list_files("documents", "", ListOptions::default())
            .await
            .expect("list")
            .len(),
        1
    );
}

#[tokio::test]
async fn signed_uploads_work_and_a_token_never_serves_another_purpose() {
    let k = kit().await;
    let upload = k
        .storage
        .create_signed_upload_url("documents", "inbox/report.txt", 600)
        .await
        .expect("sign upload");
    let (status, _, body) = http_request(
        "PUT",
        &upload,
        &[
            ("Content-Type", "text/plain"),
            ("Cache-Control", "no-store"),
        ],
        b"quarterly",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (meta, bytes) = k
        .storage
        .download("documents", "inbox/report.txt")
        .await
        .expect("download");
    assert_eq!(
        (
            bytes.as_ref(),
            meta.content_type.as_str(),
            meta.cache_control.as_str()
        ),
        (b"quarterly".as_slice(), "text/plain", "no-store")
    );
    // The upload token cannot download, and a download token cannot upload.
    let as_download = upload.replace("/object/upload/sign/", "/object/sign/");
    assert_eq!(http_get(&as_download, &[]).await.0, 403);
    let download = k
        .storage
        .create_signed_url("documents", "inbox/report.txt", 600)
        .await
        .expect("sign download");
    let as_upload = download.replace("/object/sign/", "/object/upload/sign/");
    assert_eq!(
        http_request("PUT", &as_upload, &[], b"overwritten").await.0,
        403
    );
    // Nor another path.
    let elsewhere = upload.replace("report.txt", "other.txt");
    assert_eq!(http_request("PUT", &elsewhere, &[], b"x").await.0, 403);
    assert_eq!(
        k.storage
            .download_file("documents", "inbox/report.txt")
            .await
            .expect("intact")
            .as_ref(),
        b"quarterly"
    );
}

#[test]
fn arbitrary_object_keys_are_refused_or_stored_inside_their_bucket() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let k = rt.block_on(kit());
    let keys = prop_oneof![
        "[a-zA-Z0-9./\\\\%~:#@ -]{0,24}",
        ".{0,40}",
        prop::sample::select(vec![
            "..",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "/etc/passwd",
            "%2e%2e/x",
            "..\\x",
            "a\u{0}b"
        ])
        .prop_map(str::to_owned),
    ];
    // A fixed seed: the same 300 keys on every run, so CI cannot flake on a new one.
    let config = Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = proptest::test_runner::TestRng::deterministic_rng(
        proptest::test_runner::RngAlgorithm::ChaCha,
    );
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&keys, |key| {
        let outcome = rt.block_on(k.storage.upload_file(
            "documents",
            &key,
            key.as_bytes().to_vec(),
            UploadOptions {
                upsert: true,
                ..Default::default()
            },
        ));
        match outcome {
            Ok(_) => {
                let stored = rt
                    .block_on(k.storage.download_file("documents", &key))
                    .expect("download");
                prop_assert_eq!(stored.as_ref(), key.as_bytes());
                // A traversal would have to step out of the bucket's folder: the key has
                // no `..` segment and the store encodes the rest.
                prop_assert!(
                    !key.split('/').any(|segment| segment == ".."),
                    "{key:?} was accepted"
                );
            }
            Err(Error::Validation(_) | Error::AlreadyExists(_)) => {}
            Err(other) => return Err(TestCaseError::fail(format!("{key:?}: {other}"))),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Every byte written lies under the store's root, inside a bucket (or the hidden
    // temporary folder).
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out)
            } else {
                out.push(path)
            }
        }
    }
    let mut files = Vec::new();
    walk(&k.root, &mut files);
    assert!(!files.is_empty());
    for file in files {
        let relative = file.strip_prefix(&k.root).expect("under the root");
        let top = relative
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        assert!(
            matches!(top.as_deref(), Some("documents" | "avatars" | ".tmp")),
            "{}",
            file.display()
        );
    }
}

#[tokio::test]
async fn a_key_cannot_be_both_a_file_and_a_folder() {
    let k = kit().await;
    k.storage
        .upload_file(
            "documents",
            "a/b.txt",
            b"x".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("a/b.txt");
    let err = k
        .storage
        .upload_file("documents", "a", b"y".to_vec(), UploadOptions::default())
        .await
        .expect_err("a");
    assert!(matches!(err, Error::AlreadyExists(_)), "got {err:?}");
    k.storage
        .upload_file("documents", "c", b"y".to_vec(), UploadOptions::default())
        .await
        .expect("c");
    let err = k
        .storage
        .upload_file("documents", "c/d", b"z".to_vec(), UploadOptions::default())
        .await
        .expect_err("c/d");
    assert!(matches!(err, Error::AlreadyExists(_)), "got {err:?}");
    assert!(matches!(
        k.storage.copy_file("documents", "c", "a").await,
        Err(Error::AlreadyExists(_))
    ));
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_without_upsert_have_exactly_one_winner_and_leave_no_stray_bytes() {
    let k = kit().await;
    const UPLOADS: u8 = 8;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(usize::from(UPLOADS)));
    let mut tasks = Vec::new();
    for i in 0..UPLOADS {
        let (storage, start) = (k.storage.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let body = vec![i; 4096 + usize::from(i)];
            let outcome = storage
                .upload_file("documents", "race/one.bin", body, UploadOptions::default())
                .await;
            (i, outcome)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("join") {
            (i, Ok(_)) => winners.push(i),
            (_, Err(Error::AlreadyExists(_))) => {}
            (i, Err(other)) => panic!("upload {i} failed with {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one upload may win, got {winners:?}"
    );
    let winner = winners[0];
    let (meta, bytes) = k
        .storage
        .download("documents", "race/one.bin")
        .await
        .expect("download");
    assert_eq!(
        bytes.to_vec(),
        vec![winner; 4096 + usize::from(winner)],
        "the winner's bytes"
    );
    assert_eq!(meta.size as usize, bytes.len());
    let files = files_under(&k.root);
    assert_eq!(
        files,
        vec![k.root.join("documents/race/one.bin")],
        "the losers' bytes were left in the store"
    );
}

#[tokio::test]
async fn a_segment_longer_than_255_bytes_is_refused_up_front_without_a_server_path() {
    let k = kit().await;
    let root = k.root.to_string_lossy().into_owned();
    for key in [
        "a".repeat(256),
        format!("dir/{}", "b".repeat(256)),
        // `~` is stored as `%7E`: 86 of them take 258 bytes on disk.
        "~".repeat(86),
        // Each byte of `é` is stored as three.
        "é".repeat(43),
    ] {
        let err = k
            .storage
            .upload_file("documents", &key, b"x".to_vec(), UploadOptions::default())
            .await
            .expect_err("over-long segment");
        assert!(matches!(err, Error::Validation(_)), "{key}: got {err:?}");
        assert!(!err.to_string().contains(&root), "server path in `{err}`");
    }
    // The limit itself is fine.
    k.storage
        .upload_file(
            "documents",
            &"c".repeat(255),
            b"x".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("a 255-byte segment");
    k.storage
        .upload_file(
            "documents",
            &"~".repeat(85),
            b"x".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("85 `~`: 255 bytes stored");
}

#[tokio::test]
async fn store_failures_name_no_server_path_and_keep_their_source() {
    let k = kit().await;
    // A file where the store needs a folder: moving the upload into place fails.
    std::fs::create_dir_all(k.root.join("documents")).expect("dir");
    std::fs::write(k.root.join("documents/blocker"), b"not a folder").expect("poke");
    let root = k.root.to_string_lossy().into_owned();
    let err = k
        .storage
        .upload_file(
            "documents",
            "blocker/x.txt",
            b"x".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect_err("the store cannot write there");
    assert!(matches!(err, Error::Storage { .. }), "got {err:?}");
    let message = err.to_string();
    assert!(!message.contains(&root), "server path in `{message}`");
    assert!(message.contains("documents/blocker/x.txt"), "{message}");
    let source = std::error::Error::source(&err).expect("the store's error is the source");
    assert!(
        source.to_string().contains(&root),
        "the source keeps the details for the log: {source}"
    );
    // Over HTTP the client sees a status and its reason, nothing of the server.
    let url = k
        .storage
        .create_signed_upload_url("documents", "blocker/y.txt", 600)
        .await
        .expect("sign");
    let (status, _, body) = http_request("PUT", &url, &[], b"y").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 500, "{body}");
    assert!(!body.contains(&root), "server path in the response: {body}");
    assert!(
        !body.contains("blocker"),
        "store details in the response: {body}"
    );
}

#[tokio::test]
async fn a_signed_upload_url_uploads_exactly_once() {
    let k = kit().await;
    let url = k
        .storage
        .create_signed_upload_url("documents", "inbox/once.txt", 600)
        .await
        .expect("sign");
    assert_eq!(http_request("PUT", &url, &[], b"first").await.0, 200);
    let (status, _, _) = http_request("PUT", &url, &[], b"second").await;
    assert_eq!(status, 403, "a used token must not upload again");
    assert_eq!(
        k.storage
            .download_file("documents", "inbox/once.txt")
            .await
            .expect("download")
            .as_ref(),
        b"first"
    );
    // Deleting the object does not revive the token.
    k.storage
        .delete_files("documents", &["inbox/once.txt"])
        .await
        .expect("delete");
    assert_eq!(http_request("PUT", &url, &[], b"third").await.0, 403);
    // A second URL for the same path is a second grant.
    let again = k
        .storage
        .create_signed_upload_url("documents", "inbox/once.txt", 600)
        .await
        .expect("sign again");
    assert_ne!(again, url, "each URL is a distinct token");
    assert_eq!(http_request("PUT", &again, &[], b"fourth").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_with_one_signed_upload_url_succeed_once() {
    let k = kit().await;
    let url = k
        .storage
        .create_signed_upload_url("documents", "inbox/race.txt", 600)
        .await
        .expect("sign");
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(6));
    let mut tasks = Vec::new();
    for i in 0..6u8 {
        let (url, start) = (url.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            (i, http_request("PUT", &url, &[], &[b'a' + i; 64]).await.0)
        }));
    }
    let mut ok = Vec::new();
    for task in tasks {
        let (i, status) = task.await.expect("join");
        match status {
            200 => ok.push(i),
            403 => {}
            other => panic!("PUT {i}: status {other}"),
        }
    }
    assert_eq!(ok.len(), 1, "one token, one upload: {ok:?}");
    assert_eq!(
        k.storage
            .download_file("documents", "inbox/race.txt")
            .await
            .expect("download")
            .to_vec(),
        vec![b'a' + ok[0]; 64]
    );
    assert_eq!(
        files_under(&k.root),
        vec![k.root.join("documents/inbox/race.txt")],
        "the refused uploads left bytes behind"
    );
}

#[tokio::test]
async fn a_failed_signed_upload_does_not_use_up_its_token() {
    let k = kit().await;
    k.storage
        .create_bucket(
            "small",
            BucketOptions {
                max_size: Some(4),
                ..Default::default()
            },
        )
        .await
        .expect("bucket");
    let url = k
        .storage
        .create_signed_upload_url("small", "f.bin", 600)
        .await
        .expect("sign");
    assert_eq!(http_request("PUT", &url, &[], b"too large").await.0, 400);
    assert_eq!(http_request("PUT", &url, &[], b"ok").await.0, 200);
    assert_eq!(http_request("PUT", &url, &[], b"ok").await.0, 403);
}

#[tokio::test]
async fn a_signed_token_verifies_only_in_its_canonical_spelling() {
    let k = kit().await;
    k.storage
        .upload_file(
            "documents",
            "p/doc.txt",
            b"doc".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("upload");
    let verify = async |token: &str| {
        k.storage
            .verify_download("documents", "p/doc.txt", token)
            .await
    };
    // A token whose signature part has a `0` nibble to replace with `+`.
    let mut token = String::new();
    for _ in 0..100 {
        let url = k
            .storage
            .create_signed_url("documents", "p/doc.txt", 3600)
            .await
            .expect("sign");
        token = url.split("token=").nth(1).expect("token").to_owned();
        if token
            .split_once('.')
            .is_some_and(|(_, rest)| rest.contains('0'))
        {
            break;
        }
    }
    verify(&token).await.expect("the token as minted");
    let (expiry, rest) = token.split_once('.').expect("expiry");
    let zero = expiry.len() + 1 + rest.find('0').expect("a 0 nibble");
    let mut plus = token.clone();
    plus.replace_range(zero..zero + 1, "+");
    let mutations = [
        (
            "uppercase hex",
            format!("{expiry}.{}", rest.to_ascii_uppercase()),
        ),
        ("`+` for a `0` nibble", plus),
        ("`+` on the expiry", format!("+{token}")),
        ("a leading zero on the expiry", format!("0{token}")),
        ("two leading zeros on the expiry", format!("00{token}")),
        ("a space before", format!(" {token}")),
        ("a space after", format!("{token} ")),
        ("a trailing dot", format!("{token}.")),
    ];
    for (what, mutated) in &mutations {
        assert_ne!(mutated, &token);
        assert!(verify(mutated).await.is_err(), "{what} verified: {mutated}");
        let url = format!("{}/object/sign/documents/p/doc.txt?token={mutated}", k.base)
            .replace('+', "%2B")
            .replace(' ', "%20");
        assert_eq!(http_get(&url, &[]).await.0, 403, "{what} over HTTP");
    }
    // Every byte of the token changed, to a neighbour and to its other case.
    for i in 0..token.len() {
        let byte = token.as_bytes()[i];
        for other in [byte ^ 1, byte.to_ascii_uppercase(), b'+'] {
            if other == byte {
                continue;
            }
            let mut bytes = token.clone().into_bytes();
            bytes[i] = other;
            let mutated = String::from_utf8_lossy(&bytes).into_owned();
            assert!(
                verify(&mutated).await.is_err(),
                "byte {i} {:?} -> {:?} verified",
                byte as char,
                other as char
            );
        }
    }
}

#[tokio::test]
async fn range_requests_are_parsed_strictly_over_http() {
    let k = kit().await;
    let body: Vec<u8> = (0..=255u8).collect();
    let url = k
        .storage
        .upload_file("avatars", "r.bin", body.clone(), jpeg())
        .await
        .expect("upload");
    let get = |range: &'static str| {
        let url = url.clone();
        async move { http_get(&url, &[("Range", range)]).await }
    };
    // One satisfiable range: 206.
    let (status, headers, got) = get("bytes=-5").await;
    assert_eq!((status, got.as_slice()), (206, &body[251..]));
    assert_eq!(header(&headers, "content-range"), Some("bytes 251-255/256"));
    // Malformed: ignored, the whole object (RFC 9110 §14.2).
    for malformed in [
        "bytes=+1-+5",
        "bytes=-+5",
        "bytes= 0 - 9",
        "bytes=0 - 9",
        "bytes=5-1",
        "bytes=0x1-2",
        "items=0-9",
    ] {
        let (status, headers, got) = get(malformed).await;
        assert_eq!(status, 200, "{malformed:?}");
        assert_eq!(got, body, "{malformed:?}");
        assert_eq!(header(&headers, "content-range"), None, "{malformed:?}");
    }
    // Several ranges, some satisfiable: the whole object, documented, never 416.
    for multi in ["bytes=0-1,3-4", "bytes=0-1, 300-", "bytes=-1,0-0"] {
        let (status, _, got) = get(multi).await;
        assert_eq!((status, got.len()), (200, body.len()), "{multi:?}");
    }
    // Nothing satisfiable: 416 with the size.
    for unsatisfiable in ["bytes=256-", "bytes=300-400, 500-", "bytes=-0"] {
        let (status, headers, _) = get(unsatisfiable).await;
        assert_eq!(status, 416, "{unsatisfiable:?}");
        assert_eq!(header(&headers, "content-range"), Some("bytes */256"));
    }
}

/// A deferred trigger that fails the COMMIT of any object row with this content type.
async fn fail_commits_of(db: &Db, content_type: &str) {
    db.execute_batch(&format!(
        "CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.content_type = '{content_type}' THEN RAISE EXCEPTION 'boom at commit'; END IF; \
           RETURN NEW; END $$; \
         CREATE CONSTRAINT TRIGGER boom AFTER INSERT OR UPDATE ON storage.objects \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.boom();"
    ))
    .await
    .expect("trigger");
}

fn with_type(upsert: bool, content_type: &str) -> UploadOptions {
    UploadOptions {
        upsert,
        content_type: content_type.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_whose_commit_fails_leaves_no_bytes_at_the_key() {
    let k = kit().await;
    fail_commits_of(&k.db, "x/boom").await;
    let result = k
        .storage
        .upload_file(
            "avatars",
            "newkey.txt",
            b"stray".to_vec(),
            with_type(false, "x/boom"),
        )
        .await;
    assert!(result.is_err(), "the commit fails: {result:?}");
    let files = files_under(&k.root);
    assert!(
        files.is_empty(),
        "bytes without a row, or leftovers: {files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upsert_whose_commit_fails_keeps_the_previous_bytes() {
    let k = kit().await;
    k.storage
        .upload_file(
            "documents",
            "doc.txt",
            b"old".to_vec(),
            with_type(false, "text/plain"),
        )
        .await
        .expect("first upload");
    fail_commits_of(&k.db, "x/boom").await;
    let result = k
        .storage
        .upload_file(
            "documents",
            "doc.txt",
            b"NEW-AND-LONGER".to_vec(),
            with_type(true, "x/boom"),
        )
        .await;
    assert!(result.is_err(), "the commit fails: {result:?}");
    let raw = std::fs::read(k.root.join("documents/doc.txt")).expect("bytes");
    assert_eq!(raw, b"old", "the store no longer matches the metadata");
    let files = files_under(&k.root);
    assert_eq!(files.len(), 1, "leftovers: {files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_or_copy_whose_commit_fails_leaves_the_bytes_where_the_rows_say() {
    let k = kit().await;
    k.storage
        .upload_file(
            "documents",
            "a.txt",
            b"payload".to_vec(),
            with_type(false, "x/boom"),
        )
        .await
        .expect("upload");
    // From now on, COMMIT refuses any new or changed row of this content type.
    fail_commits_of(&k.db, "x/boom").await;
    let moved = k.storage.move_file("documents", "a.txt", "b.txt").await;
    assert!(moved.is_err(), "the commit fails: {moved:?}");
    let copied = k.storage.copy_file("documents", "a.txt", "c.txt").await;
    assert!(copied.is_err(), "the commit fails: {copied:?}");
    let files = files_under(&k.root);
    assert_eq!(
        files,
        [k.root.join("documents/a.txt")],
        "bytes are not where the rows say"
    );
    assert_eq!(
        k.storage
            .download_file("documents", "a.txt")
            .await
            .expect("download"),
        b"payload".to_vec()
    );
}

/// A cached download asks the database nothing — the object's row and its bucket and
/// path come from the row cache, the bytes from the cache — and every write through
/// the service (move, delete, overwrite) is seen at once.
#[test]
fn a_cached_download_asks_the_database_nothing_and_follows_every_write() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let k = runtime.block_on(async {
        let k = kit().await;
        k.storage
            .upload_file("avatars", "a.jpg", b"v1".to_vec(), jpeg())
            .await
            .expect("upload");
        // Fills: the path's mapping, then the row, then the bytes.
        for _ in 0..3 {
            k.storage
                .download_file("avatars", "a.jpg")
                .await
                .expect("download");
        }
        k
    });
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let bytes = k
                .storage
                .download_file("avatars", "a.jpg")
                .await
                .expect("cached download");
            assert_eq!(bytes.as_ref(), b"v1");
        })
    });
    let text = handle.render();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("tabula_db_operation_seconds_count")
                && l.contains(r#"source="db""#)),
        "no database query: {text}"
    );
    runtime.block_on(async {
        let download = |path: &'static str| {
            let storage = k.storage.clone();
            async move { storage.download_file("avatars", path).await }
        };
        k.storage
            .move_file("avatars", "a.jpg", "b.jpg")
            .await
            .expect("move");
        assert!(matches!(
            download("a.jpg").await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(download("b.jpg").await.expect("moved").as_ref(), b"v1");
        k.storage
            .upload_file("avatars", "a.jpg", b"v2".to_vec(), jpeg())
            .await
            .expect("upload again");
        for _ in 0..2 {
            assert_eq!(download("a.jpg").await.expect("new").as_ref(), b"v2");
        }
        k.storage
            .delete_files("avatars", &["a.jpg"])
            .await
            .expect("delete");
        assert!(matches!(
            download("a.jpg").await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(
            download("b.jpg").await.expect("still there").as_ref(),
            b"v1"
        );
        // A row renamed in place (through the `Db`, not the service): the cached
        // mapping of its old path no longer answers.
        let object = k.storage.object("avatars", "b.jpg").await.expect("object");
        k.db.update::<tabula::storage::FileObject>(
            object.id,
            tabula::storage::FileObjectPatch {
                name: Some("c.jpg".into()),
                ..Default::default()
            },
        )
        .await
        .expect("rename the row");
        assert!(matches!(
            k.storage.object("avatars", "b.jpg").await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(
            k.storage
                .object("avatars", "c.jpg")
                .await
                .expect("renamed")
                .id,
            object.id
        );
    });
}
