//! Verified identities: `Db::as_jwt` scopes a handle only with a token that passes
//! every check — signature by a configured key, the key's own algorithm, expiry,
//! not-before, audience, issuer — and a known role.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tabula::jwt::JwtVerifier;
use tabula::{Db, DbConfig, Error};
use uuid::Uuid;

const SECRET: &[u8] = b"super-secret-jwt-token-with-at-least-32-characters";

/// A P-256 key made for these tests (`openssl ecparam -name prime256v1`), and its
/// public half as a JWKS.
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgzxtmpcwSKi1Iq9We
XYYTPlk2SxGmCnpYwfSQALCXIzChRANCAASogHJgl0PPO9VoVb+cGQsvM5O/katC
b3ogc/cQUvyVuooF146TxqvDeRK05LAp0Vz6pB6K9iVzlXJjghIaMwNI
-----END PRIVATE KEY-----
";
const EC_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"test-key",
  "x":"qIByYJdDzzvVaFW_nBkLLzOTv5GrQm96IHP3EFL8lbo",
  "y":"igXXjpPGq8N5ErTksCnRXPqkHor2JXOVcmOCEhozA0g"}]}"#;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn es256(claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("test-key".into());
    let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("key");
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn user_claims(user: Uuid) -> serde_json::Value {
    json!({ "sub": user, "role": "authenticated", "aud": "authenticated", "exp": now() + 600 })
}

async fn with_verifier(verifier: JwtVerifier) -> (Db, Uuid, Uuid) {
    let (_, url) = db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url).jwt(verifier))
        .await
        .expect("db");
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (user, name) in [(alice, "alice"), (bob, "bob")] {
        db.create(NewProfile {
            user_id: user,
            ..new_profile(name)
        })
        .await
        .expect("row");
    }
    (db, alice, bob)
}

fn refused(result: tabula::Result<Db>) -> String {
    match result {
        Err(Error::Unauthenticated { reason }) => reason,
        Err(other) => panic!("expected Unauthenticated, got {other:?}"),
        Ok(_) => panic!("a bad token scoped a handle"),
    }
}

#[tokio::test]
async fn a_valid_hs256_token_scopes_the_handle_to_its_user() {
    let verifier = JwtVerifier::hs256(SECRET)
        .expect("verifier")
        .audience("authenticated");
    let (db, alice, _) = with_verifier(verifier).await;
    let scoped = db
        .as_jwt(&hs256(user_claims(alice), SECRET))
        .expect("valid token");
    let names: Vec<String> = scoped
        .query::<Profile>()
        .select(Profile::USERNAME)
        .all()
        .await
        .expect("query");
    assert_eq!(names, ["alice"], "the policy saw the token's user");
}

#[tokio::test]
async fn every_bad_hs256_token_is_refused_with_its_reason() {
    let verifier = JwtVerifier::hs256(SECRET)
        .expect("verifier")
        .audience("authenticated")
        .issuer("https://auth.example");
    let (db, alice, _) = with_verifier(verifier).await;
    let good = |extra: serde_json::Value| {
        let mut claims = user_claims(alice);
        claims["iss"] = json!("https://auth.example");
        for (k, v) in extra.as_object().expect("object") {
            claims[k] = v.clone();
        }
        claims
    };
    assert!(
        db.as_jwt(&hs256(good(json!({})), SECRET)).is_ok(),
        "the control passes"
    );

    let expired = refused(db.as_jwt(&hs256(good(json!({ "exp": now() - 3600 })), SECRET)));
    assert!(expired.contains("expired"), "{expired}");
    let early = refused(db.as_jwt(&hs256(good(json!({ "nbf": now() + 3600 })), SECRET)));
    assert!(early.contains("not valid yet"), "{early}");
    let audience = refused(db.as_jwt(&hs256(good(json!({ "aud": "someone-else" })), SECRET)));
    assert!(audience.contains("audience"), "{audience}");
    let issuer = refused(db.as_jwt(&hs256(
        good(json!({ "iss": "https://evil.example" })),
        SECRET,
    )));
    assert!(issuer.contains("issuer"), "{issuer}");
    // A configured audience and issuer must be present, not only right when present.
    for claim in ["aud", "iss"] {
        let mut without = good(json!({}));
        without.as_object_mut().expect("object").remove(claim);
        let reason = refused(db.as_jwt(&hs256(without, SECRET)));
        assert!(reason.contains(claim), "{claim}: {reason}");
    }
    let mut no_exp = good(json!({}));
    no_exp.as_object_mut().expect("object").remove("exp");
    let forever = refused(db.as_jwt(&hs256(no_exp, SECRET)));
    assert!(forever.contains("exp"), "{forever}");
    // Signed by another key, asking for the service role: refused by the signature.
    let forged = hs256(
        good(json!({ "role": "service_role" })),
        b"another-secret-that-is-also-32-bytes-long!!",
    );
    let forged = refused(db.as_jwt(&forged));
    assert!(forged.contains("signature"), "{forged}");
    // `alg: none`: no signature at all.
    let header = base64url(r#"{"alg":"none","typ":"JWT"}"#);
    let body = base64url(&good(json!({ "role": "service_role" })).to_string());
    refused(db.as_jwt(&format!("{header}.{body}.")));
    // Garbage, and a token of megabytes.
    refused(db.as_jwt("not.a.jwt"));
    refused(db.as_jwt(&"a".repeat(1 << 20)));
    // A role the database does not know: signed correctly, still refused.
    let unknown = db.as_jwt(&hs256(good(json!({ "role": "postgres" })), SECRET));
    assert!(matches!(unknown, Err(Error::Validation(_))), "{unknown:?}");
}

#[tokio::test]
async fn es256_tokens_verify_against_a_jwks_and_the_algorithm_comes_from_the_key() {
    let verifier = JwtVerifier::jwks(EC_JWKS).expect("jwks");
    let (db, _, bob) = with_verifier(verifier).await;
    let scoped = db
        .as_jwt(&es256(user_claims(bob)))
        .expect("valid ES256 token");
    let names: Vec<String> = scoped
        .query::<Profile>()
        .select(Profile::USERNAME)
        .all()
        .await
        .expect("query");
    assert_eq!(names, ["bob"]);
    // An HS256 token "signed" with the public key's text (algorithm confusion) and a
    // plain HS256 token: no key of the set accepts HS256.
    let confused = hs256(user_claims(bob), EC_JWKS.as_bytes());
    let reason = refused(db.as_jwt(&confused));
    assert!(reason.contains("no key accepts"), "{reason}");
    // Expired, though signed by the right key.
    let mut old = user_claims(bob);
    old["exp"] = json!(now() - 3600);
    assert!(refused(db.as_jwt(&es256(old))).contains("expired"));
}

#[tokio::test]
async fn without_a_verifier_as_jwt_is_a_configuration_error_and_weak_secrets_are_refused() {
    let db = db().await;
    let token = hs256(user_claims(Uuid::new_v4()), SECRET);
    assert!(matches!(db.as_jwt(&token), Err(Error::Config(_))));
    assert!(matches!(
        JwtVerifier::hs256(b"short"),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        JwtVerifier::jwks(r#"{"keys":[]}"#),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        JwtVerifier::jwks(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#),
        Err(Error::Config(_))
    ));
}

fn base64url(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
