//! Tokens this worker has already verified, so a dashboard's burst of calls with one
//! token pays for one signature check. Keyed by the whole token (a hit is an exact
//! match, never a prefix or a hash alone), bounded (least recently used goes first),
//! and an entry is only served while the token itself would still verify.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::VerifiedToken;

/// Default bound: ~2 KB per entry with a typical token, so ~20 MB at most per worker.
pub const DEFAULT_CAPACITY: usize = 10_000;

pub(crate) struct TokenCache {
    capacity: usize,
    /// Bumped on every use; the smallest tick is the least recently used entry.
    clock: u64,
    entries: HashMap<Rc<str>, Entry>,
    by_use: BTreeMap<u64, Rc<str>>,
}

struct Entry {
    token: Rc<str>,
    verified: VerifiedToken,
    /// Unix seconds from which the token is expired (`exp` + clock skew, the same
    /// bound verification applies).
    expired_from: u64,
    last_use: u64,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> TokenCache {
        TokenCache { capacity, clock: 0, entries: HashMap::new(), by_use: BTreeMap::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The verified form of exactly `token`, if cached and not expired at `now`.
    pub(crate) fn get(&mut self, token: &str, now: u64) -> Option<VerifiedToken> {
        let entry = self.entries.get_mut(token)?;
        if now >= entry.expired_from {
            let key = Rc::clone(&entry.token);
            self.by_use.remove(&entry.last_use);
            self.entries.remove(&key);
            return None;
        }
        self.clock += 1;
        self.by_use.remove(&entry.last_use);
        entry.last_use = self.clock;
        self.by_use.insert(self.clock, Rc::clone(&entry.token));
        Some(entry.verified.clone())
    }

    /// Remembers a token that just verified, valid until `expired_from`.
    pub(crate) fn insert(&mut self, token: &str, verified: &VerifiedToken, expired_from: u64) {
        if self.capacity == 0 {
            return;
        }
        if let Some(old) = self.entries.remove(token) {
            self.by_use.remove(&old.last_use);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, lru)) = self.by_use.pop_first() else { break };
            self.entries.remove(&lru);
        }
        self.clock += 1;
        let key: Rc<str> = Rc::from(token);
        self.by_use.insert(self.clock, Rc::clone(&key));
        let entry = Entry { token: Rc::clone(&key), verified: verified.clone(), expired_from, last_use: self.clock };
        self.entries.insert(key, entry);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::jwt::Algorithm;

    fn verified(sub: &str) -> VerifiedToken {
        VerifiedToken {
            claims: Map::new(),
            issuer: "https://idp.test".into(),
            subject: Some(sub.into()),
            expires_at: 1000,
            kid: None,
            alg: Algorithm::RS256,
        }
    }

    #[test]
    fn cache_hit_returns_the_verified_token() {
        let mut cache = TokenCache::new(10);
        cache.insert("a.b.c", &verified("alice"), 1030);
        assert_eq!(cache.get("a.b.c", 900).unwrap().subject.as_deref(), Some("alice"));
        assert_eq!(cache.get("a.b.c", 1029).unwrap().subject.as_deref(), Some("alice"));
    }

    #[test]
    fn cache_entry_expires_at_the_token_expiry() {
        let mut cache = TokenCache::new(10);
        cache.insert("a.b.c", &verified("alice"), 1030);
        assert!(cache.get("a.b.c", 1030).is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped on sight");
        assert!(cache.get("a.b.c", 900).is_none(), "and stays gone");
    }

    #[test]
    fn cache_misses_a_different_token_with_the_same_prefix() {
        let mut cache = TokenCache::new(10);
        cache.insert("header.payload.signature", &verified("alice"), 1030);
        for other in ["header.payload.signatur", "header.payload.signaturE", "header.payload.signature.", "header.payload"] {
            assert!(cache.get(other, 900).is_none(), "{other}");
        }
    }

    #[test]
    fn cache_is_bounded_and_drops_the_least_recently_used() {
        let mut cache = TokenCache::new(3);
        for t in ["t1", "t2", "t3"] {
            cache.insert(t, &verified(t), 2000);
        }
        assert!(cache.get("t1", 900).is_some()); // t1 is now the most recent
        cache.insert("t4", &verified("t4"), 2000);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("t2", 900).is_none(), "t2 was least recently used");
        for t in ["t1", "t3", "t4"] {
            assert!(cache.get(t, 900).is_some(), "{t}");
        }
        for i in 0..100 {
            cache.insert(&format!("x{i}"), &verified("x"), 2000);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.by_use.len(), 3);
    }

    #[test]
    fn cache_of_capacity_zero_keeps_nothing() {
        let mut cache = TokenCache::new(0);
        cache.insert("t", &verified("t"), 2000);
        assert!(cache.get("t", 900).is_none());
    }
}
