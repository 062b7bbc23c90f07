//! Issue 12, item 1: request trailers. A request ending with a trailer block (HTTP/2, or
//! HTTP/1.1 chunked where Envoy passes trailers on) while the filter has not decided it
//! (it awaits the body a rule inspects, a key refetch for an unknown `kid`, or the
//! broker) must not be resumed by the trailers: an awaited body ends there and is
//! judged, everything else waits for its decision, and no client trailer reaches Looker.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use lookergate_cli::replace_once;
use serde_json::{json, Value};

use crate::harness::{
    demo_plugin_config, BrokerKind, Gateway, Options, Reply, Wire, BROKER_TIMEOUT,
    DEMO_ISSUER_METRIC,
};
use crate::{assert_gateway_error, assert_invalid_token, tokens};

const QUERY: &str = "/api/4.0/queries/run/json";
/// Credentials a client may put beside its JWT; none may reach Looker.
const CLIENT_ACCESS_TOKEN: &str = "client-supplied-token";
const CLIENT_COOKIE: &str = "looker_session=client-cookie";
const CLIENT_TRAILERS: &[(&str, &str)] = &[
    ("x-client-trailer", "sneaky"),
    ("x-lookergate-role", "admin"),
];
/// HTTP/1.1 first: with the shipped config Envoy drops its trailers, so a failure on
/// HTTP/2 after it shows the filter, not the request, is at fault.
const WIRES: [Wire; 2] = [Wire::Http1Chunked, Wire::Http2];
const STATE_DEADLINE: Duration = Duration::from_secs(10);

/// The Envoy configuration a test runs.
#[derive(Debug, Clone, Copy)]
enum Config {
    /// envoy/demo.yaml: HTTP/2 trailers reach the filter, Envoy drops HTTP/1.1 ones.
    Shipped,
    /// `enable_trailers` on the HCM (HTTP/1.1 trailers reach the filter too) and on the
    /// Looker cluster (trailers that get past the filter reach the simulator).
    Http1TrailersEnabled,
}

impl Config {
    fn options(self) -> Options {
        Options {
            plugin: Some(unguarded_plugin()),
            envoy_yaml_edit: match self {
                Config::Shipped => None,
                Config::Http1TrailersEnabled => Some(enable_http1_trailers),
            },
            ..Options::default()
        }
    }
}

/// The demo plugin with alice's inline queries allowed without guardrails (first rule,
/// so it wins): the filter decides on the head and forwards while the body still
/// comes, which the tests of trailers after the decision need. The demo's own query
/// rules are guarded, and the filter reads the body whenever any rule that could match
/// has guardrails, so they are dropped here (`guarded_plugin` tests the guarded case).
fn unguarded_plugin() -> Value {
    let mut plugin = demo_plugin_config();
    let rules = plugin["policy"]["rules"].as_array_mut().expect("rules");
    rules.retain(|rule| rule.get("query").is_none());
    rules.insert(
        0,
        json!({"name": "unguarded-queries", "methods": ["POST"], "operations": ["run_inline_query"],
               "when": [{"claim": "sub", "equals": "alice"}],
               "allow": {"role": "analyst"}}),
    );
    plugin
}

fn enable_http1_trailers(yaml: String) -> String {
    let edit = |yaml: &str, from: &str, to: &str| {
        replace_once(yaml, from, to).unwrap_or_else(|e| panic!("{e}"))
    };
    let yaml = edit(
        &yaml,
        "stat_prefix: looker_api\n",
        "stat_prefix: looker_api\n          http_protocol_options: { enable_trailers: true }\n",
    );
    edit(
        &yaml,
        "  - name: looker\n    type: STATIC\n",
        "  - name: looker\n    type: STATIC\n    typed_extension_protocol_options:\n      \
         envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
         \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
         explicit_http_config:\n          http_protocol_options: { enable_trailers: true }\n",
    )
}

/// An inline query on `model`, limit 10.
fn query(model: &str) -> String {
    json!({"model": model, "view": "orders", "fields": ["orders.count"], "limit": "10"}).to_string()
}

/// The query split in two pieces, the second starting at the model's name: the first
/// piece alone says nothing about the model.
fn split_at_model(query: &str, model: &str) -> [String; 2] {
    let at = query.find(model).expect("the model is in the query");
    [query[..at].to_owned(), query[at..].to_owned()]
}

/// `POST QUERY?access_token=..` with `jwt`, a cookie and a JSON body: what the issue's
/// reproduction sent.
fn target() -> String {
    format!("{QUERY}?access_token={CLIENT_ACCESS_TOKEN}")
}

/// The client's headers; `marker` names the request, so that what Looker received can be
/// told apart (it reaches Looker only with a request that got through).
fn client_headers<'a>(bearer: &'a str, marker: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("authorization", bearer),
        ("cookie", CLIENT_COOKIE),
        ("content-type", "application/json"),
        (MARKER, marker),
    ]
}

const MARKER: &str = "x-e2e-request";

/// What Looker received of the request marked `marker`.
async fn looker_saw(gw: &Gateway, marker: &str) -> Vec<Value> {
    let all = gw.looker_requests().await;
    all.into_iter()
        .filter(|r| r["headers"][MARKER] == marker)
        .collect()
}

/// The gateway refused the request `marker` (its JSON error contract, not Looker's
/// answer), and Looker saw nothing of it.
async fn assert_refused(
    gw: &Gateway,
    reply: &Reply,
    marker: &str,
    (status, error): (u16, &str),
) -> Value {
    let seen = looker_saw(gw, marker).await;
    assert!(
        seen.is_empty(),
        "{marker}: Looker must see nothing of a request the gateway has not allowed (the \
         client got {} {}); Looker saw {seen:#?}",
        reply.status,
        reply.body
    );
    assert_eq!(reply.status, status, "{marker}: body {}", reply.body);
    let body = assert_gateway_error(reply, status);
    assert_eq!(body["error"], error, "{marker}: {body}");
    body
}

/// Envoy never even started a request to Looker: a resumed request the filter then
/// answers locally can be cancelled before it connects, which `/__sim/requests` misses.
async fn assert_envoy_never_called_looker(gw: &Gateway, what: &str) {
    for counter in [
        "cluster.looker.upstream_cx_total",
        "cluster.looker.upstream_rq_total",
    ] {
        let count = gw.envoy_counter(counter).await;
        assert_eq!(
            count, 0,
            "{what}: {counter} is {count}: the filter let Envoy route a request to Looker"
        );
    }
}

/// Whatever the markers say: no request at Looker carries a credential of the client's.
async fn assert_no_client_credential_reached_looker(gw: &Gateway) {
    for request in gw.looker_requests().await {
        let everything = request.to_string();
        for secret in ["Bearer", CLIENT_ACCESS_TOKEN, "client-cookie"] {
            assert!(
                !everything.contains(secret),
                "{secret:?} reached Looker: {request:#}"
            );
        }
    }
}

/// A request Looker received through the gateway: with the broker's Looker token, and
/// nothing of the client's credentials or trailers.
fn assert_verified(request: &Value, looker_token: &str, jwt: &str) {
    let marker = request["headers"][MARKER].as_str().unwrap_or_default();
    assert_eq!(
        request["headers"]["authorization"].as_str(),
        Some(format!("token {looker_token}").as_str()),
        "{marker}: Looker must get the broker's token: {request:#}"
    );
    let trailers = &request["trailers"];
    assert!(
        trailers.is_object(),
        "{marker}: the simulator records trailers in /__sim/requests: {request:#}"
    );
    assert_eq!(
        trailers,
        &json!({}),
        "{marker}: no client trailer may reach Looker: {request:#}"
    );
    let everything = request.to_string();
    for secret in [jwt, "Bearer", CLIENT_ACCESS_TOKEN, "client-cookie"] {
        assert!(
            !everything.contains(secret),
            "{marker}: {secret:?} reached Looker: {request:#}"
        );
    }
}

/// Polls `probe` until `done` holds, for at most [`STATE_DEADLINE`].
async fn wait_until<T: Debug, F: Future<Output = T>>(
    what: &str,
    probe: impl Fn() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + STATE_DEADLINE;
    loop {
        let value = probe().await;
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {STATE_DEADLINE:?} (last: {value:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- a body a rule inspects ----

/// The demo plugin, with alice's inline queries guarded (first rule, so it wins).
fn guarded_plugin() -> Value {
    let mut plugin = demo_plugin_config();
    let rules = plugin["policy"]["rules"].as_array_mut().expect("rules");
    rules.insert(
        0,
        json!({"name": "guarded-queries", "operations": ["run_inline_query"],
               "when": [{"claim": "sub", "equals": "alice"}],
               "query": {"models": ["thelook"], "max_limit": 100},
               "allow": {"role": "analyst"}}),
    );
    plugin
}

async fn trailers_end_a_guarded_body(config: Config) {
    let gw = Gateway::start_with(Options {
        plugin: Some(guarded_plugin()),
        ..config.options()
    })
    .await;
    let jwt = tokens::valid("alice");
    let bearer = format!("Bearer {jwt}");
    let looker_token = gw.broker_token("analyst").await;
    for wire in WIRES {
        // The disallowed model is in the last DATA frame or chunk only.
        let marker = format!("{wire:?} query on a disallowed model");
        let bad = split_at_model(&query("finance"), "finance");
        let reply = gw
            .send_with_trailers(
                wire,
                "POST",
                &target(),
                &client_headers(&bearer, &marker),
                &[&bad[0], &bad[1]],
                CLIENT_TRAILERS,
            )
            .await;
        let body = assert_refused(&gw, &reply, &marker, (403, "forbidden")).await;
        assert_eq!(body["rule"], "guarded-queries", "{marker}: {body}");
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("query.model"), "{marker}: {body}");

        let marker = format!("{wire:?} allowed query");
        let good = split_at_model(&query("thelook"), "thelook");
        let reply = gw
            .send_with_trailers(
                wire,
                "POST",
                &target(),
                &client_headers(&bearer, &marker),
                &[&good[0], &good[1]],
                CLIENT_TRAILERS,
            )
            .await;
        assert_eq!(reply.status, 200, "{marker}: body {}", reply.body);
        let seen = looker_saw(&gw, &marker).await;
        assert_eq!(seen.len(), 1, "{marker}: Looker saw {seen:#?}");
        assert_eq!(seen[0]["path"], QUERY, "{marker}");
        assert_verified(&seen[0], &looker_token, &jwt);
    }
    assert_no_client_credential_reached_looker(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_end_an_awaited_query_body_and_the_body_is_judged() {
    trailers_end_a_guarded_body(Config::Shipped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_end_an_awaited_query_body_and_the_body_is_judged_with_http1_trailers_enabled() {
    trailers_end_a_guarded_body(Config::Http1TrailersEnabled).await;
}

// ---- a key refetch for an unknown kid ----

async fn trailers_during_a_key_refetch(config: Config) {
    let idp_latency = Duration::from_secs(1);
    let gw = Gateway::start_with(Options {
        idp_latency,
        ..config.options()
    })
    .await;
    let refetches = format!("wasmcustom.lookergate.jwks.unknown_kid_refetch.{DEMO_ISSUER_METRIC}");
    // Signed with the demo key, but naming a kid the IdP never published.
    let bearer = format!("Bearer {}", tokens::unknown_kid("alice"));
    // Both requests at once: one refetch (at most one per 30 s) holds both, whichever
    // worker each landed on.
    let mut requests = Vec::new();
    for wire in WIRES {
        let marker = format!("{wire:?} request with an unknown kid");
        let headers = client_headers(&bearer, &marker);
        let mut request = gw.open_request(wire, "POST", &target(), &headers).await;
        request.send_data(&query("thelook")).await;
        requests.push((marker, request));
    }
    wait_until(
        "the unknown kid's key refetch",
        || gw.envoy_counter(&refetches),
        |&count| count >= 1,
    )
    .await;
    // The refetch takes the IdP's latency: the trailers arrive while the filter waits.
    for (_, request) in &mut requests {
        request.send_trailers(CLIENT_TRAILERS).await;
    }
    let mut replies = Vec::new();
    for (marker, request) in requests {
        replies.push((marker, request.reply().await));
    }
    for (marker, reply) in &replies {
        let body = assert_refused(&gw, reply, marker, (401, "invalid_token")).await;
        assert_invalid_token(reply);
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("unknown_kid"), "{marker}: {body}");
        assert!(
            reply.elapsed >= idp_latency,
            "{marker}: refused after {:?}, before the refetch could finish: the filter did \
             not wait for the keys, so this request proves nothing about trailers",
            reply.elapsed
        );
    }
    assert_envoy_never_called_looker(&gw, "requests with an unknown kid").await;
    assert_no_client_credential_reached_looker(&gw).await;
    assert_eq!(
        gw.broker_calls().await,
        0,
        "no broker call for a forged token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_never_resume_a_request_waiting_for_a_key_refetch() {
    trailers_during_a_key_refetch(Config::Shipped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_never_resume_a_request_waiting_for_a_key_refetch_with_http1_trailers_enabled() {
    trailers_during_a_key_refetch(Config::Http1TrailersEnabled).await;
}

// ---- the broker ----

async fn trailers_while_the_broker_is_silent(config: Config) {
    let gw = Gateway::start_with(Options {
        broker: BrokerKind::Silent,
        ..config.options()
    })
    .await;
    let bearer = format!("Bearer {}", tokens::valid("alice"));
    for (n, wire) in (1..).zip(WIRES) {
        let marker = format!("{wire:?} request waiting for the broker");
        let headers = client_headers(&bearer, &marker);
        let mut request = gw.open_request(wire, "POST", &target(), &headers).await;
        request.send_data(&query("thelook")).await;
        // Allowed; the filter holds the request until the (silent) broker answers.
        wait_until(
            &format!("{marker}: the broker call"),
            || gw.broker_calls(),
            |&calls| calls >= n,
        )
        .await;
        request.send_trailers(CLIENT_TRAILERS).await;
        let reply = request.reply().await;
        let body = assert_refused(&gw, &reply, &marker, (503, "broker_unavailable")).await;
        // Answered at the broker timeout (from the request's start, with some slack).
        let limit = BROKER_TIMEOUT + Duration::from_secs(2);
        assert!(
            reply.elapsed <= limit,
            "{marker}: 503 after {:?}, more than {limit:?}: {body}",
            reply.elapsed
        );
        assert_envoy_never_called_looker(&gw, &marker).await;
    }
    assert_no_client_credential_reached_looker(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_never_resume_a_request_waiting_for_the_broker() {
    trailers_while_the_broker_is_silent(Config::Shipped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_never_resume_a_request_waiting_for_the_broker_with_http1_trailers_enabled() {
    trailers_while_the_broker_is_silent(Config::Http1TrailersEnabled).await;
}

async fn trailers_while_the_broker_is_down(config: Config) {
    let gw = Gateway::start_with(Options {
        broker: BrokerKind::Down,
        ..config.options()
    })
    .await;
    let bearer = format!("Bearer {}", tokens::valid("alice"));
    for wire in WIRES {
        let marker = format!("{wire:?} request to a gateway whose broker is down");
        // In one write: the trailers are decoded before the failed connection to the
        // broker can be reported, so they arrive while the filter waits.
        let reply = gw
            .send_at_once_with_trailers(
                wire,
                "POST",
                &target(),
                &client_headers(&bearer, &marker),
                &[&query("thelook")],
                CLIENT_TRAILERS,
            )
            .await;
        assert_refused(&gw, &reply, &marker, (503, "broker_unavailable")).await;
        assert_envoy_never_called_looker(&gw, &marker).await;
    }
    assert_no_client_credential_reached_looker(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_never_resume_a_request_whose_broker_is_down() {
    trailers_while_the_broker_is_down(Config::Shipped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_never_resume_a_request_whose_broker_is_down_with_http1_trailers_enabled() {
    trailers_while_the_broker_is_down(Config::Http1TrailersEnabled).await;
}

// ---- after the decision ----

/// Trailers that come after the filter forwarded the request (Looker already has its
/// head) are the client's all the same: they must not reach Looker either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_trailers_never_reach_looker_after_the_request_was_forwarded() {
    let gw = Gateway::start_with(Config::Http1TrailersEnabled.options()).await;
    let jwt = tokens::valid("alice");
    let bearer = format!("Bearer {jwt}");
    let looker_token = gw.broker_token("analyst").await;
    for wire in WIRES {
        let marker = format!("{wire:?} forwarded query");
        let headers = client_headers(&bearer, &marker);
        let body = split_at_model(&query("thelook"), "thelook");
        let mut request = gw.open_request(wire, "POST", &target(), &headers).await;
        request.send_data(&body[0]).await;
        // Allowed by unguarded-queries (no body inspected): forwarded once the broker
        // answered, while the body is still coming.
        wait_until(
            &format!("{marker}: its head at Looker"),
            || looker_saw(&gw, &marker),
            |seen| !seen.is_empty(),
        )
        .await;
        request.send_data(&body[1]).await;
        request.send_trailers(CLIENT_TRAILERS).await;
        let reply = request.reply().await;
        assert_eq!(reply.status, 200, "{marker}: body {}", reply.body);
        let seen = looker_saw(&gw, &marker).await;
        assert_eq!(seen.len(), 1, "{marker}: Looker saw {seen:#?}");
        assert_verified(&seen[0], &looker_token, &jwt);
    }
    assert_no_client_credential_reached_looker(&gw).await;
}
