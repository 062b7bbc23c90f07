//! Looker API 4.0 under `/api/4.0`: every request is recorded, matched against the
//! operation table (404 when no operation fits), authenticated (401), its JSON body
//! checked against the spec's request schema (400 malformed, 422 invalid: `spec`), and
//! answered by the operation's hand-written handler (`HAND_WRITTEN`: sessions, users,
//! dashboards, looks, queries, API3 keys, embedding), or else by demo data generated from
//! the spec's success response (`generated`), after a 404 for an unknown id of a resource
//! the demo knows.
//!
//! Queries run through the explore engine (`explore`), reading parameters as the spec
//! describes them:
//! - `run_inline_query`: the body is a `Query`; "limit: Row limit (may override the limit
//!   in the saved query)": the URL's `limit` wins over the body's.
//! - `run_query`: "This runs a previously saved query": the stored query by id, with the
//!   URL's `limit`.
//! - `run_look`: "Runs a given look's query and returns the results in the requested
//!   format": the look's stored query, with the URL's `limit`.
//! - `run_url_encoded_query`: "the specifiers for the query [are encoded] into the URL
//!   query part": `fields` and `sorts` comma separated, `f[<field>]=<filter>` one per
//!   field, `limit`, `pivots` (checked like fields; the engine does not pivot).
//! - result formats: those the spec's table lists, except `xlsx` (501); others 400.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use crate::demo::{self, DemoUser, ADMIN_USER_ID};
use crate::embed;
use crate::explore::{self, Format, QueryError, QuerySpec};
use crate::operations::{self, Matched};
use crate::spec::{self, BodyError, FieldError, Generator, Kind};
use crate::state::{Api3Key, LoginAttempt, LoginFault, RecordedRequest, SimState, World};

/// Looker puts this link in every error body.
pub const DOCUMENTATION_URL: &str = "https://cloud.google.com/looker/docs/";
const API_BASE: &str = "/api/4.0";
const MAX_BODY_BYTES: usize = 1 << 20;

/// Every way a Looker call fails; `into_response` is the one place they become replies.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// Unknown path or id; also Looker's answer to wrong login credentials.
    NotFound,
    Unauthenticated,
    Forbidden,
    BadRequest(String),
    /// Looker's 422 `ValidationError`; `code` is Looker's ("missing", "invalid").
    Validation {
        field: &'static str,
        code: &'static str,
        message: String,
    },
    /// Looker's 422 with every field that failed the request schema.
    Invalid(Vec<FieldError>),
    NotImplemented {
        operation_id: String,
    },
    Injected {
        status: StatusCode,
        retry_after: Option<u64>,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, error_body("Not found")),
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                error_body("Requires authentication."),
            ),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, error_body("Forbidden")),
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, error_body(&message)),
            ApiError::Validation {
                field,
                code,
                message,
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "message": "Validation Failed",
                    "errors": [{"field": field, "code": code, "message": message, "documentation_url": DOCUMENTATION_URL}],
                    "documentation_url": DOCUMENTATION_URL,
                }),
            ),
            ApiError::Invalid(errors) => {
                let errors: Vec<Value> = errors
                    .into_iter()
                    .map(|e| json!({"field": e.field, "code": e.code, "message": e.message, "documentation_url": DOCUMENTATION_URL}))
                    .collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": "Validation Failed", "errors": errors, "documentation_url": DOCUMENTATION_URL}),
                )
            }
            ApiError::NotImplemented { operation_id } => (
                StatusCode::NOT_IMPLEMENTED,
                error_body(&format!(
                    "Operation {operation_id} is not implemented by lookergate-looker-sim"
                )),
            ),
            ApiError::Injected {
                status,
                retry_after,
            } => {
                let mut response = json_reply(
                    status,
                    &error_body(status.canonical_reason().unwrap_or("Injected fault")),
                );
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                return response;
            }
        };
        json_reply(status, &body)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            // Looker answers an unknown model or explore with a plain 404.
            QueryError::UnknownModel(_) | QueryError::UnknownExplore(_) => ApiError::NotFound,
            QueryError::UnknownField(_) | QueryError::NoFields => ApiError::Validation {
                field: "fields",
                code: "invalid",
                message: e.to_string(),
            },
            QueryError::BadLimit(_) => ApiError::Validation {
                field: "limit",
                code: "invalid",
                message: e.to_string(),
            },
        }
    }
}

pub(crate) fn error_body(message: &str) -> Value {
    json!({"message": message, "documentation_url": DOCUMENTATION_URL})
}

pub(crate) fn json_reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn ok_json(body: &Value) -> Response {
    json_reply(StatusCode::OK, body)
}

/// The router's fallback: everything that is not a `/__sim/` endpoint lands here.
pub(crate) async fn handle(State(state): State<SimState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    // Logins are recorded in `/__sim/logins` instead: this list is what clients sent
    // through the gateway, so tests can assert exactly what reached Looker.
    let is_login = path == "/api/4.0/login" || path.starts_with("/api/4.0/login/");
    let record = (path.starts_with("/api/") && !is_login).then(|| {
        state.world().record_request(RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers: header_map(&parts.headers),
            trailers: BTreeMap::new(),
        })
    });
    // Read whole here, trailers included, so the record shows any trailer that got through.
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => {
            if let (Some(id), Some(trailers)) = (record, collected.trailers()) {
                state.world().record_trailers(id, header_map(trailers));
            }
            Ok(collected.to_bytes())
        }
        Err(_) => Err(ApiError::BadRequest(format!(
            "request body larger than {MAX_BODY_BYTES} bytes"
        ))),
    };
    let response = dispatch(&state, &parts, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    // Path only: query strings may carry credentials (`login?client_secret=`).
    eprintln!(
        "looker-sim: {} {} -> {}",
        parts.method,
        loggable_path(&path),
        response.status().as_u16()
    );
    response
}

/// The path as logged: a session reference token in it (delete_embed_cookieless_session)
/// shows as its fingerprint.
fn loggable_path(path: &str) -> String {
    const SESSIONS: &str = "/api/4.0/embed/cookieless_session/";
    match path.strip_prefix(SESSIONS) {
        Some(rest) if !matches!(rest, "acquire" | "generate_tokens") => format!(
            "{SESSIONS}<{}>",
            lookergate_proto::fingerprint(rest.as_bytes())
        ),
        _ => path.to_owned(),
    }
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    map
}

/// Query parameters, decoded; a malformed query string counts as empty.
fn query_params(parts: &Parts) -> Vec<(String, String)> {
    serde_urlencoded::from_str(parts.uri.query().unwrap_or_default()).unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The access token: `Authorization: token X` or `Bearer X`, else `?access_token=X`.
fn access_token(parts: &Parts, params: &[(String, String)]) -> Option<String> {
    let from_header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            let known =
                scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer");
            (known && !token.trim().is_empty()).then(|| token.trim().to_owned())
        });
    from_header.or_else(|| {
        param(params, "access_token")
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    })
}

/// Who is calling: the session's user and the token that proves it.
struct Caller {
    user_id: u64,
    token: String,
}

impl Caller {
    fn require_admin(&self) -> Result<(), ApiError> {
        if self.user_id == ADMIN_USER_ID {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

fn authenticate(state: &SimState, token: Option<String>) -> Result<Caller, ApiError> {
    let token = token.ok_or(ApiError::Unauthenticated)?;
    let user_id = state
        .world()
        .session(&token)
        .map(|s| s.user_id)
        .ok_or(ApiError::Unauthenticated)?;
    Ok(Caller { user_id, token })
}

/// `body`: the request body, or the error for one over the size limit.
async fn dispatch(
    state: &SimState,
    parts: &Parts,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let path = parts.uri.path();
    let relative = path
        .strip_prefix(API_BASE)
        .filter(|r| r.starts_with('/'))
        .ok_or(ApiError::NotFound)?;
    let matched = operations::find(parts.method.as_str(), relative).ok_or(ApiError::NotFound)?;
    let params = query_params(parts);
    let body = body?;
    let token = access_token(parts, &params);
    let operation_id = matched.operation.operation_id.as_str();
    match operation_id {
        "login" => return login(state, &params, &body).await,
        "login_user" => return login_user(state, &matched, token).await,
        _ => {}
    }
    let fault = state.world().take_api_fault();
    if let Some(fault) = fault {
        tokio::time::sleep(fault.delay).await;
        if let Some(status) = fault.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(ApiError::Injected {
                status,
                retry_after: fault.retry_after,
            });
        }
    }
    let caller = authenticate(state, token)?;
    let spec_op = spec::operation(parts.method.as_str(), &matched.operation.template);
    if let Some(spec_op) = spec_op {
        spec::check_body(spec_op, &body).map_err(|e| match e {
            BodyError::Malformed(message) => ApiError::BadRequest(message),
            BodyError::Invalid(errors) => ApiError::Invalid(errors),
        })?;
    }
    let fields = param(&params, "fields");
    let limit = param(&params, "limit");
    match operation_id {
        "logout" => {
            state.world().close_session(&caller.token);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        "me" => {
            let world = state.world();
            let user = world.user(caller.user_id).ok_or(ApiError::NotFound)?;
            Ok(ok_json(&select_fields(user_json(&world, user), fields)))
        }
        "user" => {
            let world = state.world();
            let user = find_user(&world, matched.param("user_id"))?;
            Ok(ok_json(&select_fields(user_json(&world, user), fields)))
        }
        "user_for_credential" => {
            let world = state.world();
            let user = user_for_credential(
                &world,
                matched.param("credential_type"),
                matched.param("credential_id"),
            )?;
            Ok(ok_json(&select_fields(user_json(&world, user), fields)))
        }
        "dashboard" => {
            let dashboard =
                demo::dashboard(matched.param("dashboard_id")).ok_or(ApiError::NotFound)?;
            Ok(ok_json(&select_fields(dashboard, fields)))
        }
        "look" => {
            let look = demo::look(matched.param("look_id")).ok_or(ApiError::NotFound)?;
            Ok(ok_json(&select_fields(look, fields)))
        }
        "run_inline_query" => {
            let query: QuerySpec = parse_json(&body)?;
            run(&query, matched.param("result_format"), limit)
        }
        "create_query" => {
            let query: QuerySpec = parse_json(&body)?;
            query.validate()?;
            let id = state.world().save_query(query.clone());
            Ok(ok_json(&select_fields(query.to_looker_json(id), fields)))
        }
        "query" => {
            let (id, query) = saved_query(state, matched.param("query_id"))?;
            Ok(ok_json(&select_fields(query.to_looker_json(id), fields)))
        }
        "run_query" => {
            let (_, query) = saved_query(state, matched.param("query_id"))?;
            run(&query, matched.param("result_format"), limit)
        }
        "run_look" => {
            let look = demo::look(matched.param("look_id")).ok_or(ApiError::NotFound)?;
            let query_id = look.get("query_id").and_then(Value::as_str).unwrap_or("");
            let (_, query) = saved_query(state, query_id)?;
            run(&query, matched.param("result_format"), limit)
        }
        "run_url_encoded_query" => {
            let query = url_encoded_query(&matched, &params)?;
            run(&query, matched.param("result_format"), limit)
        }
        "all_user_credentials_api3s" => {
            caller.require_admin()?;
            let world = state.world();
            let user = find_user(&world, matched.param("user_id"))?;
            let keys: Vec<Value> = world
                .api3_keys
                .iter()
                .filter(|k| k.user_id == user.id)
                .map(|k| select_fields(api3_json(k, false), fields))
                .collect();
            Ok(ok_json(&Value::from(keys)))
        }
        "user_credentials_api3" => {
            caller.require_admin()?;
            let world = state.world();
            let key = find_api3_key(
                &world,
                matched.param("user_id"),
                matched.param("credentials_api3_id"),
            )?;
            Ok(ok_json(&select_fields(api3_json(key, false), fields)))
        }
        "create_user_credentials_api3" => {
            caller.require_admin()?;
            let mut world = state.world();
            let user_id = find_user(&world, matched.param("user_id"))?.id;
            let key = world.create_api3_key(user_id);
            eprintln!(
                "looker-sim: created API3 key {} (client_id {}) for user {user_id}",
                key.id, key.client_id
            );
            // The only answer that ever shows the secret, as in Looker.
            Ok(ok_json(&select_fields(api3_json(&key, true), fields)))
        }
        "delete_user_credentials_api3" => {
            caller.require_admin()?;
            let mut world = state.world();
            let key_id = find_api3_key(
                &world,
                matched.param("user_id"),
                matched.param("credentials_api3_id"),
            )?
            .id;
            world.api3_keys.retain(|k| k.id != key_id);
            eprintln!("looker-sim: deleted API3 key {key_id}");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        "acquire_embed_cookieless_session" => embed::acquire(state, &body),
        "generate_tokens_for_cookieless_session" => embed::generate_tokens(state, &body),
        "delete_embed_cookieless_session" => {
            embed::delete_session(state, matched.param("session_reference_token"))
        }
        "create_embed_secret" => {
            caller.require_admin()?;
            embed::create_secret(state, caller.user_id, &body)
        }
        "delete_embed_secret" => {
            caller.require_admin()?;
            embed::delete_secret(state, matched.param("embed_secret_id"))
        }
        _ => generated(state, &matched, spec_op, fields),
    }
}

/// Operations with hand-written behaviour (`dispatch`); every other one is `generated`.
pub const HAND_WRITTEN: [&str; 23] = [
    "login",
    "login_user",
    "logout",
    "me",
    "user",
    "user_for_credential",
    "dashboard",
    "look",
    "run_inline_query",
    "create_query",
    "query",
    "run_query",
    "run_look",
    "run_url_encoded_query",
    "all_user_credentials_api3s",
    "user_credentials_api3",
    "create_user_credentials_api3",
    "delete_user_credentials_api3",
    "acquire_embed_cookieless_session",
    "generate_tokens_for_cookieless_session",
    "delete_embed_cookieless_session",
    "create_embed_secret",
    "delete_embed_secret",
];

/// An operation without hand-written behaviour: 404 for an unknown id of a resource the
/// demo knows, else the spec's success status with demo data generated from its schema.
fn generated(
    state: &SimState,
    matched: &Matched<'_>,
    spec_op: Option<&'static Value>,
    fields: Option<&str>,
) -> Result<Response, ApiError> {
    let template = matched.operation.template.as_str();
    for (name, value) in &matched.params {
        if let Some(kind) = Kind::of_path_param(template, name) {
            if !known(state, kind, value) {
                return Err(ApiError::NotFound);
            }
        }
    }
    let success = spec_op.map(spec::success).unwrap_or(spec::Success {
        status: 200,
        content: None,
    });
    let status = StatusCode::from_u16(success.status).unwrap_or(StatusCode::OK);
    let Some((media, schema)) = success.content else {
        return Ok(status.into_response());
    };
    if media != "application/json" {
        let (content_type, body) = spec::non_json_body(media);
        return Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response());
    }
    // The top-level object's `id` echoes the template's last parameter, if any.
    let own_id = template
        .rsplit('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .find(|name| *name != "result_format")
        .and_then(|name| matched.params.get(name))
        .map(String::as_str);
    let generator = Generator {
        path_params: &matched.params,
        own_id,
    };
    Ok(json_reply(
        status,
        &select_fields(generator.generate(schema), fields),
    ))
}

/// Whether the demo has this resource (queries: the saved ones, created ones included).
fn known(state: &SimState, kind: Kind, id: &str) -> bool {
    match kind {
        Kind::Query => id
            .parse::<u64>()
            .is_ok_and(|id| state.world().queries.contains_key(&id)),
        Kind::User => id
            .parse::<u64>()
            .is_ok_and(|id| state.world().user(id).is_some()),
        other => other.demo_ids().contains(&id),
    }
}

/// `run_url_encoded_query`'s query, from the path and the decoded URL parameters.
fn url_encoded_query(
    matched: &Matched<'_>,
    params: &[(String, String)],
) -> Result<QuerySpec, ApiError> {
    let list = |name: &str| -> Vec<String> {
        param(params, name)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let filters = params
        .iter()
        .filter_map(|(k, v)| {
            let field = k.strip_prefix("f[")?.strip_suffix(']')?;
            Some((field.to_owned(), v.clone()))
        })
        .collect();
    let query = QuerySpec {
        model: matched.param("model_name").to_owned(),
        view: matched.param("view_name").to_owned(),
        fields: list("fields"),
        filters,
        sorts: list("sorts"),
        limit: None,
    };
    // Pivots name fields like `fields` does; the engine returns them unpivoted.
    let pivots = QuerySpec {
        fields: list("pivots"),
        ..query.clone()
    };
    if !pivots.fields.is_empty() {
        pivots.validate()?;
    }
    Ok(query)
}

/// `POST /login`: API3 credentials from the form body or, as Looker still accepts,
/// the query string. Wrong credentials get Looker's 404.
async fn login(
    state: &SimState,
    params: &[(String, String)],
    body: &Bytes,
) -> Result<Response, ApiError> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let client_id = param(&form, "client_id")
        .or_else(|| param(params, "client_id"))
        .map(str::to_owned);
    let client_secret = param(&form, "client_secret")
        .or_else(|| param(params, "client_secret"))
        .map(str::to_owned);
    let fault = state.world().take_login_fault();
    login_latency(state, fault).await;
    let mut world = state.world();
    let outcome = match (fault.and_then(|f| f.status), &client_id, &client_secret) {
        (Some(status), _, _) => Err(injected(status)),
        (None, Some(id), Some(secret)) => world
            .api3_keys
            .iter()
            .find(|k| &k.client_id == id && &k.client_secret == secret)
            .map(|k| k.user_id)
            .ok_or(ApiError::NotFound),
        (None, _, _) => Err(ApiError::BadRequest(
            "client_id and client_secret are required".into(),
        )),
    };
    let result = outcome.map(|user_id| token_reply(&mut world, user_id));
    let status = result.as_ref().map_or_else(status_of, |_| StatusCode::OK);
    world.record_login(LoginAttempt {
        client_id: Some(client_id.clone().unwrap_or_default()),
        sudo_user_id: None,
        ok: result.is_ok(),
        status: status.as_u16(),
    });
    eprintln!(
        "looker-sim: login client_id={} -> {}",
        client_id.as_deref().unwrap_or("-"),
        status.as_u16()
    );
    result
}

/// `POST /login/{user_id}`: an admin gets a session acting as that user ("sudo").
/// `associative` only changes Looker's activity attribution, so it is accepted and ignored.
async fn login_user(
    state: &SimState,
    matched: &Matched<'_>,
    token: Option<String>,
) -> Result<Response, ApiError> {
    let target = matched.param("user_id");
    let fault = state.world().take_login_fault();
    login_latency(state, fault).await;
    let result = match fault.and_then(|f| f.status) {
        Some(status) => Err(injected(status)),
        None => authenticate(state, token).and_then(|caller| {
            caller.require_admin()?;
            let mut world = state.world();
            let user_id = find_user(&world, target)?.id;
            Ok(token_reply(&mut world, user_id))
        }),
    };
    let status = result.as_ref().map_or_else(status_of, |_| StatusCode::OK);
    state.world().record_login(LoginAttempt {
        client_id: None,
        sudo_user_id: Some(target.to_owned()),
        ok: result.is_ok(),
        status: status.as_u16(),
    });
    eprintln!("looker-sim: login_user {target} -> {}", status.as_u16());
    result
}

/// Waits as long as a login takes: the injected delay, else the configured latency.
async fn login_latency(state: &SimState, fault: Option<LoginFault>) {
    let delay = match fault {
        Some(fault) => fault.delay,
        None => state.world().login_latency,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn injected(status: u16) -> ApiError {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = matches!(status.as_u16(), 429 | 503).then_some(1);
    ApiError::Injected {
        status,
        retry_after,
    }
}

fn status_of(e: &ApiError) -> StatusCode {
    match e {
        ApiError::NotFound => StatusCode::NOT_FOUND,
        ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden => StatusCode::FORBIDDEN,
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::Validation { .. } | ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
        ApiError::Injected { status, .. } => *status,
    }
}

fn token_reply(world: &mut World, user_id: u64) -> Response {
    let access_token = world.open_session(user_id);
    ok_json(&json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": world.token_ttl.as_secs(),
    }))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not a valid query: {e}")))
}

fn run(query: &QuerySpec, result_format: &str, limit: Option<&str>) -> Result<Response, ApiError> {
    let render = match explore::format(result_format) {
        Format::Supported(render) => render,
        Format::Image(media) => {
            query.run(limit)?;
            let (content_type, body) = spec::non_json_body(media);
            return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
        }
        Format::NotRendered => {
            return Err(ApiError::NotImplemented {
                operation_id: format!("result_format {result_format}"),
            })
        }
        Format::Unknown => {
            return Err(ApiError::BadRequest(format!(
                "Unsupported result format: {result_format}"
            )))
        }
    };
    let rendered = render(&query.run(limit)?);
    Ok((
        [(header::CONTENT_TYPE, rendered.content_type)],
        rendered.body,
    )
        .into_response())
}

fn saved_query(state: &SimState, id: &str) -> Result<(u64, QuerySpec), ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let query = state
        .world()
        .queries
        .get(&id)
        .cloned()
        .ok_or(ApiError::NotFound)?;
    Ok((id, query))
}

fn find_user<'w>(world: &'w World, id: &str) -> Result<&'w DemoUser, ApiError> {
    id.parse()
        .ok()
        .and_then(|id| world.user(id))
        .ok_or(ApiError::NotFound)
}

fn find_api3_key<'w>(
    world: &'w World,
    user_id: &str,
    key_id: &str,
) -> Result<&'w Api3Key, ApiError> {
    let user = find_user(world, user_id)?;
    let key_id: u64 = key_id.parse().map_err(|_| ApiError::NotFound)?;
    world
        .api3_keys
        .iter()
        .find(|k| k.id == key_id && k.user_id == user.id)
        .ok_or(ApiError::NotFound)
}

/// `GET /users/credential/{type}/{id}`: `email` (case-insensitive) and `api3` (client_id).
fn user_for_credential<'w>(
    world: &'w World,
    kind: &str,
    id: &str,
) -> Result<&'w DemoUser, ApiError> {
    let user_id = match kind {
        "email" => world
            .users
            .iter()
            .find(|u| u.email.eq_ignore_ascii_case(id))
            .map(|u| u.id),
        "api3" => world
            .api3_keys
            .iter()
            .find(|k| k.client_id == id)
            .map(|k| k.user_id),
        _ => None,
    };
    user_id
        .and_then(|id| world.user(id))
        .ok_or(ApiError::NotFound)
}

fn user_json(world: &World, user: &DemoUser) -> Value {
    let keys: Vec<Value> = world
        .api3_keys
        .iter()
        .filter(|k| k.user_id == user.id)
        .map(|k| api3_json(k, false))
        .collect();
    let id = user.id.to_string();
    json!({
        "can": {"show": true, "index": true, "show_details": true, "index_details": true, "sudo": user.id != ADMIN_USER_ID},
        "id": id,
        "first_name": user.display_name,
        "last_name": "",
        "display_name": user.display_name,
        "email": user.email,
        "is_disabled": false,
        "locale": "en",
        "avatar_url": null,
        "home_folder_id": "1",
        "personal_folder_id": format!("{}", 1000 + user.id),
        "role_ids": if user.id == ADMIN_USER_ID { vec!["2"] } else { vec![] },
        "group_ids": ["1"],
        "credentials_email": {
            "email": user.email,
            "is_disabled": false,
            "type": "email",
            "url": format!("{API_BASE}/users/{id}/credentials_email"),
        },
        "credentials_api3": keys,
        "is_service_account": false,
        "presumed_looker_employee": false,
        "verified_looker_employee": false,
        "url": format!("{API_BASE}/users/{id}"),
    })
}

fn api3_json(key: &Api3Key, with_secret: bool) -> Value {
    let mut value = json!({
        "can": {},
        "id": key.id.to_string(),
        "client_id": key.client_id,
        "created_at": key.created_at,
        "is_disabled": false,
        "type": "api3",
        "purpose": null,
        "url": format!("{API_BASE}/users/{}/credentials_api3/{}", key.user_id, key.id),
    });
    if let (true, Some(map)) = (with_secret, value.as_object_mut()) {
        map.insert("client_secret".into(), json!(key.client_secret));
    }
    value
}

/// Looker's `fields` parameter: keep only the named top-level fields (of each item of a
/// list). Nested selections (`dashboard_elements(id,title)`) keep the whole nested value.
fn select_fields(value: Value, fields: Option<&str>) -> Value {
    let Some(fields) = fields.filter(|f| !f.trim().is_empty()) else {
        return value;
    };
    let mut names = Vec::new();
    let (mut depth, mut current) = (0usize, String::new());
    for c in fields.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => names.push(std::mem::take(&mut current)),
            c if depth == 0 => current.push(c),
            _ => {}
        }
    }
    names.push(current);
    let names: Vec<String> = names
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    let keep = |value: Value| match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(k, _)| names.contains(k)).collect())
        }
        other => other,
    };
    match value {
        // A list answer (`all_dashboards`, `search_users`): the fields of each item.
        Value::Array(items) => items.into_iter().map(keep).collect(),
        other => keep(other),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_show_session_reference_tokens_as_fingerprints() {
        let secret = "SessionReferenceToken123";
        let logged = loggable_path(&format!("/api/4.0/embed/cookieless_session/{secret}"));
        assert!(!logged.contains(secret), "{logged}");
        assert!(logged.contains(&lookergate_proto::fingerprint(secret.as_bytes())));
        for kept in [
            "/api/4.0/embed/cookieless_session/acquire",
            "/api/4.0/embed/cookieless_session/generate_tokens",
            "/api/4.0/users/1",
        ] {
            assert_eq!(loggable_path(kept), kept);
        }
    }

    #[test]
    fn fields_parameter_keeps_named_top_level_fields() {
        let value = json!({"id": "1", "title": "t", "dashboard_elements": [{"id": "10"}], "x": 1});
        let cases = [
            (None, value.clone()),
            (Some(""), value.clone()),
            (Some("id"), json!({"id": "1"})),
            (Some("id, title"), json!({"id": "1", "title": "t"})),
            (
                Some("id,dashboard_elements(id,title)"),
                json!({"id": "1", "dashboard_elements": [{"id": "10"}]}),
            ),
            (Some("nope"), json!({})),
        ];
        let list = json!([{"id": "1", "title": "a"}, {"id": "2", "title": "b"}]);
        assert_eq!(
            select_fields(list, Some("id")),
            json!([{"id": "1"}, {"id": "2"}])
        );
        for (fields, want) in cases {
            assert_eq!(select_fields(value.clone(), fields), want, "{fields:?}");
        }
    }
}
