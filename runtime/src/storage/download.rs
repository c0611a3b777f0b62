//! Downloads: an object's bytes (through the cache for small objects whose
//! `cache_control` allows it), whole or a range.

use bytes::Bytes;
use object_store::ObjectStoreExt;

use super::{CACHE_MAX_BYTES, FileObject, StorageService, keys, recorded, store_error};
use crate::error::Result;

impl StorageService {
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

    /// Metadata and the bytes of an object as they arrive from the store (never
    /// through the cache): for objects too large to hold in memory, and for progress
    /// as they come. The stream ends with an error if the store fails midway.
    ///
    /// ```no_run
    /// # async fn run(storage: tabula::storage::StorageService) -> tabula::Result<()> {
    /// use futures_util::StreamExt;
    /// let (object, mut bytes) = storage.download_stream("videos", "intro.mp4").await?;
    /// let mut seen = 0;
    /// while let Some(chunk) = bytes.next().await {
    ///     seen += chunk?.len() as u64;
    ///     println!("{seen} of {}", object.size);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn download_stream(
        &self,
        bucket: &str,
        path: &str,
    ) -> Result<(
        FileObject,
        futures_util::stream::BoxStream<'static, Result<Bytes>>,
    )> {
        use futures_util::StreamExt;
        let object = self.object(bucket, path).await?;
        let (result, key) = self.store_get(&object).await?;
        let stream = result
            .into_stream()
            .map(move |chunk| chunk.map_err(store_error("reading", &key)))
            .boxed();
        Ok((object, stream))
    }

    /// The bytes of an object straight from the store.
    pub(crate) async fn read_bytes(&self, object: &FileObject) -> Result<Bytes> {
        let (result, key) = self.store_get(object).await?;
        result.bytes().await.map_err(store_error("reading", &key))
    }

    /// The store's answer for an object, and the object's name for errors.
    async fn store_get(&self, object: &FileObject) -> Result<(object_store::GetResult, String)> {
        let location = keys::store_path(&object.bucket_id, &object.name);
        let key = format!("{}/{}", object.bucket_id, object.name);
        let result = self
            .store
            .get(&location)
            .await
            .map_err(store_error("reading", &key))?;
        Ok((result, key))
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
}
