//! The one cryptographic step of verification — does this signature over this input
//! check out with this key — behind a [`SignatureBackend`], so the host's crypto can
//! take the place of pure Rust where it is faster.
//!
//! Each Envoy worker runs its own single-threaded VM, so the backend is installed per
//! thread ([`install`]); until then, and on any host without the foreign function,
//! [`PureRust`] verifies. [`HostVerifier`] speaks Envoy's `verify_signature` foreign
//! function (BoringSSL): its protobuf is encoded by hand below, and every algorithm it
//! is trusted with was first checked against known answers ([`HostVerifier::probe`]).

use std::cell::RefCell;
use std::rc::Rc;

use jwt_simple::prelude::{
    Duration, ECDSAP256PublicKeyLike, ECDSAP384PublicKeyLike, NoCustomClaims, RSAPublicKeyLike,
    UnixTimeStamp, VerificationOptions,
};

use super::{Algorithm, MAX_HEADER_CHARS};
use crate::jwks::{spki, KeyMaterial, PreparedKey};

/// A token split for signature checking. `signing_input` (`header.payload`) is what the
/// signature covers; `token` is the whole compact JWS for verifiers that only take that.
#[derive(Debug, Clone, Copy)]
pub struct SignedInput<'t> {
    pub token: &'t str,
    pub signing_input: &'t str,
    /// Decoded signature bytes (JWS form: raw `r || s` for ECDSA).
    pub signature: &'t [u8],
}

/// Checks one signature. `None` means "cannot do this one" (unsupported algorithm, host
/// refused the call): the caller falls back to [`PureRust`], never to "valid".
pub trait SignatureBackend {
    fn verify(&self, alg: Algorithm, key: &PreparedKey, input: &SignedInput<'_>) -> Option<bool>;
}

thread_local! {
    static INSTALLED: RefCell<Option<Rc<dyn SignatureBackend>>> = const { RefCell::new(None) };
}

/// Makes `backend` the first choice for signature checks on this thread (this VM).
pub fn install(backend: Rc<dyn SignatureBackend>) {
    INSTALLED.with(|slot| *slot.borrow_mut() = Some(backend));
}

/// Back to pure Rust only on this thread.
pub fn uninstall() {
    INSTALLED.with(|slot| *slot.borrow_mut() = None);
}

/// The installed backend, falling back to pure Rust when it declines.
pub(crate) fn check(alg: Algorithm, key: &PreparedKey, input: &SignedInput<'_>) -> bool {
    let installed = INSTALLED.with(|slot| slot.borrow().clone());
    if let Some(verdict) = installed.and_then(|backend| backend.verify(alg, key, input)) {
        return verdict;
    }
    PureRust.verify(alg, key, input).unwrap_or(false)
}

/// Pure-Rust verification (jwt-simple's primitives), available on every host.
///
/// Ed25519 checks the signing input directly. For RSA and ECDSA jwt-simple only offers
/// whole-token verification, so it re-reads the token; our own parse runs first and
/// refuses every header or claim form its typed parse would, so the only way it fails
/// is the signature. Its time checks are neutralised: claims are checked by the caller.
pub struct PureRust;

impl SignatureBackend for PureRust {
    fn verify(&self, alg: Algorithm, key: &PreparedKey, input: &SignedInput<'_>) -> Option<bool> {
        if let (KeyMaterial::Ed25519(k), Algorithm::EdDSA) = (&key.material, alg) {
            let Ok(signature) = ed25519_dalek::Signature::from_slice(input.signature) else {
                return Some(false);
            };
            // Strict: canonical `s`, and no small-order `A` or `R` (the rules
            // ed25519-compact applied before; RFC 8032 leaves them to the verifier).
            return Some(
                k.verify_strict(input.signing_input.as_bytes(), &signature)
                    .is_ok(),
            );
        }
        let token = input.token;
        let options = Some(VerificationOptions {
            accept_future: true,
            artificial_time: Some(UnixTimeStamp::from_secs(0)),
            time_tolerance: Some(Duration::from_secs(0)),
            max_token_length: Some(token.len()),
            max_header_length: Some(MAX_HEADER_CHARS),
            ..VerificationOptions::default()
        });
        let outcome = match (&key.material, alg) {
            (KeyMaterial::Rsa(k), Algorithm::RS256) => k
                .rs256
                .verify_token::<NoCustomClaims>(token, options)
                .map(drop),
            (KeyMaterial::Rsa(k), Algorithm::RS384) => k
                .rs384
                .verify_token::<NoCustomClaims>(token, options)
                .map(drop),
            (KeyMaterial::Rsa(k), Algorithm::RS512) => k
                .rs512
                .verify_token::<NoCustomClaims>(token, options)
                .map(drop),
            (KeyMaterial::Rsa(k), Algorithm::PS256) => k
                .ps256
                .verify_token::<NoCustomClaims>(token, options)
                .map(drop),
            (KeyMaterial::Rsa(k), Algorithm::PS384) => k
                .ps384
                .verify_token::<NoCustomClaims>(token, options)
                .map(drop),
            (KeyMaterial::Rsa(k), Algorithm::PS512) => k
                .ps512
                .verify_token::<NoCustomClaims>(token, options)
                .map(drop),
            (KeyMaterial::P256(k), Algorithm::ES256) => {
                k.verify_token::<NoCustomClaims>(token, options).map(drop)
            }
            (KeyMaterial::P384(k), Algorithm::ES384) => {
                k.verify_token::<NoCustomClaims>(token, options).map(drop)
            }
            _ => return Some(false),
        };
        // Fail closed: any refusal, whatever jwt-simple calls it, is "not verified".
        Some(outcome.is_ok())
    }
}

/// A call of the host's `verify_signature` foreign function: serialized
/// `VerifySignatureArguments` in, serialized `VerifySignatureResult` out; `None` when
/// the host has no such function or refused the arguments.
pub trait ForeignCall {
    fn call(&self, arguments: &[u8]) -> Option<Vec<u8>>;
}

/// Signature checks through the host (Envoy: BoringSSL), for the algorithms that
/// passed [`HostVerifier::probe`]; the rest decline to pure Rust.
pub struct HostVerifier<C> {
    call: C,
    enabled: Vec<Algorithm>,
}

/// Algorithms the `verify_signature` function can do: PKCS#1 v1.5 RSA and ECDSA. RSA-PSS
/// needs a padding option the function lacks. EdDSA cannot go through it: Envoy 1.40
/// always sets a digest, which BoringSSL refuses for Ed25519 keys (tried with a valid
/// vector: "sha256", "sha512", "SHA512" answer "Failed to initialize digest verify.";
/// "", "none", "ed25519" "... is not supported."), so Ed25519 stays in pure Rust
/// (ed25519-dalek).
pub const HOST_CANDIDATES: [Algorithm; 5] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

impl<C: ForeignCall> HostVerifier<C> {
    /// Builds a verifier trusted only with the algorithms whose known-good vector
    /// verifies and whose corrupted copy is refused.
    pub fn probe(call: C) -> HostVerifier<C> {
        let mut verifier = HostVerifier {
            call,
            enabled: HOST_CANDIDATES.to_vec(),
        };
        let vectors = probe::vectors();
        verifier.enabled = HOST_CANDIDATES
            .iter()
            .copied()
            .filter(|alg| {
                vectors.iter().filter(|v| v.alg == *alg).all(|v| {
                    let mut bad = v.signature.clone();
                    if let Some(last) = bad.last_mut() {
                        *last ^= 1;
                    }
                    verifier.check(v.alg, &v.key, v.message.as_bytes(), &v.signature) == Some(true)
                        && verifier.check(v.alg, &v.key, v.message.as_bytes(), &bad) == Some(false)
                }) && vectors.iter().any(|v| v.alg == *alg)
            })
            .collect();
        verifier
    }

    /// The algorithms this verifier sends to the host.
    pub fn enabled(&self) -> &[Algorithm] {
        &self.enabled
    }

    /// The foreign-function caller.
    pub fn call(&self) -> &C {
        &self.call
    }

    fn check(
        &self,
        alg: Algorithm,
        key: &PreparedKey,
        text: &[u8],
        signature: &[u8],
    ) -> Option<bool> {
        let hash = match alg {
            Algorithm::RS256 | Algorithm::ES256 => "sha256",
            Algorithm::RS384 | Algorithm::ES384 => "sha384",
            Algorithm::RS512 => "sha512",
            _ => return None,
        };
        let der_signature;
        let signature = match alg {
            Algorithm::ES256 | Algorithm::ES384 => match ecdsa_signature_der(signature) {
                Some(der) => {
                    der_signature = der;
                    &der_signature[..]
                }
                None => return Some(false),
            },
            _ => signature,
        };
        let request = encode_verify_request(hash, key.spki_der(), signature, text);
        let answer = self.call.call(&request)?;
        decode_verify_result(&answer)
    }
}

impl<C: ForeignCall> SignatureBackend for HostVerifier<C> {
    fn verify(&self, alg: Algorithm, key: &PreparedKey, input: &SignedInput<'_>) -> Option<bool> {
        if !self.enabled.contains(&alg) || !key.material.supports(alg) {
            return None;
        }
        self.check(alg, key, input.signing_input.as_bytes(), input.signature)
    }
}

/// A JWS ECDSA signature (`r || s`, each half the curve's byte size) as the DER
/// `ECDSA-Sig-Value` BoringSSL expects, minimally encoded (BoringSSL refuses any other).
pub fn ecdsa_signature_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || raw.len() & 1 == 1 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = spki::unsigned_integer(r);
    body.extend(spki::unsigned_integer(s));
    Some(spki::tlv(0x30, &body))
}

/// Serializes `VerifySignatureArguments { hash_function = 1; public_key = 2;
/// signature = 3; text = 4 }` (Envoy `source/extensions/common/wasm/ext/verify_signature.proto`).
pub fn encode_verify_request(
    hash: &str,
    spki_der: &[u8],
    signature: &[u8],
    text: &[u8],
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(hash.len() + spki_der.len() + signature.len() + text.len() + 16);
    for (field, bytes) in [
        (1u8, hash.as_bytes()),
        (2, spki_der),
        (3, signature),
        (4, text),
    ] {
        out.push(field << 3 | 2); // length-delimited
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads `VerifySignatureResult { bool result = 1; string error = 2 }`; proto3 leaves out
/// a false `result`, so absent means false. `None` for bytes that are not that message.
pub fn decode_verify_result(bytes: &[u8]) -> Option<bool> {
    let mut result = false;
    let mut at = 0;
    while at < bytes.len() {
        let key = get_varint(bytes, &mut at)?;
        match (key >> 3, key & 7) {
            (1, 0) => result = get_varint(bytes, &mut at)? != 0,
            (_, 0) => {
                get_varint(bytes, &mut at)?;
            }
            (_, 1) => at = at.checked_add(8)?,
            (_, 2) => {
                let len = usize::try_from(get_varint(bytes, &mut at)?).ok()?;
                at = at.checked_add(len)?;
            }
            (_, 5) => at = at.checked_add(4)?,
            _ => return None,
        }
        if at > bytes.len() {
            return None;
        }
    }
    Some(result)
}

/// Known-answer vectors for the host probe: JWS signing inputs signed once offline
/// with throw-away keys (only the public halves are here).
pub(crate) mod probe {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    use super::Algorithm;
    use crate::jwks::{KeySet, PreparedKey};

    const RSA_N: &str = "3a4hbT5SDhxB9CafEaaah9pRKSn5l11yKqdz6ImAXV-CFchNNrFOhUjYI2VHD7pNo1wMCRO8vxdTJSVVaXWs_uxHQ8zdsCZdmA--XyW_9sna5dBtibL3cAumnRkGuMrgR_zcCPp4foF-oaAawflwxGev90vhgOjxQA-eJY5LCHjcUaFYfr9vmi5V0fDNmS3ITiBCkwcc0iXMubdYw0bfafwJkpVe6fs0fgboOw9O8XdQbka18Bg8dmaADe0RGoa01m7AscaSAP8dzsZZgOpDwg6G8sh_eHqQw8IsO80ORVpBtYnN5uSInvtgZ77w7L3HdD8wlUhijUvk3jd1raYobw";
    const RS256_SIG: &str = "gztBQmttEyrZbTjMPyNplz-ybE1pblBPbw2HxubDDJVYwrHP8EGgCAHpfEYIZvoYV-fxrEBPQ_bRr8OifPrt627lcx2GBjMrjQJ0BduMNw85oOWisXC-DCPddxBwhVpZQ0AuBXHNhEdZh_sEFAWsQ7W-61kcTWU260SNRRaKUytnQnuLr_w0x1DZCUx-W73TxF-UuyXfFNOqCatDhekEkksgLjJi4EK6VVERpcnS-uzTd-wyTRkuwPLeaIYJXDdeqcgMxYLbj6WiOvdb2aiGi-NQDaGGrJuH4yGR-ReVTQxhwPeEgie8FGO82_Z9HlHgzBtkhXPx18eJtNuBqWFUNA";
    const RS384_SIG: &str = "lGh57kJTm2UVYQ-fv9QqM3obY9vMuAOeRKhYf-aE9Mgs2eXFU3Mb55LQqFg_jzRz5laZIRb1faAy7o9m9hLvr4Sr_TNDvyKvGgzoEhNv4I8uGcwVZnG4-NrsJiYoVpJd-oFaGNj4HFZz4hz8BDdkkafrxRdINmYE7usOdhO8s89F-sOtqp5p2P4jckmMxMe6HLFIWItpUgJHAoQxN8_uYK-wHz8qEog4Mv0XQNfbGcRTYsfPHAblydWrEeB71QdQY86ANb2xIWyJc8MIrECi2DLqSBoPFSS1oGkWa3KC8sRmdBF-Hxkz5M8N6oWJacqACXfWsn6RqLIMmnydIe5Eog";
    const RS512_SIG: &str = "CbLdZ8wYrN9gWXf97fPSFifJAR2JGKgcNi7tRWlhqDH--XQmr1FdIvE4TSHipCU3YlqinkPmXy5kZdPQal59HFyi0w5NCwjhdnLwotNF9GvdiGnggA8bunicFV7tQq959Z41QcNOcP65xcq07Wl9MA_s5qiIICwQuG_y67j2YzLz9KTOqvQ9r7yT-omgt_MgEVKsLCth7hNYTaPZfqVzHyGlDABGgk1HMpJZ1JnBYPuAY9iK1DlkiJSnh_3JPsDYinq1H-bi2jI0PX0uGktZBSMs4B1FItAp5pxDIKv4EQGV3iCtgVYt9pSgzmMzctM-muFznmd5ZP7MoLYyAvaRnw";
    const ES256_X: &str = "_tSCXxUs2KKQTdc3eYmRjwB4V0xp3JRtcPVquXdaZXk";
    const ES256_Y: &str = "A_hX7WZtZEdLeABSmT6w_aozqd2IouL2lQsRAsAEcyo";
    const ES256_SIG: &str =
        "En0CU3SWzTK0-cUto3vcI4ujIs7pw5Gdvc8DM8Hu3P0FmZos5inNhQjJa95TNxCd91svqjayRyS_KobC4b-gKQ";
    const ES384_X: &str = "QO2ZgTjZmFselpTmcvHmMzqH-p1Mr4liiUuporbVlASQSf1AJ1SAFnD18iXKjgMd";
    const ES384_Y: &str = "czTgWg-UV0iCitiQGqbZ0Ax9-ugJPBEwwp88jCFndqz314erC0uPrJ3sfaJr2Zyl";
    const ES384_SIG: &str = "DJp3fxTfftWSRC_a2n94HPVcFbbTyMD6O2rC2ssMuEmltzOlLj8MR0hIt-Fo7DNuzZfVpAKGsqcREcL1mYA8XhPO047TzXyA8UjhTWvHddibaOdrUwk75e7zxji1BaKo";

    pub(crate) struct Vector {
        pub(crate) alg: Algorithm,
        pub(crate) key: PreparedKey,
        /// A JWS signing input: `{"alg":ALG}` . `{"sub":"lookergate host crypto probe"}`.
        pub(crate) message: String,
        pub(crate) signature: Vec<u8>,
    }

    fn message(alg: Algorithm) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"lookergate host crypto probe"}"#);
        format!("{header}.{payload}")
    }

    fn key(jwk: serde_json::Value) -> Option<PreparedKey> {
        let (set, _) = KeySet::from_jwks(&json!({ "keys": [jwk] })).ok()?;
        set.into_keys().into_iter().next().map(|k| k.key)
    }

    /// Every vector that decodes (all of them, unless this file was edited badly).
    pub(crate) fn vectors() -> Vec<Vector> {
        let rsa = || json!({"kty": "RSA", "n": RSA_N, "e": "AQAB"});
        let cases = [
            (Algorithm::RS256, rsa(), RS256_SIG),
            (Algorithm::RS384, rsa(), RS384_SIG),
            (Algorithm::RS512, rsa(), RS512_SIG),
            (
                Algorithm::ES256,
                json!({"kty": "EC", "crv": "P-256", "x": ES256_X, "y": ES256_Y}),
                ES256_SIG,
            ),
            (
                Algorithm::ES384,
                json!({"kty": "EC", "crv": "P-384", "x": ES384_X, "y": ES384_Y}),
                ES384_SIG,
            ),
        ];
        cases
            .into_iter()
            .filter_map(|(alg, jwk, sig)| {
                Some(Vector {
                    alg,
                    key: key(jwk)?,
                    message: message(alg),
                    signature: URL_SAFE_NO_PAD.decode(sig).ok()?,
                })
            })
            .collect()
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
    use std::cell::Cell;
    use std::collections::HashMap;

    use jwt_simple::prelude::*;

    use super::*;

    /// Test-side protobuf reader: field number -> bytes of every length-delimited field,
    /// and varints as their value's little-endian bytes.
    fn fields(bytes: &[u8]) -> HashMap<u64, Vec<u8>> {
        let mut out = HashMap::new();
        let mut at = 0;
        while at < bytes.len() {
            let key = get_varint(bytes, &mut at).unwrap();
            match key & 7 {
                0 => {
                    let v = get_varint(bytes, &mut at).unwrap();
                    out.insert(key >> 3, v.to_le_bytes().to_vec());
                }
                2 => {
                    let len = get_varint(bytes, &mut at).unwrap() as usize;
                    out.insert(key >> 3, bytes[at..at + len].to_vec());
                    at += len;
                }
                other => panic!("wire type {other}"),
            }
        }
        out
    }

    /// Strict DER `SEQUENCE { INTEGER r, INTEGER s }` back to `r || s` (BoringSSL also
    /// refuses anything not minimally encoded).
    fn der_to_raw(der: &[u8], half: usize) -> Option<Vec<u8>> {
        fn integer(b: &[u8]) -> Option<(&[u8], &[u8])> {
            let (&tag, rest) = b.split_first()?;
            let (&len, rest) = rest.split_first()?;
            let len = len as usize;
            if tag != 0x02 || len == 0 || len > 0x7f || rest.len() < len {
                return None;
            }
            let (value, rest) = rest.split_at(len);
            if value[0] & 0x80 != 0 || (len > 1 && value[0] == 0 && value[1] & 0x80 == 0) {
                return None; // negative, or a needless leading zero
            }
            Some((value, rest))
        }
        if der.len() < 2 || der[0] != 0x30 || der[1] as usize != der.len() - 2 {
            return None;
        }
        let (r, rest) = integer(&der[2..])?;
        let (s, rest) = integer(rest)?;
        if !rest.is_empty() {
            return None;
        }
        let mut raw = vec![0u8; 2 * half];
        for (value, end) in [(r, half), (s, 2 * half)] {
            let value = if value.len() > half {
                &value[value.len() - half..]
            } else {
                value
            };
            raw[end - value.len()..end].copy_from_slice(value);
        }
        Some(raw)
    }

    /// Stands in for Envoy: decodes the request, parses the DER key and DER signature
    /// the way BoringSSL would need them, and verifies with jwt-simple.
    #[derive(Default)]
    pub(crate) struct FakeEnvoy {
        pub(crate) calls: Cell<usize>,
    }

    impl ForeignCall for FakeEnvoy {
        fn call(&self, arguments: &[u8]) -> Option<Vec<u8>> {
            self.calls.set(self.calls.get() + 1);
            let f = fields(arguments);
            let hash = std::str::from_utf8(&f[&1]).unwrap();
            let (spki, signature, text) = (&f[&2], &f[&3], std::str::from_utf8(&f[&4]).unwrap());
            let options = || {
                Some(VerificationOptions {
                    accept_future: true,
                    artificial_time: Some(UnixTimeStamp::from_secs(0)),
                    time_tolerance: Some(Duration::from_secs(0)),
                    ..VerificationOptions::default()
                })
            };
            let token = |raw: &[u8]| {
                format!(
                    "{text}.{}",
                    Base64UrlSafeNoPadding::encode_to_string(raw).unwrap()
                )
            };
            let ok = match hash {
                "sha256" if ES256PublicKey::from_der(spki).is_ok() => {
                    match der_to_raw(signature, 32) {
                        Some(raw) => ES256PublicKey::from_der(spki)
                            .unwrap()
                            .verify_token::<NoCustomClaims>(&token(&raw), options())
                            .is_ok(),
                        None => return None, // BoringSSL: not a valid DER signature
                    }
                }
                "sha384" if ES384PublicKey::from_der(spki).is_ok() => {
                    match der_to_raw(signature, 48) {
                        Some(raw) => ES384PublicKey::from_der(spki)
                            .unwrap()
                            .verify_token::<NoCustomClaims>(&token(&raw), options())
                            .is_ok(),
                        None => return None,
                    }
                }
                "sha256" => RS256PublicKey::from_der(spki)
                    .unwrap()
                    .verify_token::<NoCustomClaims>(&token(signature), options())
                    .is_ok(),
                "sha384" => RS384PublicKey::from_der(spki)
                    .unwrap()
                    .verify_token::<NoCustomClaims>(&token(signature), options())
                    .is_ok(),
                "sha512" => RS512PublicKey::from_der(spki)
                    .unwrap()
                    .verify_token::<NoCustomClaims>(&token(signature), options())
                    .is_ok(),
                other => panic!("hash {other}"),
            };
            // What Envoy answers: `result` only when true, an `error` string when false.
            Some(if ok {
                vec![0x08, 0x01]
            } else {
                [&[0x12, 0x03][..], b"bad"].concat()
            })
        }
    }

    struct Refuses;
    impl ForeignCall for Refuses {
        fn call(&self, _: &[u8]) -> Option<Vec<u8>> {
            None
        }
    }

    struct SaysYes;
    impl ForeignCall for SaysYes {
        fn call(&self, _: &[u8]) -> Option<Vec<u8>> {
            Some(vec![0x08, 0x01])
        }
    }

    #[test]
    fn probe_vectors_verify_in_pure_rust() {
        let vectors = probe::vectors();
        assert_eq!(vectors.len(), HOST_CANDIDATES.len());
        for v in vectors {
            let token = format!(
                "{}.{}",
                v.message,
                Base64UrlSafeNoPadding::encode_to_string(&v.signature).unwrap()
            );
            let input = SignedInput {
                token: &token,
                signing_input: &v.message,
                signature: &v.signature,
            };
            assert_eq!(
                PureRust.verify(v.alg, &v.key, &input),
                Some(true),
                "{}",
                v.alg
            );
        }
    }

    #[test]
    fn eddsa_is_strict_about_s_and_small_order_keys() {
        let pair = Ed25519KeyPair::generate();
        let x = Base64UrlSafeNoPadding::encode_to_string(pair.public_key().to_bytes()).unwrap();
        let (set, _) = crate::jwks::KeySet::from_jwks(
            &serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]}),
        )
        .unwrap();
        let key = set.into_keys().into_iter().next().unwrap().key;
        let token = pair.sign(Claims::create(Duration::from_secs(60))).unwrap();
        let (signing_input, sig_b64) = token.rsplit_once('.').unwrap();
        let signature = Base64UrlSafeNoPadding::decode_to_vec(sig_b64, None).unwrap();
        let verify = |key: &PreparedKey, signature: &[u8]| {
            PureRust.verify(
                Algorithm::EdDSA,
                key,
                &SignedInput {
                    token: &token,
                    signing_input,
                    signature,
                },
            )
        };
        assert_eq!(verify(&key, &signature), Some(true));
        // s + L (little-endian): the same signature, non-canonically encoded.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut malleated = signature.clone();
        let mut carry = 0u16;
        for (i, l) in L.iter().enumerate() {
            let sum = u16::from(malleated[32 + i]) + u16::from(*l) + carry;
            malleated[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(verify(&key, &malleated), Some(false), "non-canonical s");
        assert_eq!(
            verify(&key, &signature[..63]),
            Some(false),
            "short signature"
        );
        // The identity point (small order): a key any signature with R = identity and
        // s = 0 would satisfy.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = crate::jwks::KeySet::from_jwks(&serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519",
            "x": Base64UrlSafeNoPadding::encode_to_string(identity).unwrap()}]}))
        .unwrap()
        .0
        .into_keys()
        .into_iter()
        .next()
        .unwrap()
        .key;
        let mut forged = vec![0u8; 64];
        forged[0] = 1;
        assert_eq!(verify(&weak, &forged), Some(false), "small-order key");
    }

    #[test]
    fn probe_enables_only_a_host_that_answers_right() {
        assert_eq!(
            HostVerifier::probe(FakeEnvoy::default()).enabled(),
            &HOST_CANDIDATES
        );
        assert!(
            HostVerifier::probe(Refuses).enabled().is_empty(),
            "no foreign function"
        );
        assert!(
            HostVerifier::probe(SaysYes).enabled().is_empty(),
            "a host that accepts anything"
        );
    }

    #[test]
    fn host_verifier_declines_what_it_was_not_enabled_for() {
        let host = HostVerifier::probe(FakeEnvoy::default());
        let v = &probe::vectors()[0];
        let input = SignedInput {
            token: "",
            signing_input: &v.message,
            signature: &v.signature,
        };
        assert_eq!(host.verify(Algorithm::PS256, &v.key, &input), None);
        assert_eq!(host.verify(Algorithm::EdDSA, &v.key, &input), None);
        assert_eq!(host.verify(Algorithm::RS256, &v.key, &input), Some(true));
        assert_eq!(
            HostVerifier::probe(Refuses).verify(Algorithm::RS256, &v.key, &input),
            None
        );
    }

    #[test]
    fn ecdsa_signature_der_is_minimal() {
        let mut raw = vec![0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its top bit set: needs a leading zero
        let der = ecdsa_signature_der(&raw).unwrap();
        let mut expected = vec![0x30, 0x26, 0x02, 0x01, 0x01, 0x02, 0x21, 0x00, 0x80];
        expected.extend([0u8; 31]);
        assert_eq!(der, expected);
        assert_eq!(der_to_raw(&der, 32).unwrap(), raw);
        // Zero halves stay valid DER (the verifier refuses them, not the encoder).
        assert_eq!(
            ecdsa_signature_der(&[0u8; 64]).unwrap(),
            vec![0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]
        );
        // Full-width P-384 halves with the top bit set: 2 + 2 * (2 + 49) bytes, short form.
        let der = ecdsa_signature_der(&[0xffu8; 96]).unwrap();
        assert_eq!((der.len(), der[1]), (104, 102));
        assert_eq!(der_to_raw(&der, 48).unwrap(), vec![0xffu8; 96]);
        assert_eq!(ecdsa_signature_der(&[1u8; 63]), None);
        assert_eq!(ecdsa_signature_der(&[]), None);
    }

    #[test]
    fn verify_request_encodes_the_four_fields() {
        let request = encode_verify_request("sha256", &[0xAA; 2], &[0xBB; 3], b"t");
        assert_eq!(
            request,
            [
                &[0x0A, 6][..],
                b"sha256",
                &[0x12, 2, 0xAA, 0xAA],
                &[0x1A, 3, 0xBB, 0xBB, 0xBB],
                &[0x22, 1],
                b"t"
            ]
            .concat()
        );
        // Lengths of 128 and more take a multi-byte varint.
        let text = vec![7u8; 300];
        let f = fields(&encode_verify_request(
            "sha512", &[1; 294], &[2; 256], &text,
        ));
        assert_eq!(
            (f[&1].as_slice(), f[&2].len(), f[&3].len(), f[&4].as_slice()),
            (&b"sha512"[..], 294, 256, &text[..])
        );
    }

    #[test]
    fn verify_result_decodes_like_protobuf() {
        let cases: Vec<(&[u8], Option<bool>)> = vec![
            (&[], Some(false)),
            (&[0x08, 0x01], Some(true)),
            (&[0x08, 0x00], Some(false)),
            (&[0x12, 0x03, b'b', b'a', b'd'], Some(false)),
            (&[0x12, 0x01, b'x', 0x08, 0x01], Some(true)),
            (&[0x08, 0x81, 0x00], Some(true)), // non-minimal varint is still 1
            (&[0x18, 0x05, 0x08, 0x01], Some(true)), // unknown varint field skipped
            (&[0x12, 0x05, b'x'], None),       // truncated
            (&[0x08], None),
            (&[0x0B], None), // group wire type
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode_verify_result(bytes), expected, "{bytes:02x?}");
        }
    }
}
