//! Verified identities for Row Level Security: [`Db::as_jwt`](crate::Db::as_jwt)
//! checks a Supabase-style JWT before its claims scope a handle.
//!
//! A [`JwtVerifier`] holds the keys a token may be signed with — an HS256 secret, or the
//! RS256 / ES256 public keys of a JWKS — and what every token must carry: an `exp` in
//! the future (with 30 s of leeway for clocks), an `nbf` in the past when present, and
//! the configured audience and issuer. The algorithm comes from the key, never from the
//! token: a token whose header names another algorithm (`none`, or HS256 against an RSA
//! key, the classic confusion) is refused before any signature is checked. The claims
//! then go through the same rules as [`Db::as_claims`](crate::Db::as_claims): the
//! `role` must be `anon`, `authenticated` or `service_role`, so only a token signed by
//! your keys can ask for the service role.
//!
//! Every refusal is [`Error::Unauthenticated`] with the reason, and never says more
//! about the keys than which check failed.

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::error::{Error, Result};

/// Checks JWTs before their claims scope a handle; see the [module docs](self). Cheap to
/// clone.
///
/// ```
/// let verifier = tabula::jwt::JwtVerifier::hs256(b"a-secret-of-at-least-thirty-two-bytes!")?
///     .audience("authenticated");
/// # Ok::<(), tabula::Error>(())
/// ```
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Vec<Key>,
    audience: Option<String>,
    issuer: Option<String>,
}

struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys stay out of logs.
        f.debug_struct("JwtVerifier")
            .field("keys", &self.inner.keys.len())
            .field("audience", &self.inner.audience)
            .field("issuer", &self.inner.issuer)
            .finish()
    }
}

/// Clock skew allowed on `exp` and `nbf`, in seconds.
const LEEWAY: u64 = 30;

impl JwtVerifier {
    /// Tokens signed with HS256 and `secret` (at least 32 bytes, as Supabase's JWT
    /// secret is).
    pub fn hs256(secret: impl AsRef<[u8]>) -> Result<Self> {
        let secret = secret.as_ref();
        if secret.len() < 32 {
            return Err(Error::Config(
                "a JWT secret must be at least 32 bytes".into(),
            ));
        }
        Ok(JwtVerifier::with_keys(vec![Key {
            id: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        }]))
    }

    /// Tokens signed with one of the RS256 or ES256 keys of a JWKS document (JSON, as
    /// served at `/.well-known/jwks.json`). A key of another kind, or without its
    /// algorithm, is refused, so the set says exactly what a token may use.
    ///
    /// ```
    /// let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"k1",
    ///   "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    ///   "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
    /// let verifier = tabula::jwt::JwtVerifier::jwks(jwks)?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn jwks(json: &str) -> Result<Self> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| Error::Config(format!("invalid JWKS: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match (jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(_)) => {
                    Algorithm::ES256
                }
                (algorithm, _) => {
                    return Err(Error::Config(format!(
                        "JWKS key {}: only RS256 and ES256 keys with their `alg` are accepted, not {algorithm:?}",
                        jwk.common.key_id.as_deref().unwrap_or("without a kid")
                    )));
                }
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| Error::Config(format!("invalid JWKS key: {e}")))?;
            keys.push(Key {
                id: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(Error::Config("the JWKS holds no key".into()));
        }
        Ok(JwtVerifier::with_keys(keys))
    }

    fn with_keys(keys: Vec<Key>) -> Self {
        JwtVerifier {
            inner: Arc::new(Inner {
                keys,
                audience: None,
                issuer: None,
            }),
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            change(inner);
        } else {
            let inner = Inner {
                keys: self
                    .inner
                    .keys
                    .iter()
                    .map(|k| Key {
                        id: k.id.clone(),
                        algorithm: k.algorithm,
                        key: k.key.clone(),
                    })
                    .collect(),
                audience: self.inner.audience.clone(),
                issuer: self.inner.issuer.clone(),
            };
            let mut inner = inner;
            change(&mut inner);
            self.inner = Arc::new(inner);
        }
        self
    }

    /// Every token must name `audience` in its `aud` claim (Supabase's is
    /// `authenticated`). Without it, `aud` is not checked.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        self.edit(|inner| inner.audience = Some(audience))
    }

    /// Every token must have been issued by `issuer` (its `iss` claim).
    pub fn issuer(self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        self.edit(|inner| inner.issuer = Some(issuer))
    }

    /// The claims of `token` once it passed every check; see the [module docs](self).
    pub fn verify(&self, token: &str) -> Result<serde_json::Value> {
        let refuse = |reason: String| Error::Unauthenticated { reason };
        if token.len() > 16 * 1024 {
            return Err(refuse("the token is longer than 16 KiB".into()));
        }
        // The header only chooses among our keys; it never widens what is accepted.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refuse("the token is not a well-formed JWT".into()))?;
        let candidates: Vec<&Key> = self
            .inner
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.id) {
                (Some(wanted), Some(id)) => wanted == id,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(refuse(format!(
                "no key accepts a token signed with {:?}{}",
                header.alg,
                header
                    .kid
                    .as_deref()
                    .map(|k| format!(" (kid {k})"))
                    .unwrap_or_default()
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured audience or issuer must be *present*, not only right when
        // present: a token made for another purpose without `aud` must not pass.
        let mut required = vec!["exp"];
        match &self.inner.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.inner.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Some(e),
            }
        }
        let reason = match last.as_ref().map(|e| e.kind()) {
            Some(jsonwebtoken::errors::ErrorKind::ExpiredSignature) => "the token has expired",
            Some(jsonwebtoken::errors::ErrorKind::ImmatureSignature) => {
                "the token is not valid yet (nbf)"
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidAudience) => {
                "the token is for another audience"
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidIssuer) => {
                "the token is from another issuer"
            }
            Some(jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim)) => {
                return Err(refuse(format!("the token has no `{claim}` claim")));
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                "the token's signature does not verify"
            }
            _ => "the token does not verify",
        };
        Err(refuse(reason.into()))
    }
}
