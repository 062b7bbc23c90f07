//! Global rate limits in the flow, against the recording fake host: what the service
//! is asked, and what each of its answers (or failures) does to the paused request.
use super::*;
use crate::decision::HeaderOp;
use crate::host::fake::FakeHost;
use crate::host::HeaderBlock;
use crate::testkeys::{sign_rs256, TestIssuer};
use serde_json::{json, Value};

const TOKEN_OK: &str = r#"{"access_token":"LOOKER1","token_type":"token","expires_in":3600}"#;
/// `RateLimitResponse { overall_code: OK }`.
const RLS_OK: &[u8] = &[0x08, 1];

struct Rig {
    gateway: Gateway,
    worker: Worker,
    host: FakeHost,
    idp: TestIssuer,
}

impl Rig {
    fn new(rate_limit: Value) -> Rig {
        let idp = TestIssuer::new();
        let config = json!({
            "issuers": [{"issuer": idp.iss, "audiences": ["looker-api"], "jwks": idp.jwks}],
            "policy": {"rules": [
                {"name": "fleet", "paths": ["/api/4.0/**"], "activity_types": ["db_query", "non_query"],
                 "allow": {"role": "analyst"}, "rate_limit": rate_limit}
            ]},
            "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789", "timeout": "2s"},
            "rate_limit_service": {"cluster": "lookergate_rls", "timeout": "250ms"}
        });
        let gateway = Gateway::load(config.to_string().as_bytes()).unwrap();
        let host = FakeHost::recording();
        host.set_clock_to_now();
        *host.clusters.borrow_mut() = Some(vec![
            "lookergate_broker".to_owned(),
            "lookergate_rls".to_owned(),
        ]);
        Rig {
            gateway,
            worker: Worker::default(),
            host,
            idp,
        }
    }

    /// A `db_query` operation (run_inline_query) or a plain one (me).
    fn request(&mut self, context_id: u32, query: bool) -> Next {
        let jwt = sign_rs256(
            &self.idp,
            json!({"sub": "alice", "email": "a@x", "email_verified": true, "aud": "looker-api"}),
        );
        let (method, path) = if query {
            ("POST", "/api/4.0/queries/run/json")
        } else {
            ("GET", "/api/4.0/user")
        };
        let headers = vec![
            (":method".to_owned(), method.to_owned()),
            (":path".to_owned(), path.to_owned()),
            ("x-request-id".to_owned(), format!("req-{context_id}")),
            ("authorization".to_owned(), format!("Bearer {jwt}")),
        ];
        self.host
            .set_request_headers(context_id, HeaderBlock::from_pairs(&headers));
        self.host.current.set(context_id);
        on_request(
            &self.gateway,
            &mut self.worker,
            &self.host,
            context_id,
            !query,
        )
    }

    fn grpc_answer(&mut self, callout: u32, status_code: u32, body: &[u8], current: u32) {
        *self.host.grpc_body.borrow_mut() = body.to_vec();
        self.host.current.set(current);
        on_grpc_call_answer(
            &self.gateway,
            &mut self.worker,
            &self.host,
            callout,
            status_code,
            body.len(),
            current,
        );
    }

    fn last_grpc(&self) -> u32 {
        self.host.grpc_dispatched.borrow().last().unwrap().callout
    }

    fn status(&self, context_id: u32) -> Option<u32> {
        self.host
            .replies
            .borrow()
            .get(&context_id)
            .map(|r| r.status)
    }

    fn reply_body(&self, context_id: u32) -> Value {
        serde_json::from_str(&self.host.replies.borrow()[&context_id].body).unwrap()
    }

    fn authorization(&self, context_id: u32) -> Option<String> {
        self.host
            .applied
            .borrow()
            .get(&context_id)?
            .iter()
            .rev()
            .find_map(|op| match op {
                HeaderOp::Set(n, v) if n == "authorization" => Some(v.clone()),
                _ => None,
            })
    }

    fn counter(&self, name: &str) -> u64 {
        self.host.counters.borrow().get(name).copied().unwrap_or(0)
    }
}

fn global(extra: Value) -> Value {
    let mut limit =
        json!({"per_second": 5, "burst": 10, "db_queries_per_minute": 10, "scope": "global"});
    for (k, v) in extra.as_object().unwrap() {
        limit[k] = v.clone();
    }
    limit
}

/// `RateLimitResponse { OVER_LIMIT, statuses: [OVER_LIMIT, remaining 0, reset 41.5 s] }`.
fn over_limit() -> Vec<u8> {
    let status = [
        0x08, 2, 0x18, 0, 0x22, 8, 0x08, 41, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01,
    ];
    let mut bytes = vec![0x08, 2, 0x12, status.len() as u8];
    bytes.extend_from_slice(&status);
    bytes
}

#[test]
fn a_global_limit_holds_the_request_until_the_service_says_ok() {
    let mut rig = Rig::new(global(json!({})));
    assert_eq!(rig.request(10, true), Next::Pause);
    let call = rig.host.grpc_dispatched.borrow()[0].clone();
    assert_eq!(
        (
            call.cluster.as_str(),
            call.service.as_str(),
            call.method.as_str()
        ),
        (
            "lookergate_rls",
            "envoy.service.ratelimit.v3.RateLimitService",
            "ShouldRateLimit"
        )
    );
    assert_eq!(call.context_id, 10);
    assert_eq!(call.timeout, std::time::Duration::from_millis(250));
    let principal = crate::ratelimit::principal_key(&rig.idp.iss, "alice");
    let limit = crate::ratelimit::RateLimit {
        per_second: 5.0,
        burst: 10,
        db_queries_per_minute: Some(10),
        scope: crate::ratelimit::Scope::Global,
        on_unavailable: None,
    };
    let expected = crate::rls::descriptors("fleet", &principal, &limit, true);
    assert_eq!(expected[0].entries[2].1, "db_query");
    assert_eq!(
        call.message,
        crate::rls::encode_request("lookergate", &expected)
    );
    // Undecided: no broker call, no reply; body data and trailers keep it paused.
    assert!(rig.host.dispatched.borrow().is_empty());
    assert!(rig.host.replies.borrow().is_empty());
    rig.host.current.set(10);
    *rig.host.body.borrow_mut() = b"{}".to_vec();
    assert_eq!(
        on_body(&rig.gateway, &mut rig.worker, &rig.host, 10, 2, true),
        Next::Pause
    );
    assert_eq!(
        on_trailers(&rig.gateway, &mut rig.worker, &rig.host, 10),
        Next::Pause
    );
    assert!(rig.host.resumed.borrow().is_empty());
    assert_eq!(rig.authorization(10), None);
    // OK: on to the broker, then forwarded with the Looker token.
    let callout = rig.last_grpc();
    rig.grpc_answer(callout, 0, RLS_OK, 10);
    assert_eq!(rig.host.dispatched.borrow().len(), 1, "token callout");
    assert!(
        rig.host.resumed.borrow().is_empty(),
        "still waits for the token"
    );
    let token_call = rig.host.last_dispatched().unwrap().callout;
    rig.host.current.set(10);
    on_callout(
        &rig.gateway,
        &mut rig.worker,
        &rig.host,
        token_call,
        Some(200),
        TOKEN_OK.as_bytes(),
        10,
    );
    assert_eq!(*rig.host.resumed.borrow(), vec![10]);
    assert_eq!(rig.authorization(10).as_deref(), Some("token LOOKER1"));
    assert_eq!(rig.host.audits.borrow()[&10]["lookergate_verdict"], "allow");
    assert_eq!(rig.counter("lookergate.ratelimit.global.calls"), 1);
    assert_eq!(rig.counter("lookergate.ratelimit.global.ok"), 1);
    // With the token cached, an OK answer resumes the request itself.
    rig.request(11, false);
    let callout = rig.last_grpc();
    rig.grpc_answer(callout, 0, RLS_OK, 11);
    assert_eq!(*rig.host.resumed.borrow(), vec![10, 11]);
    assert_eq!(rig.authorization(11).as_deref(), Some("token LOOKER1"));
}

#[test]
fn over_limit_is_the_local_429_with_retry_after_from_the_window_reset() {
    let mut rig = Rig::new(global(json!({})));
    rig.request(10, true);
    let callout = rig.last_grpc();
    rig.grpc_answer(callout, 0, &over_limit(), 10);
    assert_eq!(rig.status(10), Some(429));
    let reply = rig.host.replies.borrow()[&10].clone();
    assert!(reply.headers.contains(&("retry-after", "42".to_owned())));
    let body = rig.reply_body(10);
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["rule"], "fleet");
    assert!(body["reason"].as_str().unwrap().contains("db_query budget"));
    assert!(rig.host.dispatched.borrow().is_empty(), "no broker call");
    assert!(rig.host.resumed.borrow().is_empty());
    assert_eq!(rig.host.audits.borrow()[&10]["lookergate_verdict"], "deny");
    assert_eq!(
        rig.host.audits.borrow()[&10]["lookergate_reason"],
        "rate_limited"
    );
    assert_eq!(rig.counter("lookergate.ratelimit.global.over_limit"), 1);
}

#[test]
fn service_failures_deny_with_503_naming_the_rule_by_default() {
    // (how the call fails) for a rule with the default on_unavailable (deny)
    let failures: Vec<(&str, Box<dyn Fn(&mut Rig)>)> = vec![
        (
            "gRPC UNAVAILABLE",
            Box::new(|rig: &mut Rig| {
                let callout = rig.last_grpc();
                rig.grpc_answer(callout, 14, &[], 10);
            }),
        ),
        (
            "malformed answer",
            Box::new(|rig: &mut Rig| {
                let callout = rig.last_grpc();
                rig.grpc_answer(callout, 0, &[0x08], 10);
            }),
        ),
        (
            "no answer by the deadline",
            Box::new(|rig: &mut Rig| {
                rig.host.now_ms.set(rig.host.now_ms.get() + 1250);
                on_tick(&rig.gateway, &mut rig.worker, &rig.host, 1);
            }),
        ),
    ];
    for (what, fail) in failures {
        let mut rig = Rig::new(global(json!({})));
        assert_eq!(rig.request(10, false), Next::Pause);
        fail(&mut rig);
        assert_eq!(rig.status(10), Some(503), "{what}");
        let body = rig.reply_body(10);
        assert_eq!(body["error"], "rate_limit_unavailable", "{what}");
        assert_eq!(body["rule"], "fleet", "{what}");
        assert!(
            rig.host.dispatched.borrow().is_empty(),
            "{what}: no broker call"
        );
        assert!(rig.host.resumed.borrow().is_empty(), "{what}");
        assert_eq!(
            rig.counter("lookergate.ratelimit.global.failure"),
            1,
            "{what}"
        );
        assert_eq!(
            rig.counter("lookergate.ratelimit.global.unavailable_denied"),
            1,
            "{what}"
        );
        // A late answer after the request was settled changes nothing.
        let callout = rig.last_grpc();
        rig.grpc_answer(callout, 0, RLS_OK, 10);
        assert!(rig.host.resumed.borrow().is_empty(), "{what}");
    }
    // A dispatch the host refuses fails at once.
    let mut rig = Rig::new(global(json!({})));
    rig.host.fail_grpc_dispatch.set(true);
    assert_eq!(rig.request(10, false), Next::Pause);
    assert_eq!(rig.status(10), Some(503));
}

#[test]
fn on_unavailable_local_falls_back_to_the_local_bucket() {
    let mut rig = Rig::new(global(
        json!({"per_second": 1, "burst": 2, "on_unavailable": "local"}),
    ));
    rig.host.fail_grpc_dispatch.set(true);
    // Dispatch refused: the local bucket (burst 2) decides at once.
    assert_eq!(rig.request(10, false), Next::Pause, "waits for its token");
    assert_eq!(rig.status(10), None);
    assert_eq!(rig.host.dispatched.borrow().len(), 1, "broker called");
    rig.host.fail_grpc_dispatch.set(false);
    // The service answers UNAVAILABLE: the same bucket.
    rig.request(11, false);
    let callout = rig.last_grpc();
    rig.grpc_answer(callout, 14, &[], 11);
    assert_eq!(rig.status(11), None, "second token of the burst");
    rig.request(12, false);
    let callout = rig.last_grpc();
    rig.grpc_answer(callout, 14, &[], 12);
    assert_eq!(rig.status(12), Some(429), "the local bucket is empty");
    assert_eq!(
        rig.counter("lookergate.ratelimit.global.unavailable_local"),
        3
    );
    // An OK answer does not touch the local bucket.
    rig.request(13, false);
    let callout = rig.last_grpc();
    rig.grpc_answer(callout, 0, RLS_OK, 13);
    assert_eq!(rig.status(13), None);
}

#[test]
fn a_client_that_leaves_drops_its_call() {
    let mut rig = Rig::new(global(json!({})));
    rig.request(10, false);
    let callout = rig.last_grpc();
    rig.worker.leave(10);
    assert!(rig.worker.callouts.is_empty());
    rig.grpc_answer(callout, 0, RLS_OK, 10);
    assert!(rig.host.resumed.borrow().is_empty());
    assert!(rig.host.dispatched.borrow().is_empty());
    assert!(rig.host.replies.borrow().is_empty());
}
