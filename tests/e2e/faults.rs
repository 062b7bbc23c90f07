//! Issue 7's faults through the real Envoy: a broker that flaps and answers nonsense, a
//! Looker that revokes the injected token or fails calls, and a broker killed while
//! requests wait on it. Every case: bounded wait, the right status, a clear reason,
//! nothing forwarded without a broker-issued token, and Envoy still serving.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{
    BrokerKind, FakeAnswer, FakeBroker, Gateway, Options, BROKER_TIMEOUT, GATEWAY_CREDENTIAL,
};
use crate::{assert_gateway_error, header, tokens, DASHBOARD};

fn reply(status: u16, body: &str) -> FakeAnswer {
    FakeAnswer::Reply {
        status,
        body: body.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_broker_and_bad_answers_give_503_quickly_then_recover() {
    // (answer, a fragment the 503's reason must contain). A call that fails on the way
    // (the connection cut, Envoy's own 503) is retried once: the fake answers the retry
    // the same way (see `tries`).
    let script: Vec<(FakeAnswer, &str)> = vec![
        (
            reply(
                500,
                r#"{"error":"looker_unavailable","message":"Looker answered 500"}"#,
            ),
            "Looker is unavailable",
        ),
        (
            reply(
                429,
                r#"{"error":"too_many_requests","message":"slow down"}"#,
            ),
            "429",
        ),
        (
            reply(200, r#"{"access_token":"abc","token_type":"token","expi"#),
            "not a token",
        ),
        (
            FakeAnswer::CutShort {
                content_length: 300,
                body: r#"{"access_token":"abc"#.to_owned(),
            },
            "broker",
        ),
        (FakeAnswer::Close, "broker"),
        (
            reply(
                200,
                r#"{"access_token":"","token_type":"token","expires_in":3540}"#,
            ),
            "usable",
        ),
        (
            reply(
                200,
                r#"{"access_token":"a\r\nx-injected: 1","token_type":"token","expires_in":3540}"#,
            ),
            "usable",
        ),
        (
            reply(
                200,
                r#"{"access_token":"abc","token_type":"token","expires_in":0}"#,
            ),
            "usable",
        ),
        (reply(503, "<html>upstream connect error</html>"), "503"),
        (
            reply(
                401,
                r#"{"error":"unauthorized","message":"wrong gateway credential"}"#,
            ),
            "credential",
        ),
    ];
    // How often the filter sends a call that gets this answer: twice when it is retried.
    let tries = |answer: &FakeAnswer| match answer {
        FakeAnswer::Close | FakeAnswer::CutShort { .. } => 2,
        FakeAnswer::Reply { status: 503, body } if !body.starts_with('{') => 2,
        _ => 1,
    };
    let fake = FakeBroker::new(
        script
            .iter()
            .flat_map(|(a, _)| std::iter::repeat_n(a.clone(), tries(a)))
            .chain([FakeAnswer::LookerToken])
            .collect(),
    );
    let gw = Gateway::start_with(Options {
        broker: BrokerKind::Scripted(fake.clone()),
        ..Options::default()
    })
    .await;
    let jwt = tokens::valid("alice");
    let mut request_ids = Vec::new();
    let mut failures = Vec::new();
    for (i, (answer, fragment)) in script.iter().enumerate() {
        let reply = gw.get(DASHBOARD, Some(&jwt)).await;
        request_ids.push(reply.header("x-request-id").unwrap_or_default());
        let body: Value = serde_json::from_str(&reply.body).unwrap_or_default();
        let reason = body["reason"].as_str().unwrap_or_default();
        if reply.status != 503
            || body["error"] != "broker_unavailable"
            || !reason.contains(fragment)
        {
            failures.push(format!(
                "#{i} {answer:?}: want 503 broker_unavailable with {fragment:?}, got {} {}",
                reply.status, reply.body
            ));
        } else {
            assert_gateway_error(&reply, 503);
            assert_eq!(reply.header("retry-after").as_deref(), Some("1"), "#{i}");
        }
        if reply.elapsed > Duration::from_secs(1) {
            failures.push(format!("#{i} {answer:?}: took {:?}", reply.elapsed));
        }
    }
    assert!(
        gw.forwarded_requests().await.is_empty(),
        "forwarded without a token"
    );
    // The broker is back: the next request gets a token, the one after uses the cache.
    let ok = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(ok.status, 200, "after the broker recovered: {}", ok.body);
    request_ids.push(ok.header("x-request-id").unwrap_or_default());
    let cached = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(cached.status, 200, "{}", cached.body);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What the broker was asked: one call per request (two for a retried one) until one
    // succeeded.
    let asked = fake.requests();
    let calls: Vec<&String> = script
        .iter()
        .zip(&request_ids)
        .flat_map(|((answer, _), id)| std::iter::repeat_n(id, tries(answer)))
        .chain(request_ids.last())
        .collect();
    assert_eq!(asked.len(), calls.len(), "broker calls: {asked:#?}");
    for (request, request_id) in asked.iter().zip(calls) {
        assert_eq!(request.path(), "/v1/token");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {GATEWAY_CREDENTIAL}"))
        );
        assert_eq!(
            request.body["identity"],
            json!({"kind": "role", "name": "analyst"})
        );
        assert_eq!(request.body["subject"], "alice");
        assert_eq!(request.body["request_id"], request_id.as_str());
    }
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 2);
    for request in &seen {
        let auth = header(request, "authorization").unwrap_or_default();
        assert!(
            auth.starts_with("token ") && auth.len() > 10,
            "forwarded with {auth:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_revoked_by_looker_is_replaced_by_a_fresh_one() {
    let gw = Gateway::start().await;
    let jwt = tokens::valid("alice");
    let first = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let seen = gw.forwarded_requests().await;
    let old = header(&seen[0], "authorization")
        .unwrap()
        .strip_prefix("token ")
        .unwrap()
        .to_owned();
    assert_eq!(
        gw.sim_revoke(&old).await,
        204,
        "the injected token was live"
    );

    // Looker refuses the revoked token: the client sees Looker's 401, not a gateway error.
    let rejected = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(rejected.status, 401, "{}", rejected.body);
    assert!(
        !rejected.body.contains("request_id"),
        "Looker's 401, not the gateway's: {}",
        rejected.body
    );
    // The very next request gets a fresh token.
    let next = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(next.status, 200, "after invalidation: {}", next.body);
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(
        header(&seen[1], "authorization"),
        Some(format!("token {old}").as_str())
    );
    let fresh = header(&seen[2], "authorization")
        .unwrap()
        .strip_prefix("token ")
        .unwrap()
        .to_owned();
    assert_ne!(fresh, old, "the revoked token was used again");
    assert_eq!(
        gw.broker_token("analyst").await,
        fresh,
        "the broker caches the fresh token"
    );

    // The broker was asked to drop the token, then for a new one (a new login).
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.broker_events("token_invalidated").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let invalidated = gw.broker_events("token_invalidated");
    assert_eq!(
        invalidated.len(),
        1,
        "broker invalidations: {invalidated:#?}"
    );
    assert_eq!(
        invalidated[0]["identity"],
        json!({"kind": "role", "name": "analyst"})
    );
    let issued: Vec<Value> = gw
        .broker_events("token_issued")
        .into_iter()
        .filter(|e| e["subject"] == "alice")
        .collect();
    assert_eq!(
        issued.len(),
        2,
        "token requests from the gateway: {issued:#?}"
    );
    assert_eq!(
        issued[1]["cache"], "login",
        "the second token must come from a new Looker login"
    );
    assert_eq!(
        issued[1]["request_id"].as_str(),
        next.header("x-request-id").as_deref()
    );
    assert_eq!(
        gw.envoy_counter("wasmcustom.lookergate.looker_token.rejected_by_looker")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looker_429_and_5xx_pass_through_with_the_gateway_request_id() {
    let gw = Gateway::start().await;
    let jwt = tokens::valid("alice");
    let warm = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(warm.status, 200, "{}", warm.body);
    for status in [429u16, 500, 502, 503] {
        gw.sim_faults(json!({"api_status": status, "count": 1}))
            .await;
        let reply = gw.get(DASHBOARD, Some(&jwt)).await;
        assert_eq!(
            reply.status, status,
            "Looker's {status} must pass through: {}",
            reply.body
        );
        let body = reply.json();
        assert!(
            body["message"].is_string() && body.get("request_id").is_none(),
            "Looker's body: {body}"
        );
        if matches!(status, 429 | 503) {
            assert_eq!(
                reply.header("retry-after").as_deref(),
                Some("1"),
                "Looker's Retry-After for {status}"
            );
        }
        let id = reply
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{status} without x-request-id"));
        let seen = gw.forwarded_requests().await;
        let last = seen.last().unwrap();
        assert_eq!(
            header(last, "x-request-id"),
            Some(id.as_str()),
            "the id Looker saw and the client got"
        );
    }
    assert_eq!(gw.forwarded_requests().await.len(), 5);
    assert_eq!(
        gw.broker_calls().await,
        1,
        "429/5xx do not invalidate the Looker token"
    );
    let after = gw.get(DASHBOARD, Some(&jwt)).await;
    assert_eq!(after.status, 200, "{}", after.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_flight_under_load_fails_every_request_fast_and_envoy_survives() {
    const REQUESTS: usize = 50;
    let mut gw = Gateway::start().await;
    let alice = tokens::valid("alice");
    let warm = gw.get(DASHBOARD, Some(&alice)).await;
    assert_eq!(warm.status, 200, "{}", warm.body);
    // Logins take 900 ms, so bob's requests are all waiting on the broker when it dies.
    gw.sim_faults(json!({"login_delay_ms": 900, "count": 1000}))
        .await;
    let bob = tokens::valid("bob");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let request = gw
            .client
            .get(gw.url(DASHBOARD))
            .bearer_auth(&bob)
            .header("connection", "close");
        requests.spawn(async move {
            let started = Instant::now();
            let result = request.send().await;
            let outcome = match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (status, response.text().await.unwrap_or_default())
                }
                Err(e) => (0, format!("transport error: {e}")),
            };
            (outcome, started.elapsed())
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.kill_broker();
    let limit = BROKER_TIMEOUT + Duration::from_secs(1);
    let mut failures = Vec::new();
    let mut waited_for_the_broker = 0;
    while let Some(done) = requests.join_next().await {
        let ((status, body), elapsed) = done.expect("request task");
        if elapsed >= Duration::from_millis(250) {
            waited_for_the_broker += 1;
        }
        let error = serde_json::from_str::<Value>(&body).unwrap_or_default()["error"].clone();
        if status != 503 || error != "broker_unavailable" {
            failures.push(format!("{status} {body}"));
        }
        if elapsed > limit {
            failures.push(format!("took {elapsed:?} (> {limit:?})"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        waited_for_the_broker >= REQUESTS / 2,
        "only {waited_for_the_broker} requests were still waiting on the broker when it was killed"
    );
    assert!(
        gw.broker_calls().await >= 2,
        "bob's token was never asked for"
    );
    let seen = gw.forwarded_requests().await;
    assert_eq!(
        seen.len(),
        1,
        "only the warm-up may have reached Looker: {seen:#?}"
    );
    assert!(gw.envoy_is_running(), "Envoy died");

    // A working broker again: the VM still serves, old and new identities alike.
    gw.sim_clear_faults().await;
    gw.restart_broker();
    let again = gw.get(DASHBOARD, Some(&alice)).await;
    assert_eq!(
        again.status, 200,
        "alice after the broker came back: {}",
        again.body
    );
    let bob_ok = gw.get(DASHBOARD, Some(&bob)).await;
    assert_eq!(
        bob_ok.status, 200,
        "bob after the broker came back: {}",
        bob_ok.body
    );
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 3);
    let viewer = format!("token {}", gw.broker_token("viewer").await);
    assert_eq!(header(&seen[2], "authorization"), Some(viewer.as_str()));
}
