//! Looker tokens on one worker: the local cache, the shared-data record that lets
//! every worker reuse one broker answer, and the in-flight broker calls with the
//! requests waiting on them (one callout per identity per worker, never a stampede).

use std::collections::HashMap;
use std::time::Duration;

use crate::http::HeaderOp;
use crate::policy::LookerIdentity;

/// Most identities cached per worker; past it, unusable entries go first.
pub const MAX_CACHED_IDENTITIES: usize = 10_000;

/// A Looker token and when to stop using it.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedToken {
    pub token: String,
    /// Stop handing it out after this instant (before Looker's expiry).
    pub refresh_at_ms: u64,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &crate::fingerprint(self.token.as_bytes()))
            .field("refresh_at_ms", &self.refresh_at_ms)
            .finish()
    }
}

impl CachedToken {
    /// Cache until `refresh_before` ahead of expiry; a short-lived token is kept for
    /// at most half its life so a refresh margin always remains.
    pub fn new(
        token: String,
        now_ms: u64,
        expires_in: Duration,
        refresh_before: Duration,
    ) -> CachedToken {
        let life = u64::try_from(expires_in.as_millis()).unwrap_or(u64::MAX);
        let margin = u64::try_from(refresh_before.as_millis())
            .unwrap_or(u64::MAX)
            .min(life / 2);
        CachedToken {
            token,
            refresh_at_ms: now_ms.saturating_add(life - margin),
        }
    }

    pub fn usable(&self, now_ms: u64) -> bool {
        now_ms < self.refresh_at_ms
    }

    /// Shared-data record: `v1 <refresh_at_ms> <token>`.
    pub fn encode(&self) -> Vec<u8> {
        format!("v1 {} {}", self.refresh_at_ms, self.token).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<CachedToken> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, ' ');
        if parts.next()? != "v1" {
            return None;
        }
        let refresh_at_ms = parts.next()?.parse().ok()?;
        let token = parts.next()?;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        Some(CachedToken {
            token: token.to_owned(),
            refresh_at_ms,
        })
    }
}

/// The shared-data key of an identity's token.
pub fn shared_key(identity: &LookerIdentity) -> String {
    format!("lookergate.looker_token.v1.{}", identity.key())
}

/// A request paused until its identity's token arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub context_id: u32,
    /// The planned rewrite, without the Looker token.
    pub header_ops: Vec<HeaderOp>,
    pub request_id: String,
    /// The rule that allowed it (named in a refusal).
    pub rule: String,
    /// Past this instant the request is answered 503 even if no answer came.
    pub deadline_ms: u64,
}

/// One broker call in flight for an identity on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    pub identity: LookerIdentity,
    pub subject: String,
    pub request_id: String,
    /// The callout token, or `None` when its owner went away and it must be re-sent.
    pub callout: Option<u32>,
    pub waiters: Vec<Waiter>,
    /// When the first callout was sent (the latency histogram, the retry's budget).
    pub started_ms: u64,
    /// The call was already tried a second time (at most one retry per flight).
    pub retried: bool,
}

/// A worker's Looker tokens: the cache, and the broker calls in flight by identity
/// (their callouts are in the worker's callouts).
#[derive(Debug, Default)]
pub struct Tokens {
    cache: HashMap<String, CachedToken>,
    flights: HashMap<String, Flight>,
}

impl Tokens {
    pub fn cached(&self, identity: &LookerIdentity, now_ms: u64) -> Option<&str> {
        self.cache
            .get(&identity.key())
            .filter(|t| t.usable(now_ms))
            .map(|t| t.token.as_str())
    }

    pub fn store(&mut self, identity: &LookerIdentity, token: CachedToken, now_ms: u64) {
        if self.cache.len() >= MAX_CACHED_IDENTITIES {
            self.cache.retain(|_, t| t.usable(now_ms));
            if self.cache.len() >= MAX_CACHED_IDENTITIES {
                self.cache.clear();
            }
        }
        self.cache.insert(identity.key(), token);
    }

    /// Drops an identity's token (Looker rejected it, or it is being replaced).
    pub fn forget(&mut self, identity: &LookerIdentity) {
        self.cache.remove(&identity.key());
    }

    /// Adds a waiter to the identity's flight; gives it back if there is none yet.
    pub fn join(&mut self, identity: &LookerIdentity, waiter: Waiter) -> Result<(), Waiter> {
        match self.flights.get_mut(&identity.key()) {
            Some(flight) => {
                flight.waiters.push(waiter);
                Ok(())
            }
            None => Err(waiter),
        }
    }

    /// Records a new flight.
    pub fn start(&mut self, flight: Flight) {
        self.flights.insert(flight.identity.key(), flight);
    }

    /// Removes and returns the flight of identity `key` whose callout `callout` answered.
    pub fn finish(&mut self, key: &str, callout: u32) -> Option<Flight> {
        match self.flights.get(key) {
            Some(flight) if flight.callout == Some(callout) => self.flights.remove(key),
            _ => None,
        }
    }

    /// The flight of identity `key` whose callout is `callout`, if it is still waiting on it.
    pub fn in_flight(&self, key: &str, callout: u32) -> Option<&Flight> {
        self.flights
            .get(key)
            .filter(|flight| flight.callout == Some(callout))
    }

    /// Gives identity `key`'s flight the callout of its one retry.
    pub fn retry(&mut self, key: &str, callout: u32) {
        if let Some(flight) = self.flights.get_mut(key) {
            flight.callout = Some(callout);
            flight.retried = true;
        }
    }

    /// The callout of identity `key`'s flight was lost (Envoy cancels a context's
    /// callouts with it): the flight must be re-sent.
    pub fn orphan(&mut self, key: &str) {
        if let Some(flight) = self.flights.get_mut(key) {
            flight.callout = None;
        }
    }

    /// A request context ends: it stops waiting; an orphan nobody waits for is dropped.
    pub fn leave(&mut self, context_id: u32) {
        self.flights.retain(|_, flight| {
            flight.waiters.retain(|w| w.context_id != context_id);
            !flight.waiters.is_empty() || flight.callout.is_some()
        });
    }

    /// Flights without a live callout: the caller dispatches them again.
    pub fn orphans(&self) -> Vec<Flight> {
        self.flights
            .values()
            .filter(|f| f.callout.is_none())
            .cloned()
            .collect()
    }

    /// Gives an orphaned flight its new callout.
    pub fn adopt(&mut self, identity: &LookerIdentity, callout: u32, now_ms: u64) {
        if let Some(flight) = self.flights.get_mut(&identity.key()) {
            flight.callout = Some(callout);
            flight.started_ms = now_ms;
        }
    }

    /// Removes an orphaned flight that could not be re-sent, returning its waiters.
    pub fn abandon(&mut self, identity: &LookerIdentity) -> Vec<Waiter> {
        self.flights
            .remove(&identity.key())
            .map(|f| f.waiters)
            .unwrap_or_default()
    }

    #[cfg(test)]
    pub(crate) fn flight_count(&self) -> usize {
        self.flights.len()
    }

    /// Removes and returns the waiters whose deadline has passed.
    pub fn overdue(&mut self, now_ms: u64) -> Vec<Waiter> {
        let mut late = Vec::new();
        for flight in self.flights.values_mut() {
            let (gone, kept): (Vec<Waiter>, Vec<Waiter>) = flight
                .waiters
                .drain(..)
                .partition(|w| w.deadline_ms <= now_ms);
            flight.waiters = kept;
            late.extend(gone);
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(n: &str) -> LookerIdentity {
        LookerIdentity::Role(n.into())
    }

    #[test]
    fn cached_token_keeps_a_refresh_margin() {
        let t = CachedToken::new(
            "tok".into(),
            1_000,
            Duration::from_secs(3600),
            Duration::from_secs(60),
        );
        assert!(t.usable(1_000 + 3_539_999));
        assert!(!t.usable(1_000 + 3_540_000));
        // A 10 s token with a 60 s margin is kept for 5 s, not never.
        let short = CachedToken::new(
            "tok".into(),
            0,
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        assert!(short.usable(4_999) && !short.usable(5_000));
    }

    #[test]
    fn shared_record_round_trips_and_rejects_garbage() {
        let t = CachedToken {
            token: "abc".into(),
            refresh_at_ms: 42,
        };
        assert_eq!(CachedToken::decode(&t.encode()), Some(t));
        for bad in [
            &b""[..],
            b"v2 1 abc",
            b"v1 x abc",
            b"v1 1 ",
            b"v1 1 a b",
            b"v1 1",
        ] {
            assert_eq!(
                CachedToken::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cache_is_per_identity_and_bounded() {
        let mut w = Tokens::default();
        w.store(
            &role("a"),
            CachedToken {
                token: "ta".into(),
                refresh_at_ms: 100,
            },
            0,
        );
        assert_eq!(w.cached(&role("a"), 50), Some("ta"));
        assert_eq!(w.cached(&role("b"), 50), None);
        assert_eq!(w.cached(&role("a"), 100), None);
        w.forget(&role("a"));
        assert_eq!(w.cached(&role("a"), 50), None);
        for i in 0..MAX_CACHED_IDENTITIES + 5 {
            w.store(
                &role(&format!("r{i}")),
                CachedToken {
                    token: "t".into(),
                    refresh_at_ms: 1,
                },
                10,
            );
        }
        assert!(w.cache.len() <= MAX_CACHED_IDENTITIES);
    }
}
