//! Names: bucket and object-key validation, and the little parsers around them.

use object_store::path::Path as StorePath;

use crate::error::{Error, Result};

/// Longest object key accepted, in bytes.
pub(crate) const MAX_PATH_BYTES: usize = 1024;

/// Longest segment accepted, in bytes as the store writes it: the file-name limit of
/// common filesystems (ext4, XFS, APFS, NTFS in UTF-16 units).
pub(crate) const MAX_SEGMENT_BYTES: usize = 255;

/// A bucket name: 1–63 of `a-z 0-9 . _ -`, starting with a letter or digit.
///
/// ```
/// assert!(tabula::storage::validate_bucket("avatars").is_ok());
/// assert!(tabula::storage::validate_bucket("../etc").is_err());
/// ```
pub fn validate_bucket(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Validation(format!(
            "bucket name `{}` must be 1-63 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit",
            name.chars().take(80).collect::<String>().escape_debug()
        )))
    }
}

/// An object key: relative, `/`-separated, no empty, `.` or `..` segment, at most 1024
/// bytes, made of letters, digits, spaces and `- _ . ~ ! $ & ' ( ) * + , ; = @` — a
/// set every backend stores as is (no `:`, `#`, `%`, `?`, backslash or control
/// character) — with no segment longer than 255 bytes as stored (the file-name limit
/// of common filesystems; the store writes `~`, `*` and each byte of a non-ASCII
/// letter as three bytes, `%7E`).
///
/// ```
/// assert!(tabula::storage::validate_path("user123/avatar.jpg").is_ok());
/// assert!(tabula::storage::validate_path(&"a".repeat(255)).is_ok());
/// for bad in ["../secret", "/abs", "a//b", "a\\b", "a\u{0}b", "a/./b", "", &"a".repeat(256)] {
///     assert!(tabula::storage::validate_path(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Validation(format!(
            "object key `{}` {why}",
            path.chars().take(80).collect::<String>().escape_debug()
        )))
    };
    if path.is_empty() {
        return bad("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return bad("is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return bad("contains a backslash or a control character");
    }
    // A portable set: what every backend (filesystem paths, S3 keys, URLs) takes as
    // is. `:` (a drive letter on Windows and in file URLs), `#` (object_store's
    // multipart suffix), `%`, `?` and the like are refused rather than mangled.
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_alphanumeric() || " -_.~!$&'()*+,;=@/".contains(*c)))
    {
        return bad(&format!(
            "contains `{}`; use letters, digits, spaces and - _ . ~ ! $ & ' ( ) * + , ; = @",
            c.escape_debug()
        ));
    }
    if path
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return bad("has an empty, `.` or `..` segment");
    }
    if path.split('/').any(|segment| {
        object_store::path::PathPart::from(segment).as_ref().len() > MAX_SEGMENT_BYTES
    }) {
        return bad("has a segment longer than 255 bytes as stored");
    }
    if path.starts_with(".tmp") {
        return bad("uses the reserved `.tmp` prefix");
    }
    Ok(())
}

/// Where an object's bytes live in the store.
pub(crate) fn store_path(bucket: &str, path: &str) -> StorePath {
    StorePath::from(format!("{bucket}/{path}"))
}

/// Percent-encodes a validated path for a URL (segments kept).
pub(crate) fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `image/*` matches `image/png`; exact types match themselves.
pub(crate) fn mime_matches(pattern: &str, content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_suffix("/*") {
        Some(major) => essence.split('/').next() == Some(major),
        None => essence == pattern,
    }
}

/// A number of seconds (`"3600"`) becomes `max-age=3600`; a full header value is
/// kept. Control characters are refused (it becomes a response header).
pub(crate) fn cache_control(value: &str) -> Result<String> {
    let value = value.trim();
    if value.chars().any(char::is_control) || value.len() > 256 {
        return Err(Error::Validation(
            "cache_control must be a short header value".into(),
        ));
    }
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(format!("max-age={value}"));
    }
    Ok(if value.is_empty() {
        "max-age=3600".into()
    } else {
        value.to_owned()
    })
}

/// How long a download may be cached under `cache_control`; `None`: not at all.
pub(crate) fn cache_ttl(cache_control: &str) -> Option<u64> {
    let directives: Vec<String> = cache_control
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if directives
        .iter()
        .any(|d| d == "no-store" || d == "no-cache" || d == "private")
    {
        return None;
    }
    let max_age = directives.iter().find_map(|d| {
        d.strip_prefix("max-age=")
            .and_then(|n| n.parse::<u64>().ok())
    });
    match max_age {
        Some(0) => None,
        Some(n) => Some(n),
        None => Some(3600),
    }
}

/// Escapes `%`, `_` and `\` for a LIKE pattern.
pub(crate) fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_follows_the_directives() {
        assert_eq!(cache_control("3600").ok().as_deref(), Some("max-age=3600"));
        assert_eq!(cache_ttl("max-age=60"), Some(60));
        assert_eq!(cache_ttl("public, max-age=0"), None);
        assert_eq!(cache_ttl("no-store"), None);
        assert!(cache_control("x\r\nSet-Cookie: a").is_err());
    }

    #[test]
    fn mime_patterns() {
        assert!(mime_matches("image/*", "image/png"));
        assert!(mime_matches(
            "application/pdf",
            "application/pdf; charset=binary"
        ));
        assert!(!mime_matches("image/*", "text/html"));
    }
}
