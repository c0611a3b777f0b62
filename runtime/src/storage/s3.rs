//! The storage service on S3 or an S3-compatible store (feature `s3`), through
//! object_store's AWS client.
//!
//! One thing differs from the filesystem: S3 has no "copy unless the target exists"
//! (without a vendor's conditional-write setting). The service never needs one from
//! the store: every write to a key — upload, move, copy, delete — happens under that
//! key's lock in PostgreSQL (see the module docs of [`super`]), after a check that no
//! row stands at the target. So the store is wrapped to copy and rename plainly; what
//! it may overwrite is an orphan no row names.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::StorageService;
use crate::db::Db;
use crate::error::{Error, Result};

/// Where the objects live on S3 (or a compatible store: MinIO, Ceph, R2, …).
///
/// ```
/// let options = tabula::storage::S3Options::new("my-bucket", "eu-west-1", "AKIA…", "secret")
///     .endpoint("http://127.0.0.1:9000");
/// assert_eq!(options.bucket, "my-bucket");
/// ```
#[derive(Clone)]
pub struct S3Options {
    /// The S3 bucket every storage bucket's objects go to (under `{bucket}/{path}`).
    pub bucket: String,
    /// The region (`us-east-1` for most compatible stores).
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A compatible store's URL (`http://` allowed); none for AWS itself.
    pub endpoint: Option<String>,
    /// How long one request may take, connecting included. Default 30 s.
    pub timeout: Duration,
    /// How many times a failed request is retried (with backoff), and the time after
    /// its first attempt past which none is: together the longest an operation waits
    /// for a store that does not answer — while it holds the key's lock and a database
    /// connection (every write to a key runs under its lock). Default 3 retries
    /// within 30 s.
    pub retries: (usize, Duration),
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl S3Options {
    /// The bucket, region and credentials; AWS's own endpoint.
    pub fn new(
        bucket: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> S3Options {
        S3Options {
            bucket: bucket.into(),
            region: region.into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            endpoint: None,
            timeout: Duration::from_secs(30),
            retries: (3, Duration::from_secs(30)),
        }
    }

    /// How long one request may take (see [`timeout`](Self::timeout)).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = tabula::storage::S3Options::new("b", "us-east-1", "k", "s")
    ///     .timeout(Duration::from_secs(5))
    ///     .retries(1, Duration::from_secs(10));
    /// assert_eq!(options.retries, (1, Duration::from_secs(10)));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> S3Options {
        self.timeout = timeout;
        self
    }

    /// At most `times` retries of a failed request, none started `within` after its
    /// first attempt (see [`retries`](Self::retries)); `0` retries none.
    pub fn retries(mut self, times: usize, within: Duration) -> S3Options {
        self.retries = (times, within);
        self
    }

    /// An S3-compatible store at `url` (path-style requests).
    pub fn endpoint(mut self, url: impl Into<String>) -> S3Options {
        self.endpoint = Some(url.into());
        self
    }
}

impl StorageService {
    /// A service whose objects live in an S3 bucket: uploads stream in parts
    /// (multipart uploads of 5 MiB parts), downloads and ranges come from S3, and
    /// signed URLs and the HTTP router work as over the filesystem.
    ///
    /// HTTPS goes through rustls with the process's default crypto provider: when the
    /// application has installed none, this installs *ring* (the provider the rest of
    /// Tabula uses).
    ///
    /// ```no_run
    /// # fn run(db: tabula::Db) -> tabula::Result<()> {
    /// use tabula::storage::{S3Options, StorageService};
    /// let options = S3Options::new("app-files", "us-east-1", "AKIA…", "secret");
    /// let storage = StorageService::s3(db, options, b"a signing key of thirty-two bytes!!", "https://api.example.com")?;
    /// # Ok(()) }
    /// ```
    pub fn s3(
        db: Db,
        options: S3Options,
        signing_key: &[u8],
        base_url: &str,
    ) -> Result<StorageService> {
        let client = object_store::ClientOptions::new()
            .with_timeout(options.timeout)
            .with_connect_timeout(options.timeout.min(Duration::from_secs(5)));
        let retry = object_store::RetryConfig {
            max_retries: options.retries.0,
            retry_timeout: options.retries.1,
            ..Default::default()
        };
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_client_options(client)
            .with_retry(retry)
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_access_key_id(&options.access_key_id)
            .with_secret_access_key(&options.secret_access_key);
        if let Some(endpoint) = &options.endpoint {
            check_endpoint(endpoint)?;
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        // reqwest takes its TLS provider from the process default: *ring* (Tabula's
        // own) unless the application installed one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = builder
            .build()
            .map_err(|e| Error::Config(format!("S3 storage: {e}")))?;
        StorageService::new(db, Arc::new(Locked(store)), signing_key, base_url)
    }
}

/// An endpoint is an `http://` or `https://` URL with a host: refused here, at
/// construction, rather than at the first request.
fn check_endpoint(endpoint: &str) -> Result<()> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    match host {
        Some(host)
            if !host.is_empty()
                && !host.starts_with(':')
                && !host.contains(|c: char| c.is_whitespace() || c.is_control() || c == '@') =>
        {
            Ok(())
        }
        _ => Err(Error::Config(format!(
            "S3 storage: the endpoint `{}` is not an http:// or https:// URL with a host",
            endpoint.escape_debug()
        ))),
    }
}

/// An object store whose writes to a key are serialised by the key's lock in
/// PostgreSQL: "only if absent" copies and renames need no condition from the store.
#[derive(Debug)]
struct Locked<S>(S);

impl<S: ObjectStore> fmt::Display for Locked<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (writes under PostgreSQL key locks)", self.0)
    }
}

#[async_trait::async_trait]
impl<S: ObjectStore> ObjectStore for Locked<S> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        mut options: CopyOptions,
    ) -> object_store::Result<()> {
        // The key's lock and the row check stand in for the store's condition.
        options.mode = CopyMode::Overwrite;
        self.0.copy_opts(from, to, options).await
    }
}
