//! A broker replica's duties with a shared store (`[store]`): read the shared credentials
//! and report the version in use (heartbeat), drop local tokens other replicas
//! invalidated, and rotate API3 keys with one replica elected per rotation.
//!
//! Rotation: the replica that takes the rotation lock (lease, renewed while it works)
//! draws a fencing token (INCR), re-reads the credentials (someone may just have rotated),
//! creates and proves the new key, writes the credentials with the fencing token as their
//! version (refused if it lost the lock or a newer version is in force), then waits until
//! every live replica's heartbeat reports that version, or `store.rotation_grace` passes,
//! and only then deletes the old key in Looker.

use crate::http::AppState;
use crate::metrics::{OpLabel, ResultLabel};
use crate::rotate::{looker_error, start_rotation, RotateError, RotationReport, RotationStart};
use crate::store::{random_hex, SharedKey, SharedStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Lease of the rotation lock; renewed while the leader waits for the replicas.
const ROTATION_LEASE: Duration = Duration::from_secs(30);
const RETRY_FAILED_ROTATION: Duration = Duration::from_secs(300);
/// Pause before resubscribing after the invalidation channel dropped.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(250);

/// The credentials watcher with the heartbeat, and the invalidation listener.
pub fn spawn_replica(broker: AppState) -> Vec<JoinHandle<()>> {
    let Some(store) = broker.store.clone() else {
        return Vec::new();
    };
    let mut tasks = Vec::new();

    let (watcher, watched) = (broker.clone(), store.clone());
    tasks.push(tokio::spawn(async move {
        let mut healthy = true;
        loop {
            let result = async {
                watcher.refresh_shared_credentials().await?;
                watched
                    .heartbeat(watcher.credentials_version().unwrap_or(0))
                    .await
            }
            .await;
            match result {
                Ok(()) if !healthy => {
                    healthy = true;
                    tracing::info!(event = "store", result = "recovered");
                }
                Ok(()) => {}
                Err(e) => {
                    watcher
                        .metrics
                        .store
                        .errors
                        .get_or_create(&OpLabel { op: "credentials" })
                        .inc();
                    // Once per outage, not once per poll.
                    if healthy {
                        tracing::warn!(event = "store_error", op = "credentials", message = %e);
                    }
                    healthy = false;
                }
            }
            tokio::time::sleep(watched.config.poll).await;
        }
    }));

    tasks.push(tokio::spawn(async move {
        let mut first = true;
        loop {
            let (connected, received) = (broker.clone(), broker.clone());
            let resubscribed = !first;
            first = false;
            let ended = store
                .invalidations(
                    move || {
                        // Invalidations published while this replica was not listening are
                        // lost: after an outage, every local token goes.
                        if resubscribed {
                            let b = connected.clone();
                            tokio::spawn(async move { b.tokens.drop_all_local().await });
                        }
                    },
                    move |id| {
                        let (b, id) = (received.clone(), id.to_string());
                        tokio::spawn(async move { b.tokens.drop_local(&id).await });
                    },
                )
                .await;
            if let Err(e) = ended {
                broker
                    .metrics
                    .store
                    .errors
                    .get_or_create(&OpLabel { op: "subscribe" })
                    .inc();
                tracing::debug!(event = "store_error", op = "subscribe", message = %e);
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }));
    tasks
}

/// The scheduler with a store: every replica checks which roles are due; the one that
/// wins the rotation lock rotates.
pub fn spawn_elected_scheduler(broker: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(store) = broker.store.clone() else {
            return;
        };
        let mut not_before: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rt = broker.runtime();
            let now = crate::log::unix_now_secs();
            for (name, role) in &rt.config.roles {
                if !is_due(role, now) || now < not_before.get(name).copied().unwrap_or(0) {
                    continue;
                }
                match rotate_role_elected(&broker, &store, name).await {
                    Ok(None) => {}
                    Ok(Some(report)) => {
                        broker
                            .metrics
                            .rotations
                            .get_or_create(&ResultLabel { result: "ok" })
                            .inc();
                        tracing::info!(
                            event = "rotation",
                            step = "done",
                            trigger = "schedule",
                            elected = true,
                            report = %report.to_json()
                        );
                    }
                    Err(e) => {
                        broker
                            .metrics
                            .rotations
                            .get_or_create(&ResultLabel { result: "error" })
                            .inc();
                        tracing::error!(
                            event = "rotation",
                            role = name,
                            step = "failed",
                            trigger = "schedule",
                            elected = true,
                            message = %e
                        );
                        not_before.insert(name.clone(), now + RETRY_FAILED_ROTATION.as_secs());
                    }
                }
            }
        }
    })
}

fn is_due(role: &crate::config::RoleConfig, now: u64) -> bool {
    let Some(every) = role.rotate_every else {
        return false;
    };
    let due = role
        .rotated_at
        .map_or(0, |t| t.saturating_add(every.as_secs()));
    now >= due
}

fn store_error(e: crate::store::StoreError) -> RotateError {
    RotateError::Store(e.to_string())
}

/// Rotates `role` if this replica wins the rotation lock and the role is still due.
/// `Ok(None)`: another replica rotates (or just did).
pub async fn rotate_role_elected(
    broker: &AppState,
    store: &Arc<SharedStore>,
    role: &str,
) -> Result<Option<RotationReport>, RotateError> {
    let lock = store.rotation_lock_key();
    let owner = format!("{}/{}", store.replica_id, random_hex(8));
    if !store
        .try_lock(&lock, &owner, ROTATION_LEASE)
        .await
        .map_err(store_error)?
    {
        return Ok(None);
    }
    let result = rotate_locked(broker, store, role, &lock, &owner).await;
    // The lease ends it anyway if this fails.
    let _ = store.unlock(&lock, &owner).await;
    result
}

async fn rotate_locked(
    broker: &AppState,
    store: &Arc<SharedStore>,
    role: &str,
    lock: &str,
    owner: &str,
) -> Result<Option<RotationReport>, RotateError> {
    let fence = store.next_fence().await.map_err(store_error)?;
    // Under the lock: the credentials as they are now, which may already hold a rotation.
    let current = store.read_credentials().await.map_err(store_error)?;
    broker
        .adopt_shared_credentials(current.clone())
        .map_err(store_error)?;
    let rt = broker.runtime();
    let now = crate::log::unix_now_secs();
    let Some(role_cfg) = rt.config.roles.get(role) else {
        return Ok(None);
    };
    if !is_due(role_cfg, now) {
        return Ok(None);
    }
    let RotationStart {
        looker,
        admin,
        user_id,
        old,
        old_key_id,
        mut warning,
    } = start_rotation(&rt.config, role, role_cfg).await?;

    let new_key = looker
        .create_api3(&admin, &user_id)
        .await
        .map_err(looker_error)?;
    tracing::info!(
        event = "rotation",
        role,
        step = "created",
        elected = true,
        fence,
        client_id = new_key.credentials.client_id,
        secret_fp = new_key.credentials.client_secret.fingerprint(),
    );
    let undo = |why: RotateError| {
        let (looker, admin, user_id, key_id) = (&looker, &admin, &user_id, new_key.id.clone());
        async move {
            if let Err(e) = looker.delete_api3(admin, user_id, &key_id).await {
                tracing::error!(event = "rotation", role, step = "undo", key_id, message = %e);
            }
            why
        }
    };
    if let Err(e) = looker.login(&new_key.credentials).await {
        return Err(undo(RotateError::ProofFailed(e.to_string())).await);
    }

    // The config's key this one replaces: the stored key wins only while the config holds it.
    let configured = broker
        .base_config()
        .roles
        .get(role)
        .map(|r| r.credentials.client_id.clone())
        .unwrap_or_else(|| old.client_id.clone());
    let mut next = current.clone();
    next.version = fence;
    next.roles.insert(
        role.to_string(),
        SharedKey {
            client_id: new_key.credentials.client_id.clone(),
            client_secret: new_key.credentials.client_secret.clone(),
            api3_id: new_key.id.clone(),
            rotated_at: now,
            replaces_client_id: configured,
        },
    );
    match store.write_credentials(owner, &next).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(undo(RotateError::Write(
                "fenced off: this replica lost the rotation lock or a newer version is in force"
                    .into(),
            ))
            .await)
        }
        Err(e) => return Err(undo(RotateError::Write(format!("store: {e}"))).await),
    }
    tracing::info!(
        event = "rotation",
        role,
        step = "written",
        elected = true,
        version = fence,
        old_key_id = old_key_id.as_deref(),
    );
    broker.adopt_shared_credentials(next).map_err(store_error)?;
    let _ = store.heartbeat(fence).await;

    // The old key stays until every live replica uses the new version (or the grace ends).
    let deadline = Instant::now() + store.config.rotation_grace;
    let behind: Vec<String> = loop {
        let _ = store.renew(lock, owner, ROTATION_LEASE).await;
        let behind: Vec<String> = match store.replica_versions().await {
            Ok(replicas) => replicas
                .into_iter()
                .filter(|(_, v)| *v < fence)
                .map(|(id, _)| id)
                .collect(),
            Err(e) => vec![format!("unknown ({e})")],
        };
        if behind.is_empty() {
            break behind;
        }
        if Instant::now() >= deadline {
            warning = Some(format!(
                "rotation_grace passed with replicas still on an older version: {behind:?}"
            ));
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tracing::info!(
        event = "rotation",
        role,
        step = "replicas_switched",
        elected = true,
        version = fence,
        all = behind.is_empty(),
    );

    let mut old_key_deleted = false;
    if let Some(old_id) = &old_key_id {
        if old_id == &new_key.id {
            warning = Some("old and new key ids are equal; nothing deleted".into());
        } else {
            match looker.delete_api3(&admin, &user_id, old_id).await {
                Ok(()) => old_key_deleted = true,
                Err(e) => warning = Some(format!("old key {old_id} not deleted: {e}")),
            }
        }
    }
    Ok(Some(RotationReport {
        role: role.to_string(),
        new_client_id: new_key.credentials.client_id.clone(),
        new_key_id: new_key.id.clone(),
        old_client_id: old.client_id,
        old_key_id,
        old_key_deleted,
        warning,
    }))
}
