//! Deleting, moving and copying objects: the metadata in one transaction under the
//! keys' locks, the bytes moved with it, and put back if that transaction fails.

use object_store::ObjectStoreExt;

use super::{
    FileObject, NewFileObject, StorageService, check_no_clash, keys, recorded, store_error, upload,
    validate_path,
};
use crate::error::{Error, Result};

impl StorageService {
    /// Deletes objects; returns how many existed.
    ///
    /// Each object's row and bytes go together: the work runs in a task of its own, so
    /// a caller that stops waiting (a dropped future, a client that went away) cannot
    /// leave a row whose bytes were deleted.
    #[tracing::instrument(name = "tabula.storage.delete_files", skip_all, fields(bucket = bucket))]
    pub async fn delete_files(&self, bucket: &str, paths: &[&str]) -> Result<u64> {
        self.own_transactions()?;
        let this = self.clone();
        let bucket = bucket.to_owned();
        let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        crate::db::join_task(tokio::spawn(async move {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            this.delete_now(&bucket, &paths).await
        }))
        .await
    }

    async fn delete_now(&self, bucket: &str, paths: &[&str]) -> Result<u64> {
        recorded(
            "delete",
            Box::pin(async {
                self.own_transactions()?;
                let mut deleted = 0;
                for path in paths {
                    let Ok(object) = self.object(bucket, path).await else {
                        continue;
                    };
                    let location = keys::store_path(bucket, path);
                    let store = self.store.clone();
                    let id = object.id;
                    let removed = self
                        .db
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
                        .await;
                    match removed {
                        Ok(()) => {}
                        // Seen but not ours to delete (a public object of another
                        // user): its row stayed, and so did its bytes.
                        Err(Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                    self.forget_cached(&object).await;
                    deleted += 1;
                }
                Ok(deleted)
            }),
        )
        .await
    }

    /// Moves an object to a new path in the same bucket (fails if the target exists).
    /// Runs in a task of its own: a caller that stops waiting cannot separate the row
    /// from its bytes.
    pub async fn move_file(&self, bucket: &str, from: &str, to: &str) -> Result<()> {
        self.relocate_in_task(bucket, from, to, true).await
    }

    /// Copies an object to a new path in the same bucket (fails if the target exists).
    /// Runs in a task of its own, as [`move_file`](Self::move_file).
    pub async fn copy_file(&self, bucket: &str, from: &str, to: &str) -> Result<()> {
        self.relocate_in_task(bucket, from, to, false).await
    }

    async fn relocate_in_task(
        &self,
        bucket: &str,
        from: &str,
        to: &str,
        remove: bool,
    ) -> Result<()> {
        self.own_transactions()?;
        let this = self.clone();
        let (bucket, from, to) = (bucket.to_owned(), from.to_owned(), to.to_owned());
        crate::db::join_task(tokio::spawn(async move {
            this.relocate(&bucket, &from, &to, remove).await
        }))
        .await
    }

    #[tracing::instrument(name = "tabula.storage.relocate", skip_all, fields(bucket = bucket, from = from, to = to))]
    async fn relocate(&self, bucket: &str, from: &str, to: &str, remove: bool) -> Result<()> {
        recorded(
            "relocate",
            Box::pin(async {
                self.own_transactions()?;
                validate_path(to)?;
                let object = self.object(bucket, from).await?;
                let (src, dst) = (keys::store_path(bucket, from), keys::store_path(bucket, to));
                let store = self.store.clone();
                let target = to.to_owned();
                // A scoped user's copy is theirs (the policies let them write no other).
                let owner = self.db.scope_subject().or(object.owner);
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
                                owner,
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
