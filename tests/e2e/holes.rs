//! Issue 12 ("Close the holes") through the real Envoy, as an attacker holding a valid
//! low-privilege token: the URL `limit`, empty filters and filter expressions against
//! the guardrails; database queries, SQL and session changes reached through rules that
//! never named them; identities and rate-limit buckets across issuers; and what a 403
//! tells about the policy. Each test asserts what the client got and that the simulator's
//! `/__sim/requests` saw only what the policy allows.

use jwt_simple::prelude::*;
use lookergate_cli::{jwks, mint, TokenSpec};
use serde_json::{json, Value};

use crate::harness::{demo_plugin_config, envoy_refusing, Gateway, Options, Reply, Wire};
use crate::{assert_gateway_error, assert_invalid_token, assert_nothing_reached_looker, tokens};

fn plugin_with(rules: Value) -> Value {
    let mut plugin = demo_plugin_config();
    plugin["policy"]["rules"] = rules;
    plugin
}

async fn gateway(plugin: Value) -> Gateway {
    Gateway::start_with(Options {
        plugin: Some(plugin),
        ..Options::default()
    })
    .await
}

/// 403 naming `rule`, with `fragment` in the reason; returns the body.
fn assert_forbidden(reply: &Reply, rule: &str, fragment: &str) -> Value {
    let body = assert_gateway_error(reply, 403);
    assert_eq!(body["rule"], rule, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(fragment),
        "reason lacks {fragment:?}: {body}"
    );
    body
}

fn guarded() -> Value {
    json!([
        // Scoped by activity type, so it covers every query operation: it checks the ones
        // it can read and refuses the ones it cannot.
        {"name": "alice-guarded", "activity_types": ["db_query"],
         "when": [{"claim": "sub", "equals": "alice"}],
         "query": {"models": ["thelook"], "max_limit": 100, "required_filters": ["orders.created_date"]},
         "allow": {"role": "analyst"}},
        // A later, broader grant: the guarded rule must still be the ceiling for alice.
        {"name": "alice-db", "activity_types": ["db_query"],
         "when": [{"claim": "sub", "equals": "alice"}], "allow": {"role": "analyst"}}
    ])
}

fn query(change: Value) -> String {
    let mut q = json!({"model": "thelook", "view": "orders", "fields": ["orders.count"],
                       "filters": {"orders.created_date": "7 days"}, "limit": "10"});
    for (k, v) in change.as_object().cloned().unwrap_or_default() {
        q[k] = v;
    }
    q.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_limit_empty_filters_and_filter_expressions_cannot_slip_past_the_guardrails() {
    let gw = gateway(plugin_with(guarded())).await;
    let alice = tokens::valid("alice");
    let run = |url_query: &str, body: String| {
        gw.client
            .post(gw.url(&format!("/api/4.0/queries/run/json{url_query}")))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body)
    };
    // (what, URL query, body, status, fragment of the reason)
    let refused = [
        ("URL limit over the maximum", "?limit=100000", query(json!({})), 403, "query.limit 100000"),
        ("URL limit -1 is no limit", "?limit=-1", query(json!({})), 403, "no limit"),
        ("URL limit with an escaped name", "?%6Cimit=100000", query(json!({})), 403, "query.limit 100000"),
        ("two URL limits", "?limit=10&limit=100000", query(json!({})), 400, "more than once"),
        ("escaped twin URL limits", "?limit=10&%6cimit=100000", query(json!({})), 400, "more than once"),
        ("bracketed URL limit", "?limit[]=100000", query(json!({})), 400, "not a single value"),
        ("';' separator", "?cache=true;limit=100000", query(json!({})), 400, "';'"),
        ("body limit 0 is Looker's 5000", "", query(json!({"limit": "0"})), 403, "5000"),
        ("empty required filter", "", query(json!({"filters": {"orders.created_date": ""}})), 403, "must not be empty"),
        ("duplicated filter key", "", r#"{"model":"thelook","view":"orders","limit":"10","filters":{"orders.created_date":"","orders.created_date":"7 days"}}"#.to_owned(), 400, "appears twice"),
        ("filter_expression", "", query(json!({"filter_expression": "${orders.id} > 0"})), 403, "filter_expression"),
        ("filter_config", "", query(json!({"filter_config": {"orders.created_date": [{"type": "anytime"}]}})), 403, "filter_config"),
        ("model in the URL", "?model=finance", query(json!({})), 400, "belongs in the body"),
    ];
    for (what, url_query, body, status, fragment) in refused {
        let reply = gw.send(run(url_query, body)).await;
        let error = assert_gateway_error(&reply, status);
        assert!(
            error["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(fragment),
            "{what}: reason lacks {fragment:?}: {error}"
        );
        if status == 403 {
            assert_eq!(error["rule"], "alice-guarded", "{what}: {error}");
        }
    }
    // The same over HTTP/2, the body in two DATA frames ended by a trailer block.
    let bearer = format!("Bearer {alice}");
    let h2 = [
        ("?limit=100000", query(json!({})), 403, "query.limit 100000"),
        (
            "?limit=10&limit=100000",
            query(json!({})),
            400,
            "more than once",
        ),
        (
            "",
            query(json!({"filters": {"orders.created_date": " "}})),
            403,
            "must not be empty",
        ),
        (
            "",
            query(json!({"filter_expression": "1=1"})),
            403,
            "filter_expression",
        ),
    ];
    for (url_query, body, status, fragment) in h2 {
        let (head, tail) = body.split_at(body.len() / 2);
        let reply = gw
            .send_with_trailers(
                Wire::Http2,
                "POST",
                &format!("/api/4.0/queries/run/json{url_query}"),
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                &[head, tail],
                &[("x-client-trailer", "1")],
            )
            .await;
        let error = assert_gateway_error(&reply, status);
        assert!(
            error["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(fragment),
            "HTTP/2 {url_query}: reason lacks {fragment:?}: {error}"
        );
    }
    assert_nothing_reached_looker(&gw).await;

    // Allowed: the URL limit overrides the body's, so a big body limit under a small URL
    // one is what Looker runs.
    let ok = gw
        .send(run("?limit=50", query(json!({"limit": "5000"}))))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // run_url_encoded_query: f[...] decoded, an empty one refused.
    let url = "/api/4.0/queries/models/thelook/views/orders/run/json";
    let empty = gw
        .get(
            &format!("{url}?limit=10&f%5Borders.created_date%5D="),
            Some(&alice),
        )
        .await;
    assert_forbidden(&empty, "alice-guarded", "must not be empty");
    let good = gw
        .get(
            &format!("{url}?fields=orders.count&limit=10&f%5Borders.created_date%5D=7+days"),
            Some(&alice),
        )
        .await;
    // Forwarded, and run by the simulator's explore engine (Looker's answer: 200, rows).
    assert_eq!(good.status, 200, "{}", good.body);
    assert!(
        serde_json::from_str::<Value>(&good.body).is_ok_and(|v| v.is_array()),
        "{}",
        good.body
    );

    let seen = gw.forwarded_requests().await;
    let paths: Vec<&str> = seen.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(
        paths,
        ["/api/4.0/queries/run/json", url],
        "only the two allowed queries reached Looker: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_names_the_field_that_failed_never_the_allowed_values() {
    let mut rules = guarded();
    rules[0]["query"]["models"] = json!(["thelook", "secret_finance_model"]);
    let gw = gateway(plugin_with(rules)).await;
    let reply = gw
        .send(
            gw.client
                .post(gw.url("/api/4.0/queries/run/json"))
                .bearer_auth(tokens::valid("alice"))
                .body(query(json!({"model": "hr"}))),
        )
        .await;
    assert_forbidden(&reply, "alice-guarded", "query.model \"hr\"");
    for allowed in ["thelook", "secret_finance_model"] {
        assert!(
            !reply.body.contains(allowed),
            "the refusal lists the allowed model {allowed}: {}",
            reply.body
        );
    }
    assert_nothing_reached_looker(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_queries_sql_and_stored_queries_need_a_rule_that_names_them() {
    let mut rules = guarded();
    rules.as_array_mut().unwrap().push(
        json!({"name": "bob-reads-looks", "methods": ["GET"], "tags": ["Look"],
                     "when": [{"claim": "sub", "equals": "bob"}], "allow": {"role": "viewer"}}),
    );
    let gw = gateway(plugin_with(rules)).await;
    let bob = tokens::valid("bob");
    let alice = tokens::valid("alice");

    // "GET on tag Look" reads a look, never runs it.
    let look = gw.get("/api/4.0/looks/1", Some(&bob)).await;
    assert_eq!(look.status, 200, "{}", look.body);
    let run_look = gw.get("/api/4.0/looks/1/run/json", Some(&bob)).await;
    assert_forbidden(&run_look, "default_deny", "no rule allows");

    // alice's guarded rule is the ceiling: stored queries it cannot inspect are refused
    // by it, though a later rule grants every db_query operation.
    for path in ["/api/4.0/queries/1/run/json", "/api/4.0/looks/1/run/json"] {
        let reply = gw.get(path, Some(&alice)).await;
        assert_forbidden(&reply, "alice-guarded", "cannot inspect");
    }
    let task = gw
        .send(
            gw.client
                .post(gw.url("/api/4.0/query_tasks"))
                .bearer_auth(&alice)
                .json(&json!({"query_id": 1, "result_format": "json"})),
        )
        .await;
    assert_forbidden(&task, "alice-guarded", "cannot inspect");
    // connection_cost_estimate takes raw SQL: `db_query` in activity_types is not enough.
    let cost = gw
        .send(
            gw.client
                .post(gw.url("/api/4.0/connections/thelook/cost_estimate"))
                .bearer_auth(&alice)
                .json(&json!({"sql": "SELECT * FROM users"})),
        )
        .await;
    assert_forbidden(&cost, "default_deny", "no rule allows");

    let seen = gw.forwarded_requests().await;
    let paths: Vec<&str> = seen.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(paths, ["/api/4.0/looks/1"], "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_credential_operations_are_never_reached_through_a_shared_role() {
    let gw = gateway(plugin_with(json!([
        {"name": "alice-everything", "paths": ["/api/4.0/**"],
         "activity_types": ["db_query", "non_query", "none"],
         "when": [{"claim": "sub", "equals": "alice"}], "allow": {"role": "analyst"}}
    ])))
    .await;
    let alice = tokens::valid("alice");
    let attempts = [
        ("PATCH", "/api/4.0/session", json!({"workspace_id": "dev"})),
        ("POST", "/api/4.0/users/1/credentials_api3", json!({})),
        (
            "POST",
            "/api/4.0/embed/token_url/me",
            json!({"target_url": "https://looker.example/embed/dashboards/1"}),
        ),
        (
            "POST",
            "/api/4.0/embed/cookieless_session/acquire",
            json!({}),
        ),
        (
            "PUT",
            "/api/4.0/embed/cookieless_session/generate_tokens",
            json!({}),
        ),
        ("DELETE", "/api/4.0/users/1/sessions/1", json!(null)),
    ];
    for (method, path, body) in attempts {
        let request = gw
            .client
            .request(method.parse().unwrap(), gw.url(path))
            .bearer_auth(&alice);
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        let reply = gw.send(request).await;
        if path.contains("/embed/cookieless_session/") {
            // Looker's embed-session operations are the gateway's own (issue 15): no
            // rule is even consulted.
            let body = assert_gateway_error(&reply, 403);
            assert!(
                body["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("gateway_owns_embedding"),
                "{body}"
            );
        } else {
            assert_forbidden(&reply, "default_deny", "no rule allows");
        }
    }
    assert_nothing_reached_looker(&gw).await;
    assert_eq!(gw.broker_calls().await, 0);

    // Naming one on a role's account is refused when Envoy loads the config.
    let log = envoy_refusing(plugin_with(json!([
        {"name": "dev-mode", "operations": ["update_session"], "allow": {"role": "analyst"}}
    ])))
    .await;
    assert!(
        log.contains("policy.rules[0].operations[0]") && log.contains("update_session"),
        "Envoy's log must name the field:\n{log}"
    );
}

/// A second issuer with its own key, trusted inline beside the demo IdP.
struct Partner {
    key: RS256KeyPair,
}

const PARTNER: &str = "https://partner.example";

impl Partner {
    fn new() -> Partner {
        Partner {
            key: RS256KeyPair::generate(2048)
                .unwrap()
                .with_key_id("partner-1"),
        }
    }

    fn issuer(&self) -> Value {
        json!({"issuer": PARTNER, "audiences": ["looker-api"], "jwks": jwks(&self.key, "partner-1")})
    }

    /// A partner token claiming to be demo user `user` (same `sub`, same e-mail).
    fn token(&self, user: &str) -> String {
        let mut spec: TokenSpec = tokens::spec(user);
        spec.iss = PARTNER.to_owned();
        mint(&self.key, &spec).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_and_rate_limits_are_bound_to_the_issuer() {
    let partner = Partner::new();
    let mut plugin = plugin_with(json!([
        {"name": "carol-as-herself", "issuers": ["https://idp.lookergate.demo"], "methods": ["GET"],
         "operations": ["me"], "when": [{"claim": "sub", "equals": "carol"}],
         "allow": {"user": {"claim": "email", "credential_type": "email"}}},
        {"name": "dashboards", "methods": ["GET"], "operations": ["dashboard"],
         "rate_limit": {"per_second": 0.01, "burst": 1}, "allow": {"role": "viewer"}}
    ]));
    plugin["issuers"]
        .as_array_mut()
        .unwrap()
        .push(partner.issuer());
    let gw = gateway(plugin).await;

    // The demo IdP's carol is carol; the partner's "carol" with the same e-mail is not.
    let me = gw.get("/api/4.0/user", Some(&tokens::valid("carol"))).await;
    assert_eq!(me.status, 200, "{}", me.body);
    let spoof = gw.get("/api/4.0/user", Some(&partner.token("carol"))).await;
    assert_forbidden(&spoof, "default_deny", "no rule allows");
    // An unverified e-mail names no Looker user.
    let unverified = tokens::with("carol", |s| {
        s.extra.insert("email_verified".into(), json!(false));
    });
    let reply = gw.get("/api/4.0/user", Some(&unverified)).await;
    assert_forbidden(&reply, "carol-as-herself", "email_verified");
    // No subject, no principal.
    let no_sub = {
        let key = lookergate_cli::demo_signing_key().unwrap();
        let mut claims = tokens::spec("carol").claims();
        claims.subject = None;
        key.sign(claims).unwrap()
    };
    assert_invalid_token(&gw.get("/api/4.0/user", Some(&no_sub)).await);

    // Rate-limit buckets: alice of the demo IdP and "alice" of the partner are two
    // principals, each with its own burst of one.
    let dashboard = "/api/4.0/dashboards/1";
    let first = gw.get(dashboard, Some(&tokens::valid("alice"))).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let other_issuer = gw.get(dashboard, Some(&partner.token("alice"))).await;
    assert_eq!(other_issuer.status, 200, "{}", other_issuer.body);
    let again = gw.get(dashboard, Some(&tokens::valid("alice"))).await;
    assert_gateway_error(&again, 429);

    let seen = gw.forwarded_requests().await;
    // (The broker's own look-up of carol by e-mail is there too: leave it out.)
    let paths: Vec<&str> = seen
        .iter()
        .filter_map(|r| r["path"].as_str())
        .filter(|p| !p.starts_with("/api/4.0/users/credential/"))
        .collect();
    assert_eq!(paths, ["/api/4.0/user", dashboard, dashboard], "{seen:#?}");
}
