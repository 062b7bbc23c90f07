//! The issuer's JSON Web Key Set, decoded once at configuration time into public keys
//! ready to check signatures. Keys we cannot use safely are skipped with a warning;
//! a set with no usable key is an error.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::{
    ES256PublicKey, ES384PublicKey, Ed25519PublicKey, PS256PublicKey, PS384PublicKey, PS512PublicKey,
    RS256PublicKey, RS384PublicKey, RS512PublicKey,
};
use serde_json::{Map, Value};

use crate::jwt::Algorithm;

/// More keys than any real issuer publishes; guards against a pasted-in junk document.
const MAX_KEYS: usize = 100;
/// Longest base64url member we decode (a 4096-bit modulus is 683 characters).
const MAX_MEMBER_CHARS: usize = 1024;

/// Decoded signature-verification keys of one issuer.
pub struct KeySet {
    keys: Vec<PublicJwk>,
}

/// One usable key: its `kid`, the `alg` the JWK pins it to (if any), and the key.
pub(crate) struct PublicJwk {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Option<Algorithm>,
    pub(crate) material: KeyMaterial,
}

/// The public key in the form jwt-simple verifies with. An RSA key is held once per
/// RSA algorithm because jwt-simple types keys by algorithm.
pub(crate) enum KeyMaterial {
    Rsa(Box<RsaKeys>),
    P256(ES256PublicKey),
    P384(ES384PublicKey),
    Ed25519(Ed25519PublicKey),
}

pub(crate) struct RsaKeys {
    /// Modulus length in bytes: the length of every signature made with this key.
    pub(crate) modulus_len: usize,
    pub(crate) rs256: RS256PublicKey,
    pub(crate) rs384: RS384PublicKey,
    pub(crate) rs512: RS512PublicKey,
    pub(crate) ps256: PS256PublicKey,
    pub(crate) ps384: PS384PublicKey,
    pub(crate) ps512: PS512PublicKey,
}

impl KeyMaterial {
    /// Whether `alg` is a signature algorithm for this key type (never HMAC: an RSA
    /// public key must not become a shared secret).
    pub(crate) fn supports(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyMaterial::Rsa(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyMaterial::P256(_) => alg == ES256,
            KeyMaterial::P384(_) => alg == ES384,
            KeyMaterial::Ed25519(_) => alg == EdDSA,
        }
    }

    /// Exact signature length in bytes for this key (JWS ECDSA signatures are r || s).
    pub(crate) fn signature_len(&self) -> usize {
        match self {
            KeyMaterial::Rsa(k) => k.modulus_len,
            KeyMaterial::P256(_) => 64,
            KeyMaterial::P384(_) => 96,
            KeyMaterial::Ed25519(_) => 64,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            KeyMaterial::Rsa(_) => "RSA",
            KeyMaterial::P256(_) => "EC P-256",
            KeyMaterial::P384(_) => "EC P-384",
            KeyMaterial::Ed25519(_) => "OKP Ed25519",
        }
    }
}

impl PublicJwk {
    /// Whether a token signed with `alg` may be checked with this key.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.material.supports(alg) && self.alg.map_or(true, |pinned| pinned == alg)
    }
}

/// Why a JWKS cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    NotAKeySet,
    /// More than [`MAX_KEYS`] entries.
    TooManyKeys(usize),
    /// Every key was skipped; the reasons say why.
    NoUsableKeys(Vec<String>),
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotAKeySet => f.write_str(r#"must be a JSON Web Key Set: {"keys": [...]}"#),
            JwksError::TooManyKeys(n) => write!(f, "has {n} keys, at most {MAX_KEYS} are supported"),
            JwksError::NoUsableKeys(reasons) if reasons.is_empty() => f.write_str("has no keys"),
            JwksError::NoUsableKeys(reasons) => write!(f, "has no usable signature key ({})", reasons.join("; ")),
        }
    }
}

impl std::error::Error for JwksError {}

impl KeySet {
    /// Decodes a JWKS. Returns the usable keys and one warning per skipped key.
    pub fn from_jwks(jwks: &Value) -> Result<(KeySet, Vec<String>), JwksError> {
        let entries = jwks.get("keys").and_then(Value::as_array).ok_or(JwksError::NotAKeySet)?;
        if entries.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys(entries.len()));
        }
        let mut keys: Vec<PublicJwk> = Vec::with_capacity(entries.len());
        let mut warnings = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let label = key_label(i, entry);
            match decode_jwk(entry) {
                Ok(key) => {
                    // Two keys answering the same kid for the same algorithm would make the
                    // choice ambiguous; keep the first.
                    let clash = keys.iter().any(|k| {
                        k.kid == key.kid && Algorithm::all().iter().any(|a| k.accepts(*a) && key.accepts(*a))
                    });
                    if clash {
                        warnings.push(format!("{label} skipped: duplicates the kid of an earlier key of the same type"));
                        continue;
                    }
                    if entry.get("d").is_some() {
                        warnings.push(format!(
                            "{label} contains private key material; only the public part is used, remove it from the configuration"
                        ));
                    }
                    keys.push(key);
                }
                Err(reason) => warnings.push(format!("{label} skipped: {reason}")),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys(warnings));
        }
        Ok((KeySet { keys }, warnings))
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token header: by `kid` when the token names one; without a kid,
    /// only when exactly one key accepts `alg`.
    pub(crate) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&PublicJwk, KeyChoiceError> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).peekable();
                if named.peek().is_none() {
                    return Err(KeyChoiceError::UnknownKid);
                }
                named.find(|k| k.accepts(alg)).ok_or(KeyChoiceError::AlgorithmMismatch)
            }
            None => {
                let mut usable = self.keys.iter().filter(|k| k.accepts(alg));
                match (usable.next(), usable.next()) {
                    (Some(only), None) => Ok(only),
                    _ => Err(KeyChoiceError::KidRequired),
                }
            }
        }
    }
}

/// Why no key was chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyChoiceError {
    UnknownKid,
    AlgorithmMismatch,
    KidRequired,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (k.kid.as_deref().unwrap_or("-"), k.material.kind(), k.alg)))
            .finish()
    }
}

fn key_label(index: usize, entry: &Value) -> String {
    match entry.get("kid").and_then(Value::as_str) {
        Some(kid) => format!("key {index} (kid {:?})", truncate(kid, 64)),
        None => format!("key {index}"),
    }
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => s.get(..at).unwrap_or(s),
        None => s,
    }
}

fn decode_jwk(entry: &Value) -> Result<PublicJwk, String> {
    let jwk = entry.as_object().ok_or("not a JSON object")?;
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("kid is not a string".to_owned()),
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(other) => return Err(format!("use {other} is not \"sig\"")),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops.as_array().is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err("key_ops does not include \"verify\"".to_owned());
        }
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(alg)) => {
            Some(alg.parse::<Algorithm>().map_err(|_| format!("alg {:?} is not supported", truncate(alg, 32)))?)
        }
        Some(_) => return Err("alg is not a string".to_owned()),
    };
    let kty = jwk.get("kty").and_then(Value::as_str).ok_or("kty is missing")?;
    let crv = jwk.get("crv").and_then(Value::as_str);
    let material = match (kty, crv) {
        ("RSA", _) => rsa_key(jwk)?,
        ("EC", Some("P-256")) => {
            let point = ec_point(jwk, 32)?;
            KeyMaterial::P256(ES256PublicKey::from_bytes(&point).map_err(|_| "x,y is not a P-256 point")?)
        }
        ("EC", Some("P-384")) => {
            let point = ec_point(jwk, 48)?;
            KeyMaterial::P384(ES384PublicKey::from_bytes(&point).map_err(|_| "x,y is not a P-384 point")?)
        }
        ("OKP", Some("Ed25519")) => {
            let x = member(jwk, "x")?;
            if x.len() != 32 {
                return Err("x is not 32 bytes".to_owned());
            }
            KeyMaterial::Ed25519(Ed25519PublicKey::from_bytes(&x).map_err(|_| "x is not a valid Ed25519 key")?)
        }
        ("EC" | "OKP", crv) => {
            return Err(format!("curve {:?} is not supported", truncate(crv.unwrap_or("(missing)"), 32)));
        }
        ("oct", _) => return Err("symmetric (oct) keys are never accepted".to_owned()),
        (kty, _) => return Err(format!("kty {:?} is not supported", truncate(kty, 32))),
    };
    if let Some(alg) = alg {
        if !material.supports(alg) {
            return Err(format!("alg {alg} does not fit a {} key", material.kind()));
        }
    }
    Ok(PublicJwk { kid, alg, material })
}

fn rsa_key(jwk: &Map<String, Value>) -> Result<KeyMaterial, String> {
    let n = member(jwk, "n")?;
    let e = member(jwk, "e")?;
    // jwt-simple enforces 2048..=4096-bit moduli and e = 65537.
    let bad = |_| "n,e is not an accepted RSA key (2048 to 4096 bits, e = 65537)".to_owned();
    let modulus_len = n.iter().skip_while(|b| **b == 0).count();
    Ok(KeyMaterial::Rsa(Box::new(RsaKeys {
        modulus_len,
        rs256: RS256PublicKey::from_components(&n, &e).map_err(bad)?,
        rs384: RS384PublicKey::from_components(&n, &e).map_err(bad)?,
        rs512: RS512PublicKey::from_components(&n, &e).map_err(bad)?,
        ps256: PS256PublicKey::from_components(&n, &e).map_err(bad)?,
        ps384: PS384PublicKey::from_components(&n, &e).map_err(bad)?,
        ps512: PS512PublicKey::from_components(&n, &e).map_err(bad)?,
    })))
}

/// SEC1 uncompressed point `04 || x || y` from the JWK's fixed-length coordinates.
fn ec_point(jwk: &Map<String, Value>, coordinate_len: usize) -> Result<Vec<u8>, String> {
    let x = member(jwk, "x")?;
    let y = member(jwk, "y")?;
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return Err(format!("x and y must be {coordinate_len} bytes each"));
    }
    let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

/// A base64url member. Padding is tolerated: some issuers emit it.
fn member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk.get(name).and_then(Value::as_str).ok_or_else(|| format!("{name} is missing"))?;
    if text.len() > MAX_MEMBER_CHARS {
        return Err(format!("{name} is too long"));
    }
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| format!("{name} is not base64url"))
}
