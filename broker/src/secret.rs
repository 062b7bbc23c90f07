//! Secret strings (API3 secrets, gateway credentials, Looker tokens) that never print.
//!
//! `Debug` shows only a short SHA-256 fingerprint, so a secret can be correlated across
//! log lines without being revealed. There is deliberately no `Display`/`Serialize`.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// A string that must not appear in logs, errors or responses (except where handed out on purpose).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The clear text; call sites are the few places that send it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// First 8 hex digits of SHA-256: enough to tell secrets apart in logs.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(sha256:{})", self.fingerprint())
    }
}

/// Short, non-reversible fingerprint of `bytes` (first 4 bytes of SHA-256, hex).
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
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
    fn debug_shows_fingerprint_not_secret() {
        let s = Secret::new("demo-analyst-secret");
        let shown = format!("{s:?}");
        assert!(!shown.contains("demo-analyst-secret"), "{shown}");
        assert!(shown.contains(&s.fingerprint()));
        assert_eq!(s.fingerprint().len(), 8);
    }
}
