//! Per-identity Looker token cache with single-flight logins.
//!
//! Each identity has a slot guarded by an async mutex: the first request that finds no
//! fresh token logs in while holding it; requests queued behind it then reuse the new
//! token — or the same error, so a Looker outage costs one login attempt per burst,
//! not one per request.

use crate::broker::BrokerError;
use crate::identity::CacheKey;
use crate::looker::LookerToken;
use crate::secret::Secret;
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the map lock leaves the map consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TokenCache {
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
