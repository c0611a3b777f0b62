//! The storage service on an S3-compatible server (the test kit's moto server): the
//! same operations as on the filesystem, multipart uploads, the bytes really in the
//! S3 bucket, signed URLs and the HTTP router.

mod common;

use bytes::Bytes;
use common::http::{header, http_get};
use futures_util::StreamExt;
use tabula::storage::{BucketOptions, ListOptions, StorageService, UploadOptions};
use tabula::testkit::S3Server;
use tabula::{CacheConfig, CacheService, Db, DbConfig, Error};

const KEY: &[u8] = b"test signing key, thirty-two bytes or more";

struct Kit {
    storage: StorageService,
    s3: S3Server,
}

async fn kit() -> Kit {
    let (_, url) = common::db_and_url().await;
    let cache = CacheService::in_memory(CacheConfig::default()).expect("cache");
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    let s3 = tokio::task::spawn_blocking(|| S3Server::start("tabula-files"))
        .await
        .expect("start")
        .expect("moto server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let storage = StorageService::s3(db, s3.options(), KEY, &base).expect("storage");
    let app = tabula::storage::http::router(storage.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    for (name, public) in [("avatars", true), ("documents", false)] {
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
    Kit { storage, s3 }
}

impl Kit {
    /// A client of its own on the test bucket.
    fn raw_store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("tabula-files")
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_endpoint(self.s3.endpoint())
            .with_allow_http(true)
            .build()
            .expect("client")
    }

    /// The object's bytes as the S3 bucket holds them, read with a client of its own.
    async fn in_s3(&self, bucket: &str, path: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("tabula-files")
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_endpoint(self.s3.endpoint())
            .with_allow_http(true)
            .build()
            .expect("client");
        let location = object_store::path::Path::from(format!("{bucket}/{path}"));
        match store.get(&location).await {
            Ok(found) => Some(found.bytes().await.expect("bytes").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("S3: {e}"),
        }
    }
}

#[tokio::test]
async fn objects_round_trip_through_s3() {
    let k = kit().await;
    let options = UploadOptions {
        content_type: "text/plain".into(),
        ..Default::default()
    };
    k.storage
        .upload_file(
            "documents",
            "notes/a.txt",
            b"hello s3".to_vec(),
            options.clone(),
        )
        .await
        .expect("upload");
    assert_eq!(
        k.in_s3("documents", "notes/a.txt").await.as_deref(),
        Some(&b"hello s3"[..]),
        "the bytes are in the S3 bucket"
    );
    let (object, bytes) = k
        .storage
        .download("documents", "notes/a.txt")
        .await
        .expect("download");
    assert_eq!((object.size, &bytes[..]), (8, &b"hello s3"[..]));
    // Again: no overwrite without upsert; with it, the new bytes.
    let again = k
        .storage
        .upload_file(
            "documents",
            "notes/a.txt",
            b"other".to_vec(),
            options.clone(),
        )
        .await;
    assert!(matches!(again, Err(Error::AlreadyExists(_))), "{again:?}");
    k.storage
        .upload_file(
            "documents",
            "notes/a.txt",
            b"replaced".to_vec(),
            UploadOptions {
                upsert: true,
                ..options.clone()
            },
        )
        .await
        .expect("upsert");
    assert_eq!(
        k.in_s3("documents", "notes/a.txt").await.as_deref(),
        Some(&b"replaced"[..])
    );
    // Copy, move, list, delete.
    k.storage
        .copy_file("documents", "notes/a.txt", "notes/copy.txt")
        .await
        .expect("copy");
    k.storage
        .move_file("documents", "notes/a.txt", "moved/a.txt")
        .await
        .expect("move");
    assert_eq!(
        k.in_s3("documents", "notes/a.txt").await,
        None,
        "moved away"
    );
    assert_eq!(
        k.in_s3("documents", "moved/a.txt").await.as_deref(),
        Some(&b"replaced"[..])
    );
    let copy = k
        .storage
        .copy_file("documents", "moved/a.txt", "notes/copy.txt")
        .await;
    assert!(matches!(copy, Err(Error::AlreadyExists(_))), "{copy:?}");
    let listed = k
        .storage
        .list_files("documents", "notes/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["notes/copy.txt"]
    );
    assert_eq!(
        k.storage
            .delete_files("documents", &["notes/copy.txt", "moved/a.txt"])
            .await
            .expect("delete"),
        2
    );
    assert_eq!(k.in_s3("documents", "moved/a.txt").await, None);
}

#[tokio::test]
async fn a_large_upload_goes_up_in_parts_and_comes_down_whole() {
    let k = kit().await;
    // 12 MiB in 1 MiB chunks: three multipart parts of 5 MiB at most.
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let body = futures_util::stream::iter((0..12u8).map(move |n| {
        let mut c = chunk.clone();
        c[0] = n;
        Ok::<Bytes, std::io::Error>(Bytes::from(c))
    }));
    k.storage
        .upload_stream("documents", "big.bin", body, UploadOptions::default())
        .await
        .expect("upload");
    let object = k.storage.object("documents", "big.bin").await.expect("row");
    assert_eq!(object.size, 12 << 20);
    use futures_util::StreamExt;
    let (_, mut stream) = k
        .storage
        .download_stream("documents", "big.bin")
        .await
        .expect("stream");
    let mut got = Vec::new();
    while let Some(part) = stream.next().await {
        got.extend_from_slice(&part.expect("chunk"));
    }
    assert_eq!(got.len(), 12 << 20);
    for n in 0..12usize {
        assert_eq!(got[n << 20], n as u8, "chunk {n} in its place");
    }
    assert_eq!(
        k.in_s3("documents", "big.bin").await.map(|b| b.len()),
        Some(12 << 20)
    );
    // A body that fails midway leaves neither a row nor an object.
    let broken = futures_util::stream::iter(vec![
        Ok(Bytes::from(vec![1u8; 6 << 20])),
        Err(std::io::Error::other("the client went away")),
    ]);
    let failed = k
        .storage
        .upload_stream("documents", "broken.bin", broken, UploadOptions::default())
        .await;
    assert!(failed.is_err());
    assert!(k.storage.object("documents", "broken.bin").await.is_err());
    assert_eq!(k.in_s3("documents", "broken.bin").await, None);
}

#[tokio::test]
async fn signed_urls_and_the_router_serve_objects_from_s3() {
    let k = kit().await;
    let body: Vec<u8> = (0..=255u8).collect();
    let public = k
        .storage
        .upload_file(
            "avatars",
            "dir/pic.jpg",
            body.clone(),
            UploadOptions {
                content_type: "image/jpeg".into(),
                ..Default::default()
            },
        )
        .await
        .expect("upload");
    let (status, headers, got) = http_get(&public, &[]).await;
    assert_eq!((status, got.as_slice()), (200, body.as_slice()));
    assert_eq!(header(&headers, "content-type"), Some("image/jpeg"));
    let (status, headers, got) = http_get(&public, &[("Range", "bytes=10-19")]).await;
    assert_eq!(status, 206);
    assert_eq!(got, body[10..20].to_vec());
    assert_eq!(header(&headers, "content-range"), Some("bytes 10-19/256"));
    k.storage
        .upload_file(
            "documents",
            "private.txt",
            b"secret".to_vec(),
            UploadOptions::default(),
        )
        .await
        .expect("upload");
    let signed = k
        .storage
        .create_signed_url("documents", "private.txt", 60)
        .await
        .expect("sign");
    let (status, _, got) = http_get(&signed, &[]).await;
    assert_eq!((status, got.as_slice()), (200, &b"secret"[..]));
    let unsigned = signed
        .split('?')
        .next()
        .expect("url")
        .replace("/sign/", "/public/");
    assert_ne!(
        http_get(&unsigned, &[]).await.0,
        200,
        "a private bucket needs a token"
    );
}

/// A caller that stops waiting mid-way (a dropped future, a client gone) never leaves
/// a row without its bytes or bytes without a row: deletes and moves finish in a task
/// of their own (found from outside, round 20: a delete dropped after its S3 delete
/// and before COMMIT kept the row).
#[tokio::test]
async fn dropped_deletes_and_moves_keep_rows_and_bytes_together() {
    let k = kit().await;
    let body = vec![7u8; 256 * 1024];
    for n in 0..16u64 {
        let (from, to) = (format!("d/{n}"), format!("moved/{n}"));
        k.storage
            .upload_file("documents", &from, body.clone(), UploadOptions::default())
            .await
            .expect("upload");
        let cut = std::time::Duration::from_micros(500 * n);
        let path = from.clone();
        match n % 2 {
            0 => {
                let _ =
                    tokio::time::timeout(cut, k.storage.delete_files("documents", &[&path])).await;
            }
            _ => {
                let _ =
                    tokio::time::timeout(cut, k.storage.move_file("documents", &path, &to)).await;
            }
        }
        // Whatever the cut interrupted goes on to its end; then rows and bytes agree.
        let mut agreed = false;
        for _ in 0..100 {
            let mut all = true;
            for path in [&from, &to] {
                let row = k.storage.object("documents", path).await.is_ok();
                let bytes = k.in_s3("documents", path).await.is_some();
                all &= row == bytes;
            }
            if all {
                agreed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            agreed,
            "{from} / {to}: a row without bytes or bytes without a row"
        );
    }
}

/// The multipart uploads S3 holds open in the test bucket (moto answers an unsigned
/// `GET /{bucket}?uploads`).
async fn open_uploads(s3: &S3Server) -> usize {
    let url = format!(
        "{}/tabula-files?uploads",
        s3.endpoint().trim_end_matches('/')
    );
    let (status, _, body) = http_get(&url, &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body).matches("<Upload>").count()
}

/// An upload whose caller stops waiting after a part went up: its multipart upload is
/// aborted and nothing is left under `.tmp/` (S3 would keep the parts, billed, until a
/// lifecycle rule ends them).
#[tokio::test]
async fn a_dropped_upload_leaves_no_open_multipart_upload_and_no_temporary_object() {
    let k = kit().await;
    assert_eq!(open_uploads(&k.s3).await, 0);
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<()>();
    let mut sent_tx = Some(sent_tx);
    // 6 MiB (more than one 5 MiB part), then a body that never ends.
    let body = futures_util::stream::iter((0..6).map(|_| Ok(Bytes::from(vec![7u8; 1 << 20]))))
        .chain(futures_util::stream::poll_fn(move |_| {
            if let Some(tx) = sent_tx.take() {
                let _ = tx.send(());
            }
            std::task::Poll::Pending
        }));
    let upload = k
        .storage
        .upload_stream("documents", "never.bin", body, UploadOptions::default());
    tokio::select! {
        _ = upload => panic!("the body never ends"),
        _ = async {
            sent_rx.await.expect("body read");
            // Let the first part reach S3.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        } => {}
    }
    // Dropped. Its clean-up runs in a task of its own.
    let mut open = usize::MAX;
    for _ in 0..100 {
        open = open_uploads(&k.s3).await;
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        open, 0,
        "the dropped upload's multipart upload is still open"
    );
    assert_eq!(k.in_s3("documents", "never.bin").await, None);
}

/// A store that accepts connections and never answers costs an operation the request
/// timeout times its retries — not object_store's default of minutes.
#[tokio::test]
async fn a_silent_store_fails_within_the_configured_timeout_and_retries() {
    let (_, url) = common::db_and_url().await;
    let db = Db::connect(&url).await.expect("db");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream); // never answered
        }
    });
    let options =
        tabula::storage::S3Options::new("tabula-files", "us-east-1", "testing", "testing")
            .endpoint(endpoint)
            .timeout(std::time::Duration::from_millis(300))
            .retries(1, std::time::Duration::from_secs(2));
    let storage = StorageService::s3(db, options, KEY, "http://127.0.0.1:1").expect("storage");
    storage
        .create_bucket("b", BucketOptions::default())
        .await
        .expect("bucket");
    let started = std::time::Instant::now();
    let err = storage
        .upload_file(
            "b",
            "x.txt",
            Bytes::from_static(b"x"),
            UploadOptions::default(),
        )
        .await
        .expect_err("nothing answers");
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// A malformed endpoint is refused when the service is made, not at its first call.
#[tokio::test]
async fn a_malformed_endpoint_is_refused_at_construction() {
    let (_, url) = common::db_and_url().await;
    let db = Db::connect(&url).await.expect("db");
    for endpoint in [
        "",
        "127.0.0.1:9000",
        "ftp://host",
        "http://",
        "http:// host",
        "http://:9000",
    ] {
        let options =
            tabula::storage::S3Options::new("b", "us-east-1", "k", "s").endpoint(endpoint);
        let err =
            StorageService::s3(db.clone(), options, KEY, "http://127.0.0.1:1").expect_err(endpoint);
        assert!(matches!(err, Error::Config(_)), "{endpoint}: {err:?}");
    }
}

/// An upsert over a row whose bytes were deleted behind the service's back (by hand,
/// a lifecycle rule) replaces the row and stores the new bytes: there is nothing to
/// set aside, which is no reason to fail.
#[tokio::test]
async fn an_upsert_over_a_row_whose_bytes_vanished_stores_the_new_bytes() {
    use object_store::ObjectStoreExt;
    let k = kit().await;
    k.storage
        .upload_file(
            "documents",
            "gone.txt",
            Bytes::from_static(b"old"),
            UploadOptions::default(),
        )
        .await
        .expect("upload");
    k.raw_store()
        .delete(&object_store::path::Path::from("documents/gone.txt"))
        .await
        .expect("delete behind the service's back");
    let upsert = UploadOptions {
        upsert: true,
        ..Default::default()
    };
    k.storage
        .upload_file("documents", "gone.txt", Bytes::from_static(b"new"), upsert)
        .await
        .expect("upsert");
    assert_eq!(
        k.in_s3("documents", "gone.txt").await.as_deref(),
        Some(&b"new"[..])
    );
    let (_, bytes) = k
        .storage
        .download("documents", "gone.txt")
        .await
        .expect("download");
    assert_eq!(&bytes[..], b"new");
}
