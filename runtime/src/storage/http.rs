//! An axum [`Router`] serving public objects and signed URLs (feature `http`):
//! `GET /object/public/{bucket}/{*path}` and `GET /object/sign/{bucket}/{*path}?token=…`,
//! plus signed uploads: `PUT /object/upload/sign/{bucket}/{*path}?token=…` with the body
//! (streamed; `Content-Type` and `Cache-Control` request headers are stored),
//! with `Content-Type`, `Cache-Control`, `ETag` / `If-None-Match` (304) and single
//! `Range` requests (206). A bad or expired signature is 403, a missing object 404, a
//! malformed path 400.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{Purpose, StorageService, validate_bucket, validate_path};
use crate::error::Error;

/// The router; mount it where the service's `base_url` points.
///
/// ```no_run
/// # async fn run(storage: tabula::storage::StorageService) -> std::io::Result<()> {
/// let app = tabula::storage::http::router(storage);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn router(storage: StorageService) -> Router {
    Router::new()
        .route("/object/public/{bucket}/{*path}", get(public))
        .route("/object/sign/{bucket}/{*path}", get(signed))
        .route(
            "/object/upload/sign/{bucket}/{*path}",
            axum::routing::put(signed_upload),
        )
        .with_state(storage)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn status(error: &Error) -> StatusCode {
    match error {
        Error::Validation(_) => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn failure(error: Error) -> Response {
    let code = status(&error);
    if code == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(%error, "storage request failed");
    }
    (code, code.canonical_reason().unwrap_or("error")).into_response()
}

async fn public(
    State(storage): State<StorageService>,
    Path((bucket, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let checked = async {
        validate_bucket(&bucket)?;
        validate_path(&path)?;
        if !storage.bucket(&bucket).await?.public {
            // Same answer as a missing object: no oracle for private buckets.
            return Err(Error::NotFound {
                table: "storage.objects",
            });
        }
        Ok(())
    };
    match checked.await {
        Ok(()) => serve(&storage, &bucket, &path, &headers).await,
        Err(e) => failure(e),
    }
}

async fn signed(
    State(storage): State<StorageService>,
    Path((bucket, path)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = validate_bucket(&bucket).and_then(|()| validate_path(&path)) {
        return failure(e);
    }
    let Some(token) = query.token else {
        return failure(Error::PermissionDenied {
            message: "signed URL without a token".into(),
        });
    };
    if let Err(e) = storage.verify(Purpose::Download, &bucket, &path, &token) {
        return failure(e);
    }
    serve(&storage, &bucket, &path, &headers).await
}

async fn signed_upload(
    State(storage): State<StorageService>,
    Path((bucket, path)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = validate_bucket(&bucket).and_then(|()| validate_path(&path)) {
        return failure(e);
    }
    let Some(token) = query.token else {
        return failure(Error::PermissionDenied {
            message: "signed URL without a token".into(),
        });
    };
    if let Err(e) = storage.verify(Purpose::Upload, &bucket, &path, &token) {
        return failure(e);
    }
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut options = super::UploadOptions {
        upsert: true,
        ..Default::default()
    };
    if let Some(content_type) = text(header::CONTENT_TYPE) {
        options.content_type = content_type;
    }
    if let Some(cache_control) = text(header::CACHE_CONTROL) {
        options.cache_control = cache_control;
    }
    use futures_util::TryStreamExt;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    match storage.upload_stream(&bucket, &path, stream, options).await {
        Ok(url) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "url": url })),
        )
            .into_response(),
        Err(e) => failure(e),
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` of an object of `size` bytes: the half-open range.
fn parse_range(value: &str, size: u64) -> Option<std::ops::Range<u64>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (start, "") => (start.parse().ok()?, size - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some(start..end + 1)
}

async fn serve(
    storage: &StorageService,
    bucket: &str,
    path: &str,
    headers: &HeaderMap,
) -> Response {
    let object = match storage.object(bucket, path).await {
        Ok(object) => object,
        Err(e) => return failure(e),
    };
    let etag = format!("\"{}\"", object.etag);
    let mut response_headers = HeaderMap::new();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(&mut response_headers, header::ETAG, &etag);
    set(
        &mut response_headers,
        header::CACHE_CONTROL,
        &object.cache_control,
    );
    set(
        &mut response_headers,
        header::CONTENT_TYPE,
        &object.content_type,
    );
    set(&mut response_headers, header::ACCEPT_RANGES, "bytes");

    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if not_modified {
        return (StatusCode::NOT_MODIFIED, response_headers).into_response();
    }
    let size = u64::try_from(object.size).unwrap_or(0);
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        let Some(range) = parse_range(range, size) else {
            set(
                &mut response_headers,
                header::CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
            return (StatusCode::RANGE_NOT_SATISFIABLE, response_headers).into_response();
        };
        return match storage.read_range(&object, range.clone()).await {
            Ok(bytes) => {
                let content_range = format!("bytes {}-{}/{size}", range.start, range.end - 1);
                set(&mut response_headers, header::CONTENT_RANGE, &content_range);
                (
                    StatusCode::PARTIAL_CONTENT,
                    response_headers,
                    Body::from(bytes),
                )
                    .into_response()
            }
            Err(e) => failure(e),
        };
    }
    match storage.download(bucket, path).await {
        Ok((_, bytes)) => (StatusCode::OK, response_headers, Body::from(bytes)).into_response(),
        Err(e) => failure(e),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=-5", 100), Some(95..100));
        assert_eq!(parse_range("bytes=50-500", 100), Some(50..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
    }
}
