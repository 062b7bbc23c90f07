//! Signed SSO embed URLs: not simulated yet; `/login/embed/` without an authentication
//! token answers that the session could not be started.

use std::time::Instant;

use axum::http::request::Parts;
use axum::response::Response;

use crate::embed::{EmbedSession, EmbedState};
use crate::embed_page::session_not_started;
use crate::state::SimState;

pub(crate) fn login(
    _state: &SimState,
    _parts: &Parts,
    _target: &str,
    _params: &[(String, String)],
) -> Response {
    session_not_started()
}

pub(crate) fn cookie_session<'e>(
    _embed: &'e EmbedState,
    _parts: &Parts,
    _now: Instant,
) -> Option<&'e EmbedSession> {
    None
}
