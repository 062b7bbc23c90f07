//! Per-principal rate limits: token buckets kept in shared data, so every worker of an
//! Envoy draws from the same bucket. Updated by compare-and-swap.

use serde::Deserialize;

use crate::host::Host;

/// A rule's limits for each principal (`sub`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
    /// A separate budget for `db_query` operations (Looker's query quotas count them).
    #[serde(default)]
    pub db_queries_per_minute: Option<u32>,
    /// `local` (default): this Envoy's shared-data buckets. `global`: one budget across
    /// every Envoy, kept by the rate limit service (`rate_limit_service`).
    #[serde(default)]
    pub scope: Scope,
    /// What a global limit does when the rate limit service cannot answer: `deny`
    /// (default; 503) or `local` (this Envoy's bucket decides). Global limits only.
    #[serde(default)]
    pub on_unavailable: Option<OnUnavailable>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Local,
    Global,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Fail closed: 503 naming the rule.
    #[default]
    Deny,
    /// Fall back to this Envoy's local bucket.
    Local,
}

impl RateLimit {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.per_second.is_finite() && self.per_second > 0.0 && self.per_second <= 100_000.0) {
            return Err("per_second must be a positive number (at most 100000)".to_owned());
        }
        if self.burst == 0 {
            return Err("burst must be at least 1".to_owned());
        }
        if self.db_queries_per_minute == Some(0) {
            return Err("db_queries_per_minute must be at least 1".to_owned());
        }
        if self.scope == Scope::Local && self.on_unavailable.is_some() {
            return Err("on_unavailable applies to scope \"global\" only".to_owned());
        }
        Ok(())
    }

    pub fn is_global(&self) -> bool {
        self.scope == Scope::Global
    }

    /// What a global limit does when the service cannot answer.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.on_unavailable.unwrap_or_default()
    }
}

/// The bucket key part naming a principal: a 64-bit FNV-1a hash of issuer and subject
/// (never `sub` alone: two issuers may both have an `alice`), as 16 hex digits, so that
/// a long `sub` cannot make long keys. Stable across workers and VMs.
///
/// Shared data has no delete in the proxy-wasm ABI: each principal that used a limited
/// rule keeps its bucket (about 80 bytes) for the life of the Envoy process. Only the
/// IdP mints principals (tokens are verified before any bucket is touched), so this is
/// bounded by the IdP's population: 100,000 users on two budgets of one rule is ~16 MB.
pub fn principal_key(issuer: &str, subject: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in issuer.bytes().chain([0u8]).chain(subject.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A token bucket: `tokens` (thousandths) as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub milli_tokens: u64,
    pub at_ms: u64,
}

impl Bucket {
    pub fn full(capacity: u32, now_ms: u64) -> Bucket {
        Bucket {
            milli_tokens: u64::from(capacity) * 1000,
            at_ms: now_ms,
        }
    }

    /// Refills at `per_ms` tokens per millisecond up to `capacity`, then takes one.
    /// `Err(ms)`: empty; one token will be there in `ms`.
    pub fn take(self, per_second: f64, capacity: u32, now_ms: u64) -> Result<Bucket, u64> {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        // tokens/s * ms = milli-tokens
        let refill = (per_second * elapsed as f64).min(u64::MAX as f64) as u64;
        let max = u64::from(capacity) * 1000;
        let milli_tokens = self.milli_tokens.saturating_add(refill).min(max);
        if milli_tokens >= 1000 {
            return Ok(Bucket {
                milli_tokens: milli_tokens - 1000,
                at_ms: now_ms,
            });
        }
        let missing = (1000 - milli_tokens) as f64;
        Err((missing / per_second).ceil() as u64)
    }

    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.milli_tokens, self.at_ms).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (tokens, at) = text.split_once(' ')?;
        Some(Bucket {
            milli_tokens: tokens.parse().ok()?,
            at_ms: at.parse().ok()?,
        })
    }
}

/// Takes one token from the shared bucket `key`; `Err(retry_after_ms)` when empty.
/// Contention with other workers is retried a few times, then treated as empty.
pub fn take_shared<H: Host>(
    host: &H,
    key: &str,
    per_second: f64,
    capacity: u32,
    now_ms: u64,
) -> Result<(), u64> {
    for _ in 0..5 {
        let (value, cas) = host.shared_get_versioned(key);
        let bucket = value
            .as_deref()
            .and_then(Bucket::decode)
            .unwrap_or_else(|| Bucket::full(capacity, now_ms));
        let next = bucket.take(per_second, capacity, now_ms)?;
        if host.shared_set_if(key, &next.encode(), cas) {
            return Ok(());
        }
    }
    Err(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let mut b = Bucket::full(3, 0);
        for _ in 0..3 {
            b = b.take(2.0, 3, 0).unwrap_or(b);
        }
        assert_eq!(b.milli_tokens, 0);
        assert_eq!(b.take(2.0, 3, 0), Err(500), "2/s: next token in 500 ms");
        assert!(b.take(2.0, 3, 499).is_err());
        assert!(b.take(2.0, 3, 500).is_ok());
        // Refill never exceeds the burst.
        let later = b.take(2.0, 3, 1_000_000).unwrap_or(b);
        assert_eq!(later.milli_tokens, 2000);
    }

    #[test]
    fn record_round_trips_and_limits_validate() {
        let b = Bucket {
            milli_tokens: 1500,
            at_ms: 42,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(Bucket::decode(b"x y"), None);
        let bad = [
            (0.0, 1, None, Scope::Local, None),
            (f64::NAN, 1, None, Scope::Local, None),
            (1.0, 0, None, Scope::Local, None),
            (1.0, 1, Some(0), Scope::Local, None),
            (1.0, 1, None, Scope::Local, Some(OnUnavailable::Deny)),
        ];
        for (per_second, burst, db, scope, on_unavailable) in bad {
            assert!(RateLimit {
                per_second,
                burst,
                db_queries_per_minute: db,
                scope,
                on_unavailable,
            }
            .validate()
            .is_err());
        }
        for (scope, on_unavailable) in [
            (Scope::Local, None),
            (Scope::Global, None),
            (Scope::Global, Some(OnUnavailable::Local)),
        ] {
            assert!(RateLimit {
                per_second: 5.0,
                burst: 10,
                db_queries_per_minute: Some(30),
                scope,
                on_unavailable,
            }
            .validate()
            .is_ok());
        }
    }
}
