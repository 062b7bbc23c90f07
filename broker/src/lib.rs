//! lookergate token broker: holds Looker API3 credentials (and an optional admin
//! credential for per-user sudo logins) and hands the gateway short-lived Looker
//! session tokens, cached per identity with single-flight logins.
//!
//! `app(state)` is the HTTP API; `serve` runs it with the background tasks
//! (config reload, key rotation, cache sweeping).

pub mod broker;
pub mod cache;
pub mod config;
pub mod embed;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod log;
pub mod looker;
pub mod metrics;
pub mod reload;
pub mod rotate;
pub mod secret;
pub mod store;

pub use broker::{Broker, BrokerError};
pub use config::{BrokerConfig, ConfigError};
pub use http::{app, AppState};

/// The broker's release version (the workspace version), shown by `--version` and
/// `/healthz` so operators can tell which build answers during an upgrade.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Builds the shared state from a validated config.
pub fn state(
    config: BrokerConfig,
    config_path: Option<std::path::PathBuf>,
) -> Result<AppState, looker::LookerError> {
    Ok(Arc::new(Broker::new(config, config_path)?))
}

/// Background work tied to a broker; aborted when dropped.
pub struct Background(Vec<JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Starts cache sweeping, config reload (file change, SIGHUP) and scheduled rotation.
pub fn start_background(state: &AppState) -> Background {
    let mut tasks = Vec::new();
    let sweeper = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            sweeper.sweep();
        }
    }));
    if state.config_path.is_some() {
        tasks.extend(reload::spawn(state.clone()));
    }
    if state.config_path.is_some() || state.store.is_some() {
        tasks.push(rotate::spawn_scheduler(state.clone()));
    }
    tasks.extend(fleet::spawn_replica(state.clone()));
    Background(tasks)
}

/// Serves the broker on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _background = start_background(&state);
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
