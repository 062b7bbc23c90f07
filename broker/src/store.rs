//! The store broker replicas share (`[store]`, Redis): Looker tokens per identity, one
//! Looker login per identity across replicas (a lock whose waiters read the result),
//! invalidations (pub/sub), the rotated API3 keys with a version, replica heartbeats and
//! the rotation election (lock with lease plus a fencing token).
//!
//! Redis never holds a plain token or secret: tokens and credentials are sealed with
//! AES-256-GCM under the configured key, with the Redis key name as associated data, so a
//! sealed value copied to another key (another identity) does not open. README.md
//! ("Shared store") lists every key, what it holds and its expiry.

use crate::config::RoleConfig;
use crate::identity::CacheKey;
use crate::secret::Secret;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use base64::Engine as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The sealing key: 32 bytes (AES-256), given as base64. Never printed.
#[derive(Clone)]
pub struct SealingKey([u8; 32]);

impl SealingKey {
    /// Decodes `text` (standard or URL-safe base64, padded or not); the message never quotes it.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let bytes = engines
            .iter()
            .find_map(|e| e.decode(text).ok())
            .ok_or("is not base64 (value not shown); make one with `openssl rand -base64 32`")?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "must decode to 32 bytes, it decodes to {} (value not shown); make one with `openssl rand -base64 32`",
                bytes.len()
            )
        })?;
        Ok(SealingKey(key))
    }

    /// First 8 hex of SHA-256: tells keys apart in logs without revealing them.
    pub fn fingerprint(&self) -> String {
        crate::secret::fingerprint(&self.0)
    }
}

impl PartialEq for SealingKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SealingKey {}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKey(sha256:{})", self.fingerprint())
    }
}

/// Compiled `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// May carry a password: a [`Secret`].
    pub url: Secret,
    pub key: SealingKey,
    pub prefix: String,
    /// Credentials poll and heartbeat interval.
    pub poll: Duration,
    /// The longest a rotation waits for live replicas before deleting the old key.
    pub rotation_grace: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("token store (Redis) unavailable: {0}")]
    Redis(String),
    #[error("a sealed value in the token store does not open under this key (wrong sealing key, tampered, or moved)")]
    Sealed,
    #[error("a value in the token store is malformed: {0}")]
    Malformed(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        // Names the failure (refused, timeout, WRONGPASS, ...); redis-rs errors carry neither
        // the URL nor the password (the binary test checks the log).
        StoreError::Redis(e.to_string())
    }
}

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const AAD_DOMAIN: &[u8] = b"lookergate-broker/store/v1\0";

/// AES-256-GCM with a random nonce per value and the Redis key name as associated data.
pub struct Sealer {
    cipher: Aes256Gcm,
    rng: ring::rand::SystemRandom,
}

impl Sealer {
    pub fn new(key: &SealingKey) -> Result<Self, StoreError> {
        let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| StoreError::Sealed)?;
        Ok(Sealer {
            cipher,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    fn aad(redis_key: &str) -> Vec<u8> {
        [AAD_DOMAIN, redis_key.as_bytes()].concat()
    }

    /// `version (1) || nonce (12) || ciphertext+tag`, bound to `redis_key`.
    pub fn seal(&self, redis_key: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&self.rng, &mut nonce)
            .map_err(|_| StoreError::Malformed("no randomness for a nonce".into()))?;
        let aad = Self::aad(redis_key);
        let sealed = self
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Sealed)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed for `redis_key`; any other key, key name or change fails.
    pub fn open(&self, redis_key: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (version, rest) = sealed.split_first().ok_or(StoreError::Sealed)?;
        if *version != SEAL_VERSION || rest.len() < NONCE_LEN {
            return Err(StoreError::Sealed);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| StoreError::Sealed)?;
        let aad = Self::aad(redis_key);
        self.cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Sealed)
    }
}

/// The identity's part of a Redis key: SHA-256 of its canonical JSON, so key names carry
/// no e-mail address and cannot collide across kinds.
pub fn identity_id(key: &CacheKey) -> String {
    let canonical = match key {
        CacheKey::Role(name) => serde_json::json!(["role", name]),
        CacheKey::User {
            credential_type,
            credential_id,
        } => serde_json::json!(["user", credential_type, credential_id]),
        CacheKey::Admin => serde_json::json!(["admin"]),
    };
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A Looker token as the store holds it (inside the seal).
#[derive(Serialize, Deserialize)]
struct SealedToken {
    access_token: String,
    /// Wall clock: replicas share it, not their `Instant`s.
    expires_at_ms: u64,
    /// Fingerprint of the credentials it came from (see `cache::CachedToken::source`).
    source: String,
}

/// A shared token read back: its clear text, remaining lifetime and source.
pub struct SharedToken {
    pub access_token: Secret,
    pub remaining: Duration,
    pub source: String,
}

/// The rotated API3 keys every replica uses, with the version all of them report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedCredentials {
    /// The fencing token of the rotation that wrote them (0: nothing rotated yet).
    pub version: u64,
    pub roles: BTreeMap<String, SharedKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey {
    pub client_id: String,
    pub client_secret: Secret,
    pub api3_id: String,
    pub rotated_at: u64,
    /// The config's client id this key replaced: as with `rotated_credentials_file`, the
    /// stored key wins only while the config holds that key (or this one).
    pub replaces_client_id: String,
}

#[derive(Serialize, Deserialize)]
struct WireCredentials {
    version: u64,
    roles: BTreeMap<String, WireKey>,
}

#[derive(Serialize, Deserialize)]
struct WireKey {
    client_id: String,
    client_secret: String,
    api3_id: String,
    rotated_at: u64,
    replaces_client_id: String,
}

impl SharedCredentials {
    /// Puts the stored keys in place of the config's keys they replaced.
    pub fn apply(&self, roles: &mut BTreeMap<String, RoleConfig>) {
        for (name, key) in &self.roles {
            let Some(role) = roles.get_mut(name) else {
                continue;
            };
            let configured = &role.credentials.client_id;
            if configured != &key.replaces_client_id && configured != &key.client_id {
                tracing::warn!(
                    event = "shared_credentials",
                    role = name,
                    message = "the config holds a newer key than the store's rotated one; using the config's",
                    config_client_id = configured,
                    stored_client_id = key.client_id,
                );
                continue;
            }
            role.credentials.client_id = key.client_id.clone();
            role.credentials.client_secret = key.client_secret.clone();
            role.api3_id = Some(key.api3_id.clone());
            role.rotated_at = Some(key.rotated_at);
        }
    }
}

/// Releases a lock only if `ARGV[1]` still owns it.
const UNLOCK: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#;
/// Extends a lock's lease only if `ARGV[1]` still owns it.
const RENEW: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"#;
/// The fenced credentials write: only the lock's owner, and only with a fencing token
/// above the version in force (a stale leader that lost its lease writes nothing).
const WRITE_FENCED: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local current = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[2]) <= current then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[2])
return 1
"#;

/// Puts credentials back into a store that lost them (Redis restarted without its data):
/// only if no credentials are there, and the fencing counter is raised to their version.
const RESEED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[1]) then redis.call('SET', KEYS[3], ARGV[1]) end
return 1
"#;

/// A connection to the shared store: one multiplexed, self-reconnecting connection for
/// commands, plus a pub/sub connection for invalidations ([`SharedStore::invalidations`]).
pub struct SharedStore {
    client: redis::Client,
    conn: ConnectionManager,
    sealer: Sealer,
    pub config: StoreConfig,
    /// This process's id in heartbeats and lock owner values (random, not a secret).
    pub replica_id: String,
}

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SharedStore(prefix={}, replica={})",
            self.config.prefix, self.replica_id
        )
    }
}

/// Redis answers within this or the call fails (fail fast: the gateway's budget is ~2s).
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// A random hex string (lock owners, replica ids).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // A failed fill leaves zeros; SystemRandom does not fail on supported platforms.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl SharedStore {
    /// Prepares the connection without connecting: the broker starts with Redis down and
    /// connects on first use (and after every outage) on its own.
    pub fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.expose())
            .map_err(|_| StoreError::Redis("store.url is not a Redis URL".into()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)?;
        Ok(SharedStore {
            client,
            conn,
            sealer: Sealer::new(&config.key)?,
            config: config.clone(),
            replica_id: random_hex(8),
        })
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.prefix)
    }

    pub fn token_key(&self, id: &CacheKey) -> String {
        self.key(&format!("token:{}", identity_id(id)))
    }

    pub fn login_lock_key(&self, id: &CacheKey) -> String {
        self.key(&format!("login:{}", identity_id(id)))
    }

    pub fn invalidation_channel(&self) -> String {
        self.key("invalidate")
    }

    fn credentials_key(&self) -> String {
        self.key("credentials")
    }

    fn credentials_version_key(&self) -> String {
        self.key("credentials:version")
    }

    pub fn rotation_lock_key(&self) -> String {
        self.key("rotate:lock")
    }

    fn fence_key(&self) -> String {
        self.key("rotate:fence")
    }

    fn replica_key(&self, id: &str) -> String {
        self.key(&format!("replica:{id}"))
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The shared token of `id`, if any and it opens.
    pub async fn get_token(&self, id: &CacheKey) -> Result<Option<SharedToken>, StoreError> {
        let key = self.token_key(id);
        let sealed: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn())
            .await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = self.sealer.open(&key, &sealed)?;
        let t: SealedToken =
            serde_json::from_slice(&plain).map_err(|e| StoreError::Malformed(e.to_string()))?;
        let remaining = Duration::from_millis(t.expires_at_ms.saturating_sub(unix_now_ms()));
        Ok(Some(SharedToken {
            access_token: Secret::new(t.access_token),
            remaining,
            source: t.source,
        }))
    }

    /// Shares a token for `keep` (its remaining life minus the refresh margin).
    pub async fn put_token(
        &self,
        id: &CacheKey,
        token: &Secret,
        remaining: Duration,
        source: &str,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let ms = keep.as_millis() as u64;
        if ms == 0 {
            return Ok(());
        }
        let key = self.token_key(id);
        let plain = serde_json::to_vec(&SealedToken {
            access_token: token.expose().to_string(),
            expires_at_ms: unix_now_ms() + remaining.as_millis() as u64,
            source: source.to_string(),
        })
        .map_err(|e| StoreError::Malformed(e.to_string()))?;
        let sealed = self.sealer.seal(&key, &plain)?;
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(sealed)
            .arg("PX")
            .arg(ms)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Deletes the shared token and tells every replica to drop its local copy.
    pub async fn invalidate(&self, id: &CacheKey) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let () = redis::pipe()
            .cmd("DEL")
            .arg(self.token_key(id))
            .ignore()
            .cmd("PUBLISH")
            .arg(self.invalidation_channel())
            .arg(identity_id(id))
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// `SET name owner NX PX lease`: true if this caller now holds the lock.
    pub async fn try_lock(
        &self,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(name)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis().max(1) as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(set.is_some())
    }

    /// Releases the lock if `owner` still holds it (it may have expired and been taken).
    pub async fn unlock(&self, name: &str, owner: &str) -> Result<bool, StoreError> {
        let n: i64 = redis::Script::new(UNLOCK)
            .key(name)
            .arg(owner)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(n == 1)
    }

    /// Extends the lease if `owner` still holds the lock.
    pub async fn renew(
        &self,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let n: i64 = redis::Script::new(RENEW)
            .key(name)
            .arg(owner)
            .arg(lease.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(n == 1)
    }

    /// A fencing token: strictly greater than every one handed out before.
    pub async fn next_fence(&self) -> Result<u64, StoreError> {
        Ok(redis::cmd("INCR")
            .arg(self.fence_key())
            .query_async(&mut self.conn())
            .await?)
    }

    /// The rotated credentials in force (version 0 and no keys when none were written).
    pub async fn read_credentials(&self) -> Result<SharedCredentials, StoreError> {
        let key = self.credentials_key();
        let sealed: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn())
            .await?;
        let Some(sealed) = sealed else {
            return Ok(SharedCredentials::default());
        };
        let plain = self.sealer.open(&key, &sealed)?;
        let wire: WireCredentials =
            serde_json::from_slice(&plain).map_err(|e| StoreError::Malformed(e.to_string()))?;
        Ok(SharedCredentials {
            version: wire.version,
            roles: wire
                .roles
                .into_iter()
                .map(|(name, k)| {
                    (
                        name,
                        SharedKey {
                            client_id: k.client_id,
                            client_secret: Secret::new(k.client_secret),
                            api3_id: k.api3_id,
                            rotated_at: k.rotated_at,
                            replaces_client_id: k.replaces_client_id,
                        },
                    )
                })
                .collect(),
        })
    }

    fn seal_credentials(&self, creds: &SharedCredentials) -> Result<Vec<u8>, StoreError> {
        let wire = WireCredentials {
            version: creds.version,
            roles: creds
                .roles
                .iter()
                .map(|(name, k)| {
                    (
                        name.clone(),
                        WireKey {
                            client_id: k.client_id.clone(),
                            client_secret: k.client_secret.expose().to_string(),
                            api3_id: k.api3_id.clone(),
                            rotated_at: k.rotated_at,
                            replaces_client_id: k.replaces_client_id.clone(),
                        },
                    )
                })
                .collect(),
        };
        let plain = serde_json::to_vec(&wire).map_err(|e| StoreError::Malformed(e.to_string()))?;
        self.sealer.seal(&self.credentials_key(), &plain)
    }

    /// Writes `creds` back if the store has none (it lost its data). `Ok(true)`: written.
    pub async fn reseed_credentials(&self, creds: &SharedCredentials) -> Result<bool, StoreError> {
        let sealed = self.seal_credentials(creds)?;
        let n: i64 = redis::Script::new(RESEED)
            .key(self.credentials_key())
            .key(self.credentials_version_key())
            .key(self.fence_key())
            .arg(creds.version)
            .arg(sealed)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(n == 1)
    }

    /// Writes `creds` (whose version is the writer's fencing token) if `owner` still holds
    /// the rotation lock and no newer version is in force. `Ok(false)`: fenced off.
    pub async fn write_credentials(
        &self,
        owner: &str,
        creds: &SharedCredentials,
    ) -> Result<bool, StoreError> {
        let key = self.credentials_key();
        let sealed = self.seal_credentials(creds)?;
        let n: i64 = redis::Script::new(WRITE_FENCED)
            .key(self.rotation_lock_key())
            .key(&key)
            .key(self.credentials_version_key())
            .arg(owner)
            .arg(creds.version)
            .arg(sealed)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(n == 1)
    }

    /// This replica is alive and uses credentials `version`; the entry expires unless renewed.
    pub async fn heartbeat(&self, version: u64) -> Result<(), StoreError> {
        let ttl = (self.config.poll * 3).max(Duration::from_secs(2));
        let value =
            serde_json::json!({"credentials_version": version, "at": crate::log::unix_now_secs()});
        let () = redis::cmd("SET")
            .arg(self.replica_key(&self.replica_id))
            .arg(value.to_string())
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Every live replica (heartbeat not expired) and the credentials version it reported.
    pub async fn replica_versions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let pattern = self.key("replica:*");
        let mut conn = self.conn();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(100)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut out = Vec::new();
        for key in keys {
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            // Expired between SCAN and GET: not live.
            let Some(value) = value else { continue };
            let version = serde_json::from_str::<serde_json::Value>(&value)
                .ok()
                .and_then(|v| {
                    v.get("credentials_version")
                        .and_then(serde_json::Value::as_u64)
                })
                .unwrap_or(0);
            let id = key.rsplit(':').next().unwrap_or_default().to_string();
            out.push((id, version));
        }
        Ok(out)
    }

    /// Listens for invalidations until the connection drops: `on_connected` runs once
    /// subscribed, `on_message` with each identity id. Returns when the connection ends.
    pub async fn invalidations(
        &self,
        on_connected: impl Fn(),
        on_message: impl Fn(&str),
    ) -> Result<(), StoreError> {
        use futures_util::StreamExt as _;
        let connecting = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.invalidation_channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT * 2, connecting)
            .await
            .map_err(|_| StoreError::Redis("timed out subscribing".into()))??;
        on_connected();
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            if let Ok(id) = msg.get_payload::<String>() {
                on_message(&id);
            }
        }
        Err(StoreError::Redis("invalidation subscription ended".into()))
    }
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

    fn key() -> SealingKey {
        SealingKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_key_name_and_sealing_key() {
        let sealer = Sealer::new(&key()).unwrap();
        let sealed = sealer.seal("p:token:a", b"looker-token").unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"looker-token"));
        assert_eq!(sealer.open("p:token:a", &sealed).unwrap(), b"looker-token");
        assert!(matches!(
            sealer.open("p:token:b", &sealed),
            Err(StoreError::Sealed)
        ));
        let other = Sealer::new(&SealingKey([7; 32])).unwrap();
        assert!(other.open("p:token:a", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(sealer.open("p:token:a", &flipped).is_err());
        assert!(sealer.open("p:token:a", &[]).is_err());
        assert_ne!(
            sealer.seal("p:token:a", b"x").unwrap(),
            sealer.seal("p:token:a", b"x").unwrap(),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn sealing_keys_must_be_32_bytes_of_base64_and_never_print() {
        assert!(SealingKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").is_ok());
        let short = SealingKey::from_base64("c2hvcnQ=").unwrap_err();
        assert!(
            short.contains("32 bytes") && !short.contains("c2hvcnQ"),
            "{short}"
        );
        let bad = SealingKey::from_base64("not base64 at all!").unwrap_err();
        assert!(
            bad.contains("not base64") && !bad.contains("at all"),
            "{bad}"
        );
        let shown = format!("{:?}", key());
        assert!(shown.starts_with("SealingKey(sha256:") && !shown.contains("AAEC"));
    }

    #[test]
    fn identity_ids_differ_by_kind_and_hide_the_email() {
        let role = identity_id(&CacheKey::Role("a".into()));
        let user = identity_id(&CacheKey::User {
            credential_type: "email".into(),
            credential_id: "carol@example.com".into(),
        });
        assert_ne!(role, user);
        assert_eq!(role.len(), 64);
        assert!(!user.contains("carol"));
        assert_ne!(identity_id(&CacheKey::Admin), role);
    }
}
