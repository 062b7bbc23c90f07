//! Looker's embedding, simulated (docs/embed.md, "Simulator"): cookieless embed sessions
//! (`acquire_embed_cookieless_session`, `generate_tokens_for_cookieless_session`,
//! `delete_embed_cookieless_session`), the embed users they create, their tokens, and the
//! embed secrets that sign SSO embed URLs (`create_embed_secret`, `delete_embed_secret`).
//!
//! Tokens as Looker hands them out: the authentication token is redeemed once by
//! `/login/embed/` within 30 s; navigation and API tokens live `--embed-token-ttl` seconds
//! (Looker: 10 minutes) and stay valid until then even after newer ones are generated;
//! the session reference token lives as long as the session (`session_length`, default
//! 300 s). An ended or expired session still answers `generate_tokens` with 200 and
//! `session_reference_token_ttl: 0` (Looker's documented way to report expiry; the Embed
//! SDK stops on it); a reference token the simulator never issued answers 404.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{ok_json, ApiError};
use crate::state::{looker_timestamp, random_alphanumeric, SimState};

/// Looker: "This token can be used once and has a lifetime of 30 seconds."
pub const AUTHENTICATION_TOKEN_TTL: Duration = Duration::from_secs(30);
/// Looker's navigation and API token lifetime (10 minutes); `--embed-token-ttl` changes it.
pub const DEFAULT_EMBED_TOKEN_TTL: Duration = Duration::from_secs(600);
/// `session_length` when the request has none, and the most Looker accepts.
pub const DEFAULT_SESSION_LENGTH: u64 = 300;
pub const MAX_SESSION_LENGTH: u64 = 2_592_000;
/// Embed users get ids from here on, apart from the demo's regular users.
const FIRST_EMBED_USER_ID: u64 = 10_001;
const TOKEN_LENGTH: usize = 40;

/// The embed user a session was started for: the definition from the acquire request
/// (or the signed URL), with user attribute values as Looker reads them (strings;
/// several values joined by commas).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbedUserDefinition {
    pub external_user_id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub user_timezone: Option<String>,
    pub permissions: Vec<String>,
    pub models: Vec<String>,
    pub group_ids: Vec<String>,
    pub external_group_id: Option<String>,
    pub user_attributes: BTreeMap<String, String>,
    pub force_logout_login: bool,
}

impl EmbedUserDefinition {
    /// The values of user attribute `name` (comma-separated in Looker), trimmed, non-empty.
    pub fn attribute_values(&self, name: &str) -> Vec<&str> {
        self.user_attributes
            .get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How a session was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    Cookieless,
    /// A signed SSO embed URL; the browser holds the `looker_embed_session` cookie.
    Sso,
}

/// Tokens and secrets in here derive no `Debug`: nothing may print them.
#[derive(Clone)]
struct Issued {
    token: String,
    expires_at: Instant,
    generation: u64,
}

/// One embed session and every token it issued that may still be used.
pub(crate) struct EmbedSession {
    pub id: u64,
    pub kind: SessionKind,
    reference_token: String,
    /// The `looker_embed_session` cookie of a signed (SSO) session.
    cookie: Option<String>,
    pub user_id: u64,
    pub user: EmbedUserDefinition,
    pub session_length: u64,
    expires_at: Instant,
    ended: bool,
    /// Not yet redeemed; removed when used.
    authentication_tokens: Vec<Issued>,
    navigation_tokens: Vec<Issued>,
    api_tokens: Vec<Issued>,
    generation: u64,
    pub generate_tokens_calls: u64,
    pub joins: u64,
}

/// A session just started.
pub(crate) struct Started {
    pub id: u64,
    pub user_id: u64,
    pub reference_token: String,
    pub cookie: Option<String>,
    pub session_ttl: u64,
    pub tokens: NewTokens,
}

/// The tokens one acquire or generate_tokens call hands out.
pub(crate) struct NewTokens {
    pub authentication_token: Option<String>,
    pub navigation_token: String,
    pub api_token: String,
}

impl EmbedSession {
    pub fn is_live(&self, now: Instant) -> bool {
        !self.ended && self.expires_at > now
    }

    /// Whole seconds the session has left, rounded up so a live session never says 0.
    pub fn ttl(&self, now: Instant) -> u64 {
        if !self.is_live(now) {
            return 0;
        }
        let left = self.expires_at.saturating_duration_since(now);
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }

    fn end(&mut self) {
        self.ended = true;
        self.cookie = None;
        self.authentication_tokens.clear();
        self.navigation_tokens.clear();
        self.api_tokens.clear();
    }

    /// A new generation of navigation and API tokens (and an authentication token when
    /// `authentication_ttl` is given). Tokens of older generations stay until they expire,
    /// those of the previous generation even past that (generate_tokens accepts them).
    fn issue(
        &mut self,
        now: Instant,
        token_ttl: Duration,
        authentication_ttl: Option<Duration>,
    ) -> NewTokens {
        self.generation += 1;
        let generation = self.generation;
        for list in [&mut self.navigation_tokens, &mut self.api_tokens] {
            list.retain(|t| t.expires_at > now || t.generation + 1 >= generation);
        }
        self.authentication_tokens.retain(|t| t.expires_at > now);
        let new = |ttl: Duration| Issued {
            token: random_alphanumeric(TOKEN_LENGTH),
            expires_at: now + ttl,
            generation,
        };
        let navigation = new(token_ttl);
        let api = new(token_ttl);
        let authentication = authentication_ttl.map(new);
        let tokens = NewTokens {
            authentication_token: authentication.as_ref().map(|t| t.token.clone()),
            navigation_token: navigation.token.clone(),
            api_token: api.token.clone(),
        };
        self.navigation_tokens.push(navigation);
        self.api_tokens.push(api);
        self.authentication_tokens.extend(authentication);
        tokens
    }

    fn current(list: &[Issued]) -> Option<&Issued> {
        list.iter().max_by_key(|t| t.generation)
    }

    /// Whether generate_tokens accepts `token`: one of the current or previous generation
    /// (even expired: the SDK may ask only after expiry), or any of its tokens still live.
    fn accepts(&self, list: &[Issued], token: &str, now: Instant) -> bool {
        list.iter().any(|t| {
            t.token == token && (t.generation + 1 >= self.generation || t.expires_at > now)
        })
    }

    fn live(list: &[Issued], token: &str, now: Instant) -> bool {
        list.iter().any(|t| t.token == token && t.expires_at > now)
    }
}

/// An embed secret (Looker's `EmbedSecret`); the value is shown once, at creation.
#[derive(Clone)]
pub(crate) struct EmbedSecret {
    pub id: String,
    pub algorithm: SigningAlgorithm,
    pub secret: String,
    pub enabled: bool,
    pub secret_type: String,
    pub created_at: String,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    HmacSha256,
    HmacSha1,
}

impl SigningAlgorithm {
    fn parse(name: &str) -> Option<SigningAlgorithm> {
        match name {
            "hmac/sha-256" => Some(SigningAlgorithm::HmacSha256),
            "hmac/sha-1" => Some(SigningAlgorithm::HmacSha1),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::HmacSha256 => "hmac/sha-256",
            SigningAlgorithm::HmacSha1 => "hmac/sha-1",
        }
    }
}

/// Everything embed-related in the simulated Looker.
pub(crate) struct EmbedState {
    pub token_ttl: Duration,
    pub authentication_ttl: Duration,
    /// external_user_id -> the embed user's Looker user id (stable across sessions).
    users: BTreeMap<String, u64>,
    next_user_id: u64,
    sessions: Vec<EmbedSession>,
    next_session_id: u64,
    pub secrets: Vec<EmbedSecret>,
    next_secret_id: u64,
    /// Nonces of signed URLs already used, with when they were seen.
    pub nonces: HashMap<String, Instant>,
}

impl Default for EmbedState {
    fn default() -> EmbedState {
        EmbedState {
            token_ttl: DEFAULT_EMBED_TOKEN_TTL,
            authentication_ttl: AUTHENTICATION_TOKEN_TTL,
            users: BTreeMap::new(),
            next_user_id: FIRST_EMBED_USER_ID,
            sessions: Vec::new(),
            next_session_id: 1,
            secrets: Vec::new(),
            next_secret_id: 1,
            nonces: HashMap::new(),
        }
    }
}

impl EmbedState {
    fn by_reference(&mut self, reference_token: &str) -> Option<&mut EmbedSession> {
        self.sessions
            .iter_mut()
            .find(|s| s.reference_token == reference_token)
    }

    /// Starts a session for `user` and returns its id, reference token and first tokens.
    /// As Looker documents for `external_user_id`, a new session for an embed user ends
    /// that user's other sessions.
    pub fn start(
        &mut self,
        kind: SessionKind,
        user: EmbedUserDefinition,
        session_length: u64,
        now: Instant,
    ) -> Started {
        for session in self
            .sessions
            .iter_mut()
            .filter(|s| s.user.external_user_id == user.external_user_id)
        {
            session.end();
        }
        let next_user_id = &mut self.next_user_id;
        let user_id = *self
            .users
            .entry(user.external_user_id.clone())
            .or_insert_with(|| {
                *next_user_id += 1;
                *next_user_id - 1
            });
        let id = self.next_session_id;
        self.next_session_id += 1;
        let mut session = EmbedSession {
            id,
            kind,
            reference_token: random_alphanumeric(TOKEN_LENGTH),
            cookie: (kind == SessionKind::Sso).then(|| random_alphanumeric(TOKEN_LENGTH)),
            user_id,
            user,
            session_length,
            expires_at: now + Duration::from_secs(session_length),
            ended: false,
            authentication_tokens: Vec::new(),
            navigation_tokens: Vec::new(),
            api_tokens: Vec::new(),
            generation: 0,
            generate_tokens_calls: 0,
            joins: 0,
        };
        let authentication_ttl =
            (kind == SessionKind::Cookieless).then_some(self.authentication_ttl);
        let tokens = session.issue(now, self.token_ttl, authentication_ttl);
        let started = Started {
            id,
            user_id,
            reference_token: session.reference_token.clone(),
            cookie: session.cookie.clone(),
            session_ttl: session.ttl(now),
            tokens,
        };
        self.sessions.push(session);
        started
    }

    /// Redeems a one-time authentication token: the live session it belongs to.
    pub fn redeem_authentication(&mut self, token: &str, now: Instant) -> Option<&EmbedSession> {
        let session = self
            .sessions
            .iter_mut()
            .find(|s| s.authentication_tokens.iter().any(|t| t.token == token))?;
        let issued = session
            .authentication_tokens
            .iter()
            .position(|t| t.token == token)
            .map(|at| session.authentication_tokens.remove(at))?;
        (issued.expires_at > now && session.is_live(now)).then_some(&*session)
    }

    /// The live session a live navigation token belongs to.
    pub fn by_navigation_token(&self, token: &str, now: Instant) -> Option<&EmbedSession> {
        self.sessions
            .iter()
            .find(|s| s.is_live(now) && EmbedSession::live(&s.navigation_tokens, token, now))
    }

    /// The live session a live API token belongs to.
    pub fn by_api_token(&self, token: &str, now: Instant) -> Option<&EmbedSession> {
        self.sessions
            .iter()
            .find(|s| s.is_live(now) && EmbedSession::live(&s.api_tokens, token, now))
    }

    /// The live signed session behind a `looker_embed_session` cookie.
    pub fn by_cookie(&self, cookie: &str, now: Instant) -> Option<&EmbedSession> {
        self.sessions
            .iter()
            .find(|s| s.is_live(now) && s.cookie.as_deref() == Some(cookie))
    }

    fn by_id_mut(&mut self, id: u64) -> Option<&mut EmbedSession> {
        self.sessions.iter_mut().find(|s| s.id == id)
    }

    /// New navigation and API tokens for a live SSO session (its page asks with the cookie).
    pub fn refresh(&mut self, id: u64, now: Instant) -> Option<(NewTokens, u64, u64)> {
        let token_ttl = self.token_ttl;
        let session = self.by_id_mut(id).filter(|s| s.is_live(now))?;
        session.generate_tokens_calls += 1;
        let tokens = session.issue(now, token_ttl, None);
        Some((tokens, token_ttl.as_secs(), session.ttl(now)))
    }

    pub fn views(&self, now: Instant) -> Vec<EmbedSessionView> {
        self.sessions.iter().map(|s| view(s, now)).collect()
    }
}

/// One session as `GET /__sim/embed` lists it: never a token, only fingerprints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbedSessionView {
    pub id: u64,
    pub kind: SessionKind,
    /// "live", "ended" (deleted, or replaced by a newer session of the same user) or
    /// "expired".
    pub state: &'static str,
    pub user_id: String,
    #[serde(flatten)]
    pub user: EmbedUserDefinition,
    pub session_length: u64,
    pub session_reference_token_ttl: u64,
    pub generate_tokens_calls: u64,
    pub joins: u64,
    pub session_reference_token_fingerprint: String,
    pub navigation_token_fingerprint: Option<String>,
    pub api_token_fingerprint: Option<String>,
}

fn view(session: &EmbedSession, now: Instant) -> EmbedSessionView {
    let print = |list: &[Issued]| {
        EmbedSession::current(list).map(|t| lookergate_proto::fingerprint(t.token.as_bytes()))
    };
    EmbedSessionView {
        id: session.id,
        kind: session.kind,
        state: if session.ended {
            "ended"
        } else if session.is_live(now) {
            "live"
        } else {
            "expired"
        },
        user_id: session.user_id.to_string(),
        user: session.user.clone(),
        session_length: session.session_length,
        session_reference_token_ttl: session.ttl(now),
        generate_tokens_calls: session.generate_tokens_calls,
        joins: session.joins,
        session_reference_token_fingerprint: lookergate_proto::fingerprint(
            session.reference_token.as_bytes(),
        ),
        navigation_token_fingerprint: print(&session.navigation_tokens),
        api_token_fingerprint: print(&session.api_tokens),
    }
}

/// Looker's `EmbedCookielessSessionAcquire` (and the embed user part of `EmbedSsoParams`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AcquireBody {
    pub session_length: Option<i64>,
    pub force_logout_login: Option<bool>,
    pub external_user_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub user_timezone: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub group_ids: Option<Vec<String>>,
    pub external_group_id: Option<String>,
    pub user_attributes: Option<serde_json::Map<String, Value>>,
    #[allow(dead_code)] // accepted like Looker; the simulator has no allow list to add to
    pub embed_domain: Option<String>,
    pub session_reference_token: Option<String>,
}

impl AcquireBody {
    /// Looker's validation of an embed user definition: the user and its session length.
    pub fn validate(&self) -> Result<(EmbedUserDefinition, u64), ApiError> {
        let external_user_id = self
            .external_user_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or(ApiError::Validation {
                field: "external_user_id",
                code: "missing",
                message: "external_user_id is required".into(),
            })?;
        let permissions = self.permissions.clone().unwrap_or_default();
        if let Some(bad) = permissions
            .iter()
            .find(|p| !lookergate_proto::embed::is_embed_permission(p))
        {
            return Err(ApiError::Validation {
                field: "permissions",
                code: "invalid",
                message: format!("{bad} is not a permission an embed user may hold"),
            });
        }
        let models = self.models.clone().unwrap_or_default();
        let group_ids = self.group_ids.clone().unwrap_or_default();
        if models.is_empty() && group_ids.is_empty() {
            return Err(ApiError::Validation {
                field: "models",
                code: "missing",
                message: "models or group_ids must name at least one".into(),
            });
        }
        let session_length = match self.session_length {
            None => DEFAULT_SESSION_LENGTH,
            Some(secs) if (1..=MAX_SESSION_LENGTH as i64).contains(&secs) => secs as u64,
            Some(secs) => {
                return Err(ApiError::Validation {
                    field: "session_length",
                    code: "invalid",
                    message: format!(
                        "session_length {secs} is not between 1 and {MAX_SESSION_LENGTH} seconds"
                    ),
                })
            }
        };
        let user_attributes = self
            .user_attributes
            .iter()
            .flatten()
            .filter_map(|(name, value)| Some((name.clone(), attribute_text(value)?)))
            .collect();
        let user = EmbedUserDefinition {
            external_user_id: external_user_id.to_owned(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            user_timezone: self.user_timezone.clone(),
            permissions,
            models,
            group_ids,
            external_group_id: self.external_group_id.clone(),
            user_attributes,
            force_logout_login: self.force_logout_login.unwrap_or(true),
        };
        Ok((user, session_length))
    }
}

/// A user attribute value as Looker stores it: text, lists joined by commas; null unset.
fn attribute_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(attribute_text)
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid: {e}")))
}

/// `POST /embed/cookieless_session/acquire`.
pub(crate) fn acquire(state: &SimState, body: &Bytes) -> Result<Response, ApiError> {
    let request: AcquireBody = parse(body)?;
    let (user, session_length) = request.validate()?;
    let now = Instant::now();
    let mut world = state.world();
    let embed = &mut world.embed;
    let (token_ttl, authentication_ttl) = (embed.token_ttl, embed.authentication_ttl);
    let reference = request
        .session_reference_token
        .as_deref()
        .filter(|t| !t.is_empty());
    // A live session is joined (its user is NOT updated, as Looker documents); an expired
    // or unknown reference token is ignored and a new session starts.
    if let Some(session) = reference
        .and_then(|t| embed.by_reference(t))
        .filter(|s| s.is_live(now))
    {
        if session.user.external_user_id != user.external_user_id {
            return Err(ApiError::NotFound);
        }
        session.joins += 1;
        let tokens = session.issue(now, token_ttl, Some(authentication_ttl));
        let body = tokens_json(
            &session.reference_token,
            session.ttl(now),
            &tokens,
            token_ttl,
            authentication_ttl,
        );
        return Ok(ok_json(&body));
    }
    let started = embed.start(SessionKind::Cookieless, user, session_length, now);
    eprintln!(
        "looker-sim: embed session {} for embed user {} ({session_length}s)",
        started.id, started.user_id
    );
    let body = tokens_json(
        &started.reference_token,
        started.session_ttl,
        &started.tokens,
        token_ttl,
        authentication_ttl,
    );
    Ok(ok_json(&body))
}

/// Looker's `EmbedCookielessSessionAcquireResponse` (and, without an authentication
/// token, `EmbedCookielessSessionGenerateTokensResponse`).
fn tokens_json(
    reference_token: &str,
    session_ttl: u64,
    tokens: &NewTokens,
    token_ttl: Duration,
    authentication_ttl: Duration,
) -> Value {
    let mut body = json!({
        "navigation_token": tokens.navigation_token,
        "navigation_token_ttl": token_ttl.as_secs(),
        "api_token": tokens.api_token,
        "api_token_ttl": token_ttl.as_secs(),
        "session_reference_token": reference_token,
        "session_reference_token_ttl": session_ttl,
    });
    if let (Some(token), Some(map)) = (&tokens.authentication_token, body.as_object_mut()) {
        map.insert("authentication_token".into(), json!(token));
        map.insert(
            "authentication_token_ttl".into(),
            json!(authentication_ttl.as_secs()),
        );
    }
    body
}

/// Looker's `EmbedCookielessSessionGenerateTokens`.
#[derive(Deserialize)]
struct GenerateTokensBody {
    session_reference_token: String,
    navigation_token: Option<String>,
    api_token: Option<String>,
}

/// `PUT /embed/cookieless_session/generate_tokens`.
pub(crate) fn generate_tokens(state: &SimState, body: &Bytes) -> Result<Response, ApiError> {
    let request: GenerateTokensBody = parse(body)?;
    let now = Instant::now();
    let mut world = state.world();
    let embed = &mut world.embed;
    let token_ttl = embed.token_ttl;
    let session = embed
        .by_reference(&request.session_reference_token)
        .filter(|s| s.kind == SessionKind::Cookieless)
        .ok_or(ApiError::NotFound)?;
    if !session.is_live(now) {
        // Looker reports an ended session in the TTL, not with an error.
        return Ok(ok_json(&json!({
            "navigation_token": "",
            "navigation_token_ttl": 0,
            "api_token": "",
            "api_token_ttl": 0,
            "session_reference_token": session.reference_token,
            "session_reference_token_ttl": 0,
        })));
    }
    let navigation_ok = request
        .navigation_token
        .as_deref()
        .is_some_and(|t| session.accepts(&session.navigation_tokens, t, now));
    let api_ok = request
        .api_token
        .as_deref()
        .is_some_and(|t| session.accepts(&session.api_tokens, t, now));
    if !(navigation_ok && api_ok) {
        return Err(ApiError::BadRequest(
            "Invalid navigation_token or api_token for this session".into(),
        ));
    }
    session.generate_tokens_calls += 1;
    let tokens = session.issue(now, token_ttl, None);
    let body = tokens_json(
        &session.reference_token,
        session.ttl(now),
        &tokens,
        token_ttl,
        Duration::ZERO,
    );
    Ok(ok_json(&body))
}

/// `DELETE /embed/cookieless_session/{session_reference_token}`: the session and all its
/// tokens end (204, also for one that had already ended); 404 for a token never issued.
pub(crate) fn delete_session(
    state: &SimState,
    reference_token: &str,
) -> Result<Response, ApiError> {
    let mut world = state.world();
    let session = world
        .embed
        .by_reference(reference_token)
        .ok_or(ApiError::NotFound)?;
    session.end();
    eprintln!("looker-sim: embed session {} deleted", session.id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Looker's `EmbedSecret` as a create request (read-only fields ignored).
#[derive(Debug, Default, Deserialize)]
struct SecretBody {
    algorithm: Option<String>,
    enabled: Option<bool>,
    secret_type: Option<String>,
}

/// `POST /embed_config/secrets`: the only answer that ever shows the secret.
pub(crate) fn create_secret(
    state: &SimState,
    creator: u64,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let request: SecretBody = if body.iter().all(u8::is_ascii_whitespace) {
        SecretBody::default()
    } else {
        parse(body)?
    };
    let algorithm_name = request.algorithm.as_deref().unwrap_or("hmac/sha-256");
    let algorithm = SigningAlgorithm::parse(algorithm_name).ok_or(ApiError::Validation {
        field: "algorithm",
        code: "invalid",
        message: format!("algorithm must be hmac/sha-256 or hmac/sha-1, not {algorithm_name}"),
    })?;
    let secret_type = request.secret_type.unwrap_or_else(|| "SSO".to_owned());
    if !matches!(secret_type.as_str(), "SSO" | "JWT") {
        return Err(ApiError::Validation {
            field: "secret_type",
            code: "invalid",
            message: format!("secret_type must be SSO or JWT, not {secret_type}"),
        });
    }
    let secret = state.world().embed.add_secret(
        algorithm,
        random_alphanumeric(64),
        request.enabled.unwrap_or(true),
        secret_type,
        Some(creator.to_string()),
    );
    eprintln!("looker-sim: created embed secret {}", secret.id);
    Ok(ok_json(&secret_json(&secret, true)))
}

/// `DELETE /embed_config/secrets/{embed_secret_id}`.
pub(crate) fn delete_secret(state: &SimState, id: &str) -> Result<Response, ApiError> {
    let mut world = state.world();
    let before = world.embed.secrets.len();
    world.embed.secrets.retain(|s| s.id != id);
    if world.embed.secrets.len() == before {
        return Err(ApiError::NotFound);
    }
    eprintln!("looker-sim: deleted embed secret {id}");
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl EmbedState {
    pub fn add_secret(
        &mut self,
        algorithm: SigningAlgorithm,
        secret: String,
        enabled: bool,
        secret_type: String,
        user_id: Option<String>,
    ) -> EmbedSecret {
        let value = EmbedSecret {
            id: self.next_secret_id.to_string(),
            algorithm,
            secret,
            enabled,
            secret_type,
            created_at: looker_timestamp(SystemTime::now()),
            user_id,
        };
        self.next_secret_id += 1;
        self.secrets.push(value.clone());
        value
    }
}

fn secret_json(secret: &EmbedSecret, with_secret: bool) -> Value {
    json!({
        "id": secret.id,
        "algorithm": secret.algorithm.name(),
        "created_at": secret.created_at,
        "enabled": secret.enabled,
        "secret": with_secret.then_some(secret.secret.as_str()),
        "secret_type": secret.secret_type,
        "user_id": secret.user_id,
    })
}

/// `GET /__sim/embed`: sessions and secrets, without any token or secret value.
pub(crate) fn sim_view(state: &SimState) -> Value {
    let world = state.world();
    let secrets: Vec<Value> = world
        .embed
        .secrets
        .iter()
        .map(|s| secret_json(s, false))
        .collect();
    json!({
        "sessions": world.embed.views(Instant::now()),
        "secrets": secrets,
    })
}
