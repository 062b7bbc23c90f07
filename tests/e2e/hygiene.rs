//! Issue 12 item 8: request headers a client may not set. Envoy's router obeys
//! `x-envoy-*` request headers (retries, timeouts) and Looker may trust `forwarded` and
//! `x-forwarded-*`; the gateway removes the client's copies, so Looker sees only what
//! Envoy itself appends (`x-forwarded-for` under `use_remote_address: true`).
//!
//! Envoy cleans the retry and timeout headers itself, but only from requests it deems
//! external. Behind a load balancer on an internal network (`internal_address_config`;
//! older Envoys took loopback and RFC 1918 peers as internal by default) a request is
//! internal and Envoy keeps them; the tests "from a trusted peer" run Envoy so, which
//! leaves the filter as the only guard.

use lookergate_cli::replace_once;
use serde_json::{json, Value};

use crate::harness::{Gateway, Options, Reply, Wire};
use crate::tokens;

const USER: &str = "/api/4.0/user";
const QUERY: &str = "/api/4.0/queries/run/json";

/// What a hostile client adds to an otherwise valid request.
const CLIENT_HEADERS: &[(&str, &str)] = &[
    ("x-envoy-retry-on", "5xx"),
    ("x-envoy-max-retries", "3"),
    ("x-envoy-upstream-rq-timeout-ms", "1"),
    ("x-envoy-original-path", "/api/4.0/users"),
    ("forwarded", "for=6.6.6.6;host=evil"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-port", "1"),
    ("x-forwarded-prefix", "/evil"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-real-ip", "6.6.6.6"),
];

/// Envoy's own verdict on where a request came from: a client's `x-forwarded-for` sways
/// it before any filter runs, so it may differ between two requests of one client.
const ENVOY_VERDICT_HEADERS: &[&str] = &["x-envoy-internal", "x-envoy-external-address"];

/// The demo's Envoy as it runs behind a load balancer on an internal network:
/// `use_remote_address: true` (what item 8 ships) and the tests' peer, 127.0.0.1, an
/// internal address. A request arriving without `x-forwarded-for` is then internal to
/// Envoy, which keeps its `x-envoy-*` headers.
fn peer_is_internal(yaml: String) -> String {
    let line = yaml
        .lines()
        .find(|l| l.trim() == "stat_prefix: looker_api")
        .expect("the demo's connection manager")
        .to_owned();
    let indent = &line[..line.len() - line.trim_start().len()];
    let mut settings = vec![
        format!("{indent}internal_address_config:"),
        format!("{indent}  cidr_ranges: [{{address_prefix: 127.0.0.0, prefix_len: 8}}]"),
    ];
    if !yaml.contains("use_remote_address: true") {
        settings.push(format!("{indent}use_remote_address: true"));
    }
    let edited = format!("{line}\n{}", settings.join("\n"));
    replace_once(&yaml, &line, &edited).unwrap_or_else(|e| panic!("{e}"))
}

async fn start_with_trusted_peer() -> Gateway {
    Gateway::start_with(Options {
        envoy_yaml_edit: Some(peer_is_internal),
        ..Options::default()
    })
    .await
}

/// The one request that reached Looker.
async fn the_forwarded_request(gw: &Gateway) -> Value {
    let seen = gw.forwarded_requests().await;
    let headers: Vec<Value> = seen.iter().map(redacted).collect();
    assert_eq!(
        seen.len(),
        1,
        "Looker saw requests with these headers: {headers:#?}"
    );
    seen.into_iter().next().expect("one request")
}

fn with_headers(
    mut request: reqwest::RequestBuilder,
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// What is wrong with the headers Looker received for the hostile request, one line per
/// finding, given what it received for a clean one. Envoy's own values (the
/// `x-forwarded-for` it appends: for a loopback peer, its host's address, not 127.0.0.1)
/// are whatever the clean request carried.
fn client_headers_that_got_through(hostile: &Value, clean: &Value) -> Vec<String> {
    let hostile = hostile["headers"].as_object().expect("recorded headers");
    let clean = clean["headers"].as_object().expect("recorded headers");
    let mut findings = Vec::new();
    for (name, value) in hostile {
        // Every name in CLIENT_HEADERS is one of these.
        let forwarding = name == "forwarded" || name.starts_with("x-forwarded-");
        let envoy = name.starts_with("x-envoy-") && !ENVOY_VERDICT_HEADERS.contains(&name.as_str());
        let text = value.as_str().unwrap_or_default();
        let carries_client_value = text.contains("6.6.6.6") || text.contains("evil");
        if (forwarding || envoy) && clean.get(name) != Some(value) || carries_client_value {
            findings.push(format!(
                "{name}: {value} (without the client's headers: {})",
                clean
                    .get(name)
                    .map_or("absent".to_owned(), Value::to_string)
            ));
        }
    }
    findings
}

/// Looker's view of a request's headers for a failure message, its token left out.
fn redacted(request: &Value) -> Value {
    let mut headers = request["headers"].clone();
    if headers.get("authorization").is_some() {
        headers["authorization"] = json!("<redacted>");
    }
    headers
}

/// Sends `/api/4.0/user` once plainly, then with `client_headers` (over HTTP/1.1, or
/// HTTP/2 with a trailer block when `wire` says so), and compares what Looker received.
async fn assert_client_headers_stop_at_the_gateway(gw: &Gateway, client_headers: &[(&str, &str)]) {
    assert_client_headers_stop_at_the_gateway_over(gw, client_headers, None).await;
}

async fn assert_client_headers_stop_at_the_gateway_over(
    gw: &Gateway,
    client_headers: &[(&str, &str)],
    wire: Option<Wire>,
) {
    let jwt = tokens::valid("alice");
    let clean = gw.get(USER, Some(&jwt)).await;
    assert_eq!(clean.status, 200, "body: {}", clean.body);
    let clean = the_forwarded_request(gw).await;
    gw.clear_looker_requests().await;

    let reply = match wire {
        None => {
            let request = gw.client.get(gw.url(USER)).bearer_auth(&jwt);
            gw.send(with_headers(request, client_headers)).await
        }
        Some(wire) => {
            let bearer = format!("Bearer {jwt}");
            let mut headers = vec![("authorization", bearer.as_str())];
            headers.extend_from_slice(client_headers);
            gw.send_with_trailers(
                wire,
                "GET",
                USER,
                &headers,
                &[],
                &[("x-client-trailer", "1")],
            )
            .await
        }
    };

    // What Looker saw first: a request cut by the client's timeout still reached it.
    let seen = the_forwarded_request(gw).await;
    let findings = client_headers_that_got_through(&seen, &clean);
    assert!(
        findings.is_empty(),
        "client headers reached Looker:\n  {}\nall headers: {:#}\nwithout the client's: {:#}",
        findings.join("\n  "),
        redacted(&seen),
        redacted(&clean)
    );
    assert_eq!(seen["path"], USER);
    assert_eq!(reply.status, 200, "body: {}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_envoy_and_forwarding_headers_do_not_reach_looker() {
    assert_client_headers_stop_at_the_gateway(&Gateway::start().await, CLIENT_HEADERS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_envoy_and_forwarding_headers_do_not_reach_looker_over_http2() {
    assert_client_headers_stop_at_the_gateway_over(
        &Gateway::start().await,
        CLIENT_HEADERS,
        Some(Wire::Http2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_envoy_and_forwarding_headers_do_not_reach_looker_from_a_trusted_peer() {
    // Without the client's `x-forwarded-for`, which would make Envoy deem the request
    // external and clean some `x-envoy-*` headers itself.
    let headers: Vec<(&str, &str)> = CLIENT_HEADERS
        .iter()
        .copied()
        .filter(|(name, _)| *name != "x-forwarded-for")
        .collect();
    assert_client_headers_stop_at_the_gateway(&start_with_trusted_peer().await, &headers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_retry_headers_do_not_make_envoy_retry_a_failed_query_from_a_trusted_peer() {
    let gw = start_with_trusted_peer().await;
    let jwt = tokens::valid("alice");
    // The analyst's Looker token is fetched first, so the fault below meets the query.
    assert_eq!(gw.get(USER, Some(&jwt)).await.status, 200);
    gw.clear_looker_requests().await;
    gw.sim_faults(json!({"api_status": 503, "count": 1})).await;

    let request = gw
        .client
        .post(gw.url(QUERY))
        .bearer_auth(&jwt)
        // Within the demo's guardrails (date filter, limit), so the query reaches Looker.
        .json(
            &json!({"model": "thelook", "view": "orders", "fields": ["orders.count"],
                      "filters": {"orders.created_date": "2026-01%"}, "limit": "10"}),
        );
    let retry = [("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")];
    let reply: Reply = gw.send(with_headers(request, &retry)).await;

    let attempts = gw.forwarded_requests().await;
    let retries = gw.envoy_counter("cluster.looker.upstream_rq_retry").await;
    assert_eq!(
        (attempts.len(), retries),
        (1, 0),
        "Looker saw {} attempt(s) of one query, Envoy counted {retries} retries; the client got {} {}",
        attempts.len(),
        reply.status,
        reply.body
    );
    assert_eq!(attempts[0]["method"], "POST");
    assert_eq!(reply.status, 503, "body: {}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_upstream_timeout_header_does_not_cut_the_request_from_a_trusted_peer() {
    let gw = start_with_trusted_peer().await;
    let jwt = tokens::valid("alice");
    assert_eq!(gw.get(USER, Some(&jwt)).await.status, 200);
    gw.clear_looker_requests().await;
    // Looker takes 300 ms: far more than the client's 10 ms, far less than the route's 60 s.
    gw.sim_faults(json!({"api_delay_ms": 300, "count": 1}))
        .await;

    let request = gw.client.get(gw.url(USER)).bearer_auth(&jwt);
    let timeouts = [
        ("x-envoy-upstream-rq-timeout-ms", "10"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "10"),
    ];
    let reply = gw.send(with_headers(request, &timeouts)).await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    let seen = the_forwarded_request(&gw).await;
    for (name, _) in timeouts {
        assert!(
            seen["headers"].get(name).is_none(),
            "{name} reached Looker: {:#}",
            redacted(&seen)
        );
    }
}
