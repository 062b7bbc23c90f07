//! Embed: cookieless sessions, embed secrets and `/__sim/embed` (docs/embed.md, "Simulator").

use super::*;

const ACQUIRE: &str = "/api/4.0/embed/cookieless_session/acquire";
const GENERATE: &str = "/api/4.0/embed/cookieless_session/generate_tokens";
const SECRETS: &str = "/api/4.0/embed_config/secrets";

fn embed_user(external_user_id: &str, region: &str) -> Value {
    json!({
        "external_user_id": external_user_id,
        "first_name": "Alice",
        "permissions": ["access_data", "see_user_dashboards"],
        "models": ["thelook"],
        "user_attributes": {"region": region},
        "session_length": 3600,
    })
}

impl Sim {
    async fn acquire(&self, token: &str, body: Value) -> Reply {
        self.call(Method::POST, ACQUIRE, Some(token), Some(body))
            .await
    }

    async fn acquired(&self, token: &str, body: Value) -> Value {
        let reply = self.acquire(token, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.json()
    }

    async fn generate(&self, token: &str, body: Value) -> Reply {
        self.call(Method::PUT, GENERATE, Some(token), Some(body))
            .await
    }

    async fn embed_view(&self) -> Value {
        self.call(Method::GET, "/__sim/embed", None, None)
            .await
            .json()
    }
}

fn generate_body(session: &Value, tokens: &Value) -> Value {
    json!({
        "session_reference_token": session["session_reference_token"],
        "navigation_token": tokens["navigation_token"],
        "api_token": tokens["api_token"],
    })
}

#[tokio::test]
async fn acquire_answers_lookers_tokens_and_ttls() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let body = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    for name in [
        "authentication_token",
        "navigation_token",
        "api_token",
        "session_reference_token",
    ] {
        let value = body[name].as_str().unwrap();
        assert_eq!(value.len(), 40, "{name}");
        assert!(value.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
    }
    assert_eq!(body["authentication_token_ttl"], 30);
    assert_eq!(body["navigation_token_ttl"], 600);
    assert_eq!(body["api_token_ttl"], 600);
    let ttl = body["session_reference_token_ttl"].as_u64().unwrap();
    assert!((3599..=3600).contains(&ttl), "{ttl}");
    assert_ne!(body["api_token"], body["navigation_token"]);

    // Default session length 300 s; the token TTL follows `with_embed_token_ttl`.
    let sim = Sim::with(SimState::demo().with_embed_token_ttl(Duration::from_secs(20)));
    let token = sim.analyst().await;
    let mut user = embed_user("idp|bob", "east");
    user.as_object_mut().unwrap().remove("session_length");
    let body = sim.acquired(&token, user).await;
    assert_eq!(body["api_token_ttl"], 20);
    assert_eq!(body["navigation_token_ttl"], 20);
    let ttl = body["session_reference_token_ttl"].as_u64().unwrap();
    assert!((299..=300).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn embed_operations_need_an_api_token() {
    let sim = Sim::new();
    let cases = [
        (Method::POST, ACQUIRE, Some(embed_user("idp|a", "west"))),
        (
            Method::PUT,
            GENERATE,
            Some(json!({"session_reference_token": "x"})),
        ),
        (Method::DELETE, "/api/4.0/embed/cookieless_session/x", None),
        (Method::POST, SECRETS, Some(json!({}))),
        (Method::DELETE, "/api/4.0/embed_config/secrets/1", None),
    ];
    for (method, uri, body) in cases {
        let reply = sim.call(method.clone(), uri, None, body).await;
        assert_looker_error(&reply, StatusCode::UNAUTHORIZED, "Requires authentication.");
    }
    assert_eq!(sim.embed_view().await["sessions"], json!([]));
}

#[tokio::test]
async fn acquire_refuses_invalid_embed_users_with_422() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let with = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut user = embed_user("idp|alice", "west");
        change(user.as_object_mut().unwrap());
        user
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with(&|u| drop(u.remove("external_user_id"))),
            "external_user_id",
            "missing",
        ),
        (
            with(&|u| drop(u.insert("external_user_id".into(), json!(" ")))),
            "external_user_id",
            "missing",
        ),
        (
            with(&|u| drop(u.insert("permissions".into(), json!(["access_data", "admin"])))),
            "permissions",
            "invalid",
        ),
        (
            with(&|u| drop(u.insert("models".into(), json!([])))),
            "models",
            "missing",
        ),
        (
            with(&|u| drop(u.insert("session_length".into(), json!(2_592_001)))),
            "session_length",
            "invalid",
        ),
        (
            with(&|u| drop(u.insert("session_length".into(), json!(0)))),
            "session_length",
            "invalid",
        ),
    ];
    for (body, field, code) in cases {
        let reply = sim.acquire(&token, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.text
        );
        let error = reply.json();
        assert_eq!(error["message"], "Validation Failed");
        assert_eq!(error["documentation_url"], DOCUMENTATION_URL);
        assert_eq!(error["errors"][0]["field"], field, "{body}");
        assert_eq!(error["errors"][0]["code"], code, "{body}");
        assert!(error["errors"][0]["message"].is_string());
    }
    // Group ids instead of models are enough.
    let groups = with(&|u| {
        u.insert("models".into(), json!([]));
        u.insert("group_ids".into(), json!(["3"]));
    });
    assert_eq!(sim.acquire(&token, groups).await.status, StatusCode::OK);
    // Not JSON at all: 400.
    let request = Request::post(ACQUIRE)
        .header("authorization", format!("token {token}"))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let reply = sim.send(request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert_eq!(reply.json()["documentation_url"], DOCUMENTATION_URL);
    assert_eq!(
        sim.embed_view().await["sessions"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn acquire_with_a_live_reference_token_joins_that_session_without_updating_the_user() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let first = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    let mut join = embed_user("idp|alice", "east");
    join["session_reference_token"] = first["session_reference_token"].clone();
    let joined = sim.acquired(&token, join).await;
    assert_eq!(
        joined["session_reference_token"],
        first["session_reference_token"]
    );
    for name in ["authentication_token", "navigation_token", "api_token"] {
        assert_ne!(joined[name], first[name], "{name}");
    }
    let view = sim.embed_view().await;
    let sessions = view["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{view}");
    assert_eq!(sessions[0]["joins"], 1);
    assert_eq!(sessions[0]["user_attributes"], json!({"region": "west"}));

    // Another embed user cannot attach to it: Looker's 404.
    let mut other = embed_user("idp|mallory", "west");
    other["session_reference_token"] = first["session_reference_token"].clone();
    let reply = sim.acquire(&token, other).await;
    assert_looker_error(&reply, StatusCode::NOT_FOUND, "Not found");

    // An unknown reference token is ignored: a new session starts.
    let mut unknown = embed_user("idp|carol", "central");
    unknown["session_reference_token"] = json!("no-such-session");
    let fresh = sim.acquired(&token, unknown).await;
    assert_ne!(fresh["session_reference_token"], "no-such-session");
    assert_eq!(
        sim.embed_view().await["sessions"].as_array().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_new_session_for_an_embed_user_ends_the_old_one_and_keeps_the_user_id() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let old = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    sim.acquired(&token, embed_user("idp|alice", "east")).await;
    sim.acquired(&token, embed_user("idp|bob", "east")).await;
    let view = sim.embed_view().await;
    let sessions = view["sessions"].as_array().unwrap();
    let states: Vec<(&str, &str, &str)> = sessions
        .iter()
        .map(|s| {
            (
                s["external_user_id"].as_str().unwrap(),
                s["state"].as_str().unwrap(),
                s["user_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("idp|alice", "ended", "10001"),
            ("idp|alice", "live", "10001"),
            ("idp|bob", "live", "10002"),
        ]
    );
    // The ended session reports expiry, as generate_tokens does for any ended session.
    let reply = sim.generate(&token, generate_body(&old, &old)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["session_reference_token_ttl"], 0);
}

#[tokio::test]
async fn generate_tokens_hands_out_new_tokens_and_accepts_current_or_previous_ones() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let session = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    let reply = sim
        .generate(&token, generate_body(&session, &session))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let second = reply.json();
    assert_eq!(
        second["session_reference_token"],
        session["session_reference_token"]
    );
    assert_ne!(second["api_token"], session["api_token"]);
    assert_ne!(second["navigation_token"], session["navigation_token"]);
    assert_eq!(second["api_token_ttl"], 600);
    assert_eq!(second["navigation_token_ttl"], 600);
    assert!(second.get("authentication_token").is_none(), "{second}");
    assert!(second["session_reference_token_ttl"].as_u64().unwrap() > 3500);

    // The previous generation still refreshes (a second iframe may hold it), and so do
    // the current tokens.
    let third = sim
        .generate(&token, generate_body(&session, &session))
        .await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.text);
    let fourth = sim
        .generate(&token, generate_body(&session, &third.json()))
        .await;
    assert_eq!(fourth.status, StatusCode::OK, "{}", fourth.text);
    let view = sim.embed_view().await;
    assert_eq!(view["sessions"][0]["generate_tokens_calls"], 3);

    let bad = [
        json!({"session_reference_token": session["session_reference_token"], "navigation_token": "nope", "api_token": session["api_token"]}),
        json!({"session_reference_token": session["session_reference_token"], "navigation_token": session["navigation_token"], "api_token": "nope"}),
        json!({"session_reference_token": session["session_reference_token"]}),
        // Tokens of a swapped pair: navigation token in the API token's place.
        json!({"session_reference_token": session["session_reference_token"], "navigation_token": session["api_token"], "api_token": session["navigation_token"]}),
    ];
    for body in bad {
        let reply = sim.generate(&token, body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
        assert!(reply.json()["message"].as_str().unwrap().contains("token"));
    }
    // Another session's tokens do not refresh this one.
    let other = sim.acquired(&token, embed_user("idp|bob", "east")).await;
    let reply = sim.generate(&token, generate_body(&session, &other)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);

    let reply = sim
        .generate(&token, json!({"session_reference_token": "never-issued", "navigation_token": "a", "api_token": "b"}))
        .await;
    assert_looker_error(&reply, StatusCode::NOT_FOUND, "Not found");
    // `session_reference_token` is required by the spec's request schema.
    let reply = sim.generate(&token, json!({"navigation_token": "a"})).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.json()["errors"][0]["field"],
        "session_reference_token"
    );
    assert_eq!(reply.json()["errors"][0]["code"], "missing_field");
    assert_eq!(
        sim.embed_view().await["sessions"][0]["generate_tokens_calls"],
        3
    );
}

#[tokio::test]
async fn an_expired_session_answers_generate_tokens_with_ttl_zero() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let mut user = embed_user("idp|alice", "west");
    user["session_length"] = json!(1);
    let session = sim.acquired(&token, user).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = sim
        .generate(&token, generate_body(&session, &session))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json(),
        json!({
            "navigation_token": "", "navigation_token_ttl": 0,
            "api_token": "", "api_token_ttl": 0,
            "session_reference_token": session["session_reference_token"],
            "session_reference_token_ttl": 0,
        })
    );
    assert_eq!(sim.embed_view().await["sessions"][0]["state"], "expired");
    // An expired reference token is ignored by acquire: a new session starts.
    let mut again = embed_user("idp|alice", "west");
    again["session_reference_token"] = session["session_reference_token"].clone();
    let fresh = sim.acquired(&token, again).await;
    assert_ne!(
        fresh["session_reference_token"],
        session["session_reference_token"]
    );
}

#[tokio::test]
async fn delete_ends_the_session_and_all_its_tokens() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let session = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    let uri = format!(
        "/api/4.0/embed/cookieless_session/{}",
        session["session_reference_token"].as_str().unwrap()
    );
    let reply = sim.call(Method::DELETE, &uri, Some(&token), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    let view = sim.embed_view().await;
    assert_eq!(view["sessions"][0]["state"], "ended");
    assert_eq!(view["sessions"][0]["session_reference_token_ttl"], 0);
    assert_eq!(view["sessions"][0]["api_token_fingerprint"], Value::Null);
    let reply = sim
        .generate(&token, generate_body(&session, &session))
        .await;
    assert_eq!(
        reply.json()["session_reference_token_ttl"],
        0,
        "{}",
        reply.text
    );
    // Deleting it again is harmless; a token never issued is Looker's 404.
    let again = sim.call(Method::DELETE, &uri, Some(&token), None).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    let unknown = sim
        .call(
            Method::DELETE,
            "/api/4.0/embed/cookieless_session/nope",
            Some(&token),
            None,
        )
        .await;
    assert_looker_error(&unknown, StatusCode::NOT_FOUND, "Not found");
}

#[tokio::test]
async fn sim_embed_lists_sessions_with_fingerprints_never_tokens() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let mut user = embed_user("idp|alice", "west");
    user["user_attributes"] = json!({"region": ["west", "central"], "tier": 3, "gone": null});
    user["group_ids"] = json!(["7"]);
    let session = sim.acquired(&token, user).await;
    let second = sim
        .generate(&token, generate_body(&session, &session))
        .await
        .json();
    let reply = sim.call(Method::GET, "/__sim/embed", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    for name in [
        "authentication_token",
        "navigation_token",
        "api_token",
        "session_reference_token",
    ] {
        for tokens in [&session, &second] {
            if let Some(value) = tokens[name].as_str() {
                assert!(!reply.text.contains(value), "{name} leaked: {}", reply.text);
            }
        }
    }
    let listed = &reply.json()["sessions"][0];
    let print = |v: &Value| lookergate_proto::fingerprint(v.as_str().unwrap().as_bytes());
    assert_eq!(listed["kind"], "cookieless");
    assert_eq!(listed["state"], "live");
    assert_eq!(listed["external_user_id"], "idp|alice");
    assert_eq!(listed["first_name"], "Alice");
    assert_eq!(
        listed["permissions"],
        json!(["access_data", "see_user_dashboards"])
    );
    assert_eq!(listed["models"], json!(["thelook"]));
    assert_eq!(listed["group_ids"], json!(["7"]));
    assert_eq!(listed["force_logout_login"], true);
    assert_eq!(
        listed["user_attributes"],
        json!({"region": "west,central", "tier": "3"})
    );
    assert_eq!(listed["session_length"], 3600);
    assert_eq!(listed["generate_tokens_calls"], 1);
    assert_eq!(listed["api_token_fingerprint"], print(&second["api_token"]));
    assert_eq!(
        listed["navigation_token_fingerprint"],
        print(&second["navigation_token"])
    );
    assert_eq!(
        listed["session_reference_token_fingerprint"],
        print(&session["session_reference_token"])
    );
    let views = sim.state.embed_sessions();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].user.external_user_id, "idp|alice");
}

#[tokio::test]
async fn embed_calls_are_recorded_like_other_api_calls() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let session = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    sim.generate(&token, generate_body(&session, &session))
        .await;
    let seen: Vec<(String, String)> = sim
        .state
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST".to_owned(), ACQUIRE.to_owned()),
            ("PUT".to_owned(), GENERATE.to_owned()),
        ]
    );
}

#[tokio::test]
async fn embed_secrets_are_created_by_admins_shown_once_and_deleted() {
    let sim = Sim::with(SimState::demo().with_embed_secret("seeded-secret"));
    let admin = sim.admin().await;
    let analyst = sim.analyst().await;
    let reply = sim
        .call(Method::POST, SECRETS, Some(&analyst), Some(json!({})))
        .await;
    assert_looker_error(&reply, StatusCode::FORBIDDEN, "Forbidden");

    let reply = sim.call(Method::POST, SECRETS, Some(&admin), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let created = reply.json();
    assert_eq!(created["id"], "2");
    assert_eq!(created["algorithm"], "hmac/sha-256");
    assert_eq!(created["secret_type"], "SSO");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["user_id"], "1");
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.len() >= 32, "{secret}");

    let sha1 = json!({"algorithm": "hmac/sha-1", "enabled": false});
    let reply = sim
        .call(Method::POST, SECRETS, Some(&admin), Some(sha1))
        .await;
    assert_eq!(reply.json()["algorithm"], "hmac/sha-1");
    assert_eq!(reply.json()["enabled"], false);
    for (body, field) in [
        (json!({"algorithm": "md5"}), "algorithm"),
        (json!({"secret_type": "OAUTH"}), "secret_type"),
    ] {
        let reply = sim
            .call(Method::POST, SECRETS, Some(&admin), Some(body))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text
        );
        assert_eq!(reply.json()["errors"][0]["field"], field);
    }

    let view = sim.call(Method::GET, "/__sim/embed", None, None).await;
    assert!(!view.text.contains(secret) && !view.text.contains("seeded-secret"));
    let ids: Vec<Value> = view.json()["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, [json!("1"), json!("2"), json!("3")]);

    let delete = |id: &'static str, token: String| {
        let uri = format!("{SECRETS}/{id}");
        let sim = &sim;
        async move { sim.call(Method::DELETE, &uri, Some(&token), None).await }
    };
    assert_eq!(
        delete("2", analyst.clone()).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        delete("2", admin.clone()).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete("2", admin.clone()).await.status,
        StatusCode::NOT_FOUND
    );
    let ids = sim.embed_view().await["secrets"].as_array().unwrap().len();
    assert_eq!(ids, 2);
}

// ---- the embed pages ----

const EMBED_DOMAIN: &str = "http://127.0.0.1:10070";

/// What the Embed SDK puts in the iframe's `src` (acquireCookielessEmbedSessionInternal).
fn login_url(session: &Value, dashboard: &str) -> (String, String) {
    let target = dashboard_url(session, dashboard);
    let url = format!(
        "/login/embed/{}?embed_authentication_token={}",
        encode_component(&target),
        session["authentication_token"].as_str().unwrap()
    );
    (url, target)
}

/// The dashboard page with the navigation token of `tokens`.
fn dashboard_url(tokens: &Value, dashboard: &str) -> String {
    format!(
        "/embed/dashboards/{dashboard}?embed_domain={EMBED_DOMAIN}&sdk=3&embed_navigation_token={}",
        tokens["navigation_token"].as_str().unwrap()
    )
}

/// JavaScript's encodeURIComponent.
fn encode_component(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assert_page(reply: &Reply, status: StatusCode, text: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");
    assert!(reply.text.contains(text), "{}", reply.text);
}

#[tokio::test]
async fn login_redeems_the_authentication_token_once_and_redirects_to_the_target() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let session = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    let (url, target) = login_url(&session, "1");
    let reply = sim.call(Method::GET, &url, None, None).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text);
    assert_eq!(reply.headers["location"], target.as_str());
    assert_eq!(reply.headers["cache-control"], "no-store");

    let again = sim.call(Method::GET, &url, None, None).await;
    assert_page(
        &again,
        StatusCode::UNAUTHORIZED,
        "embed session could not be started",
    );
    let forged = url.replace(session["authentication_token"].as_str().unwrap(), "forged");
    let reply = sim.call(Method::GET, &forged, None, None).await;
    assert_page(
        &reply,
        StatusCode::UNAUTHORIZED,
        "embed session could not be started",
    );
    // Nor is a navigation token an authentication token.
    let swapped = url.replace(
        session["authentication_token"].as_str().unwrap(),
        session["navigation_token"].as_str().unwrap(),
    );
    let reply = sim.call(Method::GET, &swapped, None, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // The page itself is not recorded as an API call.
    assert_eq!(sim.state.requests().len(), 1);
}

#[tokio::test]
async fn login_refuses_expired_authentication_tokens_and_targets_outside_embed() {
    let sim = Sim::new();
    sim.state.world().embed.authentication_ttl = Duration::from_millis(50);
    let token = sim.analyst().await;
    let session = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    let auth = session["authentication_token"].as_str().unwrap();
    for target in [
        "/admin",
        "//evil.example/embed/x",
        "https://evil.example/embed/",
    ] {
        let url = format!(
            "/login/embed/{}?embed_authentication_token={auth}",
            encode_component(target)
        );
        let reply = sim.call(Method::GET, &url, None, None).await;
        assert_page(&reply, StatusCode::BAD_REQUEST, "/embed/");
    }
    tokio::time::sleep(Duration::from_millis(80)).await;
    let (url, _) = login_url(&session, "1");
    let reply = sim.call(Method::GET, &url, None, None).await;
    assert_page(
        &reply,
        StatusCode::UNAUTHORIZED,
        "embed session could not be started",
    );
}

#[tokio::test]
async fn a_joined_iframe_logs_in_with_its_own_authentication_token() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let first = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    let mut join = embed_user("idp|alice", "west");
    join["session_reference_token"] = first["session_reference_token"].clone();
    let second = sim.acquired(&token, join).await;
    for session in [&first, &second] {
        let (url, _) = login_url(session, "1");
        assert_eq!(
            sim.call(Method::GET, &url, None, None).await.status,
            StatusCode::FOUND
        );
    }
}

#[tokio::test]
async fn the_dashboard_page_needs_a_live_navigation_token_and_an_embed_domain() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let mut user = embed_user("idp|<alice>", "west");
    user["user_attributes"] = json!({"region": "west,central"});
    let session = sim.acquired(&token, user).await;
    let (_, target) = login_url(&session, "1");
    let reply = sim.call(Method::GET, &target, None, None).await;
    assert_page(&reply, StatusCode::OK, "id=\"lookergate-embed-rows\"");
    for id in [
        "lookergate-embed-user",
        "lookergate-embed-region",
        "lookergate-embed-token",
        "lookergate-embed-refreshes",
        "lookergate-embed-status",
    ] {
        assert!(reply.text.contains(&format!("id=\"{id}\"")), "{id}");
    }
    assert!(reply
        .text
        .contains("<b id=\"lookergate-embed-user\">idp|&lt;alice&gt;</b>"));
    assert!(reply
        .text
        .contains("<b id=\"lookergate-embed-region\">west,central</b>"));
    assert!(reply.text.contains("Business Pulse"));
    assert!(
        !reply
            .text
            .contains(session["navigation_token"].as_str().unwrap()),
        "the page must not repeat the navigation token"
    );
    let csp = reply.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(
        csp.contains(&format!("frame-ancestors {EMBED_DOMAIN}")),
        "{csp}"
    );
    assert_eq!(reply.headers["referrer-policy"], "no-referrer");

    let nav = session["navigation_token"].as_str().unwrap();
    let cases = [
        (format!("/embed/dashboards/1?embed_domain={EMBED_DOMAIN}&embed_navigation_token=nope"), StatusCode::UNAUTHORIZED),
        (format!("/embed/dashboards/1?embed_domain={EMBED_DOMAIN}"), StatusCode::UNAUTHORIZED),
        (format!("/embed/dashboards/1?embed_navigation_token={nav}"), StatusCode::BAD_REQUEST),
        (format!("/embed/dashboards/1?embed_domain=https://a.example;%20script-src%20*&embed_navigation_token={nav}"), StatusCode::BAD_REQUEST),
        (format!("/embed/dashboards/99?embed_domain={EMBED_DOMAIN}&embed_navigation_token={nav}"), StatusCode::NOT_FOUND),
        // The API token does not open pages.
        (format!("/embed/dashboards/1?embed_domain={EMBED_DOMAIN}&embed_navigation_token={}", session["api_token"].as_str().unwrap()), StatusCode::UNAUTHORIZED),
    ];
    for (uri, status) in cases {
        let reply = sim.call(Method::GET, &uri, None, None).await;
        assert_eq!(reply.status, status, "{uri}: {}", reply.text);
        assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");
    }

    // Refreshed tokens: the old navigation token still works until it expires.
    let refreshed = sim
        .generate(&token, generate_body(&session, &session))
        .await
        .json();
    let new_target = dashboard_url(&refreshed, "2");
    assert_eq!(
        sim.call(Method::GET, &new_target, None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        sim.call(Method::GET, &target, None, None).await.status,
        StatusCode::OK
    );

    // Once the session is deleted, no navigation token opens a page.
    let uri = format!(
        "/api/4.0/embed/cookieless_session/{}",
        session["session_reference_token"].as_str().unwrap()
    );
    sim.call(Method::DELETE, &uri, Some(&token), None).await;
    for target in [&target, &new_target] {
        let reply = sim.call(Method::GET, target, None, None).await;
        assert_page(&reply, StatusCode::UNAUTHORIZED, "not valid");
    }
}

async fn rows(sim: &Sim, dashboard: &str, api_token: &str) -> Reply {
    sim.get(
        &format!("/api/internal/embed/dashboards/{dashboard}/rows"),
        api_token,
    )
    .await
}

#[tokio::test]
async fn rows_are_filtered_by_the_embed_users_region() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let cases: [(Value, &str, usize); 5] = [
        (json!({"region": "west"}), "west", 24),
        (json!({"region": "east"}), "east", 8),
        (json!({"region": "WEST, central"}), "west,central", 32),
        (json!({"region": ["east", "central"]}), "east,central", 16),
        (json!({"tier": "gold"}), "", 0),
    ];
    for (n, (attributes, allowed, count)) in cases.into_iter().enumerate() {
        let mut user = embed_user(&format!("idp|user{n}"), "");
        user["user_attributes"] = attributes.clone();
        let session = sim.acquired(&token, user).await;
        let reply = rows(&sim, "1", session["api_token"].as_str().unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.headers["cache-control"], "no-store");
        let body = reply.json();
        let rows = body["rows"].as_array().unwrap();
        assert_eq!(rows.len(), count, "{attributes}");
        let allowed: Vec<&str> = allowed.split(',').filter(|s| !s.is_empty()).collect();
        for row in rows {
            assert!(
                allowed.contains(&row["region"].as_str().unwrap()),
                "{attributes}: {row}"
            );
            assert!(row["id"].is_u64() && row["status"].is_string() && row["state"].is_string());
        }
        assert_eq!(body["external_user_id"], format!("idp|user{n}"));
        assert_eq!(
            body["dashboard"],
            json!({"id": "1", "title": "Business Pulse"})
        );
    }
}

#[tokio::test]
async fn rows_need_a_live_api_token_and_the_dashboards_model() {
    let sim = Sim::with(SimState::demo().with_embed_token_ttl(Duration::from_millis(300)));
    let token = sim.analyst().await;
    let session = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    let api = session["api_token"].as_str().unwrap();
    assert_eq!(rows(&sim, "1", api).await.status, StatusCode::OK);
    assert_eq!(rows(&sim, "99", api).await.status, StatusCode::NOT_FOUND);
    for bad in [
        "nope",
        session["navigation_token"].as_str().unwrap(),
        &token,
    ] {
        let reply = rows(&sim, "1", bad).await;
        assert_looker_error(&reply, StatusCode::UNAUTHORIZED, "Requires authentication.");
    }
    let anonymous = sim
        .call(
            Method::GET,
            "/api/internal/embed/dashboards/1/rows",
            None,
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    let refreshed = sim
        .generate(&token, generate_body(&session, &session))
        .await
        .json();
    let new_api = refreshed["api_token"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Both expired now; a refresh with the expired previous tokens still works.
    assert_eq!(rows(&sim, "1", api).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        rows(&sim, "1", new_api).await.status,
        StatusCode::UNAUTHORIZED
    );
    let third = sim
        .generate(&token, generate_body(&session, &refreshed))
        .await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.text);
    assert_eq!(
        rows(&sim, "1", third.json()["api_token"].as_str().unwrap())
            .await
            .status,
        StatusCode::OK
    );

    let mut other_model = embed_user("idp|bob", "west");
    other_model["models"] = json!(["other_model"]);
    let session = sim.acquired(&token, other_model).await;
    let reply = rows(&sim, "1", session["api_token"].as_str().unwrap()).await;
    assert_looker_error(&reply, StatusCode::FORBIDDEN, "Forbidden");
}

// ---- signed SSO embed URLs ----

const HOST: &str = "127.0.0.1:10443";
const SECRET: &str = "demo-embed-secret";

fn sso_user(external_user_id: &str, region: &str) -> lookergate_proto::embed::EmbedUser {
    lookergate_proto::embed::EmbedUser {
        external_user_id: external_user_id.into(),
        first_name: Some("Alice".into()),
        last_name: None,
        user_timezone: None,
        permissions: vec!["access_data".into(), "see_user_dashboards".into()],
        models: vec!["thelook".into()],
        group_ids: vec![],
        external_group_id: None,
        user_attributes: [("region".to_owned(), region.to_owned())].into(),
        session_length: 600,
        force_logout_login: true,
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signed URL as the broker builds it: parameters from `sso_params`, signed over
/// `sso_string_to_sign` with `sign`, every value percent-encoded.
fn signed_url(
    user: &lookergate_proto::embed::EmbedUser,
    nonce: &str,
    time: u64,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> (String, String) {
    use base64::Engine;
    let target = format!("/embed/dashboards/1?embed_domain={EMBED_DOMAIN}&sdk=3");
    let path = format!("/login/embed/{}", encode_component(&target));
    let params = lookergate_proto::embed::sso_params(user, nonce, time);
    let text = lookergate_proto::embed::sso_string_to_sign(HOST, &path, &params);
    let signature = base64::engine::general_purpose::STANDARD.encode(sign(text.as_bytes()));
    let mut query: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{name}={}", encode_component(value)))
        .collect();
    query.push(format!("signature={}", encode_component(&signature)));
    (format!("{path}?{}", query.join("&")), target)
}

fn sha256_signer(secret: &'static str) -> impl Fn(&[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    move |text| {
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .unwrap()
            .chain_update(text)
            .finalize()
            .into_bytes()
            .to_vec()
    }
}

async fn open(sim: &Sim, url: &str, cookie: Option<&str>) -> Reply {
    let mut request = Request::get(url).header("host", HOST);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    sim.send(request.body(Body::empty()).unwrap()).await
}

fn session_cookie(reply: &Reply) -> String {
    let set = reply.headers["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_signed_url_starts_a_cookie_session_whose_page_and_rows_work() {
    let sim = Sim::with(SimState::demo().with_embed_secret(SECRET));
    let (url, target) = signed_url(
        &sso_user("idp|alice", "east"),
        "n-1",
        now_secs(),
        sha256_signer(SECRET),
    );
    let reply = open(&sim, &url, None).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text);
    assert_eq!(reply.headers["location"], target.as_str());
    let set = reply.headers["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("looker_embed_session="), "{set}");
    for attribute in ["Path=/", "HttpOnly", "Secure", "SameSite=None"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = session_cookie(&reply);

    let page = open(&sim, &target, Some(&cookie)).await;
    assert_page(&page, StatusCode::OK, "\"tokenSource\":\"cookie\"");
    assert!(page
        .text
        .contains("<b id=\"lookergate-embed-region\">east</b>"));
    assert_eq!(
        open(&sim, &target, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let forged = open(&sim, &target, Some("looker_embed_session=forged")).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);

    let tokens = open(&sim, "/api/internal/embed/session_token", Some(&cookie)).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.text);
    let tokens = tokens.json();
    assert_eq!(tokens["api_token_ttl"], 600);
    assert!(tokens["session_reference_token_ttl"].as_u64().unwrap() > 590);
    assert!(tokens.get("session_reference_token").is_none());
    let reply = rows(&sim, "1", tokens["api_token"].as_str().unwrap()).await;
    let listed = reply.json()["rows"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 8);
    assert!(listed.iter().all(|r| r["region"] == "east"));
    let no_cookie = open(&sim, "/api/internal/embed/session_token", None).await;
    assert_eq!(no_cookie.status, StatusCode::UNAUTHORIZED);

    let view = sim.embed_view().await;
    assert_eq!(view["sessions"][0]["kind"], "sso");
    assert_eq!(view["sessions"][0]["external_user_id"], "idp|alice");
    assert_eq!(view["sessions"][0]["generate_tokens_calls"], 1);
    assert!(!view.to_string().contains(cookie.split('=').nth(1).unwrap()));
}

#[tokio::test]
async fn signed_urls_are_refused_when_tampered_replayed_stale_or_signed_by_another_key() {
    let sim = Sim::with(SimState::demo().with_embed_secret(SECRET));
    let alice = sso_user("idp|alice", "east");
    let refused = |reply: Reply| {
        assert_page(
            &reply,
            StatusCode::UNAUTHORIZED,
            "embed session could not be started",
        )
    };

    let (url, _) = signed_url(&alice, "n-1", now_secs(), sha256_signer(SECRET));
    assert_eq!(open(&sim, &url, None).await.status, StatusCode::FOUND);
    // Replayed: the nonce is single use.
    refused(open(&sim, &url, None).await);
    // Tampered: another region in a validly signed URL.
    let (url, _) = signed_url(&alice, "n-2", now_secs(), sha256_signer(SECRET));
    let tampered = url.replace(
        &encode_component("{\"region\":\"east\"}"),
        &encode_component("{\"region\":\"west\"}"),
    );
    assert_ne!(tampered, url);
    refused(open(&sim, &tampered, None).await);
    // The same URL for another host does not verify either.
    let mut request = Request::get(&url).header("host", "evil.example:443");
    request = request.header("x", "y");
    refused(sim.send(request.body(Body::empty()).unwrap()).await);
    // Stale or future time, wrong key, no signature.
    for time in [now_secs() - 400, now_secs() + 400] {
        let (url, _) = signed_url(&alice, &format!("n-t{time}"), time, sha256_signer(SECRET));
        refused(open(&sim, &url, None).await);
    }
    let (url, _) = signed_url(&alice, "n-3", now_secs(), sha256_signer("another-secret"));
    refused(open(&sim, &url, None).await);
    let (url, _) = signed_url(&alice, "n-4", now_secs(), sha256_signer(SECRET));
    let unsigned = url.split("&signature=").next().unwrap().to_owned();
    refused(open(&sim, &unsigned, None).await);
    // A signed embed user Looker would refuse (an admin permission).
    let mut admin = sso_user("idp|alice", "east");
    admin.permissions.push("admin".into());
    let (url, _) = signed_url(&admin, "n-5", now_secs(), sha256_signer(SECRET));
    refused(open(&sim, &url, None).await);
    // The tampered and refused URLs did not use up their nonces: the untouched one works.
    let (url, _) = signed_url(&alice, "n-2", now_secs(), sha256_signer(SECRET));
    assert_eq!(open(&sim, &url, None).await.status, StatusCode::FOUND);
    let sessions = sim.embed_view().await["sessions"].as_array().unwrap().len();
    assert_eq!(sessions, 2);
}

#[tokio::test]
async fn signing_follows_the_secrets_algorithm_enabled_state_and_deletion() {
    use hmac::{KeyInit, Mac};
    let sim = Sim::new();
    let admin = sim.admin().await;
    let mut secrets = Vec::new();
    for body in [
        json!({"algorithm": "hmac/sha-1"}),
        json!({"enabled": false}),
    ] {
        let reply = sim
            .call(Method::POST, SECRETS, Some(&admin), Some(body))
            .await;
        secrets.push(reply.json());
    }
    let sha1_secret: &'static str = secrets[0]["secret"].as_str().unwrap().to_owned().leak();
    let disabled: &'static str = secrets[1]["secret"].as_str().unwrap().to_owned().leak();
    let sha1_signer = move |text: &[u8]| {
        hmac::Hmac::<sha1::Sha1>::new_from_slice(sha1_secret.as_bytes())
            .unwrap()
            .chain_update(text)
            .finalize()
            .into_bytes()
            .to_vec()
    };
    let alice = sso_user("idp|alice", "west");
    let (url, _) = signed_url(&alice, "n-1", now_secs(), sha1_signer);
    assert_eq!(open(&sim, &url, None).await.status, StatusCode::FOUND);
    // A SHA-256 signature with the SHA-1 secret is not accepted, nor the disabled secret.
    let (url, _) = signed_url(&alice, "n-2", now_secs(), sha256_signer(sha1_secret));
    assert_eq!(
        open(&sim, &url, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let (url, _) = signed_url(&alice, "n-3", now_secs(), sha256_signer(disabled));
    assert_eq!(
        open(&sim, &url, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Rotation: once deleted, the old secret signs nothing.
    let uri = format!("{SECRETS}/{}", secrets[0]["id"].as_str().unwrap());
    assert_eq!(
        sim.call(Method::DELETE, &uri, Some(&admin), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let (url, _) = signed_url(&alice, "n-4", now_secs(), sha1_signer);
    assert_eq!(
        open(&sim, &url, None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn force_logout_login_false_keeps_the_browsers_live_session() {
    let sim = Sim::with(SimState::demo().with_embed_secret(SECRET));
    let mut alice = sso_user("idp|alice", "west");
    let (url, _) = signed_url(&alice, "n-1", now_secs(), sha256_signer(SECRET));
    let cookie = session_cookie(&open(&sim, &url, None).await);

    alice.force_logout_login = false;
    let (url, _) = signed_url(&alice, "n-2", now_secs(), sha256_signer(SECRET));
    let kept = open(&sim, &url, Some(&cookie)).await;
    assert_eq!(kept.status, StatusCode::FOUND);
    assert!(kept.headers.get("set-cookie").is_none());
    assert_eq!(
        sim.embed_view().await["sessions"].as_array().unwrap().len(),
        1
    );

    // The default (true) replaces it: the old cookie stops working.
    alice.force_logout_login = true;
    let (url, target) = signed_url(&alice, "n-3", now_secs(), sha256_signer(SECRET));
    let replaced = open(&sim, &url, Some(&cookie)).await;
    let new_cookie = session_cookie(&replaced);
    assert_ne!(new_cookie, cookie);
    assert_eq!(
        open(&sim, &target, Some(&cookie)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        open(&sim, &target, Some(&new_cookie)).await.status,
        StatusCode::OK
    );
    let states: Vec<Value> = sim.embed_view().await["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].clone())
        .collect();
    assert_eq!(states, [json!("ended"), json!("live")]);
}

#[tokio::test]
async fn tokens_older_than_the_previous_generation_refresh_only_while_live() {
    let sim = Sim::with(SimState::demo().with_embed_token_ttl(Duration::from_millis(300)));
    let token = sim.analyst().await;
    let first = sim.acquired(&token, embed_user("idp|alice", "west")).await;
    let second = sim
        .generate(&token, generate_body(&first, &first))
        .await
        .json();
    let third = sim.generate(&token, generate_body(&first, &second)).await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.text);
    let third = third.json();
    // Still live: the first generation refreshes although two newer ones exist.
    let live = sim.generate(&token, generate_body(&first, &first)).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.text);
    let current = live.json();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // All expired now: only the current and the previous generation still refresh.
    let stale = sim.generate(&token, generate_body(&first, &second)).await;
    assert_eq!(stale.status, StatusCode::BAD_REQUEST, "{}", stale.text);
    let previous = sim.generate(&token, generate_body(&first, &third)).await;
    assert_eq!(previous.status, StatusCode::OK, "{}", previous.text);
    // That call made a new generation: the one that was current is now the previous.
    let current = sim.generate(&token, generate_body(&first, &current)).await;
    assert_eq!(current.status, StatusCode::OK, "{}", current.text);
}
