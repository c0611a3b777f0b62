//! Connection strings: the settings Tabula reads out of a `postgres://` URL's query
//! before PostgreSQL's parser sees the rest (pool settings, `sslmode`, …).

/// Whether `url` is a URL (not a key=value connection string).
pub(crate) fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Splits the settings `names` off a URL's query string: the URL without them, and
/// their values (percent-decoded). Only a `postgres://` / `postgresql://` URL has them,
/// in the query after the host — never in a password (which may hold `?` and `&`) —
/// and anything else is returned untouched.
pub(crate) fn split_query(url: &str, names: &[&str]) -> (String, Vec<(String, String)>) {
    let untouched = || (url.to_owned(), Vec::new());
    let Some(rest) = url
        .split_once("://")
        .map(|(_, r)| r)
        .filter(|_| is_url(url))
    else {
        return untouched();
    };
    // The query starts at the first `?` after the user information.
    let host_start = url.len() - rest.len() + userinfo_end(rest);
    let Some(query_start) = url[host_start..].find('?').map(|q| host_start + q) else {
        return untouched();
    };
    let (base, query) = (&url[..query_start], &url[query_start + 1..]);
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if names.contains(&name) {
            taken.push((name.to_owned(), percent_decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let url = match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    };
    (url, taken)
}

/// Where the host starts in what follows `postgres://`: after the `@` that ends the
/// user information — the last one before the path, never one in the query (an
/// `application_name` may hold `@`).
fn userinfo_end(rest: &str) -> usize {
    let at = match rest.find('/') {
        Some(path) => rest[..path].rfind('@'),
        None => rest.find('@'),
    };
    at.map_or(0, |at| at + 1)
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
