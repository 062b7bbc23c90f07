//! The flow against a fake host that records effects: what each request context
//! was told (rewrite + resume, or a local reply) and which callouts were made.
use super::*;
use crate::broker::MAX_RESPONSE_BYTES;
use crate::callout::Callout;
use crate::decision::HeaderOp;
use crate::host::fake::FakeHost;
use crate::host::HeaderBlock;
use crate::keys::MAX_JWKS_BYTES;
use crate::testkeys::{sign_rs256, TestIssuer};
use crate::tokens::{Flight, Waiter};
use serde_json::json;

struct Rig {
    gateway: Gateway,
    worker: Worker,
    host: FakeHost,
    idp: TestIssuer,
}

const ROOT: u32 = 1;

impl Rig {
    fn new() -> Rig {
        let idp = TestIssuer::new();
        let config = json!({
            "issuers": [{"issuer": idp.iss, "audiences": ["looker-api"], "jwks": idp.jwks}],
            "policy": {"rules": [
                {"name": "analysts", "paths": ["/api/4.0/**"], "when": [{"claim": "groups", "contains": "analysts"}], "allow": {"role": "analyst"}},
                {"name": "people", "paths": ["/api/4.0/**"], "when": [{"claim": "groups", "contains": "people"}], "allow": {"user": {}}},
                {"name": "guarded-queries", "operations": ["run_inline_query"], "when": [{"claim": "groups", "contains": "querying"}],
                 "query": {"models": ["thelook"], "max_limit": 100}, "allow": {"role": "analyst"}}
            ]},
            "max_body_bytes": 2048,
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

    fn request(&mut self, context_id: u32, groups: &[&str]) -> Next {
        self.start(context_id, groups, "GET", "/api/4.0/user", true)
    }

    fn start(
        &mut self,
        context_id: u32,
        groups: &[&str],
        method: &str,
        path: &str,
        eos: bool,
    ) -> Next {
        let jwt = sign_rs256(
            &self.idp,
            json!({"sub": "alice", "email": "a@x", "email_verified": true, "groups": groups, "aud": "looker-api"}),
        );
        let headers = vec![
            (":method".to_owned(), method.to_owned()),
            (":path".to_owned(), path.to_owned()),
            ("x-request-id".to_owned(), format!("req-{context_id}")),
            ("authorization".to_owned(), format!("Bearer {jwt}")),
        ];
        self.host
            .set_request_headers(context_id, HeaderBlock::from_pairs(&headers));
        self.host.current.set(context_id);
        on_request(&self.gateway, &mut self.worker, &self.host, context_id, eos)
    }

    fn body(&mut self, context_id: u32, body: &str, eos: bool) -> Next {
        self.host
            .body
            .borrow_mut()
            .extend_from_slice(body.as_bytes());
        self.host.current.set(context_id);
        let size = self.host.body.borrow().len();
        on_body(
            &self.gateway,
            &mut self.worker,
            &self.host,
            context_id,
            size,
            eos,
        )
    }

    fn answer(&mut self, callout: u32, status: Option<u32>, body: &str, current: u32) {
        self.host.current.set(current);
        on_callout(
            &self.gateway,
            &mut self.worker,
            &self.host,
            callout,
            status,
            body.as_bytes(),
            current,
        );
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

    fn status(&self, context_id: u32) -> Option<u32> {
        self.host
            .replies
            .borrow()
            .get(&context_id)
            .map(|r| r.status)
    }
}

const TOKEN_OK: &str = r#"{"access_token":"LOOKER1","token_type":"token","expires_in":3600}"#;

#[test]
fn concurrent_first_requests_share_one_callout_and_all_resume() {
    let mut rig = Rig::new();
    for ctx in 10..30 {
        assert_eq!(rig.request(ctx, &["analysts"]), Next::Pause);
    }
    assert_eq!(
        rig.host.dispatched.borrow().len(),
        1,
        "one broker call for 20 requests"
    );
    rig.answer(1, Some(200), TOKEN_OK, 10);
    for ctx in 10..30 {
        assert_eq!(
            rig.authorization(ctx).as_deref(),
            Some("token LOOKER1"),
            "ctx {ctx}"
        );
    }
    assert_eq!(rig.host.resumed.borrow().len(), 20);
    let audit = rig.host.audits.borrow()[&10].clone();
    assert_eq!(audit["lookergate_verdict"], "allow");
    assert_eq!(audit["lookergate_subject"], "alice");
    assert_eq!(audit["lookergate_operation"], "me");
    assert_eq!(audit["lookergate_rule"], "analysts");
    assert_eq!(audit["lookergate_identity"], "role:analyst");
    assert_eq!(audit["lookergate_groups"], "analysts");
    assert_eq!(rig.host.counters.borrow()["lookergate.decision.allow"], 20);
    assert_eq!(rig.host.counters.borrow()["lookergate.broker.calls"], 1);
    // Cached now: the next request continues at once, no callout.
    assert_eq!(rig.request(40, &["analysts"]), Next::Continue);
    assert_eq!(rig.authorization(40).as_deref(), Some("token LOOKER1"));
    assert_eq!(rig.host.dispatched.borrow().len(), 1);
}

#[test]
fn another_worker_reuses_the_shared_token() {
    let mut rig = Rig::new();
    rig.request(10, &["analysts"]);
    rig.answer(1, Some(200), TOKEN_OK, 10);
    // A fresh worker (another VM) with the same shared data.
    rig.worker = Worker::default();
    assert_eq!(rig.request(11, &["analysts"]), Next::Continue);
    assert_eq!(rig.authorization(11).as_deref(), Some("token LOOKER1"));
    assert_eq!(rig.host.dispatched.borrow().len(), 1);
}

#[test]
fn broker_failure_answers_every_waiter_with_503_and_forwards_nothing() {
    let mut rig = Rig::new();
    rig.request(10, &["analysts"]);
    rig.request(11, &["analysts"]);
    // No answer within broker.timeout: no budget is left for a retry.
    rig.host.now_ms.set(rig.host.now_ms.get() + 2_000);
    rig.answer(1, None, "", 10);
    for ctx in [10, 11] {
        assert_eq!(rig.status(ctx), Some(503));
        assert_eq!(rig.authorization(ctx), None);
    }
    assert!(rig.host.resumed.borrow().is_empty());
    // Not cached: the next request calls the broker again.
    rig.request(12, &["analysts"]);
    assert_eq!(rig.host.dispatched.borrow().len(), 2);
}

const ENVOY_CONNECT_ERROR: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";

#[test]
fn token_call_failing_on_the_way_is_retried_once_within_the_budget() {
    let mut rig = Rig::new();
    rig.request(10, &["analysts"]);
    rig.request(11, &["analysts"]);
    rig.host.now_ms.set(rig.host.now_ms.get() + 300);
    // Envoy's own 503: the replica it picked refused the connection.
    rig.answer(1, Some(503), ENVOY_CONNECT_ERROR, 10);
    let dispatched = rig.host.dispatched.borrow().clone();
    assert_eq!(dispatched.len(), 2, "one retry");
    let (first, retry) = (&dispatched[0], &dispatched[1]);
    assert_eq!(
        (&retry.cluster, &retry.body, &retry.headers),
        (&first.cluster, &first.body, &first.headers),
        "the same call"
    );
    assert_eq!(retry.context_id, 10, "sent from the owner's context");
    assert_eq!(
        retry.timeout,
        Duration::from_millis(1_700),
        "what is left of the 2s budget"
    );
    for ctx in [10, 11] {
        assert_eq!(rig.status(ctx), None, "ctx {ctx} still waits");
        assert_eq!(rig.authorization(ctx), None, "ctx {ctx}: nothing forwarded");
    }
    rig.answer(2, Some(200), TOKEN_OK, 10);
    for ctx in [10, 11] {
        assert_eq!(rig.authorization(ctx).as_deref(), Some("token LOOKER1"));
    }
    let counters = rig.host.counters.borrow();
    assert_eq!(counters["lookergate.broker.retries"], 1);
    assert_eq!(counters["lookergate.broker.calls"], 2);
    assert!(!counters
        .keys()
        .any(|k| k.starts_with("lookergate.broker.failure")));
}

#[test]
fn a_failed_retry_fails_closed_and_is_not_retried_again() {
    let mut rig = Rig::new();
    rig.request(10, &["analysts"]);
    rig.request(11, &["analysts"]);
    rig.answer(1, None, "", 10); // reset
    rig.answer(2, None, "", 10);
    assert_eq!(rig.host.dispatched.borrow().len(), 2, "one retry only");
    for ctx in [10, 11] {
        assert_eq!(rig.status(ctx), Some(503));
        assert_eq!(rig.authorization(ctx), None);
    }
    assert!(rig.host.resumed.borrow().is_empty());
    // The retry's owner left: the retry is orphaned and re-sent from the root context
    // like any other call (Envoy cancels a context's callouts with it).
    rig.request(20, &["analysts"]);
    rig.request(21, &["analysts"]);
    rig.answer(3, None, "", 20);
    rig.worker.leave(20);
    rig.host.gone.borrow_mut().push(20);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    let dispatched = rig.host.dispatched.borrow().clone();
    assert_eq!(dispatched.len(), 5);
    assert_eq!(dispatched[4].context_id, ROOT);
    rig.answer(5, Some(200), TOKEN_OK, ROOT);
    assert_eq!(rig.authorization(21).as_deref(), Some("token LOOKER1"));
}

#[test]
fn no_retry_for_a_broker_refusal_a_timeout_or_a_retry_that_cannot_be_sent() {
    // (what happens, answer status, body, ms spent before it): each is a 503 at once.
    let cases: [(&str, Option<u32>, &str, u64); 4] = [
        (
            "looker_unavailable",
            Some(503),
            r#"{"error":"looker_unavailable","message":"x"}"#,
            10,
        ),
        ("500", Some(500), "oops", 10),
        ("budget spent", None, "", 1_950),
        ("dispatch refused", Some(503), ENVOY_CONNECT_ERROR, 10),
    ];
    for (what, status, body, spent) in cases {
        let mut rig = Rig::new();
        rig.request(10, &["analysts"]);
        rig.host.now_ms.set(rig.host.now_ms.get() + spent);
        rig.host.fail_dispatch.set(what == "dispatch refused");
        rig.answer(1, status, body, 10);
        assert_eq!(rig.host.dispatched.borrow().len(), 1, "{what}");
        assert_eq!(rig.status(10), Some(503), "{what}");
        assert_eq!(rig.authorization(10), None, "{what}");
    }
}

#[test]
fn dispatch_failure_fails_closed_at_once() {
    let mut rig = Rig::new();
    rig.host.fail_dispatch.set(true);
    assert_eq!(rig.request(10, &["analysts"]), Next::Pause);
    assert_eq!(rig.status(10), Some(503));
    // No flight is left behind for the next request to join: it calls the broker.
    rig.host.fail_dispatch.set(false);
    assert_eq!(rig.request(11, &["analysts"]), Next::Pause);
    assert_eq!(rig.host.dispatched.borrow().len(), 1);
}

#[test]
fn unknown_looker_user_is_403_naming_the_rule() {
    let mut rig = Rig::new();
    rig.request(10, &["people"]);
    assert!(rig.host.dispatched.borrow()[0]
        .body
        .contains(r#""credential_id":"a@x""#));
    rig.answer(
        1,
        Some(403),
        r#"{"error":"no_looker_user","message":"x"}"#,
        10,
    );
    assert_eq!(rig.status(10), Some(403));
    let body: serde_json::Value =
        serde_json::from_str(&rig.host.replies.borrow()[&10].body).unwrap();
    assert_eq!(body["rule"], "people");
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .starts_with("no_looker_user"));
}

#[test]
fn owner_gone_redispatches_from_root_and_overdue_waiters_get_503() {
    let mut rig = Rig::new();
    rig.request(10, &["analysts"]);
    rig.request(11, &["analysts"]);
    rig.worker.leave(10);
    rig.host.gone.borrow_mut().push(10);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    let dispatched = rig.host.dispatched.borrow().clone();
    assert_eq!(dispatched.len(), 2);
    assert_eq!(
        dispatched[1].context_id, ROOT,
        "re-sent from the root context"
    );
    rig.answer(2, Some(200), TOKEN_OK, ROOT);
    assert_eq!(rig.authorization(11).as_deref(), Some("token LOOKER1"));
    // A waiter whose call never comes back is answered by the tick.
    rig.host.shared.borrow_mut().clear();
    rig.worker = Worker::default();
    rig.request(20, &["people"]);
    rig.host.now_ms.set(rig.host.now_ms.get() + 3_001);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    assert_eq!(rig.status(20), Some(503));
    assert_eq!(rig.host.current.get(), ROOT);
}

#[test]
fn denied_and_unauthenticated_requests_never_reach_the_broker() {
    let mut rig = Rig::new();
    rig.request(10, &["nobody"]);
    assert_eq!(rig.status(10), Some(403));
    rig.host.set_request_headers(
        11,
        HeaderBlock::from_pairs(&[(":method", "GET"), (":path", "/api/4.0/user")]),
    );
    rig.host.current.set(11);
    assert_eq!(
        on_request(&rig.gateway, &mut rig.worker, &rig.host, 11, true),
        Next::Pause
    );
    assert_eq!(rig.status(11), Some(401));
    assert!(rig.host.dispatched.borrow().is_empty());
    assert!(rig.host.applied.borrow().is_empty());
}

#[test]
fn guarded_query_waits_for_the_body_then_is_judged_on_it() {
    let mut rig = Rig::new();
    assert_eq!(
        rig.start(
            10,
            &["querying"],
            "POST",
            "/api/4.0/queries/run/json",
            false
        ),
        Next::Pause
    );
    assert!(matches!(
        rig.worker.stage(10),
        Some(Stage::AwaitingBody { .. })
    ));
    assert!(
        rig.host.dispatched.borrow().is_empty(),
        "no broker call before the verdict"
    );
    assert_eq!(
        rig.body(10, r#"{"model":"thelook","view":"orders","#, false),
        Next::Pause
    );
    assert_eq!(rig.body(10, r#""limit":"50"}"#, true), Next::Pause);
    assert_eq!(
        rig.host.dispatched.borrow().len(),
        1,
        "allowed: token fetched"
    );
    rig.answer(1, Some(200), TOKEN_OK, 10);
    assert_eq!(rig.authorization(10).as_deref(), Some("token LOOKER1"));
}

#[test]
fn guarded_query_violations_oversize_and_garbage_are_refused() {
    let cases: [(&str, u32, &str); 3] = [
        (
            r#"{"model":"thelook","view":"orders","limit":"5000"}"#,
            403,
            "query.limit",
        ),
        (r#"{"model":"secret","view":"orders"}"#, 403, "query.model"),
        ("not json", 400, "JSON"),
    ];
    for (i, (body, status, needle)) in cases.into_iter().enumerate() {
        let mut rig = Rig::new();
        let ctx = 10 + i as u32;
        rig.start(
            ctx,
            &["querying"],
            "POST",
            "/api/4.0/queries/run/json",
            false,
        );
        rig.body(ctx, body, true);
        assert_eq!(rig.status(ctx), Some(status), "{body}");
        assert!(
            rig.host.replies.borrow()[&ctx].body.contains(needle),
            "{body}"
        );
        assert!(rig.host.dispatched.borrow().is_empty());
    }
    let mut rig = Rig::new();
    rig.start(
        30,
        &["querying"],
        "POST",
        "/api/4.0/queries/run/json",
        false,
    );
    rig.body(30, &"x".repeat(2049), false);
    assert_eq!(rig.status(30), Some(413));
    assert!(matches!(rig.worker.stage(30), Some(Stage::Refused)));
}

/// One worker's (one VM's) gateway for `remote_rig`'s issuer: its own key set.
fn remote_gateway(idp: &TestIssuer) -> Gateway {
    let config = json!({
        "issuers": [{"issuer": idp.iss, "audiences": ["looker-api"], "jwks_uri": "https://idp.test/keys", "cluster": "idp",
                     "unknown_kid_refetch": "30s"}],
        "policy": {"rules": [{"name": "all", "paths": ["/api/4.0/**"], "allow": {"role": "analyst"}}]},
        "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789"}
    });
    Gateway::load(config.to_string().as_bytes()).unwrap()
}

fn remote_rig() -> Rig {
    let idp = TestIssuer::new();
    let gateway = remote_gateway(&idp);
    // Key fetches go to the IdP's cluster, broker calls to the broker's: any cluster.
    let host = FakeHost::recording();
    host.set_clock_to_now();
    Rig {
        gateway,
        worker: Worker::default(),
        host,
        idp,
    }
}

#[test]
fn remote_keys_are_fetched_shared_and_refetched_on_an_unknown_kid() {
    let mut rig = remote_rig();
    // Before any fetch: 503 with Retry-After, never a 401.
    rig.request(10, &[]);
    assert_eq!(rig.status(10), Some(503));
    assert!(rig.host.replies.borrow()[&10]
        .headers
        .iter()
        .any(|(n, _)| *n == "retry-after"));
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    let fetch = rig.host.dispatched.borrow().last().cloned().unwrap();
    assert_eq!(fetch.context_id, ROOT, "timed fetch from the root context");
    rig.answer(1, Some(200), &rig.idp.jwks.to_string(), ROOT);
    let next = rig.request(11, &[]);
    assert_eq!(
        rig.host.replies.borrow().get(&11).map(|r| r.body.clone()),
        None
    );
    assert_eq!(next, Next::Pause, "verified; now waiting for the broker");
    assert_eq!(rig.status(11), None);
    // Another worker (fresh VM) picks the keys up from shared data without fetching.
    let calls = rig.host.dispatched.borrow().len();
    let mut other = Worker::default();
    std::mem::swap(&mut rig.worker, &mut other);
    assert_eq!(
        rig.request(15, &[]),
        Next::Pause,
        "a worker without keys takes the shared ones at once"
    );
    assert_eq!(rig.status(15), None);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    assert_eq!(
        rig.host.dispatched.borrow().len(),
        calls + 1,
        "lease held, keys shared: only the broker call"
    );
    std::mem::swap(&mut rig.worker, &mut other);

    // The IdP rotates: a token under the new kid waits for one refetch, then passes.
    rig.idp = TestIssuer::rotated();
    assert_eq!(rig.request(12, &[]), Next::Pause);
    assert_eq!(rig.request(13, &[]), Next::Pause);
    let refetches: Vec<_> = rig
        .host
        .dispatched
        .borrow()
        .iter()
        .filter(|d| d.body.is_empty())
        .cloned()
        .collect();
    assert_eq!(
        refetches.len(),
        2,
        "initial fetch + one refetch for two requests"
    );
    let refetch_id = rig.host.next_callout.get();
    // A malformed answer would keep the old keys; this one is the rotated set.
    rig.answer(refetch_id, Some(200), &rig.idp.jwks.to_string(), 12);
    assert_eq!(
        rig.status(12),
        None,
        "no refusal: decided again with the new keys"
    );
    assert_eq!(rig.status(13), None);
    assert!(matches!(rig.worker.stage(13), Some(Stage::AwaitingToken)));
    // Another unknown kid within the refetch interval is refused at once, no fetch:
    // a storm of random kids costs at most one fetch per interval.
    let before = rig.host.dispatched.borrow().len();
    rig.idp = TestIssuer::new(); // kid test-1 is gone from the rotated set
    for ctx in 14..40 {
        rig.request(ctx, &[]);
        assert_eq!(rig.status(ctx), Some(401), "ctx {ctx}");
    }
    let fetches_after = rig
        .host
        .dispatched
        .borrow()
        .iter()
        .skip(before)
        .filter(|d| d.body.is_empty())
        .count();
    assert_eq!(fetches_after, 0);
}

#[test]
fn malformed_or_failed_jwks_keeps_the_last_good_keys() {
    let mut rig = remote_rig();
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    rig.answer(1, Some(200), &rig.idp.jwks.to_string(), ROOT);
    for (status, body) in [
        (Some(200), "{not json"),
        (Some(200), r#"{"keys":[]}"#),
        (Some(500), ""),
        (None, ""),
    ] {
        // Force a refresh attempt now.
        let callout = {
            rig.host.now_ms.set(rig.host.now_ms.get() + 601_000);
            rig.host
                .shared
                .borrow_mut()
                .retain(|k, _| !k.contains("jwks_lease"));
            on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
            rig.host.next_callout.get()
        };
        rig.answer(callout, status, body, ROOT);
        rig.host.now_ms.set(rig.host.now_ms.get() + 120_000); // past any backoff
    }
    // Tokens are signed with the real clock; keys are still the good ones.
    rig.host.set_clock_to_now();
    assert_eq!(rig.request(20, &[]), Next::Pause);
    assert_eq!(
        rig.status(20),
        None,
        "still verified with the last good keys"
    );
}

#[test]
fn rate_limit_gives_429_with_retry_after_and_recovers() {
    let mut rig = Rig::new();
    let idp = TestIssuer::new();
    let config = json!({
        "issuers": [{"issuer": idp.iss, "audiences": ["looker-api"], "jwks": idp.jwks}],
        "policy": {"rules": [{"name": "limited", "paths": ["/api/4.0/**"], "allow": {"role": "analyst"},
                              "rate_limit": {"per_second": 1, "burst": 2}}]},
        "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789"}
    });
    rig.gateway = Gateway::load(config.to_string().as_bytes()).unwrap();
    rig.request(10, &[]);
    rig.request(11, &[]);
    rig.request(12, &[]);
    assert_eq!(
        (rig.status(10), rig.status(11)),
        (None, None),
        "burst of 2 allowed"
    );
    assert_eq!(rig.status(12), Some(429));
    let reply = rig.host.replies.borrow()[&12].clone();
    assert!(
        reply.headers.contains(&("retry-after", "1".to_owned())),
        "{:?}",
        reply.headers
    );
    assert!(reply.body.contains("limited"));
    rig.host.now_ms.set(rig.host.now_ms.get() + 1000);
    rig.request(13, &[]);
    assert_eq!(rig.status(13), None, "a token refilled after a second");
}

#[test]
fn looker_rejecting_our_token_invalidates_it_everywhere() {
    let mut rig = Rig::new();
    rig.request(10, &["analysts"]);
    rig.answer(1, Some(200), TOKEN_OK, 10);
    assert_eq!(rig.request(11, &["analysts"]), Next::Continue);
    on_response(&rig.gateway, &mut rig.worker, &rig.host, 10, Some(200));
    assert_eq!(
        rig.host.dispatched.borrow().len(),
        1,
        "a 200 changes nothing"
    );
    rig.host.current.set(11);
    on_response(&rig.gateway, &mut rig.worker, &rig.host, 11, Some(401));
    let dispatched = rig.host.dispatched.borrow().clone();
    assert_eq!(dispatched.len(), 2);
    assert!(
        dispatched[1].body.contains(r#""kind":"role""#),
        "invalidate names the identity: {}",
        dispatched[1].body
    );
    // The next request asks the broker for a fresh token instead of reusing the dead one.
    assert_eq!(rig.request(12, &["analysts"]), Next::Pause);
    assert_eq!(rig.host.dispatched.borrow().len(), 3);
    rig.answer(
        3,
        Some(200),
        r#"{"access_token":"LOOKER2","expires_in":3600}"#,
        12,
    );
    assert_eq!(rig.authorization(12).as_deref(), Some("token LOOKER2"));
}

#[test]
fn body_data_never_resumes_a_request_still_waiting_for_its_token() {
    let mut rig = Rig::new();
    // Allowed at the headers, body still coming, token not yet there.
    assert_eq!(
        rig.start(10, &["analysts"], "GET", "/api/4.0/user", false),
        Next::Pause
    );
    assert!(matches!(rig.worker.stage(10), Some(Stage::AwaitingToken)));
    assert_eq!(
        rig.body(10, "{}", true),
        Next::Pause,
        "body data must not move the stream"
    );
    assert!(rig.host.resumed.borrow().is_empty());
    rig.answer(1, Some(200), TOKEN_OK, 10);
    assert_eq!(rig.host.resumed.borrow().as_slice(), &[10]);
    assert_eq!(
        rig.body(10, "", true),
        Next::Continue,
        "forwarded: the rest flows"
    );
    // A refused request swallows its body too.
    rig.start(11, &["nobody"], "GET", "/api/4.0/user", false);
    assert_eq!(rig.body(11, "x", true), Next::Pause);
}

#[test]
fn a_body_that_never_arrives_is_answered_408() {
    let mut rig = Rig::new();
    rig.start(
        10,
        &["querying"],
        "POST",
        "/api/4.0/queries/run/json",
        false,
    );
    rig.host.now_ms.set(rig.host.now_ms.get() + 15_000);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    assert_eq!(rig.status(10), Some(408));
    assert!(rig.host.dispatched.borrow().is_empty());
}

#[test]
fn rotated_key_on_another_worker_waits_for_that_workers_refetch() {
    // Found by the soak: while worker A refetched, worker B refused the new kid.
    let mut rig = remote_rig();
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    rig.answer(1, Some(200), &rig.idp.jwks.to_string(), ROOT);
    let mut worker_b = Worker::default();
    std::mem::swap(&mut rig.worker, &mut worker_b);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT); // B syncs the shared keys
    std::mem::swap(&mut rig.worker, &mut worker_b);

    rig.host.now_ms.set(rig.host.now_ms.get() + 1000);
    rig.idp = TestIssuer::rotated();
    assert_eq!(
        rig.request(20, &[]),
        Next::Pause,
        "worker A: unknown kid, refetching"
    );
    let refetch = rig.host.next_callout.get();
    std::mem::swap(&mut rig.worker, &mut worker_b);
    assert_eq!(
        rig.request(21, &[]),
        Next::Pause,
        "worker B: waits for A's refetch"
    );
    assert_eq!(rig.status(21), None, "not refused");
    std::mem::swap(&mut rig.worker, &mut worker_b);
    rig.answer(refetch, Some(200), &rig.idp.jwks.to_string(), 20);
    std::mem::swap(&mut rig.worker, &mut worker_b);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    assert_eq!(
        rig.status(21),
        None,
        "decided again with the new keys, no 401"
    );
    assert!(matches!(rig.worker.stage(21), Some(Stage::AwaitingToken)));
    // Once that refetch is done, a kid still unknown is refused at once on B too.
    rig.idp = TestIssuer::new();
    rig.request(22, &[]);
    assert_eq!(rig.status(22), Some(401));
}

#[test]
fn a_waiter_wakes_even_when_a_later_request_installed_the_shared_keys() {
    // Found by the soak: worker B's request 21 waits for A's refetch; A shares the
    // keys; B's next request (23) finds them shared and installs them itself. B's
    // tick must still wake 21 — it used to sit until its deadline (~4 s). Each
    // worker has its own VM, so its own gateway (key set) and worker state.
    let mut rig = remote_rig();
    let mut b = (Worker::default(), remote_gateway(&rig.idp));
    let swap = |rig: &mut Rig, b: &mut (Worker, Gateway)| {
        std::mem::swap(&mut rig.worker, &mut b.0);
        std::mem::swap(&mut rig.gateway, &mut b.1);
    };
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    rig.answer(1, Some(200), &rig.idp.jwks.to_string(), ROOT);
    swap(&mut rig, &mut b);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT); // B syncs the shared keys
    swap(&mut rig, &mut b);

    rig.host.now_ms.set(rig.host.now_ms.get() + 1000);
    rig.idp = TestIssuer::rotated();
    assert_eq!(
        rig.request(20, &[]),
        Next::Pause,
        "A: unknown kid, refetching"
    );
    let refetch = rig.host.next_callout.get();
    swap(&mut rig, &mut b);
    assert_eq!(
        rig.request(21, &[]),
        Next::Pause,
        "B: waits for A's refetch"
    );
    assert!(matches!(
        rig.worker.stage(21),
        Some(Stage::AwaitingKeys { .. })
    ));
    swap(&mut rig, &mut b);
    rig.answer(refetch, Some(200), &rig.idp.jwks.to_string(), 20);
    swap(&mut rig, &mut b);
    rig.host.now_ms.set(rig.host.now_ms.get() + 5);
    assert_eq!(
        rig.request(23, &[]),
        Next::Pause,
        "B: shared keys taken at once"
    );
    assert!(matches!(rig.worker.stage(23), Some(Stage::AwaitingToken)));
    assert!(matches!(
        rig.worker.stage(21),
        Some(Stage::AwaitingKeys { .. })
    ));
    rig.host.now_ms.set(rig.host.now_ms.get() + 500);
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    assert_eq!(rig.status(21), None, "not refused");
    assert!(
        matches!(rig.worker.stage(21), Some(Stage::AwaitingToken)),
        "21 decided again on the first tick, not at its deadline: {:?}",
        rig.worker.stage(21)
    );
}

fn trailers(rig: &mut Rig, context_id: u32) -> Next {
    rig.host.current.set(context_id);
    on_trailers(&rig.gateway, &mut rig.worker, &rig.host, context_id)
}

#[test]
fn trailers_never_resume_an_undecided_request_and_end_an_awaited_body() {
    let mut rig = Rig::new();
    // Waiting for the broker: trailers keep it paused; the token resumes it.
    assert_eq!(rig.request(10, &["analysts"]), Next::Pause);
    assert_eq!(trailers(&mut rig, 10), Next::Pause);
    assert!(rig.host.resumed.borrow().is_empty());
    assert_eq!(rig.authorization(10), None, "nothing forwarded yet");
    rig.answer(1, Some(200), TOKEN_OK, 10);
    assert_eq!(*rig.host.resumed.borrow(), vec![10]);
    assert_eq!(rig.authorization(10).as_deref(), Some("token LOOKER1"));
    // Refused: trailers change nothing.
    rig.request(20, &[]);
    assert_eq!(rig.status(20), Some(403));
    assert_eq!(trailers(&mut rig, 20), Next::Pause);
    // Forwarded at once (cached token): trailers go on, emptied.
    assert_eq!(rig.request(30, &["analysts"]), Next::Continue);
    assert_eq!(trailers(&mut rig, 30), Next::Continue);
    assert_eq!(*rig.host.trailers_cleared.borrow(), vec![10, 20, 30]);

    // A guarded query whose body ends with trailers: judged on that body.
    let path = "/api/4.0/queries/run/json";
    assert_eq!(
        rig.start(40, &["querying"], "POST", path, false),
        Next::Pause
    );
    assert_eq!(
        rig.body(
            40,
            r#"{"model":"other","view":"orders","limit":"10"}"#,
            false
        ),
        Next::Pause
    );
    assert_eq!(trailers(&mut rig, 40), Next::Pause);
    assert_eq!(rig.status(40), Some(403), "the body was judged");
    rig.host.body.borrow_mut().clear();
    assert_eq!(
        rig.start(41, &["querying"], "POST", path, false),
        Next::Pause
    );
    rig.body(
        41,
        r#"{"model":"thelook","view":"orders","limit":"10"}"#,
        false,
    );
    assert_eq!(trailers(&mut rig, 41), Next::Continue);
    assert_eq!(rig.status(41), None);
    assert_eq!(rig.authorization(41).as_deref(), Some("token LOOKER1"));
    // Trailers with no body at all: an empty body, which is no query.
    rig.host.body.borrow_mut().clear();
    assert_eq!(
        rig.start(42, &["querying"], "POST", path, false),
        Next::Pause
    );
    assert_eq!(trailers(&mut rig, 42), Next::Pause);
    assert_eq!(rig.status(42), Some(400));
}

#[test]
fn a_body_larger_than_its_last_reported_size_is_still_bounded() {
    let mut rig = Rig::new();
    let path = "/api/4.0/queries/run/json";
    assert_eq!(
        rig.start(10, &["querying"], "POST", path, false),
        Next::Pause
    );
    rig.body(10, r#"{"model":"thelook","#, false);
    // More data buffered than any callback reported, then the end (trailers).
    rig.host
        .body
        .borrow_mut()
        .extend_from_slice(&vec![b' '; rig.gateway.max_body_bytes]);
    assert_eq!(trailers(&mut rig, 10), Next::Pause);
    assert_eq!(rig.status(10), Some(413));
}

#[test]
fn callout_answers_are_routed_by_token_and_read_with_their_own_bound() {
    let mut rig = remote_rig();
    on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
    let jwks = rig.idp.jwks.to_string();
    // A JWKS well above the broker's 16 KiB cap: read whole, with the JWKS bound.
    let mut big: serde_json::Value = rig.idp.jwks.clone();
    let padding = "A".repeat(40 * 1024);
    big["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "RSA", "kid": "padding", "n": padding, "e": "AQAB", "x5c": ["MIIB"]}));
    let big = big.to_string();
    assert!(big.len() > MAX_RESPONSE_BYTES && big.len() < MAX_JWKS_BYTES);
    assert!(jwks.len() < big.len());
    *rig.host.callout_body.borrow_mut() = big.clone().into_bytes();
    assert_eq!(
        route(&rig.worker, 1),
        Some(&Callout::Keys(rig.idp.iss.clone()))
    );
    on_http_call_answer(
        &rig.gateway,
        &mut rig.worker,
        &rig.host,
        1,
        3,
        big.len(),
        ROOT,
    );
    assert_eq!(*rig.host.read_bounds.borrow(), vec![MAX_JWKS_BYTES]);
    assert_eq!(
        rig.host.counters.borrow().get(&format!(
            "lookergate.jwks.fetch_ok.{}",
            crate::keys::metric_name(&rig.idp.iss)
        )),
        Some(&1),
        "{:?}",
        rig.host.counters.borrow()
    );
    // The token is now verified and waits for the broker: its callout is a token call.
    assert_eq!(rig.request(10, &[]), Next::Pause);
    let broker_call = rig.host.next_callout.get();
    assert_eq!(
        route(&rig.worker, broker_call),
        Some(&Callout::Token(
            LookerIdentity::Role("analyst".into()).key()
        ))
    );
    *rig.host.callout_body.borrow_mut() = TOKEN_OK.as_bytes().to_vec();
    rig.host.current.set(10);
    on_http_call_answer(
        &rig.gateway,
        &mut rig.worker,
        &rig.host,
        broker_call,
        2,
        TOKEN_OK.len(),
        10,
    );
    assert_eq!(
        rig.host.read_bounds.borrow().last(),
        Some(&MAX_RESPONSE_BYTES)
    );
    assert_eq!(rig.authorization(10).as_deref(), Some("token LOOKER1"));
    // An answer nobody is waiting for is not read at all.
    let reads = rig.host.read_bounds.borrow().len();
    on_http_call_answer(&rig.gateway, &mut rig.worker, &rig.host, 999, 2, 10, ROOT);
    assert_eq!(rig.host.read_bounds.borrow().len(), reads);
}

fn role(n: &str) -> LookerIdentity {
    LookerIdentity::Role(n.into())
}

fn waiter(id: u32, deadline_ms: u64) -> Waiter {
    Waiter {
        context_id: id,
        header_ops: vec![],
        request_id: format!("r{id}"),
        rule: "r".into(),
        deadline_ms,
    }
}

fn flight(identity: LookerIdentity, callout: u32, first: Waiter) -> Flight {
    Flight {
        identity,
        subject: "s".into(),
        request_id: "r".into(),
        callout: Some(callout),
        waiters: vec![first],
        started_ms: 0,
        retried: false,
    }
}

#[test]
fn concurrent_requests_share_one_flight() {
    let mut w = Worker::default();
    let id = role("analyst");
    assert!(w.tokens.join(&id, waiter(2, 100)).is_err(), "no flight yet");
    w.start_flight(flight(id.clone(), 7, waiter(1, 100)), 7, 1);
    for ctx in 2..=20 {
        assert!(w.tokens.join(&id, waiter(ctx, 100)).is_ok());
    }
    assert_eq!(w.tokens.flight_count(), 1);
    let done = w.finish_flight(7).unwrap();
    assert_eq!(done.waiters.len(), 20);
    assert_eq!(w.tokens.flight_count(), 0);
    assert!(w.finish_flight(7).is_none(), "answered once");
}

#[test]
fn owner_leaving_orphans_the_flight_for_redispatch() {
    let mut w = Worker::default();
    let id = role("analyst");
    w.start_flight(flight(id.clone(), 7, waiter(1, 100)), 7, 1);
    w.tokens.join(&id, waiter(2, 100)).unwrap();
    w.leave(1);
    assert!(
        w.finish_flight(7).is_none(),
        "the lost callout no longer resolves anything"
    );
    let orphans = w.tokens.orphans();
    assert_eq!(orphans.len(), 1);
    assert_eq!(
        orphans[0]
            .waiters
            .iter()
            .map(|w| w.context_id)
            .collect::<Vec<_>>(),
        vec![2]
    );
    w.adopt_flight(&id, 9, 0);
    assert_eq!(w.finish_flight(9).unwrap().waiters.len(), 1);
}

#[test]
fn last_waiter_leaving_an_orphan_drops_it_and_deadlines_expire_waiters() {
    let mut w = Worker::default();
    let id = role("analyst");
    w.start_flight(flight(id.clone(), 7, waiter(1, 100)), 7, 1);
    w.leave(1);
    assert_eq!(w.tokens.flight_count(), 0);
    w.start_flight(flight(id.clone(), 8, waiter(3, 100)), 8, 3);
    w.tokens.join(&id, waiter(4, 200)).unwrap();
    let late = w.tokens.overdue(150);
    assert_eq!(
        late.iter().map(|w| w.context_id).collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(w.finish_flight(8).unwrap().waiters.len(), 1);
}
