//! The embed endpoints against the fake host: each is answered by the filter itself
//! (a local reply, never a resume or a rewrite), the broker is called with the embed
//! user the profile made, and no token reaches a log line.

use std::sync::{Mutex, Once};

use serde_json::{json, Value};

use super::*;
use crate::host::fake::FakeHost;
use crate::host::HeaderBlock;
use crate::testkeys::{sign_rs256, TestIssuer};

/// Every log line of the test binary (all tests share the logger).
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOGS.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = log::set_logger(&Capture);
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn logs_mention(secret: &str) -> bool {
    LOGS.lock()
        .unwrap()
        .iter()
        .any(|line| line.contains(secret))
}

const PREFIX: &str = "/lookergate/embed";

struct Rig {
    gateway: Gateway,
    worker: Worker,
    host: FakeHost,
    idp: TestIssuer,
}

impl Rig {
    fn new() -> Rig {
        capture_logs();
        let idp = TestIssuer::new();
        let config = json!({
            "issuers": [{"issuer": idp.iss, "audiences": ["looker-api"], "jwks": idp.jwks}],
            "policy": {"rules": [
                {"name": "analysts", "paths": ["/api/4.0/**"], "allow": {"role": "analyst"}},
                {"name": "embed-dashboards", "when": [{"claim": "sub", "one_of": ["alice", "bob"]}],
                 "allow": {"embed": "dashboards"}}
            ]},
            "embed": {"profiles": {"dashboards": {
                "permissions": ["access_data", "see_user_dashboards"],
                "models": ["thelook"],
                "user_attributes": {
                    "region": {"claim": "region"},
                    "ssn": {"claim": "ssn", "required": false, "sensitive": true}
                }
            }}},
            "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789", "timeout": "2s"}
        });
        let gateway = Gateway::load(config.to_string().as_bytes()).unwrap();
        let host = FakeHost::recording();
        host.set_clock_to_now();
        *host.clusters.borrow_mut() = Some(vec!["lookergate_broker".to_owned()]);
        Rig {
            gateway,
            worker: Worker::default(),
            host,
            idp,
        }
    }

    fn send(&mut self, ctx: u32, method: &str, path: &str, claims: Value, eos: bool) -> Next {
        let mut claims = claims;
        claims["aud"] = json!("looker-api");
        let jwt = sign_rs256(&self.idp, claims);
        let headers = vec![
            (":method".to_owned(), method.to_owned()),
            (":path".to_owned(), path.to_owned()),
            ("x-request-id".to_owned(), format!("req-{ctx}")),
            ("authorization".to_owned(), format!("Bearer {jwt}")),
        ];
        self.host
            .set_request_headers(ctx, HeaderBlock::from_pairs(&headers));
        self.host.current.set(ctx);
        on_request(&self.gateway, &mut self.worker, &self.host, ctx, eos)
    }

    fn alice(&mut self, ctx: u32, method: &str, endpoint: &str, eos: bool) -> Next {
        let path = format!("{PREFIX}{endpoint}");
        self.send(
            ctx,
            method,
            &path,
            json!({"sub": "alice", "region": "west", "ssn": "123-45-6789"}),
            eos,
        )
    }

    fn body(&mut self, ctx: u32, body: &str, eos: bool) -> Next {
        self.host
            .body
            .borrow_mut()
            .extend_from_slice(body.as_bytes());
        self.host.current.set(ctx);
        let size = self.host.body.borrow().len();
        on_body(&self.gateway, &mut self.worker, &self.host, ctx, size, eos)
    }

    fn answer(&mut self, callout: u32, status: Option<u32>, body: &str) {
        self.host.current.set(ROOT);
        on_callout(
            &self.gateway,
            &mut self.worker,
            &self.host,
            callout,
            status,
            body.as_bytes(),
            ROOT,
        );
    }

    fn reply(&self, ctx: u32) -> Option<(u32, Value)> {
        let replies = self.host.replies.borrow();
        let reply = replies.get(&ctx)?;
        let body = if reply.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&reply.body).unwrap()
        };
        Some((reply.status, body))
    }

    fn header(&self, ctx: u32, name: &str) -> Option<String> {
        let replies = self.host.replies.borrow();
        replies
            .get(&ctx)?
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    fn audit(&self, ctx: u32, field: &str) -> Option<String> {
        self.host.audits.borrow().get(&ctx)?.get(field).cloned()
    }

    fn counter(&self, name: &str) -> u64 {
        self.host.counters.borrow().get(name).copied().unwrap_or(0)
    }

    /// Nothing of stream `ctx` went upstream: no rewrite, no resume.
    fn assert_not_forwarded(&self, ctx: u32) {
        assert!(!self.host.resumed.borrow().contains(&ctx), "resumed {ctx}");
        assert!(
            !self.host.applied.borrow().contains_key(&ctx),
            "headers applied to {ctx}"
        );
    }
}

const ROOT: u32 = 1;

const TOKENS: &str = r#"{"authentication_token":"AUTH-SECRET-1","authentication_token_ttl":30,
    "navigation_token":"NAV-SECRET-1","navigation_token_ttl":600,"api_token":"API-SECRET-1",
    "api_token_ttl":600,"session_reference_token_ttl":3600,
    "session_reference_token":"REF-SECRET-LEAKED-BY-BROKER"}"#;

#[test]
fn acquire_calls_the_broker_with_the_embed_user_and_answers_locally() {
    let mut rig = Rig::new();
    assert_eq!(rig.alice(10, "POST", "/acquire", true), Next::Pause);
    let sent = rig.host.last_dispatched().unwrap();
    assert_eq!(sent.cluster, "lookergate_broker");
    assert_eq!(sent.context_id, 10);
    assert_eq!(sent.header(":path"), Some("/v1/embed/acquire"));
    assert_eq!(sent.header(":method"), Some("POST"));
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer gateway-secret-0123456789")
    );
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    let iss = rig.idp.iss.clone();
    assert_eq!(
        body["principal"],
        json!({"issuer": iss, "subject": "alice"})
    );
    assert_eq!(body["profile"], "dashboards");
    assert_eq!(body["user"]["external_user_id"], format!("{iss}|alice"));
    assert_eq!(
        body["user"]["user_attributes"],
        json!({"region": "west", "ssn": "123-45-6789"})
    );
    assert_eq!(
        body["user"]["permissions"],
        json!(["access_data", "see_user_dashboards"])
    );
    assert_eq!(body["user"]["session_length"], 3600);
    assert_eq!(body["request_id"], "req-10");
    assert!(rig.reply(10).is_none(), "waits for the broker");

    // Body data meanwhile does not move the stream.
    assert_eq!(rig.body(10, "{}", true), Next::Pause);
    rig.answer(sent.callout, Some(200), TOKENS);
    let (status, answer) = rig.reply(10).unwrap();
    assert_eq!(status, 200);
    assert_eq!(answer["api_token"], "API-SECRET-1");
    assert_eq!(answer["navigation_token"], "NAV-SECRET-1");
    assert_eq!(answer["authentication_token"], "AUTH-SECRET-1");
    assert_eq!(answer["session_reference_token_ttl"], 3600);
    assert!(answer.get("session_reference_token").is_none(), "{answer}");
    assert_eq!(rig.header(10, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        rig.header(10, "content-type").as_deref(),
        Some("application/json")
    );
    rig.assert_not_forwarded(10);
    assert_eq!(rig.counter("lookergate.embed.acquire.ok"), 1);

    assert_eq!(
        rig.audit(10, "lookergate_verdict").as_deref(),
        Some("allow")
    );
    assert_eq!(
        rig.audit(10, "lookergate_operation").as_deref(),
        Some("embed_acquire")
    );
    assert_eq!(
        rig.audit(10, "lookergate_identity").as_deref(),
        Some("embed:dashboards")
    );
    assert_eq!(
        rig.audit(10, "lookergate_rule").as_deref(),
        Some("embed-dashboards")
    );
    assert_eq!(
        rig.audit(10, "lookergate_subject").as_deref(),
        Some("alice")
    );
    let record: Value = serde_json::from_str(&rig.audit(10, "lookergate_embed").unwrap()).unwrap();
    assert_eq!(
        record,
        json!({"profile": "dashboards", "external_user_id": format!("{iss}|alice"),
               "attributes": {"region": "west", "ssn": "(sensitive)"}})
    );
    // Trailers after the answer keep the stream where it is.
    rig.host.current.set(10);
    assert_eq!(
        on_trailers(&rig.gateway, &mut rig.worker, &rig.host, 10),
        Next::Pause
    );
    rig.assert_not_forwarded(10);
    for secret in [
        "AUTH-SECRET-1",
        "NAV-SECRET-1",
        "API-SECRET-1",
        "REF-SECRET-LEAKED-BY-BROKER",
        "gateway-secret-0123456789",
        "123-45-6789",
    ] {
        assert!(!logs_mention(secret), "{secret} was logged");
    }
}

#[test]
fn generate_tokens_reads_the_sdk_body_and_ignores_a_client_reference_token() {
    let mut rig = Rig::new();
    assert_eq!(rig.alice(11, "PUT", "/generate_tokens", false), Next::Pause);
    assert!(
        rig.host.dispatched.borrow().is_empty(),
        "waits for the body"
    );
    assert_eq!(
        rig.body(11, r#"{"api_token":"API-OLD","#, false),
        Next::Pause
    );
    assert!(rig.host.dispatched.borrow().is_empty());
    let rest = r#""navigation_token":"NAV-OLD","session_reference_token":"STOLEN-REF","extra":1}"#;
    assert_eq!(rig.body(11, rest, true), Next::Pause);
    let sent = rig.host.last_dispatched().unwrap();
    assert_eq!(sent.header(":path"), Some("/v1/embed/generate_tokens"));
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(body["api_token"], "API-OLD");
    assert_eq!(body["navigation_token"], "NAV-OLD");
    assert!(!sent.body.contains("STOLEN-REF"), "{}", sent.body);
    assert!(body.get("session_reference_token").is_none());
    assert_eq!(body["principal"]["subject"], "alice");
    rig.answer(sent.callout, Some(200), TOKENS);
    let (status, answer) = rig.reply(11).unwrap();
    assert_eq!(status, 200);
    assert!(answer.get("session_reference_token").is_none());
    rig.assert_not_forwarded(11);
    assert_eq!(rig.counter("lookergate.embed.generate_tokens.ok"), 1);
    for secret in ["API-OLD", "NAV-OLD", "STOLEN-REF"] {
        assert!(!logs_mention(secret), "{secret} was logged");
    }
}

#[test]
fn trailers_end_an_awaited_embed_body() {
    let mut rig = Rig::new();
    assert_eq!(rig.alice(12, "PUT", "/generate_tokens", false), Next::Pause);
    assert_eq!(
        rig.body(12, r#"{"api_token":"a","navigation_token":"n"}"#, false),
        Next::Pause
    );
    rig.host.current.set(12);
    assert_eq!(
        on_trailers(&rig.gateway, &mut rig.worker, &rig.host, 12),
        Next::Pause
    );
    assert_eq!(rig.host.dispatched.borrow().len(), 1);
    assert!(rig.host.trailers_cleared.borrow().contains(&12));
    // The callout in flight: more trailers or body never resume it.
    assert_eq!(
        on_trailers(&rig.gateway, &mut rig.worker, &rig.host, 12),
        Next::Pause
    );
    assert_eq!(rig.body(12, "", true), Next::Pause);
    rig.assert_not_forwarded(12);
}

#[test]
fn logout_answers_204_and_sso_url_the_signed_url() {
    let mut rig = Rig::new();
    assert_eq!(rig.alice(13, "DELETE", "/session", true), Next::Pause);
    let sent = rig.host.last_dispatched().unwrap();
    assert_eq!(sent.header(":path"), Some("/v1/embed/logout"));
    rig.answer(sent.callout, Some(204), "");
    let (status, body) = rig.reply(13).unwrap();
    assert_eq!((status, body), (204, Value::Null));
    assert_eq!(rig.counter("lookergate.embed.logout.ok"), 1);

    assert_eq!(rig.alice(14, "POST", "/sso_url", false), Next::Pause);
    assert_eq!(
        rig.body(14, r#"{"target_url":"/embed/dashboards/1"}"#, true),
        Next::Pause
    );
    let sent = rig.host.last_dispatched().unwrap();
    assert_eq!(sent.header(":path"), Some("/v1/embed/sso_url"));
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(body["target_url"], "/embed/dashboards/1");
    rig.answer(
        sent.callout,
        Some(200),
        r#"{"url":"https://looker.example/login/embed/x?signature=SIG-SECRET"}"#,
    );
    let (status, body) = rig.reply(14).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"url": "https://looker.example/login/embed/x?signature=SIG-SECRET"})
    );
    assert!(!logs_mention("SIG-SECRET"));
    for ctx in [13, 14] {
        rig.assert_not_forwarded(ctx);
    }

    // A target outside Looker's embed pages is refused before any broker call.
    *rig.host.body.borrow_mut() = Vec::new();
    assert_eq!(rig.alice(15, "POST", "/sso_url", false), Next::Pause);
    rig.body(15, r#"{"target_url":"/admin/users"}"#, true);
    assert_eq!(rig.reply(15).unwrap().0, 400);
    assert_eq!(rig.host.dispatched.borrow().len(), 2);
}

#[test]
fn broker_errors_become_the_gateways_json_errors() {
    let cases: [(Option<u32>, &str, u32, &str); 7] = [
        (
            Some(404),
            r#"{"error":"no_embed_session"}"#,
            404,
            "no_embed_session",
        ),
        (
            Some(501),
            r#"{"error":"embed_disabled"}"#,
            501,
            "embed_disabled",
        ),
        (
            Some(502),
            r#"{"error":"bad_credentials"}"#,
            502,
            "bad_credentials",
        ),
        (
            Some(503),
            r#"{"error":"looker_unavailable"}"#,
            503,
            "broker_unavailable",
        ),
        (
            Some(401),
            r#"{"error":"unauthorized"}"#,
            503,
            "broker_unavailable",
        ),
        (None, "", 503, "broker_unavailable"),
        (Some(200), "<html>", 503, "broker_unavailable"),
    ];
    for (status, body, want, code) in cases {
        let mut rig = Rig::new();
        rig.alice(20, "POST", "/acquire", true);
        let sent = rig.host.last_dispatched().unwrap();
        rig.answer(sent.callout, status, body);
        let (got, reply) = rig.reply(20).unwrap();
        assert_eq!(got, want, "{status:?} {body}");
        assert!(
            reply["reason"].as_str().unwrap().contains(code)
                || reply["error"] == "broker_unavailable",
            "{reply}"
        );
        assert_eq!(rig.counter(&format!("lookergate.embed.acquire.{code}")), 1);
        rig.assert_not_forwarded(20);
    }
}

#[test]
fn refusals_before_the_broker_name_what_failed() {
    let mut rig = Rig::new();
    // Wrong method: 405 with Allow.
    rig.alice(30, "GET", "/acquire", true);
    assert_eq!(rig.reply(30).unwrap().0, 405);
    assert_eq!(rig.header(30, "allow").as_deref(), Some("POST"));
    // Unknown endpoint under the prefix: 404.
    rig.alice(31, "POST", "/other", true);
    assert_eq!(rig.reply(31).unwrap().0, 404);
    // No rule for carol: default deny.
    rig.send(
        32,
        "POST",
        "/lookergate/embed/acquire",
        json!({"sub": "carol", "region": "west"}),
        true,
    );
    let (status, body) = rig.reply(32).unwrap();
    assert_eq!(status, 403);
    assert_eq!(body["rule"], "default_deny");
    // A required attribute's claim missing: 403 naming the claim.
    rig.send(
        33,
        "POST",
        "/lookergate/embed/acquire",
        json!({"sub": "bob"}),
        true,
    );
    let (status, body) = rig.reply(33).unwrap();
    assert_eq!(status, 403);
    assert_eq!(body["claim"], "region");
    assert_eq!(
        rig.audit(33, "lookergate_reason").as_deref(),
        Some("missing_claim")
    );
    assert_eq!(rig.counter("lookergate.embed.acquire.missing_claim"), 1);
    // No token: 401.
    rig.host.set_request_headers(
        34,
        HeaderBlock::from_pairs(&[
            (":method".to_owned(), "POST".to_owned()),
            (":path".to_owned(), "/lookergate/embed/acquire".to_owned()),
        ]),
    );
    rig.host.current.set(34);
    on_request(&rig.gateway, &mut rig.worker, &rig.host, 34, true);
    assert_eq!(rig.reply(34).unwrap().0, 401);
    // The broker is down.
    rig.host.fail_dispatch.set(true);
    rig.alice(35, "POST", "/acquire", true);
    assert_eq!(rig.reply(35).unwrap().0, 503);
    rig.host.fail_dispatch.set(false);
    assert!(rig.host.dispatched.borrow().is_empty());
    for ctx in 30..=35 {
        rig.assert_not_forwarded(ctx);
    }
}

#[test]
fn an_oversized_body_is_refused_and_never_forwarded() {
    let mut rig = Rig::new();
    rig.alice(40, "PUT", "/generate_tokens", false);
    let big = "x".repeat(embed_limit() + 1);
    assert_eq!(rig.body(40, &big, false), Next::Pause);
    assert_eq!(rig.reply(40).unwrap().0, 413);
    assert_eq!(rig.body(40, "more", true), Next::Pause);
    assert!(rig.host.dispatched.borrow().is_empty());
    rig.assert_not_forwarded(40);
}

fn embed_limit() -> usize {
    crate::policy::embed::MAX_BODY_BYTES
}

#[test]
fn a_client_gone_before_the_answer_gets_nothing_and_a_stuck_call_is_answered_by_the_tick() {
    let mut rig = Rig::new();
    rig.alice(50, "POST", "/acquire", true);
    let sent = rig.host.last_dispatched().unwrap();
    rig.worker.leave(50);
    rig.host.gone.borrow_mut().push(50);
    assert!(rig.worker.callouts.is_empty(), "its callout is forgotten");
    rig.answer(sent.callout, Some(200), TOKENS);
    assert!(rig.reply(50).is_none());

    rig.alice(51, "POST", "/acquire", true);
    let now = rig.host.now_ms.get();
    rig.host.now_ms.set(now + 10_000);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    assert_eq!(rig.reply(51).unwrap().0, 503);
    // The late answer finds the stream answered.
    let sent = rig.host.last_dispatched().unwrap();
    rig.answer(sent.callout, Some(200), TOKENS);
    assert_eq!(rig.reply(51).unwrap().0, 503);
    rig.assert_not_forwarded(51);
}

#[test]
fn looker_s_embed_operations_are_refused_through_the_api_path() {
    let mut rig = Rig::new();
    for (ctx, method, path) in [
        (
            60,
            "PUT",
            "/api/4.0/embed/cookieless_session/generate_tokens",
        ),
        (61, "POST", "/api/4.0/embed/cookieless_session/acquire"),
        (62, "POST", "/api/4.0/embed/sso_url"),
    ] {
        rig.send(
            ctx,
            method,
            path,
            json!({"sub": "alice", "region": "west"}),
            true,
        );
        let (status, body) = rig.reply(ctx).unwrap();
        assert_eq!(status, 403, "{path}");
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .starts_with("gateway_owns_embedding"),
            "{body}"
        );
        rig.assert_not_forwarded(ctx);
    }
    // An embed rule never decides a request outside the embed endpoints (no API rule
    // covers this path, and the embed rule that would hold for alice does not apply).
    rig.send(
        63,
        "GET",
        "/other",
        json!({"sub": "alice", "region": "west"}),
        true,
    );
    let (status, body) = rig.reply(63).unwrap();
    assert_eq!((status, body["rule"].as_str()), (403, Some("default_deny")));
}
