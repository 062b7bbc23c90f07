//! Test-only control endpoints under `/__sim/` (DESIGN.md): what the simulator received,
//! login attempts, embed sessions, injected faults, early token revocation, health.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::state::{Faults, SimState};

pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn list_requests(State(state): State<SimState>) -> Response {
    Json(state.requests()).into_response()
}

pub(crate) async fn clear_requests(State(state): State<SimState>) -> StatusCode {
    state.clear_requests();
    StatusCode::NO_CONTENT
}

pub(crate) async fn list_logins(State(state): State<SimState>) -> Response {
    Json(state.logins()).into_response()
}

/// Embed sessions and secrets: fingerprints of tokens, never their values.
pub(crate) async fn list_embed(State(state): State<SimState>) -> Response {
    Json(crate::embed::sim_view(&state)).into_response()
}

pub(crate) async fn set_faults(
    State(state): State<SimState>,
    Json(faults): Json<Faults>,
) -> Response {
    let statuses = [faults.login_status, faults.api_status];
    if let Some(bad) = statuses
        .into_iter()
        .flatten()
        .find(|s| !(200..=599).contains(s))
    {
        let body =
            json!({"message": format!("status {bad} is not an HTTP status between 200 and 599")});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    state.set_faults(&faults);
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn clear_faults(State(state): State<SimState>) -> StatusCode {
    state.set_faults(&Faults::default());
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Revoke {
    access_token: String,
}

/// 204 when the token was live and is now revoked, 404 when it was not a live token.
pub(crate) async fn revoke(State(state): State<SimState>, Json(body): Json<Revoke>) -> StatusCode {
    if state.revoke(&body.access_token) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}
