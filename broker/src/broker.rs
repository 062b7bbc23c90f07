//! The broker's core: turns a [`LookerIdentity`] into a Looker session token, using the
//! role's API3 credentials or (per-user mode) the admin's sudo login.

use crate::cache::{CachedToken, Outcome, TokenCache};
use crate::config::{BrokerConfig, RoleConfig, SudoConfig};
use crate::identity::{CacheKey, LookerIdentity};
use crate::log;
use crate::looker::{LookerClient, LookerError, LookerToken};
use crate::metrics::{LoginLabels, Metrics};
use crate::secret::Secret;
use crate::store::{SharedCredentials, SharedStore, StoreError};
use axum::http::StatusCode;
use lookergate_proto::broker::{ErrorCode, ErrorResponse};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Errors a token request can end in; codes and statuses are the DESIGN.md contract.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("gateway credential missing or wrong")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("no role named {0:?} is configured")]
    UnknownRole(String),
    #[error("role {0:?} is embed.role: its token serves the broker's embed calls only")]
    ReservedRole(String),
    #[error("no Looker user has {credential_type} credential {credential_id:?}")]
    NoLookerUser {
        credential_type: String,
        credential_id: String,
    },
    #[error("Looker refused the API3 credentials of {0}")]
    BadCredentials(String),
    #[error("{0}")]
    LookerUnavailable(String),
    #[error("{0}")]
    EmbedDisabled(String),
    #[error("no live embed session for this principal and profile; acquire one first")]
    NoEmbedSession,
}

impl BrokerError {
    /// The protocol's code for this error (`lookergate_proto::broker::ErrorCode`).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            BrokerError::Unauthorized => ErrorCode::Unauthorized,
            BrokerError::BadRequest(_) => ErrorCode::BadRequest,
            BrokerError::UnknownRole(_) | BrokerError::ReservedRole(_) => ErrorCode::UnknownRole,
            BrokerError::NoLookerUser { .. } => ErrorCode::NoLookerUser,
            BrokerError::BadCredentials(_) => ErrorCode::BadCredentials,
            BrokerError::LookerUnavailable(_) => ErrorCode::LookerUnavailable,
            BrokerError::EmbedDisabled(_) => ErrorCode::EmbedDisabled,
            BrokerError::NoEmbedSession => ErrorCode::NoEmbedSession,
        }
    }

    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.error_code().status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The body of the error answer.
    pub fn response(&self) -> ErrorResponse {
        ErrorResponse {
            error: self.error_code(),
            message: self.to_string(),
        }
    }

    /// Maps a Looker failure of logging in with `whose` credentials.
    fn from_login(e: LookerError, whose: &str) -> Self {
        match e {
            // Looker answers 404 (sometimes 401/403) to unknown or wrong API3 credentials.
            LookerError::Status { .. } => BrokerError::BadCredentials(whose.to_string()),
            LookerError::Unavailable(m) => BrokerError::LookerUnavailable(m),
            LookerError::Malformed(m) => {
                BrokerError::LookerUnavailable(format!("unexpected answer from Looker login: {m}"))
            }
        }
    }

    pub(crate) fn from_call(e: LookerError, what: &str) -> Self {
        match e {
            LookerError::Status { status } => {
                BrokerError::LookerUnavailable(format!("Looker answered {status} to {what}"))
            }
            LookerError::Unavailable(m) => BrokerError::LookerUnavailable(m),
            LookerError::Malformed(m) => BrokerError::LookerUnavailable(format!(
                "unexpected answer from Looker to {what}: {m}"
            )),
        }
    }
}

/// Config plus everything compiled from it; replaced as a whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub config: BrokerConfig,
    pub looker: LookerClient,
}

impl Runtime {
    pub fn new(config: BrokerConfig) -> Result<Self, LookerError> {
        let looker = LookerClient::new(
            config.looker_url.clone(),
            config.looker_timeout,
            config.retry_budget,
            config.looker_ca.as_ref(),
        )?;
        Ok(Runtime { config, looker })
    }
}

/// A token handed to the gateway.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: CachedToken,
    pub outcome: Outcome,
}

impl Issued {
    pub fn expires_in(&self) -> u64 {
        self.token.remaining(Instant::now()).as_secs()
    }
}

/// How long one replica's login may hold an identity's lock in the shared store: a
/// per-user login is up to three Looker operations (admin login, lookup, sudo login).
fn login_lease(config: &BrokerConfig) -> Duration {
    config.retry_budget * 3 + Duration::from_secs(1)
}

/// Whose Looker login a `looker_login` log line is about (names and ids, never a secret).
#[derive(Default)]
struct LoginFields<'a> {
    role: Option<&'a str>,
    client_id: Option<&'a str>,
    user_id: Option<&'a str>,
    credential_type: Option<&'a str>,
}

/// The answer of [`Broker::readiness`]. Its details name roles and quote Looker's errors
/// (no secrets): they go to authenticated gateways and the log, never to a bare probe.
#[derive(Debug)]
pub struct Readiness {
    pub ready: bool,
    /// `"role:<name>"` or `"sudo"` -> the error its login ended in (`None`: logged in).
    pub checks: BTreeMap<String, Option<BrokerError>>,
}

impl Readiness {
    pub fn status(&self) -> &'static str {
        if self.ready {
            "ready"
        } else {
            "not_ready"
        }
    }

    /// `{"status": "ready" | "not_ready", "checks": {"role:analyst": "ok", ...}}`.
    pub fn details(&self) -> serde_json::Value {
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|(name, failed)| {
                let check = match failed {
                    None => json!("ok"),
                    Some(e) => json!(e.response()),
                };
                (name.clone(), check)
            })
            .collect();
        json!({"status": self.status(), "checks": checks})
    }
}

/// `(credential_type, credential_id)`.
type CredentialKey = (String, String);

/// A Looker user id (or `None`: no such user) and when the answer expires.
type DirectoryEntry = (Option<String>, Instant);

/// Credential -> Looker user id lookups, cached (negative answers for a shorter time).
#[derive(Default)]
struct UserDirectory {
    entries: Mutex<HashMap<CredentialKey, DirectoryEntry>>,
}

const NEGATIVE_USER_TTL: Duration = Duration::from_secs(30);

impl UserDirectory {
    fn get(&self, key: &CredentialKey) -> Option<Option<String>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(id, _)| id.clone())
    }

    fn put(&self, key: CredentialKey, user_id: Option<String>, ttl: Duration) {
        let ttl = if user_id.is_some() {
            ttl
        } else {
            ttl.min(NEGATIVE_USER_TTL)
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(key, (user_id, Instant::now() + ttl));
    }

    fn forget(&self, key: &CredentialKey) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, until)| *until > now);
    }
}

pub struct Broker {
    runtime: RwLock<Arc<Runtime>>,
    /// The config as loaded from the file, before the shared store's rotated keys apply.
    base_config: RwLock<Arc<BrokerConfig>>,
    /// `[store]`: the Redis replicas share (`None`: everything stays in this process).
    pub store: Option<Arc<SharedStore>>,
    /// The shared rotated keys in force here (`None`: not read yet; token requests wait).
    shared_credentials: Mutex<Option<SharedCredentials>>,
    /// Where the config came from (`None`: embedded demo); reloads and rotation write here.
    pub config_path: Option<PathBuf>,
    pub tokens: TokenCache,
    users: UserDirectory,
    /// Looker's embed session reference tokens, by [`lookergate_proto::embed::session_key`].
    pub embed_sessions: crate::embed::EmbedSessions,
    pub metrics: Metrics,
}

impl Broker {
    pub fn new(config: BrokerConfig, config_path: Option<PathBuf>) -> Result<Self, LookerError> {
        let metrics = Metrics::default();
        let store = match &config.store {
            Some(c) => {
                Some(Arc::new(SharedStore::connect(c).map_err(|e| {
                    LookerError::Unavailable(format!("store: {e}"))
                })?))
            }
            None => None,
        };
        let tokens = match &store {
            Some(store) => TokenCache::with_store(store.clone(), metrics.store.clone()),
            None => TokenCache::default(),
        };
        tokens.set_login_lease(login_lease(&config));
        Ok(Broker {
            runtime: RwLock::new(Arc::new(Runtime::new(config.clone())?)),
            base_config: RwLock::new(Arc::new(config)),
            store,
            shared_credentials: Mutex::new(None),
            config_path,
            tokens,
            users: UserDirectory::default(),
            embed_sessions: crate::embed::EmbedSessions::default(),
            metrics,
        })
    }

    /// The config as loaded (file and `rotated_credentials_file`), without the shared store's keys.
    pub fn base_config(&self) -> Arc<BrokerConfig> {
        self.base_config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a newly loaded config in force, with the shared store's rotated keys over it.
    pub fn install_config(&self, base: BrokerConfig) -> Result<(), LookerError> {
        let mut effective = base.clone();
        if let Some(shared) = self
            .shared_credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            shared.apply(&mut effective.roles);
        }
        self.tokens.set_login_lease(login_lease(&effective));
        let runtime = Runtime::new(effective)?;
        *self.base_config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(base);
        self.replace_runtime(runtime);
        Ok(())
    }

    /// The version of the shared credentials in force here (`None`: not read yet, or no store).
    pub fn credentials_version(&self) -> Option<u64> {
        self.shared_credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.version)
    }

    /// Reads the shared credentials; a new version is put in force at once. `Ok(true)`: changed.
    pub async fn refresh_shared_credentials(&self) -> Result<bool, StoreError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let read = store.read_credentials().await?;
        let held = self
            .shared_credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(held) = held.filter(|h| h.version > read.version) {
            // The store lost a rotation (Redis restarted empty): keep the keys in force here,
            // whose predecessors may be deleted in Looker, and put them back.
            if store.reseed_credentials(&held).await? {
                tracing::warn!(
                    event = "shared_credentials",
                    result = "reseeded",
                    version = held.version,
                    message = "the store had lost the rotated credentials; written back"
                );
            }
            return Ok(false);
        }
        self.adopt_shared_credentials(read)
    }

    /// Puts `read` in force unless it is what this replica already uses.
    pub fn adopt_shared_credentials(&self, read: SharedCredentials) -> Result<bool, StoreError> {
        let version = read.version;
        {
            let mut current = self
                .shared_credentials
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if current.as_ref() == Some(&read) {
                return Ok(false);
            }
            *current = Some(read);
        }
        let base = (*self.base_config()).clone();
        self.install_config(base)
            .map_err(|e| StoreError::Malformed(e.to_string()))?;
        tracing::info!(event = "shared_credentials", result = "applied", version);
        Ok(true)
    }

    /// With a store, a token is issued only under the shared credentials (a key rotated
    /// by another replica may already be deleted in Looker).
    async fn ensure_shared_credentials(&self) -> Result<(), BrokerError> {
        if self.store.is_none() || self.credentials_version().is_some() {
            return Ok(());
        }
        self.refresh_shared_credentials().await.map_err(|e| {
            self.metrics
                .store
                .errors
                .get_or_create(&crate::metrics::OpLabel { op: "credentials" })
                .inc();
            BrokerError::LookerUnavailable(e.to_string())
        })?;
        Ok(())
    }

    /// The current config; requests in flight keep the snapshot they started with.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace_runtime(&self, runtime: Runtime) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(runtime);
    }

    pub async fn token(&self, identity: &LookerIdentity) -> Result<Issued, BrokerError> {
        identity.validate().map_err(BrokerError::BadRequest)?;
        self.ensure_shared_credentials().await?;
        let rt = self.runtime();
        let key = CacheKey::of(identity);
        let refresh_before = rt.config.refresh_before;
        let (token, outcome) = match identity {
            LookerIdentity::Role(name) => {
                let role = rt
                    .config
                    .roles
                    .get(name)
                    .ok_or_else(|| BrokerError::UnknownRole(name.clone()))?;
                let source = role.credentials.fingerprint();
                self.tokens
                    .get_or_login(&key, &source, refresh_before, || {
                        self.login_role(&rt, name, role)
                    })
                    .await?
            }
            LookerIdentity::User {
                credential_type, ..
            } => {
                let sudo = rt.config.sudo.as_ref().ok_or_else(|| {
                    BrokerError::BadRequest(
                        "per-user identities are not enabled (no [sudo] in the broker config)"
                            .into(),
                    )
                })?;
                if !sudo.credential_types.iter().any(|t| t == credential_type) {
                    return Err(BrokerError::BadRequest(format!(
                        "credential_type {credential_type:?} is not enabled (allowed: {:?})",
                        sudo.credential_types
                    )));
                }
                let source = format!(
                    "{}/associative={}",
                    sudo.credentials.fingerprint(),
                    sudo.associative
                );
                let CacheKey::User {
                    credential_type,
                    credential_id,
                } = &key
                else {
                    return Err(BrokerError::BadRequest("identity kind mismatch".into()));
                };
                self.tokens
                    .get_or_login(&key, &source, refresh_before, || {
                        self.login_user(&rt, sudo, credential_type, credential_id)
                    })
                    .await?
            }
        };
        Ok(Issued { token, outcome })
    }

    pub async fn invalidate(&self, identity: &LookerIdentity) -> Result<bool, BrokerError> {
        identity.validate().map_err(BrokerError::BadRequest)?;
        if let LookerIdentity::User { .. } = identity {
            if let CacheKey::User {
                credential_type,
                credential_id,
            } = CacheKey::of(identity)
            {
                self.users.forget(&(credential_type, credential_id));
            }
        }
        self.tokens
            .invalidate_everywhere(&CacheKey::of(identity))
            .await
    }

    async fn login_role(
        &self,
        rt: &Runtime,
        name: &str,
        role: &RoleConfig,
    ) -> Result<LookerToken, BrokerError> {
        self.timed_login(
            "role",
            rt.looker.login(&role.credentials),
            &format!("role {name:?}"),
            LoginFields {
                role: Some(name),
                client_id: Some(&role.credentials.client_id),
                ..LoginFields::default()
            },
        )
        .await
    }

    async fn timed_login(
        &self,
        kind: &'static str,
        call: impl std::future::Future<Output = Result<LookerToken, LookerError>>,
        whose: &str,
        fields: LoginFields<'_>,
    ) -> Result<LookerToken, BrokerError> {
        let started = Instant::now();
        let result = call.await.map_err(|e| BrokerError::from_login(e, whose));
        let elapsed = started.elapsed();
        self.metrics.observe_looker_login(elapsed);
        let result_label = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.metrics
            .looker_logins
            .get_or_create(&LoginLabels {
                kind,
                result: result_label,
            })
            .inc();
        let ms = elapsed.as_millis() as u64;
        let LoginFields {
            role,
            client_id,
            user_id,
            credential_type,
        } = fields;
        match &result {
            Ok(t) => tracing::info!(
                event = "looker_login",
                kind,
                result = result_label,
                ms,
                role,
                client_id,
                user_id,
                credential_type,
                token_fp = t.access_token.fingerprint(),
                expires_in = t.expires_in.as_secs(),
            ),
            Err(e) => tracing::warn!(
                event = "looker_login",
                kind,
                result = result_label,
                ms,
                role,
                client_id,
                user_id,
                credential_type,
                message = %e,
            ),
        }
        result
    }

    /// The broker's own admin session, cached like any other identity.
    pub async fn admin_token(
        &self,
        rt: &Runtime,
        sudo: &SudoConfig,
    ) -> Result<Secret, BrokerError> {
        let source = sudo.credentials.fingerprint();
        let (token, _) = self
            .tokens
            .get_or_login(&CacheKey::Admin, &source, rt.config.refresh_before, || {
                self.timed_login(
                    "admin",
                    rt.looker.login(&sudo.credentials),
                    "sudo",
                    LoginFields {
                        client_id: Some(&sudo.credentials.client_id),
                        ..LoginFields::default()
                    },
                )
            })
            .await?;
        Ok(token.access_token)
    }

    async fn login_user(
        &self,
        rt: &Runtime,
        sudo: &SudoConfig,
        credential_type: &str,
        credential_id: &str,
    ) -> Result<LookerToken, BrokerError> {
        let no_user = || BrokerError::NoLookerUser {
            credential_type: credential_type.to_string(),
            credential_id: credential_id.to_string(),
        };
        let mut retried_admin = false;
        loop {
            let admin = self.admin_token(rt, sudo).await?;
            let dir_key = (credential_type.to_string(), credential_id.to_string());
            let user_id = match self.users.get(&dir_key) {
                Some(cached) => cached,
                None => {
                    let found = rt
                        .looker
                        .find_user_by_credential(&admin, credential_type, credential_id)
                        .await;
                    match found {
                        Ok(found) => {
                            self.users
                                .put(dir_key.clone(), found.clone(), sudo.user_cache_ttl);
                            found
                        }
                        Err(LookerError::Status { status: 401 }) if !retried_admin => {
                            // Admin session expired or revoked early: log in again once.
                            retried_admin = true;
                            let _ = self.tokens.invalidate_everywhere(&CacheKey::Admin).await;
                            continue;
                        }
                        Err(e) => return Err(BrokerError::from_call(e, "the user lookup")),
                    }
                }
            };
            let Some(user_id) = user_id else {
                return Err(no_user());
            };
            let result = self
                .timed_login(
                    "user",
                    rt.looker.login_user(&admin, &user_id, sudo.associative),
                    "sudo",
                    LoginFields {
                        user_id: Some(&user_id),
                        credential_type: Some(credential_type),
                        ..LoginFields::default()
                    },
                )
                .await;
            return match result {
                Err(BrokerError::BadCredentials(_)) => {
                    // 404/403 from login/{id}: user gone, disabled, or not sudo-able (an admin).
                    self.users.forget(&dir_key);
                    if !retried_admin {
                        retried_admin = true;
                        let _ = self.tokens.invalidate_everywhere(&CacheKey::Admin).await;
                        continue;
                    }
                    Err(no_user())
                }
                other => other,
            };
        }
    }

    /// Every role (and the sudo admin, if configured) can log in right now.
    pub async fn readiness(self: &Arc<Self>) -> Readiness {
        let rt = self.runtime();
        let mut checks = tokio::task::JoinSet::new();
        for name in rt.config.roles.keys() {
            let (broker, name) = (self.clone(), name.clone());
            checks.spawn(async move {
                let r = broker.token(&LookerIdentity::Role(name.clone())).await;
                (format!("role:{name}"), r.err())
            });
        }
        if let Some(sudo) = rt.config.sudo.clone() {
            let (broker, rt) = (self.clone(), rt.clone());
            checks.spawn(async move {
                (
                    "sudo".to_string(),
                    broker.admin_token(&rt, &sudo).await.err(),
                )
            });
        }
        let mut readiness = Readiness {
            ready: true,
            checks: BTreeMap::new(),
        };
        while let Some(joined) = checks.join_next().await {
            match joined {
                Ok((name, failed)) => {
                    readiness.ready &= failed.is_none();
                    readiness.checks.insert(name, failed);
                }
                Err(_) => readiness.ready = false,
            }
        }
        if !readiness.ready {
            let details = readiness.details();
            tracing::warn!(
                event = "not_ready",
                status = readiness.status(),
                checks = log::json(&details.get("checks")),
            );
        }
        readiness
    }

    /// Periodic housekeeping: forget expired tokens, user lookups and embed sessions.
    pub fn sweep(&self) {
        self.tokens.sweep();
        self.users.sweep();
        self.embed_sessions.sweep();
        self.metrics
            .embed_sessions
            .set(self.embed_sessions.len() as i64);
    }
}
