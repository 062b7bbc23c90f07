//! The broker's HTTP API (DESIGN.md "Broker HTTP API"): routing, gateway
//! authentication, request parsing, and the one place errors become replies.

use crate::broker::{Broker, BrokerError, Issued};
use crate::cache::Outcome;
use crate::identity::LookerIdentity;
use crate::log;
use crate::metrics::EmbedLabels;
use crate::metrics::{CodeLabel, ResultLabel};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lookergate_proto::broker::{
    InvalidateRequest, TokenRequest, TokenResponse, INVALIDATE_PATH, TOKEN_PATH,
};
use lookergate_proto::embed::{
    AcquireRequest, GenerateTokensRequest, LogoutRequest, SsoUrlRequest, SsoUrlResponse,
    ACQUIRE_PATH, GENERATE_TOKENS_PATH, LOGOUT_PATH, SSO_URL_PATH,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Shared state of every handler.
pub type AppState = Arc<Broker>;

const MAX_BODY_BYTES: usize = 16 * 1024;
const MAX_AUDIT_FIELD: usize = 256;

pub fn app(state: AppState) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(issue_token))
        .route(INVALIDATE_PATH, post(invalidate_token))
        .route(ACQUIRE_PATH, post(embed_acquire))
        .route(GENERATE_TOKENS_PATH, post(embed_generate_tokens))
        .route(LOGOUT_PATH, post(embed_logout))
        .route(SSO_URL_PATH, post(embed_sso_url))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Checks `Authorization: Bearer <credential>` against every configured gateway
/// credential without short-circuiting, comparing SHA-256 digests in constant time.
fn authenticate(broker: &Broker, headers: &HeaderMap) -> Result<String, BrokerError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or(BrokerError::Unauthorized)?;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let rt = broker.runtime();
    let mut matched: Option<String> = None;
    for c in &rt.config.gateway_credentials {
        if bool::from(c.digest.ct_eq(&digest)) {
            matched = Some(c.fingerprint.clone());
        }
    }
    matched.ok_or(BrokerError::Unauthorized)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BrokerError> {
    serde_json::from_slice(body)
        .map_err(|e| BrokerError::BadRequest(format!("invalid request body: {e}")))
}

fn clip(s: Option<String>) -> Option<String> {
    s.map(|mut s| {
        if s.len() > MAX_AUDIT_FIELD {
            let mut end = MAX_AUDIT_FIELD;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        s
    })
}

async fn issue_token(State(broker): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let mut request_id = None;
    let mut subject = None;
    let result = async {
        let gateway = authenticate(&broker, &headers)?;
        let req: TokenRequest = parse(&body)?;
        request_id = clip(req.request_id);
        subject = clip(req.subject);
        let issued = broker.token(&req.identity).await?;
        // Counted here, not in `Broker::token`, so /readyz probes don't skew the hit rate.
        let cache_metric = match issued.outcome {
            Outcome::Login => &broker.metrics.cache_misses,
            Outcome::Hit | Outcome::Joined | Outcome::Stale => &broker.metrics.cache_hits,
        };
        cache_metric.inc();
        audit(
            &gateway,
            subject.as_deref(),
            request_id.as_deref(),
            &req.identity,
            &issued,
        );
        Ok::<_, BrokerError>(issued)
    }
    .await;
    broker.metrics.observe_token_request(started.elapsed());
    match result {
        Ok(issued) => {
            broker
                .metrics
                .token_requests
                .get_or_create(&ResultLabel { result: "ok" })
                .inc();
            no_store(
                Json(TokenResponse::new(
                    issued.token.access_token.expose(),
                    issued.expires_in(),
                ))
                .into_response(),
            )
        }
        Err(e) => {
            broker
                .metrics
                .token_requests
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
            error_reply(&broker, TOKEN_PATH, request_id.as_deref(), &e)
        }
    }
}

/// The audit trail: who asked for which identity and what they got (by fingerprint only).
fn audit(
    gateway: &str,
    subject: Option<&str>,
    request_id: Option<&str>,
    identity: &LookerIdentity,
    issued: &Issued,
) {
    let cache = match issued.outcome {
        Outcome::Hit => "hit",
        Outcome::Login => "login",
        Outcome::Joined => "joined",
        Outcome::Stale => "stale",
    };
    tracing::info!(
        event = "token_issued",
        audit = true,
        gateway_credential = gateway,
        subject,
        request_id,
        identity = log::json(identity),
        token_fp = issued.token.access_token.fingerprint(),
        expires_in = issued.expires_in(),
        expires_at = log::unix_now_secs() + issued.expires_in(),
        cache,
    );
}

async fn invalidate_token(
    State(broker): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        authenticate(&broker, &headers)?;
        let req: InvalidateRequest = parse(&body)?;
        let dropped = broker.invalidate(&req.identity).await?;
        tracing::info!(
            event = "token_invalidated",
            identity = log::json(&req.identity),
            dropped
        );
        Ok::<_, BrokerError>(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_reply(&broker, INVALIDATE_PATH, None, &e),
    }
}

/// Counts an embed call by endpoint and outcome, and turns its result into the reply.
fn embed_reply(
    broker: &Broker,
    path: &str,
    endpoint: &'static str,
    request_id: Option<&str>,
    result: Result<(&'static str, Response), BrokerError>,
) -> Response {
    let outcome = match &result {
        Ok((outcome, _)) => outcome,
        Err(e) => e.code(),
    };
    broker
        .metrics
        .embed_requests
        .get_or_create(&EmbedLabels { endpoint, outcome })
        .inc();
    match result {
        Ok((_, reply)) => no_store(reply),
        Err(e) => error_reply(broker, path, request_id, &e),
    }
}

async fn embed_acquire(
    State(broker): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request_id = None;
    let result = async {
        let gateway = authenticate(&broker, &headers)?;
        let req: AcquireRequest = parse(&body)?;
        request_id = clip(req.request_id.clone());
        let acquired = broker.embed_acquire(&req).await?;
        // The audit line of issue 15: who, which profile, which embed user, the names of
        // the user attributes (values may be sensitive), the session by fingerprint.
        tracing::info!(
            event = "embed_session_acquired",
            audit = true,
            gateway_credential = gateway,
            issuer = clip(Some(req.principal.issuer.clone())),
            subject = clip(Some(req.principal.subject.clone())),
            profile = clip(Some(req.profile.clone())),
            external_user_id = clip(Some(req.user.external_user_id.clone())),
            user_attributes = log::json(&req.user.user_attributes.keys().collect::<Vec<_>>()),
            permissions = log::json(&req.user.permissions),
            models = log::json(&req.user.models),
            request_id = request_id.as_deref(),
            joined = acquired.joined,
            session_fp = acquired.session_fp,
            session_reference_token_ttl = acquired.tokens.session_reference_token_ttl,
        );
        let outcome = if acquired.joined { "joined" } else { "ok" };
        Ok((outcome, Json(acquired.tokens).into_response()))
    }
    .await;
    embed_reply(
        &broker,
        ACQUIRE_PATH,
        "acquire",
        request_id.as_deref(),
        result,
    )
}

async fn embed_generate_tokens(
    State(broker): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request_id = None;
    let result = async {
        authenticate(&broker, &headers)?;
        let req: GenerateTokensRequest = parse(&body)?;
        request_id = clip(req.request_id.clone());
        let tokens = broker.embed_generate_tokens(&req).await?;
        let outcome = if tokens.session_reference_token_ttl == 0 {
            "ended"
        } else {
            "ok"
        };
        Ok((outcome, Json(tokens).into_response()))
    }
    .await;
    embed_reply(
        &broker,
        GENERATE_TOKENS_PATH,
        "generate_tokens",
        request_id.as_deref(),
        result,
    )
}

async fn embed_logout(State(broker): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let mut request_id = None;
    let result = async {
        authenticate(&broker, &headers)?;
        let req: LogoutRequest = parse(&body)?;
        request_id = clip(req.request_id.clone());
        broker.embed_logout(&req).await?;
        tracing::info!(
            event = "embed_logout",
            subject = clip(Some(req.principal.subject.clone())),
            profile = clip(Some(req.profile.clone())),
            request_id = request_id.as_deref(),
        );
        Ok(("ok", StatusCode::NO_CONTENT.into_response()))
    }
    .await;
    embed_reply(
        &broker,
        LOGOUT_PATH,
        "logout",
        request_id.as_deref(),
        result,
    )
}

async fn embed_sso_url(
    State(broker): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request_id = None;
    let result = async {
        let gateway = authenticate(&broker, &headers)?;
        let req: SsoUrlRequest = parse(&body)?;
        request_id = clip(req.request_id.clone());
        let url = broker.embed_sso_url(&req)?;
        tracing::info!(
            event = "embed_sso_url_signed",
            audit = true,
            gateway_credential = gateway,
            issuer = clip(Some(req.principal.issuer.clone())),
            subject = clip(Some(req.principal.subject.clone())),
            profile = clip(Some(req.profile.clone())),
            external_user_id = clip(Some(req.user.external_user_id.clone())),
            user_attributes = log::json(&req.user.user_attributes.keys().collect::<Vec<_>>()),
            request_id = request_id.as_deref(),
            url_fp = crate::secret::fingerprint(url.as_bytes()),
        );
        Ok(("ok", Json(SsoUrlResponse { url }).into_response()))
    }
    .await;
    embed_reply(
        &broker,
        SSO_URL_PATH,
        "sso_url",
        request_id.as_deref(),
        result,
    )
}

/// The one mapping from [`BrokerError`] to a reply; also logs and counts it.
fn error_reply(broker: &Broker, path: &str, request_id: Option<&str>, e: &BrokerError) -> Response {
    broker
        .metrics
        .errors
        .get_or_create(&CodeLabel { code: e.code() })
        .inc();
    tracing::warn!(
        event = "request_failed",
        path,
        request_id,
        error = e.code(),
        message = %e
    );
    let mut resp = (e.status(), Json(e.response())).into_response();
    if matches!(e, BrokerError::Unauthorized) {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"lookergate-broker\""),
        );
    }
    no_store(resp)
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn healthz() -> Response {
    Json(json!({"status": "ok", "version": crate::VERSION})).into_response()
}

/// Probes (Kubernetes, Envoy health checks) call this without credentials and get the
/// status alone: role names and Looker's errors go only to a gateway credential (and the log).
async fn readyz(State(broker): State<AppState>, headers: HeaderMap) -> Response {
    let authenticated = authenticate(&broker, &headers).is_ok();
    let readiness = broker.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if authenticated {
        readiness.details()
    } else {
        json!({"status": readiness.status()})
    };
    no_store((status, Json(body)).into_response())
}

async fn metrics(State(broker): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        broker.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    //! Router-level tests (tower `oneshot`) for everything decided before Looker is called.
    use super::*;
    use crate::config::BrokerConfig;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// Demo config whose Looker is an unroutable address; these tests never reach it.
    fn test_app() -> Router {
        let text = crate::config::DEMO_CONFIG
            .replace("http://127.0.0.1:10080", "http://127.0.0.1:9")
            .replace(
                "gateway_credentials = [\"demo-gateway-secret\"]",
                "gateway_credentials = [\"demo-gateway-secret\", \"second-gateway-secret\"]",
            );
        let state = crate::state(BrokerConfig::parse(&text).unwrap(), None);
        app(state.unwrap())
    }

    async fn call(
        app: Router,
        auth: Option<&str>,
        path: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::post(path).header("content-type", "application/json");
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let Ok(req) = req.body(Body::from(body.to_string())) else {
            return (StatusCode::IM_A_TEAPOT, json!(null));
        };
        let Ok(resp) = app.oneshot(req).await;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(json!(null)),
        )
    }

    const ROLE: &str =
        r#"{"identity": {"kind": "role", "name": "nope"}, "subject": "alice", "request_id": "r1"}"#;

    #[tokio::test]
    async fn gateway_credential_is_checked_before_anything_else() {
        let table = [
            (None, "{", StatusCode::UNAUTHORIZED, "unauthorized"),
            (
                Some("Bearer wrong-gateway-secret"),
                ROLE,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                Some("Basic demo-gateway-secret"),
                ROLE,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                Some("Bearer demo-gateway-secre"),
                ROLE,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                Some("Bearer demo-gateway-secret"),
                ROLE,
                StatusCode::NOT_FOUND,
                "unknown_role",
            ),
            (
                Some("bearer second-gateway-secret"),
                ROLE,
                StatusCode::NOT_FOUND,
                "unknown_role",
            ),
        ];
        for (auth, body, status, code) in table {
            let (got, json) = call(test_app(), auth, "/v1/token", body).await;
            assert_eq!(
                (got, json["error"].as_str()),
                (status, Some(code)),
                "{auth:?}: {json}"
            );
            assert!(json["message"].is_string());
        }
    }

    #[tokio::test]
    async fn malformed_requests_are_400_bad_request() {
        let bodies = [
            "",
            "not json",
            r#"{"subject": "alice"}"#,
            r#"{"identity": {"kind": "group", "name": "x"}}"#,
            r#"{"identity": {"kind": "role", "name": "../admin"}}"#,
            r#"{"identity": {"kind": "user", "credential_type": "email", "credential_id": ""}}"#,
            r#"{"identity": {"kind": "user", "credential_type": "fax", "credential_id": "1"}}"#,
        ];
        for body in bodies {
            let (status, json) = call(
                test_app(),
                Some("Bearer demo-gateway-secret"),
                "/v1/token",
                body,
            )
            .await;
            assert_eq!(
                (status, json["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("bad_request")),
                "{body}: {json}"
            );
        }
    }

    #[tokio::test]
    async fn invalidate_needs_the_gateway_credential_and_answers_204() {
        let body = r#"{"identity": {"kind": "role", "name": "analyst"}}"#;
        let (status, _) = call(test_app(), None, "/v1/token/invalidate", body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(
            test_app(),
            Some("Bearer demo-gateway-secret"),
            "/v1/token/invalidate",
            body,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }

    async fn readyz(app: Router, auth: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get("/readyz");
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let Ok(req) = req.body(Body::empty()) else {
            return (StatusCode::IM_A_TEAPOT, String::new());
        };
        let Ok(resp) = app.oneshot(req).await;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readyz_shows_roles_and_looker_errors_only_to_a_gateway() {
        // Looker is unreachable in test_app: every check fails with an error to leak.
        let app = test_app();
        for auth in [None, Some("Bearer wrong-gateway-secret")] {
            let (status, body) = readyz(app.clone(), auth).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{auth:?}: {body}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&body).ok(),
                Some(json!({"status": "not_ready"})),
                "{auth:?}: {body}"
            );
            for leak in ["analyst", "viewer", "sudo", "role", "looker", "error"] {
                assert!(!body.to_lowercase().contains(leak), "{leak}: {body}");
            }
        }

        let (status, body) = readyz(app, Some("Bearer second-gateway-secret")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let details: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(details["status"], "not_ready", "{body}");
        for check in ["role:analyst", "role:viewer", "sudo"] {
            assert_eq!(
                details["checks"][check]["error"], "looker_unavailable",
                "{body}"
            );
            assert!(details["checks"][check]["message"].is_string(), "{body}");
        }
        assert!(!body.contains("-secret"), "{body}");
    }

    #[tokio::test]
    async fn healthz_answers_and_metrics_count_errors_by_code() {
        let app = test_app();
        let Ok(req) = Request::get("/healthz").body(Body::empty()) else {
            return;
        };
        let Ok(resp) = app.clone().oneshot(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let health = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let health: serde_json::Value = serde_json::from_slice(&health).unwrap_or_default();
        assert_eq!(
            health,
            json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
        );
        let _ = call(
            app.clone(),
            Some("Bearer nope-nope-nope-nope"),
            "/v1/token",
            ROLE,
        )
        .await;
        let Ok(req) = Request::get("/metrics").body(Body::empty()) else {
            return;
        };
        let Ok(resp) = app.oneshot(req).await;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("lookergate_broker_errors_total{code=\"unauthorized\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lookergate_broker_looker_login_duration_seconds histogram"),
            "{text}"
        );
    }

    fn embed_body(subject: &str, extra: serde_json::Value) -> String {
        let mut body = json!({
            "principal": {"issuer": "https://idp.lookergate.demo", "subject": subject},
            "profile": "customer",
            "user": {
                "external_user_id": format!("https://idp.lookergate.demo|{subject}"),
                "permissions": ["access_data", "see_user_dashboards"],
                "models": ["thelook"],
                "user_attributes": {"region": "west"},
                "session_length": 3600
            },
            "request_id": "r1"
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body.to_string()
    }

    /// The demo config without its `[embed]` section.
    fn app_without_embed() -> Router {
        let text =
            crate::config::DEMO_CONFIG.replace("http://127.0.0.1:10080", "http://127.0.0.1:9");
        let start = text.find("[embed]").unwrap();
        let end = start + text[start..].find("[sudo]").unwrap();
        let text = format!("{}{}", &text[..start], &text[end..]);
        let config = BrokerConfig::parse(&text).unwrap();
        assert!(config.embed.is_none());
        app(crate::state(config, None).unwrap())
    }

    #[tokio::test]
    async fn embed_endpoints_answer_501_without_embed_config_and_401_without_credential() {
        let tokens = json!({"api_token": "a", "navigation_token": "n"});
        let target = json!({"target_url": "/embed/dashboards/1"});
        let table = [
            ("/v1/embed/acquire", embed_body("alice", json!({}))),
            ("/v1/embed/generate_tokens", embed_body("alice", tokens)),
            ("/v1/embed/logout", embed_body("alice", json!({}))),
            ("/v1/embed/sso_url", embed_body("alice", target)),
        ];
        for (path, body) in &table {
            let (status, json) = call(
                app_without_embed(),
                Some("Bearer demo-gateway-secret"),
                path,
                body,
            )
            .await;
            assert_eq!(
                (status, json["error"].as_str()),
                (StatusCode::NOT_IMPLEMENTED, Some("embed_disabled")),
                "{path}: {json}"
            );
            let (status, json) = call(test_app(), None, path, body).await;
            assert_eq!(
                (status, json["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
                "{path}: {json}"
            );
            let (status, json) =
                call(test_app(), Some("Bearer demo-gateway-secret"), path, "{}").await;
            assert_eq!(
                (status, json["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("bad_request")),
                "{path}: {json}"
            );
        }
    }

    #[tokio::test]
    async fn refresh_and_logout_without_a_session_are_404_no_embed_session() {
        let tokens = json!({"api_token": "a", "navigation_token": "n"});
        for (path, body) in [
            ("/v1/embed/generate_tokens", embed_body("alice", tokens)),
            ("/v1/embed/logout", embed_body("alice", json!({}))),
        ] {
            // Looker is unreachable in test_app: the broker answers before calling it.
            let (status, json) =
                call(test_app(), Some("Bearer demo-gateway-secret"), path, &body).await;
            assert_eq!(
                (status, json["error"].as_str()),
                (StatusCode::NOT_FOUND, Some("no_embed_session")),
                "{path}: {json}"
            );
        }
    }

    #[tokio::test]
    async fn sso_urls_are_only_for_embed_pages_and_only_with_a_secret() {
        for target in [
            "/admin",
            "https://evil.example/embed/dashboards/1",
            "/embed/../admin",
        ] {
            let body = embed_body("alice", json!({"target_url": target}));
            let (status, json) = call(
                test_app(),
                Some("Bearer demo-gateway-secret"),
                "/v1/embed/sso_url",
                &body,
            )
            .await;
            assert_eq!(
                (status, json["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("bad_request")),
                "{target}: {json}"
            );
        }
        let body = embed_body("alice", json!({"target_url": "/embed/dashboards/1"}));
        let (status, json) = call(
            test_app(),
            Some("Bearer demo-gateway-secret"),
            "/v1/embed/sso_url",
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let url = json["url"].as_str().unwrap();
        assert!(
            url.starts_with("https://127.0.0.1:10443/login/embed/%2Fembed%2Fdashboards%2F1?nonce="),
            "{url}"
        );
        assert!(!url.contains("demo-embed-secret"), "{url}");

        let text = crate::config::DEMO_CONFIG
            .replace("http://127.0.0.1:10080", "http://127.0.0.1:9")
            .replace("secret = \"demo-embed-secret\"\nsecret_id = \"1\"\n", "");
        let no_secret = app(crate::state(BrokerConfig::parse(&text).unwrap(), None).unwrap());
        let (status, json) = call(
            no_secret,
            Some("Bearer demo-gateway-secret"),
            "/v1/embed/sso_url",
            &body,
        )
        .await;
        assert_eq!(
            (status, json["error"].as_str()),
            (StatusCode::NOT_IMPLEMENTED, Some("embed_disabled")),
            "{json}"
        );
    }
}
