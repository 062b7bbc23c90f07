//! Signed SSO embed URLs (Looker's "signed embedding"): `/login/embed/{target}?nonce=..
//! &time=..&..&signature=..` starts an embed session when the signature is
//! `base64(HMAC(secret, sso_string_to_sign(host, path, params)))` for an enabled SSO
//! embed secret (`hmac/sha-256` or `hmac/sha-1`), `time` is within 5 minutes of now and
//! the nonce was never seen. The session lives in the `looker_embed_session` cookie;
//! the dashboard page then gets its API token from `/api/internal/embed/session_token`.
//!
//! The string to sign is `lookergate_proto::embed::sso_string_to_sign`, the one the
//! broker signs: the request's `Host` header, the request path as received (still
//! percent-encoded), then the signed parameters' values as the URL carries them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};

use crate::api::{error_body, json_reply};
use crate::embed::{
    AcquireBody, EmbedSecret, EmbedSession, EmbedState, SessionKind, SigningAlgorithm,
};
use crate::embed_page::{no_store, param, redirect, session_not_started};
use crate::state::SimState;
use lookergate_proto::embed::sso_string_to_sign;

/// The cookie that carries a signed embed session.
pub const SESSION_COOKIE: &str = "looker_embed_session";
/// How far `time` may be from the simulator's clock (Looker: 5 minutes).
const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Nonces are remembered at least this long: a URL is valid for at most twice the skew
/// (signed up to that far in the future), so past it `time` refuses a replay anyway.
const NONCE_MEMORY: Duration = Duration::from_secs(2 * MAX_CLOCK_SKEW_SECS + 60);

/// Why a signed URL was refused; logged (never the URL: it is a bearer credential),
/// while the browser gets the same page for all of them.
enum Refusal {
    Missing(&'static str),
    Malformed(&'static str),
    Clock,
    NonceReused,
    Signature,
    User(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing(name) => write!(f, "no {name}"),
            Refusal::Malformed(name) => write!(f, "malformed {name}"),
            Refusal::Clock => write!(f, "time is more than {MAX_CLOCK_SKEW_SECS}s off"),
            Refusal::NonceReused => write!(f, "nonce already used"),
            Refusal::Signature => write!(f, "no enabled SSO embed secret signed it"),
            Refusal::User(why) => write!(f, "embed user refused: {why}"),
        }
    }
}

/// `/login/embed/{target}` without an authentication token: a signed SSO URL.
pub(crate) fn login(
    state: &SimState,
    parts: &Parts,
    target: &str,
    params: &[(String, String)],
) -> Response {
    let now = Instant::now();
    let mut world = state.world();
    let embed = &mut world.embed;
    let verified = verify(embed, parts, params, unix_now(), now);
    let (user, session_length) = match verified {
        Ok(verified) => verified,
        Err(refusal) => {
            eprintln!("looker-sim: signed embed login refused: {refusal}");
            return session_not_started();
        }
    };
    // force_logout_login=false keeps a live session of the same embed user the browser
    // already has; otherwise (Looker's default) the login starts a new one.
    if !user.force_logout_login {
        if let Some(session) = cookie_session(embed, parts, now)
            .filter(|s| s.user.external_user_id == user.external_user_id)
        {
            eprintln!("looker-sim: signed embed login kept session {}", session.id);
            return redirect(target);
        }
    }
    let started = embed.start(SessionKind::Sso, user, session_length, now);
    let cookie = started.cookie.unwrap_or_default();
    eprintln!(
        "looker-sim: signed embed session {} for embed user {}",
        started.id, started.user_id
    );
    let mut response = redirect(target);
    let set_cookie = format!("{SESSION_COOKIE}={cookie}; Path=/; HttpOnly; Secure; SameSite=None");
    if let Ok(value) = HeaderValue::from_str(&set_cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn verify(
    embed: &mut EmbedState,
    parts: &Parts,
    params: &[(String, String)],
    unix_now: u64,
    now: Instant,
) -> Result<(crate::embed::EmbedUserDefinition, u64), Refusal> {
    let required = |name: &'static str| param(params, name).ok_or(Refusal::Missing(name));
    // A `+` in the base64 signature arrives as a space when the URL left it unescaped.
    let signature = required("signature")?.replace(' ', "+");
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.as_bytes())
        .map_err(|_| Refusal::Malformed("signature"))?;
    let time: u64 = required("time")?
        .parse()
        .map_err(|_| Refusal::Malformed("time"))?;
    let nonce: String = json_param(params, "nonce")?.ok_or(Refusal::Missing("nonce"))?;
    for name in [
        "session_length",
        "external_user_id",
        "permissions",
        "models",
        "access_filters",
    ] {
        required(name)?;
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let signed: Vec<(&str, String)> = params
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    let text = sso_string_to_sign(host, parts.uri.path(), &signed);
    if !embed
        .secrets
        .iter()
        .filter(|s| s.enabled && s.secret_type == "SSO")
        .any(|s| signs(s, text.as_bytes(), &signature))
    {
        return Err(Refusal::Signature);
    }
    if time.abs_diff(unix_now) > MAX_CLOCK_SKEW_SECS {
        return Err(Refusal::Clock);
    }
    embed
        .nonces
        .retain(|_, seen| now.duration_since(*seen) < NONCE_MEMORY);
    if embed.nonces.insert(nonce, now).is_some() {
        return Err(Refusal::NonceReused);
    }
    let force_logout_login = match param(params, "force_logout_login") {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(Refusal::Malformed("force_logout_login")),
    };
    let session_length: i64 = required("session_length")?
        .parse()
        .map_err(|_| Refusal::Malformed("session_length"))?;
    let body = AcquireBody {
        session_length: Some(session_length),
        force_logout_login: Some(force_logout_login),
        external_user_id: json_param(params, "external_user_id")?,
        first_name: json_param(params, "first_name")?,
        last_name: json_param(params, "last_name")?,
        user_timezone: json_param(params, "user_timezone")?,
        permissions: json_param(params, "permissions")?,
        models: json_param(params, "models")?,
        group_ids: json_param(params, "group_ids")?,
        external_group_id: json_param(params, "external_group_id")?,
        user_attributes: json_param(params, "user_attributes")?,
        embed_domain: None,
        session_reference_token: None,
    };
    body.validate().map_err(|e| Refusal::User(format!("{e:?}")))
}

/// A parameter whose value is JSON (as signed URLs carry them); absent is `None`.
fn json_param<T: serde::de::DeserializeOwned>(
    params: &[(String, String)],
    name: &'static str,
) -> Result<Option<T>, Refusal> {
    param(params, name)
        .map(|text| serde_json::from_str(text).map_err(|_| Refusal::Malformed(name)))
        .transpose()
}

/// Whether `signature` is the HMAC of `text` under `secret` (compared in constant time).
fn signs(secret: &EmbedSecret, text: &[u8], signature: &[u8]) -> bool {
    let key = secret.secret.as_bytes();
    match secret.algorithm {
        SigningAlgorithm::HmacSha256 => hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
            .map(|mac| mac.chain_update(text).verify_slice(signature).is_ok())
            .unwrap_or(false),
        SigningAlgorithm::HmacSha1 => hmac::Hmac::<sha1::Sha1>::new_from_slice(key)
            .map(|mac| mac.chain_update(text).verify_slice(signature).is_ok())
            .unwrap_or(false),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The live signed session whose cookie the request carries.
pub(crate) fn cookie_session<'e>(
    embed: &'e EmbedState,
    parts: &Parts,
    now: Instant,
) -> Option<&'e EmbedSession> {
    let cookie = session_cookie(parts)?;
    embed.by_cookie(cookie, now)
}

fn session_cookie(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

/// `GET /api/internal/embed/session_token`: new navigation and API tokens for the signed
/// session in the cookie (the page's stand-in for the SDK's `session:tokens`).
pub(crate) async fn session_token(State(state): State<SimState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let now = Instant::now();
    let mut world = state.world();
    let id = cookie_session(&world.embed, &parts, now).map(|s| s.id);
    let Some((tokens, token_ttl, session_ttl)) = id.and_then(|id| world.embed.refresh(id, now))
    else {
        return no_store(json_reply(
            StatusCode::UNAUTHORIZED,
            &error_body("Requires authentication."),
        ));
    };
    let body: Value = json!({
        "navigation_token": tokens.navigation_token,
        "navigation_token_ttl": token_ttl,
        "api_token": tokens.api_token,
        "api_token_ttl": token_ttl,
        "session_reference_token_ttl": session_ttl,
    });
    no_store(json_reply(StatusCode::OK, &body))
}
