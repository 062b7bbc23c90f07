//! Router-level tests: requests go through `app(state)` with tower's `oneshot`, and
//! assertions look at statuses, bodies and what the simulator recorded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::operations::{embedded, sample_path};
use crate::{app, SimState, DOCUMENTATION_URL};

const FORM: &str = "application/x-www-form-urlencoded";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// A simulator plus the state it shares, so tests can both call it and look inside.
struct Sim {
    state: SimState,
    router: Router,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(SimState::demo())
    }

    fn with(state: SimState) -> Sim {
        Sim {
            router: app(state.clone()),
            state,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("token {token}"));
        }
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    async fn get(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::GET, uri, Some(token), None).await
    }

    async fn login_reply(&self, client_id: &str, client_secret: &str) -> Reply {
        let form = format!("client_id={client_id}&client_secret={client_secret}");
        let request = Request::post("/api/4.0/login")
            .header("content-type", FORM)
            .body(Body::from(form))
            .unwrap();
        self.send(request).await
    }

    async fn login(&self, client_id: &str, client_secret: &str) -> String {
        let reply = self.login_reply(client_id, client_secret).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }

    async fn admin(&self) -> String {
        self.login("demo-admin-id", "demo-admin-secret").await
    }

    async fn analyst(&self) -> String {
        self.login("demo-analyst-id", "demo-analyst-secret").await
    }
}

fn assert_looker_error(reply: &Reply, status: StatusCode, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(
        reply.json(),
        json!({"message": message, "documentation_url": DOCUMENTATION_URL})
    );
}

// ---- login ----

#[tokio::test]
async fn demo_credentials_log_in_as_their_user() {
    let sim = Sim::with(SimState::demo().with_token_ttl(Duration::from_secs(120)));
    for (client_id, secret, user_id) in [
        ("demo-admin-id", "demo-admin-secret", "1"),
        ("demo-analyst-id", "demo-analyst-secret", "101"),
        ("demo-viewer-id", "demo-viewer-secret", "102"),
    ] {
        let reply = sim.login_reply(client_id, secret).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let body = reply.json();
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(token.len(), 40);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 120);
        assert_eq!(
            sim.get("/api/4.0/user", token).await.json()["id"],
            user_id,
            "{client_id}"
        );
    }
}

#[tokio::test]
async fn credentials_in_the_query_string_are_accepted_like_looker() {
    let sim = Sim::new();
    let reply = sim
        .call(
            Method::POST,
            "/api/4.0/login?client_id=demo-viewer-id&client_secret=demo-viewer-secret",
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn wrong_credentials_get_lookers_404() {
    let sim = Sim::new();
    let cases = [
        ("demo-admin-id", "wrong", StatusCode::NOT_FOUND),
        ("nobody", "demo-admin-secret", StatusCode::NOT_FOUND),
        (
            "demo-analyst-id",
            "demo-viewer-secret",
            StatusCode::NOT_FOUND,
        ),
    ];
    for (id, secret, status) in cases {
        assert_looker_error(&sim.login_reply(id, secret).await, status, "Not found");
    }
    let missing = sim.call(Method::POST, "/api/4.0/login", None, None).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.text);
}

#[tokio::test]
async fn login_attempts_are_listed_without_secrets() {
    let sim = Sim::new();
    sim.admin().await;
    sim.login_reply("demo-viewer-id", "wrong-secret").await;
    let reply = sim.call(Method::GET, "/__sim/logins", None, None).await;
    assert_eq!(
        reply.json(),
        json!([
            {"client_id": "demo-admin-id", "ok": true, "status": 200},
            {"client_id": "demo-viewer-id", "ok": false, "status": 404},
        ])
    );
    assert!(!reply.text.contains("secret"));
}

// ---- authentication ----

#[tokio::test]
async fn calls_without_a_live_token_get_401() {
    let sim = Sim::with(SimState::demo().with_token_ttl(Duration::from_millis(50)));
    let expiring = sim.analyst().await;
    let revoked = sim.analyst().await;
    let logged_out = sim.analyst().await;
    sim.state.revoke(&revoked);
    let out = sim
        .call(Method::DELETE, "/api/4.0/logout", Some(&logged_out), None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let cases: [(&str, Option<String>); 6] = [
        ("no header", None),
        ("unknown token", Some("token abcdef".into())),
        ("unknown scheme", Some(format!("Basic {revoked}"))),
        ("expired", Some(format!("token {expiring}"))),
        ("revoked", Some(format!("token {revoked}"))),
        ("logged out", Some(format!("Bearer {logged_out}"))),
    ];
    for (why, authorization) in cases {
        let mut request = Request::get("/api/4.0/dashboards/1");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let reply = sim.send(request.body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{why}");
        assert_looker_error(&reply, StatusCode::UNAUTHORIZED, "Requires authentication.");
    }
}

#[tokio::test]
async fn token_bearer_and_access_token_parameter_all_authenticate() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let requests = [
        Request::get("/api/4.0/user").header("authorization", format!("token {token}")),
        Request::get("/api/4.0/user").header("authorization", format!("Bearer {token}")),
        Request::get("/api/4.0/user").header("authorization", format!("TOKEN {token}")),
        Request::get(format!("/api/4.0/user?access_token={token}")),
    ];
    for request in requests {
        let reply = sim.send(request.body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.json()["email"], "svc-analyst@example.com");
    }
}

// ---- routing by the operation table ----

#[tokio::test]
async fn every_spec_operation_is_routed_and_requires_authentication() {
    let sim = Sim::new();
    let table = embedded();
    assert_eq!(table.operations().len(), 483);
    for op in table.operations() {
        let uri = format!("/api/4.0{}", sample_path(&op.template));
        let method = Method::from_bytes(op.method.as_bytes()).unwrap();
        let reply = sim.call(method, &uri, None, None).await;
        let want = if op.operation_id == "login" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(
            reply.status, want,
            "{} {uri} ({}): {}",
            op.method, op.operation_id, reply.text
        );
    }
}

#[tokio::test]
async fn paths_and_methods_outside_the_spec_get_404_even_with_a_token() {
    let sim = Sim::new();
    let token = sim.admin().await;
    let cases = [
        (Method::GET, "/api/4.0/no_such_thing"),
        (Method::PUT, "/api/4.0/dashboards/1"),
        (Method::GET, "/api/4.0/dashboards/1/nope"),
        (Method::GET, "/api/4.0"),
        (Method::GET, "/api/3.1/user"),
        (Method::GET, "/"),
    ];
    for (method, uri) in cases {
        let reply = sim.call(method.clone(), uri, Some(&token), None).await;
        assert_looker_error(&reply, StatusCode::NOT_FOUND, "Not found");
    }
    // Unknown operations are refused before authentication, as Looker does.
    let anonymous = sim
        .call(Method::GET, "/api/4.0/no_such_thing", None, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn operations_without_handlers_answer_generated_data_after_authentication() {
    let sim = Sim::new();
    let token = sim.admin().await;
    let folder = sim.get("/api/4.0/folders/1", &token).await;
    assert_eq!(folder.status, StatusCode::OK, "{}", folder.text);
    assert_eq!(folder.headers["content-type"], "application/json");
    let body = folder.json();
    assert_eq!(body["id"], "1");
    assert_eq!(body["created_at"], "2026-01-01T00:00:00.000+00:00");
    assert_eq!(body["can"]["show"], true);
    assert!(body["dashboards"].is_array(), "{body}");
    // Ids of resources the demo does not know are accepted and echoed.
    assert_eq!(
        sim.get("/api/4.0/groups/77", &token).await.json()["id"],
        "77"
    );
    let dashboards = sim.get("/api/4.0/dashboards", &token).await.json();
    let ids: Vec<&str> = dashboards
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2"], "the demo's dashboard ids");
    assert_eq!(
        sim.get("/api/4.0/folders/1?fields=id,name", &token)
            .await
            .json(),
        json!({"id": "1", "name": "name 1"}),
        "the fields parameter applies"
    );
    let deleted = sim
        .call(Method::DELETE, "/api/4.0/dashboards/2", Some(&token), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(deleted.text, "");
    let key = sim.get("/api/4.0/projects/p/git/deploy_key", &token).await;
    assert_eq!(key.status, StatusCode::OK);
    assert!(key.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let thumbnail = sim
        .get("/api/4.0/vector_thumbnail/dashboard/1", &token)
        .await;
    assert_eq!(thumbnail.headers["content-type"], "image/svg+xml");
    assert!(thumbnail.text.starts_with("<svg"));
    let anonymous = sim
        .call(Method::GET, "/api/4.0/folders/1", None, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    // Generated answers are recorded like any other call.
    assert!(sim
        .state
        .requests()
        .iter()
        .any(|r| r.path == "/api/4.0/groups/77"));
}

#[tokio::test]
async fn unknown_ids_of_resources_the_demo_knows_get_404() {
    let sim = Sim::new();
    let token = sim.admin().await;
    for uri in [
        "/api/4.0/folders/999",
        "/api/4.0/folders/999/dashboards",
        "/api/4.0/dashboards/9/dashboard_elements",
        "/api/4.0/looks/99",
        "/api/4.0/looks/99/run/json",
        "/api/4.0/users/999/roles",
        "/api/4.0/queries/999",
        "/api/4.0/lookml_models/nope",
        "/api/4.0/lookml_models/thelook/explores/nope",
    ] {
        assert_looker_error(
            &sim.get(uri, &token).await,
            StatusCode::NOT_FOUND,
            "Not found",
        );
    }
    for uri in [
        "/api/4.0/folders/1001/dashboards",
        "/api/4.0/dashboards/2/dashboard_elements",
        "/api/4.0/users/203/roles",
        "/api/4.0/lookml_models/thelook/explores/orders",
    ] {
        let reply = sim.get(uri, &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text);
    }
}

#[tokio::test]
async fn request_bodies_are_checked_against_the_spec() {
    let sim = Sim::new();
    let token = sim.admin().await;
    let post = |body: &'static str| {
        Request::post("/api/4.0/folders")
            .header("authorization", format!("token {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let malformed = sim.send(post("{\"name\": ")).await;
    assert_eq!(
        malformed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        malformed.text
    );
    assert_eq!(malformed.json()["documentation_url"], DOCUMENTATION_URL);
    let missing = sim.send(post("{\"name\": \"Reports\"}")).await;
    assert_eq!(
        missing.json(),
        json!({
            "message": "Validation Failed",
            "errors": [{"field": "parent_id", "code": "missing_field", "message": "parent_id is required", "documentation_url": DOCUMENTATION_URL}],
            "documentation_url": DOCUMENTATION_URL,
        })
    );
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    let wrong_type = sim
        .send(post("{\"name\": [\"Reports\"], \"parent_id\": \"1\"}"))
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_type.json()["errors"][0]["field"], "name");
    assert_eq!(wrong_type.json()["errors"][0]["code"], "invalid");
    let created = sim
        .send(post("{\"name\": \"Reports\", \"parent_id\": \"1\"}"))
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    assert!(created.json()["id"].is_string());
    // Authentication comes first, as in Looker.
    let anonymous = sim
        .call(Method::POST, "/api/4.0/folders", None, Some(json!({})))
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

// ---- users ----

#[tokio::test]
async fn users_are_found_by_id_and_by_credential() {
    let sim = Sim::new();
    let token = sim.admin().await;
    let cases = [
        ("/api/4.0/users/203", StatusCode::OK, Some("203")),
        ("/api/4.0/users/999", StatusCode::NOT_FOUND, None),
        ("/api/4.0/users/abc", StatusCode::NOT_FOUND, None),
        (
            "/api/4.0/users/credential/email/carol@example.com",
            StatusCode::OK,
            Some("203"),
        ),
        (
            "/api/4.0/users/credential/email/Carol%40Example.com",
            StatusCode::OK,
            Some("203"),
        ),
        (
            "/api/4.0/users/credential/email/eve@example.com",
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "/api/4.0/users/credential/api3/demo-viewer-id",
            StatusCode::OK,
            Some("102"),
        ),
        (
            "/api/4.0/users/credential/saml/carol@example.com",
            StatusCode::NOT_FOUND,
            None,
        ),
    ];
    for (uri, status, id) in cases {
        let reply = sim.get(uri, &token).await;
        assert_eq!(reply.status, status, "{uri}: {}", reply.text);
        if let Some(id) = id {
            assert_eq!(reply.json()["id"], id, "{uri}");
        }
    }
}

#[tokio::test]
async fn me_describes_the_tokens_user_like_looker() {
    let sim = Sim::new();
    let reply = sim.get("/api/4.0/user", &sim.analyst().await).await;
    let me = reply.json();
    assert_eq!(me["id"], "101", "ids are strings in API 4.0");
    assert_eq!(me["display_name"], "svc-analyst");
    assert_eq!(me["email"], "svc-analyst@example.com");
    assert_eq!(me["credentials_email"]["email"], "svc-analyst@example.com");
    assert_eq!(me["credentials_api3"][0]["client_id"], "demo-analyst-id");
    assert!(!reply.text.contains("demo-analyst-secret"));
    let only_id = sim
        .get("/api/4.0/user?fields=id,email", &sim.analyst().await)
        .await;
    assert_eq!(
        only_id.json(),
        json!({"id": "101", "email": "svc-analyst@example.com"})
    );
}

// ---- sudo ----

#[tokio::test]
async fn admin_can_sudo_as_a_user() {
    let sim = Sim::new();
    let admin = sim.admin().await;
    let reply = sim
        .call(
            Method::POST,
            "/api/4.0/login/203?associative=false",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let sudo = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_ne!(sudo, admin);
    assert_eq!(
        sim.get("/api/4.0/user", &sudo).await.json()["email"],
        "carol@example.com"
    );
    assert_eq!(
        sim.get("/api/4.0/user", &admin).await.json()["id"],
        "1",
        "the admin token is unchanged"
    );
}

#[tokio::test]
async fn sudo_is_refused_to_non_admins_and_for_unknown_users() {
    let sim = Sim::new();
    let admin = sim.admin().await;
    let analyst = sim.analyst().await;
    let cases = [
        (
            "/api/4.0/login/203",
            Some(analyst.as_str()),
            StatusCode::FORBIDDEN,
        ),
        ("/api/4.0/login/203", None, StatusCode::UNAUTHORIZED),
        (
            "/api/4.0/login/999",
            Some(admin.as_str()),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (uri, token, status) in cases {
        let reply = sim.call(Method::POST, uri, token, None).await;
        assert_eq!(reply.status, status, "{uri} {token:?}: {}", reply.text);
    }
    let logins = sim
        .call(Method::GET, "/__sim/logins", None, None)
        .await
        .json();
    let sudo: Vec<Value> = logins
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("sudo_user_id").is_some())
        .cloned()
        .collect();
    assert_eq!(
        sudo,
        [
            json!({"sudo_user_id": "203", "ok": false, "status": 403}),
            json!({"sudo_user_id": "203", "ok": false, "status": 401}),
            json!({"sudo_user_id": "999", "ok": false, "status": 404}),
        ]
    );
}

// ---- content ----

#[tokio::test]
async fn dashboards_and_looks_come_from_the_demo_data() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let cases = [
        (
            "/api/4.0/dashboards/1",
            StatusCode::OK,
            Some("Business Pulse"),
        ),
        (
            "/api/4.0/dashboards/2",
            StatusCode::OK,
            Some("Order Status"),
        ),
        ("/api/4.0/dashboards/99", StatusCode::NOT_FOUND, None),
        ("/api/4.0/looks/1", StatusCode::OK, Some("Orders by Status")),
        (
            "/api/4.0/looks/2",
            StatusCode::OK,
            Some("Completed Orders by State"),
        ),
        ("/api/4.0/looks/99", StatusCode::NOT_FOUND, None),
    ];
    for (uri, status, title) in cases {
        let reply = sim.get(uri, &token).await;
        assert_eq!(reply.status, status, "{uri}");
        if let Some(title) = title {
            assert_eq!(reply.json()["title"], title, "{uri}");
        }
    }
    let look = sim.get("/api/4.0/looks/1", &token).await.json();
    assert_eq!(look["query"]["model"], "thelook");
    assert_eq!(
        sim.get("/api/4.0/dashboards/1?fields=id", &token)
            .await
            .json(),
        json!({"id": "1"})
    );
}

// ---- queries ----

#[tokio::test]
async fn inline_queries_run_over_the_orders_explore() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let count = json!({"model": "thelook", "view": "orders", "fields": ["orders.count"]});
    let reply = sim
        .call(
            Method::POST,
            "/api/4.0/queries/run/json",
            Some(&token),
            Some(count),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json(), json!([{"orders.count": 40}]));

    let by_status = json!({
        "model": "thelook", "view": "orders", "fields": ["orders.status", "orders.count"],
        "filters": {"orders.status": "-cancelled"}, "sorts": ["orders.status"], "limit": "500",
    });
    let csv = sim
        .call(
            Method::POST,
            "/api/4.0/queries/run/csv",
            Some(&token),
            Some(by_status),
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.text,
        "Orders Status,Orders Count\ncomplete,20\npending,10\n"
    );

    let ids = json!({"model": "thelook", "view": "orders", "fields": ["orders.id"], "limit": "5"});
    let rows = sim
        .call(
            Method::POST,
            "/api/4.0/queries/run/json",
            Some(&token),
            Some(ids.clone()),
        )
        .await
        .json();
    assert_eq!(rows.as_array().unwrap().len(), 5, "limit from the body");
    let rows = sim
        .call(
            Method::POST,
            "/api/4.0/queries/run/json?limit=2",
            Some(&token),
            Some(ids),
        )
        .await
        .json();
    assert_eq!(
        rows.as_array().unwrap().len(),
        2,
        "the limit parameter wins"
    );
}

#[tokio::test]
async fn bad_queries_fail_like_looker() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let cases = [
        (
            "json",
            json!({"model": "nope", "view": "orders", "fields": ["orders.count"]}),
            StatusCode::NOT_FOUND,
        ),
        (
            "json",
            json!({"model": "thelook", "view": "nope", "fields": ["orders.count"]}),
            StatusCode::NOT_FOUND,
        ),
        (
            "json",
            json!({"model": "thelook", "view": "orders", "fields": ["orders.nope"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // `model` is required by the spec's `Query` schema.
        (
            "json",
            json!({"view": "orders"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bogus",
            json!({"model": "thelook", "view": "orders", "fields": ["orders.count"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "xlsx",
            json!({"model": "thelook", "view": "orders", "fields": ["orders.count"]}),
            StatusCode::NOT_IMPLEMENTED,
        ),
    ];
    for (format, body, status) in cases {
        let reply = sim
            .call(
                Method::POST,
                &format!("/api/4.0/queries/run/{format}"),
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(reply.status, status, "{format} {body}: {}", reply.text);
        assert_eq!(reply.json()["documentation_url"], DOCUMENTATION_URL);
    }
    let unknown_model = json!({"model": "nope", "view": "orders", "fields": ["orders.count"]});
    let reply = sim
        .call(
            Method::POST,
            "/api/4.0/queries/run/json",
            Some(&token),
            Some(unknown_model),
        )
        .await;
    assert_looker_error(&reply, StatusCode::NOT_FOUND, "Not found");
}

#[tokio::test]
async fn created_queries_can_be_read_and_run_by_id() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let body = json!({"model": "thelook", "view": "orders", "fields": ["users.state", "orders.count"], "sorts": ["users.state"]});
    let created = sim
        .call(Method::POST, "/api/4.0/queries", Some(&token), Some(body))
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sim.get(&format!("/api/4.0/queries/{id}"), &token)
            .await
            .json()["fields"],
        json!(["users.state", "orders.count"])
    );
    let txt = sim
        .get(&format!("/api/4.0/queries/{id}/run/txt?limit=1"), &token)
        .await;
    assert_eq!(txt.status, StatusCode::OK);
    assert_eq!(txt.text, "Users State\tOrders Count\nCalifornia\t16\n");
    assert_eq!(
        sim.get("/api/4.0/queries/1/run/json", &token).await.status,
        StatusCode::OK,
        "saved demo query"
    );
    assert_eq!(
        sim.get("/api/4.0/queries/999/run/json", &token)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// Row count and the SQL's LIMIT clause of a `json`/`sql` run.
async fn rows_of(sim: &Sim, request: Request<Body>) -> usize {
    let reply = sim.send(request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.json().as_array().unwrap().len()
}

fn inline(token: &str, query: &str, body: Value) -> Request<Body> {
    Request::post(format!("/api/4.0/queries/run/json{query}"))
        .header("authorization", format!("token {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn the_url_limit_of_run_inline_query_overrides_the_bodys() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let ids = |limit: Value| json!({"model": "thelook", "view": "orders", "fields": ["orders.id"], "limit": limit});
    let cases = [
        ("", json!("5"), 5),
        ("?limit=3", json!("5"), 3),
        ("?limit=30", json!("5"), 30),
        ("?limit=-1", json!("5"), 40),
        ("?limit=0", json!("5"), 40),
        ("", json!("-1"), 40),
        ("", json!("0"), 40),
        ("", Value::Null, 40),
        // Percent-encoded names are decoded, as Looker's Rails stack does.
        ("?%6Cimit=2", json!("5"), 2),
    ];
    for (query, limit, want) in cases {
        let got = rows_of(&sim, inline(&token, query, ids(limit.clone()))).await;
        assert_eq!(got, want, "url {query:?}, body limit {limit}");
    }
    let sql = sim
        .send(
            Request::post("/api/4.0/queries/run/sql?limit=-1")
                .header("authorization", format!("token {token}"))
                .body(Body::from(ids(json!("5")).to_string()))
                .unwrap(),
        )
        .await;
    assert!(!sql.text.contains("LIMIT"), "-1 is unlimited: {}", sql.text);
}

#[tokio::test]
async fn run_look_and_run_query_run_the_stored_query() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    // Look 1's query (id 1): orders.status and orders.count, by count descending.
    let by_look = sim.get("/api/4.0/looks/1/run/csv", &token).await;
    assert_eq!(by_look.status, StatusCode::OK, "{}", by_look.text);
    assert_eq!(
        by_look.text,
        "Orders Status,Orders Count\ncomplete,20\ncancelled,10\npending,10\n"
    );
    let by_query = sim.get("/api/4.0/queries/1/run/csv", &token).await;
    assert_eq!(by_query.text, by_look.text, "the look runs its query");
    let limited = sim.get("/api/4.0/looks/1/run/json?limit=1", &token).await;
    assert_eq!(
        limited.json(),
        json!([{"orders.status": "complete", "orders.count": 20}])
    );
    // Look 2's query filters on orders.status = complete.
    let look2 = sim.get("/api/4.0/looks/2/run/json", &token).await.json();
    let total: u64 = look2
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["orders.count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 20);
    assert_eq!(
        sim.get("/api/4.0/looks/1/run/xlsx", &token).await.status,
        StatusCode::NOT_IMPLEMENTED
    );
    let png = sim.get("/api/4.0/looks/1/run/png", &token).await;
    assert_eq!(png.headers["content-type"], "image/png");
}

#[tokio::test]
async fn run_url_encoded_query_decodes_fields_filters_sorts_and_limit() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let url = "/api/4.0/queries/models/thelook/views/orders/run";
    let cases = [
        (
            "json?fields=orders.status,orders.count&sorts=orders.status",
            "[{\"orders.status\":\"cancelled\",\"orders.count\":10},{\"orders.status\":\"complete\",\"orders.count\":20},{\"orders.status\":\"pending\",\"orders.count\":10}]",
        ),
        (
            "json?fields=orders.status,orders.count&f%5Borders.status%5D=complete",
            "[{\"orders.status\":\"complete\",\"orders.count\":20}]",
        ),
        (
            "json?fields=orders.id&sorts=orders.id+desc&limit=2",
            "[{\"orders.id\":40},{\"orders.id\":39}]",
        ),
        (
            "csv?fields=orders.status,orders.count&f[orders.status]=-complete&sorts=orders.status&pivots=orders.status",
            "Orders Status,Orders Count\ncancelled,10\npending,10\n",
        ),
        (
            "txt?fields=orders.count&f[orders.id]=%3E30",
            "Orders Count\n10\n",
        ),
    ];
    for (query, want) in cases {
        let reply = sim.get(&format!("{url}/{query}"), &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
        assert_eq!(reply.text, want, "{query}");
    }
    let failures = [
        ("json?fields=orders.nope", StatusCode::UNPROCESSABLE_ENTITY),
        ("json", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "json?fields=orders.id&pivots=x.y",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "json?fields=orders.id&limit=ten",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("bogus?fields=orders.id", StatusCode::BAD_REQUEST),
    ];
    for (query, status) in failures {
        let reply = sim.get(&format!("{url}/{query}"), &token).await;
        assert_eq!(reply.status, status, "{query}: {}", reply.text);
    }
    let unknown_model = sim
        .get(
            "/api/4.0/queries/models/nope/views/orders/run/json?fields=orders.id",
            &token,
        )
        .await;
    assert_looker_error(&unknown_model, StatusCode::NOT_FOUND, "Not found");
}

// ---- API3 key rotation ----

#[tokio::test]
async fn api3_keys_rotate_new_key_works_and_deleted_key_stops_working() {
    let sim = Sim::new();
    let admin = sim.admin().await;
    let created = sim
        .call(
            Method::POST,
            "/api/4.0/users/101/credentials_api3",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let key = created.json();
    let (client_id, secret) = (
        key["client_id"].as_str().unwrap(),
        key["client_secret"].as_str().unwrap(),
    );
    assert_eq!(key["type"], "api3");
    assert!(key["created_at"].as_str().unwrap().ends_with("+00:00"));
    let new_token = sim.login(client_id, secret).await;
    assert_eq!(
        sim.get("/api/4.0/user", &new_token).await.json()["id"],
        "101"
    );

    let listed = sim.get("/api/4.0/users/101/credentials_api3", &admin).await;
    let ids: Vec<Value> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["client_id"].clone())
        .collect();
    assert_eq!(ids, [json!("demo-analyst-id"), json!(client_id)]);
    assert!(
        !listed.text.contains("secret"),
        "listing never shows secrets: {}",
        listed.text
    );

    let old_id = listed.json()[0]["id"].as_str().unwrap().to_owned();
    let uri = format!("/api/4.0/users/101/credentials_api3/{old_id}");
    assert_eq!(
        sim.call(Method::DELETE, &uri, Some(&admin), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sim.call(Method::DELETE, &uri, Some(&admin), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        sim.login_reply("demo-analyst-id", "demo-analyst-secret")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    sim.login(client_id, secret).await;
}

#[tokio::test]
async fn api3_key_management_needs_an_admin_and_a_real_user() {
    let sim = Sim::new();
    let admin = sim.admin().await;
    let analyst = sim.analyst().await;
    let cases = [
        (
            Method::POST,
            "/api/4.0/users/101/credentials_api3",
            &analyst,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/api/4.0/users/101/credentials_api3",
            &analyst,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::DELETE,
            "/api/4.0/users/101/credentials_api3/2",
            &analyst,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/api/4.0/users/999/credentials_api3",
            &admin,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/api/4.0/users/102/credentials_api3/2",
            &admin,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/4.0/users/101/credentials_api3/2",
            &admin,
            StatusCode::OK,
        ),
    ];
    for (method, uri, token, status) in cases {
        let reply = sim.call(method.clone(), uri, Some(token), None).await;
        assert_eq!(reply.status, status, "{method} {uri}: {}", reply.text);
    }
    sim.login("demo-analyst-id", "demo-analyst-secret").await;
}

// ---- /__sim/ ----

#[tokio::test]
async fn every_api_request_but_logins_is_recorded_in_order_including_rejected_ones() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let request = Request::get("/api/4.0/dashboards/1?fields=id&x=1")
        .header("Authorization", format!("token {token}"))
        .header("X-Custom", "a")
        .header("x-custom", "b")
        .body(Body::empty())
        .unwrap();
    sim.send(request).await;
    sim.call(Method::GET, "/api/4.0/looks/1", None, None).await;
    sim.call(Method::GET, "/api/4.0/nope", None, None).await;
    sim.call(Method::GET, "/__sim/health", None, None).await;
    let seen = sim
        .call(Method::GET, "/__sim/requests", None, None)
        .await
        .json();
    let summary: Vec<(Value, Value, Value)> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["method"].clone(), r["path"].clone(), r["query"].clone()))
        .collect();
    assert_eq!(
        summary,
        // Logins are listed in /__sim/logins, not here.
        [
            (
                json!("GET"),
                json!("/api/4.0/dashboards/1"),
                json!("fields=id&x=1")
            ),
            (json!("GET"), json!("/api/4.0/looks/1"), json!("")),
            (json!("GET"), json!("/api/4.0/nope"), json!("")),
        ]
    );
    assert_eq!(
        seen[0]["headers"]["authorization"],
        format!("token {token}")
    );
    assert_eq!(seen[0]["headers"]["x-custom"], "a, b");
    assert!(seen[1]["headers"].get("authorization").is_none());

    assert_eq!(
        sim.call(Method::DELETE, "/__sim/requests", None, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sim.call(Method::GET, "/__sim/requests", None, None)
            .await
            .json(),
        json!([])
    );
}

#[tokio::test]
async fn login_faults_answer_the_next_count_logins_then_stop() {
    let sim = Sim::new();
    let fault = json!({"login_status": 503, "count": 2});
    assert_eq!(
        sim.call(Method::POST, "/__sim/faults", None, Some(fault))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    for _ in 0..2 {
        let reply = sim.login_reply("demo-admin-id", "demo-admin-secret").await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text
        );
        assert_eq!(reply.headers["retry-after"], "1");
    }
    sim.admin().await;
    let logins = sim.state.logins();
    assert_eq!(
        logins.iter().map(|l| (l.ok, l.status)).collect::<Vec<_>>(),
        [(false, 503), (false, 503), (true, 200)]
    );
}

#[tokio::test]
async fn login_delay_fault_slows_the_next_login_only() {
    let sim = Sim::new();
    sim.call(
        Method::POST,
        "/__sim/faults",
        None,
        Some(json!({"login_delay_ms": 150})),
    )
    .await;
    let started = std::time::Instant::now();
    sim.admin().await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    sim.admin().await;
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn api_faults_hit_non_login_calls_with_retry_after() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let fault = json!({"api_status": 429, "count": 1});
    sim.call(Method::POST, "/__sim/faults", None, Some(fault))
        .await;
    sim.analyst().await; // logins are not affected
    let limited = sim.get("/api/4.0/dashboards/1", &token).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(limited.json()["message"], "Too Many Requests");
    assert_eq!(
        sim.get("/api/4.0/dashboards/1", &token).await.status,
        StatusCode::OK
    );

    let fault = json!({"api_status": 500, "count": 5, "retry_after": 7});
    sim.call(Method::POST, "/__sim/faults", None, Some(fault))
        .await;
    let failed = sim.get("/api/4.0/dashboards/1", &token).await;
    assert_eq!(
        (
            failed.status,
            failed.headers["retry-after"].to_str().unwrap()
        ),
        (StatusCode::INTERNAL_SERVER_ERROR, "7")
    );
    assert_eq!(
        sim.call(Method::DELETE, "/__sim/faults", None, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sim.get("/api/4.0/dashboards/1", &token).await.status,
        StatusCode::OK,
        "DELETE clears faults"
    );
}

#[tokio::test]
async fn api_delay_fault_slows_the_next_api_calls_then_answers_them() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let fault = json!({"api_delay_ms": 150, "count": 1});
    sim.call(Method::POST, "/__sim/faults", None, Some(fault))
        .await;
    sim.analyst().await; // logins are not affected
    let started = std::time::Instant::now();
    let slow = sim.get("/api/4.0/dashboards/1", &token).await;
    assert_eq!(slow.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    sim.get("/api/4.0/dashboards/1", &token).await;
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn invalid_faults_are_refused() {
    let sim = Sim::new();
    for body in [
        json!({"login_status": 99}),
        json!({"api_status": 600}),
        json!({"login_stauts": 500}),
    ] {
        let reply = sim
            .call(Method::POST, "/__sim/faults", None, Some(body.clone()))
            .await;
        assert!(reply.status.is_client_error(), "{body}: {}", reply.status);
    }
    sim.admin().await;
}

#[tokio::test]
async fn sim_revoke_ends_a_token_early() {
    let sim = Sim::new();
    let token = sim.analyst().await;
    let revoke = json!({"access_token": token});
    assert_eq!(
        sim.call(Method::POST, "/__sim/revoke", None, Some(revoke.clone()))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sim.get("/api/4.0/user", &token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sim.call(Method::POST, "/__sim/revoke", None, Some(revoke))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn health_answers_200() {
    let reply = Sim::new()
        .call(Method::GET, "/__sim/health", None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"status": "ok"}));
}

mod embed;
