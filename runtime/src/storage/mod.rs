//! File storage: buckets and objects whose bytes live in an object store (the local
//! filesystem by default; any `object_store` backend by configuration) and whose
//! metadata lives in PostgreSQL (`storage.buckets`, `storage.objects`), so listing,
//! sorting and permissions work like the rest of Tabula.
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

#[cfg(feature = "http")]
pub mod http;
mod keys;
mod signing;
mod upload;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use keys::{validate_bucket, validate_path};

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

/// An object's metadata row.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(schema = "storage", name = "objects")]
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

    /// The metadata of an object.
    pub async fn object(&self, bucket: &str, path: &str) -> Result<FileObject> {
        validate_bucket(bucket)?;
        validate_path(path)?;
        self.db
            .query::<FileObject>()
            .filter(FileObject::BUCKET_ID.eq(bucket))
            .filter(FileObject::NAME.eq(path))
            .first()
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

    /// The bytes of an object, from the cache when a small
    /// object was downloaded before and its `cache_control` allows it.
    pub async fn download_file(&self, bucket: &str, path: &str) -> Result<Bytes> {
        Ok(self.download(bucket, path).await?.1)
    }

    /// Metadata and bytes of an object.
    #[tracing::instrument(name = "tabula.storage.download", skip_all, fields(bucket = bucket, path = path))]
    pub async fn download(&self, bucket: &str, path: &str) -> Result<(FileObject, Bytes)> {
        recorded(
            "download",
            Box::pin(async {
                let object = self.object(bucket, path).await?;
                let ttl = keys::cache_ttl(&object.cache_control)
                    .filter(|_| object.size <= CACHE_MAX_BYTES);
                if let (Some(cache), Some(_)) = (&self.cache, ttl)
                    && let Ok(Some(bytes)) = cache.get_bytes(&Self::cache_key(&object)).await
                {
                    return Ok((object, Bytes::from(bytes)));
                }
                let bytes = self.read_bytes(&object).await?;
                if let (Some(cache), Some(ttl)) = (&self.cache, ttl) {
                    let _ = cache
                        .set_bytes(&Self::cache_key(&object), bytes.to_vec(), Some(ttl))
                        .await;
                }
                Ok((object, bytes))
            }),
        )
        .await
    }

    /// The bytes of an object straight from the store.
    pub(crate) async fn read_bytes(&self, object: &FileObject) -> Result<Bytes> {
        let location = keys::store_path(&object.bucket_id, &object.name);
        let key = format!("{}/{}", object.bucket_id, object.name);
        let result = self
            .store
            .get(&location)
            .await
            .map_err(store_error("reading", &key))?;
        result.bytes().await.map_err(store_error("reading", &key))
    }

    /// A range of an object's bytes straight from the store.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn read_range(
        &self,
        object: &FileObject,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes> {
        let location = keys::store_path(&object.bucket_id, &object.name);
        self.store
            .get_range(&location, range)
            .await
            .map_err(store_error(
                "reading",
                &format!("{}/{}", object.bucket_id, object.name),
            ))
    }

    /// Objects of `bucket` under `prefix`, sorted and paged.
    #[tracing::instrument(name = "tabula.storage.list_files", skip_all, fields(bucket = bucket))]
    pub async fn list_files(
        &self,
        bucket: &str,
        prefix: &str,
        options: ListOptions,
    ) -> Result<Vec<FileObject>> {
        recorded(
            "list",
            Box::pin(async {
                validate_bucket(bucket)?;
                if !prefix.is_empty() {
                    validate_path(prefix.trim_end_matches('/'))?;
                }
                if options.limit == 0 || options.limit > 1000 {
                    return Err(Error::Validation("limit must be 1 to 1000".into()));
                }
                let mut query = self
                    .db
                    .query::<FileObject>()
                    .filter(FileObject::BUCKET_ID.eq(bucket));
                if !prefix.is_empty() {
                    let prefix = format!("{}/", prefix.trim_end_matches('/'));
                    query = query
                        .filter(FileObject::NAME.like(format!("{}%", keys::escape_like(&prefix))));
                }
                if let Some(search) = &options.search {
                    query = query
                        .filter(FileObject::NAME.ilike(format!("%{}%", keys::escape_like(search))));
                }
                let key = match (options.sort_by, options.descending) {
                    (SortColumn::Name, false) => FileObject::NAME.asc(),
                    (SortColumn::Name, true) => FileObject::NAME.desc(),
                    (SortColumn::CreatedAt, false) => FileObject::CREATED_AT.asc(),
                    (SortColumn::CreatedAt, true) => FileObject::CREATED_AT.desc(),
                    (SortColumn::UpdatedAt, false) => FileObject::UPDATED_AT.asc(),
                    (SortColumn::UpdatedAt, true) => FileObject::UPDATED_AT.desc(),
                    (SortColumn::Size, false) => FileObject::SIZE.asc(),
                    (SortColumn::Size, true) => FileObject::SIZE.desc(),
                };
                query
                    .order_by(key)
                    .order_by(FileObject::NAME.asc())
                    .limit(options.limit)
                    .offset(options.offset)
                    .all()
                    .await
            }),
        )
        .await
    }

    /// Deletes objects; returns how many existed.
    #[tracing::instrument(name = "tabula.storage.delete_files", skip_all, fields(bucket = bucket))]
    pub async fn delete_files(&self, bucket: &str, paths: &[&str]) -> Result<u64> {
        recorded(
            "delete",
            Box::pin(async {
                let mut deleted = 0;
                for path in paths {
                    let Ok(object) = self.object(bucket, path).await else {
                        continue;
                    };
                    let location = keys::store_path(bucket, path);
                    let store = self.store.clone();
                    let id = object.id;
                    self.db
                        .transaction(move |tx| {
                            let (store, location) = (store.clone(), location.clone());
                            async move {
                                tx.hard_delete::<FileObject>(id).await?;
                                match store.delete(&location).await {
                                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                                    Err(e) => {
                                        Err(store_error("deleting", &format!("{bucket}/{path}"))(e))
                                    }
                                }
                            }
                        })
                        .await?;
                    self.forget_cached(&object).await;
                    deleted += 1;
                }
                Ok(deleted)
            }),
        )
        .await
    }

    /// Moves an object to a new path in the same bucket (fails if the target exists).
    pub async fn move_file(&self, bucket: &str, from: &str, to: &str) -> Result<()> {
        self.relocate(bucket, from, to, true).await
    }

    /// Copies an object to a new path in the same bucket (fails if the target exists).
    pub async fn copy_file(&self, bucket: &str, from: &str, to: &str) -> Result<()> {
        self.relocate(bucket, from, to, false).await
    }

    #[tracing::instrument(name = "tabula.storage.relocate", skip_all, fields(bucket = bucket, from = from, to = to))]
    async fn relocate(&self, bucket: &str, from: &str, to: &str, remove: bool) -> Result<()> {
        recorded(
            "relocate",
            Box::pin(async {
                validate_path(to)?;
                let object = self.object(bucket, from).await?;
                let (src, dst) = (keys::store_path(bucket, from), keys::store_path(bucket, to));
                let store = self.store.clone();
                let target = to.to_owned();
                // Whether the bytes were moved or copied: a COMMIT that then fails (or
                // whose answer is lost) must undo that.
                let touched = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let marked = touched.clone();
                let result = self
                    .db
                    .transaction(move |tx| {
                        let (store, src, dst, object, to, marked) = (
                            store.clone(),
                            src.clone(),
                            dst.clone(),
                            object.clone(),
                            target.clone(),
                            marked.clone(),
                        );
                        async move {
                            let copy = NewFileObject {
                                bucket_id: object.bucket_id.clone(),
                                name: to,
                                size: object.size,
                                content_type: object.content_type.clone(),
                                cache_control: object.cache_control.clone(),
                                etag: object.etag.clone(),
                                owner: object.owner,
                                metadata: object.metadata.clone(),
                            };
                            let key = format!("{}/{}", copy.bucket_id, copy.name);
                            upload::lock_key(&tx, &copy.bucket_id, &copy.name).await?;
                            check_no_clash(&tx, &copy.bucket_id, &copy.name).await?;
                            tx.create(copy).await?;
                            if remove {
                                tx.hard_delete::<FileObject>(object.id).await?;
                                store
                                    .rename_if_not_exists(&src, &dst)
                                    .await
                                    .map_err(store_error("moving", &key))?;
                            } else {
                                store
                                    .copy_if_not_exists(&src, &dst)
                                    .await
                                    .map_err(store_error("copying", &key))?;
                            }
                            marked.store(true, std::sync::atomic::Ordering::Release);
                            Ok(())
                        }
                    })
                    .await;
                if result.is_err() && touched.load(std::sync::atomic::Ordering::Acquire) {
                    self.undo_failed_relocate(bucket, from, to, remove).await;
                }
                result.map_err(|e| match e {
                    Error::UniqueViolation { .. } => Error::AlreadyExists("the target path".into()),
                    other => other,
                })
            }),
        )
        .await
    }
}

impl StorageService {
    /// A move or copy whose transaction failed after its bytes moved: if no row stands
    /// at the target (it did not commit), the bytes go back — a move's to the source,
    /// a copy's away — under the target key's lock.
    async fn undo_failed_relocate(&self, bucket: &str, from: &str, to: &str, remove: bool) {
        let (src, dst) = (keys::store_path(bucket, from), keys::store_path(bucket, to));
        let store = &self.store;
        let repaired = self
            .db
            .transaction(|tx| {
                let (src, dst) = (&src, &dst);
                async move {
                    upload::lock_key(&tx, bucket, to).await?;
                    let standing = tx
                        .query::<FileObject>()
                        .filter(FileObject::BUCKET_ID.eq(bucket))
                        .filter(FileObject::NAME.eq(to))
                        .exists()
                        .await?;
                    if !standing {
                        let _ = match remove {
                            true => store.rename_if_not_exists(dst, src).await,
                            false => store.delete(dst).await,
                        };
                    }
                    Ok(())
                }
            })
            .await;
        if let Err(e) = repaired {
            tracing::warn!(error = %e, bucket, "could not tidy up after a failed move or copy");
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
    let folders: Vec<String> = path
        .match_indices('/')
        .map(|(i, _)| path[..i].to_owned())
        .collect();
    let under = format!("{}/%", keys::escape_like(path));
    let clash = tx
        .query::<FileObject>()
        .select(FileObject::NAME)
        .filter(FileObject::BUCKET_ID.eq(bucket))
        .filter(
            FileObject::NAME
                .like(under)
                .or(FileObject::NAME.is_in(folders)),
        )
        .first()
        .await?;
    match clash {
        Some(other) => Err(Error::AlreadyExists(format!(
            "`{bucket}/{other}`, which clashes with `{path}` (a key cannot be both a file and a folder)"
        ))),
        None => Ok(()),
    }
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
