//! Fuzz harnesses for lookergate's pure modules. Each `pub fn <target>(data)` is one
//! libFuzzer target (`fuzz_targets/<target>.rs` only calls it), so the same code also
//! replays `regressions/` in `cargo test`. A harness asserts properties, not just "no
//! panic": a `panic!` here is a finding, with its reason in the message.
//!
//! Fixed material: `fixtures/jwks.json` (written by `gen_seeds`) holds the public keys
//! the verifier trusts. P-256, P-384 and Ed25519 keys are derived from constants below,
//! so `jwt_signed` can sign fuzzer-chosen tokens; the RSA key is generated with each
//! `gen_seeds` run and its private half thrown away after signing the seed tokens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::arbitrary::Unstructured;
use serde_json::{json, Value};

use lookergate::config::Gateway;
use lookergate::jwt::{self, Algorithm, IssuerVerifier, JwtError, KeySet};
use lookergate::looker::{OperationTable, Resolution, API_PREFIX};
use lookergate::path::{parse_target, strip_access_token};
use lookergate::policy::QueryGuard;

/// The CLI's reader of plugin configurations in Envoy configs, compiled here as a module:
/// depending on the CLI crate would bring its server stack into every fuzz build.
#[path = "../../cli/src/source.rs"]
pub mod source;

/// The verifier's clock. Seed tokens are valid around it whenever they were signed.
pub const NOW: u64 = 1_800_000_000;
pub const ISS: &str = "https://idp.fuzz.test";
pub const AUDIENCES: &[&str] = &["looker-api", "fuzz-aud"];
pub const SKEW: u64 = 30;
pub const MAX_TOKEN_BYTES: usize = 65_536;

/// Private scalars / seeds of the deterministic keys (fuzzing only, never trust them).
pub const P256_SCALAR: [u8; 32] = [0x11; 32];
pub const P384_SCALAR: [u8; 48] = [0x22; 48];
pub const ED25519_SEED: [u8; 32] = [0x33; 32];
pub const KID_RSA: &str = "fuzz-rsa";
pub const KID_ES256: &str = "fuzz-es256";
pub const KID_ES384: &str = "fuzz-es384";
pub const KID_ED: &str = "fuzz-ed";
pub const KID_DEMO: &str = "demo-2026";

pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The trusted JWKS, read once from `fixtures/jwks.json`.
pub fn fixture_jwks() -> &'static Value {
    static JWKS: OnceLock<Value> = OnceLock::new();
    JWKS.get_or_init(|| {
        let path = fuzz_dir().join("fixtures/jwks.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo run --release --manifest-path fuzz/Cargo.toml --bin gen_seeds`)", path.display()));
        serde_json::from_str(&text).expect("fixtures/jwks.json is JSON")
    })
}

pub fn verifier() -> IssuerVerifier {
    let (keys, warnings) = KeySet::from_jwks(fixture_jwks()).expect("fixture JWKS loads");
    assert!(warnings.is_empty(), "fixture JWKS warnings: {warnings:?}");
    IssuerVerifier::new(
        ISS.to_owned(),
        AUDIENCES.iter().map(|a| (*a).to_owned()).collect(),
        Algorithm::all().to_vec(),
        SKEW,
        MAX_TOKEN_BYTES,
        keys,
    )
}

/// `header.payload` of every seed token, the only inputs the fixed keys ever signed
/// (besides what `jwt_signed` signs itself). A verified token must be one of them.
fn signed_inputs() -> &'static HashSet<String> {
    static SET: OnceLock<HashSet<String>> = OnceLock::new();
    SET.get_or_init(|| {
        let mut set = HashSet::new();
        for dir in ["seeds/jwt_verify", "regressions/jwt_verify"] {
            let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir)) else { continue };
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    if let Some((input, _)) = text.rsplit_once('.') {
                        set.insert(input.to_owned());
                    }
                }
            }
        }
        set
    })
}

/// Properties every token the verifier accepts at `now` must have.
fn check_accepted(token: &str, v: &jwt::VerifiedToken, now: u64) {
    assert_eq!(v.issuer, ISS, "accepted a token of another issuer: {token:?}");
    assert_eq!(v.claims.get("iss").and_then(Value::as_str), Some(ISS));
    assert!(now < v.expires_at.saturating_add(SKEW), "accepted an expired token: {token:?}");
    let aud_ok = match v.claims.get("aud") {
        Some(Value::String(a)) => AUDIENCES.contains(&a.as_str()),
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str().is_some_and(|a| AUDIENCES.contains(&a))),
        _ => false,
    };
    assert!(aud_ok, "accepted a token without an accepted audience: {token:?}");
    let header = token.split('.').next().and_then(|h| URL_SAFE_NO_PAD.decode(h).ok());
    let header: Value = header.and_then(|h| serde_json::from_slice(&h).ok()).expect("accepted header is JSON");
    assert_eq!(header.get("alg").and_then(Value::as_str), Some(v.alg.as_str()));
    assert!(header.get("crit").is_none(), "accepted a token with crit: {token:?}");
    // Expiry must win over the verified-token cache.
    let later = v.expires_at.saturating_add(SKEW);
    assert!(later > now);
}

/// `jwt_verify`: arbitrary token strings against the fixed JWKS, and `peek_issuer`.
pub fn jwt_verify(data: &[u8]) {
    thread_local! {
        static VERIFIER: IssuerVerifier = verifier();
    }
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = jwt::peek_issuer(token);
    VERIFIER.with(|verifier| {
        let first = verifier.verify(token, NOW);
        // Second call: answered from the cache when the first succeeded; must agree.
        let second = verifier.verify(token, NOW);
        assert_eq!(first, second, "verify is not repeatable for {token:?}");
        if let Ok(v) = &first {
            check_accepted(token, v, NOW);
            let input = token.rsplit_once('.').map(|(i, _)| i).unwrap_or("");
            assert!(signed_inputs().contains(input), "FORGERY: accepted a token nobody signed: {token:?}");
            let later = v.expires_at.saturating_add(SKEW);
            assert_eq!(verifier.verify(token, later), Err(JwtError::Expired), "cache outlived exp: {token:?}");
        }
        if let Err(e) = &first {
            let message = e.to_string();
            // Error messages go into replies: never echo the token.
            if token.len() > 24 {
                assert!(!message.contains(token), "error message repeats the token");
            }
            let _ = e.code();
        }
    });
}

/// The private halves of the deterministic keys, for `jwt_signed` and `gen_seeds`.
pub struct SigningKeys {
    pub es256: p256::ecdsa::SigningKey,
    pub ed: ed25519_compact::KeyPair,
}

pub fn signing_keys() -> &'static SigningKeys {
    static KEYS: OnceLock<SigningKeys> = OnceLock::new();
    KEYS.get_or_init(|| SigningKeys {
        es256: p256::ecdsa::SigningKey::from_slice(&P256_SCALAR).expect("valid P-256 scalar"),
        ed: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(ED25519_SEED)),
    })
}

/// Signs `header.payload` (both base64url-encoded here) with ES256 or EdDSA.
pub fn sign_compact(ed25519: bool, header: &[u8], payload: &[u8]) -> String {
    use p256::ecdsa::signature::Signer;
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature = if ed25519 {
        signing_keys().ed.sk.sign(input.as_bytes(), None).to_vec()
    } else {
        let sig: p256::ecdsa::Signature = signing_keys().es256.sign(input.as_bytes());
        sig.to_bytes().to_vec()
    };
    format!("{input}.{}", b64(signature))
}

/// `jwt_signed`: the fuzzer writes the header and payload JSON; the harness signs them
/// with a trusted key (byte 0: even = ES256, odd = EdDSA; header and payload split at
/// the first 0xFF byte, or only a payload with a default header). A correctly signed
/// token must never be refused as `bad_signature` when its header names the signing
/// key: that would mean our parse and the signature backend's disagree on the token.
pub fn jwt_signed(data: &[u8]) {
    thread_local! {
        static VERIFIER: IssuerVerifier = verifier();
    }
    let Some((&selector, rest)) = data.split_first() else { return };
    let ed25519 = selector & 1 == 1;
    let (alg, kid) = if ed25519 { ("EdDSA", KID_ED) } else { ("ES256", KID_ES256) };
    let default_header = json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string();
    let (header, payload) = match rest.iter().position(|b| *b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (default_header.as_bytes(), rest),
    };
    let token = sign_compact(ed25519, header, payload);
    VERIFIER.with(|verifier| {
        let result = verifier.verify(&token, NOW);
        let parsed: Option<Value> = serde_json::from_slice(header).ok();
        // Without a kid the set has exactly one key per algorithm (see gen_seeds).
        let names_signer = parsed.as_ref().is_some_and(|h| {
            h.get("alg").and_then(Value::as_str) == Some(alg) && h.get("kid").is_none_or(|k| k.as_str() == Some(kid))
        });
        if result == Err(JwtError::BadSignature) && names_signer {
            panic!(
                "a token correctly signed by {kid} was refused as bad_signature\nheader:  {}\npayload: {}\ntoken: {token}",
                String::from_utf8_lossy(header),
                String::from_utf8_lossy(payload)
            );
        }
        if let Ok(v) = &result {
            check_accepted(&token, v, NOW);
            assert_eq!(v.alg.as_str(), alg, "accepted with another algorithm than it was signed with");
        }
    });
}

/// `jwks_parse`: `KeySet::from_jwks` on arbitrary JSON.
pub fn jwks_parse(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let entries = value.get("keys").and_then(Value::as_array).map(Vec::len);
    match KeySet::from_jwks(&value) {
        Ok((set, warnings)) => {
            let n = entries.expect("a key set was accepted without a keys array");
            assert!(!set.is_empty() && set.len() <= n && set.len() <= 100);
            assert_eq!(set.len() + warnings.iter().filter(|w| w.contains("skipped")).count(), n);
            let _ = format!("{set:?}");
            // No key may be HMAC-capable: a `HS256` token with any kid must be refused.
            let verifier = IssuerVerifier::new(ISS.into(), vec!["a".into()], Algorithm::all().to_vec(), 0, 65_536, set);
            let header = b64(br#"{"alg":"HS256"}"#);
            let token = format!("{header}.{}.{}", b64(br#"{"iss":"https://idp.fuzz.test","aud":"a","exp":1900000000}"#), b64([0u8; 32]));
            assert!(verifier.verify(&token, NOW).is_err());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The demo plugin configuration from `envoy/demo.yaml`, as JSON.
pub fn demo_config() -> &'static str {
    static CONFIG: OnceLock<String> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let yaml = include_str!("../../envoy/demo.yaml");
        source::single_plugin_json("envoy/demo.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn check_gateway(gateway: &Gateway) {
    assert!(!gateway.issuers.is_empty());
    assert!(gateway.api_prefix.starts_with('/') && !gateway.api_prefix.ends_with('/') || gateway.api_prefix == "/");
    assert!((1024..=16 * 1024 * 1024).contains(&gateway.max_body_bytes));
    assert!(!gateway.token_headers.is_empty());
    assert!(gateway.broker.path.starts_with('/'));
    assert!(gateway.broker.credential.expose().len() >= 16);
    // The Debug output must not depend on the credential (a plain `contains` check gives
    // false alarms when another field, e.g. the authority, holds the same text).
    let other = lookergate::config::BrokerSettings {
        credential: "a-different-credential-0123456789".into(),
        ..gateway.broker.clone()
    };
    assert_eq!(format!("{:?}", gateway.broker), format!("{:?}", other), "broker credential in Debug output");
}

/// Values the structured mode splices into a valid configuration.
const PALETTE: &[&str] = &[
    "null", "true", "false", "0", "-1", "1", "255", "256", "1023", "1024", "65536", "65537", "16777216", "16777217",
    "4294967295", "4294967296", "18446744073709551615", "18446744073709551616", "1e308", "-0.0", "0.5", "NaN", "\"\"",
    "\" \"", "\"0s\"", "\"30s\"", "\"300s\"", "\"301s\"", "\"5m\"", "\"1h\"", "\"7d\"", "\"-1s\"", "\"99999999999999999999d\"",
    "\"213503982334601d\"", "\"49ms\"", "\"50ms\"", "\"60001ms\"", "\"/\"", "\"//\"", "\"/**\"", "\"/*\"", "\"**\"", "\"/a/**/b\"",
    "\"/api/4.0/**\"", "\"GET\"", "\"get\"", "\"G ET\"", "\"RS256\"", "\"HS256\"", "\"none\"", "\"EdDSA\"", "\"analyst\"",
    "\"a.b\"", "\".\"", "\"..\"", "\"email\"", "\"authorization\"", "\"cookie\"", "\"x-lookergate-x\"", "\"Bearer \"",
    "\"http://\"", "\"https://a@b/\"", "\"https://idp/jwks\"", "\"demo-gateway-secret\"", "\"\\u0000\"", "\"é\"", "[]", "{}",
    "[\"\"]", "[null]", "{\"keys\":[]}", "{\"role\":\"r\"}", "{\"user\":{}}", "{\"user\":{\"claim\":\"\"}}", "[\"RS256\",\"RS256\"]",
    "{\"per_second\":1,\"burst\":1}", "{\"per_second\":0,\"burst\":0}", "{\"max_limit\":0}", "{\"max_limit\":-9223372036854775808}",
    "{\"claim\":\"groups\",\"contains\":\"x\"}", "{\"claim\":\"a..b\",\"exists\":true}", "{\"claim\":\"x\",\"equals\":1,\"exists\":true}",
];

/// Every path into `v`, as keys / indices.
fn paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                here.push(Value::String(k.clone()));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                here.push(json!(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'v>(v: &'v mut Value, path: &[Value]) -> Option<&'v mut Value> {
    let mut node = v;
    for step in path {
        node = match step {
            Value::String(k) => node.as_object_mut()?.get_mut(k)?,
            Value::Number(i) => node.as_array_mut()?.get_mut(i.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Structured mutations of the demo configuration, driven by the fuzzer's bytes.
pub fn mutate_config(bytes: &[u8]) -> Vec<u8> {
    let mut config: Value = serde_json::from_str(demo_config()).expect("demo config is JSON");
    let mut u = Unstructured::new(bytes);
    let rounds = u.int_in_range(1..=4u8).unwrap_or(1);
    for _ in 0..rounds {
        let mut all = Vec::new();
        paths(&config, &mut Vec::new(), &mut all);
        let Ok(path) = u.choose(&all).cloned() else { break };
        let op = u.int_in_range(0..=6u8).unwrap_or(0);
        let palette = u.choose(PALETTE).ok().and_then(|p| serde_json::from_str::<Value>(p).ok());
        let text: String = u.arbitrary().unwrap_or_default();
        let copy = u.choose(&all).ok().and_then(|p| node_mut(&mut config.clone(), p).map(|n| n.clone()));
        let Some(node) = node_mut(&mut config, &path) else { continue };
        match op {
            0 => *node = palette.unwrap_or(Value::Null),
            1 => *node = Value::String(text),
            2 => *node = copy.unwrap_or(Value::Null),
            3 => {
                // Remove this node from its parent.
                if let Some((last, parent)) = path.split_last() {
                    if let Some(parent) = node_mut(&mut config, parent) {
                        match (parent, last) {
                            (Value::Object(map), Value::String(k)) => {
                                map.remove(k);
                            }
                            (Value::Array(items), Value::Number(i)) => {
                                let i = i.as_u64().unwrap_or(0) as usize;
                                if i < items.len() {
                                    items.remove(i);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            4 => {
                if let Value::Object(map) = node {
                    map.insert(text, palette.unwrap_or(Value::Null));
                } else if let Value::Array(items) = node {
                    let dup = items.first().cloned().unwrap_or(Value::Null);
                    items.push(dup);
                }
            }
            5 => {
                if let Value::Array(items) = node {
                    items.push(palette.unwrap_or(Value::Null));
                } else {
                    *node = Value::Array(vec![node.clone()]);
                }
            }
            _ => {
                if let Value::String(s) = node {
                    s.push_str(&text);
                }
            }
        }
    }
    serde_json::to_vec(&config).expect("serializes")
}

/// `config_load`: `Gateway::load` on arbitrary bytes, or (first byte 0xFF) on the demo
/// configuration after structured mutations.
pub fn config_load(data: &[u8]) {
    let bytes = match data.split_first() {
        Some((0xff, rest)) => mutate_config(rest),
        _ => data.to_vec(),
    };
    match Gateway::load(&bytes) {
        Ok(gateway) => check_gateway(&gateway),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

pub fn operation_table() -> &'static OperationTable {
    static TABLE: OnceLock<OperationTable> = OnceLock::new();
    TABLE.get_or_init(|| OperationTable::looker_4_0().expect("embedded table"))
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get"];

/// Properties of a path the gateway accepted.
fn check_normalized(raw: &str, path: &str) {
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}: not absolute");
    assert!(!path.contains("//"), "{raw:?} -> {path:?}: contains //");
    assert!(!path.contains('?') && !path.contains('#') && !path.contains('\\'), "{raw:?} -> {path:?}");
    assert!(path.bytes().all(|b| (0x21..0x7f).contains(&b)), "{raw:?} -> {path:?}: not printable ASCII");
    assert!(path == "/" || !path.ends_with('/'), "{raw:?} -> {path:?}: trailing slash");
    for segment in path.split('/') {
        assert!(segment != "." && segment != "..", "{raw:?} -> {path:?}: dot segment");
    }
    // Every escape left is upper-case and stands for a byte that must stay escaped.
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = path.get(i + 1..i + 3).unwrap_or_else(|| panic!("{raw:?} -> {path:?}: cut escape"));
            let v = u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{raw:?} -> {path:?}: bad escape"));
            assert_eq!(hex, hex.to_ascii_uppercase(), "{raw:?} -> {path:?}: lower-case escape");
            assert!(!(v.is_ascii_alphanumeric() || b"-._~/\\%".contains(&v) || v < 0x20 || v == 0x7f), "{raw:?} -> {path:?}");
        }
    }
    // Decoding once more (as Looker does) must not reveal a dot segment or a slash.
    let once_more = percent_decode(path);
    for segment in once_more.split(|b| *b == b'/') {
        assert!(segment != b"." && segment != b"..", "{raw:?} -> {path:?}: decodes to a dot segment");
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `path_and_operation`: byte 0 picks the method, the rest is `:path`.
pub fn path_and_operation(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else { return };
    let method = METHODS[m as usize % METHODS.len()];
    let Ok(raw) = std::str::from_utf8(rest) else { return };
    let Ok(target) = parse_target(raw) else { return };
    // Fixed finding (regressions/path_and_operation/raw-space-in-path): only URI path
    // characters, and no ';' (`..;` is `..` to servers that strip path parameters).
    assert!(
        target.path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/%".contains(&b)),
        "accepted path {:?} from {raw:?} has a character outside RFC 3986 pchar (or ';')",
        target.path
    );
    check_normalized(raw, &target.path);
    // Normalizing is idempotent: what we forward parses to the same path again.
    let again = parse_target(&target.path).unwrap_or_else(|e| panic!("{raw:?} -> {:?} refused on re-parse: {e:?}", target.path));
    assert_eq!(again.path, target.path, "normalization is not idempotent for {raw:?}");
    let forwarded = strip_access_token(&target).unwrap_or_else(|| target.to_path());
    let reparsed = parse_target(&forwarded).unwrap_or_else(|e| panic!("forwarded {forwarded:?} refused: {e:?}"));
    assert_eq!(reparsed.path, target.path, "forwarded target changes the path: {raw:?}");
    if let Some(q) = reparsed.query {
        for pair in q.split('&') {
            let name = pair.split('=').next().unwrap_or("");
            assert!(
                !name.eq_ignore_ascii_case("access_token") && !name.eq_ignore_ascii_case("access%5ftoken"),
                "access_token survived in {forwarded:?}"
            );
        }
    }
    let table = operation_table();
    let rest = match target.path.strip_prefix(API_PREFIX) {
        Some(r) if r.is_empty() || r.starts_with('/') => r,
        _ => target.path.as_str(),
    };
    match table.resolve(method, rest) {
        Resolution::Found(op) => {
            assert_eq!(op.method, method, "{method} {rest} resolved to {} {}", op.method, op.template);
            let want: Vec<&str> = op.template.split('/').filter(|s| !s.is_empty()).collect();
            let got: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
            assert_eq!(want.len(), got.len(), "{rest} resolved to {}", op.template);
            for (w, g) in want.iter().zip(&got) {
                assert!(w.starts_with('{') || w == g, "{rest} resolved to {}", op.template);
            }
            assert!(table.by_id(&op.operation_id).is_some());
        }
        Resolution::WrongMethod | Resolution::NotFound => {}
    }
}

/// `query_body`: `decision::read_query` for `run_inline_query` (byte 0 splits a URL
/// query string from the body), then a fixed guardrail over the result.
pub fn query_body(data: &[u8]) {
    let (url, body) = match data.split_first() {
        Some((&n, rest)) if usize::from(n) <= rest.len() => rest.split_at(usize::from(n)),
        _ => (&[][..], data),
    };
    let url = String::from_utf8_lossy(url);
    let Ok(facts) = lookergate::decision::read_query(
        "run_inline_query",
        "/api/4.0/queries/run/json",
        Some(&url),
        Some(body),
    ) else {
        return;
    };
    let guard = QueryGuard {
        models: vec!["thelook".into()],
        views: vec!["orders".into()],
        max_limit: Some(5000),
        required_filters: vec!["orders.created_date".into()],
        allow_filter_expression: false,
        allow_filter_config: false,
    };
    if guard.check(&facts).is_ok() {
        let limit = facts.limit.unwrap_or(5000);
        assert!((0..=5000).contains(&limit), "limit {limit} passed the guard");
        assert_eq!(facts.model.as_deref(), Some("thelook"));
        assert_eq!(facts.view.as_deref(), Some("orders"));
        assert!(facts
            .filters
            .iter()
            .any(|(f, v)| f == "orders.created_date" && !v.trim().is_empty()));
        assert!(!facts.filter_expression && !facts.filter_config);
    }
}

/// `wire_records`: byte 0 picks the decoder (shared-data token record, rate-limit
/// bucket, broker answer, host verify_signature result, ECDSA DER), the rest is input.
pub fn wire_records(data: &[u8]) {
    use lookergate::ratelimit::Bucket;
    use lookergate::tokens::CachedToken;
    let Some((&kind, rest)) = data.split_first() else { return };
    match kind % 5 {
        0 => {
            if let Some(t) = CachedToken::decode(rest) {
                assert!(!t.token.is_empty() && t.token.bytes().all(|b| b.is_ascii_graphic()));
                assert_eq!(CachedToken::decode(&t.encode()), Some(t.clone()), "token record does not round-trip");
                let _ = t.usable(NOW * 1000);
                let _ = format!("{t:?}");
            }
        }
        1 => {
            if let Some(b) = Bucket::decode(rest) {
                assert_eq!(Bucket::decode(&b.encode()), Some(b), "bucket record does not round-trip");
                for (per_second, capacity, now) in [(0.001, 1, 0), (5.0, 10, NOW * 1000), (100_000.0, u32::MAX, u64::MAX)] {
                    match b.take(per_second, capacity, now) {
                        Ok(next) => assert!(next.milli_tokens <= u64::from(capacity) * 1000),
                        Err(wait) => assert!(wait > 0, "empty bucket with no wait"),
                    }
                }
            }
        }
        2 => {
            let (status, body) = match rest.split_first() {
                Some((s, body)) => (
                    match s % 8 {
                        0 => None,
                        1 | 2 | 3 => Some(200),
                        4 => Some(403),
                        5 => Some(502),
                        6 => Some(401),
                        _ => Some(u32::from(*s) * 3),
                    },
                    body,
                ),
                None => (Some(200), rest),
            };
            if let Ok(t) = lookergate::broker::parse_token_response(status, body, "rule") {
                assert_eq!(status, Some(200));
                assert!(!t.access_token.is_empty() && t.access_token.len() <= 4096);
                assert!(t.access_token.bytes().all(|b| b.is_ascii_graphic()), "token could split a header");
                assert!(t.expires_in_secs > 0);
                let cached = CachedToken::new(
                    t.access_token.clone(),
                    NOW * 1000,
                    std::time::Duration::from_secs(t.expires_in_secs),
                    std::time::Duration::from_secs(60),
                );
                assert_eq!(CachedToken::decode(&cached.encode()), Some(cached));
            }
        }
        3 => {
            let _ = jwt::decode_verify_result(rest);
        }
        _ => {
            if let Some(der) = jwt::ecdsa_signature_der(rest) {
                assert_eq!(der.first(), Some(&0x30));
            }
        }
    }
}

/// Every target by name, for the regression replay.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("jwt_verify", jwt_verify),
    ("jwt_signed", jwt_signed),
    ("jwks_parse", jwks_parse),
    ("config_load", config_load),
    ("path_and_operation", path_and_operation),
    ("query_body", query_body),
    ("wire_records", wire_records),
];

/// Files under `dir`, sorted (missing dir: none).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    out.sort();
    out
}
