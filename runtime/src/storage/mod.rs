//! File storage: buckets and objects whose bytes live in an object store (the local
//! filesystem by default; any `object_store` backend by configuration) and whose
//! metadata lives in PostgreSQL (`storage.buckets`, `storage.objects`), so listing,
//! sorting and permissions work like the rest of Tabula. The `storage` schema is part
//! of Tabula's built-in migrations: apply them with
//! [`Migrator::with_builtin`](crate::migrate::Migrator::with_builtin).
//!
//! # Consistency
//!
//! An upload streams the body to a temporary object, then — in one database
//! transaction — writes the metadata row and renames the temporary object into place.
//! A failed or interrupted upload therefore leaves no row pointing at missing bytes and
//! no visible partial object (at worst an invisible temporary file). Concurrent writes
//! to one key serialize on an advisory lock of that key (see [`upload`](self#uploads)):
//! without `upsert` exactly one of them succeeds and the others are
//! [`Error::AlreadyExists`]; with it, the object ends as one of the uploads, whole,
//! with matching metadata.
//!
//! # Uploads
//!
//! Every writer of a key holds, for its transaction, a shared advisory lock on each
//! folder above the key and an exclusive one on the key, shallowest first: writes to
//! one key (or to `a` and `a/b`) run one at a time, writes to `a/b` and `a/c` do not
//! wait on each other, and no two writers can wait on each other in a cycle.
//!
//! # Errors
//!
//! Object-store failures are [`Error::Storage`] whose message names the operation and
//! the object key but never a server path (a filesystem store's errors name its files);
//! the store's error is kept as the [source](std::error::Error::source), for logs.
//!
//! # Caching and signing
//!
//! Small objects are cached on download under their ETag, honouring the object's
//! `cache_control` (`no-store`/`no-cache`/`private` are never cached; `max-age` sets the
//! TTL); an overwrite changes the ETag, so an old copy can never be served, and the old
//! entry is deleted. Signed URLs carry an HMAC-SHA256 over purpose, bucket, exact path,
//! expiry and a random nonce, checked in constant time; the key comes from configuration (at least 32
//! bytes), never a default.
//!
//! A token is `<expires>.<nonce>.<tag>`: the expiry in Unix seconds (decimal digits, no
//! sign, no leading zero), 16 random bytes and the HMAC, both in lowercase hex of exact
//! length. Only that canonical form verifies (a parsed token is rendered again and
//! compared byte for byte), so one grant has one spelling. Download tokens work until
//! they expire; upload tokens are single-use
//! ([`StorageService::upload_signed_stream`]).

mod download;
#[cfg(feature = "http")]
pub mod http;
mod keys;
mod listing;
mod objects;
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
mod s3;
mod signing;
mod upload;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The byte buffers uploads take and downloads give (the `bytes` crate's).
pub use bytes::Bytes;
pub use keys::{validate_bucket, validate_path};
#[cfg(feature = "s3")]
pub use s3::S3Options;

use crate::Table;
use crate::cache::CacheService;
use crate::db::Db;
use crate::error::{Error, Result};

/// A bucket row.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(schema = "storage", name = "buckets")]
pub struct Bucket {
    /// The bucket's name.
    #[table(primary_key)]
    pub id: String,
    /// Whether objects are served without a signature.
    pub public: bool,
    /// Largest object accepted, in bytes.
    pub file_size_limit: Option<i64>,
    /// Content types accepted (`image/*` wildcards allowed); all when absent.
    #[table(json)]
    pub allowed_mime_types: Option<Vec<String>>,
    /// When it was created.
    #[table(generated)]
    pub created_at: DateTime<Utc>,
}

/// An object's metadata row. With a cache, rows are cached (by id, and by bucket and
/// path — see [`StorageService::object`]) and every write drops them as any model's.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(schema = "storage", name = "objects", cache(ttl = 300))]
pub struct FileObject {
    /// Row id.
    #[table(primary_key, generated)]
    pub id: Uuid,
    /// Its bucket.
    pub bucket_id: String,
    /// Its path inside the bucket.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// MIME type.
    pub content_type: String,
    /// `Cache-Control` to serve it with.
    pub cache_control: String,
    /// SHA-256 of the bytes (hex), the ETag.
    pub etag: String,
    /// The user who uploaded it, if known.
    pub owner: Option<Uuid>,
    /// User metadata.
    pub metadata: serde_json::Value,
    /// When it was first uploaded.
    #[table(generated)]
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    #[table(generated)]
    pub updated_at: DateTime<Utc>,
}

/// How a bucket is created.
#[derive(Debug, Clone, Default)]
pub struct BucketOptions {
    /// Served without a signature.
    pub public: bool,
    /// Largest object accepted, in bytes.
    pub max_size: Option<u64>,
    /// Accepted content types (`image/*` allowed); all when `None`.
    pub allowed_types: Option<Vec<String>>,
}

/// How a file is uploaded (content type, caching, upsert).
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// MIME type; default `application/octet-stream`.
    pub content_type: String,
    /// `Cache-Control` in seconds (`"3600"` → `max-age=3600`), or a full
    /// header value. Default `max-age=3600`.
    pub cache_control: String,
    /// Overwrite an existing object instead of failing with [`Error::Conflict`].
    pub upsert: bool,
    /// The uploading user.
    pub owner: Option<Uuid>,
    /// User metadata stored with the object.
    pub metadata: serde_json::Value,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            content_type: "application/octet-stream".into(),
            cache_control: "max-age=3600".into(),
            upsert: false,
            owner: None,
            metadata: serde_json::json!({}),
        }
    }
}

/// Sort column of [`ListOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortColumn {
    /// By path.
    #[default]
    Name,
    /// By first upload.
    CreatedAt,
    /// By last write.
    UpdatedAt,
    /// By size.
    Size,
}

/// How [`StorageService::list_files`] sorts, pages and filters.
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// At most this many (default 100, at most 1000).
    pub limit: u64,
    /// Skip this many.
    pub offset: u64,
    /// Only names containing this text (case-insensitive).
    pub search: Option<String>,
    /// Sort column.
    pub sort_by: SortColumn,
    /// Descending.
    pub descending: bool,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions {
            limit: 100,
            offset: 0,
            search: None,
            sort_by: SortColumn::Name,
            descending: false,
        }
    }
}

/// Objects at most this large are cached on download.
const CACHE_MAX_BYTES: i64 = 256 * 1024;

/// What a signed URL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Reading the object.
    Download,
    /// Writing the object: one upload to exactly that path (the token is single-use).
    Upload,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Download => "download",
            Purpose::Upload => "upload",
        }
    }
}

/// The storage service; see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct StorageService {
    db: Db,
    store: Arc<dyn ObjectStore>,
    signing_key: Arc<[u8]>,
    base_url: Arc<str>,
    cache: Option<CacheService>,
}

impl std::fmt::Debug for StorageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageService")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl StorageService {
    /// A service over `store`, signing with `signing_key` (at least 32 bytes), building
    /// URLs under `base_url` (where `http::router`, feature `http`, is served), caching downloads in the
    /// `Db`'s cache when it has one.
    ///
    /// ```no_run
    /// # fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let store = std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix("/srv/files").unwrap());
    /// let storage = tabula::storage::StorageService::new(db, store, b"a signing key of thirty-two bytes!!", "https://files.example.com")?;
    /// # Ok(()) }
    /// ```
    pub fn new(
        db: Db,
        store: Arc<dyn ObjectStore>,
        signing_key: &[u8],
        base_url: &str,
    ) -> Result<Self> {
        if signing_key.len() < 32 {
            return Err(Error::Config(
                "the storage signing key must be at least 32 bytes".into(),
            ));
        }
        let cache = db.cache().cloned();
        Ok(StorageService {
            db,
            store,
            signing_key: signing_key.into(),
            base_url: base_url.trim_end_matches('/').into(),
            cache,
        })
    }

    /// A service on the local filesystem under `root` (created if missing).
    ///
    /// ```no_run
    /// # fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let storage = tabula::storage::StorageService::local(db, "/srv/files", b"a signing key of thirty-two bytes!!", "http://localhost:3000")?;
    /// # Ok(()) }
    /// ```
    pub fn local(
        db: Db,
        root: impl AsRef<std::path::Path>,
        signing_key: &[u8],
        base_url: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(root.as_ref()).map_err(|e| {
            Error::Config(format!(
                "cannot create storage root {}: {e}",
                root.as_ref().display()
            ))
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(root.as_ref())
            .map_err(|e| Error::Config(format!("cannot open storage root: {e}")))?;
        StorageService::new(db, Arc::new(store), signing_key, base_url)
    }

    /// This service acting through `db` — typically a user-scoped handle
    /// ([`Db::as_user`], or `Db::as_jwt` with the `jwt` feature): every metadata read and
    /// write then runs under the storage policies of Tabula's built-in migrations —
    /// a user reads and writes their own objects and reads public buckets' — and an
    /// upload is owned by the handle's user. Bytes are only ever reached through a
    /// metadata row the handle may see, so the policies cover them too.
    ///
    /// ```no_run
    /// # async fn run(storage: tabula::storage::StorageService, db: tabula::Db, user: uuid::Uuid) -> tabula::Result<()> {
    /// let mine = storage.through(&db.as_user(user));
    /// let files = mine.list_files("avatars", "", Default::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn through(&self, db: &Db) -> StorageService {
        StorageService {
            db: db.clone(),
            cache: db.cache().cloned(),
            ..self.clone()
        }
    }

    /// This service acting as the user `user` (see [`through`](Self::through)).
    ///
    /// ```no_run
    /// # async fn run(storage: tabula::storage::StorageService, user: uuid::Uuid) -> tabula::Result<()> {
    /// let bytes = storage.as_user(user).download_file("private", "report.pdf").await?;
    /// # Ok(()) }
    /// ```
    pub fn as_user(&self, user: Uuid) -> StorageService {
        self.through(&self.db.as_user(user))
    }

    /// Storage writes run their own transactions, which move bytes when they commit: a
    /// service over a transaction handle would move them at a savepoint that the outer
    /// transaction may still roll back.
    ///
    /// Asked on the caller's task before any work is spawned: a user-scoped call's
    /// transaction is found through a task-local a spawned task does not see.
    fn own_transactions(&self) -> Result<()> {
        match self.db.in_enclosing_transaction() {
            true => Err(Error::Misuse(
                "storage writes run their own transactions: use a handle outside a \
                 transaction and outside its own `with_client` body (StorageService::through \
                 a transaction handle cannot write)"
                    .into(),
            )),
            false => Ok(()),
        }
    }

    /// The owner of what this service writes: the one asked for, or the scoped
    /// handle's user.
    fn owner(&self, asked: Option<Uuid>) -> Option<Uuid> {
        asked.or_else(|| self.db.scope_subject())
    }

    /// Creates a bucket.
    #[tracing::instrument(name = "tabula.storage.create_bucket", skip_all, fields(bucket = name))]
    pub async fn create_bucket(&self, name: &str, options: BucketOptions) -> Result<Bucket> {
        recorded(
            "create_bucket",
            Box::pin(async {
                validate_bucket(name)?;
                let max = options
                    .max_size
                    .map(|m| i64::try_from(m).unwrap_or(i64::MAX));
                self.db
                    .create(NewBucket {
                        id: name.to_owned(),
                        public: options.public,
                        file_size_limit: max,
                        allowed_mime_types: options.allowed_types,
                    })
                    .await
            }),
        )
        .await
    }

    async fn bucket(&self, name: &str) -> Result<Bucket> {
        validate_bucket(name)?;
        self.db
            .read::<Bucket>(name.to_owned())
            .await?
            .ok_or(Error::NotFound {
                table: "storage.buckets",
            })
    }

    /// The metadata of an object. With a cache, from the row cache when it holds it:
    /// bucket and path map to the object's id like a unique value (one round trip
    /// for both), trusted only while the row still has that bucket and path — so a
    /// cached download asks the database nothing.
    pub async fn object(&self, bucket: &str, path: &str) -> Result<FileObject> {
        validate_bucket(bucket)?;
        validate_path(path)?;
        let name = format!("#(bucket_id,name):{}", serde_json::json!([bucket, path]));
        let reader = self.db.for_fill();
        self.db
            .find_unique_by::<FileObject, _>(
                name,
                |object| object.bucket_id == bucket && object.name == path,
                || {
                    reader
                        .query::<FileObject>()
                        .filter(FileObject::BUCKET_ID.eq(bucket))
                        .filter(FileObject::NAME.eq(path))
                        .first()
                },
            )
            .await?
            .ok_or(Error::NotFound {
                table: "storage.objects",
            })
    }

    /// The URL of an object in a public bucket.
    pub fn public_url(&self, bucket: &str, path: &str) -> String {
        format!(
            "{}/object/public/{bucket}/{}",
            self.base_url,
            keys::encode_path(path)
        )
    }

    fn cache_key(object: &FileObject) -> String {
        format!(
            "__storage:{}:{}:{}",
            object.bucket_id, object.name, object.etag
        )
    }

    async fn forget_cached(&self, object: &FileObject) {
        if let Some(cache) = &self.cache {
            let _ = cache.delete(&Self::cache_key(object)).await;
        }
    }
}

/// Runs a storage operation and records its duration (`tabula_storage_operation_seconds`).
async fn recorded<T>(
    operation: &'static str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = std::time::Instant::now();
    let result = work.await;
    crate::monitor::record_storage(operation, started, &result);
    result
}

/// Refuses a key that is a folder of another object (`a` when `a/b` exists) or lies
/// under one (`a/b` when `a` exists). Object stores allow both, filesystems do not;
/// refusing everywhere keeps buckets portable between backends.
async fn check_no_clash(tx: &Db, bucket: &str, path: &str) -> Result<()> {
    // Over every object, whoever owns it (a SECURITY DEFINER function: a scoped user
    // cannot see the others' objects, and must not make them unreachable either); it
    // says yes or no, never which object.
    let (bucket_name, key) = (bucket.to_owned(), path.to_owned());
    let clash: bool = tx
        .with_client(async |c| {
            let row = c
                .query_one("SELECT storage.path_clashes($1, $2)", &[&bucket_name, &key])
                .await?;
            Ok(row.get(0))
        })
        .await?;
    if clash {
        return Err(Error::AlreadyExists(format!(
            "an object that clashes with `{bucket}/{path}` (a key cannot be both a file and a folder)"
        )));
    }
    Ok(())
}

/// Maps an object-store error met while `operation` (`"reading"`, …) the object `key`
/// (`bucket/path`): a missing object is [`Error::NotFound`]; anything else is
/// [`Error::Storage`] with a message that names the operation, the key and the kind
/// of failure — never the store's own text, which for a filesystem names server paths —
/// and the store's error as its source.
fn store_error(operation: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> Error {
    let key = key.to_owned();
    move |e| {
        let kind = match &e {
            object_store::Error::NotFound { .. } => {
                return Error::NotFound {
                    table: "storage.objects",
                };
            }
            object_store::Error::AlreadyExists { .. } => "the target exists in the store".into(),
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => "the store denied access".into(),
            object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. } => "the store does not support it".into(),
            object_store::Error::InvalidPath { .. } => "the store refused the path".into(),
            // Look for the operating system's reason (a file name too long, a file where
            // a folder should be…): its kind names no path.
            _ => match io_kind(&e) {
                Some(kind) => format!("the store failed: {kind}"),
                None => "the store failed".into(),
            },
        };
        Error::Storage {
            message: format!("{operation} `{}` failed: {kind}", key.escape_debug()),
            source: Some(Box::new(e)),
        }
    }
}

/// The kind of the first I/O error in `error`'s source chain.
fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}
