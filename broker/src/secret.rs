//! Secret strings (API3 secrets, gateway credentials, Looker tokens) that never print.
//!
//! The clear text lives in a `secrecy::SecretString`, zeroed when dropped. `Debug` shows
//! only a short SHA-256 fingerprint, so a secret can be correlated across log lines
//! without being revealed. There is deliberately no `Display`/`Serialize`.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use std::fmt;
use subtle::ConstantTimeEq;

/// A string that must not appear in logs, errors or responses (except where handed out on purpose).
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The clear text; call sites are the few places that send it on the wire.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// First 8 hex digits of SHA-256: enough to tell secrets apart in logs.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.expose().as_bytes())
    }
}

/// Constant time, so comparing secrets (config reloads) reveals nothing by its duration.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose()
            .as_bytes()
            .ct_eq(other.expose().as_bytes())
            .into()
    }
}

impl Eq for Secret {}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(sha256:{})", self.fingerprint())
    }
}

/// Short, non-reversible fingerprint of `bytes` (first 4 bytes of SHA-256, hex).
pub use lookergate_proto::fingerprint;

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
    fn debug_shows_fingerprint_not_secret() {
        let s = Secret::new("demo-analyst-secret");
        let shown = format!("{s:?}");
        assert!(!shown.contains("demo-analyst-secret"), "{shown}");
        assert!(shown.contains(&s.fingerprint()));
        assert_eq!(s.fingerprint().len(), 8);
    }

    #[test]
    fn secrets_compare_by_value_and_deserialize_from_a_string() {
        let s: Secret = serde_json::from_str("\"demo-analyst-secret\"").unwrap();
        assert_eq!(s, Secret::new("demo-analyst-secret"));
        assert_ne!(s, Secret::new("demo-analyst-secreT"));
        assert_ne!(s, Secret::new("demo"));
    }
}
