//! The issuer's JSON Web Key Set, decoded once at configuration time into public keys
//! ready to check signatures — both as pure-Rust key objects and as the DER
//! SubjectPublicKeyInfo a host verifier (Envoy's BoringSSL) takes. Keys we cannot use
//! safely are skipped with a warning; a set with no usable key is an error.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::{
    ES256PublicKey, ES384PublicKey, PS256PublicKey, PS384PublicKey, PS512PublicKey, RS256PublicKey,
    RS384PublicKey, RS512PublicKey,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Asymmetric JWS algorithms we verify. HMAC (`HS*`) and `none` are deliberately absent:
/// a public key must never serve as a shared secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub fn all() -> &'static [Algorithm] {
        use Algorithm::*;
        &[
            RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
        ]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub(crate) key: PreparedKey,
}

/// A public key in every form a signature check needs, built once at key-load time so
/// no request pays for key decoding.
pub struct PreparedKey {
    pub(crate) material: KeyMaterial,
    /// DER `SubjectPublicKeyInfo`, what BoringSSL's `EVP_parse_public_key` reads.
    spki_der: Vec<u8>,
}

impl PreparedKey {
    pub(crate) fn new(material: KeyMaterial, spki_der: Vec<u8>) -> PreparedKey {
        PreparedKey { material, spki_der }
    }

    /// The key as DER `SubjectPublicKeyInfo`.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Exact signature length in bytes for this key.
    pub fn signature_len(&self) -> usize {
        self.material.signature_len()
    }
}

/// The public key in the form the pure-Rust verifiers take. An RSA key is held once per
/// RSA algorithm because jwt-simple types keys by algorithm. Ed25519 uses
/// ed25519-dalek rather than jwt-simple's ed25519-compact: on wasm32 dalek's 32-bit
/// field arithmetic avoids the emulated 128-bit multiplications that made
/// ed25519-compact's verification ~1.5x slower in V8 (bench/RESULTS.md).
pub(crate) enum KeyMaterial {
    Rsa(Box<RsaKeys>),
    P256(ES256PublicKey),
    P384(ES384PublicKey),
    Ed25519(ed25519_dalek::VerifyingKey),
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
        self.key.material.supports(alg) && (self.alg.is_none() || self.alg == Some(alg))
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
            JwksError::TooManyKeys(n) => {
                write!(f, "has {n} keys, at most {MAX_KEYS} are supported")
            }
            JwksError::NoUsableKeys(reasons) if reasons.is_empty() => f.write_str("has no keys"),
            JwksError::NoUsableKeys(reasons) => {
                write!(f, "has no usable signature key ({})", reasons.join("; "))
            }
        }
    }
}

impl std::error::Error for JwksError {}

impl KeySet {
    /// Decodes a JWKS. Returns the usable keys and one warning per skipped key.
    pub fn from_jwks(jwks: &Value) -> Result<(KeySet, Vec<String>), JwksError> {
        let entries = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NotAKeySet)?;
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
                        k.kid == key.kid
                            && Algorithm::all()
                                .iter()
                                .any(|a| k.accepts(*a) && key.accepts(*a))
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

    pub(crate) fn into_keys(self) -> Vec<PublicJwk> {
        self.keys
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
    pub(crate) fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<&PublicJwk, KeyChoiceError> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Err(KeyChoiceError::UnknownKid);
                }
                named
                    .find(|k| k.accepts(alg))
                    .ok_or(KeyChoiceError::AlgorithmMismatch)
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
            .entries(self.keys.iter().map(|k| {
                (
                    k.kid.as_deref().unwrap_or("-"),
                    k.key.material.kind(),
                    k.alg,
                )
            }))
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
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err("key_ops does not include \"verify\"".to_owned());
        }
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(alg)) => Some(
            alg.parse::<Algorithm>()
                .map_err(|_| format!("alg {:?} is not supported", truncate(alg, 32)))?,
        ),
        Some(_) => return Err("alg is not a string".to_owned()),
    };
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("kty is missing")?;
    let crv = jwk.get("crv").and_then(Value::as_str);
    let key = match (kty, crv) {
        ("RSA", _) => rsa_key(jwk)?,
        ("EC", Some("P-256")) => {
            let point = ec_point(jwk, 32)?;
            let material = KeyMaterial::P256(
                ES256PublicKey::from_bytes(&point).map_err(|_| "x,y is not a P-256 point")?,
            );
            PreparedKey::new(material, spki::ec(spki::OID_P256, &point))
        }
        ("EC", Some("P-384")) => {
            let point = ec_point(jwk, 48)?;
            let material = KeyMaterial::P384(
                ES384PublicKey::from_bytes(&point).map_err(|_| "x,y is not a P-384 point")?,
            );
            PreparedKey::new(material, spki::ec(spki::OID_P384, &point))
        }
        ("OKP", Some("Ed25519")) => {
            let x = member(jwk, "x")?;
            if x.len() != 32 {
                return Err("x is not 32 bytes".to_owned());
            }
            let bytes: [u8; 32] = x
                .as_slice()
                .try_into()
                .map_err(|_| "x is not 32 bytes".to_owned())?;
            let material = KeyMaterial::Ed25519(
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| "x is not a valid Ed25519 key")?,
            );
            PreparedKey::new(material, spki::ed25519(&x))
        }
        ("EC" | "OKP", crv) => {
            return Err(format!(
                "curve {:?} is not supported",
                truncate(crv.unwrap_or("(missing)"), 32)
            ));
        }
        ("oct", _) => return Err("symmetric (oct) keys are never accepted".to_owned()),
        (kty, _) => return Err(format!("kty {:?} is not supported", truncate(kty, 32))),
    };
    if let Some(alg) = alg {
        if !key.material.supports(alg) {
            return Err(format!(
                "alg {alg} does not fit a {} key",
                key.material.kind()
            ));
        }
    }
    Ok(PublicJwk { kid, alg, key })
}

fn rsa_key(jwk: &Map<String, Value>) -> Result<PreparedKey, String> {
    let n = member(jwk, "n")?;
    let e = member(jwk, "e")?;
    // jwt-simple enforces 2048..=4096-bit moduli and e = 65537.
    let bad = |_| "n,e is not an accepted RSA key (2048 to 4096 bits, e = 65537)".to_owned();
    let modulus_len = n.iter().skip_while(|b| **b == 0).count();
    let material = KeyMaterial::Rsa(Box::new(RsaKeys {
        modulus_len,
        rs256: RS256PublicKey::from_components(&n, &e).map_err(bad)?,
        rs384: RS384PublicKey::from_components(&n, &e).map_err(bad)?,
        rs512: RS512PublicKey::from_components(&n, &e).map_err(bad)?,
        ps256: PS256PublicKey::from_components(&n, &e).map_err(bad)?,
        ps384: PS384PublicKey::from_components(&n, &e).map_err(bad)?,
        ps512: PS512PublicKey::from_components(&n, &e).map_err(bad)?,
    }));
    Ok(PreparedKey::new(material, spki::rsa(&n, &e)))
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
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{name} is missing"))?;
    if text.len() > MAX_MEMBER_CHARS {
        return Err(format!("{name} is too long"));
    }
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("{name} is not base64url"))
}

/// Hand-rolled DER for the three `SubjectPublicKeyInfo` shapes we emit (RFC 5280,
/// RFC 3279, RFC 5480, RFC 8410): a few fixed OIDs, so no ASN.1 library is needed.
pub(crate) mod spki {
    const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub(crate) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub(crate) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

    /// `tag || length || content`, definite-length DER.
    pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        out.push(tag);
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            let significant = bytes.get(skip..).unwrap_or_default();
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
        out.extend_from_slice(content);
        out
    }

    /// A non-negative INTEGER from big-endian magnitude bytes, minimally encoded.
    pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
        let first = magnitude
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(magnitude.len());
        let trimmed = magnitude.get(first..).unwrap_or_default();
        let mut content = Vec::with_capacity(trimmed.len() + 1);
        if !matches!(trimmed.first(), Some(b) if b & 0x80 == 0) {
            content.push(0); // zero, or a leading 1 bit that would read as negative
        }
        content.extend_from_slice(trimmed);
        tlv(0x02, &content)
    }

    fn bit_string(bytes: &[u8]) -> Vec<u8> {
        let mut content = Vec::with_capacity(bytes.len() + 1);
        content.push(0); // no unused bits
        content.extend_from_slice(bytes);
        tlv(0x03, &content)
    }

    fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
        let mut body = tlv(0x30, algorithm);
        body.extend(bit_string(key));
        tlv(0x30, &body)
    }

    pub(crate) fn rsa(n: &[u8], e: &[u8]) -> Vec<u8> {
        let mut algorithm = tlv(0x06, OID_RSA_ENCRYPTION);
        algorithm.extend_from_slice(&[0x05, 0x00]);
        let mut key = unsigned_integer(n);
        key.extend(unsigned_integer(e));
        spki(&algorithm, &tlv(0x30, &key))
    }

    /// `point` is the SEC1 uncompressed point `04 || x || y`.
    pub(crate) fn ec(curve: &[u8], point: &[u8]) -> Vec<u8> {
        let mut algorithm = tlv(0x06, OID_EC_PUBLIC_KEY);
        algorithm.extend(tlv(0x06, curve));
        spki(&algorithm, point)
    }

    pub(crate) fn ed25519(x: &[u8]) -> Vec<u8> {
        spki(&tlv(0x06, OID_ED25519), x)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use jwt_simple::prelude::*;
    use serde_json::{json, Value};

    use super::Algorithm;
    use super::{JwksError, KeyChoiceError, KeySet};
    use crate::testkeys::{b64, ec_jwk, ed_jwk, es256_jwk, es384_jwk, keys, rsa_jwk};

    fn with(mut jwk: Value, changes: Value) -> Value {
        for (k, v) in changes.as_object().unwrap() {
            jwk[k] = v.clone();
        }
        jwk
    }

    #[test]
    fn jwks_decodes_every_supported_key_type() {
        let k = keys();
        let jwks = json!({"keys": [
            rsa_jwk(&k.rsa, "rsa"), es256_jwk(&k.es256, "p256"), es384_jwk(&k.es384, "p384"), ed_jwk(&k.ed, "ed"),
        ]});
        let (set, warnings) = KeySet::from_jwks(&jwks).unwrap();
        assert_eq!(set.len(), 4);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(set.select(Some("rsa"), Algorithm::PS384).is_ok());
        assert!(set.select(Some("p384"), Algorithm::ES384).is_ok());
        assert_eq!(
            set.select(Some("p256"), Algorithm::ES384).err(),
            Some(KeyChoiceError::AlgorithmMismatch)
        );
        assert_eq!(
            set.select(Some("nope"), Algorithm::ES256).err(),
            Some(KeyChoiceError::UnknownKid)
        );
        assert!(set.select(None, Algorithm::EdDSA).is_ok());
    }

    #[test]
    fn jwks_keys_are_prepared_as_the_same_spki_der_other_libraries_write() {
        let k = keys();
        let jwks = json!({"keys": [
            rsa_jwk(&k.rsa, "rsa"), es256_jwk(&k.es256, "p256"), es384_jwk(&k.es384, "p384"), ed_jwk(&k.ed, "ed"),
        ]});
        let (set, _) = KeySet::from_jwks(&jwks).unwrap();
        let der = |kid: &str, alg| set.select(Some(kid), alg).unwrap().key.spki_der().to_vec();
        assert_eq!(
            der("rsa", Algorithm::RS256),
            k.rsa.public_key().to_der().unwrap()
        );
        assert_eq!(
            der("p256", Algorithm::ES256),
            k.es256.public_key().to_der().unwrap()
        );
        assert_eq!(
            der("p384", Algorithm::ES384),
            k.es384.public_key().to_der().unwrap()
        );
        assert_eq!(der("ed", Algorithm::EdDSA), k.ed.public_key().to_der());
    }

    #[test]
    fn jwks_unusable_keys_are_skipped_with_a_warning() {
        let k = keys();
        let good = es256_jwk(&k.es256, "good");
        let rsa = rsa_jwk(&k.rsa, "rsa");
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "use enc",
                with(rsa.clone(), json!({"use": "enc"})),
                "use \"enc\"",
            ),
            (
                "key_ops without verify",
                with(rsa.clone(), json!({"key_ops": ["encrypt"]})),
                "key_ops",
            ),
            (
                "unknown kty",
                json!({"kty": "foo", "kid": "x"}),
                "kty \"foo\"",
            ),
            (
                "missing kty",
                json!({"kid": "x", "n": "AQAB"}),
                "kty is missing",
            ),
            (
                "symmetric key",
                json!({"kty": "oct", "kid": "x", "k": "c2VjcmV0"}),
                "symmetric",
            ),
            (
                "P-521",
                with(good.clone(), json!({"crv": "P-521"})),
                "curve \"P-521\"",
            ),
            (
                "secp256k1",
                with(good.clone(), json!({"crv": "secp256k1"})),
                "curve",
            ),
            (
                "X25519",
                with(ed_jwk(&k.ed, "x"), json!({"crv": "X25519"})),
                "curve \"X25519\"",
            ),
            (
                "HS256 alg on RSA",
                with(rsa.clone(), json!({"alg": "HS256"})),
                "alg \"HS256\"",
            ),
            (
                "ES256 alg on RSA",
                with(rsa.clone(), json!({"alg": "ES256"})),
                "does not fit",
            ),
            (
                "RSA-OAEP alg",
                with(rsa.clone(), json!({"alg": "RSA-OAEP"})),
                "not supported",
            ),
            (
                "weak RSA modulus",
                with(rsa.clone(), json!({"n": b64([0xC5u8; 128])})),
                "2048 to 4096",
            ),
            (
                "RSA e = 3",
                with(rsa.clone(), json!({"e": "Aw"})),
                "e = 65537",
            ),
            (
                "RSA n not base64",
                with(rsa.clone(), json!({"n": "***"})),
                "n is not base64url",
            ),
            (
                "RSA without n",
                json!({"kty": "RSA", "e": "AQAB"}),
                "n is missing",
            ),
            (
                "EC short x",
                with(good.clone(), json!({"x": b64([1u8; 31])})),
                "32 bytes",
            ),
            (
                "EC point off the curve",
                ec_jwk(&[[4u8].as_slice(), &[1u8; 64]].concat(), "P-256", "off"),
                "not a P-256 point",
            ),
            (
                "Ed25519 short x",
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64([9u8; 31])}),
                "32 bytes",
            ),
            ("not an object", json!("key"), "not a JSON object"),
            (
                "kid not a string",
                with(rsa.clone(), json!({"kid": 5})),
                "kid is not a string",
            ),
        ];
        for (name, bad, reason) in cases {
            let jwks = json!({"keys": [bad, good.clone()]});
            let (set, warnings) =
                KeySet::from_jwks(&jwks).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(set.len(), 1, "{name}");
            assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
            assert!(
                warnings[0].starts_with("key 0") && warnings[0].contains(reason),
                "{name}: {warnings:?}"
            );
        }
    }

    #[test]
    fn jwks_with_no_usable_key_is_an_error_that_says_why() {
        let k = keys();
        let jwks = json!({"keys": [with(rsa_jwk(&k.rsa, "enc-key"), json!({"use": "enc"})), {"kty": "oct", "k": "c2VjcmV0"}]});
        let err = KeySet::from_jwks(&jwks).err().unwrap();
        let JwksError::NoUsableKeys(reasons) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(reasons.len(), 2);
        let message = err.to_string();
        assert!(
            message.contains("enc-key") && message.contains("symmetric"),
            "{message}"
        );
        assert_eq!(
            KeySet::from_jwks(&json!({"keys": []})).err(),
            Some(JwksError::NoUsableKeys(vec![]))
        );
        for not_a_set in [
            json!([]),
            json!({}),
            json!({"keys": {}}),
            json!("x"),
            json!(null),
        ] {
            assert_eq!(
                KeySet::from_jwks(&not_a_set).err(),
                Some(JwksError::NotAKeySet),
                "{not_a_set}"
            );
        }
        let many = json!({"keys": vec![es256_jwk(&k.es256, "a"); 101]});
        assert_eq!(
            KeySet::from_jwks(&many).err(),
            Some(JwksError::TooManyKeys(101))
        );
    }

    #[test]
    fn jwks_duplicate_kid_for_the_same_algorithm_keeps_the_first() {
        let k = keys();
        let other = ES256KeyPair::generate();
        let jwks = json!({"keys": [
            es256_jwk(&k.es256, "k1"), es256_jwk(&other, "k1"),
            // Same kid but another key type is a legitimate rollover and is kept.
            ed_jwk(&k.ed, "k1"),
        ]});
        let (set, warnings) = KeySet::from_jwks(&jwks).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("key 1 (kid \"k1\")"),
            "{warnings:?}"
        );
        assert!(set.select(Some("k1"), Algorithm::EdDSA).is_ok());
    }

    #[test]
    fn jwks_private_members_warn_but_public_part_is_used() {
        let k = keys();
        let with_d = with(ed_jwk(&k.ed, "ed"), json!({"d": b64([7u8; 32])}));
        let rsa = rsa_jwk(&k.rsa, "rsa");
        let padded = with(
            rsa.clone(),
            json!({"n": format!("{}==", rsa["n"].as_str().unwrap())}),
        );
        let (set, warnings) = KeySet::from_jwks(&json!({"keys": [with_d, padded]})).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("private key material"), "{warnings:?}");
    }
}
