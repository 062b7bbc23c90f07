//! lookergate: an identity-aware gateway for the Looker API, as a proxy-wasm HTTP
//! filter. Pure modules decide; `host` is the only door to the proxy; `filter` is the
//! glue that Envoy loads.

// Test tables spell out their tuple types; clippy.toml lets tests unwrap, panic and index.
#![cfg_attr(test, allow(clippy::type_complexity))]

pub mod broker;
pub mod callout;
pub mod config;
pub mod decision;
pub mod duration;
pub mod flow;
pub mod host;
pub mod http;
pub mod jwks;
pub mod jwt;
pub mod keyring;
pub mod keys;
pub mod looker;
pub mod path;
pub mod policy;
pub mod query;
pub mod ratelimit;
pub mod reply;
pub mod rls;
pub mod tokens;
pub mod trace;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(test)]
mod testkeys;

/// The filter's version, logged at configuration and exposed to operators.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A short, non-reversible fingerprint of a secret for logs: 8 hex chars of SHA-256.
pub use lookergate_proto::fingerprint;
