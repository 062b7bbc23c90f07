//! Issue 3 through the real Envoy: per-user identities (Looker sudo), a principal Looker
//! does not know, Looker failing the broker's logins, and no secret in any log.

use std::time::Duration;

use serde_json::{json, Value};

use lookergate_cli::replace_once;

use crate::harness::{
    demo_plugin_config, envoy_refusing, Gateway, Options, BROKER_TIMEOUT, GATEWAY_CREDENTIAL,
};
use crate::{assert_gateway_error, header, tokens, DASHBOARD};

/// The demo's API3 secrets (DESIGN.md): none may ever appear in a log.
const DEMO_SECRETS: &[&str] = &[
    "demo-admin-secret",
    "demo-analyst-secret",
    "demo-viewer-secret",
    GATEWAY_CREDENTIAL,
];

/// The Looker token a forwarded request carried (`Authorization: token X`).
fn looker_token_of(request: &Value) -> String {
    header(request, "authorization")
        .and_then(|v| v.strip_prefix("token "))
        .unwrap_or_else(|| panic!("forwarded without a Looker token: {request}"))
        .to_owned()
}

/// A gateway whose first rule lets anyone with an email reach `GET /user` as themselves.
async fn gateway_with_everyone_as_themselves() -> Gateway {
    let mut plugin = demo_plugin_config();
    let rules = plugin["policy"]["rules"].as_array_mut().unwrap();
    rules.insert(
        0,
        json!({"name": "everyone-as-themselves", "operations": ["me"],
               "when": [{"claim": "email", "exists": true}, {"claim": "sub", "equals": "mallory"}],
               "allow": {"user": {"claim": "email", "credential_type": "email"}}}),
    );
    Gateway::start_with(Options {
        plugin: Some(plugin),
        ..Options::default()
    })
    .await
}

fn mallory() -> String {
    tokens::with("alice", |s| {
        s.sub = "mallory".to_owned();
        s.email = "mallory@example.com".to_owned();
        s.groups = vec![];
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carol_reaches_looker_as_herself_and_alice_as_the_analyst_role() {
    let gw = Gateway::start().await;
    let carol = gw.get("/api/4.0/user", Some(&tokens::valid("carol"))).await;
    assert_eq!(carol.status, 200, "body: {}", carol.body);
    let me = carol.json();
    assert_eq!(me["id"], "203", "Looker answered for someone else: {me}");
    assert_eq!(me["email"], "carol@example.com");

    let alice = gw.get("/api/4.0/user", Some(&tokens::valid("alice"))).await;
    assert_eq!(alice.status, 200, "body: {}", alice.body);
    assert_eq!(
        alice.json()["id"],
        "101",
        "alice goes as svc-analyst: {}",
        alice.body
    );

    // What Looker saw: the broker looking carol up by email (with its admin session),
    // then two calls of GET /user, each with its own broker-issued token.
    let (lookups, seen): (Vec<Value>, Vec<Value>) =
        gw.forwarded_requests().await.into_iter().partition(|r| {
            r["path"]
                .as_str()
                .unwrap()
                .starts_with("/api/4.0/users/credential/")
        });
    let lookups: Vec<&str> = lookups
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        lookups,
        ["/api/4.0/users/credential/email/carol@example.com"]
    );
    let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["/api/4.0/user", "/api/4.0/user"],
        "Looker saw: {seen:#?}"
    );
    let (carol_token, alice_token) = (looker_token_of(&seen[0]), looker_token_of(&seen[1]));
    assert_ne!(
        carol_token, alice_token,
        "carol and alice must not share a Looker token"
    );
    for request in &seen {
        assert!(
            !request.to_string().contains("eyJ"),
            "a JWT reached Looker: {request}"
        );
    }

    // How the broker got carol's token: admin login, then sudo as user 203.
    let logins = gw.looker_logins().await;
    assert!(
        logins
            .iter()
            .any(|l| l["client_id"] == "demo-admin-id" && l["ok"] == true),
        "no admin login: {logins:#?}"
    );
    assert!(
        logins
            .iter()
            .any(|l| l["sudo_user_id"] == "203" && l["ok"] == true),
        "no sudo login as carol (203): {logins:#?}"
    );

    // What the broker was asked: carol's identity by email, with the request id.
    let issued = gw.broker_events("token_issued");
    let for_carol: Vec<&Value> = issued.iter().filter(|e| e["subject"] == "carol").collect();
    assert_eq!(for_carol.len(), 1, "broker audit lines: {issued:#?}");
    assert_eq!(
        for_carol[0]["identity"],
        json!({"kind": "user", "credential_type": "email", "credential_id": "carol@example.com"})
    );
    assert_eq!(
        for_carol[0]["request_id"].as_str(),
        carol.header("x-request-id").as_deref(),
        "the broker's audit line names the gateway's request id"
    );
    assert!(issued
        .iter()
        .any(|e| e["subject"] == "alice"
            && e["identity"] == json!({"kind": "role", "name": "analyst"})));

    // And the gateway's own audit record.
    let log = gw.access_log(2).await;
    let carol_line = log
        .iter()
        .find(|l| l["lookergate_subject"] == "carol")
        .unwrap_or_else(|| panic!("no access log line for carol: {log:#?}"));
    assert_eq!(carol_line["lookergate_rule"], "carol-reads-as-herself");
    assert_eq!(
        carol_line["lookergate_identity"],
        "user:email:carol@example.com"
    );
    assert_eq!(carol_line["lookergate_operation"], "me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_unknown_to_looker_gets_403_no_looker_user() {
    let gw = gateway_with_everyone_as_themselves().await;
    let reply = gw.get("/api/4.0/user", Some(&mallory())).await;
    let body = assert_gateway_error(&reply, 403);
    assert_eq!(body["error"], "forbidden", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("no_looker_user"),
        "{body}"
    );
    assert_eq!(body["rule"], "everyone-as-themselves", "{body}");

    // Looker saw only the broker's lookup of the email, never the client's call.
    let seen = gw.forwarded_requests().await;
    assert!(
        seen.iter().all(|r| r["path"]
            .as_str()
            .unwrap()
            .starts_with("/api/4.0/users/credential/email/")),
        "the refused request reached Looker: {seen:#?}"
    );
    assert!(!seen.is_empty(), "the broker should have looked mallory up");
    let logins = gw.looker_logins().await;
    assert!(
        logins.iter().all(|l| l["sudo_user_id"].is_null()),
        "no sudo login for an unknown user: {logins:#?}"
    );
    let failures = gw.broker_events("request_failed");
    assert!(
        failures.iter().any(|f| f["error"] == "no_looker_user"),
        "broker log: {failures:#?}"
    );
    assert!(gw.broker_events("token_issued").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looker_5xx_at_login_is_retried_by_the_broker() {
    let gw = Gateway::start().await;
    // 500s (no Retry-After): retried with backoff within the broker's budget.
    gw.sim_faults(json!({"login_status": 500, "count": 2}))
        .await;
    let reply = gw.get(DASHBOARD, Some(&tokens::valid("alice"))).await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    assert!(reply.elapsed < BROKER_TIMEOUT, "took {:?}", reply.elapsed);
    // A 503 with `Retry-After: 1`: retried once that second has passed.
    gw.sim_faults(json!({"login_status": 503, "count": 1}))
        .await;
    let reply = gw.get(DASHBOARD, Some(&tokens::valid("bob"))).await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    assert!(reply.elapsed < BROKER_TIMEOUT, "took {:?}", reply.elapsed);
    let logins = gw.looker_logins().await;
    let statuses: Vec<u64> = logins
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [500, 500, 200, 503, 200],
        "login attempts: {logins:#?}"
    );
    assert_eq!(gw.forwarded_requests().await.len(), 2);
    assert_eq!(
        gw.broker_calls().await,
        2,
        "one broker call per identity; the retries are the broker's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looker_429_at_login_is_retried_after_retry_after() {
    let gw = Gateway::start().await;
    // The simulator sends `Retry-After: 1` with a 429.
    gw.sim_faults(json!({"login_status": 429, "count": 1}))
        .await;
    let reply = gw.get(DASHBOARD, Some(&tokens::valid("bob"))).await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    let logins = gw.looker_logins().await;
    let statuses: Vec<u64> = logins
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [429, 200], "login attempts: {logins:#?}");
    assert!(
        reply.elapsed >= Duration::from_millis(900),
        "the broker retried after {:?}, before Looker's Retry-After of 1s",
        reply.elapsed
    );
    assert!(reply.elapsed < BROKER_TIMEOUT, "took {:?}", reply.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looker_failing_every_login_gives_503_naming_looker() {
    let gw = Gateway::start().await;
    gw.sim_faults(json!({"login_status": 500, "count": 1000}))
        .await;
    let reply = gw.get(DASHBOARD, Some(&tokens::valid("alice"))).await;
    let body = assert_gateway_error(&reply, 503);
    assert_eq!(body["error"], "broker_unavailable", "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("Looker"),
        "the reason should say Looker is the problem: {body}"
    );
    assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
    let limit = BROKER_TIMEOUT + Duration::from_secs(1);
    assert!(reply.elapsed <= limit, "503 after {:?}", reply.elapsed);
    assert!(
        gw.forwarded_requests().await.is_empty(),
        "nothing may reach Looker"
    );
    let logins = gw.looker_logins().await;
    assert!(logins.len() >= 2, "the broker should retry: {logins:#?}");
    assert!(logins.iter().all(|l| l["ok"] == false));
    let failures = gw.broker_events("request_failed");
    assert!(
        failures.iter().any(|f| f["error"] == "looker_unavailable"),
        "broker log: {failures:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_appears_in_any_log() {
    let gw = gateway_with_everyone_as_themselves().await;
    let jwts: Vec<String> = vec![
        tokens::valid("alice"),
        tokens::valid("bob"),
        tokens::valid("carol"),
        tokens::valid("eve"),
        tokens::expired("alice"),
        tokens::tampered("eve", json!({"groups": ["analysts"]})),
        mallory(),
    ];
    let mut requests = 0;
    for jwt in &jwts {
        for path in [DASHBOARD, "/api/4.0/user"] {
            gw.get(&format!("{path}?access_token={jwt}"), Some(jwt))
                .await;
            requests += 1;
        }
    }
    // A revoked Looker token, so the invalidation path logs too, and a failing login
    // (retried) when the broker logs in again for it.
    let seen = gw.forwarded_requests().await;
    let analyst = seen
        .iter()
        .find_map(|r| header(r, "authorization").map(str::to_owned))
        .expect("something was forwarded");
    let analyst = analyst.strip_prefix("token ").unwrap().to_owned();
    assert_eq!(gw.sim_revoke(&analyst).await, 204);
    gw.sim_faults(json!({"login_status": 500, "count": 1}))
        .await;
    for _ in 0..2 {
        gw.get(DASHBOARD, Some(&jwts[0])).await;
        requests += 1;
    }

    let mut looker_tokens: Vec<String> = gw
        .forwarded_requests()
        .await
        .iter()
        .filter_map(|r| {
            header(r, "authorization")
                .and_then(|v| v.strip_prefix("token "))
                .map(str::to_owned)
        })
        .collect();
    looker_tokens.push(gw.broker_token("analyst").await);
    looker_tokens.push(gw.broker_token("viewer").await);
    looker_tokens.sort();
    looker_tokens.dedup();
    assert!(
        looker_tokens.len() >= 3,
        "expected several Looker tokens: {looker_tokens:?}"
    );

    let flushed = gw.access_log(requests).await; // wait for Envoy to flush its access log
    assert_eq!(
        flushed.len(),
        requests,
        "every request has its access log line"
    );
    let mut secrets: Vec<(String, String)> = DEMO_SECRETS
        .iter()
        .map(|s| ("secret".to_owned(), (*s).to_owned()))
        .collect();
    secrets.extend(
        looker_tokens
            .into_iter()
            .map(|t| ("Looker token".to_owned(), t)),
    );
    for jwt in &jwts {
        secrets.push(("JWT".to_owned(), jwt.clone()));
        // The signature alone identifies a JWT too.
        secrets.push((
            "JWT signature".to_owned(),
            jwt.rsplit('.').next().unwrap().to_owned(),
        ));
    }
    let logs = gw.captured_logs();
    assert!(
        logs.len() >= 4,
        "logs captured: {:?}",
        logs.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    let mut leaks = Vec::new();
    for (log, text) in &logs {
        for (kind, secret) in &secrets {
            if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
                leaks.push(format!("{kind} in {log}: {line}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets in logs:\n{}", leaks.join("\n"));
}

/// The demo plugin with its broker credential read from the Wasm VM's environment.
fn plugin_with_credential_from_the_environment() -> Value {
    let mut plugin = demo_plugin_config();
    let broker = plugin["broker"].as_object_mut().unwrap();
    assert!(
        broker.remove("credential").is_some(),
        "the demo has an inline credential"
    );
    broker.insert(
        "credential_env".to_owned(),
        json!("LOOKERGATE_BROKER_CREDENTIAL"),
    );
    plugin
}

/// The demo's Wasm VM gets `LOOKERGATE_BROKER_CREDENTIAL` = the demo credential, as
/// `vm_config.environment_variables` (WASI environment variables of the VM).
fn vm_with_the_credential_variable(yaml: String) -> String {
    let line = yaml
        .lines()
        .find(|l| l.trim() == "runtime: envoy.wasm.runtime.v8")
        .expect("the demo's vm_config")
        .to_owned();
    let indent = &line[..line.len() - line.trim_start().len()];
    let edited = format!(
        "{line}\n{indent}environment_variables:\n{indent}  key_values: {{LOOKERGATE_BROKER_CREDENTIAL: {GATEWAY_CREDENTIAL}}}"
    );
    replace_once(&yaml, &line, &edited).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_credential_comes_from_the_wasm_vms_environment() {
    let gw = Gateway::start_with(Options {
        plugin: Some(plugin_with_credential_from_the_environment()),
        envoy_yaml_edit: Some(vm_with_the_credential_variable),
        ..Options::default()
    })
    .await;
    let alice = gw.get("/api/4.0/user", Some(&tokens::valid("alice"))).await;
    assert_eq!(
        alice.status, 200,
        "the broker accepts the credential from the environment: {}",
        alice.body
    );
    assert_eq!(
        alice.json()["id"],
        "101",
        "alice goes as svc-analyst: {}",
        alice.body
    );
    assert_eq!(gw.broker_calls().await, 1, "one token from the broker");
    for (name, log) in gw.captured_logs() {
        assert!(
            !log.contains(GATEWAY_CREDENTIAL),
            "{name} shows the broker credential"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_variable_missing_from_the_vm_stops_the_filter_from_starting() {
    // The demo VM without environment_variables: the variable is not there.
    let log = envoy_refusing(plugin_with_credential_from_the_environment()).await;
    assert!(
        log.contains("broker.credential_env")
            && log.contains("LOOKERGATE_BROKER_CREDENTIAL is not set"),
        "Envoy's log must name the field and the variable:\n{log}"
    );
}
