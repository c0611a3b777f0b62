//! An axum [`Router`] serving public objects and signed URLs (feature `http`):
//! `GET /object/public/{bucket}/{*path}` and `GET /object/sign/{bucket}/{*path}?token=…`,
//! plus signed uploads: `PUT /object/upload/sign/{bucket}/{*path}?token=…` with the body
//! (streamed; `Content-Type` and `Cache-Control` request headers are stored; the
//! token is single-use and may replace an existing object, see
//! [`StorageService::upload_signed_stream`]), with `Content-Type`, `Cache-Control`,
//! `ETag` / `If-None-Match` (304) and `Range`. A bad, expired or already used
//! signature is 403, a missing object 404, a malformed path 400. Error responses carry
//! only the status's reason phrase; details go to the log.
//!
//! # Range requests (RFC 9110 §14)
//!
//! The `Range` value is parsed strictly: the unit `bytes` (any case), then
//! comma-separated `first-last`, `first-` or `-suffix` of ASCII digits only — no signs,
//! no spaces inside a range (optional whitespace around commas, as the list syntax
//! allows). Then:
//!
//! * one satisfiable range: `206 Partial Content` with `Content-Range`;
//! * no satisfiable range (every range starts past the end, or a `-0` suffix):
//!   `416 Range Not Satisfiable` with `Content-Range: bytes */<size>`;
//! * several ranges, at least one satisfiable: the whole object with `200` — RFC 9110
//!   lets a server ignore `Range`, and doing so costs one response instead of a
//!   `multipart/byteranges` body that a request of many tiny ranges could inflate;
//! * an invalid value (bad syntax, `last < first`), an unknown unit or several `Range`
//!   fields: ignored, the whole object with `200` (as RFC 9110 §14.2 allows).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{StorageService, validate_bucket, validate_path};
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
        Error::AlreadyExists(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The response for `error`: its status and reason phrase only, so nothing of the
/// server (paths in a store's error, SQL) reaches the client. Server faults are logged
/// with their source, which may name paths: the log is the server's.
fn failure(error: Error) -> Response {
    let code = status(&error);
    if code == StatusCode::INTERNAL_SERVER_ERROR {
        let source = std::error::Error::source(&error).map(ToString::to_string);
        tracing::error!(%error, source, "storage request failed");
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
    if let Err(e) = storage.verify_download(&bucket, &path, &token).await {
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
    match storage
        .upload_signed_stream(&bucket, &path, &token, stream, options)
        .await
    {
        Ok(url) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "url": url })),
        )
            .into_response(),
        Err(e) => failure(e),
    }
}

/// What a `Range` request asks of an object; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
enum RangeRequest {
    /// Serve the whole object with 200.
    Whole,
    /// Serve this half-open range with 206.
    Part(std::ops::Range<u64>),
    /// Answer 416.
    Unsatisfiable,
}

/// One `range-spec` of RFC 9110 §14.1.1.
enum Spec {
    /// `first-` or `first-last`.
    From(u64, Option<u64>),
    /// `-suffix`.
    Suffix(u64),
}

/// `1*DIGIT`, saturating at `u64::MAX` (a position that large is past any object).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// A `Range` field value (RFC 9110 §14.1–14.2) for an object of `size` bytes.
fn range_request(value: &str, size: u64) -> RangeRequest {
    let is_ows = |c: char| c == ' ' || c == '\t';
    let Some((unit, set)) = value.trim_matches(is_ows).split_once('=') else {
        return RangeRequest::Whole;
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return RangeRequest::Whole;
    }
    let mut specs = Vec::new();
    // `1#range-spec`: elements separated by `OWS , OWS`; empty elements are ignored.
    for element in set.split(',').map(|e| e.trim_matches(is_ows)) {
        if element.is_empty() {
            continue;
        }
        let Some((first, last)) = element.split_once('-') else {
            return RangeRequest::Whole;
        };
        let spec = match (first, last) {
            ("", suffix) => digits(suffix).map(Spec::Suffix),
            (first, "") => digits(first).map(|f| Spec::From(f, None)),
            (first, last) => match (digits(first), digits(last)) {
                // `last < first` makes the whole ranges-specifier invalid.
                (Some(f), Some(l)) if l >= f => Some(Spec::From(f, Some(l))),
                _ => None,
            },
        };
        let Some(spec) = spec else {
            return RangeRequest::Whole;
        };
        specs.push(spec);
    }
    let satisfiable: Vec<std::ops::Range<u64>> = specs
        .iter()
        .filter_map(|spec| match *spec {
            Spec::From(first, last) if first < size => {
                let end = last.map_or(size - 1, |l| l.min(size - 1));
                Some(first..end + 1)
            }
            Spec::Suffix(n) if n > 0 && size > 0 => Some(size.saturating_sub(n)..size),
            _ => None,
        })
        .collect();
    match (specs.len(), satisfiable.as_slice()) {
        (0, _) => RangeRequest::Whole,
        (_, []) => RangeRequest::Unsatisfiable,
        (1, [range]) => RangeRequest::Part(range.clone()),
        _ => RangeRequest::Whole,
    }
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
    let mut ranges = headers.get_all(header::RANGE).iter();
    let range = match (ranges.next(), ranges.next()) {
        // `Range` is a singleton field: several are invalid, and ignored.
        (Some(value), None) => value
            .to_str()
            .map_or(RangeRequest::Whole, |v| range_request(v, size)),
        _ => RangeRequest::Whole,
    };
    if range == RangeRequest::Unsatisfiable {
        set(
            &mut response_headers,
            header::CONTENT_RANGE,
            &format!("bytes */{size}"),
        );
        return (StatusCode::RANGE_NOT_SATISFIABLE, response_headers).into_response();
    }
    if let RangeRequest::Part(range) = range {
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
    use super::{RangeRequest, range_request};

    fn part(range: std::ops::Range<u64>) -> RangeRequest {
        RangeRequest::Part(range)
    }

    #[test]
    fn single_ranges_follow_rfc_9110() {
        assert_eq!(range_request("bytes=0-9", 100), part(0..10));
        assert_eq!(range_request("bytes=90-", 100), part(90..100));
        assert_eq!(range_request("bytes=-5", 100), part(95..100));
        assert_eq!(range_request("bytes=-500", 100), part(0..100));
        assert_eq!(range_request("bytes=50-500", 100), part(50..100));
        assert_eq!(range_request("BYTES=0-0", 100), part(0..1));
        assert_eq!(
            range_request("bytes=0-99999999999999999999999", 100),
            part(0..100)
        );
    }

    #[test]
    fn unsatisfiable_ranges_are_416() {
        assert_eq!(
            range_request("bytes=100-", 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(range_request("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(range_request("bytes=0-", 0), RangeRequest::Unsatisfiable);
        assert_eq!(range_request("bytes=-5", 0), RangeRequest::Unsatisfiable);
        assert_eq!(
            range_request("bytes=99999999999999999999999-", 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            range_request("bytes=200-300, 400-", 100),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn malformed_values_and_other_units_are_ignored() {
        for value in [
            "bytes=+1-+5",
            "bytes=-+5",
            "bytes= 0 - 9",
            "bytes=0 -9",
            "bytes=0- 9",
            "bytes=5-1",
            "bytes=1-2-3",
            "bytes=a-b",
            "bytes=0x1-2",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes 0-9",
            "bytes =0-9",
            "items=0-9",
            "bytes=0-9;",
            "bytes=0-9,x",
            "bytes=\u{664}-9",
        ] {
            assert_eq!(range_request(value, 100), RangeRequest::Whole, "{value:?}");
        }
    }

    #[test]
    fn several_satisfiable_ranges_serve_the_whole_object() {
        assert_eq!(range_request("bytes=0-1,3-4", 100), RangeRequest::Whole);
        assert_eq!(range_request("bytes=0-1 , -3", 100), RangeRequest::Whole);
        assert_eq!(range_request("bytes=0-1,500-", 100), RangeRequest::Whole);
        // Empty list elements are ignored, as the list syntax requires.
        assert_eq!(range_request("bytes=,0-9,", 100), part(0..10));
    }
}
