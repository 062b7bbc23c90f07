//! Config reload on SIGHUP and when the file's content changes (polled).
//!
//! Requests in flight keep the config snapshot they started with; an invalid new file
//! is logged and the old config stays in force.

use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::http::AppState;
use crate::log;
use crate::metrics::ResultLabel;
use crate::secret::fingerprint;
use serde_json::json;
use std::path::Path;
use tokio::task::JoinHandle;

/// Reloads from `broker.config_path`. `Ok(true)` if the config changed.
pub fn reload(broker: &Broker, trigger: &str) -> Result<bool, String> {
    let Some(path) = broker.config_path.as_deref() else {
        return Err("no config file (running the embedded demo config)".into());
    };
    let result = load(path).and_then(|mut config| {
        let old = broker.runtime();
        if config.listen != old.config.listen {
            tracing::warn!(
                event = "config_reload",
                message = "listen changed; restart the broker to apply it",
                listen = %config.listen,
            );
            config.listen = old.config.listen;
        }
        if config.store != old.config.store {
            tracing::warn!(
                event = "config_reload",
                message = "[store] changed; restart the broker to apply it",
            );
            config.store = old.config.store.clone();
        }
        if config == *broker.base_config() {
            return Ok(false);
        }
        let changes = describe_changes(&broker.base_config(), &config);
        broker.install_config(config).map_err(|e| e.to_string())?;
        tracing::info!(
            event = "config_reload",
            trigger,
            result = "applied",
            changes = log::json(&changes)
        );
        Ok(true)
    });
    match &result {
        Ok(changed) => {
            let label = if *changed { "applied" } else { "unchanged" };
            broker
                .metrics
                .config_reloads
                .get_or_create(&ResultLabel { result: label })
                .inc();
        }
        Err(e) => {
            broker
                .metrics
                .config_reloads
                .get_or_create(&ResultLabel { result: "invalid" })
                .inc();
            tracing::error!(
                event = "config_reload",
                trigger,
                result = "rejected",
                message = %e,
                path = %path.display(),
                note = "keeping the previous config",
            );
        }
    }
    result
}

fn load(path: &Path) -> Result<BrokerConfig, String> {
    BrokerConfig::load(path).map_err(|e| e.to_string())
}

/// Role names added, removed or with new credentials (fingerprints only).
fn describe_changes(old: &BrokerConfig, new: &BrokerConfig) -> serde_json::Value {
    let mut changes = Vec::new();
    for (name, role) in &new.roles {
        match old.roles.get(name) {
            None => changes.push(json!({"role": name, "change": "added"})),
            Some(o) if o.credentials != role.credentials => changes.push(
                json!({"role": name, "change": "credentials", "client_id": role.credentials.client_id,
                       "secret_fp": role.credentials.client_secret.fingerprint()}),
            ),
            Some(_) => {}
        }
    }
    for name in old.roles.keys().filter(|n| !new.roles.contains_key(*n)) {
        changes.push(json!({"role": name, "change": "removed"}));
    }
    if old.sudo != new.sudo {
        changes.push(json!({"sudo": "changed"}));
    }
    if old.embed != new.embed {
        let secret = new.embed.as_ref().and_then(|e| e.secret.as_ref());
        changes.push(json!({"embed": "changed", "enabled": new.embed.is_some(),
                            "secret_id": secret.and_then(|s| s.id.clone()),
                            "secret_fp": secret.map(|s| s.secret.fingerprint())}));
    }
    if old.gateway_credentials != new.gateway_credentials {
        changes.push(json!({"gateway_credentials": new.gateway_credentials.iter().map(|c| c.fingerprint.clone()).collect::<Vec<_>>()}));
    }
    serde_json::Value::Array(changes)
}

fn content_hash(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| fingerprint(&bytes))
}

/// The config's hash plus the rotated-credentials store's: a key rotated by another
/// process (`lookergate-broker rotate`) is picked up like a config edit.
fn watched_hash(path: &Path, broker: &Broker) -> Option<String> {
    let config = content_hash(path)?;
    let store = broker
        .runtime()
        .config
        .rotated_credentials_file
        .as_deref()
        .and_then(content_hash)
        .unwrap_or_default();
    Some(format!("{config}{store}"))
}

/// Starts the file poller and (on Unix) the SIGHUP listener.
pub fn spawn(broker: AppState) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let Some(path) = broker.config_path.clone() else {
        return tasks;
    };

    let poller = broker.clone();
    tasks.push(tokio::spawn(async move {
        // Content hash rather than mtime: rewrites within one mtime tick are still seen.
        let mut last = watched_hash(&path, &poller);
        loop {
            tokio::time::sleep(poller.runtime().config.reload_poll).await;
            let now = watched_hash(&path, &poller);
            if now.is_some() && now != last {
                last = now;
                let _ = reload(&poller, "file_change");
            }
        }
    }));

    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => tasks.push(tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = reload(&broker, "sighup");
                }
            })),
            Err(e) => tracing::warn!(
                event = "config_reload",
                message = %format_args!("cannot listen for SIGHUP: {e}"),
            ),
        }
    }
    tasks
}
