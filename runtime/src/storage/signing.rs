//! Signed URLs: tokens that grant one purpose on exactly one object key until they
//! expire.
//!
//! A token is `<expires>.<nonce>.<tag>`: the expiry in Unix seconds (decimal digits, no
//! sign, no leading zero), 16 random bytes and an HMAC-SHA256 over purpose, bucket,
//! path, expiry and nonce, both in lowercase hex of exact length. Only that canonical
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
}

/// The parts of a token in canonical form; `None` for anything else.
fn parse(token: &str) -> Option<(i64, [u8; 16], [u8; 32])> {
    let mut parts = token.split('.');
    let (expires, nonce, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    // Digits only (`i64::from_str` would also take a sign), no leading zero.
    if expires.is_empty()
        || expires.starts_with('0')
        || !expires.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let expires: i64 = expires.parse().ok()?;
    let parsed = (expires, decode_hex(nonce)?, decode_hex(tag)?);
    // Belt and braces: the canonical rendering of what was parsed is the input.
    (render(parsed.0, &parsed.1, &parsed.2) == token).then_some(parsed)
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

fn render(expires: i64, nonce: &[u8; 16], tag: &[u8; 32]) -> String {
    format!("{expires}.{}.{}", hex(nonce), hex(tag))
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
                self.object(bucket, path).await?;
                if expires_in == 0 || expires_in > 7 * 24 * 3600 {
                    return Err(Error::Validation(
                        "expires_in must be 1 second to 7 days".into(),
                    ));
                }
                let expires = Utc::now().timestamp() + expires_in as i64;
                let token = self.sign(Purpose::Download, bucket, path, expires);
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
        let expires = Utc::now().timestamp() + expires_in as i64;
        let token = self.sign(Purpose::Upload, bucket, path, expires);
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
    ) -> Result<Hmac<Sha256>> {
        // HMAC takes keys of any length; `new` checked the key is at least 32 bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.signing_key)
            .map_err(|_| Error::Config("the storage signing key is unusable".into()))?;
        // Newlines cannot occur in bucket names or validated paths, and the expiry and
        // nonce have fixed alphabets: fields cannot run together.
        mac.update(
            format!(
                "{}\n{bucket}\n{path}\n{expires}\n{}",
                purpose.as_str(),
                hex(nonce)
            )
            .as_bytes(),
        );
        Ok(mac)
    }

    fn sign(&self, purpose: Purpose, bucket: &str, path: &str, expires: i64) -> String {
        let nonce = *Uuid::new_v4().as_bytes();
        match self.mac(purpose, bucket, path, expires, &nonce) {
            Ok(mac) => render(expires, &nonce, &mac.finalize().into_bytes().into()),
            // Unreachable with HMAC; a token that can never verify is the safe answer.
            Err(_) => String::new(),
        }
    }

    /// Checks a token for `purpose` on exactly `bucket`/`path`: expired, malformed
    /// (anything but the canonical form, see the [module docs](super#caching-and-signing)) or tampered tokens
    /// are [`Error::PermissionDenied`]. It does not consume an upload token; uploading
    /// through [`upload_signed_stream`](Self::upload_signed_stream) does.
    pub fn verify(&self, purpose: Purpose, bucket: &str, path: &str, token: &str) -> Result<()> {
        self.grant(purpose, bucket, path, token).map(|_| ())
    }

    /// [`verify`](Self::verify), returning what the token grants.
    pub(crate) fn grant(
        &self,
        purpose: Purpose,
        bucket: &str,
        path: &str,
        token: &str,
    ) -> Result<Grant> {
        let denied = |why: &str| Error::PermissionDenied {
            message: format!("signed URL {why}"),
        };
        let (expires, nonce, tag) = parse(token).ok_or_else(|| denied("is malformed"))?;
        self.mac(purpose, bucket, path, expires, &nonce)?
            .verify_slice(&tag)
            .map_err(|_| denied("has a bad signature"))?;
        if Utc::now().timestamp() > expires {
            return Err(denied("has expired"));
        }
        Ok(Grant {
            expires,
            nonce: Uuid::from_bytes(nonce),
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
