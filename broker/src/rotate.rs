//! API3 key rotation for a role's service account: create a new key as admin, prove it
//! by logging in, write it durably, then delete the old key.
//!
//! The new key goes into the config file itself, or, when `rotated_credentials_file` is
//! set (the config and its secrets are read-only, e.g. Kubernetes mounts), into that file:
//! the store, read at every load in preference to the config's key it replaced.
//! Any failure before the write is durable deletes the new key again, so the old key
//! and the old files stay in force.
//!
//! The SSO embed secret (`[embed]`, docs/embed.md) rotates the same way, with the embed
//! role's credentials: `create_embed_secret`, write, then `delete_embed_secret` of the old.

use crate::config::{
    Api3Credentials, BrokerConfig, ConfigFile, EmbedConfig, EmbedSecret, LookerId, RoleConfig,
    SsoAlgorithm,
};
use crate::http::AppState;
use crate::looker::{LookerClient, LookerError, NewApi3Key, NewEmbedSecret};
use crate::metrics::ResultLabel;
use crate::secret::{fingerprint, Secret};
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use toml_edit::{DocumentMut, Item};

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("config: {0}")]
    Config(String),
    #[error("Looker: {0}")]
    Looker(String),
    #[error("the new key does not work ({0}); it was deleted again, the old key stays in use")]
    ProofFailed(String),
    #[error("cannot write the new key ({0}); it was deleted again, the old key stays in use")]
    Write(String),
    #[error("shared store: {0}")]
    Store(String),
}

/// What a rotation did; printed by the CLI and logged by the scheduler.
#[derive(Debug)]
pub struct RotationReport {
    pub role: String,
    pub new_client_id: String,
    pub new_key_id: String,
    pub old_client_id: String,
    pub old_key_id: Option<String>,
    /// `false` when the old key could not be found or deleted (see `warning`).
    pub old_key_deleted: bool,
    pub warning: Option<String>,
}

impl RotationReport {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "role": self.role,
            "new_client_id": self.new_client_id,
            "new_key_id": self.new_key_id,
            "old_client_id": self.old_client_id,
            "old_key_id": self.old_key_id,
            "old_key_deleted": self.old_key_deleted,
            "warning": self.warning,
        })
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.rotate.tmp"))
}

fn backup_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.bak"))
}

pub(crate) fn looker_error(e: LookerError) -> RotateError {
    RotateError::Looker(e.to_string())
}

/// Rotates the API3 key of `role` in the config file at `path`.
pub async fn rotate_role(path: &Path, role: &str) -> Result<RotationReport, RotateError> {
    let original = std::fs::read_to_string(path)
        .map_err(|e| RotateError::Config(format!("cannot read {}: {e}", path.display())))?;
    let mut file = ConfigFile::parse(&original).map_err(|e| RotateError::Config(e.to_string()))?;
    file.apply_env(|k| std::env::var(k).ok());
    // The role's key as the config file has it, before the store's key replaces it.
    let configured_client_id = file.roles.get(role).map(|r| r.client_id.clone());
    let config = file
        .compile()
        .map_err(|e| RotateError::Config(e.to_string()))?;
    if config.store.is_some() {
        return Err(RotateError::Config(
            "with [store], keys rotate inside the running brokers (roles.NAME.rotate_every), one replica elected".into(),
        ));
    }
    let role_cfg = config
        .roles
        .get(role)
        .ok_or_else(|| RotateError::Config(format!("no [roles.{role}] in {}", path.display())))?;
    let RotationStart {
        looker,
        admin,
        user_id,
        old,
        old_key_id,
        mut warning,
    } = start_rotation(&config, role, role_cfg).await?;

    let new_key = looker
        .create_api3(&admin, &user_id)
        .await
        .map_err(looker_error)?;
    tracing::info!(
        event = "rotation",
        role,
        step = "created",
        client_id = new_key.credentials.client_id,
        secret_fp = new_key.credentials.client_secret.fingerprint(),
    );

    let undo = |why: RotateError| {
        let (looker, admin, user_id, key_id) = (&looker, &admin, &user_id, new_key.id.clone());
        async move {
            if let Err(e) = looker.delete_api3(admin, user_id, &key_id).await {
                tracing::error!(
                    event = "rotation",
                    role,
                    step = "undo",
                    key_id,
                    message = %e
                );
            }
            why
        }
    };

    if let Err(e) = looker.login(&new_key.credentials).await {
        return Err(undo(RotateError::ProofFailed(e.to_string())).await);
    }
    let written = match &config.rotated_credentials_file {
        Some(store) => write_store(
            store,
            role,
            &new_key,
            configured_client_id.as_deref().unwrap_or(&old.client_id),
        )
        .map(|()| store.as_path()),
        None => write_rotated(path, &original, role, &new_key).map(|()| path),
    };
    match written {
        Ok(to) => tracing::info!(
            event = "rotation",
            role,
            step = "written",
            path = %to.display()
        ),
        Err(e) => return Err(undo(RotateError::Write(e)).await),
    }

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
    Ok(RotationReport {
        role: role.to_string(),
        new_client_id: new_key.credentials.client_id.clone(),
        new_key_id: new_key.id.clone(),
        old_client_id: old.client_id,
        old_key_id,
        old_key_deleted,
        warning,
    })
}

/// Rotation is not under the gateway's deadline: allow more time than token requests.
/// Where a rotation starts, before it creates anything: a sudo session on Looker, the
/// role's Looker user, its key in force, and the id of that key on Looker (to delete once
/// the new key is in force) or, if it cannot be found, why it will not be deleted.
pub(crate) struct RotationStart {
    pub looker: LookerClient,
    pub admin: Secret,
    pub user_id: String,
    pub old: Api3Credentials,
    pub old_key_id: Option<String>,
    pub warning: Option<String>,
}

pub(crate) async fn start_rotation(
    config: &BrokerConfig,
    role: &str,
    role_cfg: &RoleConfig,
) -> Result<RotationStart, RotateError> {
    let user_id = role_cfg
        .user_id
        .clone()
        .ok_or_else(|| RotateError::Config(format!("roles.{role}.user_id is needed to rotate")))?;
    let sudo = config
        .sudo
        .as_ref()
        .ok_or_else(|| RotateError::Config("a [sudo] section is needed to rotate".into()))?;
    let looker = rotation_client(config)?;
    let admin = looker.login(&sudo.credentials).await.map_err(|e| match e {
        LookerError::Status { .. } => {
            RotateError::Looker("Looker refused the sudo credentials".into())
        }
        e => looker_error(e),
    })?;
    let admin = admin.access_token;
    let old = role_cfg.credentials.clone();
    let (old_key_id, warning) = match &role_cfg.api3_id {
        Some(id) => (Some(id.clone()), None),
        None => match looker.list_api3(&admin, &user_id).await {
            Ok(keys) => match keys.into_iter().find(|k| k.client_id == old.client_id) {
                Some(k) => (Some(k.id.0), None),
                None => (
                    None,
                    Some(format!(
                        "old key {} not found on user {user_id}; not deleted",
                        old.client_id
                    )),
                ),
            },
            Err(e) => (
                None,
                Some(format!(
                    "cannot list the keys of user {user_id} ({e}); old key not deleted"
                )),
            ),
        },
    };
    Ok(RotationStart {
        looker,
        admin,
        user_id,
        old,
        old_key_id,
        warning,
    })
}

pub(crate) fn rotation_client(config: &BrokerConfig) -> Result<LookerClient, RotateError> {
    LookerClient::new(
        config.looker_url.clone(),
        config.looker_timeout.max(Duration::from_secs(5)),
        config.retry_budget.max(Duration::from_secs(15)),
        config.looker_ca.as_ref(),
    )
    .map_err(looker_error)
}

/// Replaces the role's key in the file: temp file + fsync + `.bak` + rename. Refuses if
/// the file changed since it was read (someone else edited it meanwhile).
fn write_rotated(path: &Path, original: &str, role: &str, key: &NewApi3Key) -> Result<(), String> {
    let mut doc: DocumentMut = original
        .parse()
        .map_err(|e: toml_edit::TomlError| e.message().to_string())?;
    let table = doc
        .get_mut("roles")
        .and_then(Item::as_table_like_mut)
        .and_then(|roles| roles.get_mut(role))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| format!("no [roles.{role}] table"))?;
    table.insert(
        "client_id",
        toml_edit::value(key.credentials.client_id.clone()),
    );
    table.insert(
        "client_secret",
        toml_edit::value(key.credentials.client_secret.expose()),
    );
    // The new secret is written inline, so it replaces a file or variable source.
    table.remove("client_secret_file");
    table.remove("client_secret_env");
    table.insert("api3_id", toml_edit::value(key.id.clone()));
    table.insert(
        "rotated_at",
        toml_edit::value(crate::log::unix_now_secs() as i64),
    );
    let text = doc.to_string();
    BrokerConfig::parse(&text).map_err(|e| format!("rotated config would be invalid: {e}"))?;

    replace_file(path, &text, original, true)
}

/// Writes `text` to `path` durably: temp file (0600, it holds secrets) + fsync, then,
/// if `path` still holds `expected` (empty: absent), a `.bak` copy (when `backup`) and a
/// rename, then a directory fsync. Refuses if the file changed since it was read.
fn replace_file(path: &Path, text: &str, expected: &str, backup: bool) -> Result<(), String> {
    let tmp = temp_path(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.sync_all()
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        if let Ok(meta) = std::fs::metadata(path) {
            let _ = std::fs::set_permissions(&tmp, meta.permissions());
        }
        let current = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && expected.is_empty() => Vec::new(),
            read => read.map_err(|e| format!("{}: {e}", path.display()))?,
        };
        if fingerprint(&current) != fingerprint(expected.as_bytes()) {
            return Err(format!("{} changed during rotation", path.display()));
        }
        if backup {
            let bak = backup_path(path);
            std::fs::copy(path, &bak).map_err(|e| format!("{}: {e}", bak.display()))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let d = std::fs::File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            d.sync_all()
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The store (`rotated_credentials_file`): one table per rotated role.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Store {
    #[serde(default)]
    roles: BTreeMap<String, StoredKey>,
    embed: Option<StoredEmbedSecret>,
}

/// The rotated SSO embed secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEmbedSecret {
    secret: Secret,
    secret_id: LookerId,
    algorithm: String,
    rotated_at: u64,
    /// `embed.secret_id` in the config that this secret replaces (`""`: none); as for
    /// keys, the stored secret wins only while the config still holds that one (or this).
    replaces_secret_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    client_id: String,
    client_secret: Secret,
    api3_id: LookerId,
    rotated_at: u64,
    /// The client id in the config that this key replaces. The stored key wins only while
    /// the config still holds that key (or this one): a different key there is newer,
    /// put in by an operator, and wins over the store.
    replaces_client_id: String,
}

const STORE_HEADER: &str =
    "# lookergate-broker: API3 keys made by rotation (rotated_credentials_file). Written by the broker; do not edit.\n";

/// Reads the store; a missing file is an empty store.
fn read_store(path: &Path) -> Result<(String, Store), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((String::new(), Store::default()))
        }
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    // Never quote the error: values may be secrets.
    let store = toml_edit::de::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .and_then(|s| text.get(..s.start))
            .map_or(0, |b| b.matches('\n').count() + 1);
        format!("not a rotated-credentials file (line {line}; details not shown, it holds secrets)")
    })?;
    Ok((text, store))
}

/// Puts the store's keys in place of the config's keys they replaced (see [`StoredKey`]).
pub fn apply_rotated(path: &Path, roles: &mut BTreeMap<String, RoleConfig>) -> Result<(), String> {
    let (_, store) = read_store(path)?;
    for (name, key) in store.roles {
        let Some(role) = roles.get_mut(&name) else {
            continue;
        };
        let configured = &role.credentials.client_id;
        if configured != &key.replaces_client_id && configured != &key.client_id {
            tracing::warn!(
                event = "rotated_credentials",
                role = name,
                message =
                    "the config holds a newer key than the store's rotated one; using the config's",
                config_client_id = configured,
                stored_client_id = key.client_id,
            );
            continue;
        }
        role.credentials.client_id = key.client_id;
        role.credentials.client_secret = key.client_secret;
        role.api3_id = Some(key.api3_id.0);
        role.rotated_at = Some(key.rotated_at);
    }
    Ok(())
}

/// Puts the store's embed secret in place of the config's one it replaced.
pub fn apply_rotated_embed(path: &Path, embed: &mut EmbedConfig) -> Result<(), String> {
    let (_, store) = read_store(path)?;
    let Some(stored) = store.embed else {
        return Ok(());
    };
    let configured = embed
        .secret
        .as_ref()
        .and_then(|s| s.id.clone())
        .unwrap_or_default();
    if configured != stored.replaces_secret_id && configured != stored.secret_id.0 {
        tracing::warn!(
            event = "rotated_credentials",
            embed = true,
            message = "the config holds a newer embed secret than the store's rotated one; using the config's",
            config_secret_id = configured,
            stored_secret_id = stored.secret_id.0,
        );
        return Ok(());
    }
    embed.algorithm = SsoAlgorithm::parse(&stored.algorithm).ok_or_else(|| {
        format!(
            "embed.algorithm {:?} is not one of {:?}",
            stored.algorithm,
            SsoAlgorithm::NAMES
        )
    })?;
    embed.secret = Some(EmbedSecret {
        secret: stored.secret,
        id: Some(stored.secret_id.0),
    });
    embed.rotated_at = Some(stored.rotated_at);
    Ok(())
}

/// Records `key` for `role` in the store, replacing `configured`: the client id the
/// config file holds (the stored key wins only while the config still holds it).
fn write_store(path: &Path, role: &str, key: &NewApi3Key, configured: &str) -> Result<(), String> {
    let (text, _) = read_store(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let replaces = configured.to_string();
    let mut doc: DocumentMut = if text.is_empty() {
        STORE_HEADER.parse()
    } else {
        text.parse()
    }
    .map_err(|e: toml_edit::TomlError| e.message().to_string())?;
    let roles = doc
        .entry("roles")
        .or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_like_mut()
        .ok_or("roles is not a table")?;
    let mut entry = toml_edit::Table::new();
    entry.insert(
        "client_id",
        toml_edit::value(key.credentials.client_id.clone()),
    );
    entry.insert(
        "client_secret",
        toml_edit::value(key.credentials.client_secret.expose()),
    );
    entry.insert("api3_id", toml_edit::value(key.id.clone()));
    entry.insert(
        "rotated_at",
        toml_edit::value(crate::log::unix_now_secs() as i64),
    );
    entry.insert("replaces_client_id", toml_edit::value(replaces));
    roles.insert(role, Item::Table(entry));
    let new_text = doc.to_string();
    replace_file(path, &new_text, &text, false)
}

/// What an embed secret rotation did (ids and fingerprints, never the secret).
#[derive(Debug)]
pub struct EmbedRotationReport {
    pub new_secret_id: String,
    pub new_secret_fp: String,
    pub old_secret_id: Option<String>,
    pub old_secret_deleted: bool,
    pub warning: Option<String>,
}

impl EmbedRotationReport {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "new_secret_id": self.new_secret_id,
            "new_secret_fp": self.new_secret_fp,
            "old_secret_id": self.old_secret_id,
            "old_secret_deleted": self.old_secret_deleted,
            "warning": self.warning,
        })
    }
}

/// Rotates the SSO embed secret of the config file at `path`: a new secret from Looker
/// (`create_embed_secret`, as the embed role), written durably, then the old one deleted.
pub async fn rotate_embed_secret(path: &Path) -> Result<EmbedRotationReport, RotateError> {
    let original = std::fs::read_to_string(path)
        .map_err(|e| RotateError::Config(format!("cannot read {}: {e}", path.display())))?;
    let mut file = ConfigFile::parse(&original).map_err(|e| RotateError::Config(e.to_string()))?;
    file.apply_env(|k| std::env::var(k).ok());
    // The secret id as the config file has it, before the store's replaces it.
    let configured_id = file
        .embed
        .as_ref()
        .and_then(|e| e.secret_id.as_ref())
        .map(|i| i.0.clone())
        .unwrap_or_default();
    let config = file
        .compile()
        .map_err(|e| RotateError::Config(e.to_string()))?;
    let embed = config
        .embed
        .as_ref()
        .ok_or_else(|| RotateError::Config(format!("no [embed] in {}", path.display())))?;
    let role = config
        .roles
        .get(&embed.role)
        .ok_or_else(|| RotateError::Config(format!("no [roles.{}]", embed.role)))?;
    let looker = rotation_client(&config)?;
    let token = looker
        .login(&role.credentials)
        .await
        .map_err(|e| match e {
            LookerError::Status { .. } => RotateError::Looker(format!(
                "Looker refused the credentials of role {:?} (embed.role)",
                embed.role
            )),
            e => looker_error(e),
        })?
        .access_token;
    let algorithm = embed.algorithm.as_str();
    let new = looker
        .create_embed_secret(&token, algorithm)
        .await
        .map_err(looker_error)?;
    tracing::info!(
        event = "embed_secret_rotation",
        step = "created",
        secret_id = new.id,
        secret_fp = new.secret.fingerprint(),
    );

    let written = match &config.rotated_credentials_file {
        Some(store) => {
            write_store_embed(store, &new, algorithm, &configured_id).map(|()| store.as_path())
        }
        None => write_rotated_embed(path, &original, &new).map(|()| path),
    };
    match written {
        Ok(to) => tracing::info!(
            event = "embed_secret_rotation",
            step = "written",
            path = %to.display()
        ),
        Err(e) => {
            if let Err(undo) = looker.delete_embed_secret(&token, &new.id).await {
                tracing::error!(
                    event = "embed_secret_rotation",
                    step = "undo",
                    secret_id = new.id,
                    message = %undo
                );
            }
            return Err(RotateError::Write(e));
        }
    }

    let old_secret_id = embed.secret.as_ref().and_then(|s| s.id.clone());
    let (mut old_secret_deleted, mut warning) = (false, None);
    match &old_secret_id {
        Some(old) if old == &new.id => {
            warning = Some("old and new secret ids are equal; nothing deleted".into());
        }
        Some(old) => match looker.delete_embed_secret(&token, old).await {
            Ok(()) => old_secret_deleted = true,
            Err(e) => warning = Some(format!("old embed secret {old} not deleted: {e}")),
        },
        None if embed.secret.is_some() => {
            warning = Some("the old embed secret has no embed.secret_id; not deleted".into());
        }
        None => {}
    }
    Ok(EmbedRotationReport {
        new_secret_id: new.id.clone(),
        new_secret_fp: new.secret.fingerprint(),
        old_secret_id,
        old_secret_deleted,
        warning,
    })
}

/// Puts the new embed secret inline in `[embed]` of the config file (as [`write_rotated`]).
fn write_rotated_embed(path: &Path, original: &str, new: &NewEmbedSecret) -> Result<(), String> {
    let mut doc: DocumentMut = original
        .parse()
        .map_err(|e: toml_edit::TomlError| e.message().to_string())?;
    let table = doc
        .get_mut("embed")
        .and_then(Item::as_table_like_mut)
        .ok_or("no [embed] table")?;
    table.insert("secret", toml_edit::value(new.secret.expose()));
    table.remove("secret_file");
    table.remove("secret_env");
    table.insert("secret_id", toml_edit::value(new.id.clone()));
    table.insert(
        "rotated_at",
        toml_edit::value(crate::log::unix_now_secs() as i64),
    );
    let text = doc.to_string();
    BrokerConfig::parse(&text).map_err(|e| format!("rotated config would be invalid: {e}"))?;
    replace_file(path, &text, original, true)
}

/// Records the new embed secret in the store, replacing `configured` (`embed.secret_id`
/// of the config file, `""` when none).
fn write_store_embed(
    path: &Path,
    new: &NewEmbedSecret,
    algorithm: &str,
    configured: &str,
) -> Result<(), String> {
    let (text, _) = read_store(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc: DocumentMut = if text.is_empty() {
        STORE_HEADER.parse()
    } else {
        text.parse()
    }
    .map_err(|e: toml_edit::TomlError| e.message().to_string())?;
    let mut entry = toml_edit::Table::new();
    entry.insert("secret", toml_edit::value(new.secret.expose()));
    entry.insert("secret_id", toml_edit::value(new.id.clone()));
    entry.insert("algorithm", toml_edit::value(algorithm));
    entry.insert(
        "rotated_at",
        toml_edit::value(crate::log::unix_now_secs() as i64),
    );
    entry.insert("replaces_secret_id", toml_edit::value(configured));
    doc.insert("embed", Item::Table(entry));
    replace_file(path, &doc.to_string(), &text, false)
}

const RETRY_FAILED_ROTATION: Duration = Duration::from_secs(300);

/// Rotates every role with `rotate_every` when due (`rotated_at + rotate_every`; a role
/// never rotated by us is due at once), then reloads the config.
pub fn spawn_scheduler(broker: AppState) -> JoinHandle<()> {
    if broker.store.is_some() {
        return crate::fleet::spawn_elected_scheduler(broker);
    }
    tokio::spawn(async move {
        let Some(path) = broker.config_path.clone() else {
            return;
        };
        let mut not_before: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rt = broker.runtime();
            let now = crate::log::unix_now_secs();
            for (name, role) in &rt.config.roles {
                let Some(every) = role.rotate_every else {
                    continue;
                };
                let due = role
                    .rotated_at
                    .map_or(0, |t| t.saturating_add(every.as_secs()));
                if now < due || now < not_before.get(name).copied().unwrap_or(0) {
                    continue;
                }
                match rotate_role(&path, name).await {
                    Ok(report) => {
                        broker
                            .metrics
                            .rotations
                            .get_or_create(&ResultLabel { result: "ok" })
                            .inc();
                        tracing::info!(
                            event = "rotation",
                            step = "done",
                            trigger = "schedule",
                            report = %report.to_json()
                        );
                        let _ = crate::reload::reload(&broker, "rotation");
                        // Guards against re-rotating before the reload is visible.
                        not_before.insert(
                            name.clone(),
                            now + every.as_secs().min(RETRY_FAILED_ROTATION.as_secs()),
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
                            message = %e
                        );
                        not_before.insert(name.clone(), now + RETRY_FAILED_ROTATION.as_secs());
                    }
                }
            }
            if let Some(embed) = &rt.config.embed {
                rotate_embed_if_due(&broker, &path, embed, now, &mut not_before).await;
            }
        }
    })
}

/// The scheduler's embed secret step (`embed.rotate_secret_every`); `not_before` is
/// shared with the roles' (key `"[embed]"`, not a role name).
async fn rotate_embed_if_due(
    broker: &AppState,
    path: &Path,
    embed: &EmbedConfig,
    now: u64,
    not_before: &mut HashMap<String, u64>,
) {
    const KEY: &str = "[embed]";
    let Some(every) = embed.rotate_secret_every else {
        return;
    };
    let due = embed
        .rotated_at
        .map_or(0, |t| t.saturating_add(every.as_secs()));
    if now < due || now < not_before.get(KEY).copied().unwrap_or(0) {
        return;
    }
    let result = rotate_embed_secret(path).await;
    let label = if result.is_ok() { "ok" } else { "error" };
    broker
        .metrics
        .embed_secret_rotations
        .get_or_create(&ResultLabel { result: label })
        .inc();
    match result {
        Ok(report) => {
            tracing::info!(
                event = "embed_secret_rotation",
                step = "done",
                trigger = "schedule",
                report = %report.to_json()
            );
            let _ = crate::reload::reload(broker, "rotation");
            not_before.insert(
                KEY.into(),
                now + every.as_secs().min(RETRY_FAILED_ROTATION.as_secs()),
            );
        }
        Err(e) => {
            tracing::error!(
                event = "embed_secret_rotation",
                step = "failed",
                trigger = "schedule",
                message = %e
            );
            not_before.insert(KEY.into(), now + RETRY_FAILED_ROTATION.as_secs());
        }
    }
}
