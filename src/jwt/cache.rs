//! Tokens this worker has already verified, so a dashboard's burst of calls with one
//! token pays for one signature check. Found by a hash of the token's end, but a hit is
//! an exact match of the whole token (never a prefix or a hash alone), bounded (least
//! recently used goes first), and an entry is only served while the token itself would
//! still verify.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;

use super::VerifiedToken;

/// Default bound: ~2 KB per entry with a typical token, so ~20 MB at most per worker.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How much of the token's end is hashed: its signature's last bytes, which differ from
/// token to token. Hashing all ~600 bytes on every request cost more than the rest of
/// a hit; a hit still compares the whole token.
const HASHED_TAIL: usize = 48;

pub(crate) struct TokenCache {
    capacity: usize,
    /// Bumped on every use; the smallest tick is the least recently used entry.
    clock: u64,
    /// Keyed by a keyed (per-process random) hash of the token's tail. One entry per
    /// slot: a token whose slot holds another token misses, and replaces it once it
    /// verifies — so colliding tokens cost a verification, never a chain or a wrong hit.
    entries: HashMap<u64, Entry, BuildHasherDefault<Prehashed>>,
    /// tick -> slot
    by_use: BTreeMap<u64, u64>,
    hasher: RandomState,
}

struct Entry {
    token: Box<str>,
    verified: Rc<VerifiedToken>,
    /// Unix seconds from which the token is expired (`exp` + clock skew, the same
    /// bound verification applies).
    expired_from: u64,
    last_use: u64,
}

/// The map's keys are already keyed hashes: pass them through.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity,
            clock: 0,
            entries: HashMap::default(),
            by_use: BTreeMap::new(),
            hasher: RandomState::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn slot(&self, token: &str) -> u64 {
        let bytes = token.as_bytes();
        let tail = bytes
            .get(bytes.len().saturating_sub(HASHED_TAIL)..)
            .unwrap_or_default();
        self.hasher.hash_one((bytes.len(), tail))
    }

    /// The verified form of exactly `token`, if cached and not expired at `now`.
    pub(crate) fn get(&mut self, token: &str, now: u64) -> Option<Rc<VerifiedToken>> {
        let slot = self.slot(token);
        let entry = self.entries.get_mut(&slot)?;
        if *entry.token != *token {
            return None;
        }
        if now >= entry.expired_from {
            self.by_use.remove(&entry.last_use);
            self.entries.remove(&slot);
            return None;
        }
        self.clock += 1;
        self.by_use.remove(&entry.last_use);
        entry.last_use = self.clock;
        self.by_use.insert(self.clock, slot);
        Some(Rc::clone(&entry.verified))
    }

    /// Remembers a token that just verified, valid until `expired_from`.
    pub(crate) fn insert(&mut self, token: &str, verified: Rc<VerifiedToken>, expired_from: u64) {
        if self.capacity == 0 {
            return;
        }
        let slot = self.slot(token);
        if let Some(old) = self.entries.remove(&slot) {
            self.by_use.remove(&old.last_use);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, lru)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&lru);
        }
        self.clock += 1;
        self.by_use.insert(self.clock, slot);
        let entry = Entry {
            token: Box::from(token),
            verified,
            expired_from,
            last_use: self.clock,
        };
        self.entries.insert(slot, entry);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::jwt::Algorithm;

    fn verified(sub: &str) -> Rc<VerifiedToken> {
        Rc::new(VerifiedToken {
            claims: Map::new(),
            issuer: "https://idp.test".into(),
            subject: Some(sub.into()),
            expires_at: 1000,
            kid: None,
            alg: Algorithm::RS256,
        })
    }

    #[test]
    fn cache_hit_returns_the_verified_token() {
        let mut cache = TokenCache::new(10);
        cache.insert("a.b.c", verified("alice"), 1030);
        assert_eq!(
            cache.get("a.b.c", 900).unwrap().subject.as_deref(),
            Some("alice")
        );
        assert_eq!(
            cache.get("a.b.c", 1029).unwrap().subject.as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn cache_entry_expires_at_the_token_expiry() {
        let mut cache = TokenCache::new(10);
        cache.insert("a.b.c", verified("alice"), 1030);
        assert!(cache.get("a.b.c", 1030).is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped on sight");
        assert!(cache.get("a.b.c", 900).is_none(), "and stays gone");
    }

    #[test]
    fn cache_misses_a_different_token_with_the_same_prefix() {
        let mut cache = TokenCache::new(10);
        cache.insert("header.payload.signature", verified("alice"), 1030);
        for other in [
            "header.payload.signatur",
            "header.payload.signaturE",
            "header.payload.signature.",
            "header.payload",
        ] {
            assert!(cache.get(other, 900).is_none(), "{other}");
        }
    }

    #[test]
    fn cache_is_bounded_and_drops_the_least_recently_used() {
        let mut cache = TokenCache::new(3);
        for t in ["t1", "t2", "t3"] {
            cache.insert(t, verified(t), 2000);
        }
        assert!(cache.get("t1", 900).is_some()); // t1 is now the most recent
        cache.insert("t4", verified("t4"), 2000);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("t2", 900).is_none(), "t2 was least recently used");
        for t in ["t1", "t3", "t4"] {
            assert!(cache.get(t, 900).is_some(), "{t}");
        }
        for i in 0..100 {
            cache.insert(&format!("x{i}"), verified("x"), 2000);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.by_use.len(), 3);
    }

    #[test]
    fn cache_tokens_sharing_a_slot_never_answer_for_each_other() {
        let mut cache = TokenCache::new(10);
        let tail = "s".repeat(HASHED_TAIL);
        let (a, b) = (format!("A.{tail}"), format!("B.{tail}"));
        assert_eq!(
            cache.slot(&a),
            cache.slot(&b),
            "same length and tail: same slot"
        );
        cache.insert(&a, verified("alice"), 2000);
        assert!(cache.get(&b, 900).is_none(), "b is not a");
        cache.insert(&b, verified("bob"), 2000);
        assert_eq!(cache.get(&b, 900).unwrap().subject.as_deref(), Some("bob"));
        assert!(
            cache.get(&a, 900).is_none(),
            "a was replaced, not confused with b"
        );
        assert_eq!((cache.len(), cache.by_use.len()), (1, 1));
    }

    #[test]
    fn cache_of_capacity_zero_keeps_nothing() {
        let mut cache = TokenCache::new(0);
        cache.insert("t", verified("t"), 2000);
        assert!(cache.get("t", 900).is_none());
    }
}
