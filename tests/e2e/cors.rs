//! Issue 15 item 0: browsers as clients. The demo's Envoy runs its CORS filter ahead of
//! lookergate with a policy for the demo web app's origins: Envoy answers their
//! preflights, every answer to them (Looker's and the gateway's own 401/403) carries
//! `Access-Control-Allow-Origin`, and any other origin gets neither: its preflight goes
//! on to lookergate, which refuses it for want of a token. Also the demo's Looker UI host
//! listener (TLS), which serves only the embed pages.

use std::process::Command;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::harness::{Gateway, Reply};
use crate::tokens;

const USER: &str = "/api/4.0/user";
const APP_ORIGIN: &str = "http://127.0.0.1:10070";
const APP_ORIGIN_BY_NAME: &str = "http://localhost:10070";
const OTHER_ORIGIN: &str = "http://evil.example:10070";

/// The two ways a browser reaches the gateway.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
}

const PROTOCOLS: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

/// Sends `method path` with `headers` over `protocol` (HTTP/2: h2c with prior
/// knowledge, the demo HCM's codec is AUTO) and returns the status and headers.
async fn request(
    gw: &Gateway,
    protocol: Protocol,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    match protocol {
        Protocol::Http1 => {
            let mut request = gw
                .client
                .request(method.parse().expect("method"), gw.url(path));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            gw.send(request).await
        }
        Protocol::Http2 => {
            let started = std::time::Instant::now();
            let socket = tokio::net::TcpStream::connect(gw.listener())
                .await
                .expect("connect to Envoy");
            let (client, connection) = h2::client::handshake(socket)
                .await
                .expect("HTTP/2 handshake with Envoy");
            let driver = tokio::spawn(connection);
            let mut request = http::Request::builder().method(method).uri(gw.url(path));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let mut client = client.ready().await.expect("HTTP/2 stream available");
            let (response, _) = client
                .send_request(request.body(()).expect("HTTP/2 request"), true)
                .expect("send HTTP/2 request");
            let response = response.await.expect("HTTP/2 response");
            let status = response.status().as_u16();
            let headers: HeaderMap = response.headers().clone();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("HTTP/2 body");
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            driver.abort();
            Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
                elapsed: started.elapsed(),
            }
        }
    }
}

fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", headers),
    ]
}

fn list_contains(reply: &Reply, header: &str, wanted: &str) -> bool {
    reply
        .header(header)
        .unwrap_or_default()
        .split(',')
        .any(|item| item.trim().eq_ignore_ascii_case(wanted))
}

async fn assert_nothing_reached_looker(gw: &Gateway) {
    let seen = gw.forwarded_requests().await;
    assert!(seen.is_empty(), "Looker must not see these: {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_from_the_demo_app_is_answered_by_envoy() {
    let gw = Gateway::start().await;
    let cases = [
        (APP_ORIGIN, "GET", USER, "authorization"),
        (
            APP_ORIGIN_BY_NAME,
            "GET",
            USER,
            "authorization, x-request-id",
        ),
        // What the Embed SDK sends: acquire, then generate_tokens with a JSON body; logout.
        (
            APP_ORIGIN,
            "POST",
            "/lookergate/embed/acquire",
            "authorization, content-type",
        ),
        (
            APP_ORIGIN,
            "PUT",
            "/lookergate/embed/generate_tokens",
            "authorization, content-type",
        ),
        (
            APP_ORIGIN,
            "DELETE",
            "/lookergate/embed/session",
            "authorization",
        ),
    ];
    for protocol in PROTOCOLS {
        for (origin, method, path, headers) in cases {
            let what = format!("{protocol:?} preflight {method} {path} from {origin}");
            let reply = request(
                &gw,
                protocol,
                "OPTIONS",
                path,
                &preflight(origin, method, headers),
            )
            .await;
            assert!(
                reply.status == 200 || reply.status == 204,
                "{what}: {} {}",
                reply.status,
                reply.body
            );
            assert_eq!(
                reply.header("access-control-allow-origin").as_deref(),
                Some(origin),
                "{what}"
            );
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                assert!(
                    list_contains(&reply, "access-control-allow-methods", method),
                    "{what}: {:?}",
                    reply.headers
                );
            }
            for header in ["authorization", "content-type", "x-request-id"] {
                assert!(
                    list_contains(&reply, "access-control-allow-headers", header),
                    "{what}: {:?}",
                    reply.headers
                );
            }
            assert_eq!(
                reply.header("access-control-max-age").as_deref(),
                Some("600"),
                "{what}"
            );
            assert_eq!(
                reply.header("access-control-allow-credentials"),
                None,
                "{what}: the browser sends a Bearer token, never cookies"
            );
        }
    }
    // Envoy answered them all: no token, yet neither lookergate nor Looker was asked.
    assert_eq!(gw.broker_calls().await, 0);
    assert_nothing_reached_looker(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_from_another_origin_gets_no_allow_origin() {
    let gw = Gateway::start().await;
    for protocol in PROTOCOLS {
        for origin in [
            OTHER_ORIGIN,
            "null",
            "http://127.0.0.1:10071",
            "https://127.0.0.1:10070",
        ] {
            let what = format!("{protocol:?} preflight from {origin}");
            let reply = request(
                &gw,
                protocol,
                "OPTIONS",
                USER,
                &preflight(origin, "GET", "authorization"),
            )
            .await;
            // Not Envoy's answer: lookergate's, which wants a token.
            assert_eq!(reply.status, 401, "{what}: {}", reply.body);
            let body: Value = serde_json::from_str(&reply.body)
                .unwrap_or_else(|e| panic!("{what}: {e}: {}", reply.body));
            assert_eq!(body["error"], "missing_token", "{what}: {body}");
            for header in [
                "access-control-allow-origin",
                "access-control-allow-methods",
                "access-control-allow-headers",
                "access-control-allow-credentials",
            ] {
                assert_eq!(reply.header(header), None, "{what}: {header}");
            }
        }
    }
    assert_nothing_reached_looker(&gw).await;
}

/// (who, request headers, expected status).
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_the_demo_app_carry_allow_origin_looker_and_gateway_alike() {
    let gw = Gateway::start().await;
    let alice = format!("Bearer {}", tokens::valid("alice"));
    let eve = format!("Bearer {}", tokens::valid("eve"));
    for protocol in PROTOCOLS {
        let cases: [Case; 3] = [
            ("alice", vec![("authorization", alice.as_str())], 200),
            // The gateway's own local replies: lookergate sends them from the decoder
            // path; the CORS filter, earlier in the chain, still encodes them.
            ("no token", vec![], 401),
            ("eve (no rule)", vec![("authorization", eve.as_str())], 403),
        ];
        for (who, headers, status) in cases {
            let what = format!("{protocol:?} GET {USER} as {who}");
            let mut with_origin = headers.clone();
            with_origin.push(("origin", APP_ORIGIN));
            let reply = request(&gw, protocol, "GET", USER, &with_origin).await;
            assert_eq!(reply.status, status, "{what}: {}", reply.body);
            assert_eq!(
                reply.header("access-control-allow-origin").as_deref(),
                Some(APP_ORIGIN),
                "{what}: {:?}",
                reply.headers
            );
            for exposed in ["x-request-id", "www-authenticate", "retry-after"] {
                assert!(
                    list_contains(&reply, "access-control-expose-headers", exposed),
                    "{what}: {:?}",
                    reply.headers
                );
            }
            assert!(reply.header("x-request-id").is_some(), "{what}");
            assert_eq!(
                reply.header("access-control-allow-credentials"),
                None,
                "{what}"
            );

            // The same request from another origin: the same answer, but nothing that
            // lets that origin's page read it.
            let mut other = headers.clone();
            other.push(("origin", OTHER_ORIGIN));
            let reply = request(&gw, protocol, "GET", USER, &other).await;
            assert_eq!(
                reply.status, status,
                "{what} from {OTHER_ORIGIN}: {}",
                reply.body
            );
            assert_eq!(
                reply.header("access-control-allow-origin"),
                None,
                "{what} from {OTHER_ORIGIN}"
            );
            assert_eq!(
                reply.header("access-control-expose-headers"),
                None,
                "{what} from {OTHER_ORIGIN}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_prefix_never_reaches_looker() {
    let gw = Gateway::start().await;
    let alice = format!("Bearer {}", tokens::valid("alice"));
    for (method, path) in [
        ("POST", "/lookergate/embed/acquire"),
        ("PUT", "/lookergate/embed/generate_tokens"),
        ("DELETE", "/lookergate/embed/session"),
        ("POST", "/lookergate/embed/sso_url"),
        ("GET", "/lookergate/embed/anything-else"),
    ] {
        let reply = request(
            &gw,
            Protocol::Http1,
            method,
            path,
            &[("authorization", &alice), ("origin", APP_ORIGIN)],
        )
        .await;
        // Whatever the gateway answers (its embed answer, or a refusal), it answers
        // itself, and the browser may read it.
        assert_eq!(
            reply.header("access-control-allow-origin").as_deref(),
            Some(APP_ORIGIN),
            "{method} {path}: {} {}",
            reply.status,
            reply.body
        );
        assert!(
            reply.header("x-envoy-upstream-service-time").is_none(),
            "{method} {path} was proxied: {}",
            reply.status
        );
    }
    let leaked: Vec<Value> = gw
        .looker_requests()
        .await
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .unwrap_or_default()
                .starts_with("/lookergate/")
        })
        .collect();
    assert!(leaked.is_empty(), "Looker received: {leaked:#?}");
}

/// `curl -k` (the demo certificate is self-signed; the tests' HTTP client has no TLS):
/// status and lower-cased header names of the last answer.
fn curl_ui(gw: &Gateway, path: &str) -> (u16, Vec<String>) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--noproxy",
            "*",
        ])
        .arg(gw.ui_url(path))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "curl {path}: no status line: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(name, _)| name.trim().to_ascii_lowercase())
        })
        .collect();
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looker_ui_host_serves_only_the_embed_paths() {
    let gw = Gateway::start().await;
    // Proxied to the simulator (whatever it answers): Envoy's router marks its answers.
    for path in [
        "/login/embed/%2Fembed%2Fdashboards%2F1",
        "/embed/dashboards/1",
        "/api/internal/embed/ping",
    ] {
        let (status, headers) = curl_ui(&gw, path);
        assert!(
            headers.iter().any(|h| h == "x-envoy-upstream-service-time"),
            "{path}: not proxied ({status}, {headers:?})"
        );
    }
    // Everything else is Envoy's 404: the API of Looker is not on the UI host.
    for path in [
        "/api/4.0/user",
        "/api/4.0/login",
        "/",
        "/lookergate/embed/acquire",
        "/embedx",
    ] {
        let (status, headers) = curl_ui(&gw, path);
        assert_eq!(status, 404, "{path}");
        assert!(
            !headers.iter().any(|h| h == "x-envoy-upstream-service-time"),
            "{path} was proxied"
        );
    }
    let elsewhere: Vec<Value> = gw
        .looker_requests()
        .await
        .into_iter()
        .filter(|r| {
            let path = r["path"].as_str().unwrap_or_default();
            !["/login/embed/", "/embed/", "/api/internal/embed/"]
                .iter()
                .any(|prefix| path.starts_with(prefix))
        })
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the UI host let these reach Looker: {elsewhere:#?}"
    );
}
