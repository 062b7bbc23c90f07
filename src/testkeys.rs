//! Test-only identity provider: an RS256 key generated once per test run, its JWKS,
//! and tokens signed at run time.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

pub struct TestIssuer {
    pub iss: String,
    pub jwks: Value,
    key: RS256KeyPair,
}

fn shared_key() -> &'static RS256KeyPair {
    static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| RS256KeyPair::generate(2048).unwrap().with_key_id("test-1"))
}

fn rotated_key() -> &'static RS256KeyPair {
    static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| RS256KeyPair::generate(2048).unwrap().with_key_id("test-2"))
}

impl TestIssuer {
    pub fn new() -> TestIssuer {
        TestIssuer::from_key(shared_key().clone(), "test-1")
    }

    /// The same issuer after a key rotation: a new key under a new `kid`.
    pub fn rotated() -> TestIssuer {
        TestIssuer::from_key(rotated_key().clone(), "test-2")
    }

    fn from_key(key: RS256KeyPair, kid: &str) -> TestIssuer {
        let c = key.public_key().to_components();
        let jwks = json!({"keys": [{
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e),
        }]});
        TestIssuer {
            iss: "https://idp.test".to_owned(),
            jwks,
            key,
        }
    }
}

/// Signs `claims` (JSON object). `iss` defaults to the issuer's, `exp` to 10 minutes;
/// `sub`, `aud`, `iss` go to the standard fields, everything else is custom.
pub fn sign_rs256(issuer: &TestIssuer, claims: Value) -> String {
    let mut custom: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
    let iss = custom
        .remove("iss")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or(issuer.iss.clone());
    let sub = custom
        .remove("sub")
        .and_then(|v| v.as_str().map(str::to_owned));
    let aud = custom
        .remove("aud")
        .and_then(|v| v.as_str().map(str::to_owned));
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(600)).with_issuer(iss);
    if let Some(sub) = sub {
        c = c.with_subject(sub);
    }
    if let Some(aud) = aud {
        c = c.with_audience(aud);
    }
    issuer.key.sign(c).unwrap()
}

// Keys of every supported kind and their JWKs, for the JWT and JWKS tests.

/// Keys generated once per test run (RSA generation is slow in debug builds).
pub struct TestKeys {
    pub rsa: RS256KeyPair,
    pub es256: ES256KeyPair,
    pub es384: ES384KeyPair,
    pub ed: Ed25519KeyPair,
}

pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        rsa: RS256KeyPair::generate(2048).unwrap().with_key_id("rsa-1"),
        es256: ES256KeyPair::generate().with_key_id("es256-1"),
        es384: ES384KeyPair::generate().with_key_id("es384-1"),
        ed: Ed25519KeyPair::generate().with_key_id("ed-1"),
    })
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

pub fn rsa_jwk(key: &RS256KeyPair, kid: &str) -> Value {
    let c = key.public_key().to_components();
    json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
}

pub fn ec_jwk(point: &[u8], crv: &str, kid: &str) -> Value {
    let half = (point.len() - 1) / 2;
    json!({"kty": "EC", "crv": crv, "kid": kid, "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..])})
}

pub fn es256_jwk(key: &ES256KeyPair, kid: &str) -> Value {
    ec_jwk(
        &key.public_key().public_key().to_bytes_uncompressed(),
        "P-256",
        kid,
    )
}

pub fn es384_jwk(key: &ES384KeyPair, kid: &str) -> Value {
    ec_jwk(
        &key.public_key().public_key().to_bytes_uncompressed(),
        "P-384",
        kid,
    )
}

pub fn ed_jwk(key: &Ed25519KeyPair, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(key.public_key().to_bytes())})
}
