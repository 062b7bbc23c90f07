//! The `lookergate` command line as a library: demo tokens and the dev IdP, and the
//! operator's tools over the filter's own code — `check` (a plugin configuration,
//! validated exactly as the filter loads it, plus its JSON Schema) and `explain` (what
//! the policy decides for one request, and why). `main.rs` only parses arguments.

pub mod app_files;
pub mod check;
pub mod demo;
pub mod explain;
pub mod idp;
pub mod schema;
pub mod source;

// The end-to-end tests mint their tokens through these.
pub use demo::*;
