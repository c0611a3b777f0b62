//! Listing a bucket: objects under a prefix, searched, sorted and paged in PostgreSQL.

use super::{FileObject, ListOptions, SortColumn, StorageService, keys, recorded};
use super::{validate_bucket, validate_path};
use crate::error::{Error, Result};

impl StorageService {
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
}
