//! Uploads: stream to a temporary object, then — in one transaction that holds the
//! key's lock — check, write the metadata row and rename the bytes into place.
//!
//! # Concurrency
//!
//! Every writer of a key first takes transaction-scoped PostgreSQL advisory locks:
//! shared on each folder above the key, exclusive on the key itself (in that order,
//! shallowest first, so two writers can never wait on each other in a cycle). Uploads
//! to one key therefore run their check-write-rename one at a time, and so do an
//! upload to `a` and one to `a/b` (which would make `a` both a file and a folder),
//! while uploads to `a/b` and `a/c` do not wait on each other. Without `upsert`
//! exactly one of several concurrent uploads wins and the others get
//! [`Error::AlreadyExists`]; with it, the object ends as the last upload, whole, with
//! its metadata. A loser's bytes never leave its temporary object, which is deleted.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::signing::Grant;
use super::{
    FileObject, NewFileObject, Purpose, StorageService, UploadOptions, check_no_clash, keys,
    store_error, validate_path,
};
use crate::db::Db;
use crate::error::{Error, Result};

/// First key of the two-key advisory locks on object keys (`tbst`); the two-key space
/// never meets the one-key space that migrations and most applications use.
const KEY_LOCK_CLASS: i32 = 0x7462_7374;

/// Second key of the advisory lock on `bucket`/`key`: 32 bits of its SHA-256. Two keys
/// that collide only wait on each other more than they need to.
fn lock_id(bucket: &str, key: &str) -> i32 {
    let digest = Sha256::digest(format!("{bucket}\n{key}").as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Takes the write lock of `bucket`/`path` for the rest of the transaction `tx`: shared
/// on each folder above it, then exclusive on the key (see the [module docs](self)).
pub(super) async fn lock_key(tx: &Db, bucket: &str, path: &str) -> Result<()> {
    let folders: Vec<i32> = path
        .match_indices('/')
        .map(|(i, _)| lock_id(bucket, &path[..i]))
        .collect();
    let key = lock_id(bucket, path);
    tx.with_client(async |c| {
        for folder in &folders {
            c.execute(
                "SELECT pg_advisory_xact_lock_shared($1, $2)",
                &[&KEY_LOCK_CLASS, folder],
            )
            .await?;
        }
        c.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&KEY_LOCK_CLASS, &key],
        )
        .await?;
        Ok(())
    })
    .await
}

impl StorageService {
    /// Uploads `body` to `bucket`/`path` and returns its public URL. Without `options.upsert`, an existing object is
    /// [`Error::AlreadyExists`], also when several uploads race for one new key: exactly
    /// one wins.
    ///
    /// ```no_run
    /// # async fn run(storage: tabula::storage::StorageService) -> tabula::Result<()> {
    /// let url = storage.upload_file("avatars", "user123/avatar.jpg", b"...".to_vec(), tabula::storage::UploadOptions {
    ///     content_type: "image/jpeg".into(), cache_control: "3600".into(), ..Default::default()
    /// }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn upload_file(
        &self,
        bucket: &str,
        path: &str,
        body: impl Into<Bytes>,
        options: UploadOptions,
    ) -> Result<String> {
        let body: Bytes = body.into();
        let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
        self.upload_stream(bucket, path, stream, options).await
    }

    /// Uploads a body that arrives in chunks, without holding it whole in memory; see
    /// [`upload_file`](Self::upload_file) and the [module docs](super).
    #[tracing::instrument(name = "tabula.storage.upload_stream", skip_all, fields(bucket = bucket, path = path))]
    pub async fn upload_stream(
        &self,
        bucket: &str,
        path: &str,
        body: impl Stream<Item = std::io::Result<Bytes>> + Send,
        options: UploadOptions,
    ) -> Result<String> {
        super::recorded(
            "upload",
            Box::pin(self.upload(bucket, path, body, options, None)),
        )
        .await
    }

    /// Uploads with a token of [`create_signed_upload_url`](Self::create_signed_upload_url)
    /// (what `http::router` does for `PUT /object/upload/sign/…`).
    ///
    /// The token must be valid for [`Purpose::Upload`] on exactly `bucket`/`path`
    /// ([`Error::PermissionDenied`] otherwise), and it is **single-use**: its id is
    /// recorded in `storage.upload_tokens` in the transaction that writes the object,
    /// so of several uploads with one token — one after another or at once — exactly one
    /// succeeds; the others are [`Error::PermissionDenied`] and leave no bytes behind.
    /// An upload that fails (too large, refused type, broken body) does not consume
    /// the token. `options.upsert` says whether it may replace an existing object.
    pub async fn upload_signed_stream(
        &self,
        bucket: &str,
        path: &str,
        token: &str,
        body: impl Stream<Item = std::io::Result<Bytes>> + Send,
        options: UploadOptions,
    ) -> Result<String> {
        super::recorded(
            "signed_upload",
            Box::pin(async {
                let grant = self.grant(Purpose::Upload, bucket, path, token)?;
                // Refuse a spent token before reading the body; the transaction below
                // decides for uploads that race.
                let spent = self
                    .db
                    .with_client(async |c| {
                        Ok(c.query_opt(
                            "SELECT 1 FROM storage.upload_tokens WHERE id = $1",
                            &[&grant.nonce],
                        )
                        .await?
                        .is_some())
                    })
                    .await?;
                if spent {
                    return Err(token_spent());
                }
                self.upload(bucket, path, body, options, Some(grant)).await
            }),
        )
        .await
    }

    async fn upload(
        &self,
        bucket: &str,
        path: &str,
        body: impl Stream<Item = std::io::Result<Bytes>> + Send,
        options: UploadOptions,
        grant: Option<Grant>,
    ) -> Result<String> {
        self.own_transactions()?;
        validate_path(path)?;
        let bucket_row = self.bucket(bucket).await?;
        if let Some(allowed) = &bucket_row.allowed_mime_types
            && !allowed
                .iter()
                .any(|pattern| keys::mime_matches(pattern, &options.content_type))
        {
            return Err(Error::Validation(format!(
                "content type `{}` is not allowed in bucket `{bucket}`",
                options.content_type.escape_debug()
            )));
        }
        let cache_control = keys::cache_control(&options.cache_control)?;
        let limit = bucket_row.file_size_limit.unwrap_or(i64::MAX);
        let key = format!("{bucket}/{path}");

        // 1. Stream to a temporary object, hashing and counting as we go.
        let temp = StorePath::from(format!(".tmp/{}", Uuid::new_v4()));
        let upload = self
            .store
            .put_multipart(&temp)
            .await
            .map_err(store_error("writing", &key))?;
        let mut staged = Staged {
            store: self.store.clone(),
            temp: Some(temp),
            writer: Some(object_store::WriteMultipart::new(upload)),
        };
        let mut hasher = Sha256::new();
        let mut size: i64 = 0;
        let mut body = std::pin::pin!(body);
        let streamed: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::Storage {
                    message: format!("reading the upload body of `{key}` failed"),
                    source: Some(Box::new(e)),
                })?;
                size += chunk.len() as i64;
                if size > limit {
                    return Err(Error::Validation(format!(
                        "object is larger than bucket `{bucket}` allows ({limit} bytes)"
                    )));
                }
                hasher.update(&chunk);
                let Some(writer) = staged.writer.as_mut() else {
                    return Err(Error::Storage {
                        message: "the upload's writer is gone".into(),
                        source: None,
                    });
                };
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(store_error("writing", &key))?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        let Some(writer) = staged.writer.take() else {
            return Err(Error::Storage {
                message: "the upload's writer is gone".into(),
                source: None,
            });
        };
        if let Err(e) = streamed {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(store_error("writing", &key))?;
        let temp = staged.hand_over();
        let etag: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();

        // 2. Under the key's lock: checks, metadata row and rename, in one transaction
        // — in a task of its own, so that a caller that stops waiting (a dropped
        // future, a client gone) cannot separate the row from its bytes mid-way.
        let this = self.clone();
        let (bucket, path) = (bucket.to_owned(), path.to_owned());
        crate::db::join_task(tokio::spawn(async move {
            this.finish_upload(
                &bucket,
                &path,
                Finished {
                    temp,
                    key,
                    etag,
                    size,
                    cache_control,
                },
                options,
                grant,
            )
            .await
        }))
        .await
    }

    /// Step 2 of [`upload`](Self::upload): the streamed bytes at `done.temp` become
    /// the object.
    async fn finish_upload(
        &self,
        bucket: &str,
        path: &str,
        done: Finished,
        options: UploadOptions,
        grant: Option<Grant>,
    ) -> Result<String> {
        let Finished {
            temp,
            key,
            etag,
            size,
            cache_control,
        } = done;
        let final_path = keys::store_path(bucket, path);
        let row = NewFileObject {
            bucket_id: bucket.to_owned(),
            name: path.to_owned(),
            size,
            content_type: options.content_type.clone(),
            cache_control,
            etag,
            // A token a user minted writes that user's object, whatever else is asked.
            owner: grant
                .and_then(|g| g.owner)
                .or_else(|| self.owner(options.owner)),
            metadata: options.metadata.clone(),
        };
        let upsert = options.upsert;
        // Where the previous bytes wait while the transaction decides, and whether the
        // new ones were moved into place: a COMMIT that fails must undo both.
        let backup = StorePath::from(format!(".tmp/{}.previous", Uuid::new_v4()));
        let moved = std::sync::atomic::AtomicU8::new(MOVED_NOTHING);
        let result = self
            .db
            .transaction(|tx| {
                let (row, temp, final_path, key) = (&row, &temp, &final_path, &key);
                let (backup, moved) = (&backup, &moved);
                async move {
                    lock_key(&tx, bucket, path).await?;
                    if let Some(grant) = grant {
                        consume(&tx, grant, bucket, path).await?;
                    }
                    check_no_clash(&tx, bucket, path).await?;
                    let previous = tx
                        .query::<FileObject>()
                        .filter(FileObject::BUCKET_ID.eq(bucket))
                        .filter(FileObject::NAME.eq(path))
                        .first()
                        .await?;
                    let stored = match &previous {
                        Some(_) if !upsert => {
                            return Err(Error::AlreadyExists(format!("object `{key}`")));
                        }
                        // A user's token never replaces another user's object.
                        Some(prev)
                            if grant
                                .is_some_and(|g| g.owner.is_some() && g.owner != prev.owner) =>
                        {
                            return Err(Error::PermissionDenied {
                                message: format!("object `{key}` belongs to another user"),
                            });
                        }
                        Some(_) => {
                            tx.upsert(row.clone(), (FileObject::BUCKET_ID, FileObject::NAME))
                                .await?
                        }
                        // A plain INSERT: should a writer ever bypass the lock, the
                        // unique key still refuses the second row.
                        None => tx.create(row.clone()).await?,
                    };
                    if previous.is_some() {
                        match self.store.rename(final_path, backup).await {
                            Ok(()) => moved
                                .store(MOVED_PREVIOUS_ASIDE, std::sync::atomic::Ordering::Release),
                            // The row's bytes were removed behind the service's back:
                            // nothing to set aside, the new bytes replace nothing.
                            Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => {
                                return Err(
                                    store_error("setting the previous version aside", key)(e),
                                );
                            }
                        }
                    }
                    self.store
                        .rename(temp, final_path)
                        .await
                        .map_err(store_error("moving into place", key))?;
                    moved.fetch_or(MOVED_NEW_IN, std::sync::atomic::Ordering::AcqRel);
                    Ok((stored, previous))
                }
            })
            .await;
        let moved = moved.load(std::sync::atomic::Ordering::Acquire);
        let (stored, previous) = match result {
            Ok(pair) => {
                let _ = self.store.delete(&backup).await;
                pair
            }
            Err(e) => {
                let _ = self.store.delete(&temp).await;
                if moved != MOVED_NOTHING {
                    self.undo_failed_upload(bucket, path, &final_path, &backup, moved)
                        .await;
                }
                return Err(match e {
                    Error::UniqueViolation { .. } => {
                        Error::AlreadyExists(format!("object `{key}`"))
                    }
                    other => other,
                });
            }
        };
        if let Some(previous) = previous
            && previous.etag != stored.etag
        {
            self.forget_cached(&previous).await;
        }
        Ok(self.public_url(bucket, path))
    }
}

/// What step 1 of an upload leaves for step 2: the streamed bytes' temporary object,
/// the object's name for errors, its hash, size and cache control.
struct Finished {
    temp: StorePath,
    key: String,
    etag: String,
    size: i64,
    cache_control: String,
}

/// What a failed upload's transaction had moved (bit flags).
const MOVED_NOTHING: u8 = 0;
const MOVED_PREVIOUS_ASIDE: u8 = 1;
const MOVED_NEW_IN: u8 = 2;

impl StorageService {
    /// The transaction of an upload failed after its bytes were moved (a COMMIT that
    /// failed, or whose answer was lost): put the store back in line with the metadata,
    /// under the key's lock again. The row that stands decides: none — no bytes; the
    /// previous version — its bytes back; anything else (this upload did commit after
    /// all, or another writer came since) — the bytes in place are right.
    async fn undo_failed_upload(
        &self,
        bucket: &str,
        path: &str,
        final_path: &StorePath,
        backup: &StorePath,
        moved: u8,
    ) {
        let repaired = self
            .db
            .transaction(|tx| async move {
                lock_key(&tx, bucket, path).await?;
                let standing = tx
                    .query::<FileObject>()
                    .filter(FileObject::BUCKET_ID.eq(bucket))
                    .filter(FileObject::NAME.eq(path))
                    .first()
                    .await?;
                let store = &self.store;
                match standing {
                    None if moved & MOVED_NEW_IN != 0 => {
                        let _ = store.delete(final_path).await;
                    }
                    Some(row) if moved & MOVED_PREVIOUS_ASIDE != 0 => {
                        let in_place = match store.head(final_path).await {
                            Ok(meta) => meta.size as i64 == row.size,
                            Err(_) => false,
                        };
                        // The previous version's bytes go back unless what is in
                        // place already matches the row (this upload committed after
                        // all, or another writer came since).
                        let matches_row = moved & MOVED_NEW_IN != 0
                            && in_place
                            && self.etag_of(final_path).await.as_deref() == Some(&row.etag);
                        if !matches_row {
                            let _ = store.rename(backup, final_path).await;
                        }
                    }
                    _ => {}
                }
                Ok(())
            })
            .await;
        if let Err(e) = repaired {
            tracing::warn!(error = %e, bucket, "could not tidy up after a failed upload");
        }
        let _ = self.store.delete(backup).await;
    }

    /// The SHA-256 (hex) of the bytes stored at `path`, as upload computes etags.
    async fn etag_of(&self, path: &StorePath) -> Option<String> {
        let bytes = self.store.get(path).await.ok()?.bytes().await.ok()?;
        Some(
            Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }
}

fn token_spent() -> Error {
    Error::PermissionDenied {
        message: "signed upload URL was already used".into(),
    }
}

/// Records `grant` as used, inside the upload's transaction: the row commits with the
/// object or not at all. A concurrent upload with the same token waits on the primary
/// key until this transaction ends, then finds it taken. Rows of tokens expired for a
/// day are removed on the way (a day of margin for clock skew between this process,
/// which checks expiry, and the database).
async fn consume(tx: &Db, grant: Grant, bucket: &str, path: &str) -> Result<()> {
    let recorded = tx
        .with_client(async |c| {
            c.execute(
                "DELETE FROM storage.upload_tokens WHERE expires_at < now() - interval '1 day'",
                &[],
            )
            .await?;
            Ok(c.execute(
                "INSERT INTO storage.upload_tokens (id, bucket_id, name, expires_at) \
                 VALUES ($1, $2, $3, to_timestamp($4::int8)) ON CONFLICT (id) DO NOTHING",
                &[&grant.nonce, &bucket, &path, &grant.expires],
            )
            .await?)
        })
        .await?;
    if recorded == 1 {
        Ok(())
    } else {
        Err(token_spent())
    }
}

/// The temporary object of an upload still streaming: when the upload stops before
/// step 2 takes the object over — an error, or the caller's future dropped — its
/// multipart upload is aborted (on S3 its parts would otherwise be kept, and billed,
/// until a lifecycle rule ends them) and whatever was written is deleted, in a task of
/// its own.
struct Staged {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    temp: Option<StorePath>,
    writer: Option<object_store::WriteMultipart>,
}

impl Staged {
    /// Step 2 owns the object from here (it removes it on every path).
    fn hand_over(mut self) -> StorePath {
        self.temp
            .take()
            .unwrap_or_else(|| StorePath::from(".tmp/none"))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let Some(temp) = self.temp.take() else {
            return;
        };
        let (store, writer) = (self.store.clone(), self.writer.take());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(writer) = writer {
                    let _ = writer.abort().await;
                }
                let _ = store.delete(&temp).await;
            });
        }
    }
}
