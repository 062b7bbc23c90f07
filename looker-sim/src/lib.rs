//! A Looker API 4.0 simulator for lookergate's tests and demo: the demo users and API3
//! keys of `docs/DESIGN.md`, login/sudo/logout with expiring tokens, users, dashboards,
//! looks, queries over a small `thelook`/`orders` explore, API3 key rotation, and
//! `/__sim/` endpoints that let tests see what Looker received and inject failures.
//!
//! Embedding (`embed`, `embed_page`, `embed_sso`): cookieless embed sessions and embed
//! secrets through the API, signed SSO embed URLs, and the pages Looker's Embed SDK loads
//! in its iframe (`/login/embed/`, `/embed/dashboards/`), with rows filtered by the embed
//! user's `region` attribute.
//!
//! Routing follows Looker's own operation table (`proto/operations.tsv`, generated from
//! the API spec): unknown operations answer 404. Every one of the spec's 483 operations
//! answers: `HAND_WRITTEN` ones with the behaviour above, the others with demo data
//! generated from the response schemas of Looker's spec, embedded (`spec`,
//! `spec/Looker.4.0.oas.json`); `tests/contract.rs` validates every answer against it.

mod api;
mod control;
mod demo;
mod embed;
mod embed_page;
mod embed_sso;
mod explore;
pub mod operations;
mod spec;
mod state;

use axum::routing::{get, post};
use axum::Router;

pub use api::{DOCUMENTATION_URL, HAND_WRITTEN};
pub use embed::{EmbedSessionView, EmbedUserDefinition, SessionKind, DEFAULT_EMBED_TOKEN_TTL};
pub use operations::{Operation, OperationTable, OPERATIONS_TSV};
pub use state::{Faults, LoginAttempt, RecordedRequest, SimState};

/// The simulator's HTTP service: `/__sim/` control endpoints, and Looker everywhere else.
pub fn app(state: SimState) -> Router {
    Router::new()
        .route("/__sim/health", get(control::health))
        .route(
            "/__sim/requests",
            get(control::list_requests).delete(control::clear_requests),
        )
        .route("/__sim/logins", get(control::list_logins))
        .route(
            "/__sim/faults",
            post(control::set_faults).delete(control::clear_faults),
        )
        .route("/__sim/revoke", post(control::revoke))
        .route("/__sim/embed", get(control::list_embed))
        .route("/login/embed/{*target}", get(embed_page::login))
        .route("/embed/dashboards/{id}", get(embed_page::dashboard))
        .route(
            "/api/internal/embed/dashboards/{id}/rows",
            get(embed_page::rows),
        )
        .route(
            "/api/internal/embed/session_token",
            get(embed_sso::session_token),
        )
        .fallback(api::handle)
        .with_state(state)
}

/// Serves `app(state)` on an already bound listener until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: SimState) -> std::io::Result<()> {
    axum::serve(listener, app(state)).await
}

#[cfg(test)]
mod tests;
