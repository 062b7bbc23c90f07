//! Embedded analytics (docs/embed.md): the broker's side of Looker's cookieless embed flow
//! and of signed SSO embed URLs.
//!
//! Looker's `session_reference_token` is kept here, under the
//! [`session_key`](lookergate_proto::embed::session_key) of the principal, profile and
//! embed user that acquired it, and never returned: only the gateway's call for that same
//! key can refresh or end the session. The Looker calls use the API token of the role
//! `embed.role`, from the broker's token cache.

use crate::broker::{Broker, BrokerError};
use crate::config::{EmbedConfig, SsoAlgorithm};
use crate::identity::{CacheKey, LookerIdentity};
use crate::looker::{EmbedSessionAnswer, LookerError};
use crate::secret::Secret;
use base64::Engine as _;
use lookergate_proto::embed::{
    session_key, sso_params, sso_string_to_sign, AcquireRequest, EmbedUser, GenerateTokensRequest,
    LogoutRequest, Principal, SessionTokens, SsoUrlRequest,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many sessions are kept; beyond it the oldest is forgotten (its browser
/// then gets `no_embed_session` on its next refresh and acquires again).
pub const MAX_SESSIONS: usize = 100_000;

/// Looker's upper bound for an embed session (`session_length`, seconds): 30 days.
const MAX_SESSION_LENGTH: u64 = 30 * 24 * 3600;

/// JavaScript's `encodeURIComponent` set: what Looker's own examples use for the embed
/// path and the parameter values.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

struct StoredSession {
    reference: Secret,
    expires_at: Instant,
    /// Insertion order, for oldest-first eviction.
    seq: u64,
}

#[derive(Default)]
struct SessionTable {
    by_key: HashMap<String, StoredSession>,
    by_age: BTreeMap<u64, String>,
    next_seq: u64,
}

impl SessionTable {
    fn remove(&mut self, key: &str) -> Option<StoredSession> {
        let stored = self.by_key.remove(key)?;
        self.by_age.remove(&stored.seq);
        Some(stored)
    }

    fn prune(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .by_key
            .iter()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
    }
}

/// The broker's embed sessions: session key -> Looker's session reference token.
pub struct EmbedSessions {
    table: Mutex<SessionTable>,
    cap: usize,
}

impl Default for EmbedSessions {
    fn default() -> Self {
        EmbedSessions::with_cap(MAX_SESSIONS)
    }
}

impl EmbedSessions {
    pub fn with_cap(cap: usize) -> Self {
        EmbedSessions {
            table: Mutex::new(SessionTable::default()),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reference token of `key` if its session is still live (an expired one is dropped).
    pub fn live(&self, key: &str) -> Option<Secret> {
        let mut table = self.lock();
        let now = Instant::now();
        match table.by_key.get(key) {
            Some(s) if s.expires_at > now => Some(s.reference.clone()),
            Some(_) => {
                table.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `reference` under `key` for `ttl`, replacing what was there; at the cap,
    /// expired sessions go first, then the oldest.
    pub fn store(&self, key: &str, reference: Secret, ttl: Duration) {
        let mut table = self.lock();
        table.remove(key);
        if ttl.is_zero() {
            return;
        }
        if table.by_key.len() >= self.cap {
            table.prune(Instant::now());
        }
        while table.by_key.len() >= self.cap {
            let Some((_, oldest)) = table.by_age.pop_first() else {
                break;
            };
            table.by_key.remove(&oldest);
        }
        let seq = table.next_seq;
        table.next_seq += 1;
        table.by_age.insert(seq, key.to_owned());
        table.by_key.insert(
            key.to_owned(),
            StoredSession {
                reference,
                expires_at: Instant::now() + ttl,
                seq,
            },
        );
    }

    /// Forgets `key`'s session, returning its reference token.
    pub fn remove(&self, key: &str) -> Option<Secret> {
        self.lock().remove(key).map(|s| s.reference)
    }

    /// Puts back a session [`EmbedSessions::remove`] took, unless another took its place.
    fn restore(&self, key: &str, reference: Secret, ttl: Duration) {
        if !self.lock().by_key.contains_key(key) {
            self.store(key, reference, ttl);
        }
    }

    pub fn sweep(&self) {
        self.lock().prune(Instant::now());
    }

    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an acquire did, for the audit line and the metric.
pub struct Acquired {
    pub tokens: SessionTokens,
    /// Joined the principal's live session instead of starting one.
    pub joined: bool,
    /// Fingerprint of the session reference token (never the token).
    pub session_fp: String,
}

/// The ended-session answer the Embed SDK understands: `session_reference_token_ttl` 0.
fn ended() -> SessionTokens {
    SessionTokens {
        authentication_token: None,
        authentication_token_ttl: None,
        navigation_token: String::new(),
        navigation_token_ttl: 0,
        api_token: String::new(),
        api_token_ttl: 0,
        session_reference_token_ttl: 0,
    }
}

/// Looker's answers to a call naming a session it no longer has (or tokens it refuses:
/// "Invalid input tokens provided"): the session is over for the broker too.
fn session_gone(e: &LookerError) -> bool {
    matches!(
        e,
        LookerError::Status {
            status: 400 | 404 | 410 | 422
        }
    )
}

fn check_request(
    principal: &Principal,
    profile: &str,
    user: &EmbedUser,
) -> Result<(), BrokerError> {
    let bad = |m: &str| Err(BrokerError::BadRequest(m.to_owned()));
    if principal.issuer.is_empty() || principal.subject.is_empty() {
        return bad("principal.issuer and principal.subject must not be empty");
    }
    if profile.is_empty() {
        return bad("profile must not be empty");
    }
    if user.external_user_id.trim().is_empty() {
        return bad("user.external_user_id must not be empty");
    }
    if user.session_length == 0 || user.session_length > MAX_SESSION_LENGTH {
        return Err(BrokerError::BadRequest(format!(
            "user.session_length must be 1..={MAX_SESSION_LENGTH} seconds"
        )));
    }
    Ok(())
}

fn malformed(what: &str, field: &str) -> BrokerError {
    BrokerError::LookerUnavailable(format!(
        "unexpected answer from Looker to {what}: no {field}"
    ))
}

/// The browser's part of Looker's answer; `None` when a token the SDK needs is missing.
fn browser_tokens(answer: &EmbedSessionAnswer, with_authentication: bool) -> Option<SessionTokens> {
    let authentication_token = if with_authentication {
        Some(
            answer
                .authentication_token
                .clone()
                .filter(|t| !t.is_empty())?,
        )
    } else {
        None
    };
    Some(SessionTokens {
        authentication_token_ttl: authentication_token
            .as_ref()
            .map(|_| answer.authentication_token_ttl.unwrap_or(0)),
        authentication_token,
        navigation_token: answer.navigation_token.clone().filter(|t| !t.is_empty())?,
        navigation_token_ttl: answer.navigation_token_ttl.unwrap_or(0),
        api_token: answer.api_token.clone().filter(|t| !t.is_empty())?,
        api_token_ttl: answer.api_token_ttl.unwrap_or(0),
        session_reference_token_ttl: answer.session_reference_token_ttl.unwrap_or(0),
    })
}

impl Broker {
    fn embed_config(&self) -> Result<EmbedConfig, BrokerError> {
        self.runtime().config.embed.clone().ok_or_else(|| {
            BrokerError::EmbedDisabled(
                "embedding is not enabled (no [embed] in the broker config)".into(),
            )
        })
    }

    /// Runs `call` with an API token of the embed role; a 401 (token revoked or expired
    /// early) drops the cached token and tries once more with a new one.
    async fn as_embed_role<T, F, Fut>(
        &self,
        embed: &EmbedConfig,
        call: F,
    ) -> Result<Result<T, LookerError>, BrokerError>
    where
        F: Fn(Secret) -> Fut,
        Fut: Future<Output = Result<T, LookerError>>,
    {
        let identity = LookerIdentity::Role(embed.role.clone());
        let mut retried = false;
        loop {
            let issued = self.token(&identity).await?;
            match call(issued.token.access_token.clone()).await {
                Err(LookerError::Status { status: 401 }) if !retried => {
                    retried = true;
                    let _ = self
                        .tokens
                        .invalidate_everywhere(&CacheKey::of(&identity))
                        .await;
                }
                other => return Ok(other),
            }
        }
    }

    /// Acquires the principal's embed session, joining the live one if the broker has it.
    pub async fn embed_acquire(&self, req: &AcquireRequest) -> Result<Acquired, BrokerError> {
        let embed = self.embed_config()?;
        check_request(&req.principal, &req.profile, &req.user)?;
        let key = session_key(&req.principal, &req.profile, &req.user);
        let user = serde_json::to_value(&req.user)
            .map_err(|e| BrokerError::BadRequest(format!("embed user: {e}")))?;
        let what = "acquire_embed_cookieless_session";
        let mut joining = self.embed_sessions.live(&key);
        loop {
            let mut body = user.clone();
            if let (Some(reference), Some(fields)) = (&joining, body.as_object_mut()) {
                fields.insert("session_reference_token".into(), reference.expose().into());
            }
            let answer = self
                .as_embed_role(&embed, |token| {
                    let body = &body;
                    async move {
                        self.runtime()
                            .looker
                            .acquire_embed_session(&token, body)
                            .await
                    }
                })
                .await?;
            let answer = match answer {
                Ok(answer) => answer,
                // Looker no longer knows the session we hold: start a new one.
                Err(e) if joining.is_some() && session_gone(&e) => {
                    self.embed_sessions.remove(&key);
                    joining = None;
                    continue;
                }
                Err(LookerError::Status {
                    status: status @ (400 | 422),
                }) => {
                    return Err(BrokerError::BadRequest(format!(
                    "Looker refused the embed user ({status} to {what}); check the embed profile"
                )))
                }
                Err(LookerError::Status { status: 403 }) => {
                    return Err(BrokerError::BadCredentials(format!(
                        "role {:?} (embed.role): Looker answered 403 to {what}",
                        embed.role
                    )))
                }
                Err(e) => return Err(BrokerError::from_call(e, what)),
            };
            let tokens = browser_tokens(&answer, true)
                .ok_or_else(|| malformed(what, "authentication, navigation or API token"))?;
            let reference = answer
                .session_reference_token
                .filter(|r| !r.is_empty())
                .or(joining.clone())
                .ok_or_else(|| malformed(what, "session_reference_token"))?;
            let ttl = answer
                .session_reference_token_ttl
                .unwrap_or(req.user.session_length);
            let session_fp = reference.fingerprint();
            self.embed_sessions
                .store(&key, reference, Duration::from_secs(ttl));
            self.metrics
                .embed_sessions
                .set(self.embed_sessions.len() as i64);
            return Ok(Acquired {
                tokens,
                joined: joining.is_some(),
                session_fp,
            });
        }
    }

    /// New navigation and API tokens for the principal's session; an ended session
    /// answers `session_reference_token_ttl` 0 (and is forgotten).
    pub async fn embed_generate_tokens(
        &self,
        req: &GenerateTokensRequest,
    ) -> Result<SessionTokens, BrokerError> {
        let embed = self.embed_config()?;
        check_request(&req.principal, &req.profile, &req.user)?;
        let key = session_key(&req.principal, &req.profile, &req.user);
        let reference = self
            .embed_sessions
            .live(&key)
            .ok_or(BrokerError::NoEmbedSession)?;
        let what = "generate_tokens_for_cookieless_session";
        let body = serde_json::json!({
            "session_reference_token": reference.expose(),
            "api_token": req.api_token,
            "navigation_token": req.navigation_token,
        });
        let answer = self
            .as_embed_role(&embed, |token| {
                let body = &body;
                async move {
                    self.runtime()
                        .looker
                        .generate_embed_tokens(&token, body)
                        .await
                }
            })
            .await?;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) if session_gone(&e) => {
                self.forget_session(&key, "looker_refused");
                return Ok(ended());
            }
            Err(e) => return Err(BrokerError::from_call(e, what)),
        };
        let ttl = answer.session_reference_token_ttl.unwrap_or(0);
        if ttl == 0 {
            self.forget_session(&key, "looker_ended");
            return Ok(browser_tokens(&answer, false).unwrap_or_else(ended));
        }
        let tokens = browser_tokens(&answer, false)
            .ok_or_else(|| malformed(what, "navigation or API token"))?;
        // Looker may hand out a new reference token; the TTL counts down either way.
        let reference = answer
            .session_reference_token
            .filter(|r| !r.is_empty())
            .unwrap_or(reference);
        self.embed_sessions
            .store(&key, reference, Duration::from_secs(ttl));
        Ok(tokens)
    }

    /// Ends the principal's session at Looker and forgets it.
    pub async fn embed_logout(&self, req: &LogoutRequest) -> Result<(), BrokerError> {
        let embed = self.embed_config()?;
        check_request(&req.principal, &req.profile, &req.user)?;
        let key = session_key(&req.principal, &req.profile, &req.user);
        let reference = self
            .embed_sessions
            .live(&key)
            .ok_or(BrokerError::NoEmbedSession)?;
        self.forget_session(&key, "logout");
        let deleted = self
            .as_embed_role(&embed, |token| {
                let reference = &reference;
                async move {
                    self.runtime()
                        .looker
                        .delete_embed_session(&token, reference)
                        .await
                }
            })
            .await;
        let failed = match deleted {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => BrokerError::from_call(e, "delete_embed_cookieless_session"),
            Err(e) => e,
        };
        // Keep it so a retry can end it at Looker (the gateway answered with an error).
        self.embed_sessions.restore(
            &key,
            reference,
            Duration::from_secs(req.user.session_length),
        );
        self.metrics
            .embed_sessions
            .set(self.embed_sessions.len() as i64);
        Err(failed)
    }

    fn forget_session(&self, key: &str, why: &'static str) {
        if let Some(reference) = self.embed_sessions.remove(key) {
            tracing::info!(
                event = "embed_session_ended",
                why,
                session_fp = reference.fingerprint(),
            );
        }
        self.metrics
            .embed_sessions
            .set(self.embed_sessions.len() as i64);
    }

    /// A signed SSO embed URL for the request's embed user (Looker's signed embedding).
    pub fn embed_sso_url(&self, req: &SsoUrlRequest) -> Result<String, BrokerError> {
        let embed = self.embed_config()?;
        check_request(&req.principal, &req.profile, &req.user)?;
        let target = embed_target(&embed.host, &req.target_url)?;
        let secret = embed.secret.as_ref().ok_or_else(|| {
            BrokerError::EmbedDisabled(
                "signed embed URLs are not enabled (no embed.secret in the broker config)".into(),
            )
        })?;
        let nonce = nonce()?;
        sign_sso_url(
            &embed.host,
            target,
            &req.user,
            secret.secret.expose(),
            embed.algorithm,
            &nonce,
            crate::log::unix_now_secs(),
        )
    }
}

/// The target page's path: `/embed/...`, or the full URL on the embed host.
fn embed_target<'a>(host: &str, target_url: &'a str) -> Result<&'a str, BrokerError> {
    let path = match target_url.strip_prefix("https://") {
        Some(rest) => rest
            .strip_prefix(host)
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| {
                BrokerError::BadRequest(format!("target_url must be on the embed host {host}"))
            })?,
        None => target_url,
    };
    let bad = |why: &str| {
        Err(BrokerError::BadRequest(format!(
            "target_url must be a Looker embed page (/embed/...): {why}"
        )))
    };
    if !path.starts_with("/embed/") {
        return bad("it does not start with /embed/");
    }
    if path.len() > 2048 {
        return bad("longer than 2048 bytes");
    }
    if path
        .chars()
        .any(|c| c.is_control() || c == '\\' || c == '#')
    {
        return bad("control characters, '\\' or '#'");
    }
    let route = path.split('?').next().unwrap_or(path);
    if route.contains("//") || route.split('/').any(|s| s == "." || s == "..") {
        return bad("empty or dot segments");
    }
    Ok(path)
}

/// 16 random bytes, hex: Looker refuses a nonce it has seen within the hour.
fn nonce() -> Result<String, BrokerError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| BrokerError::LookerUnavailable("no randomness for the nonce".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `https://{host}/login/embed/{target, encoded}?{parameters}&signature=...`, the
/// signature being the base64 HMAC of [`sso_string_to_sign`].
pub fn sign_sso_url(
    host: &str,
    target: &str,
    user: &EmbedUser,
    secret: &str,
    algorithm: SsoAlgorithm,
    nonce: &str,
    time: u64,
) -> Result<String, BrokerError> {
    let embed_path = format!("/login/embed/{}", utf8_percent_encode(target, COMPONENT));
    let params = sso_params(user, nonce, time);
    let to_sign = sso_string_to_sign(host, &embed_path, &params);
    let hmac = match algorithm {
        SsoAlgorithm::HmacSha256 => ring::hmac::HMAC_SHA256,
        SsoAlgorithm::HmacSha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
    };
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(hmac, secret.as_bytes()),
        to_sign.as_bytes(),
    );
    let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    let query: Vec<String> = params
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .chain([("signature", signature.as_str())])
        .map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, COMPONENT)))
        .collect();
    Ok(format!("https://{host}{embed_path}?{}", query.join("&")))
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

    fn user() -> EmbedUser {
        EmbedUser {
            external_user_id: "https://idp.example|alice".into(),
            first_name: Some("Alice A".into()),
            last_name: None,
            user_timezone: None,
            permissions: vec!["access_data".into(), "see_user_dashboards".into()],
            models: vec!["thelook".into()],
            group_ids: vec![],
            external_group_id: None,
            user_attributes: [("region".to_owned(), "west".to_owned())].into(),
            session_length: 3600,
            force_logout_login: true,
        }
    }

    #[test]
    fn sessions_expire_are_replaced_and_the_oldest_is_evicted_at_the_cap() {
        let sessions = EmbedSessions::with_cap(2);
        sessions.store("a", Secret::new("ra"), Duration::from_secs(60));
        sessions.store("b", Secret::new("rb"), Duration::from_secs(60));
        assert_eq!(
            sessions.live("a").map(|s| s.expose().to_owned()),
            Some("ra".into())
        );
        sessions.store("a", Secret::new("ra2"), Duration::from_secs(60));
        assert_eq!(sessions.len(), 2, "replacing keeps one entry per key");
        // "b" is now the oldest entry.
        sessions.store("c", Secret::new("rc"), Duration::from_secs(60));
        assert!(sessions.live("b").is_none(), "oldest evicted");
        assert_eq!(
            sessions.live("a").map(|s| s.expose().to_owned()),
            Some("ra2".into())
        );
        assert!(sessions.live("c").is_some());

        assert_eq!(
            sessions.remove("a").map(|s| s.expose().to_owned()),
            Some("ra2".into())
        );
        sessions.store("d", Secret::new("rd"), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        sessions.store("e", Secret::new("re"), Duration::ZERO);
        assert!(sessions.live("e").is_none(), "a zero TTL is not stored");
        assert_eq!(sessions.len(), 2, "c, and d until it is swept");
        sessions.sweep();
        assert_eq!(sessions.len(), 1);
        assert!(sessions.live("d").is_none(), "expired");
        assert!(sessions.live("c").is_some());
    }

    #[test]
    fn expired_sessions_go_before_live_ones_at_the_cap() {
        let sessions = EmbedSessions::with_cap(2);
        sessions.store("old-live", Secret::new("r1"), Duration::from_secs(60));
        sessions.store("expired", Secret::new("r2"), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        sessions.store("new", Secret::new("r3"), Duration::from_secs(60));
        assert!(sessions.live("old-live").is_some());
        assert!(sessions.live("new").is_some());
    }

    #[test]
    fn targets_are_embed_pages_on_the_embed_host() {
        let host = "looker.example:443";
        for ok in [
            "/embed/dashboards/1",
            "/embed/dashboards/1?Region=west&x=a%20b",
            "https://looker.example:443/embed/looks/2",
        ] {
            assert!(embed_target(host, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/admin",
            "embed/dashboards/1",
            "/embed/../admin",
            "/embed//x",
            "/embed/x#frag",
            "/embed/x\n",
            "https://evil.example/embed/dashboards/1",
            "https://looker.example:4430/embed/dashboards/1",
            "http://looker.example:443/embed/dashboards/1",
        ] {
            assert!(
                matches!(embed_target(host, bad), Err(BrokerError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    fn query_value(url: &str, name: &str) -> Option<String> {
        let query = url.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (n, v) = pair.split_once('=')?;
            (n == name).then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }

    #[test]
    fn sso_urls_carry_the_parameters_and_an_hmac_of_the_string_to_sign() {
        let host = "127.0.0.1:10443";
        let url = sign_sso_url(
            host,
            "/embed/dashboards/1",
            &user(),
            "embed-secret",
            SsoAlgorithm::HmacSha256,
            "n1",
            1_700_000_000,
        )
        .unwrap();
        let embed_path = "/login/embed/%2Fembed%2Fdashboards%2F1";
        assert!(
            url.starts_with(&format!(
                "https://{host}{embed_path}?nonce=%22n1%22&time=1700000000&"
            )),
            "{url}"
        );
        // Every parameter round-trips through the URL.
        let params = sso_params(&user(), "n1", 1_700_000_000);
        for (name, value) in &params {
            assert_eq!(
                query_value(&url, name).as_deref(),
                Some(value.as_str()),
                "{name}"
            );
        }
        assert_eq!(
            query_value(&url, "first_name").as_deref(),
            Some("\"Alice A\"")
        );
        let to_sign = sso_string_to_sign(host, embed_path, &params);
        let want = hmac_sha256::HMAC::mac(to_sign.as_bytes(), b"embed-secret");
        let want = base64::engine::general_purpose::STANDARD.encode(want);
        assert_eq!(query_value(&url, "signature"), Some(want));

        let sha1 = sign_sso_url(
            host,
            "/embed/dashboards/1",
            &user(),
            "embed-secret",
            SsoAlgorithm::HmacSha1,
            "n1",
            1_700_000_000,
        )
        .unwrap();
        let signature = query_value(&sha1, "signature").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .unwrap();
        assert_eq!(raw.len(), 20, "SHA-1 HMAC");
    }

    #[test]
    fn requests_need_a_principal_a_profile_and_a_sane_session_length() {
        let alice = Principal {
            issuer: "https://idp.example".into(),
            subject: "alice".into(),
        };
        assert!(check_request(&alice, "customer", &user()).is_ok());
        let nobody = Principal {
            issuer: "https://idp.example".into(),
            subject: String::new(),
        };
        assert!(check_request(&nobody, "customer", &user()).is_err());
        assert!(check_request(&alice, "", &user()).is_err());
        let mut forever = user();
        forever.session_length = MAX_SESSION_LENGTH + 1;
        assert!(check_request(&alice, "customer", &forever).is_err());
        let mut anonymous = user();
        anonymous.external_user_id = " ".into();
        assert!(check_request(&alice, "customer", &anonymous).is_err());
    }
}
