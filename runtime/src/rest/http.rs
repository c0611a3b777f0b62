//! The axum router of the REST API: `/rest/v1/{table}` with `GET`, `HEAD`, `POST`,
//! `PATCH`, `DELETE` and `OPTIONS`, in PostgREST's dialect (see the [module
//! docs](super)).
//!
//! # Auth
//!
//! `Authorization: Bearer <jwt>` — or, without it, the `apikey` header, which Supabase
//! clients send with the project's anon key — is verified by
//! [`DbConfig::jwt`](crate::DbConfig::jwt) and the request runs on a handle scoped to
//! its claims ([`Db::as_jwt`]); a request with neither runs as `anon`. So
//! PostgreSQL's Row Level Security decides what every request sees and changes. A token
//! that fails verification is 401 (`PGRST301`), never a fallback to `anon`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::{Count, Read, RestApi, RestError};
use crate::db::Db;

/// Which browser origins may call the API (CORS).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Cors {
    /// Allowed origins (`https://app.example.com`), or `*` for any. Default none: no
    /// CORS headers, so browsers refuse cross-origin calls.
    pub origins: Vec<String>,
    /// How long a browser may keep a preflight's answer, in seconds. Default 600.
    pub max_age: Option<u32>,
}

impl Cors {
    /// Any origin may call the API.
    ///
    /// ```
    /// let cors = tabula::rest::Cors::any();
    /// assert_eq!(cors.origins, ["*"]);
    /// ```
    pub fn any() -> Cors {
        Cors::origins(["*"])
    }

    /// These origins may call the API.
    pub fn origins<S: Into<String>>(origins: impl IntoIterator<Item = S>) -> Cors {
        Cors {
            origins: origins.into_iter().map(Into::into).collect(),
            max_age: None,
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// How the router behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestConfig {
    /// CORS (default: none).
    pub cors: Cors,
    /// Whether `PATCH` and `DELETE` without a filter are allowed (they change every
    /// row the caller may see). Default no: refused with 400.
    pub allow_unfiltered_writes: bool,
    /// Largest request body, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            cors: Cors::default(),
            allow_unfiltered_writes: false,
            max_body_bytes: 1 << 20,
        }
    }
}

impl RestConfig {
    /// Sets [`RestConfig::cors`].
    ///
    /// ```
    /// let config = tabula::rest::RestConfig::default().cors(tabula::rest::Cors::any());
    /// ```
    pub fn cors(mut self, cors: Cors) -> RestConfig {
        self.cors = cors;
        self
    }
}

struct Shared {
    db: Db,
    api: RestApi,
    config: RestConfig,
}

/// The router: `/rest/v1/{table}` for every table of `api`, on `db` (unscoped; each
/// request gets a scoped handle from its token).
///
/// ```no_run
/// # #[derive(tabula::Table)]
/// # #[table(derive_new(serde::Deserialize), derive_patch(serde::Deserialize))]
/// # pub struct Profile { #[table(primary_key)] pub id: i64, pub username: String }
/// # async fn run(db: tabula::Db) -> std::io::Result<()> {
/// use tabula::rest::{Cors, RestApi, RestConfig};
/// let api = RestApi::new().model::<Profile>();
/// let app = tabula::rest::router(db, api, RestConfig::default().cors(Cors::any()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn router(db: Db, api: RestApi, config: RestConfig) -> Router {
    let shared = Arc::new(Shared { db, api, config });
    Router::new()
        .route("/rest/v1/{table}", axum::routing::any(handle))
        .with_state(shared)
}

const OBJECT: &str = "application/vnd.pgrst.object+json";

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path(table): Path<String>,
    request: Request,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let anonymous = !request.headers().contains_key(header::AUTHORIZATION)
        && !request.headers().contains_key("apikey");
    let mut response = match request.method() {
        &Method::OPTIONS => preflight(&shared.config.cors),
        _ => match serve(&shared, &table, request).await {
            Ok(response) => response,
            // Refused for want of a token: authenticate (PostgREST's 401), not 403.
            Err(error) if anonymous && error.code == "42501" => error_response(&RestError {
                status: 401,
                ..error
            }),
            Err(error) => error_response(&error),
        },
    };
    if let Some(origin) = origin
        && shared.config.cors.allows(&origin)
    {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Range, Range, Preference-Applied"),
        );
    }
    response
}

fn preflight(cors: &Cors) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "apikey, authorization, content-type, accept, prefer, range, range-unit, \
             content-profile, accept-profile, x-client-info",
        ),
    );
    let max_age = cors.max_age.unwrap_or(600).to_string();
    if let Ok(value) = HeaderValue::from_str(&max_age) {
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, value);
    }
    response
}

fn error_response(error: &RestError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &error.body(), "application/json")
}

fn json_response(status: StatusCode, body: &Value, content_type: &'static str) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("{content_type}; charset=utf-8")) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// The handle a request runs on: scoped to its verified token, or `anon`.
fn scoped(db: &Db, headers: &HeaderMap) -> Result<Db, RestError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let token = bearer.or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()));
    match token {
        None | Some("") => Ok(db.as_anon()),
        Some(token) => db.as_jwt(token).map_err(|e| match e {
            crate::Error::Config(message) => RestError::new(401, "PGRST300", message),
            other => RestError::new(401, "PGRST301", other.to_string()),
        }),
    }
}

/// `Prefer` preferences, e.g. `return=representation, count=exact`.
fn prefers<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim())
}

/// `Range: 0-9` (items) as (first, last): `None` for a header that does not read as
/// one (ignored, as PostgREST does); 416 for a reversed one.
fn range(headers: &HeaderMap) -> Result<Option<(u64, Option<u64>)>, RestError> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let value = value.trim().trim_start_matches("items=");
    let Some((first, last)) = value.split_once('-') else {
        return Ok(None);
    };
    let Ok(first) = first.trim().parse::<u64>() else {
        return Ok(None);
    };
    let last = match last.trim() {
        "" => None,
        last => match last.parse::<u64>() {
            Ok(last) => Some(last),
            Err(_) => return Ok(None),
        },
    };
    match last {
        Some(last) if last < first => Err(not_satisfiable()),
        _ => Ok(Some((first, last))),
    }
}

fn not_satisfiable() -> RestError {
    RestError::new(416, "PGRST103", "Requested range not satisfiable")
}

/// The rows a read asks for: `offset`/`limit` intersected with a `Range` header. A
/// window wider than `max` rows is no limit (at most `max` come back, as a partial
/// answer), never an error: a client's `Range` is not a request for that many rows.
fn window(read: &mut Read, range: Option<(u64, Option<u64>)>, max: u64) -> Result<(), RestError> {
    let Some((first, last)) = range else {
        return Ok(());
    };
    let offset = read.offset.unwrap_or(0);
    // The query's rows are offset..offset+limit; the header's first..=last.
    let end = match (read.limit, last) {
        (Some(limit), Some(last)) => Some(offset.saturating_add(limit).min(last.saturating_add(1))),
        (Some(limit), None) => Some(offset.saturating_add(limit)),
        (None, Some(last)) => Some(last.saturating_add(1)),
        (None, None) => None,
    };
    let start = offset.max(first);
    read.offset = Some(start);
    read.limit = end
        .map(|end| end.saturating_sub(start))
        .filter(|limit| *limit <= max || read.limit.is_some_and(|l| l <= max));
    Ok(())
}

async fn serve(shared: &Shared, table: &str, request: Request) -> Result<Response, RestError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    for profile in ["accept-profile", "content-profile"] {
        if let Some(schema) = headers.get(profile).and_then(|v| v.to_str().ok())
            && schema != "public"
        {
            return Err(RestError::new(
                406,
                "PGRST106",
                "The schema must be one of the following: public",
            ));
        }
    }
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
        && !accept.split(',').any(|media| {
            let media = media.split(';').next().unwrap_or_default().trim();
            matches!(
                media,
                "" | "*/*" | "application/*" | "application/json" | OBJECT
            )
        })
    {
        return Err(RestError::new(
            406,
            "PGRST107",
            format!("None of these media types are available: {accept}"),
        ));
    }
    let table = shared.api.table(table)?;
    let db = scoped(&shared.db, headers)?;
    let mut read = Read::from_query(parts.uri.query().unwrap_or(""))?;
    let wants_object = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(OBJECT));
    let representation = prefers(headers, "return") == Some("representation");
    let returning: Option<Vec<String>> =
        representation.then(|| read.select.clone().unwrap_or_else(|| vec!["*".to_owned()]));
    let method = parts.method.clone();
    let body = axum::body::to_bytes(Body::new(body), shared.config.max_body_bytes)
        .await
        .map_err(|_| {
            RestError::new(
                413,
                "PGRST413",
                format!(
                    "the request body is larger than {} bytes",
                    shared.config.max_body_bytes
                ),
            )
        })?;
    match method {
        Method::GET | Method::HEAD => {
            window(
                &mut read,
                range(headers)?,
                shared.api.inner.limits.max_limit,
            )?;
            read.count = match prefers(headers, "count") {
                Some("exact") => Some(Count::Exact),
                Some("planned" | "estimated") => Some(Count::Estimated),
                _ => None,
            };
            let selected = table.select(&db, &read).await?;
            let first = read.offset.unwrap_or(0);
            let returned = selected.rows.len() as u64;
            let total = selected.total.map(|t| u64::try_from(t).unwrap_or(0));
            if let Some(total) = total
                && total > 0
                && first >= total
            {
                return Err(not_satisfiable());
            }
            let content_range = match (returned, total) {
                (0, Some(total)) => format!("*/{total}"),
                (0, None) => "*/*".to_owned(),
                (n, Some(total)) => format!("{first}-{}/{total}", first + n - 1),
                (n, None) => format!("{first}-{}/*", first + n - 1),
            };
            // Partial: fewer rows than match (known from a count), or a read without a
            // limit that stopped at the maximum.
            let partial = selected.more
                || total.is_some_and(|total| first > 0 || first.saturating_add(returned) < total);
            let status = if partial {
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            };
            let mut response = rows_response(status, selected.rows, wants_object)?;
            if let Ok(value) = HeaderValue::from_str(&content_range) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            if method == Method::HEAD {
                *response.body_mut() = Body::empty();
            }
            Ok(response)
        }
        Method::DELETE if !read.embeds.is_empty() => Err(RestError::unsupported(
            "embedded resources in a delete's representation are not supported",
        )),
        Method::POST => {
            let rows = body_rows(&body)?;
            let upsert = match prefers(headers, "resolution") {
                Some("merge-duplicates") => Some(on_conflict(parts.uri.query().unwrap_or(""))?),
                Some("ignore-duplicates") => {
                    return Err(RestError::unsupported(
                        "resolution=ignore-duplicates is not supported",
                    ));
                }
                _ => None,
            };
            let upsert = match upsert {
                Some(Some(columns)) => Some(columns),
                Some(None) => Some(vec![table.key_column().to_owned()]),
                None => None,
            };
            let written = singular(&db, wants_object, &returning, |db, returning| {
                let (table, rows, upsert, read) =
                    (table.clone(), rows.clone(), upsert.clone(), read.clone());
                async move {
                    let keyed = with_key(&table, &read, returning);
                    let written = table.insert(&db, rows, upsert, keyed.as_deref()).await?;
                    embedded(&table, &db, &read, written).await
                }
            })
            .await?;
            write_response(StatusCode::CREATED, written, representation, wants_object)
        }
        Method::PATCH => {
            let filter = required_filter(&read, &shared.config)?;
            let patch = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(patch)) => patch,
                _ => return Err(invalid_json()),
            };
            let written = singular(&db, wants_object, &returning, |db, returning| {
                let (table, filter, patch, read) =
                    (table.clone(), filter.clone(), patch.clone(), read.clone());
                async move {
                    let keyed = with_key(&table, &read, returning);
                    let written = table.update(&db, &filter, patch, keyed.as_deref()).await?;
                    embedded(&table, &db, &read, written).await
                }
            })
            .await?;
            write_response(StatusCode::OK, written, representation, wants_object)
        }
        Method::DELETE => {
            let filter = required_filter(&read, &shared.config)?;
            let written = singular(&db, wants_object, &returning, |db, returning| {
                let (table, filter) = (table.clone(), filter.clone());
                async move { table.delete(&db, &filter, returning.as_deref()).await }
            })
            .await?;
            write_response(StatusCode::OK, written, representation, wants_object)
        }
        _ => Err(RestError::new(
            405,
            "PGRST117",
            format!("Unsupported HTTP method: {method}"),
        )),
    }
}

/// Runs a write; with `Accept: application/vnd.pgrst.object+json`, inside a
/// transaction that is rolled back unless it wrote exactly one row (PostgREST's rule:
/// a 406 changes nothing).
async fn singular<F, Fut>(
    db: &Db,
    wants_object: bool,
    returning: &Option<Vec<String>>,
    write: F,
) -> Result<Vec<Map<String, Value>>, RestError>
where
    F: Fn(Db, Option<Vec<String>>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Map<String, Value>>, RestError>>,
{
    if !wants_object {
        return write(db.clone(), returning.clone()).await;
    }
    // The rows are needed to count them, whatever is returned.
    let counted = returning.clone().or_else(|| Some(vec!["*".to_owned()]));
    let refused: std::sync::Mutex<Option<RestError>> = std::sync::Mutex::new(None);
    let result = db
        .transaction(|tx| {
            let (counted, refused, write) = (counted.clone(), &refused, &write);
            async move {
                match write(tx, counted).await {
                    Ok(rows) if rows.len() == 1 => Ok(rows),
                    Ok(rows) => {
                        let error = RestError {
                            details: Some(format!("The result contains {} rows", rows.len())),
                            ..RestError::new(
                                406,
                                "PGRST116",
                                "JSON object requested, multiple (or no) rows returned",
                            )
                        };
                        if let Ok(mut slot) = refused.lock() {
                            *slot = Some(error);
                        }
                        Err(crate::Error::Misuse("rolled back".into()))
                    }
                    Err(error) => {
                        if let Ok(mut slot) = refused.lock() {
                            *slot = Some(error);
                        }
                        Err(crate::Error::Misuse("rolled back".into()))
                    }
                }
            }
        })
        .await;
    match result {
        Ok(rows) => Ok(rows),
        Err(error) => Err(refused
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .unwrap_or_else(|| error.into())),
    }
}

/// A write's returned columns, with the key too when resources are embedded (the
/// written rows are read again by it).
fn with_key(
    table: &super::RestTable,
    read: &Read,
    returning: Option<Vec<String>>,
) -> Option<Vec<String>> {
    let mut columns = returning?;
    if !read.embeds.is_empty() && !columns.iter().any(|c| c == "*" || c == table.key_column()) {
        columns.push(table.key_column().to_owned());
    }
    Some(columns)
}

/// The written rows with their embedded resources: read again by key, through the
/// same handle (inside the write's transaction, when there is one), in the order
/// written.
async fn embedded(
    table: &super::RestTable,
    db: &Db,
    read: &Read,
    written: Vec<Map<String, Value>>,
) -> Result<Vec<Map<String, Value>>, RestError> {
    if read.embeds.is_empty() || written.is_empty() {
        return Ok(written);
    }
    let key = table.key_column();
    let keys: Vec<Value> = written.iter().filter_map(|r| r.get(key).cloned()).collect();
    let mut select = read.select.clone();
    let dropped = match &mut select {
        Some(columns) if !columns.iter().any(|c| c == "*" || c == key) => {
            columns.push(key.to_owned());
            true
        }
        _ => false,
    };
    let again = Read {
        select,
        embeds: read.embeds.clone(),
        filter: Some(super::Cond::Leaf {
            column: key.to_owned(),
            op: "in".into(),
            value: Value::Array(keys.clone()),
        }),
        limit: Some(keys.len() as u64),
        ..Read::default()
    };
    let rows = table.select(db, &again).await?.rows;
    Ok(keys
        .iter()
        .filter_map(|k| rows.iter().find(|r| r.get(key) == Some(k)).cloned())
        .map(|mut row| {
            if dropped {
                row.remove(key);
            }
            row
        })
        .collect())
}

fn invalid_json() -> RestError {
    RestError::new(400, "PGRST102", "Empty or invalid json")
}

/// A `POST` body: one object or an array of them.
fn body_rows(body: &Bytes) -> Result<Vec<Map<String, Value>>, RestError> {
    match serde_json::from_slice::<Value>(body).map_err(|_| invalid_json())? {
        Value::Object(row) => Ok(vec![row]),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(row) => Ok(row),
                _ => Err(invalid_json()),
            })
            .collect(),
        _ => Err(invalid_json()),
    }
}

/// `on_conflict=a,b` from the query string.
fn on_conflict(query: &str) -> Result<Option<Vec<String>>, RestError> {
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("on_conflict=") {
            let value = Read::from_query(&format!("select={value}"))?
                .select
                .unwrap_or_default();
            return Ok(Some(value));
        }
    }
    Ok(None)
}

fn required_filter(read: &Read, config: &RestConfig) -> Result<super::Cond, RestError> {
    match &read.filter {
        Some(filter) => Ok(filter.clone()),
        None if config.allow_unfiltered_writes => Ok(super::Cond::And(Vec::new())),
        None => Err(RestError {
            hint: Some("add a filter (e.g. ?id=eq.1), or allow unfiltered writes".into()),
            ..RestError::new(400, "21000", "UPDATE and DELETE require a filter")
        }),
    }
}

fn rows_response(
    status: StatusCode,
    rows: Vec<Map<String, Value>>,
    wants_object: bool,
) -> Result<Response, RestError> {
    if wants_object {
        let count = rows.len();
        let mut rows = rows.into_iter();
        return match (rows.next(), count) {
            (Some(row), 1) => Ok(json_response(status, &Value::Object(row), OBJECT)),
            _ => Err(RestError {
                details: Some(format!("The result contains {count} rows")),
                ..RestError::new(
                    406,
                    "PGRST116",
                    "JSON object requested, multiple (or no) rows returned",
                )
            }),
        };
    }
    let rows = Value::Array(rows.into_iter().map(Value::Object).collect());
    Ok(json_response(status, &rows, "application/json"))
}

fn write_response(
    status: StatusCode,
    rows: Vec<Map<String, Value>>,
    representation: bool,
    wants_object: bool,
) -> Result<Response, RestError> {
    if representation {
        return rows_response(status, rows, wants_object);
    }
    let status = if status == StatusCode::CREATED {
        status
    } else {
        StatusCode::NO_CONTENT
    };
    Ok(status.into_response())
}
