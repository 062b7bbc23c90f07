//! JWT verification for one trusted issuer: structure, header, key choice, signature,
//! then claims. Pure code: the caller passes the current time; nothing here panics or
//! allocates more than the (size-capped) token. The signature step goes through the
//! per-VM [`signature`] backend (the host's crypto when it has it), and tokens that
//! verified are remembered per worker until they expire (`cache`).

use std::fmt;
use std::str::FromStr;

use std::cell::RefCell;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::jwks::KeyChoiceError;
pub use crate::jwks::{Algorithm, JwksError, KeySet, PreparedKey};
use cache::TokenCache;
pub use signature::{
    decode_verify_result, ecdsa_signature_der, encode_verify_request, ForeignCall, HostVerifier,
    PureRust, SignatureBackend, SignedInput, HOST_CANDIDATES,
};

mod cache;
pub mod signature;

/// Longest base64url header we decode (same bound as jwt-simple).
const MAX_HEADER_CHARS: usize = 8192;
/// Largest token [`peek_issuer`] looks into (the largest `max_token_bytes` allowed).
const MAX_PEEK_BYTES: usize = 65_536;

/// An `alg` name we do not verify. JOSE names are case-sensitive, so `rs256` is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedAlgorithm(pub String);

impl fmt::Display for UnsupportedAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unsupported algorithm {:?}", printable(&self.0))
    }
}

impl std::error::Error for UnsupportedAlgorithm {}

impl FromStr for Algorithm {
    type Err = UnsupportedAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::all()
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnsupportedAlgorithm(s.to_owned()))
    }
}

/// Why a token was refused. Messages never repeat the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not a well-formed compact JWS; says which part.
    Malformed(&'static str),
    /// Longer than the issuer's `max_token_bytes`.
    TooLarge {
        max: usize,
    },
    /// `alg` is not in the issuer's list, or not an algorithm we verify at all (`none`,
    /// `HS256`, ...). Holds a printable rendering of the header's `alg`.
    AlgorithmNotAllowed(String),
    /// The header has `crit`: we implement no extensions, so we must refuse it.
    UnsupportedCritical,
    /// The header's `kid` is not in the key set.
    UnknownKey,
    /// No `kid`, and the key set has no single key for the algorithm.
    MissingKid,
    /// The `kid` names a key of another type, or one pinned to another `alg`.
    KeyAlgorithmMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    MissingExpiry,
    /// No `sub`, or an empty one: every principal must be named (audit, rate limits).
    MissingSubject,
    /// A registered claim has the wrong JSON type.
    InvalidClaim(&'static str),
}

impl JwtError {
    /// Stable snake_case reason for replies, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed_token",
            JwtError::TooLarge { .. } => "token_too_large",
            JwtError::AlgorithmNotAllowed(_) => "alg_not_allowed",
            JwtError::UnsupportedCritical => "crit_unsupported",
            JwtError::UnknownKey => "unknown_kid",
            JwtError::MissingKid => "kid_required",
            JwtError::KeyAlgorithmMismatch => "alg_key_mismatch",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::IssuedInFuture => "iat_in_future",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::MissingExpiry => "missing_exp",
            JwtError::MissingSubject => "missing_sub",
            JwtError::InvalidClaim(_) => "invalid_claim",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(what) => write!(f, "the token is malformed: {what}"),
            JwtError::TooLarge { max } => write!(f, "the token is larger than {max} bytes"),
            JwtError::AlgorithmNotAllowed(alg) => {
                write!(f, "the signing algorithm {alg} is not allowed")
            }
            JwtError::UnsupportedCritical => {
                f.write_str("the token requires header extensions (crit) that are not supported")
            }
            JwtError::UnknownKey => {
                f.write_str("the token's key id (kid) is not in the issuer's key set")
            }
            JwtError::MissingKid => {
                f.write_str("the token has no key id (kid) and the issuer has several keys")
            }
            JwtError::KeyAlgorithmMismatch => {
                f.write_str("the token's algorithm does not match the type of its key")
            }
            JwtError::BadSignature => f.write_str("the token signature is invalid"),
            JwtError::Expired => f.write_str("the token has expired"),
            JwtError::NotYetValid => f.write_str("the token is not valid yet (nbf)"),
            JwtError::IssuedInFuture => f.write_str("the token was issued in the future (iat)"),
            JwtError::WrongIssuer => {
                f.write_str("the token's issuer (iss) is not the expected one")
            }
            JwtError::WrongAudience => f.write_str("the token's audience (aud) is not accepted"),
            JwtError::MissingExpiry => f.write_str("the token has no expiry (exp)"),
            JwtError::MissingSubject => f.write_str("the token has no subject (sub)"),
            JwtError::InvalidClaim(name) => write!(f, "the {name} claim has the wrong type"),
        }
    }
}

impl std::error::Error for JwtError {}

/// A token whose signature and claims checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub claims: Map<String, Value>,
    pub issuer: String,
    pub subject: Option<String>,
    /// `exp`, unix seconds.
    pub expires_at: u64,
    pub kid: Option<String>,
    pub alg: Algorithm,
}

/// One issuer's verification setup, built once at configuration time, with the
/// worker's cache of tokens it already verified (one VM per worker, so no locking).
pub struct IssuerVerifier {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    clock_skew_secs: u64,
    max_token_bytes: usize,
    keys: Rc<KeySet>,
    verified: RefCell<TokenCache>,
}

impl fmt::Debug for IssuerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerVerifier")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("clock_skew_secs", &self.clock_skew_secs)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("keys", &self.keys)
            .field("cached_tokens", &self.verified.borrow().len())
            .finish()
    }
}

/// The JOSE header fields we act on. A derived struct (not a map) so that a duplicated
/// field, e.g. two `alg`s, is an error rather than last-one-wins. The registered members
/// we never act on are still typed (as jwt-simple types them), so a header we accept is
/// one every signature backend reads the same way.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    /// jwt-simple's HMAC salt extension: never meaningful for public-key tokens.
    #[serde(default, deserialize_with = "present")]
    salt: bool,
    #[serde(default, rename = "cty")]
    _cty: Option<String>,
    #[serde(default, rename = "jku")]
    _jku: Option<String>,
    /// An embedded key is never used; one that is not even a string is refused.
    #[serde(default, rename = "jwk")]
    _jwk: Option<String>,
    #[serde(default, rename = "x5u")]
    _x5u: Option<String>,
    #[serde(default, rename = "x5c")]
    _x5c: Option<Vec<String>>,
    #[serde(default, rename = "x5t")]
    _x5t: Option<String>,
    #[serde(default, rename = "x5t#S256")]
    _x5t_s256: Option<String>,
}

/// `true` whenever the field is there, whatever its value (even `null` or `[]`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// The claims object, refusing a claim given twice: which copy counts would otherwise
/// depend on the parser (serde_json keeps the last, others the first).
struct UniqueClaims(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueClaims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueClaims, A::Error> {
                let mut claims = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if claims.insert(name, value).is_some() {
                        return Err(serde::de::Error::custom("duplicate claim"));
                    }
                }
                Ok(UniqueClaims(claims))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The three parts of a compact JWS, decoded where we need them.
struct Parts<'t> {
    header: Header,
    payload: Map<String, Value>,
    signature: Vec<u8>,
    /// `header.payload`: what the signature covers.
    signing_input: &'t str,
    token: &'t str,
}

impl IssuerVerifier {
    pub fn new(
        issuer: String,
        audiences: Vec<String>,
        algorithms: Vec<Algorithm>,
        clock_skew_secs: u64,
        max_token_bytes: usize,
        keys: impl Into<Rc<KeySet>>,
    ) -> Self {
        IssuerVerifier {
            issuer,
            audiences,
            algorithms,
            clock_skew_secs,
            max_token_bytes,
            keys: keys.into(),
            verified: RefCell::new(TokenCache::new(cache::DEFAULT_CAPACITY)),
        }
    }

    /// Tokens currently remembered as verified on this worker.
    pub fn cached_tokens(&self) -> usize {
        self.verified.borrow().len()
    }

    /// Verifies `token` at `now_unix` (seconds): structure, header, key, signature, claims —
    /// in that order, so claim errors are only reported for authentic tokens. A token
    /// verified before on this worker and not yet expired is answered from the cache.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<VerifiedToken, JwtError> {
        self.verify_shared(token, now_unix)
            .map(|verified| VerifiedToken::clone(&verified))
    }

    /// [`IssuerVerifier::verify`], sharing the cached result: a hit copies nothing.
    pub fn verify_shared(&self, token: &str, now_unix: u64) -> Result<Rc<VerifiedToken>, JwtError> {
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge {
                max: self.max_token_bytes,
            });
        }
        if let Some(hit) = self.verified.borrow_mut().get(token, now_unix) {
            return Ok(hit);
        }
        let verified = Rc::new(self.verify_uncached(token, now_unix)?);
        let expired_from = verified.expires_at.saturating_add(self.clock_skew_secs);
        self.verified
            .borrow_mut()
            .insert(token, Rc::clone(&verified), expired_from);
        Ok(verified)
    }

    fn verify_uncached(&self, token: &str, now_unix: u64) -> Result<VerifiedToken, JwtError> {
        let parts = split(token)?;
        if parts.header.crit {
            return Err(JwtError::UnsupportedCritical);
        }
        let alg = match Algorithm::from_str(&parts.header.alg) {
            Ok(alg) if self.algorithms.contains(&alg) => alg,
            _ => return Err(JwtError::AlgorithmNotAllowed(printable(&parts.header.alg))),
        };
        if let Some(typ) = &parts.header.typ {
            let typ = typ.to_ascii_uppercase();
            if typ != "JWT" && !typ.ends_with("+JWT") {
                return Err(JwtError::Malformed("typ is not JWT"));
            }
        }
        if parts.header.salt {
            return Err(JwtError::Malformed("the salt header is not accepted"));
        }
        // Registered claims of the wrong JSON type are refused before any crypto.
        check_claim_types(&parts.payload)?;
        // `jku`, `x5u`, `jwk` and `x5c` are never read: keys come only from configuration.
        let key = self
            .keys
            .select(parts.header.kid.as_deref(), alg)
            .map_err(|e| match e {
                KeyChoiceError::UnknownKid => JwtError::UnknownKey,
                KeyChoiceError::AlgorithmMismatch => JwtError::KeyAlgorithmMismatch,
                KeyChoiceError::KidRequired => JwtError::MissingKid,
            })?;
        // Lengths are fixed per key; checking first keeps odd inputs away from the crypto code.
        if parts.signature.len() != key.key.signature_len() {
            return Err(JwtError::BadSignature);
        }
        let input = SignedInput {
            token: parts.token,
            signing_input: parts.signing_input,
            signature: &parts.signature,
        };
        if !signature::check(alg, &key.key, &input) {
            return Err(JwtError::BadSignature);
        }
        let claims = parts.payload;
        let (issuer, subject, expires_at) = self.check_claims(&claims, now_unix)?;
        Ok(VerifiedToken {
            issuer,
            subject,
            expires_at,
            kid: parts.header.kid,
            alg,
            claims,
        })
    }

    /// Registered-claim checks on an authentic token; returns (iss, sub, exp).
    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<(String, Option<String>, u64), JwtError> {
        let skew = self.clock_skew_secs;
        let exp = numeric_date(claims, "exp")?.ok_or(JwtError::MissingExpiry)?;
        // RFC 7519 §4.1.4: invalid on or after `exp`.
        if now >= exp.saturating_add(skew) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric_date(claims, "nbf")? {
            if now.saturating_add(skew) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(iat) = numeric_date(claims, "iat")? {
            if iat > now.saturating_add(skew) {
                return Err(JwtError::IssuedInFuture);
            }
        }
        let issuer = match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => iss.clone(),
            _ => return Err(JwtError::WrongIssuer),
        };
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => self.audiences.contains(aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| self.audiences.iter().any(|a| a == aud)),
            Some(_) => return Err(JwtError::InvalidClaim("aud")),
            None => false,
        };
        if !audience_ok {
            return Err(JwtError::WrongAudience);
        }
        let subject = match claims.get("sub") {
            None => return Err(JwtError::MissingSubject),
            Some(Value::String(sub)) if sub.is_empty() => return Err(JwtError::MissingSubject),
            Some(Value::String(sub)) => Some(sub.clone()),
            Some(_) => return Err(JwtError::InvalidClaim("sub")),
        };
        Ok((issuer, subject, exp))
    }
}

/// Registered claims must have their RFC 7519 types (the types jwt-simple's typed parse
/// insists on, so every signature backend sees the same token as acceptable).
fn check_claim_types(claims: &Map<String, Value>) -> Result<(), JwtError> {
    for name in ["exp", "nbf", "iat"] {
        numeric_date(claims, name)?;
    }
    for name in ["iss", "sub", "jti", "nonce"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(JwtError::InvalidClaim(name));
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(auds)) if auds.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(JwtError::InvalidClaim("aud")),
    }
}

/// Splits and decodes a compact JWS. Work is linear in the (already size-capped) token.
fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    let mut it = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .unwrap_or_default();
    if header_b64.len() > MAX_HEADER_CHARS {
        return Err(JwtError::Malformed("header too large"));
    }
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Malformed("header is not base64url"))?;
    // UTF-8 first: serde_json skips the strings of members it ignores without checking
    // them, and RFC 7515 requires the whole header to be UTF-8 JSON (found by fuzzing).
    // (`from_slice` after the check, not `from_str`: a second instantiation of the
    // deserializer would add ~15 KB to the module.)
    std::str::from_utf8(&header_json).map_err(|_| JwtError::Malformed("header is not UTF-8"))?;
    let header: Header = serde_json::from_slice(&header_json)
        .map_err(|_| JwtError::Malformed("header is not a JSON object with a string alg"))?;
    let payload_json = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| JwtError::Malformed("payload is not base64url"))?;
    // Every string of the payload is kept (claims), so serde_json checks all of it.
    let UniqueClaims(payload) = serde_json::from_slice(&payload_json)
        .map_err(|_| JwtError::Malformed("payload is not a JSON object with unique claim names"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input,
        token,
    })
}

/// A NumericDate claim as whole seconds; `None` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => Ok(Some(secs)),
            // RFC 7519 allows fractional seconds; `as` saturates huge values.
            (None, Some(secs)) if secs.is_finite() && secs >= 0.0 => Ok(Some(secs as u64)),
            _ => Err(JwtError::InvalidClaim(name)),
        },
        Some(_) => Err(JwtError::InvalidClaim(name)),
    }
}

/// The unverified `iss` of a token, to choose among issuers sharing a header. Bounded:
/// tokens over 64 KiB are not looked at. Never trust the answer beyond that choice.
pub fn peek_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: Option<String>,
    }
    if token.len() > MAX_PEEK_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let payload_b64 = parts.nth(1)?;
    let payload = URL_SAFE_NO_PAD.decode(payload_b64).ok()?;
    serde_json::from_slice::<Issuer>(&payload).ok()?.iss
}

/// Renders an attacker-chosen `alg` safely for messages: short and plain ASCII, quoted.
fn printable(alg: &str) -> String {
    let ok = !alg.is_empty()
        && alg.len() <= 16
        && alg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-_.".contains(&b));
    if ok {
        format!("{alg:?}")
    } else {
        "(unprintable)".to_owned()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
pub(crate) mod tests {
    use std::rc::Rc;

    use jwt_simple::prelude::*;
    use serde_json::{json, Map, Value};

    use super::{peek_issuer, Algorithm, IssuerVerifier, JwtError, KeySet};
    use crate::testkeys::{b64, ed_jwk, es256_jwk, es384_jwk, keys, rsa_jwk};

    pub(crate) const ISS: &str = "https://idp.test";
    pub(crate) const NOW: u64 = 1_800_000_000;

    /// The issuer's JWKS: RSA without a pinned alg (RS*/PS* allowed), ES256 pinned,
    /// ES384 and Ed25519 (pinned to EdDSA).
    fn jwks() -> Value {
        let k = keys();
        let mut es256 = es256_jwk(&k.es256, "es256-1");
        es256["alg"] = json!("ES256");
        let mut ed = ed_jwk(&k.ed, "ed-1");
        ed["alg"] = json!("EdDSA");
        json!({"keys": [rsa_jwk(&k.rsa, "rsa-1"), es256, es384_jwk(&k.es384, "es384-1"), ed]})
    }

    fn verifier_with(
        jwks: &Value,
        algorithms: &[Algorithm],
        max_token_bytes: usize,
    ) -> IssuerVerifier {
        let (keys, warnings) = KeySet::from_jwks(jwks).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        IssuerVerifier::new(
            ISS.into(),
            vec!["looker-api".into()],
            algorithms.to_vec(),
            30,
            max_token_bytes,
            keys,
        )
    }

    fn verifier() -> IssuerVerifier {
        verifier_with(&jwks(), Algorithm::all(), 8192)
    }

    /// Standard claims for a token issued 10s before `NOW`, valid 10 minutes.
    fn claims() -> Value {
        json!({"iss": ISS, "aud": "looker-api", "sub": "alice", "iat": NOW - 10, "exp": NOW + 600,
               "groups": ["analysts"]})
    }

    fn with(mut base: Value, changes: Value) -> Value {
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    }

    /// Claims exactly as given (jwt-simple adds nothing: its own time fields are cleared).
    fn exact(claims: Value) -> JWTClaims<Map<String, Value>> {
        let mut c =
            Claims::with_custom_claims(claims.as_object().unwrap().clone(), Duration::from_secs(1));
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        c
    }

    fn rs256(claims: Value) -> String {
        keys().rsa.sign(exact(claims)).unwrap()
    }
    fn rsa_as<K: RSAKeyPairLike>(key: K, claims: Value) -> String {
        key.sign(exact(claims)).unwrap()
    }
    fn es256(claims: Value) -> String {
        keys().es256.sign(exact(claims)).unwrap()
    }
    fn es384(claims: Value) -> String {
        keys().es384.sign(exact(claims)).unwrap()
    }
    fn eddsa(claims: Value) -> String {
        keys().ed.sign(exact(claims)).unwrap()
    }

    /// A token with an arbitrary header (raw JSON text), signed with `key` (Ed25519).
    fn craft_with(key: &Ed25519KeyPair, header: &str, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims.to_string()));
        let signature = key.key_pair().as_ref().sk.sign(&input, None);
        format!("{input}.{}", b64(signature.as_ref()))
    }
    fn craft(header: &str, claims: &Value) -> String {
        craft_with(&keys().ed, header, claims)
    }

    fn tamper_payload(token: &str, claims: &Value) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
    }

    fn unsigned(header: &str, claims: &Value) -> String {
        format!("{}.{}.", b64(header), b64(claims.to_string()))
    }

    fn code(result: Result<super::VerifiedToken, JwtError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    fn run(verifier: &IssuerVerifier, cases: Vec<(&str, String, &str)>) {
        let mut failures = Vec::new();
        for (name, token, expected) in cases {
            let got = code(verifier.verify(&token, NOW));
            if got != expected {
                failures.push(format!("{name}: expected {expected}, got {got}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn jwt_valid_tokens_of_every_key_type_are_accepted() {
        let rsa_der = keys().rsa.to_der().unwrap();
        let cases = vec![
            ("RS256", rs256(claims()), "ok"),
            (
                "RS384",
                rsa_as(
                    RS384KeyPair::from_der(&rsa_der)
                        .unwrap()
                        .with_key_id("rsa-1"),
                    claims(),
                ),
                "ok",
            ),
            (
                "RS512",
                rsa_as(
                    RS512KeyPair::from_der(&rsa_der)
                        .unwrap()
                        .with_key_id("rsa-1"),
                    claims(),
                ),
                "ok",
            ),
            (
                "PS256",
                rsa_as(
                    PS256KeyPair::from_der(&rsa_der)
                        .unwrap()
                        .with_key_id("rsa-1"),
                    claims(),
                ),
                "ok",
            ),
            (
                "PS512",
                rsa_as(
                    PS512KeyPair::from_der(&rsa_der)
                        .unwrap()
                        .with_key_id("rsa-1"),
                    claims(),
                ),
                "ok",
            ),
            ("ES256", es256(claims()), "ok"),
            ("ES384", es384(claims()), "ok"),
            ("EdDSA", eddsa(claims()), "ok"),
            (
                "typ at+jwt",
                craft(r#"{"alg":"EdDSA","kid":"ed-1","typ":"at+jwt"}"#, &claims()),
                "ok",
            ),
            (
                "fractional exp",
                eddsa(with(claims(), json!({"exp": (NOW + 600) as f64 + 0.5}))),
                "ok",
            ),
            ("no iat", eddsa(with(claims(), json!({"iat": null}))), "ok"),
            (
                "no sub: every principal is named",
                eddsa(with(claims(), json!({"sub": null}))),
                "missing_sub",
            ),
            (
                "empty sub",
                eddsa(with(claims(), json!({"sub": ""}))),
                "missing_sub",
            ),
        ];
        run(&verifier(), cases);
    }

    #[test]
    fn jwt_verified_token_carries_claims_and_header_facts() {
        let token = es256(claims());
        let verified = verifier().verify(&token, NOW).unwrap();
        assert_eq!(verified.issuer, ISS);
        assert_eq!(verified.subject.as_deref(), Some("alice"));
        assert_eq!(verified.expires_at, NOW + 600);
        assert_eq!(verified.kid.as_deref(), Some("es256-1"));
        assert_eq!(verified.alg, Algorithm::ES256);
        assert_eq!(verified.claims.get("groups"), Some(&json!(["analysts"])));
    }

    #[test]
    fn jwt_time_and_claim_checks() {
        let c = claims;
        let cases = vec![
            (
                "expired",
                eddsa(with(c(), json!({"exp": NOW - 60}))),
                "token_expired",
            ),
            (
                "expired at the skew boundary",
                eddsa(with(c(), json!({"exp": NOW - 30}))),
                "token_expired",
            ),
            (
                "expired within skew",
                eddsa(with(c(), json!({"exp": NOW - 10}))),
                "ok",
            ),
            (
                "expired RSA",
                rs256(with(c(), json!({"exp": NOW - 3600}))),
                "token_expired",
            ),
            (
                "nbf in the future",
                eddsa(with(c(), json!({"nbf": NOW + 120}))),
                "token_not_yet_valid",
            ),
            (
                "nbf within skew",
                eddsa(with(c(), json!({"nbf": NOW + 20}))),
                "ok",
            ),
            (
                "nbf in the past",
                eddsa(with(c(), json!({"nbf": NOW - 20}))),
                "ok",
            ),
            (
                "iat in the future",
                eddsa(with(c(), json!({"iat": NOW + 120}))),
                "iat_in_future",
            ),
            (
                "iat within skew",
                eddsa(with(c(), json!({"iat": NOW + 20}))),
                "ok",
            ),
            (
                "wrong iss",
                eddsa(with(c(), json!({"iss": "https://evil.test"}))),
                "wrong_issuer",
            ),
            (
                "iss with trailing slash",
                eddsa(with(c(), json!({"iss": "https://idp.test/"}))),
                "wrong_issuer",
            ),
            (
                "missing iss",
                eddsa(with(c(), json!({"iss": null}))),
                "wrong_issuer",
            ),
            (
                "wrong aud",
                eddsa(with(c(), json!({"aud": "other-app"}))),
                "wrong_audience",
            ),
            (
                "aud array match",
                eddsa(with(c(), json!({"aud": ["other-app", "looker-api"]}))),
                "ok",
            ),
            (
                "aud array no match",
                eddsa(with(c(), json!({"aud": ["other-app", "third"]}))),
                "wrong_audience",
            ),
            (
                "aud empty array",
                eddsa(with(c(), json!({"aud": []}))),
                "wrong_audience",
            ),
            (
                "missing aud",
                eddsa(with(c(), json!({"aud": null}))),
                "wrong_audience",
            ),
            (
                "missing exp",
                eddsa(with(c(), json!({"exp": null}))),
                "missing_exp",
            ),
            (
                "missing exp RSA",
                rs256(with(c(), json!({"exp": null}))),
                "missing_exp",
            ),
            // Registered claims of the wrong type are refused before any crypto.
            (
                "exp as string",
                eddsa(with(c(), json!({"exp": (NOW + 600).to_string()}))),
                "invalid_claim",
            ),
            (
                "negative exp",
                eddsa(with(c(), json!({"exp": -1}))),
                "invalid_claim",
            ),
            (
                "sub not a string",
                eddsa(with(c(), json!({"sub": 42}))),
                "invalid_claim",
            ),
            (
                "aud an object",
                eddsa(with(c(), json!({"aud": {"a": 1}}))),
                "invalid_claim",
            ),
            (
                "aud array with a number",
                eddsa(with(c(), json!({"aud": ["looker-api", 5]}))),
                "invalid_claim",
            ),
            (
                "jti not a string",
                eddsa(with(c(), json!({"jti": 5}))),
                "invalid_claim",
            ),
            (
                "exp as string RSA",
                rs256(with(c(), json!({"exp": "soon"}))),
                "invalid_claim",
            ),
        ];
        run(&verifier(), cases);
    }

    #[test]
    fn jwt_signature_and_key_choice() {
        let k = keys();
        let evil_ed = Ed25519KeyPair::generate().with_key_id("ed-1");
        let evil_es = ES256KeyPair::generate().with_key_id("es256-1");
        let evil_rsa = RS256KeyPair::generate(2048).unwrap().with_key_id("rsa-1");
        let evil_claims = with(claims(), json!({"sub": "admin"}));
        let mut cases = vec![
            (
                "tampered payload RSA",
                tamper_payload(&rs256(claims()), &evil_claims),
                "bad_signature",
            ),
            (
                "tampered payload ES256",
                tamper_payload(&es256(claims()), &evil_claims),
                "bad_signature",
            ),
            (
                "tampered payload ES384",
                tamper_payload(&es384(claims()), &evil_claims),
                "bad_signature",
            ),
            (
                "tampered payload EdDSA",
                tamper_payload(&eddsa(claims()), &evil_claims),
                "bad_signature",
            ),
            (
                "other Ed25519 key, same kid",
                evil_ed.sign(exact(claims())).unwrap(),
                "bad_signature",
            ),
            (
                "other ES256 key, same kid",
                evil_es.sign(exact(claims())).unwrap(),
                "bad_signature",
            ),
            (
                "other RSA key, same kid",
                evil_rsa.sign(exact(claims())).unwrap(),
                "bad_signature",
            ),
            (
                "unknown kid",
                craft(r#"{"alg":"EdDSA","kid":"nope"}"#, &claims()),
                "unknown_kid",
            ),
            (
                "no kid, single EdDSA key",
                craft(r#"{"alg":"EdDSA"}"#, &claims()),
                "ok",
            ),
            (
                "no kid, single ES384 key",
                ES384KeyPair::from_bytes(&k.es384.to_bytes())
                    .unwrap()
                    .sign(exact(claims()))
                    .unwrap(),
                "ok",
            ),
            (
                "ES256 header on the RSA kid",
                ES256KeyPair::from_bytes(&k.es256.to_bytes())
                    .unwrap()
                    .with_key_id("rsa-1")
                    .sign(exact(claims()))
                    .unwrap(),
                "alg_key_mismatch",
            ),
            (
                "EdDSA header on the ES256 kid",
                craft(r#"{"alg":"EdDSA","kid":"es256-1"}"#, &claims()),
                "alg_key_mismatch",
            ),
            (
                "ES384 header on the ES256 kid",
                ES384KeyPair::from_bytes(&k.es384.to_bytes())
                    .unwrap()
                    .with_key_id("es256-1")
                    .sign(exact(claims()))
                    .unwrap(),
                "alg_key_mismatch",
            ),
            // jku/x5u/jwk are never followed: the attacker's own key is not used.
            (
                "embedded jwk and jku are ignored",
                craft_with(
                    &evil_ed,
                    &format!(
                        r#"{{"alg":"EdDSA","kid":"ed-1","jku":"https://evil.test/jwks","x5u":"https://evil.test/c","jwk":{}}}"#,
                        ed_jwk(&evil_ed, "ed-1")
                    ),
                    &claims(),
                ),
                "malformed_token",
            ),
            (
                "jku pointing elsewhere",
                craft_with(
                    &evil_ed,
                    r#"{"alg":"EdDSA","kid":"ed-1","jku":"https://evil.test/jwks"}"#,
                    &claims(),
                ),
                "bad_signature",
            ),
            (
                "genuine token with jku/x5u",
                craft(
                    r#"{"alg":"EdDSA","kid":"ed-1","jku":"https://x.test/j","x5u":"https://x.test/c"}"#,
                    &claims(),
                ),
                "ok",
            ),
        ];
        // Signatures of the wrong length, or cut, for every key type.
        for (name, token) in [
            ("RSA", rs256(claims())),
            ("ES256", es256(claims())),
            ("ES384", es384(claims())),
            ("EdDSA", eddsa(claims())),
        ] {
            let (input, sig) = token.rsplit_once('.').unwrap();
            let sig_bytes = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
            cases.push((
                name,
                format!("{input}.{}", b64(&sig_bytes[..sig_bytes.len() - 3])),
                "bad_signature",
            ));
            let mut flipped = sig_bytes.clone();
            flipped[0] ^= 1;
            cases.push((name, format!("{input}.{}", b64(&flipped)), "bad_signature"));
            cases.push((name, format!("{input}.{}", b64([0u8; 1])), "bad_signature"));
            cases.push((
                name,
                format!("{input}.{sig}{}", b64([0u8; 3])),
                "bad_signature",
            ));
        }
        run(&verifier(), cases);
    }

    #[test]
    fn jwt_token_without_kid_needs_a_single_candidate_key() {
        let a = ES256KeyPair::generate();
        let b = ES256KeyPair::generate();
        let jwks = json!({"keys": [es256_jwk(&a, "a"), es256_jwk(&b, "b")]});
        let v = verifier_with(&jwks, Algorithm::all(), 8192);
        run(
            &v,
            vec![
                (
                    "no kid, two candidates",
                    a.sign(exact(claims())).unwrap(),
                    "kid_required",
                ),
                (
                    "kid a",
                    ES256KeyPair::from_bytes(&a.to_bytes())
                        .unwrap()
                        .with_key_id("a")
                        .sign(exact(claims()))
                        .unwrap(),
                    "ok",
                ),
                (
                    "kid b signed by a",
                    ES256KeyPair::from_bytes(&a.to_bytes())
                        .unwrap()
                        .with_key_id("b")
                        .sign(exact(claims()))
                        .unwrap(),
                    "bad_signature",
                ),
            ],
        );
    }

    #[test]
    fn jwt_algorithm_confusion_and_none_are_refused() {
        let k = keys();
        let public = k.rsa.public_key();
        let hs_pem = HS256Key::from_bytes(public.to_pem().unwrap().as_bytes()).with_key_id("rsa-1");
        let hs_der = HS256Key::from_bytes(&public.to_der().unwrap()).with_key_id("rsa-1");
        let hs384_pem =
            HS384Key::from_bytes(public.to_pem().unwrap().as_bytes()).with_key_id("rsa-1");
        let c = claims();
        let mut cases = vec![
            (
                "HS256 with the RSA public key PEM",
                hs_pem.authenticate(exact(c.clone())).unwrap(),
                "alg_not_allowed",
            ),
            (
                "HS256 with the RSA public key DER",
                hs_der.authenticate(exact(c.clone())).unwrap(),
                "alg_not_allowed",
            ),
            (
                "HS384 with the RSA public key PEM",
                hs384_pem.authenticate(exact(c.clone())).unwrap(),
                "alg_not_allowed",
            ),
            (
                "lower-case rs256",
                craft(r#"{"alg":"rs256","kid":"rsa-1"}"#, &c),
                "alg_not_allowed",
            ),
            (
                "empty alg",
                craft(r#"{"alg":"","kid":"ed-1"}"#, &c),
                "alg_not_allowed",
            ),
            (
                "Ed25519 alias is not an allowed name",
                craft(r#"{"alg":"Ed25519","kid":"ed-1"}"#, &c),
                "alg_not_allowed",
            ),
            (
                "invalid UTF-8 in a header member nobody reads (signed)",
                {
                    let header = b"{\"alg\":\"EdDSA\",\"kid\":\"ed-1\",\"x\":\"\xe5d\"}";
                    let input = format!("{}.{}", b64(header), b64(c.to_string()));
                    let signature = keys().ed.key_pair().as_ref().sk.sign(&input, None);
                    format!("{input}.{}", b64(signature.as_ref()))
                },
                "malformed_token",
            ),
            (
                "invalid UTF-8 in a claim (signed)",
                {
                    let header = br#"{"alg":"EdDSA","kid":"ed-1"}"#;
                    let mut claims = c.to_string().into_bytes();
                    claims.splice(1..1, b"\"x\":\"\xe5d\",".iter().copied());
                    let input = format!("{}.{}", b64(header), b64(claims));
                    let signature = keys().ed.key_pair().as_ref().sk.sign(&input, None);
                    format!("{input}.{}", b64(signature.as_ref()))
                },
                "malformed_token",
            ),
        ];
        for alg in ["none", "None", "NONE", "nOnE"] {
            cases.push((
                "alg none, empty signature",
                unsigned(&format!(r#"{{"alg":"{alg}","kid":"rsa-1"}}"#), &c),
                "alg_not_allowed",
            ));
            cases.push((
                "alg none, no kid",
                unsigned(&format!(r#"{{"alg":"{alg}"}}"#), &c),
                "alg_not_allowed",
            ));
        }
        run(&verifier(), cases);

        // Even with only RS256 allowed (the demo setup), nothing else gets through.
        let rs_only = verifier_with(&jwks(), &[Algorithm::RS256], 8192);
        run(
            &rs_only,
            vec![
                ("RS256 allowed", rs256(claims()), "ok"),
                ("ES256 not in list", es256(claims()), "alg_not_allowed"),
                ("EdDSA not in list", eddsa(claims()), "alg_not_allowed"),
                (
                    "PS256 not in list",
                    rsa_as(
                        PS256KeyPair::from_der(&k.rsa.to_der().unwrap())
                            .unwrap()
                            .with_key_id("rsa-1"),
                        claims(),
                    ),
                    "alg_not_allowed",
                ),
                (
                    "HS256 with PEM",
                    hs_pem.authenticate(exact(claims())).unwrap(),
                    "alg_not_allowed",
                ),
            ],
        );
    }

    #[test]
    fn jwt_key_pinned_to_an_alg_refuses_other_algs() {
        let k = keys();
        let mut rsa = rsa_jwk(&k.rsa, "rsa-1");
        rsa["alg"] = json!("RS256");
        let v = verifier_with(&json!({"keys": [rsa]}), Algorithm::all(), 8192);
        let ps256 = PS256KeyPair::from_der(&k.rsa.to_der().unwrap())
            .unwrap()
            .with_key_id("rsa-1");
        run(
            &v,
            vec![
                ("RS256 on RS256 key", rs256(claims()), "ok"),
                (
                    "PS256 on RS256-pinned key",
                    rsa_as(ps256, claims()),
                    "alg_key_mismatch",
                ),
            ],
        );
    }

    #[test]
    fn jwt_malformed_and_oversized_inputs_are_refused() {
        let c = claims();
        let good = eddsa(c.clone());
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let huge_header = format!(
            r#"{{"alg":"EdDSA","kid":"ed-1","pad":"{}"}}"#,
            "x".repeat(20_000)
        );
        let cases = vec![
            ("empty", String::new(), "malformed_token"),
            ("one part", "abc".to_owned(), "malformed_token"),
            ("two parts", format!("{h}.{p}"), "malformed_token"),
            ("four parts", format!("{good}.{s}"), "malformed_token"),
            ("dots only", "..".to_owned(), "malformed_token"),
            ("not base64", "!!!.@@@.###".to_owned(), "malformed_token"),
            ("non-ascii", "ä.ö.ü".to_owned(), "malformed_token"),
            (
                "padded base64 header",
                format!("{h}=.{p}.{s}"),
                "malformed_token",
            ),
            (
                "standard base64 alphabet",
                format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/") + "+/"),
                "malformed_token",
            ),
            (
                "header not JSON",
                format!("{}.{p}.{s}", b64("not json")),
                "malformed_token",
            ),
            (
                "header a JSON array",
                format!("{}.{p}.{s}", b64("[1,2]")),
                "malformed_token",
            ),
            (
                "header without alg",
                craft(r#"{"kid":"ed-1"}"#, &c),
                "malformed_token",
            ),
            (
                "alg not a string",
                craft(r#"{"alg":1,"kid":"ed-1"}"#, &c),
                "malformed_token",
            ),
            (
                "kid not a string",
                craft(r#"{"alg":"EdDSA","kid":7}"#, &c),
                "malformed_token",
            ),
            (
                "duplicate alg",
                craft(r#"{"alg":"EdDSA","alg":"none","kid":"ed-1"}"#, &c),
                "malformed_token",
            ),
            (
                "typ JOSE",
                craft(r#"{"alg":"EdDSA","kid":"ed-1","typ":"JOSE"}"#, &c),
                "malformed_token",
            ),
            (
                "payload not base64",
                format!("{h}.***.{s}"),
                "malformed_token",
            ),
            (
                "payload not an object",
                craft(r#"{"alg":"EdDSA","kid":"ed-1"}"#, &json!(["a"])),
                "malformed_token",
            ),
            (
                "signature not base64",
                format!("{h}.{p}.%%%"),
                "malformed_token",
            ),
            (
                "huge header within max bytes",
                craft(&huge_header, &c),
                "malformed_token",
            ),
            (
                "crit list",
                craft(r#"{"alg":"EdDSA","kid":"ed-1","crit":["exp"],"exp":1}"#, &c),
                "crit_unsupported",
            ),
            (
                "crit empty",
                craft(r#"{"alg":"EdDSA","kid":"ed-1","crit":[]}"#, &c),
                "crit_unsupported",
            ),
            (
                "crit null",
                craft(r#"{"alg":"EdDSA","kid":"ed-1","crit":null}"#, &c),
                "crit_unsupported",
            ),
            (
                "b64 false",
                craft(
                    r#"{"alg":"EdDSA","kid":"ed-1","b64":false,"crit":["b64"]}"#,
                    &c,
                ),
                "crit_unsupported",
            ),
        ];
        run(&verifier_with(&jwks(), Algorithm::all(), 65_536), cases);

        let v = verifier();
        let big = eddsa(with(claims(), json!({"pad": "x".repeat(9000)})));
        assert_eq!(v.verify(&big, NOW), Err(JwtError::TooLarge { max: 8192 }));
        // Refused on length alone: this is not even a token.
        assert_eq!(
            v.verify(&"!".repeat(8193), NOW),
            Err(JwtError::TooLarge { max: 8192 })
        );
        assert_eq!(
            v.verify(&"a".repeat(8192), NOW).map_err(|e| e.code()),
            Err("malformed_token")
        );
    }

    #[test]
    fn jwt_error_messages_never_echo_the_token() {
        let evil = "<script>alert(1)</script>\"\n";
        let token = unsigned(&json!({"alg": evil}).to_string(), &claims());
        let err = verifier().verify(&token, NOW).unwrap_err();
        assert_eq!(err.code(), "alg_not_allowed");
        let message = err.to_string();
        assert!(
            !message.contains("script") && !message.contains('\n'),
            "{message}"
        );
        assert_eq!(
            verifier()
                .verify(&unsigned(r#"{"alg":"HS256"}"#, &claims()), NOW)
                .unwrap_err()
                .to_string(),
            "the signing algorithm \"HS256\" is not allowed"
        );
        for err in [
            JwtError::BadSignature,
            JwtError::Expired,
            JwtError::Malformed("x"),
            JwtError::UnknownKey,
        ] {
            assert!(!err.to_string().is_empty() && !err.code().is_empty());
        }
    }

    #[test]
    fn jwt_peek_issuer_reads_the_unverified_iss_with_bounded_work() {
        let token = es256(claims());
        assert_eq!(peek_issuer(&token).as_deref(), Some(ISS));
        let forged = unsigned(r#"{"alg":"none"}"#, &json!({"iss": "https://other.test"}));
        assert_eq!(peek_issuer(&forged).as_deref(), Some("https://other.test"));
        assert_eq!(
            peek_issuer(&unsigned(r#"{"alg":"none"}"#, &json!({"sub": "x"}))),
            None
        );
        assert_eq!(
            peek_issuer(&unsigned(r#"{"alg":"none"}"#, &json!({"iss": 5}))),
            None
        );
        for garbage in ["", "a", "a.b", "a.!!!.c", "..", "ä.ö.ü"] {
            assert_eq!(peek_issuer(garbage), None, "{garbage}");
        }
        let huge = unsigned(
            r#"{"alg":"none"}"#,
            &json!({"iss": ISS, "pad": "x".repeat(70_000)}),
        );
        assert_eq!(peek_issuer(&huge), None);
    }

    /// `n - s` for a P-256 signature: the other valid ("high-S") form of the same signature.
    fn p256_high_s(token: &str) -> String {
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut raw = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = N[i] as i16 - raw[32 + i] as i16 - borrow;
            borrow = i16::from(d < 0);
            raw[32 + i] = d.rem_euclid(256) as u8;
        }
        format!("{input}.{}", b64(&raw))
    }

    #[test]
    fn jwt_host_and_pure_rust_signature_paths_give_identical_verdicts() {
        use super::signature::{self, tests::FakeEnvoy, HostVerifier};
        let k = keys();
        let rsa_der = k.rsa.to_der().unwrap();
        let evil_rsa = RS256KeyPair::generate(2048).unwrap().with_key_id("rsa-1");
        let evil_es = ES256KeyPair::generate().with_key_id("es256-1");
        let evil = with(claims(), json!({"sub": "admin"}));
        let rs384 = rsa_as(
            RS384KeyPair::from_der(&rsa_der)
                .unwrap()
                .with_key_id("rsa-1"),
            claims(),
        );
        let rs512 = rsa_as(
            RS512KeyPair::from_der(&rsa_der)
                .unwrap()
                .with_key_id("rsa-1"),
            claims(),
        );
        let ps256 = rsa_as(
            PS256KeyPair::from_der(&rsa_der)
                .unwrap()
                .with_key_id("rsa-1"),
            claims(),
        );
        let es256_token = es256(claims());
        let mut cases = vec![
            ("RS256", rs256(claims()), "ok"),
            ("RS384", rs384.clone(), "ok"),
            ("RS512", rs512.clone(), "ok"),
            ("ES256", es256_token.clone(), "ok"),
            ("ES256 high-S twin", p256_high_s(&es256_token), "ok"),
            ("ES384", es384(claims()), "ok"),
            ("PS256", ps256.clone(), "ok"),
            ("EdDSA", eddsa(claims()), "ok"),
            (
                "RS256 expired",
                rs256(with(claims(), json!({"exp": NOW - 3600}))),
                "token_expired",
            ),
            (
                "RS256 tampered",
                tamper_payload(&rs256(claims()), &evil),
                "bad_signature",
            ),
            (
                "RS384 tampered",
                tamper_payload(&rs384, &evil),
                "bad_signature",
            ),
            (
                "RS512 tampered",
                tamper_payload(&rs512, &evil),
                "bad_signature",
            ),
            (
                "ES256 tampered",
                tamper_payload(&es256_token, &evil),
                "bad_signature",
            ),
            (
                "ES384 tampered",
                tamper_payload(&es384(claims()), &evil),
                "bad_signature",
            ),
            (
                "PS256 tampered",
                tamper_payload(&ps256, &evil),
                "bad_signature",
            ),
            (
                "EdDSA tampered",
                tamper_payload(&eddsa(claims()), &evil),
                "bad_signature",
            ),
            (
                "RS256 other key",
                evil_rsa.sign(exact(claims())).unwrap(),
                "bad_signature",
            ),
            (
                "ES256 other key",
                evil_es.sign(exact(claims())).unwrap(),
                "bad_signature",
            ),
            (
                "ES256 zero r and s",
                format!(
                    "{}.{}",
                    es256_token.rsplit_once('.').unwrap().0,
                    b64([0u8; 64])
                ),
                "bad_signature",
            ),
            ("duplicate exp", craft_duplicate_exp(), "malformed_token"),
        ];
        for (name, token) in [
            ("RS256", rs256(claims())),
            ("ES256", es256(claims())),
            ("ES384", es384(claims())),
        ] {
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut flipped = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            cases.push((name, format!("{input}.{}", b64(&flipped)), "bad_signature"));
            let mut first = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
            first[0] ^= 0x80;
            cases.push((name, format!("{input}.{}", b64(&first)), "bad_signature"));
        }
        signature::uninstall();
        let pure: Vec<_> = cases
            .iter()
            .map(|(_, t, _)| code(verifier().verify(t, NOW)))
            .collect();
        let host = Rc::new(HostVerifier::probe(FakeEnvoy::default()));
        signature::install(host.clone());
        let via_host: Vec<_> = cases
            .iter()
            .map(|(_, t, _)| code(verifier().verify(t, NOW)))
            .collect();
        signature::uninstall();
        let mut failures = Vec::new();
        for (((name, _, expected), p), h) in cases.iter().zip(&pure).zip(&via_host) {
            if p != expected || h != expected {
                failures.push(format!(
                    "{name}: expected {expected}, pure Rust {p}, host {h}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(
            host.call().calls.get() >= 20,
            "the host path was taken ({} calls)",
            host.call().calls.get()
        );
    }

    /// A signed token whose payload names `exp` twice (first expired, then valid).
    fn craft_duplicate_exp() -> String {
        let header = b64(r#"{"alg":"EdDSA","kid":"ed-1"}"#);
        let payload = b64(format!(
            r#"{{"iss":"{ISS}","aud":"looker-api","sub":"alice","exp":{},"exp":{}}}"#,
            NOW - 3600,
            NOW + 600
        ));
        let input = format!("{header}.{payload}");
        let signature = keys().ed.key_pair().as_ref().sk.sign(&input, None);
        format!("{input}.{}", b64(signature.as_ref()))
    }

    #[test]
    fn jwt_verified_tokens_are_cached_until_they_expire() {
        use super::signature::{self, tests::FakeEnvoy, HostVerifier};
        let host = Rc::new(HostVerifier::probe(FakeEnvoy::default()));
        signature::install(host.clone());
        let v = verifier();
        let token = rs256(with(claims(), json!({"exp": NOW + 100})));
        let before = host.call().calls.get();
        let first = v.verify(&token, NOW).unwrap();
        assert_eq!(host.call().calls.get(), before + 1);
        for _ in 0..5 {
            assert_eq!(v.verify(&token, NOW + 50).unwrap(), first);
        }
        assert_eq!(host.call().calls.get(), before + 1, "a burst verifies once");
        assert_eq!(v.cached_tokens(), 1);
        // Past exp + skew the cached entry is not served: full verification says expired.
        assert_eq!(v.verify(&token, NOW + 130), Err(JwtError::Expired));
        assert_eq!(host.call().calls.get(), before + 2);
        assert_eq!(v.cached_tokens(), 0);
        // Failures are never cached.
        let bad = tamper_payload(&token, &with(claims(), json!({"sub": "admin"})));
        for _ in 0..2 {
            assert_eq!(v.verify(&bad, NOW), Err(JwtError::BadSignature));
        }
        assert_eq!(v.cached_tokens(), 0);
        signature::uninstall();
    }

    #[test]
    fn jwt_algorithm_names_round_trip() {
        for alg in Algorithm::all() {
            assert_eq!(alg.to_string().parse::<Algorithm>(), Ok(*alg));
            assert_eq!(
                serde_json::from_value::<Algorithm>(json!(alg.to_string())).unwrap(),
                *alg
            );
        }
        for bad in ["none", "HS256", "rs256", "ES512", ""] {
            assert!(bad.parse::<Algorithm>().is_err(), "{bad}");
            assert!(
                serde_json::from_value::<Algorithm>(json!(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
