//! Structured logs: `tracing` events, written by `tracing-subscriber` as one JSON object
//! per line on stderr (audit lines use the same stream). Every event has an `event` field
//! naming it (`token_issued`, `looker_login`, ...); its other fields sit beside it at the
//! top level. Tracing fields are flat, so a nested value (an identity, a list) is logged
//! as its JSON text ([`json`]). Secrets are logged only by fingerprint.

use std::time::{SystemTime, UNIX_EPOCH};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

pub fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A nested value as a log field: its JSON text.
pub fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Which events to write: `level` (`--log-level`) for the broker's own events, else the
/// `RUST_LOG` directives when set, else `info`. Other crates' events only from `warn`
/// unless `RUST_LOG` names them.
pub fn filter(level: Option<LevelFilter>) -> Result<EnvFilter, String> {
    let own = |level: LevelFilter| {
        // The library and the binary share the crate name, hence one target.
        EnvFilter::new(format!("warn,lookergate_broker={level}"))
    };
    match (level, std::env::var("RUST_LOG")) {
        (Some(level), _) => Ok(own(level)),
        (None, Ok(directives)) if !directives.trim().is_empty() => {
            EnvFilter::try_new(&directives).map_err(|e| format!("RUST_LOG={directives:?}: {e}"))
        }
        (None, _) => Ok(own(LevelFilter::INFO)),
    }
}

/// Installs the JSON writer on stderr for the whole process.
pub fn init(filter: EnvFilter) {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init()
        // Only fails when a subscriber is already installed; that one keeps logging.
        .ok();
}
