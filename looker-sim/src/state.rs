//! The simulator's mutable world: users, API3 keys, sessions (access tokens), saved
//! queries, and the test-visible records (requests, login attempts) and injected faults.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::demo::{self, DemoUser};
use crate::embed::{EmbedSessionView, EmbedState, SigningAlgorithm};
use crate::explore::QuerySpec;

/// Oldest recorded requests are dropped past this many, so a long demo run stays bounded.
const MAX_RECORDED_REQUESTS: usize = 10_000;

/// A Looker instance in memory. Cheap to clone; clones share the same world, so a test
/// can keep one and inspect what the router it handed to `app` has seen.
#[derive(Clone)]
pub struct SimState {
    world: Arc<Mutex<World>>,
}

/// One request received under `/api/`, as `GET /__sim/requests` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string without `?` ("" when none).
    pub query: String,
    /// Lower-case header names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The request's trailer fields (chunked HTTP/1.1), as `headers`; filled in once the
    /// body has arrived, so tests can prove no client trailer reached Looker.
    #[serde(default)]
    pub trailers: BTreeMap<String, String>,
}

/// Names one recorded request, to add what arrives after its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordId(u64);

/// One login attempt (`POST /login` or `POST /login/{user_id}`); never holds a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginAttempt {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sudo_user_id: Option<String>,
    pub ok: bool,
    /// The HTTP status the simulator answered.
    pub status: u16,
}

/// Injected failures, set with `POST /__sim/faults`: the next `count` logins (and, with
/// `api_status` or `api_delay_ms`, the next `count` other API calls) fail or are slowed down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Status for the next logins (both `login` and `login_user`).
    pub login_status: Option<u16>,
    /// Delay before each of the next logins answers.
    pub login_delay_ms: Option<u64>,
    /// Status for the next non-login API calls (e.g. 500, 503, 429).
    pub api_status: Option<u16>,
    /// `Retry-After` seconds sent with `api_status`; by default 1 for 429 and 503.
    pub retry_after: Option<u64>,
    /// Delay before each of the next non-login API calls answers (with `api_status`, or
    /// normally without it).
    pub api_delay_ms: Option<u64>,
    /// How many calls each fault affects (default 1).
    pub count: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct LoginFault {
    pub status: Option<u16>,
    pub delay: Duration,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiFault {
    /// None: the call is only delayed, then answered normally.
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct Api3Key {
    pub id: u64,
    pub user_id: u64,
    pub client_id: String,
    pub client_secret: String,
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub user_id: u64,
    pub expires_at: Instant,
}

pub(crate) struct World {
    pub token_ttl: Duration,
    /// How long every login takes (`with_login_latency`).
    pub login_latency: Duration,
    pub users: Vec<DemoUser>,
    pub api3_keys: Vec<Api3Key>,
    next_api3_id: u64,
    sessions: HashMap<String, Session>,
    pub queries: BTreeMap<u64, QuerySpec>,
    next_query_id: u64,
    /// Each with the id `record_request` returned for it.
    requests: Vec<(RecordId, RecordedRequest)>,
    next_record: u64,
    logins: Vec<LoginAttempt>,
    login_faults: Option<(LoginFault, u32)>,
    api_faults: Option<(ApiFault, u32)>,
    pub embed: EmbedState,
}

impl SimState {
    /// The demo instance of DESIGN.md with a one-hour token lifetime.
    pub fn demo() -> SimState {
        let api3_keys: Vec<Api3Key> = demo::api3_keys()
            .enumerate()
            .map(|(n, (user_id, client_id, client_secret))| Api3Key {
                id: n as u64 + 1,
                user_id,
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
                created_at: demo::DEMO_CREATED_AT.to_owned(),
            })
            .collect();
        let queries: BTreeMap<u64, QuerySpec> = (1..).zip(demo::saved_queries()).collect();
        let world = World {
            token_ttl: Duration::from_secs(3600),
            login_latency: Duration::ZERO,
            users: demo::users(),
            next_api3_id: api3_keys.len() as u64 + 1,
            api3_keys,
            sessions: HashMap::new(),
            next_query_id: queries.len() as u64 + 1,
            queries,
            requests: Vec::new(),
            next_record: 0,
            logins: Vec::new(),
            login_faults: None,
            api_faults: None,
            embed: EmbedState::default(),
        };
        SimState {
            world: Arc::new(Mutex::new(world)),
        }
    }

    /// Sets how long new access tokens live (`expires_in` is its whole seconds).
    pub fn with_token_ttl(self, ttl: Duration) -> SimState {
        self.world().token_ttl = ttl;
        self
    }

    /// Sets how long embed navigation and API tokens live (Looker: 10 minutes).
    /// Adds `count` users `user-<n>@example.com` (per-user identities for load tests).
    pub fn with_extra_users(self, count: u64) -> SimState {
        self.world().users.extend(demo::extra_users(count));
        self
    }

    /// Every login (`login`, `login_user`) answers this much later, as a real Looker's
    /// do (tens of milliseconds); an injected login delay replaces it.
    pub fn with_login_latency(self, latency: Duration) -> SimState {
        self.world().login_latency = latency;
        self
    }

    pub fn with_embed_token_ttl(self, ttl: Duration) -> SimState {
        self.world().embed.token_ttl = ttl;
        self
    }

    /// Adds an enabled `hmac/sha-256` SSO embed secret (the first one gets id "1"), as an
    /// admin would with `create_embed_secret`; the demo shares it with the broker.
    pub fn with_embed_secret(self, secret: &str) -> SimState {
        self.world().embed.add_secret(
            SigningAlgorithm::HmacSha256,
            secret.to_owned(),
            true,
            "SSO".to_owned(),
            None,
        );
        self
    }

    /// Every embed session, as `GET /__sim/embed` lists them (no token values).
    pub fn embed_sessions(&self) -> Vec<EmbedSessionView> {
        self.world().embed.views(Instant::now())
    }

    pub fn token_ttl(&self) -> Duration {
        self.world().token_ttl
    }

    /// Every request received under `/api/`, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let world = self.world();
        world.requests.iter().map(|(_, r)| r.clone()).collect()
    }

    pub fn clear_requests(&self) {
        self.world().requests.clear();
    }

    /// Every login attempt, oldest first.
    pub fn logins(&self) -> Vec<LoginAttempt> {
        self.world().logins.clone()
    }

    /// Replaces the injected faults (an empty `Faults` clears them).
    pub fn set_faults(&self, faults: &Faults) {
        let count = faults.count.unwrap_or(1);
        let mut world = self.world();
        world.login_faults = (faults.login_status.is_some() || faults.login_delay_ms.is_some())
            .then(|| {
                let delay = Duration::from_millis(faults.login_delay_ms.unwrap_or(0));
                (
                    LoginFault {
                        status: faults.login_status,
                        delay,
                    },
                    count,
                )
            });
        world.api_faults =
            (faults.api_status.is_some() || faults.api_delay_ms.is_some()).then(|| {
                let retry_after =
                    faults
                        .retry_after
                        .or(matches!(faults.api_status, Some(429 | 503)).then_some(1));
                (
                    ApiFault {
                        status: faults.api_status,
                        retry_after,
                        delay: Duration::from_millis(faults.api_delay_ms.unwrap_or(0)),
                    },
                    count,
                )
            });
    }

    /// Revokes an access token early; `false` when it was not a live token.
    pub fn revoke(&self, access_token: &str) -> bool {
        self.world().sessions.remove(access_token).is_some()
    }

    /// Revokes every live access token of a Looker user (as an admin logging them out
    /// would); returns how many.
    pub fn revoke_user(&self, user_id: u64) -> usize {
        let mut world = self.world();
        let before = world.sessions.len();
        world
            .sessions
            .retain(|_, session| session.user_id != user_id);
        before - world.sessions.len()
    }

    /// The shared world. A panic while holding the lock cannot leave it half-updated in
    /// a way that matters to a simulator, so a poisoned lock is simply taken over.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl World {
    pub fn record_request(&mut self, request: RecordedRequest) -> RecordId {
        if self.requests.len() >= MAX_RECORDED_REQUESTS {
            self.requests.remove(0);
        }
        let id = RecordId(self.next_record);
        self.next_record += 1;
        self.requests.push((id, request));
        id
    }

    /// Adds the trailers of a recorded request (gone already if the list was cleared).
    pub fn record_trailers(&mut self, id: RecordId, trailers: BTreeMap<String, String>) {
        if let Some((_, request)) = self.requests.iter_mut().rev().find(|(i, _)| *i == id) {
            request.trailers = trailers;
        }
    }

    pub fn record_login(&mut self, attempt: LoginAttempt) {
        self.logins.push(attempt);
    }

    /// Takes one use of the login fault, if any is armed.
    pub fn take_login_fault(&mut self) -> Option<LoginFault> {
        take(&mut self.login_faults)
    }

    /// Takes one use of the API fault, if any is armed.
    pub fn take_api_fault(&mut self) -> Option<ApiFault> {
        take(&mut self.api_faults)
    }

    pub fn user(&self, id: u64) -> Option<&DemoUser> {
        self.users.iter().find(|u| u.id == id)
    }

    /// Starts a session for `user_id` and returns its access token.
    pub fn open_session(&mut self, user_id: u64) -> String {
        let now = Instant::now();
        self.sessions.retain(|_, s| s.expires_at > now);
        let token = random_alphanumeric(40);
        self.sessions.insert(
            token.clone(),
            Session {
                user_id,
                expires_at: now + self.token_ttl,
            },
        );
        token
    }

    /// The live session behind an access token.
    pub fn session(&self, token: &str) -> Option<&Session> {
        self.sessions
            .get(token)
            .filter(|s| s.expires_at > Instant::now())
    }

    pub fn close_session(&mut self, token: &str) {
        self.sessions.remove(token);
    }

    pub fn create_api3_key(&mut self, user_id: u64) -> Api3Key {
        let key = Api3Key {
            id: self.next_api3_id,
            user_id,
            client_id: random_alphanumeric(20),
            client_secret: random_alphanumeric(24),
            created_at: looker_timestamp(SystemTime::now()),
        };
        self.next_api3_id += 1;
        self.api3_keys.push(key.clone());
        key
    }

    pub fn save_query(&mut self, query: QuerySpec) -> u64 {
        let id = self.next_query_id;
        self.next_query_id += 1;
        self.queries.insert(id, query);
        id
    }
}

fn take<T: Copy>(slot: &mut Option<(T, u32)>) -> Option<T> {
    let (fault, remaining) = slot.as_mut()?;
    let fault = *fault;
    *remaining = remaining.saturating_sub(1);
    if *remaining == 0 {
        *slot = None;
    }
    Some(fault)
}

/// `len` characters from `[A-Za-z0-9]`, like Looker's tokens and API3 keys. Uses the OS
/// generator; if that ever fails, falls back to hashing the clock with std's random keys.
pub(crate) fn random_alphanumeric(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut buf = [0u8; 64];
        if getrandom::getrandom(&mut buf).is_err() {
            fallback_random(&mut buf);
        }
        // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            if let Some(c) = ALPHABET.get(usize::from(*b) % ALPHABET.len()) {
                out.push(char::from(*c));
            }
        }
    }
    out
}

fn fallback_random(buf: &mut [u8]) {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    for (n, chunk) in buf.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(n);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        for (dst, src) in chunk.iter_mut().zip(h.finish().to_le_bytes()) {
            *dst = src;
        }
    }
}

/// Looker's timestamp format, in UTC: `2026-01-01T00:00:00.000+00:00`.
pub(crate) fn looker_timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
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
    fn random_tokens_are_alphanumeric_and_distinct() {
        let a = random_alphanumeric(40);
        let b = random_alphanumeric(40);
        assert_eq!(a.len(), 40);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
        let mut fallback = [0u8; 16];
        fallback_random(&mut fallback);
        assert_ne!(fallback, [0u8; 16]);
    }

    #[test]
    fn timestamps_use_looker_format() {
        let cases = [
            (0, "1970-01-01T00:00:00.000+00:00"),
            (951_782_400, "2000-02-29T00:00:00.000+00:00"),
            (1_767_225_599, "2025-12-31T23:59:59.000+00:00"),
            (1_767_225_600, "2026-01-01T00:00:00.000+00:00"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                looker_timestamp(UNIX_EPOCH + Duration::from_secs(secs)),
                want
            );
        }
    }

    #[test]
    fn faults_are_used_up_after_count_calls() {
        let state = SimState::demo();
        state.set_faults(&Faults {
            login_status: Some(500),
            api_status: Some(429),
            count: Some(2),
            ..Faults::default()
        });
        let mut world = state.world();
        assert_eq!(world.take_login_fault().and_then(|f| f.status), Some(500));
        assert_eq!(world.take_login_fault().and_then(|f| f.status), Some(500));
        assert!(world.take_login_fault().is_none());
        let api = world.take_api_fault().unwrap();
        assert_eq!((api.status, api.retry_after), (Some(429), Some(1)));
    }

    #[test]
    fn sessions_expire_after_the_ttl() {
        let state = SimState::demo().with_token_ttl(Duration::from_millis(30));
        let token = state.world().open_session(101);
        assert_eq!(state.world().session(&token).map(|s| s.user_id), Some(101));
        std::thread::sleep(Duration::from_millis(40));
        assert!(state.world().session(&token).is_none());
    }
}
