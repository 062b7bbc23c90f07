//! lookergate-proto: one definition of what the lookergate programs share (the Wasm
//! filter, the broker, the CLI, the Looker simulator, the soak): the broker protocol
//! and its error codes, Looker identities and their cache key, durations as operators
//! write them, the Looker API 4.0 operation table, and secret fingerprints.
//!
//! The filter links this crate into its Wasm module: no proxy-wasm, no tokio, and
//! nothing beyond serde, serde_json and sha2.

pub mod broker;
pub mod duration;
pub mod embed;
pub mod identity;
pub mod operations;

pub use identity::LookerIdentity;

/// A short, non-reversible fingerprint of a secret for logs: the first 4 bytes of its
/// SHA-256 in hex (8 characters), enough to tell secrets apart without revealing them.
pub fn fingerprint(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprint_is_the_first_8_hex_of_sha256() {
        assert_eq!(super::fingerprint(b"abc"), "ba7816bf");
        assert_eq!(super::fingerprint(b""), "e3b0c442");
    }
}
