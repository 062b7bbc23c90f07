//! Issue 4 through the real Envoy: rules in Looker's terms (operationId, tag, activity
//! type, status), unknown paths and gateway-owned login, query guardrails (including
//! chunked bodies), SQL Runner opt-in, shadow rules, rate limits and the audit record.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{demo_plugin_config, Gateway, Options, Reply};
use crate::{assert_gateway_error, assert_nothing_reached_looker, header, tokens, DASHBOARD};

/// An audit field with no value: the filter records `-`, which Envoy's `json_format`
/// access log renders as `null` (its own "unspecified" marker).
fn assert_empty_audit_field(line: &Value, field: &str) {
    assert!(
        line[field].is_null() || line[field] == "-",
        "{field} should be empty: {line}"
    );
}

fn reason(body: &Value) -> &str {
    body["reason"].as_str().unwrap_or_default()
}

/// The demo plugin with `rules` as its whole policy and optional top-level overrides.
fn plugin_with(rules: Value, overrides: Value) -> Value {
    let mut plugin = demo_plugin_config();
    plugin["policy"]["rules"] = rules;
    for (k, v) in overrides.as_object().cloned().unwrap_or_default() {
        plugin[k] = v;
    }
    plugin
}

async fn gateway(rules: Value, overrides: Value) -> Gateway {
    Gateway::start_with(Options {
        plugin: Some(plugin_with(rules, overrides)),
        ..Options::default()
    })
    .await
}

/// 403 naming `rule`, with `fragment` in the reason.
fn assert_forbidden(reply: &Reply, rule: &str, fragment: &str) {
    let body = assert_gateway_error(reply, 403);
    assert_eq!(body["error"], "forbidden", "{body}");
    assert_eq!(body["rule"], rule, "{body}");
    assert!(
        reason(&body).contains(fragment),
        "reason lacks {fragment:?}: {body}"
    );
}

// ---- rules in Looker's terms ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_match_by_operation_tag_activity_type_status_and_path() {
    let alice = json!([{"claim": "sub", "equals": "alice"}]);
    let gw = gateway(
        json!([
            {"name": "no-beta-or-alpha", "statuses": ["beta", "alpha"], "when": alice, "deny": true},
            {"name": "dashboards-by-operation", "operations": ["dashboard"], "when": alice, "allow": {"role": "analyst"}},
            {"name": "looks-by-tag", "methods": ["GET"], "tags": ["Look"], "when": alice, "allow": {"role": "viewer"}},
            {"name": "queries-by-activity", "methods": ["GET"], "activity_types": ["db_query"], "when": alice, "allow": {"role": "analyst"}},
            {"name": "me-by-path", "methods": ["GET"], "paths": ["/api/4.0/user"], "when": alice, "allow": {"role": "viewer"}}
        ]),
        json!({}),
    )
    .await;
    let jwt = tokens::valid("alice");
    // (path, expected status, rule, operation, identity)
    let cases = [
        (
            "/api/4.0/dashboards/1",
            200,
            "dashboards-by-operation",
            "dashboard",
            "role:analyst",
        ),
        (
            "/api/4.0/looks/1",
            200,
            "looks-by-tag",
            "look",
            "role:viewer",
        ),
        (
            "/api/4.0/queries/1/run/json",
            200,
            "queries-by-activity",
            "run_query",
            "role:analyst",
        ),
        ("/api/4.0/user", 200, "me-by-path", "me", "role:viewer"),
        (
            "/api/4.0/agents/search",
            403,
            "no-beta-or-alpha",
            "search_agents",
            "-",
        ),
        (
            "/api/4.0/artifact/namespaces",
            403,
            "no-beta-or-alpha",
            "artifact_namespaces",
            "-",
        ),
        ("/api/4.0/folders/1", 403, "default_deny", "folder", "-"),
    ];
    let mut replies = Vec::new();
    for (path, status, rule, _, _) in cases {
        let reply = gw.get(path, Some(&jwt)).await;
        if status == 200 {
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        } else {
            assert_forbidden(&reply, rule, rule);
        }
        replies.push(reply);
    }
    // Looker saw exactly the allowed ones, each with its rule's role token.
    let seen = gw.forwarded_requests().await;
    let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/api/4.0/dashboards/1",
            "/api/4.0/looks/1",
            "/api/4.0/queries/1/run/json",
            "/api/4.0/user"
        ]
    );
    let analyst = format!("token {}", gw.broker_token("analyst").await);
    let viewer = format!("token {}", gw.broker_token("viewer").await);
    for (request, want) in seen.iter().zip([&analyst, &viewer, &analyst, &viewer]) {
        assert_eq!(
            header(request, "authorization"),
            Some(want.as_str()),
            "{}",
            request["path"]
        );
    }
    // The audit record names rule, operation and identity for every decision.
    let log = gw.access_log(cases.len()).await;
    for ((path, status, rule, operation, identity), reply) in cases.iter().zip(&replies) {
        let request_id = reply.header("x-request-id").expect("x-request-id");
        let line = log
            .iter()
            .find(|l| l["request_id"] == request_id.as_str())
            .unwrap_or_else(|| panic!("no access log line for {path}: {log:#?}"));
        assert_eq!(line["lookergate_rule"], *rule, "{path}: {line}");
        assert_eq!(line["lookergate_operation"], *operation, "{path}: {line}");
        if *identity == "-" {
            assert_empty_audit_field(line, "lookergate_identity");
        } else {
            assert_eq!(line["lookergate_identity"], *identity, "{path}: {line}");
        }
        assert_eq!(line["lookergate_subject"], "alice", "{path}: {line}");
        let verdict = if *status == 200 { "allow" } else { "deny" };
        assert_eq!(line["lookergate_verdict"], verdict, "{path}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_api_paths_are_404_and_login_logout_are_gateway_owned() {
    let gw = Gateway::start().await;
    let jwt = tokens::valid("alice");
    for (method, path) in [
        ("GET", "/api/4.0/no_such_operation"),
        ("GET", "/api/4.0/dashboards/1/no_such_thing"),
        ("DELETE", "/api/4.0/user"),
        ("GET", "/api/4.0"),
        ("GET", "/api/4.0/"),
    ] {
        let request = gw
            .client
            .request(method.parse().unwrap(), gw.url(path))
            .bearer_auth(&jwt);
        let reply = gw.send(request).await;
        let body = assert_gateway_error(&reply, 404);
        assert_eq!(body["error"], "not_found", "{method} {path}: {body}");
    }
    for (method, path, operation) in [
        ("POST", "/api/4.0/login", "login"),
        ("POST", "/api/4.0/login/203", "login_user"),
        ("DELETE", "/api/4.0/logout", "logout"),
    ] {
        let request = gw
            .client
            .request(method.parse().unwrap(), gw.url(path))
            .bearer_auth(&jwt)
            .form(&[("client_id", "demo-admin-id"), ("client_secret", "guess")]);
        let reply = gw.send(request).await;
        let body = assert_gateway_error(&reply, 403);
        assert!(
            reason(&body).starts_with("gateway_owns_authentication"),
            "{method} {path}: {body}"
        );
        assert!(reason(&body).contains(operation), "{method} {path}: {body}");
    }
    assert_nothing_reached_looker(&gw).await;
    assert!(
        gw.looker_logins().await.is_empty(),
        "no login may reach Looker"
    );
    assert_eq!(gw.broker_calls().await, 0);
}

// ---- query guardrails ----

fn guarded_rules() -> Value {
    json!([
        {"name": "guarded-queries", "operations": ["run_inline_query", "create_query"],
         "when": [{"claim": "sub", "equals": "alice"}],
         "query": {"models": ["thelook"], "views": ["orders"], "max_limit": 500,
                   "required_filters": ["orders.created_date"]},
         "allow": {"role": "analyst"}},
        {"name": "sql-runner-for-bob", "operations": ["create_sql_query"],
         "when": [{"claim": "sub", "equals": "bob"}], "allow": {"role": "analyst"}},
        {"name": "alice-anything-else", "methods": ["GET", "POST"], "paths": ["/api/4.0/**"],
         "when": [{"claim": "sub", "equals": "alice"}], "allow": {"role": "analyst"}}
    ])
}

const MAX_BODY: usize = 2048;

fn good_query() -> Value {
    json!({"model": "thelook", "view": "orders", "fields": ["orders.status", "orders.count"],
           "filters": {"orders.created_date": "2025%"}, "limit": "100"})
}

fn with(change: Value) -> String {
    let mut query = good_query();
    for (k, v) in change.as_object().unwrap() {
        if v.is_null() {
            query.as_object_mut().unwrap().remove(k);
        } else {
            query[k] = v.clone();
        }
    }
    query.to_string()
}

/// Requests whose body a rule inspects must be answered, not left hanging.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Regression (found here, fixed in the shipped configs): the filter pauses in
/// `on_http_request_headers` to buffer the body, but Envoy >= 1.31 turns a headers
/// `StopIteration` from Wasm into `StopAllIterationAndWatermark` unless the Wasm config
/// sets `allow_on_headers_stop_iteration: true`; without it `on_http_request_body` is
/// never called (the filter then answers 408 after 15 s rather than hang).
fn hung(what: &str) -> String {
    format!(
        "{what}: no answer within {BODY_DEADLINE:?}. Envoy never delivered the body to the filter \
         (its log shows proxy_on_request_headers return: 1 and no proxy_on_request_body): \
         the Wasm filter config needs `allow_on_headers_stop_iteration: true`"
    )
}

async fn send_bounded(gw: &Gateway, what: &str, request: reqwest::RequestBuilder) -> Reply {
    tokio::time::timeout(BODY_DEADLINE, gw.send(request))
        .await
        .unwrap_or_else(|_| panic!("{}", hung(what)))
}

async fn send_raw_bounded(gw: &Gateway, what: &str, pieces: &[Vec<u8>]) -> Reply {
    tokio::time::timeout(BODY_DEADLINE, gw.send_raw_bytes(pieces))
        .await
        .unwrap_or_else(|_| panic!("{}", hung(what)))
}

/// A raw POST with a chunked body: `chunks` are written one by one.
fn chunked_request(gw: &Gateway, path: &str, jwt: &str, chunks: &[&str]) -> Vec<Vec<u8>> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {jwt}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        gw.authority()
    );
    let mut pieces = vec![head.into_bytes()];
    for chunk in chunks {
        pieces.push(format!("{:x}\r\n{chunk}\r\n", chunk.len()).into_bytes());
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    pieces
}

/// Splits `text` into `n` roughly equal pieces (on char boundaries; the text is ASCII).
fn split_in(text: &str, n: usize) -> Vec<&str> {
    let size = text.len().div_ceil(n);
    (0..text.len())
        .step_by(size)
        .map(|i| &text[i..(i + size).min(text.len())])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_guardrails_are_enforced_through_envoy() {
    let gw = gateway(guarded_rules(), json!({"max_body_bytes": MAX_BODY})).await;
    let jwt = tokens::valid("alice");
    let post = |body: String| {
        gw.client
            .post(gw.url("/api/4.0/queries/run/json"))
            .bearer_auth(&jwt)
            .header("content-type", "application/json")
            .body(body)
    };

    let ok = send_bounded(&gw, "an allowed query", post(good_query().to_string())).await;
    assert_eq!(ok.status, 200, "an allowed query: {}", ok.body);

    let refused = [
        (
            "disallowed model",
            with(json!({"model": "finance"})),
            "query.model",
        ),
        (
            "disallowed explore",
            with(json!({"view": "users"})),
            "query.view",
        ),
        (
            "limit over the maximum",
            with(json!({"limit": "501"})),
            "query.limit",
        ),
        (
            "no limit is Looker's 5000",
            with(json!({"limit": null})),
            "query.limit",
        ),
        (
            "limit -1 is unlimited",
            with(json!({"limit": "-1"})),
            "query.limit",
        ),
        (
            "missing required filter",
            with(json!({"filters": {"orders.status": "complete"}})),
            "query.filters",
        ),
    ];
    for (what, body, field) in &refused {
        let reply = send_bounded(&gw, what, post(body.clone())).await;
        let body = assert_gateway_error(&reply, 403);
        assert_eq!(body["rule"], "guarded-queries", "{what}: {body}");
        assert!(
            reason(&body).contains(field),
            "{what}: reason lacks {field}: {body}"
        );
    }
    // create_query is guarded the same way.
    let reply = send_bounded(
        &gw,
        "create_query",
        gw.client
            .post(gw.url("/api/4.0/queries"))
            .bearer_auth(&jwt)
            .body(with(json!({"model": "finance"}))),
    )
    .await;
    assert_forbidden(&reply, "guarded-queries", "query.model");

    let seen = gw.forwarded_requests().await;
    assert_eq!(
        seen.len(),
        1,
        "only the allowed query may reach Looker: {seen:#?}"
    );
    assert_eq!(seen[0]["path"], "/api/4.0/queries/run/json");
    assert_eq!(seen[0]["method"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_oversized_query_bodies_are_judged_whole() {
    let gw = gateway(guarded_rules(), json!({"max_body_bytes": MAX_BODY})).await;
    let jwt = tokens::valid("alice");
    let path = "/api/4.0/queries/run/json";

    // Allowed, in 4 chunks: the decision waits for the whole body.
    let good = good_query().to_string();
    let reply = send_raw_bounded(
        &gw,
        "chunked allowed query",
        &chunked_request(&gw, path, &jwt, &split_in(&good, 4)),
    )
    .await;
    assert_eq!(reply.status, 200, "chunked allowed query: {}", reply.body);

    // The disallowed model is in the last chunk only: the first chunks look harmless.
    let bad = with(json!({"model": "finance"}));
    let at = bad.find("finance").unwrap();
    let reply = send_raw_bounded(
        &gw,
        "chunked bad model",
        &chunked_request(&gw, path, &jwt, &[&bad[..at], &bad[at..]]),
    )
    .await;
    assert_forbidden(&reply, "guarded-queries", "query.model");

    // Over max_body_bytes, chunked (no content-length to judge by up front).
    let padding = "x".repeat(MAX_BODY);
    let big = with(json!({"pad": padding}));
    let reply = send_raw_bounded(
        &gw,
        "chunked oversized",
        &chunked_request(&gw, path, &jwt, &split_in(&big, 3)),
    )
    .await;
    let body = assert_gateway_error(&reply, 413);
    assert_eq!(body["error"], "payload_too_large", "{body}");

    // Over max_body_bytes with a content-length.
    let reply = send_bounded(
        &gw,
        "oversized with content-length",
        gw.client
            .post(gw.url(path))
            .bearer_auth(&jwt)
            .header("content-type", "application/json")
            .body(big.clone()),
    )
    .await;
    let body = assert_gateway_error(&reply, 413);
    assert_eq!(body["error"], "payload_too_large", "{body}");

    // A body that is not a query at all.
    let reply = send_raw_bounded(
        &gw,
        "truncated JSON body",
        &chunked_request(&gw, path, &jwt, &["{\"model\":", "\"thelook\""]),
    )
    .await;
    let body = assert_gateway_error(&reply, 400);
    assert_eq!(body["error"], "bad_request", "{body}");

    let seen = gw.forwarded_requests().await;
    assert_eq!(
        seen.len(),
        1,
        "only the allowed chunked query may reach Looker: {seen:#?}"
    );
    assert_eq!(seen[0]["path"], path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_runner_is_denied_unless_a_rule_names_it() {
    let gw = gateway(guarded_rules(), json!({})).await;
    let sql = json!({"model_name": "thelook", "sql": "SELECT * FROM users"});
    let send = |user: &str| {
        gw.client
            .post(gw.url("/api/4.0/sql_queries"))
            .bearer_auth(tokens::valid(user))
            .json(&sql)
    };
    // alice-anything-else covers every POST under /api/4.0/, but not SQL Runner.
    let reply = gw.send(send("alice")).await;
    let body = assert_gateway_error(&reply, 403);
    assert_eq!(body["rule"], "default_deny", "{body}");
    assert_nothing_reached_looker(&gw).await;
    assert_eq!(gw.broker_calls().await, 0);

    // bob's rule names create_sql_query.
    let reply = gw.send(send("bob")).await;
    assert!(
        ![401, 403, 404, 503].contains(&reply.status),
        "bob's SQL Runner call should be forwarded: {} {}",
        reply.status,
        reply.body
    );
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["path"], "/api/4.0/sql_queries");
    assert_eq!(seen[0]["method"], "POST");
}

// ---- shadow rules ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rule_is_counted_and_logged_but_not_enforced() {
    let mut plugin = demo_plugin_config();
    plugin["policy"]["rules"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "try-no-dashboards", "shadow": true, "tags": ["Dashboard"], "deny": true}),
    );
    let gw = Gateway::start_with(Options {
        plugin: Some(plugin),
        ..Options::default()
    })
    .await;
    let jwt = tokens::valid("alice");
    let dashboard = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(
        dashboard.status, 200,
        "a shadow deny must not be enforced: {}",
        dashboard.body
    );
    let look = gw.get("/api/4.0/looks/1", Some(&jwt)).await;
    assert_eq!(look.status, 200, "{}", look.body);
    assert_eq!(gw.forwarded_requests().await.len(), 2);

    let counter = "wasmcustom.lookergate.shadow.try-no-dashboards.would_deny";
    assert_eq!(
        gw.envoy_counter(counter).await,
        1,
        "shadow stats: {:?}",
        gw.envoy_stats("shadow").await
    );
    let log = gw.access_log(2).await;
    let line = |reply: &Reply| {
        let id = reply.header("x-request-id").unwrap();
        log.iter()
            .find(|l| l["request_id"] == id.as_str())
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        line(&dashboard)["lookergate_shadow"],
        "try-no-dashboards:deny",
        "{log:#?}"
    );
    assert_eq!(line(&dashboard)["lookergate_verdict"], "allow");
    assert_eq!(line(&dashboard)["lookergate_rule"], "analysts-read");
    assert_empty_audit_field(&line(&look), "lookergate_shadow");
    let envoy_log = gw
        .captured_logs()
        .into_iter()
        .find(|(name, _)| name == "envoy log")
        .unwrap()
        .1;
    assert!(
        envoy_log
            .lines()
            .any(|l| l.contains("try-no-dashboards:deny")),
        "Envoy's log should carry the shadow verdict"
    );
}

// ---- rate limits ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_gives_429_with_retry_after_and_recovers() {
    let gw = gateway(
        json!([{"name": "slow-alice", "methods": ["GET"], "paths": ["/api/4.0/dashboards/*"],
                "when": [{"claim": "sub", "equals": "alice"}],
                "rate_limit": {"per_second": 1, "burst": 2}, "allow": {"role": "analyst"}},
               {"name": "bob-reads", "methods": ["GET"], "paths": ["/api/4.0/dashboards/*"],
                "when": [{"claim": "sub", "equals": "bob"}], "allow": {"role": "viewer"}}]),
        json!({}),
    )
    .await;
    let jwt = tokens::valid("alice");
    for i in 0..2 {
        let reply = gw.get(DASHBOARD, Some(&jwt)).await;
        assert_eq!(
            reply.status, 200,
            "request {i} is within the burst: {}",
            reply.body
        );
    }
    let limited = gw.get(DASHBOARD, Some(&jwt)).await;
    let body = assert_gateway_error(&limited, 429);
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(body["rule"], "slow-alice", "{body}");
    let retry_after: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {:?}", limited.headers));
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(
        gw.forwarded_requests().await.len(),
        2,
        "the 429 must not reach Looker"
    );

    // Another principal has its own bucket.
    let bob = gw.get(DASHBOARD, Some(&tokens::valid("bob"))).await;
    assert_eq!(bob.status, 200, "{}", bob.body);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let recovered = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(
        recovered.status, 200,
        "after Retry-After: {}",
        recovered.body
    );
    assert_eq!(gw.forwarded_requests().await.len(), 4);
}

// ---- audit ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_carries_the_audit_record_and_never_a_token() {
    let gw = Gateway::start().await;
    let alice = tokens::valid("alice");
    let eve = tokens::valid("eve");
    let allowed = gw
        .get(&format!("{DASHBOARD}?access_token={alice}"), Some(&alice))
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let denied = gw.get(DASHBOARD, Some(&eve)).await;
    assert_gateway_error(&denied, 403);
    let anonymous = gw.get(DASHBOARD, None).await;
    assert_gateway_error(&anonymous, 401);

    let log = gw.access_log(3).await;
    let line = |reply: &Reply| {
        let id = reply
            .header("x-request-id")
            .expect("x-request-id on every answer");
        log.iter()
            .find(|l| l["request_id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("no access log line for {id}: {log:#?}"))
    };
    let a = line(&allowed);
    assert_eq!(a["lookergate_verdict"], "allow", "{a}");
    assert_eq!(a["lookergate_subject"], "alice");
    assert_eq!(a["lookergate_rule"], "analysts-read");
    assert_eq!(a["lookergate_operation"], "dashboard");
    assert_eq!(a["lookergate_identity"], "role:analyst");
    assert_eq!(a["lookergate_issuer"], "https://idp.lookergate.demo");
    assert_eq!(a["lookergate_groups"], "analysts");
    assert_eq!(a["status"], 200);
    let e = line(&denied);
    assert_eq!(e["lookergate_verdict"], "deny", "{e}");
    assert_eq!(e["lookergate_subject"], "eve");
    assert_eq!(e["lookergate_rule"], "default_deny");
    assert_eq!(e["lookergate_operation"], "dashboard");
    assert_empty_audit_field(&e, "lookergate_identity");
    assert_eq!(e["status"], 403);
    let n = line(&anonymous);
    assert_eq!(n["lookergate_verdict"], "deny", "{n}");
    assert_eq!(n["lookergate_reason"], "missing_token");

    let looker_token = gw.broker_token("analyst").await;
    let text = gw
        .captured_logs()
        .into_iter()
        .find(|(name, _)| name == "access log")
        .unwrap()
        .1;
    for (what, secret) in [
        ("alice's JWT", &alice),
        ("eve's JWT", &eve),
        ("the Looker token", &looker_token),
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "{what} is in the access log:\n{text}"
        );
    }
}

/// Regression (found here, fixed): with body delivery on, body data arriving while a
/// request waits for the broker once answered Continue and resumed the paused headers,
/// so the request went upstream before the Looker token was set, with the client's JWT.
/// The request must stay paused until the broker answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_never_outruns_the_broker_token() {
    let gw = Gateway::start_with(Options {
        plugin: Some(plugin_with(
            guarded_rules(),
            json!({"max_body_bytes": MAX_BODY}),
        )),
        ..Options::default()
    })
    .await;
    let alice = tokens::valid("alice");
    let bob = tokens::valid("bob");
    // A body no rule inspects (SQL Runner, bob), then one a rule inspects (alice's query).
    let sql = gw
        .client
        .post(gw.url("/api/4.0/sql_queries"))
        .bearer_auth(&bob)
        .json(&json!({"model_name": "thelook", "sql": "SELECT 1"}));
    let sql = send_bounded(&gw, "bob's SQL Runner call", sql).await;
    let query = gw
        .client
        .post(gw.url("/api/4.0/queries/run/json"))
        .bearer_auth(&alice)
        .json(&good_query());
    let query = send_bounded(&gw, "alice's query", query).await;
    let seen = gw.forwarded_requests().await;
    let leaked: Vec<String> = seen
        .iter()
        .filter(|r| {
            !header(r, "authorization").is_some_and(|a| a.starts_with("token "))
                || r.to_string().contains("eyJ")
        })
        .map(|r| {
            format!(
                "{} {} authorization={:.20}…",
                r["method"],
                r["path"],
                header(r, "authorization").unwrap_or("(none)")
            )
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "forwarded before the broker's token was set (client JWT reached Looker): {leaked:?}; \
         replies: {} {:.120} / {} {:.120}",
        sql.status,
        sql.body,
        query.status,
        query.body
    );
    assert_eq!(query.status, 200, "{}", query.body);
    assert_ne!(
        sql.status, 401,
        "Looker refused bob's SQL Runner call: {}",
        sql.body
    );
}
