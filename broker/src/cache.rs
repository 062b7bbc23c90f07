//! Per-identity Looker token cache with single-flight logins.
//!
//! Each identity has a slot guarded by an async mutex: the first request that finds no
//! fresh token logs in while holding it; requests queued behind it then reuse the new
//! token — or the same error, so a Looker outage costs one login attempt per burst,
//! not one per request.
//!
//! With a shared store (`[store]`, [`crate::store`]) the local cache stays in front: a
//! local miss reads the identity's sealed token from Redis, and only then logs in, under
//! a Redis lock so that one replica logs in per identity while the others wait for its
//! token. When Redis is down, local tokens are still served while valid; a local miss
//! fails closed (`looker_unavailable`), never with an unsealed or empty token.

use crate::broker::BrokerError;
use crate::identity::CacheKey;
use crate::looker::LookerToken;
use crate::metrics::{OpLabel, StoreMetrics};
use crate::secret::Secret;
use crate::store::{identity_id, random_hex, SharedStore, StoreError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A stale token is still handed out when Looker is unavailable if it has at least this left.
const MIN_STALE_REMAINING: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct CachedToken {
    pub access_token: Secret,
    pub expires_at: Instant,
    /// Fingerprint of the credentials the token came from; a change (reload, rotation) is a miss.
    pub source: String,
}

impl CachedToken {
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// This request logged in.
    Login,
    /// Waited for another request's login and reused its token.
    Joined,
    /// Refresh failed because Looker is unavailable; served the old, still valid token.
    Stale,
}

#[derive(Default)]
struct SlotState {
    token: Option<CachedToken>,
    last_failure: Option<BrokerError>,
}

#[derive(Default)]
struct Slot {
    /// Number of finished login attempts, read before queueing on `state`.
    attempts: AtomicU64,
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<CacheKey, Arc<Slot>>>,
    shared: Option<SharedTokens>,
}

/// How often a replica waiting for another one's login looks for its token.
const LOCK_POLL: Duration = Duration::from_millis(25);

/// The Redis side of the cache: sealed tokens and the per-identity login lock.
struct SharedTokens {
    store: Arc<SharedStore>,
    metrics: StoreMetrics,
    /// Lease of a login lock (milliseconds): longer than any login can take, so a lock
    /// expires only when its holder died; set from the config ([`TokenCache::set_login_lease`]).
    lease_ms: AtomicU64,
}

impl SharedTokens {
    fn error(&self, op: &'static str, e: &StoreError) -> BrokerError {
        self.metrics.errors.get_or_create(&OpLabel { op }).inc();
        tracing::warn!(event = "store_error", op, message = %e);
        BrokerError::LookerUnavailable(e.to_string())
    }

    /// The shared token of `key`, if it came from `source` and is good for more than `refresh_before`.
    async fn read(
        &self,
        key: &CacheKey,
        source: &str,
        refresh_before: Duration,
    ) -> Result<Option<CachedToken>, BrokerError> {
        match self.store.get_token(key).await {
            Ok(Some(t)) if t.source == source && t.remaining > refresh_before => {
                Ok(Some(CachedToken {
                    access_token: t.access_token,
                    expires_at: Instant::now() + t.remaining,
                    source: t.source,
                }))
            }
            Ok(_) => Ok(None),
            // A value that does not open (moved, tampered, another key) is never served: a miss.
            Err(e @ (StoreError::Sealed | StoreError::Malformed(_))) => {
                let _ = self.error("token_open", &e);
                Ok(None)
            }
            Err(e) => Err(self.error("token_get", &e)),
        }
    }

    async fn get_or_login<F, Fut>(
        &self,
        key: &CacheKey,
        source: &str,
        refresh_before: Duration,
        login: F,
    ) -> Result<(CachedToken, Outcome), BrokerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<LookerToken, BrokerError>>,
    {
        let lease = Duration::from_millis(self.lease_ms.load(Ordering::Relaxed));
        // A holder that died leaves the lock until its lease ends; then a waiter takes over.
        let deadline = Instant::now() + lease + Duration::from_millis(500);
        let lock = self.store.login_lock_key(key);
        let owner = random_hex(16);
        let mut login = Some(login);
        let mut waited = false;
        loop {
            let joined = if waited {
                Outcome::Joined
            } else {
                Outcome::Hit
            };
            if let Some(token) = self.read(key, source, refresh_before).await? {
                self.metrics.hits.inc();
                return Ok((token, joined));
            }
            let locked = self
                .store
                .try_lock(&lock, &owner, lease)
                .await
                .map_err(|e| self.error("lock", &e))?;
            if locked {
                let held = HeldLock {
                    store: self.store.clone(),
                    metrics: self.metrics.clone(),
                    lock: lock.clone(),
                    owner: owner.clone(),
                    armed: true,
                };
                // Another replica may have shared its token between the read and the lock.
                if let Some(token) = self.read(key, source, refresh_before).await? {
                    held.release().await;
                    self.metrics.hits.inc();
                    return Ok((token, joined));
                }
                self.metrics.misses.inc();
                let Some(login) = login.take() else {
                    held.release().await;
                    return Err(BrokerError::LookerUnavailable(
                        "login already attempted".into(),
                    ));
                };
                let started = Instant::now();
                let result = login().await;
                let result = match result {
                    Ok(t) => {
                        let token = CachedToken {
                            access_token: t.access_token,
                            expires_at: started + t.expires_in,
                            source: source.to_string(),
                        };
                        let remaining = token.remaining(Instant::now());
                        let keep = remaining.saturating_sub(refresh_before);
                        // Not shared is not fatal: this replica still has it, others log in.
                        if let Err(e) = self
                            .store
                            .put_token(key, &token.access_token, remaining, source, keep)
                            .await
                        {
                            let _ = self.error("token_put", &e);
                        }
                        Ok((token, Outcome::Login))
                    }
                    Err(e) => Err(e),
                };
                held.release().await;
                return result;
            }
            if !waited {
                waited = true;
                self.metrics.lock_waits.inc();
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::LookerUnavailable(
                    "timed out waiting for another broker replica's Looker login".into(),
                ));
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}

/// A login lock this replica holds. Released when the login is done — or, if the request
/// is cancelled mid-login (the gateway gave up), on drop, so that the other replicas need
/// not wait for the lease to end.
struct HeldLock {
    store: Arc<SharedStore>,
    metrics: StoreMetrics,
    lock: String,
    owner: String,
    armed: bool,
}

impl HeldLock {
    async fn release(mut self) {
        self.armed = false;
        if let Err(e) = self.store.unlock(&self.lock, &self.owner).await {
            // The lease ends it anyway.
            self.metrics
                .errors
                .get_or_create(&OpLabel { op: "unlock" })
                .inc();
            tracing::warn!(event = "store_error", op = "unlock", message = %e);
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, lock, owner) = (
            self.store.clone(),
            std::mem::take(&mut self.lock),
            std::mem::take(&mut self.owner),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.unlock(&lock, &owner).await;
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the map lock leaves the map consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TokenCache {
    /// A cache in front of the shared store: tokens, logins and invalidations go through Redis.
    pub fn with_store(store: Arc<SharedStore>, metrics: StoreMetrics) -> Self {
        TokenCache {
            slots: Mutex::default(),
            shared: Some(SharedTokens {
                store,
                metrics,
                lease_ms: AtomicU64::new(5_000),
            }),
        }
    }

    /// How long a replica's login may hold the identity's lock (from the retry budget).
    pub fn set_login_lease(&self, lease: Duration) {
        if let Some(shared) = &self.shared {
            shared
                .lease_ms
                .store(lease.as_millis().max(1) as u64, Ordering::Relaxed);
        }
    }

    fn slot(&self, key: &CacheKey) -> Arc<Slot> {
        lock(&self.slots).entry(key.clone()).or_default().clone()
    }

    /// A token for `key` obtained from `source` that is good for more than `refresh_before`,
    /// logging in with `login` at most once across concurrent callers.
    pub async fn get_or_login<F, Fut>(
        &self,
        key: &CacheKey,
        source: &str,
        refresh_before: Duration,
        login: F,
    ) -> Result<(CachedToken, Outcome), BrokerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<LookerToken, BrokerError>>,
    {
        let slot = self.slot(key);
        let seen = slot.attempts.load(Ordering::Acquire);
        let mut state = slot.state.lock().await;
        let joined = slot.attempts.load(Ordering::Acquire) != seen;
        if let Some(token) = &state.token {
            if token.source == source && token.remaining(Instant::now()) > refresh_before {
                let outcome = if joined {
                    Outcome::Joined
                } else {
                    Outcome::Hit
                };
                return Ok((token.clone(), outcome));
            }
        }
        if joined {
            if let Some(err) = state.last_failure.clone() {
                return stale_or(&state, source, err);
            }
        }

        if let Some(shared) = &self.shared {
            let result = shared
                .get_or_login(key, source, refresh_before, login)
                .await;
            slot.attempts.fetch_add(1, Ordering::Release);
            return match result {
                Ok((token, outcome)) => {
                    state.token = Some(token.clone());
                    state.last_failure = None;
                    let outcome = match outcome {
                        Outcome::Hit if joined => Outcome::Joined,
                        other => other,
                    };
                    Ok((token, outcome))
                }
                Err(err) => {
                    state.last_failure = Some(err.clone());
                    stale_or(&state, source, err)
                }
            };
        }

        // Expiry counts from before the call: Looker's clock started no later than that.
        let started = Instant::now();
        let result = login().await;
        slot.attempts.fetch_add(1, Ordering::Release);
        match result {
            Ok(t) => {
                let token = CachedToken {
                    access_token: t.access_token,
                    expires_at: started + t.expires_in,
                    source: source.to_string(),
                };
                state.token = Some(token.clone());
                state.last_failure = None;
                Ok((token, Outcome::Login))
            }
            Err(err) => {
                state.last_failure = Some(err.clone());
                stale_or(&state, source, err)
            }
        }
    }

    /// Drops the cached token so the next request logs in again.
    pub async fn invalidate(&self, key: &CacheKey) -> bool {
        let slot = lock(&self.slots).get(key).cloned();
        match slot {
            Some(slot) => {
                let mut state = slot.state.lock().await;
                state.last_failure = None;
                state.token.take().is_some()
            }
            None => false,
        }
    }

    /// Drops the token here and, with a shared store, in Redis and on every replica.
    pub async fn invalidate_everywhere(&self, key: &CacheKey) -> Result<bool, BrokerError> {
        let dropped = self.invalidate(key).await;
        if let Some(shared) = &self.shared {
            shared
                .store
                .invalidate(key)
                .await
                .map_err(|e| shared.error("invalidate", &e))?;
        }
        Ok(dropped)
    }

    /// Drops the local token of the identity whose store id is `id` (another replica
    /// invalidated it).
    pub async fn drop_local(&self, id: &str) {
        let matching: Vec<Arc<Slot>> = lock(&self.slots)
            .iter()
            .filter(|(k, _)| identity_id(k) == id)
            .map(|(_, slot)| slot.clone())
            .collect();
        for slot in matching {
            let mut state = slot.state.lock().await;
            state.token = None;
            state.last_failure = None;
        }
    }

    /// Drops every local token (invalidations may have been missed while disconnected).
    pub async fn drop_all_local(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let mut state = slot.state.lock().await;
            state.token = None;
            state.last_failure = None;
        }
    }

    /// Forgets idle entries whose token has expired (bounds memory in per-user mode).
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut slots = lock(&self.slots);
        let before = slots.len();
        slots.retain(|_, slot| {
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            match slot.state.try_lock() {
                Ok(state) => state.token.as_ref().is_some_and(|t| t.expires_at > now),
                Err(_) => true,
            }
        });
        before - slots.len()
    }

    pub fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn stale_or(
    state: &SlotState,
    source: &str,
    err: BrokerError,
) -> Result<(CachedToken, Outcome), BrokerError> {
    match (&state.token, &err) {
        (Some(t), BrokerError::LookerUnavailable(_))
            if t.source == source && t.remaining(Instant::now()) >= MIN_STALE_REMAINING =>
        {
            Ok((t.clone(), Outcome::Stale))
        }
        _ => Err(err),
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
    use std::sync::atomic::AtomicUsize;

    fn token(secs: u64) -> LookerToken {
        LookerToken {
            access_token: Secret::new(format!("tok-{secs}")),
            expires_in: Duration::from_secs(secs),
        }
    }

    #[tokio::test]
    async fn second_request_is_a_hit() {
        let cache = TokenCache::default();
        let key = CacheKey::Role("a".into());
        let refresh = Duration::from_secs(60);
        let r1 = cache
            .get_or_login(&key, "s", refresh, || async { Ok(token(3600)) })
            .await;
        let r2 = cache
            .get_or_login(&key, "s", refresh, || async { Ok(token(7200)) })
            .await;
        assert!(matches!(r1, Ok((_, Outcome::Login))));
        assert!(matches!(&r2, Ok((t, Outcome::Hit)) if t.access_token.expose() == "tok-3600"));
    }

    #[tokio::test]
    async fn token_inside_refresh_window_or_from_other_source_is_a_miss() {
        let cache = TokenCache::default();
        let key = CacheKey::Role("a".into());
        let refresh = Duration::from_secs(60);
        let _ = cache
            .get_or_login(&key, "s", refresh, || async { Ok(token(30)) })
            .await;
        let r = cache
            .get_or_login(&key, "s", refresh, || async { Ok(token(3600)) })
            .await;
        assert!(matches!(r, Ok((_, Outcome::Login))));
        let r = cache
            .get_or_login(&key, "rotated", refresh, || async { Ok(token(3601)) })
            .await;
        assert!(matches!(&r, Ok((t, Outcome::Login)) if t.access_token.expose() == "tok-3601"));
    }

    #[tokio::test]
    async fn concurrent_waiters_share_one_failure() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_login(&CacheKey::Admin, "s", Duration::from_secs(60), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<LookerToken, _>(BrokerError::LookerUnavailable("down".into()))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert!(matches!(
                t.await,
                Ok(Err(BrokerError::LookerUnavailable(_)))
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unavailable_looker_serves_stale_token_but_bad_credentials_do_not() {
        let cache = TokenCache::default();
        let key = CacheKey::Role("a".into());
        let _ = cache
            .get_or_login(&key, "s", Duration::ZERO, || async { Ok(token(30)) })
            .await;
        let refresh = Duration::from_secs(60);
        let r = cache
            .get_or_login(&key, "s", refresh, || async {
                Err(BrokerError::LookerUnavailable("x".into()))
            })
            .await;
        assert!(matches!(r, Ok((_, Outcome::Stale))));
        let r = cache
            .get_or_login(&key, "s", refresh, || async {
                Err(BrokerError::BadCredentials("x".into()))
            })
            .await;
        assert!(matches!(r, Err(BrokerError::BadCredentials(_))));
    }

    #[tokio::test]
    async fn invalidate_forces_login_and_sweep_drops_expired() {
        let cache = TokenCache::default();
        let key = CacheKey::Role("a".into());
        let refresh = Duration::from_secs(1);
        let _ = cache
            .get_or_login(&key, "s", refresh, || async { Ok(token(3600)) })
            .await;
        assert!(cache.invalidate(&key).await);
        let r = cache
            .get_or_login(&key, "s", refresh, || async { Ok(token(3600)) })
            .await;
        assert!(matches!(r, Ok((_, Outcome::Login))));
        assert_eq!(cache.sweep(), 0);
        let other = CacheKey::Role("b".into());
        let _ = cache
            .get_or_login(&other, "s", refresh, || async { Ok(token(0)) })
            .await;
        assert_eq!(cache.sweep(), 1);
        assert_eq!(cache.len(), 1);
    }
}
