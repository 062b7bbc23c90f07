//! `lookergate idp`: a small OIDC issuer for the demo and the tests. It serves discovery
//! and its JWKS, mints RS256 tokens for the demo users, rotates its signing key on
//! request, and can be told to fail, so the filter's remote-key path (discovery, refresh,
//! unknown-kid refetch, last good keys) is exercised for real. Demo only: no login.
//!
//! - `GET /.well-known/openid-configuration` -> `{issuer, jwks_uri, token_endpoint, ...}`
//! - `GET /jwks` -> the current key, and the previous one while it is kept
//! - `POST /token` `{"user": "alice", "ttl": 600, "claims": {..}, "kid": ".."}` -> a JWT
//! - `POST /rotate[?keep_old=false]` -> a new key with a new kid (old one kept by default)
//! - `POST /__idp/fail` `{"mode": "500" | "garbage" | "ok"}` -> discovery and JWKS fail
//! - `POST /__idp/jwks_padding` `{"extra_keys": 19, "x5c_bytes": 2500}` -> a JWKS as large
//!   as a real tenant's (more keys, `x5c` certificates); zero and zero undo it
//! - `GET /__idp/stats` -> fetch counts and published kids; `GET /healthz`
//! - with `--app-dir DIR`: DIR's files under `/app/` (the demo web app, `app_files`)

use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jwt_simple::prelude::RS256KeyPair;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::demo::{jwk, mint, unix_now, TokenSpec, DEFAULT_TTL_SECS, DEMO_AUDIENCE, DEMO_ISSUER};

/// Longest token lifetime `/token` grants: a week.
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// RSA size of keys made by `/rotate`.
const ROTATED_KEY_BITS: usize = 2048;
/// Bounds of `/__idp/jwks_padding`: enough for a JWKS well past any filter limit, not
/// enough to exhaust memory by a typo.
const MAX_PADDING_KEYS: usize = 500;
const MAX_X5C_BYTES: usize = 64 * 1024;

/// How discovery and JWKS answer (`/__idp/fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Ok,
    /// HTTP 500.
    Status500,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
}

impl FailMode {
    fn name(self) -> &'static str {
        match self {
            FailMode::Ok => "ok",
            FailMode::Status500 => "500",
            FailMode::Garbage => "garbage",
        }
    }
}

struct SigningKey {
    kid: String,
    key: RS256KeyPair,
}

struct Keys {
    current: SigningKey,
    /// Still published (and usable with `"kid"`) after a rotation that kept it.
    previous: Option<SigningKey>,
    fail: FailMode,
    discovery_requests: u64,
    jwks_requests: u64,
    tokens_issued: u64,
    rotations: u64,
    padding: JwksPadding,
}

/// What `/__idp/jwks_padding` adds to the published JWKS, as real tenants' sets have it
/// (Entra ID: 8-10 RSA keys, each with its certificate in `x5c`, 15-25 KB).
#[derive(Debug, Default)]
struct JwksPadding {
    /// Published before the signing keys, which thus come last in a large document.
    extra_keys: Vec<Value>,
    /// Length of the `x5c` certificate given to every published key (0: none).
    x5c_bytes: usize,
}

/// The IdP: its issuer, audience and keys. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Idp {
    issuer: Arc<str>,
    audience: Arc<str>,
    keys: Arc<Mutex<Keys>>,
}

impl Idp {
    /// An IdP signing with `key` (kid `kid`) for `issuer`, tokens for `audience`.
    pub fn new(issuer: &str, audience: &str, key: RS256KeyPair, kid: &str) -> Idp {
        let key = key.with_key_id(kid);
        Idp {
            issuer: issuer.trim_end_matches('/').into(),
            audience: audience.into(),
            keys: Arc::new(Mutex::new(Keys {
                current: SigningKey {
                    kid: kid.to_owned(),
                    key,
                },
                previous: None,
                fail: FailMode::Ok,
                discovery_requests: 0,
                jwks_requests: 0,
                tokens_issued: 0,
                rotations: 0,
                padding: JwksPadding::default(),
            })),
        }
    }

    /// The demo IdP of DESIGN.md: issuer `https://idp.lookergate.demo`, the committed
    /// demo key (kid `demo-2026`), so `make token` tokens verify against it.
    pub fn demo() -> Result<Idp, crate::demo::TokenError> {
        let key = crate::demo::demo_signing_key()?;
        Ok(Idp::new(
            DEMO_ISSUER,
            DEMO_AUDIENCE,
            key,
            crate::demo::DEMO_KID,
        ))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    // A poisoned lock only means a handler panicked mid-update; the keys are still whole.
    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The published JWKS: the padding keys (if any), then the current key, then the
    /// previous one.
    pub fn jwks(&self) -> Value {
        let keys = self.keys();
        let x5c_bytes = keys.padding.x5c_bytes;
        let mut published = keys.padding.extra_keys.clone();
        let signing = std::iter::once(&keys.current).chain(keys.previous.as_ref());
        for key in signing {
            let mut entry = jwk(&key.key, &key.kid);
            if x5c_bytes > 0 {
                add_certificate(&mut entry, &key.kid, x5c_bytes);
            }
            published.push(entry);
        }
        json!({ "keys": published })
    }

    /// Publishes `extra_keys` more RSA keys and gives every key an `x5c` certificate of
    /// `x5c_bytes` base64 characters (0 and 0: the plain JWKS again). Signing is unchanged.
    pub fn pad_jwks(&self, extra_keys: usize, x5c_bytes: usize) {
        let salt = unix_now();
        let extra_keys = (0..extra_keys)
            .map(|i| {
                let kid = format!("padding-{salt}-{i}");
                let mut entry = filler_rsa_jwk(&kid);
                if x5c_bytes > 0 {
                    add_certificate(&mut entry, &kid, x5c_bytes);
                }
                entry
            })
            .collect();
        self.keys().padding = JwksPadding {
            extra_keys,
            x5c_bytes,
        };
    }

    /// Installs a new current key; the old one stays published when `keep_old`.
    pub fn rotate_to(&self, key: RS256KeyPair, kid: &str, keep_old: bool) {
        let mut keys = self.keys();
        let new = SigningKey {
            kid: kid.to_owned(),
            key: key.with_key_id(kid),
        };
        let old = std::mem::replace(&mut keys.current, new);
        keys.previous = keep_old.then_some(old);
        keys.rotations += 1;
    }
}

/// The router; `serve` runs it on a listener.
pub fn app(idp: Idp) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/rotate", post(rotate))
        .route("/__idp/fail", get(fail_mode).post(set_fail_mode))
        .route("/__idp/jwks_padding", post(set_jwks_padding))
        .route("/__idp/stats", get(stats))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(idp)
}

pub async fn serve(listener: tokio::net::TcpListener, idp: Idp) -> std::io::Result<()> {
    serve_with_app(listener, idp, None).await
}

/// [`serve`], plus the demo web app's files under `/app/` when `app_dir` is given (the
/// page gets its users' tokens from `POST /token`, same origin).
pub async fn serve_with_app(
    listener: tokio::net::TcpListener,
    idp: Idp,
    app_dir: Option<crate::app_files::AppDir>,
) -> std::io::Result<()> {
    let mut router = app(idp);
    if let Some(dir) = app_dir {
        router = router.merge(crate::app_files::routes(dir));
    }
    axum::serve(listener, router).await
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// The answer of discovery and JWKS under the current fail mode.
fn published(fail: FailMode, document: impl FnOnce() -> Value) -> Response {
    match fail {
        FailMode::Ok => Json(document()).into_response(),
        FailMode::Status500 => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected_failure",
            "failing on purpose (/__idp/fail)",
        ),
        FailMode::Garbage => (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"keys\": [{\"kty\": \"RSA\", <garbage",
        )
            .into_response(),
    }
}

async fn discovery(State(idp): State<Idp>) -> Response {
    let fail = {
        let mut keys = idp.keys();
        keys.discovery_requests += 1;
        keys.fail
    };
    let issuer = idp.issuer.to_string();
    published(fail, || {
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "token_endpoint": format!("{issuer}/token"),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    })
}

async fn jwks(State(idp): State<Idp>) -> Response {
    let fail = {
        let mut keys = idp.keys();
        keys.jwks_requests += 1;
        keys.fail
    };
    published(fail, || idp.jwks())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    #[serde(default)]
    ttl: Option<u64>,
    /// Extra claims merged into the token (e.g. `{"contractor": true}`).
    #[serde(default)]
    claims: Map<String, Value>,
    /// Sign with this published key instead of the current one.
    #[serde(default)]
    kid: Option<String>,
}

async fn token(
    State(idp): State<Idp>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let ttl = request.ttl.unwrap_or(DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("ttl must be between 1 and {MAX_TTL_SECS} seconds"),
        );
    }
    let mut spec = match TokenSpec::for_demo_user(&request.user, ttl) {
        Ok(spec) => spec,
        Err(e) => return error(StatusCode::BAD_REQUEST, "unknown_user", e.to_string()),
    };
    spec.iss = idp.issuer.to_string();
    spec.aud = idp.audience.to_string();
    // The user's own claims (a demo user's `region`), then the request's, which win.
    spec.extra.extend(request.claims);
    let mut keys = idp.keys();
    let signer = match request.kid.as_deref() {
        None => &keys.current,
        Some(kid) if kid == keys.current.kid => &keys.current,
        Some(kid) => match keys.previous.as_ref().filter(|p| p.kid == kid) {
            Some(previous) => previous,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "unknown_kid",
                    format!("{kid:?} is not a published key"),
                )
            }
        },
    };
    let kid = signer.kid.clone();
    match mint(&signer.key, &spec) {
        Ok(jwt) => {
            keys.tokens_issued += 1;
            Json(
                json!({"access_token": jwt, "token_type": "Bearer", "expires_in": ttl, "kid": kid}),
            )
            .into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sign_failed",
            e.to_string(),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct RotateQuery {
    #[serde(default = "keep_old_by_default")]
    keep_old: bool,
}

fn keep_old_by_default() -> bool {
    true
}

async fn rotate(
    State(idp): State<Idp>,
    query: Result<Query<RotateQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(RotateQuery { keep_old }) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    // RSA key generation takes a while: off the async workers.
    let generated = tokio::task::spawn_blocking(|| RS256KeyPair::generate(ROTATED_KEY_BITS)).await;
    let key = match generated {
        Ok(Ok(key)) => key,
        Ok(Err(e)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "keygen_failed",
                e.to_string(),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "keygen_failed",
                e.to_string(),
            )
        }
    };
    let rotation = idp.keys().rotations + 1;
    let kid = format!("idp-{}-{rotation}", unix_now());
    idp.rotate_to(key, &kid, keep_old);
    let published: Vec<Value> = idp
        .jwks()
        .get("keys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(|k| k.get("kid").cloned()).collect())
        .unwrap_or_default();
    Json(json!({"kid": kid, "published": published})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailRequest {
    mode: String,
}

async fn set_fail_mode(
    State(idp): State<Idp>,
    body: Result<Json<FailRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(FailRequest { mode }) = match body {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let fail = match mode.as_str() {
        "ok" => FailMode::Ok,
        "500" => FailMode::Status500,
        "garbage" => FailMode::Garbage,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("mode {other:?} is not \"500\", \"garbage\" or \"ok\""),
            )
        }
    };
    idp.keys().fail = fail;
    Json(json!({"mode": fail.name()})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaddingRequest {
    extra_keys: usize,
    x5c_bytes: usize,
}

/// Answers the size of the JWKS now published: `{"keys": n, "bytes": len}`.
async fn set_jwks_padding(
    State(idp): State<Idp>,
    body: Result<Json<PaddingRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(PaddingRequest {
        extra_keys,
        x5c_bytes,
    }) = match body {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    if extra_keys > MAX_PADDING_KEYS || x5c_bytes > MAX_X5C_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("at most {MAX_PADDING_KEYS} extra keys and {MAX_X5C_BYTES} x5c bytes"),
        );
    }
    idp.pad_jwks(extra_keys, x5c_bytes);
    let jwks = idp.jwks();
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    Json(json!({"keys": keys, "bytes": jwks.to_string().len()})).into_response()
}

/// A JWK shaped like an issuer's other published RSA keys: a 2048-bit modulus of
/// random-looking bytes, e = 65537. Nobody signs with it (the filter only decodes it),
/// and generating 19 real keys in a debug build would take the better part of a minute.
fn filler_rsa_jwk(kid: &str) -> Value {
    let mut modulus = filler_bytes(kid, 256);
    if let Some(first) = modulus.first_mut() {
        *first |= 0x80; // exactly 2048 bits
    }
    if let Some(last) = modulus.last_mut() {
        *last |= 1; // odd, as every RSA modulus is
    }
    json!({
        "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(&modulus), "e": "AQAB",
    })
}

/// Adds `x5c` (one certificate of `x5c_bytes` standard-base64 characters, as Entra ID
/// publishes) and its `x5t` thumbprint to `entry`. The filter never reads `x5c` or `x5t`
/// (src/jwks.rs takes `n` and `e` only: keys come from the configured issuer, not from
/// certificates), so random bytes of a real certificate's size stand in for the DER.
fn add_certificate(entry: &mut Value, kid: &str, x5c_bytes: usize) {
    let der = filler_bytes(&format!("x5c/{kid}"), x5c_bytes / 4 * 3);
    let thumbprint = filler_bytes(&format!("x5t/{kid}"), 20);
    entry["x5c"] = json!([STANDARD.encode(der)]);
    entry["x5t"] = json!(URL_SAFE_NO_PAD.encode(thumbprint));
}

/// `len` random-looking bytes, the same for the same `seed` (splitmix64): a key's filler
/// stays the same from one JWKS fetch to the next.
fn filler_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut state = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn fail_mode(State(idp): State<Idp>) -> Response {
    Json(json!({"mode": idp.keys().fail.name()})).into_response()
}

async fn stats(State(idp): State<Idp>) -> Response {
    let keys = idp.keys();
    let mut kids = vec![keys.current.kid.clone()];
    kids.extend(keys.previous.as_ref().map(|p| p.kid.clone()));
    Json(json!({
        "discovery_requests": keys.discovery_requests,
        "jwks_requests": keys.jwks_requests,
        "tokens_issued": keys.tokens_issued,
        "rotations": keys.rotations,
        "current_kid": keys.current.kid,
        // The signing keys; `/__idp/jwks_padding`'s extra keys are only counted.
        "published_kids": kids,
        "padding_keys": keys.padding.extra_keys.len(),
        "fail_mode": keys.fail.name(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use jwt_simple::prelude::*;
    use tower::ServiceExt;

    struct Reply {
        status: StatusCode,
        text: String,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_str(&self.text)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
        }
    }

    async fn call(idp: &Idp, method: &str, uri: &str, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(v) => {
                request = request.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let response = app(idp.clone())
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Verifies `token` against the JWK in `jwks` that its kid names.
    fn verify(token: &str, jwks: &Value) -> JWTClaims<Map<String, Value>> {
        let kid = Token::decode_metadata(token)
            .unwrap()
            .key_id()
            .unwrap()
            .to_owned();
        let key = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .expect("kid published");
        let b64 = |f: &str| {
            base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                key[f].as_str().unwrap(),
            )
            .unwrap()
        };
        let public = RS256PublicKey::from_components(&b64("n"), &b64("e")).unwrap();
        let opts = VerificationOptions {
            allowed_issuers: Some(HashSet::from([DEMO_ISSUER.to_owned()])),
            allowed_audiences: Some(HashSet::from([DEMO_AUDIENCE.to_owned()])),
            ..Default::default()
        };
        public
            .verify_token::<Map<String, Value>>(token, Some(opts))
            .unwrap()
    }

    #[tokio::test]
    async fn discovery_names_the_issuer_and_its_jwks() {
        let idp = Idp::demo().unwrap();
        let reply = call(&idp, "GET", "/.well-known/openid-configuration", None).await;
        assert_eq!(reply.status, StatusCode::OK);
        let doc = reply.json();
        assert_eq!(doc["issuer"], "https://idp.lookergate.demo");
        assert_eq!(doc["jwks_uri"], "https://idp.lookergate.demo/jwks");
        assert_eq!(doc["token_endpoint"], "https://idp.lookergate.demo/token");
    }

    #[tokio::test]
    async fn jwks_publishes_the_demo_key_by_default() {
        let idp = Idp::demo().unwrap();
        let reply = call(&idp, "GET", "/jwks", None).await;
        assert_eq!(reply.status, StatusCode::OK);
        let committed: Value = serde_json::from_str(crate::DEMO_JWKS_JSON).unwrap();
        assert_eq!(
            reply.json(),
            committed,
            "the dev IdP publishes envoy/demo/demo-jwks.json"
        );
    }

    #[tokio::test]
    async fn token_is_signed_for_a_demo_user_and_verifies_against_the_jwks() {
        let idp = Idp::demo().unwrap();
        let reply = call(
            &idp,
            "POST",
            "/token",
            Some(json!({"user": "alice", "ttl": 600, "claims": {"contractor": true}})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let answer = reply.json();
        assert_eq!(
            (answer["token_type"].as_str(), answer["expires_in"].as_u64()),
            (Some("Bearer"), Some(600))
        );
        assert_eq!(answer["kid"], "demo-2026");
        let jwks = call(&idp, "GET", "/jwks", None).await.json();
        let claims = verify(answer["access_token"].as_str().unwrap(), &jwks);
        assert_eq!(claims.subject.as_deref(), Some("alice"));
        assert_eq!(claims.custom["groups"], json!(["analysts"]));
        assert_eq!(claims.custom["email"], "alice@example.com");
        assert_eq!(claims.custom["contractor"], true);
        let lifetime = claims.expires_at.unwrap().as_secs() - claims.issued_at.unwrap().as_secs();
        assert_eq!(lifetime, 600);
    }

    #[tokio::test]
    async fn token_carries_every_claim_of_the_demo_user_under_the_requested_ones() {
        // The demo web app gets its users' tokens here: whatever claims a demo user has
        // (e.g. `region`, which embed profiles read) must come through, with or without
        // extra claims in the request.
        let idp = Idp::demo().unwrap();
        let jwks = call(&idp, "GET", "/jwks", None).await.json();
        for user in crate::demo::DEMO_USERS {
            let own = TokenSpec::for_demo_user(user.sub, 60)
                .unwrap()
                .claims()
                .custom;
            for extra in [json!({}), json!({"contractor": true})] {
                let body = json!({"user": user.sub, "claims": extra});
                let reply = call(&idp, "POST", "/token", Some(body.clone())).await;
                assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text);
                let claims = verify(reply.json()["access_token"].as_str().unwrap(), &jwks);
                for (name, value) in &own {
                    assert_eq!(claims.custom.get(name), Some(value), "{body}: {name}");
                }
                for (name, value) in extra.as_object().unwrap() {
                    assert_eq!(claims.custom.get(name), Some(value), "{body}: {name}");
                }
            }
        }
    }

    #[tokio::test]
    async fn token_requests_are_checked() {
        let idp = Idp::demo().unwrap();
        let cases = [
            (json!({"user": "mallory"}), "unknown_user"),
            (json!({"user": "alice", "ttl": 0}), "bad_request"),
            (
                json!({"user": "alice", "ttl": MAX_TTL_SECS + 1}),
                "bad_request",
            ),
            (json!({"user": "alice", "kid": "nope"}), "unknown_kid"),
            (json!({"name": "alice"}), "bad_request"),
        ];
        for (body, code) in cases {
            let reply = call(&idp, "POST", "/token", Some(body.clone())).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(reply.json()["error"], code, "{body}: {}", reply.text);
        }
    }

    #[tokio::test]
    async fn rotation_publishes_a_new_kid_keeps_the_old_one_unless_told_not_to() {
        let idp = Idp::demo().unwrap();
        let first = call(&idp, "POST", "/rotate", None).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text);
        let new_kid = first.json()["kid"].as_str().unwrap().to_owned();
        assert_ne!(new_kid, "demo-2026");
        assert_eq!(first.json()["published"], json!([new_kid, "demo-2026"]));

        // New tokens use the new key; the old key can still sign while it is published.
        let jwks = call(&idp, "GET", "/jwks", None).await.json();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        let fresh = call(&idp, "POST", "/token", Some(json!({"user": "bob"})))
            .await
            .json();
        assert_eq!(fresh["kid"], new_kid.as_str());
        verify(fresh["access_token"].as_str().unwrap(), &jwks);
        let old = call(
            &idp,
            "POST",
            "/token",
            Some(json!({"user": "bob", "kid": "demo-2026"})),
        )
        .await
        .json();
        verify(old["access_token"].as_str().unwrap(), &jwks);

        let second = call(&idp, "POST", "/rotate?keep_old=false", None).await;
        let newest = second.json()["kid"].as_str().unwrap().to_owned();
        assert_eq!(second.json()["published"], json!([newest]));
        let jwks = call(&idp, "GET", "/jwks", None).await.json();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [newest.as_str()]);
        assert_eq!(
            call(&idp, "POST", "/rotate?keep_old=maybe", None)
                .await
                .status,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn fail_modes_break_discovery_and_jwks_until_ok() {
        let idp = Idp::demo().unwrap();
        for path in ["/jwks", "/.well-known/openid-configuration"] {
            let set = call(&idp, "POST", "/__idp/fail", Some(json!({"mode": "500"}))).await;
            assert_eq!(set.json()["mode"], "500");
            assert_eq!(
                call(&idp, "GET", path, None).await.status,
                StatusCode::INTERNAL_SERVER_ERROR
            );

            call(
                &idp,
                "POST",
                "/__idp/fail",
                Some(json!({"mode": "garbage"})),
            )
            .await;
            let garbage = call(&idp, "GET", path, None).await;
            assert_eq!(garbage.status, StatusCode::OK);
            assert!(
                serde_json::from_str::<Value>(&garbage.text).is_err(),
                "{}",
                garbage.text
            );

            call(&idp, "POST", "/__idp/fail", Some(json!({"mode": "ok"}))).await;
            let ok = call(&idp, "GET", path, None).await;
            assert_eq!(ok.status, StatusCode::OK);
            ok.json();
        }
        // Tokens are still issued while the keys endpoints fail.
        call(&idp, "POST", "/__idp/fail", Some(json!({"mode": "500"}))).await;
        assert_eq!(
            call(&idp, "POST", "/token", Some(json!({"user": "carol"})))
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            call(&idp, "GET", "/__idp/fail", None).await.json()["mode"],
            "500"
        );
        let bad = call(&idp, "POST", "/__idp/fail", Some(json!({"mode": "404"}))).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn stats_count_fetches_and_name_the_published_kids() {
        let idp = Idp::demo().unwrap();
        for _ in 0..3 {
            call(&idp, "GET", "/jwks", None).await;
        }
        call(&idp, "GET", "/.well-known/openid-configuration", None).await;
        call(&idp, "POST", "/token", Some(json!({"user": "eve"}))).await;
        let stats = call(&idp, "GET", "/__idp/stats", None).await.json();
        assert_eq!(stats["jwks_requests"], 3);
        assert_eq!(stats["discovery_requests"], 1);
        assert_eq!(stats["tokens_issued"], 1);
        assert_eq!(stats["published_kids"], json!(["demo-2026"]));
        assert_eq!(
            call(&idp, "GET", "/healthz", None).await.status,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn padding_publishes_a_large_jwks_that_still_verifies_the_current_key() {
        let idp = Idp::demo().unwrap();
        let set = call(
            &idp,
            "POST",
            "/__idp/jwks_padding",
            Some(json!({"extra_keys": 19, "x5c_bytes": 2500})),
        )
        .await;
        assert_eq!(set.status, StatusCode::OK, "{}", set.text);
        let jwks_reply = call(&idp, "GET", "/jwks", None).await;
        let jwks = jwks_reply.json();
        assert_eq!(set.json()["keys"], 20);
        assert_eq!(set.json()["bytes"], jwks_reply.text.len());
        assert!(
            (55_000..70_000).contains(&jwks_reply.text.len()),
            "{} bytes",
            jwks_reply.text.len()
        );
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.last().unwrap()["kid"], "demo-2026", "signing key last");
        for key in keys {
            let x5c = key["x5c"].as_array().unwrap();
            assert_eq!(x5c.len(), 1, "{key}");
            assert_eq!(x5c[0].as_str().unwrap().len(), 2500);
        }
        // The filter's own decoder takes every key, padding included.
        let (decoded, skipped) = lookergate::jwt::KeySet::from_jwks(&jwks).unwrap();
        assert_eq!((decoded.len(), skipped), (20, Vec::<String>::new()));
        // Tokens are still signed with the current key and verify against the padded set.
        let token = call(&idp, "POST", "/token", Some(json!({"user": "alice"})))
            .await
            .json();
        assert_eq!(token["kid"], "demo-2026");
        verify(token["access_token"].as_str().unwrap(), &jwks);
        // The same document on every fetch.
        assert_eq!(call(&idp, "GET", "/jwks", None).await.text, jwks_reply.text);
        let stats = call(&idp, "GET", "/__idp/stats", None).await.json();
        assert_eq!(stats["padding_keys"], 19);

        let big = call(
            &idp,
            "POST",
            "/__idp/jwks_padding",
            Some(json!({"extra_keys": 39, "x5c_bytes": 6400})),
        )
        .await
        .json();
        assert!(big["bytes"].as_u64().unwrap() > 256 * 1024, "{big}");
        assert_eq!(big["keys"], 40);

        let reset = call(
            &idp,
            "POST",
            "/__idp/jwks_padding",
            Some(json!({"extra_keys": 0, "x5c_bytes": 0})),
        )
        .await;
        assert_eq!(reset.json()["keys"], 1);
        let committed: Value = serde_json::from_str(crate::DEMO_JWKS_JSON).unwrap();
        assert_eq!(call(&idp, "GET", "/jwks", None).await.json(), committed);
        for bad in [
            json!({"extra_keys": MAX_PADDING_KEYS + 1, "x5c_bytes": 0}),
            json!({"extra_keys": 0, "x5c_bytes": MAX_X5C_BYTES + 1}),
            json!({"extra_keys": 1}),
        ] {
            let reply = call(&idp, "POST", "/__idp/jwks_padding", Some(bad.clone())).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[tokio::test]
    async fn another_issuer_is_used_in_discovery_and_tokens() {
        let idp = Idp::new(
            "http://127.0.0.1:9/",
            "aud-x",
            crate::demo::demo_signing_key().unwrap(),
            "k1",
        );
        let doc = call(&idp, "GET", "/.well-known/openid-configuration", None)
            .await
            .json();
        assert_eq!(doc["jwks_uri"], "http://127.0.0.1:9/jwks");
        let token = call(&idp, "POST", "/token", Some(json!({"user": "alice"})))
            .await
            .json();
        let jwt = token["access_token"].as_str().unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                jwt.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (claims["iss"].as_str(), claims["aud"].as_str()),
            (Some("http://127.0.0.1:9"), Some("aud-x"))
        );
        assert_eq!(token["kid"], "k1");
    }
}
