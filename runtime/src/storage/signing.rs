//! Signed URLs: tokens that grant one purpose on exactly one object key until they
//! expire.
//!
//! A token is `<expires>.<nonce>.<tag>` — or, for an upload a user minted,
//! `<expires>.<nonce>.<owner>.<tag>`: the expiry in Unix seconds (decimal digits, no
//! sign, no leading zero), 16 random bytes, the owning user's id (16 bytes) and an
//! HMAC-SHA256 over purpose, bucket, path, expiry, nonce and a *binding* — the owner
//! for an upload, the object's id for a download — all in lowercase hex of exact
//! length. A download token therefore serves the object it was made for and no later
//! one at the same path; an upload a user minted writes an object owned by that user,
//! and never over another user's. Only that canonical
//! form verifies — a parsed token is rendered again and must equal the input byte for
//! byte — so one grant has one spelling: no uppercase hex, `+` signs or leading zeros
//! carry the same authority under another name (which would defeat anything keyed by
//! the token, such as the single-use record of upload tokens).
//!
//! Download tokens may be used any number of times until they expire. Upload tokens
//! are single-use: see [`StorageService::upload_signed_stream`].

use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::{Purpose, StorageService, keys, validate_path};
use crate::error::{Error, Result};

/// A token that verified: what it grants, for whom it was minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Expiry, Unix seconds.
    pub(crate) expires: i64,
    /// The token's random id, which makes two tokens for one key distinct.
    pub(crate) nonce: Uuid,
    /// The user an upload is for (a token a user-scoped service minted).
    pub(crate) owner: Option<Uuid>,
}

/// A token's parts: expiry, nonce, owner, tag.
type Parts = (i64, [u8; 16], Option<[u8; 16]>, [u8; 32]);

/// The parts of a token in canonical form; `None` for anything else.
fn parse(token: &str) -> Option<Parts> {
    let parts: Vec<&str> = token.split('.').collect();
    let (expires, nonce, owner, tag) = match parts.as_slice() {
        [expires, nonce, tag] => (*expires, *nonce, None, *tag),
        [expires, nonce, owner, tag] => (*expires, *nonce, Some(*owner), *tag),
        _ => return None,
    };
    // Digits only (`i64::from_str` would also take a sign), no leading zero.
    if expires.is_empty()
        || expires.starts_with('0')
        || !expires.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let expires: i64 = expires.parse().ok()?;
    let owner = match owner {
        Some(owner) => Some(decode_hex(owner)?),
        None => None,
    };
    let parsed = (expires, decode_hex(nonce)?, owner, decode_hex(tag)?);
    // Belt and braces: the canonical rendering of what was parsed is the input.
    (render(parsed.0, &parsed.1, parsed.2.as_ref(), &parsed.3) == token).then_some(parsed)
}

/// Exactly `2 * N` lowercase hex digits (`u8::from_str_radix` would take `+` and
/// uppercase).
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(expires: i64, nonce: &[u8; 16], owner: Option<&[u8; 16]>, tag: &[u8; 32]) -> String {
    match owner {
        Some(owner) => format!("{expires}.{}.{}.{}", hex(nonce), hex(owner), hex(tag)),
        None => format!("{expires}.{}.{}", hex(nonce), hex(tag)),
    }
}

/// What a download token is bound to: the object's row and the version of its bytes.
fn download_binding(object: &super::FileObject) -> String {
    format!("{}:{}", object.id, object.etag)
}

impl StorageService {
    /// A URL that allows downloading `bucket`/`path` for `expires_in` seconds, any
    /// number of times until it expires.
    #[tracing::instrument(name = "tabula.storage.create_signed_url", skip_all, fields(bucket = bucket, path = path))]
    pub async fn create_signed_url(
        &self,
        bucket: &str,
        path: &str,
        expires_in: u64,
    ) -> Result<String> {
        super::recorded(
            "create_signed_url",
            Box::pin(async {
                // Read access now (the handle's policies), and the object itself: the
                // token serves this object, not whatever is at the path later.
                let object = self.object(bucket, path).await?;
                if expires_in == 0 || expires_in > 7 * 24 * 3600 {
                    return Err(Error::Validation(
                        "expires_in must be 1 second to 7 days".into(),
                    ));
                }
                let expires = Utc::now().timestamp() + expires_in as i64;
                // The object's row and its bytes (an overwrite keeps the row, not the
                // etag): the token never serves a later version.
                let binding = download_binding(&object);
                let token = self.sign(Purpose::Download, bucket, path, expires, &binding, None);
                Ok(format!(
                    "{}/object/sign/{bucket}/{}?token={token}",
                    self.base_url,
                    keys::encode_path(path)
                ))
            }),
        )
        .await
    }

    /// A URL that allows one upload to exactly `bucket`/`path` (with `PUT`, through
    /// `http::router`) within `expires_in` seconds. The token is bound to the purpose:
    /// it cannot be used to download, nor a download token to upload. It is single-use:
    /// the first upload that succeeds with it consumes it (see
    /// [`upload_signed_stream`](Self::upload_signed_stream)); each call mints a new
    /// token, so two URLs for one path allow two uploads.
    pub async fn create_signed_upload_url(
        &self,
        bucket: &str,
        path: &str,
        expires_in: u64,
    ) -> Result<String> {
        self.bucket(bucket).await?;
        validate_path(path)?;
        if expires_in == 0 || expires_in > 24 * 3600 {
            return Err(Error::Validation(
                "expires_in must be 1 second to 1 day".into(),
            ));
        }
        // A user-scoped service mints for its user only: the upload will be theirs,
        // and will not replace another user's object. An anonymous one mints nothing.
        let owner = match (self.db.is_scoped(), self.db.scope_subject()) {
            (false, _) => None,
            (true, Some(user)) => Some(user),
            (true, None) => {
                return Err(Error::PermissionDenied {
                    message: "an upload URL needs a user to own the upload".into(),
                });
            }
        };
        let expires = Utc::now().timestamp() + expires_in as i64;
        let binding = owner.map_or_else(|| "-".to_owned(), |o| o.to_string());
        let token = self.sign(Purpose::Upload, bucket, path, expires, &binding, owner);
        Ok(format!(
            "{}/object/upload/sign/{bucket}/{}?token={token}",
            self.base_url,
            keys::encode_path(path)
        ))
    }

    fn mac(
        &self,
        purpose: Purpose,
        bucket: &str,
        path: &str,
        expires: i64,
        nonce: &[u8; 16],
        binding: &str,
    ) -> Result<Hmac<Sha256>> {
        // HMAC takes keys of any length; `new` checked the key is at least 32 bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.signing_key)
            .map_err(|_| Error::Config("the storage signing key is unusable".into()))?;
        // Newlines cannot occur in bucket names or validated paths, and the expiry and
        // nonce have fixed alphabets: fields cannot run together.
        mac.update(
            format!(
                "{}\n{bucket}\n{path}\n{expires}\n{}\n{binding}",
                purpose.as_str(),
                hex(nonce)
            )
            .as_bytes(),
        );
        Ok(mac)
    }

    fn sign(
        &self,
        purpose: Purpose,
        bucket: &str,
        path: &str,
        expires: i64,
        binding: &str,
        owner: Option<Uuid>,
    ) -> String {
        let nonce = *Uuid::new_v4().as_bytes();
        let owner = owner.map(|o| *o.as_bytes());
        match self.mac(purpose, bucket, path, expires, &nonce, binding) {
            Ok(mac) => render(
                expires,
                &nonce,
                owner.as_ref(),
                &mac.finalize().into_bytes().into(),
            ),
            // Unreachable with HMAC; a token that can never verify is the safe answer.
            Err(_) => String::new(),
        }
    }

    /// Checks an *upload* token for exactly `bucket`/`path`: expired, malformed
    /// (anything but the canonical form, see the [module docs](super#caching-and-signing)),
    /// tampered tokens, and download tokens are [`Error::PermissionDenied`]. It does not
    /// consume the token; uploading through
    /// [`upload_signed_stream`](Self::upload_signed_stream) does. A download token is
    /// bound to its object: check it with [`verify_download`](Self::verify_download).
    pub fn verify(&self, purpose: Purpose, bucket: &str, path: &str, token: &str) -> Result<()> {
        match purpose {
            Purpose::Upload => self.grant(purpose, bucket, path, token).map(|_| ()),
            Purpose::Download => Err(Error::PermissionDenied {
                message: "a download token is checked against its object: use verify_download"
                    .into(),
            }),
        }
    }

    /// Checks a download token for `bucket`/`path` against the object there now, and
    /// returns it: a token made for an object that was since deleted or replaced (even
    /// by one at the same path) is [`Error::PermissionDenied`], as are expired,
    /// malformed and tampered ones. The object is read through this service's handle.
    pub async fn verify_download(
        &self,
        bucket: &str,
        path: &str,
        token: &str,
    ) -> Result<super::FileObject> {
        let object = match self.object(bucket, path).await {
            Ok(object) => object,
            // Nothing there is a token that grants nothing, not a lookup.
            Err(Error::NotFound { .. }) => {
                return Err(Error::PermissionDenied {
                    message: "signed URL has a bad signature".into(),
                });
            }
            Err(e) => return Err(e),
        };
        self.check(
            Purpose::Download,
            bucket,
            path,
            token,
            &download_binding(&object),
        )?;
        Ok(object)
    }

    /// What an upload token grants (see [`verify`](Self::verify)).
    pub(crate) fn grant(
        &self,
        purpose: Purpose,
        bucket: &str,
        path: &str,
        token: &str,
    ) -> Result<Grant> {
        let owner = parse(token)
            .and_then(|(_, _, owner, _)| owner)
            .map(Uuid::from_bytes);
        let binding = owner.map_or_else(|| "-".to_owned(), |o| o.to_string());
        self.check(purpose, bucket, path, token, &binding)
    }

    fn check(
        &self,
        purpose: Purpose,
        bucket: &str,
        path: &str,
        token: &str,
        binding: &str,
    ) -> Result<Grant> {
        let denied = |why: &str| Error::PermissionDenied {
            message: format!("signed URL {why}"),
        };
        let (expires, nonce, owner, tag) = parse(token).ok_or_else(|| denied("is malformed"))?;
        self.mac(purpose, bucket, path, expires, &nonce, binding)?
            .verify_slice(&tag)
            .map_err(|_| denied("has a bad signature"))?;
        if Utc::now().timestamp() > expires {
            return Err(denied("has expired"));
        }
        Ok(Grant {
            expires,
            nonce: Uuid::from_bytes(nonce),
            owner: owner.map(Uuid::from_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "00112233445566778899aabbccddeeff";
    const TAG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn only_the_canonical_form_parses() {
        let good = format!("1700000000.{NONCE}.{TAG}");
        assert!(parse(&good).is_some());
        let upper_tag = TAG.to_ascii_uppercase();
        let plus_nibble = format!("+{}", &TAG[1..]);
        for bad in [
            format!("+1700000000.{NONCE}.{TAG}"),
            format!("01700000000.{NONCE}.{TAG}"),
            format!("-1700000000.{NONCE}.{TAG}"),
            format!(" 1700000000.{NONCE}.{TAG}"),
            format!("0.{NONCE}.{TAG}"),
            format!(".{NONCE}.{TAG}"),
            format!("1700000000.{NONCE}.{upper_tag}"),
            format!("1700000000.{NONCE}.{plus_nibble}"),
            format!("1700000000.{NONCE}.{TAG}0"),
            format!("1700000000.{NONCE}.{}", &TAG[1..]),
            format!("1700000000.{NONCE}.{TAG}."),
            format!("1700000000.{TAG}"),
            format!("99999999999999999999.{NONCE}.{TAG}"),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?} parsed");
        }
    }
}
