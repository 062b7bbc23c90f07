//! Issue 15, items 1 and 2: the gateway's embed endpoints through real Envoy, broker and
//! simulator, over HTTP/1.1 and HTTP/2. The filter answers them itself (through the
//! broker): a session is bound to the principal that acquired it, the browser never
//! gets a `session_reference_token`, nothing under the prefix reaches Looker, and
//! Looker's own embed operations are refused through the API path.

use serde_json::{json, Value};

use crate::assert_gateway_error;
use crate::harness::{Gateway, Reply, Wire};

const PREFIX: &str = "/lookergate/embed";
const WIRES: [Wire; 2] = [Wire::Http1Chunked, Wire::Http2];

/// One request on its own connection over `wire`, its body (if any) in one piece, ended
/// by a trailer block (which the filter removes).
async fn call(
    gw: &Gateway,
    wire: Wire,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Reply {
    let authorization = format!("Bearer {token}");
    let mut headers = vec![("authorization", authorization.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let mut request = gw.open_request(wire, method, path, &headers).await;
    if let Some(body) = body {
        request.send_data(&body.to_string()).await;
    }
    request.send_trailers(&[("x-client-trailer", "1")]).await;
    request.reply().await
}

/// An answer carrying the Embed SDK's session fields, and never the reference token.
fn assert_session_tokens(reply: &Reply, acquired: bool) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        !reply.body.contains("session_reference_token\""),
        "the reference token reached the browser: {}",
        reply.body
    );
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    let tokens = reply.json();
    for field in ["api_token", "navigation_token"] {
        assert!(
            tokens[field].as_str().is_some_and(|t| !t.is_empty()),
            "{tokens}"
        );
    }
    assert!(
        tokens["session_reference_token_ttl"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{tokens}"
    );
    assert_eq!(
        tokens["authentication_token"].is_string(),
        acquired,
        "{tokens}"
    );
    tokens
}

#[tokio::test]
async fn embed_sessions_are_acquired_refreshed_and_ended_by_the_gateway_for_their_principal_only() {
    let gw = Gateway::start().await;
    let alice = gw.idp_token("alice", None).await;
    let bob = gw.idp_token("bob", None).await;
    let mut secrets = Vec::new();
    for wire in WIRES {
        let acquired = call(
            &gw,
            wire,
            "POST",
            &format!("{PREFIX}/acquire"),
            &alice,
            None,
        )
        .await;
        let tokens = assert_session_tokens(&acquired, true);

        // The SDK's refresh, with a made-up reference token the gateway ignores.
        let sdk_body = json!({
            "api_token": tokens["api_token"],
            "navigation_token": tokens["navigation_token"],
            "session_reference_token": "made-up-by-the-client",
        });
        let generate = format!("{PREFIX}/generate_tokens");
        let refreshed = call(&gw, wire, "PUT", &generate, &alice, Some(&sdk_body)).await;
        let fresh = assert_session_tokens(&refreshed, false);
        for token in [&tokens, &fresh] {
            for field in ["api_token", "navigation_token", "authentication_token"] {
                if let Some(secret) = token[field].as_str() {
                    secrets.push(secret.to_owned());
                }
            }
        }

        // Bob holding Alice's tokens reaches no session of hers: he has none.
        let stolen =
            json!({"api_token": fresh["api_token"], "navigation_token": fresh["navigation_token"]});
        let hijack = call(&gw, wire, "PUT", &generate, &bob, Some(&stolen)).await;
        let refused = assert_gateway_error(&hijack, 404);
        assert!(
            refused["reason"]
                .as_str()
                .unwrap()
                .starts_with("no_embed_session"),
            "{refused}"
        );
        for secret in [&fresh["api_token"], &fresh["navigation_token"]] {
            assert!(
                !hijack.body.contains(secret.as_str().unwrap()),
                "{wire:?}: {}",
                hijack.body
            );
        }

        let ended = call(
            &gw,
            wire,
            "DELETE",
            &format!("{PREFIX}/session"),
            &alice,
            None,
        )
        .await;
        assert_eq!(ended.status, 204, "{wire:?}: {}", ended.body);
        let after =
            json!({"api_token": fresh["api_token"], "navigation_token": fresh["navigation_token"]});
        let gone = call(&gw, wire, "PUT", &generate, &alice, Some(&after)).await;
        assert_gateway_error(&gone, 404);

        // Looker's own embed operation, with a valid token, through the API path.
        let owned = call(
            &gw,
            wire,
            "PUT",
            "/api/4.0/embed/cookieless_session/generate_tokens",
            &alice,
            Some(&sdk_body),
        )
        .await;
        let refused = assert_gateway_error(&owned, 403);
        assert!(
            refused["reason"]
                .as_str()
                .unwrap()
                .starts_with("gateway_owns_embedding"),
            "{refused}"
        );
    }

    // Nothing under the prefix reached the simulator (the broker's own calls did).
    for request in gw.looker_requests().await {
        let path = request["path"].as_str().unwrap_or_default();
        assert!(!path.starts_with(PREFIX), "forwarded: {request}");
        assert!(!path.contains("lookergate"), "forwarded: {request}");
    }
    // The access log: every embed request answered without an upstream, audited.
    let entries = gw.access_log(2 * 6).await;
    let embed: Vec<&Value> = entries
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with(PREFIX)))
        .collect();
    assert_eq!(embed.len(), 2 * 5, "{entries:#?}");
    for entry in &embed {
        assert!(
            entry["upstream"].is_null() || entry["upstream"] == "-",
            "an embed request went upstream: {entry}"
        );
        assert!(
            entry["lookergate_operation"]
                .as_str()
                .is_some_and(|o| o.starts_with("embed_")),
            "{entry}"
        );
    }
    let acquire = embed
        .iter()
        .find(|e| e["lookergate_operation"] == "embed_acquire")
        .unwrap();
    assert_eq!(acquire["lookergate_identity"], "embed:dashboards");
    assert_eq!(acquire["lookergate_rule"], "embed-dashboards");
    let record: Value =
        serde_json::from_str(acquire["lookergate_embed"].as_str().unwrap()).unwrap();
    assert_eq!(record["profile"], "dashboards");
    assert_eq!(
        record["external_user_id"],
        "https://idp.lookergate.demo|alice"
    );
    assert_eq!(record["attributes"], json!({"region": "west"}));
    // No token of any session in any log.
    for (name, log) in gw.captured_logs() {
        assert!(
            !log.contains("made-up-by-the-client"),
            "{name} logged a client token"
        );
        for secret in &secrets {
            assert!(
                !log.contains(secret.as_str()),
                "{name} logged an embed token"
            );
        }
    }
}

#[tokio::test]
async fn embed_endpoints_refuse_what_no_rule_allows_and_unknown_paths() {
    let gw = Gateway::start().await;
    let carol = gw.idp_token("carol", None).await;
    let alice = gw.idp_token("alice", None).await;
    for wire in WIRES {
        // Carol is no embed rule's principal.
        let reply = call(
            &gw,
            wire,
            "POST",
            &format!("{PREFIX}/acquire"),
            &carol,
            None,
        )
        .await;
        let body = assert_gateway_error(&reply, 403);
        assert_eq!(body["rule"], "default_deny");
        let reply = call(&gw, wire, "GET", &format!("{PREFIX}/acquire"), &alice, None).await;
        assert_gateway_error(&reply, 405);
        assert_eq!(reply.header("allow").as_deref(), Some("POST"));
        let reply = call(
            &gw,
            wire,
            "POST",
            &format!("{PREFIX}/nothing"),
            &alice,
            None,
        )
        .await;
        assert_gateway_error(&reply, 404);
        let reply = call(
            &gw,
            wire,
            "POST",
            &format!("{PREFIX}/acquire"),
            "not-a-jwt",
            None,
        )
        .await;
        assert_gateway_error(&reply, 401);
    }
    for request in gw.looker_requests().await {
        assert!(
            !request["path"]
                .as_str()
                .unwrap_or_default()
                .contains("lookergate"),
            "{request}"
        );
    }
}
