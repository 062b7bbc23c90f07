//! Writes `fixtures/jwks.json` and the seed corpora `seeds/<target>/` from real
//! material: tokens signed now with the fixture keys (a fresh RSA key each run, whose
//! private half is then dropped), the demo IdP key and JWKS, the demo plugin config,
//! and every Looker operation in `proto/operations.tsv`.
//! Run: `cargo run --release --manifest-path fuzz/Cargo.toml --bin gen_seeds`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;
use std::path::Path;

use jwt_simple::prelude::*;
use lookergate_fuzz::*;
use serde_json::{json, Map, Value};

const DEMO_JWKS_JSON: &str = include_str!("../../../envoy/demo/demo-jwks.json");
const DEMO_SIGNING_KEY_PEM: &str = include_str!("../../../envoy/demo/demo-signing-key.pem");
const DEMO_ISSUER: &str = "https://idp.lookergate.demo";

/// The demo IdP key (the PEM file starts with a warning line).
fn demo_signing_key() -> RS256KeyPair {
    let pem = &DEMO_SIGNING_KEY_PEM[DEMO_SIGNING_KEY_PEM.find("-----BEGIN").unwrap()..];
    RS256KeyPair::from_pem(pem).unwrap().with_key_id(KID_DEMO)
}

/// The claims of one seed token (demo-user shaped, valid around `NOW`).
struct TokenSpec {
    iss: String,
    iat: u64,
    exp: u64,
    nbf: Option<u64>,
    extra: Map<String, Value>,
}

impl TokenSpec {
    fn claims(&self) -> JWTClaims<Map<String, Value>> {
        let mut custom = Map::new();
        custom.insert("email".to_owned(), json!("alice@example.com"));
        custom.insert("groups".to_owned(), json!(["analysts"]));
        custom.extend(self.extra.clone());
        let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(0))
            .with_issuer(&self.iss)
            .with_audience("looker-api")
            .with_subject("alice");
        claims.issued_at = Some(Duration::from_secs(self.iat));
        claims.expires_at = Some(Duration::from_secs(self.exp));
        claims.invalid_before = self.nbf.map(Duration::from_secs);
        claims
    }
}

fn mint(key: &RS256KeyPair, spec: &TokenSpec) -> Result<String, jwt_simple::Error> {
    key.sign(spec.claims())
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn spec(extra: Value) -> TokenSpec {
    TokenSpec { iss: ISS.to_owned(), iat: NOW - 60, exp: NOW + 3600, nbf: None, extra: extra.as_object().cloned().unwrap_or_default() }
}

fn payload(extra: Value) -> Value {
    let mut p = json!({"iss": ISS, "aud": "looker-api", "sub": "alice", "email": "alice@example.com",
                       "groups": ["analysts"], "iat": NOW - 60, "exp": NOW + 3600});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = v.clone();
        }
    }
    p
}

fn main() {
    let root = fuzz_dir();
    let seeds = root.join("seeds");
    let _ = fs::remove_dir_all(&seeds);

    // ---- keys ------------------------------------------------------------------
    let rsa = RS256KeyPair::generate(2048).unwrap().with_key_id(KID_RSA);
    let c = rsa.public_key().to_components();
    let es256 = ES256KeyPair::from_bytes(&P256_SCALAR).unwrap().with_key_id(KID_ES256);
    let es384 = ES384KeyPair::from_bytes(&P384_SCALAR).unwrap().with_key_id(KID_ES384);
    let ed_point = signing_keys().ed.pk.to_vec();
    let ec = |point: Vec<u8>, crv: &str, kid: &str, alg: &str| {
        let half = (point.len() - 1) / 2;
        json!({"kty": "EC", "crv": crv, "kid": kid, "alg": alg, "use": "sig",
               "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..])})
    };
    let demo_jwks: Value = serde_json::from_str(DEMO_JWKS_JSON).unwrap();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": KID_RSA, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)},
        demo_jwks["keys"][0].clone(),
        ec(es256.public_key().public_key().to_bytes_uncompressed(), "P-256", KID_ES256, "ES256"),
        ec(es384.public_key().public_key().to_bytes_uncompressed(), "P-384", KID_ES384, "ES384"),
        {"kty": "OKP", "crv": "Ed25519", "kid": KID_ED, "alg": "EdDSA", "use": "sig", "x": b64(&ed_point)},
    ]});
    write(&root.join("fixtures"), "jwks.json", serde_json::to_string_pretty(&jwks).unwrap() + "\n");

    // ---- jwt_verify: tokens signed now ------------------------------------------
    let dir = seeds.join("jwt_verify");
    let demo = demo_signing_key();
    let mut n = 0;
    let mut put = |token: String| {
        n += 1;
        write(&dir, &format!("token-{n:03}"), token);
    };
    let variants = [
        json!({}),
        json!({"aud": ["other", "fuzz-aud"]}),
        json!({"aud": ["other"]}),
        json!({"scope": "read write", "groups": "analysts viewers"}),
        json!({"nested": {"a": [1, 2, {"b": null}]}}),
    ];
    for extra in &variants {
        put(mint(&rsa, &spec(extra.clone())).unwrap());
        put(mint(&demo, &spec(extra.clone())).unwrap());
    }
    let mut expired = spec(json!({}));
    expired.exp = NOW - SKEW - 1;
    put(mint(&rsa, &expired).unwrap());
    let mut future = spec(json!({}));
    future.nbf = Some(NOW + 3600);
    put(mint(&rsa, &future).unwrap());
    let mut other_issuer = spec(json!({}));
    other_issuer.iss = DEMO_ISSUER.to_owned();
    put(mint(&demo, &other_issuer).unwrap());
    let der = rsa.to_der().unwrap();
    let claims = spec(json!({})).claims();
    put(PS256KeyPair::from_der(&der).unwrap().with_key_id(KID_RSA).sign(claims.clone()).unwrap());
    put(RS512KeyPair::from_der(&der).unwrap().with_key_id(KID_RSA).sign(claims.clone()).unwrap());
    put(PS384KeyPair::from_der(&der).unwrap().sign(claims.clone()).unwrap()); // no kid
    put(es384.sign(claims.clone()).unwrap());
    let typ = HeaderOptions { signature_type: Some("at+jwt".into()), content_type: None };
    put(es384.sign_with_options(claims.clone(), &typ).unwrap());
    // Raw headers and payloads for the keys we can sign arbitrary bytes with.
    let raw: &[(bool, Value, Value)] = &[
        (false, json!({"alg": "ES256", "kid": KID_ES256, "typ": "JWT"}), payload(json!({}))),
        (false, json!({"alg": "ES256"}), payload(json!({"exp": (NOW + 3600) as f64 + 0.5}))),
        (false, json!({"alg": "ES256", "kid": KID_ES256, "crit": ["exp"]}), payload(json!({}))),
        (false, json!({"alg": "ES256", "kid": KID_ES256, "jku": "https://evil/jwks", "x5u": "https://evil/x"}), payload(json!({}))),
        (false, json!({"alg": "ES256", "kid": KID_ED}), payload(json!({}))),
        (false, json!({"alg": "ES256", "kid": KID_ES256}), payload(json!({"exp": null}))),
        (false, json!({"alg": "ES256", "kid": KID_ES256}), payload(json!({"iat": NOW + 3600}))),
        (false, json!({"alg": "ES256", "kid": KID_ES256}), payload(json!({"iss": "https://evil"}))),
        (true, json!({"alg": "EdDSA", "kid": KID_ED}), payload(json!({}))),
        (true, json!({"alg": "EdDSA"}), payload(json!({"aud": ["fuzz-aud"], "nbf": NOW - 10}))),
        (true, json!({"alg": "EdDSA", "kid": KID_ED, "typ": "JOSE"}), payload(json!({}))),
    ];
    for (ed, header, body) in raw {
        put(sign_compact(*ed, header.to_string().as_bytes(), body.to_string().as_bytes()));
    }
    // Duplicate claims, as raw JSON text.
    let dup = format!(r#"{{"iss":"{ISS}","aud":"looker-api","exp":{},"exp":{}}}"#, NOW + 3600, NOW - 3600);
    put(sign_compact(true, br#"{"alg":"EdDSA","kid":"fuzz-ed"}"#, dup.as_bytes()));
    // Unsigned shapes: alg none, HS256 with the RSA public key as secret, stripped signature.
    let body = b64(payload(json!({})).to_string());
    put(format!("{}.{body}.", b64(r#"{"alg":"none"}"#)));
    put(format!("{}.{body}.", b64(r#"{"alg":"nOnE","kid":"fuzz-rsa"}"#)));
    let hs = HS256Key::from_bytes(&rsa.public_key().to_der().unwrap()).with_key_id(KID_RSA);
    put(hs.authenticate(claims.clone()).unwrap());
    let good = mint(&rsa, &spec(json!({}))).unwrap();
    put(good.rsplit_once('.').unwrap().0.to_owned() + ".");
    put(format!("{}.{body}.{}", b64(r#"{"alg":"RS256","kid":"../../etc/passwd"}"#), b64([0u8; 256])));
    put(format!("{}.{body}.{}", b64(r#"{"alg":"RS256","kid":"' OR 1=1 --"}"#), b64([0u8; 256])));
    put(format!("{}.{body}.AAAA=", b64(r#"{"alg":"RS256","kid":"fuzz-rsa"}"#)));
    drop(rsa); // the private half never leaves this process

    // ---- jwt_signed: selector, header, 0xFF, payload -----------------------------
    let dir = seeds.join("jwt_signed");
    for (i, (ed, header, body)) in raw.iter().enumerate() {
        let mut bytes = vec![u8::from(*ed)];
        bytes.extend(header.to_string().as_bytes());
        bytes.push(0xff);
        bytes.extend(body.to_string().as_bytes());
        write(&dir, &format!("signed-{i:03}"), bytes);
    }
    for (i, extra) in variants.iter().enumerate() {
        let mut bytes = vec![(i % 2) as u8];
        bytes.extend(payload(extra.clone()).to_string().as_bytes());
        write(&dir, &format!("payload-{i:03}"), bytes);
    }
    let mut dup_bytes = vec![1u8];
    dup_bytes.extend(br#"{"alg":"EdDSA"}"#);
    dup_bytes.push(0xff);
    dup_bytes.extend(dup.as_bytes());
    write(&dir, "duplicate-exp", dup_bytes);

    // ---- jwks_parse ----------------------------------------------------------------
    let dir = seeds.join("jwks_parse");
    write(&dir, "fixture", jwks.to_string());
    write(&dir, "demo", DEMO_JWKS_JSON);
    for (i, key) in jwks["keys"].as_array().unwrap().iter().enumerate() {
        write(&dir, &format!("single-{i}"), json!({"keys": [key]}).to_string());
        let mut private = key.clone();
        private["d"] = json!("AAAA");
        private["key_ops"] = json!(["sign"]);
        write(&dir, &format!("private-{i}"), json!({"keys": [private]}).to_string());
    }
    write(&dir, "oct", r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#);
    write(&dir, "empty", r#"{"keys":[]}"#);
    write(&dir, "dup-kid", json!({"keys": [jwks["keys"][0], jwks["keys"][0]]}).to_string());
    write(&dir, "padded", jwks.to_string().replace("\",\"e\"", "=\",\"e\""));

    // ---- config_load -----------------------------------------------------------------
    let dir = seeds.join("config_load");
    let config = demo_config();
    write(&dir, "demo", config);
    let mut value: Value = serde_json::from_str(config).unwrap();
    // The demo issuer gets its keys by discovery; the seed trusts the fixture keys inline.
    if let Some(issuer) = value["issuers"][0].as_object_mut() {
        issuer.remove("discovery");
        issuer.remove("cluster");
        issuer.remove("jwks_uri");
    }
    value["issuers"][0]["jwks"] = jwks.clone();
    value["issuers"][0]["algorithms"] = json!(["RS256", "PS256", "ES256", "ES384", "EdDSA"]);
    value["issuers"].as_array_mut().unwrap().push(json!({
        "issuer": "https://remote.example", "audiences": ["a"], "jwks_uri": "https://remote.example/jwks",
        "cluster": "idp", "jwks_refresh": "5m", "jwks_max_stale": "1d", "jwks_timeout": "2s",
        "from": {"header": "x-remote-token"}}));
    value["issuers"].as_array_mut().unwrap().push(json!({
        "issuer": "https://disco.example", "audiences": ["a"], "discovery": true, "cluster": "idp"}));
    value["policy"]["rules"].as_array_mut().unwrap().push(json!({
        "name": "guarded", "operations": ["run_inline_query"], "query": {"models": ["thelook"], "max_limit": 500,
        "required_filters": ["orders.created_date"]}, "rate_limit": {"per_second": 2.5, "burst": 5, "db_queries_per_minute": 30},
        "allow": {"role": "analyst"}}));
    value["policy"]["rules"].as_array_mut().unwrap().push(json!({
        "name": "no-sql", "tags": ["SqlQuery"], "statuses": ["beta"], "activity_types": ["db_query"], "deny": true, "shadow": true}));
    write(&dir, "rich", value.to_string());
    let mut structured = vec![0xff];
    structured.extend(b"\x02\x10\x03hello\x00\x07\x01\x05");
    write(&dir, "mutate-a", &structured);
    write(&dir, "mutate-b", [0xff, 0x04, 0x33, 0x00, 0x21, 0x10, 0x20, 0x30, 0x40]);
    let mut min = Map::new();
    min.insert("issuers".into(), value["issuers"].clone());
    min.insert("policy".into(), json!({"rules": []}));
    min.insert("broker".into(), value["broker"].clone());
    write(&dir, "minimal", Value::Object(min).to_string());

    // ---- path_and_operation: every Looker operation ------------------------------------
    let dir = seeds.join("path_and_operation");
    const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get"];
    let tsv = include_str!("../../../proto/operations.tsv");
    for (i, line) in tsv.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        let m = METHODS.iter().position(|m| *m == cols[0]).unwrap_or(0) as u8;
        let path: Vec<String> = cols[1]
            .split('/')
            .map(|s| if s.starts_with('{') { if i % 2 == 0 { "42".into() } else { "abc%20def".into() } } else { s.to_owned() })
            .collect();
        let mut bytes = vec![m];
        bytes.extend(format!("/api/4.0{}", path.join("/")).as_bytes());
        if i % 5 == 0 {
            bytes.extend(b"?fields=id,name&access_token=abc&limit=10");
        }
        write(&dir, &format!("op-{i:03}"), bytes);
    }
    let tricky = [
        "/api/4.0/user/", "/api/4.0//user", "/api/4.0/./user", "/api/4.0/%2e%2E/4.0/user", "/api/4.0/users/%2F1",
        "/api/4.0/users/%41%7e%25", "/api/4.0/dashboards/1?access%5Ftoken=x&&ACCESS_TOKEN", "/api/4.0/looks/1#frag",
        "/api/4.0\\user", "/%", "/%4", "/%zz", "/api/4.0/queries/run/json", "/", "//", "/api/3.1/user", "/api/4.0",
        "/api/4.0/queries/models/m/views/v/run/json?limit=10&f[orders.id]=1",
    ];
    for (i, t) in tricky.iter().enumerate() {
        let mut bytes = vec![(i % 2) as u8];
        bytes.extend(t.as_bytes());
        write(&dir, &format!("tricky-{i:02}"), bytes);
    }

    // ---- query_body ---------------------------------------------------------------------
    let dir = seeds.join("query_body");
    let bodies = [
        json!({"model": "thelook", "view": "orders", "fields": ["orders.id"], "limit": "500",
               "filters": {"orders.created_date": "7 days"}}),
        json!({"model": "thelook", "view": "orders", "limit": 100, "filters": {"orders.created_date": "today", "x": "1"}}),
        json!({"model": "thelook", "view": "orders", "limit": "-1"}),
        json!({"model": "thelook", "view": "orders", "limit": " 5000 "}),
        json!({"model": "thelook", "view": "orders", "limit": null, "filters": null}),
        json!({"model": 1, "view": ["orders"], "limit": 1.5}),
        json!({"model": "thelook", "view": "orders", "limit": "9223372036854775807"}),
        json!([]),
    ];
    for (i, b) in bodies.iter().enumerate() {
        write(&dir, &format!("body-{i}"), b.to_string());
    }
    write(&dir, "dup-keys", r#"{"model":"thelook","view":"orders","limit":"10","limit":"100000","filters":{"orders.created_date":"1"}}"#);

    // ---- wire_records -----------------------------------------------------------------------
    let dir = seeds.join("wire_records");
    let recs: &[(u8, &[u8])] = &[
        (0, b"v1 1800000060000 abcdefTOKEN123"),
        (0, b"v1 18446744073709551615 t"),
        (0, b"v2 1 t"),
        (1, b"1500 42"),
        (1, b"18446744073709551615 0"),
        (2, b"\x01{\"access_token\":\"abc123\",\"token_type\":\"token\",\"expires_in\":3540}"),
        (2, b"\x04{\"error\":\"no_looker_user\"}"),
        (2, b"\x05{\"error\":\"bad_credentials\"}"),
        (2, b"\x01{\"access_token\":\"a b\",\"expires_in\":1}"),
        (2, b"\x01{\"access_token\":\"abc\",\"expires_in\":18446744073709551615}"),
        (3, b"\x08\x01"),
        (3, b"\x08\x00\x12\x05error"),
        (4, &[0u8; 64]),
        (4, &[0xffu8; 96]),
    ];
    for (i, (kind, bytes)) in recs.iter().enumerate() {
        let mut b = vec![*kind];
        b.extend_from_slice(bytes);
        write(&dir, &format!("record-{i:02}"), b);
    }
    println!("wrote fixtures/jwks.json and seeds/ under {}", root.display());
}
