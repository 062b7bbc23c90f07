//! End-to-end: a real Envoy loads the release wasm with the demo configuration, in front
//! of the Looker simulator and the broker. Each test asserts what the client got, what
//! Looker received and what the broker was asked. Run with `make test`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/tokens.rs"]
mod tokens;

// Issue 3: per-user identities, Looker faults at login, no secret in any log.
#[path = "e2e/broker.rs"]
mod broker;
// Issue 4: policy in Looker's terms, guardrails, shadow rules, rate limits, audit.
#[path = "e2e/policy.rs"]
mod policy;
// Issue 4: request targets that try to slip past the policy.
#[path = "e2e/bypass.rs"]
mod bypass;
// Issue 7: hostile tokens and headers.
#[path = "e2e/attacks.rs"]
mod attacks;
// Issue 7: failing broker and Looker.
#[path = "e2e/faults.rs"]
mod faults;
// Issue 12: guardrails, grants, session operations and issuers, as an attacker.
#[path = "e2e/holes.rs"]
mod holes;
// Issue 5: remote keys through discovery: start, rotation, IdP failures, refetch storms.
#[path = "e2e/keys.rs"]
mod keys;
// Issue 12: request trailers never resume a request the filter has not decided.
#[path = "e2e/trailers.rs"]
mod trailers;
// Issue 12 item 8: x-envoy-* and forwarding headers a client may not set.
#[path = "e2e/hygiene.rs"]
mod hygiene;
// Issue 15 item 0: browsers as clients (CORS), and the demo's Looker UI host listener.
#[path = "e2e/cors.rs"]
mod cors;
// Issue 15 items 1, 2: the embed endpoints, answered by the gateway through the broker.
#[path = "e2e/embed.rs"]
mod embed;
// Issue 16: the fleet (two Envoys, two broker replicas).
#[path = "e2e/fleet.rs"]
mod fleet;
// Issue 16: global rate limits (two Envoys, the rate limit service, Redis).
#[path = "e2e/global.rs"]
mod global;

use std::time::Duration;

use harness::{
    demo_plugin_config, envoy_refusing, BrokerKind, Gateway, Options, Reply, BROKER_TIMEOUT,
};
use serde_json::{json, Value};

const DASHBOARD: &str = "/api/4.0/dashboards/1";

/// Checks the gateway's error contract: status, JSON `{error, reason, request_id}`.
fn assert_gateway_error(reply: &Reply, status: u16) -> Value {
    assert_eq!(
        reply.status, status,
        "unexpected status; body: {}",
        reply.body
    );
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let body = reply.json();
    for field in ["error", "reason", "request_id"] {
        assert!(
            body[field].as_str().is_some_and(|v| !v.is_empty()),
            "error body lacks a non-empty {field:?}: {body}"
        );
    }
    body
}

/// 401 for a token that was presented: `WWW-Authenticate` with `error="invalid_token"`.
fn assert_invalid_token(reply: &Reply) {
    assert_gateway_error(reply, 401);
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Bearer realm="lookergate""#),
        "WWW-Authenticate: {challenge:?}"
    );
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "WWW-Authenticate: {challenge:?}"
    );
}

async fn assert_nothing_reached_looker(gw: &Gateway) {
    let seen = gw.looker_requests().await;
    assert!(
        seen.is_empty(),
        "Looker must not see refused requests, it saw: {seen:#?}"
    );
}

async fn assert_token_rejected(token: String) {
    let gw = Gateway::start().await;
    let reply = gw.get(DASHBOARD, Some(&token)).await;
    assert_invalid_token(&reply);
    assert_nothing_reached_looker(&gw).await;
    assert_eq!(
        gw.broker_calls().await,
        0,
        "no broker call for an unauthenticated request"
    );
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"][name].as_str()
}

// ---- allowed requests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_reaches_looker_with_the_broker_token_only() {
    let gw = Gateway::start().await;
    let jwt = tokens::valid("alice");
    let request = gw
        .client
        .get(gw.url("/api/4.0/dashboards/1?access_token=client-supplied-token&fields=id"))
        .bearer_auth(&jwt)
        .header("cookie", "looker_session=client-cookie")
        .header("x-lookergate-role", "admin");
    let reply = gw.send(request).await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);

    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 1, "Looker saw: {seen:#?}");
    let request = &seen[0];
    assert_eq!(request["path"], "/api/4.0/dashboards/1");
    let broker_token = gw.broker_token("analyst").await;
    assert_eq!(
        header(request, "authorization"),
        Some(format!("token {broker_token}").as_str())
    );
    assert_eq!(
        header(request, "cookie"),
        None,
        "the client's cookie must be removed"
    );
    assert_ne!(
        header(request, "x-lookergate-role"),
        Some("admin"),
        "client x-lookergate-* must be removed"
    );
    let query = request["query"].to_string();
    assert!(
        !query.contains("access_token"),
        "access_token query parameter must be removed: {query}"
    );
    assert!(
        query.contains("fields"),
        "other query parameters must survive: {query}"
    );
    let everything = request.to_string();
    assert!(
        !everything.contains(&jwt),
        "the client's JWT must not reach Looker"
    );
    assert!(!everything.contains("client-supplied-token") && !everything.contains("client-cookie"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_reads_dashboards_as_the_viewer_role() {
    let gw = Gateway::start().await;
    let reply = gw.get(DASHBOARD, Some(&tokens::valid("bob"))).await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 1, "Looker saw: {seen:#?}");
    let viewer_token = gw.broker_token("viewer").await;
    assert_eq!(
        header(&seen[0], "authorization"),
        Some(format!("token {viewer_token}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_can_run_a_query() {
    let gw = Gateway::start().await;
    let request = gw
        .client
        .post(gw.url("/api/4.0/queries/run/json"))
        .bearer_auth(tokens::valid("alice"))
        // Within the demo's guardrails (analysts-query-orders: a limit up to 500 and a
        // filter on orders.created_date), so the query reaches Looker.
        .json(
            &json!({"model": "thelook", "view": "orders", "fields": ["orders.count"],
                      "filters": {"orders.created_date": "2026-01%"}, "limit": "10"}),
        );
    let reply = gw.send(request).await;
    assert_ne!(reply.status, 401, "body: {}", reply.body);
    assert_ne!(reply.status, 403, "body: {}", reply.body);
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 1, "Looker saw: {seen:#?}");
    assert_eq!(seen[0]["method"], "POST");
}

// ---- 401: no or bad token ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_rejected_with_401_and_a_bearer_challenge() {
    let gw = Gateway::start().await;
    let reply = gw.get(DASHBOARD, None).await;
    let body = assert_gateway_error(&reply, 401);
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Bearer realm="lookergate""#),
        "WWW-Authenticate: {challenge:?}; {body}"
    );
    assert!(
        !challenge.contains("error="),
        "no error code when no token was presented: {challenge:?}"
    );
    assert_nothing_reached_looker(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_rejected_with_401() {
    assert_token_rejected(tokens::expired("alice")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_token_is_rejected_with_401() {
    assert_token_rejected(tokens::not_yet_valid("alice")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_another_issuer_is_rejected_with_401() {
    assert_token_rejected(tokens::with("alice", |s| {
        s.iss = "https://idp.evil.example".to_owned()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_for_another_audience_is_rejected_with_401() {
    assert_token_rejected(tokens::with("alice", |s| {
        s.aud = "some-other-api".to_owned()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_tampered_claims_is_rejected_with_401() {
    // eve's token with her groups rewritten to alice's: the signature no longer matches.
    assert_token_rejected(tokens::tampered("eve", json!({"groups": ["analysts"]}))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_unknown_kid_is_rejected_with_401() {
    assert_token_rejected(tokens::unknown_kid("alice")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_alg_none_token_is_rejected_with_401() {
    assert_token_rejected(tokens::alg_none("alice")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_token_keyed_with_the_rsa_public_key_is_rejected_with_401() {
    assert_token_rejected(tokens::hs256_with_rsa_public_key("alice")).await;
}

// ---- 403: policy ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_matching_no_rule_is_forbidden_by_default_deny() {
    let gw = Gateway::start().await;
    let reply = gw.get(DASHBOARD, Some(&tokens::valid("eve"))).await;
    let body = assert_gateway_error(&reply, 403);
    assert!(
        body["reason"].as_str().unwrap().contains("default_deny"),
        "{body}"
    );
    assert_nothing_reached_looker(&gw).await;
    assert_eq!(gw.broker_calls().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_running_a_query_is_forbidden() {
    let gw = Gateway::start().await;
    let request = gw
        .client
        .post(gw.url("/api/4.0/queries/run/json"))
        .bearer_auth(tokens::valid("bob"))
        .json(&json!({"model": "thelook", "view": "orders", "fields": ["orders.count"]}));
    let reply = gw.send(request).await;
    let body = assert_gateway_error(&reply, 403);
    assert!(
        body["reason"].as_str().unwrap().contains("default_deny"),
        "{body}"
    );
    assert_nothing_reached_looker(&gw).await;
    assert_eq!(gw.broker_calls().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rule_is_named_in_the_403() {
    let mut plugin = demo_plugin_config();
    let rules = plugin["policy"]["rules"].as_array_mut().unwrap();
    rules.insert(0, json!({"name": "no-alice-today", "when": [{"claim": "sub", "equals": "alice"}], "deny": true}));
    let gw = Gateway::start_with(Options {
        plugin: Some(plugin),
        ..Options::default()
    })
    .await;
    let reply = gw.get(DASHBOARD, Some(&tokens::valid("alice"))).await;
    let body = assert_gateway_error(&reply, 403);
    assert!(
        body["reason"].as_str().unwrap().contains("no-alice-today"),
        "{body}"
    );
    assert_nothing_reached_looker(&gw).await;
}

// ---- 503: the broker cannot help ----

async fn assert_broker_unavailable(kind: BrokerKind) {
    let gw = Gateway::start_with(Options {
        broker: kind,
        ..Options::default()
    })
    .await;
    let reply = gw.get(DASHBOARD, Some(&tokens::valid("alice"))).await;
    let body = assert_gateway_error(&reply, 503);
    assert_eq!(body["error"], "broker_unavailable", "{body}");
    let limit = BROKER_TIMEOUT + Duration::from_secs(1);
    assert!(
        reply.elapsed <= limit,
        "503 took {:?}, more than {limit:?}",
        reply.elapsed
    );
    assert_nothing_reached_looker(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_and_nothing_reaches_looker() {
    assert_broker_unavailable(BrokerKind::Down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_slower_than_the_timeout_gives_503_in_time() {
    assert_broker_unavailable(BrokerKind::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_answering_garbage_gives_503() {
    assert_broker_unavailable(BrokerKind::Garbage).await;
}

// ---- token cache ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_with_the_same_identity_reuses_the_looker_token() {
    let gw = Gateway::start().await;
    let jwt = tokens::valid("alice");
    // Same client, so the same keep-alive connection and the same Envoy worker.
    let first = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(first.status, 200, "body: {}", first.body);
    let logins_after_first = gw.looker_logins().await.len();
    let second = gw.get("/api/4.0/looks/1", Some(&jwt)).await;
    assert_eq!(second.status, 200, "body: {}", second.body);

    assert_eq!(
        gw.broker_calls().await,
        1,
        "the second request must not call the broker"
    );
    assert_eq!(
        gw.looker_logins().await.len(),
        logins_after_first,
        "no new Looker login"
    );
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 2);
    assert_eq!(
        header(&seen[0], "authorization"),
        header(&seen[1], "authorization")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_call_the_broker_at_most_once_per_worker() {
    const REQUESTS: usize = 20;
    const ENVOY_WORKERS: u64 = 2;
    let gw = Gateway::start().await;
    let logins_before = gw.looker_logins().await.len();
    let jwt = tokens::valid("alice");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        // Separate connections, so Envoy spreads them over its workers.
        let request = gw
            .client
            .get(gw.url(DASHBOARD))
            .bearer_auth(&jwt)
            .header("connection", "close");
        requests.spawn(async move {
            let response = request.send().await.expect("request through Envoy");
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        });
    }
    while let Some(done) = requests.join_next().await {
        let (status, body) = done.expect("request task");
        assert_eq!(status, 200, "body: {body}");
    }
    let calls = gw.broker_calls().await;
    assert!(
        (1..=ENVOY_WORKERS).contains(&calls),
        "{calls} broker calls for {REQUESTS} concurrent requests"
    );
    let logins = gw.looker_logins().await.len() - logins_before;
    assert!(
        logins as u64 <= ENVOY_WORKERS,
        "{logins} Looker logins for {REQUESTS} concurrent requests"
    );
    assert_eq!(gw.forwarded_requests().await.len(), REQUESTS);
}

// ---- invalid plugin configuration ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_config_with_an_unknown_field_is_refused_naming_the_field() {
    let mut plugin = demo_plugin_config();
    plugin["broker"]["retries_please"] = json!(3);
    let log = envoy_refusing(plugin).await;
    assert!(
        log.contains("retries_please"),
        "Envoy's log must name the unknown field:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_config_with_a_bad_duration_is_refused_naming_the_field() {
    let mut plugin = demo_plugin_config();
    plugin["broker"]["timeout"] = json!("two seconds");
    let log = envoy_refusing(plugin).await;
    assert!(
        log.contains("broker.timeout"),
        "Envoy's log must name the field:\n{log}"
    );
}

// ---- request targets that try to leave an allowed path ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_escape_an_allowed_path() {
    let gw = Gateway::start().await;
    let jwt = tokens::valid("bob");
    for target in [
        "/api/4.0/dashboards/../users/1",
        "/api/4.0/dashboards/%2e%2e/users/1",
        "/api/4.0/dashboards/..%2fusers/1",
        "/api/4.0/dashboards/%2E%2E%2Fusers%2F1",
        "/api/4.0/dashboards/./../../4.0/users/1",
        "/api/4.0/looks//..//users/1",
    ] {
        let reply = gw
            .send_raw(
                "GET",
                target,
                &[("authorization", &format!("Bearer {jwt}"))],
            )
            .await;
        assert_ne!(reply.status, 200, "{target} was allowed: {}", reply.body);
    }
    let leaked: Vec<Value> = gw
        .forwarded_requests()
        .await
        .into_iter()
        .filter(|r| {
            !r["path"]
                .as_str()
                .unwrap_or_default()
                .starts_with("/api/4.0/dashboards/")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "Looker received paths outside the allowed ones: {leaked:#?}"
    );
}

/// One request sent byte for byte, and the statuses that count as refusing it.
struct RawCase<'a> {
    what: &'a str,
    target: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    refused_with: std::ops::RangeInclusive<u16>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misplaced_credentials_and_method_overrides_are_refused() {
    let gw = Gateway::start().await;
    let alice = format!("Bearer {}", tokens::valid("alice"));
    let eve = format!("Bearer {}", tokens::valid("eve"));
    let query_only = format!("{DASHBOARD}?access_token={}", tokens::valid("alice"));
    let cases = [
        RawCase {
            what: "token only in the access_token query parameter",
            target: &query_only,
            headers: vec![],
            refused_with: 401..=401,
        },
        RawCase {
            what: "two Authorization headers, eve's first",
            target: DASHBOARD,
            headers: vec![("authorization", &eve), ("authorization", &alice)],
            refused_with: 401..=401,
        },
        RawCase {
            what: "two Authorization headers, alice's first",
            target: DASHBOARD,
            headers: vec![("authorization", &alice), ("authorization", &eve)],
            refused_with: 401..=401,
        },
        RawCase {
            what: "method override header",
            target: DASHBOARD,
            headers: vec![
                ("authorization", &alice),
                ("x-http-method-override", "DELETE"),
            ],
            // Not in the contract's list: any refusal will do.
            refused_with: 400..=499,
        },
    ];
    for case in cases {
        let reply = gw.send_raw("GET", case.target, &case.headers).await;
        assert!(
            case.refused_with.contains(&reply.status),
            "{}: {} {}",
            case.what,
            reply.status,
            reply.body
        );
    }
    assert_nothing_reached_looker(&gw).await;
}
