//! Broker configuration: the TOML file format, its validation, and the compiled
//! [`BrokerConfig`] shared (immutably) by every request until the next reload.

use crate::secret::Secret;
use reqwest::Url;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Embedded demo config (DESIGN.md demo identities), used without `--config`.
pub const DEMO_CONFIG: &str = r#"
listen = "127.0.0.1:10090"
looker_url = "http://127.0.0.1:10080"
gateway_credentials = ["demo-gateway-secret"]
refresh_before = "60s"
looker_timeout = "1s"
retry_budget = "1500ms"

[roles.analyst]
client_id = "demo-analyst-id"
client_secret = "demo-analyst-secret"
user_id = "101"

[roles.viewer]
client_id = "demo-viewer-id"
client_secret = "demo-viewer-secret"
user_id = "102"

# Makes the embed calls (docs/embed.md): the simulator's admin, who may create embed secrets.
[roles.embed-admin]
client_id = "demo-admin-id"
client_secret = "demo-admin-secret"
user_id = "1"

[embed]
role = "embed-admin"
host = "127.0.0.1:10443"
# The simulator's SSO embed secret (`lookergate-looker-sim --embed-secret-file`, id "1").
secret = "demo-embed-secret"
secret_id = "1"

[sudo]
client_id = "demo-admin-id"
client_secret = "demo-admin-secret"
associative = false
"#;

/// Credential types Looker can look users up by (`/users/credential/{type}/{id}`).
pub const CREDENTIAL_TYPES: &[&str] = &["email", "google", "ldap", "oidc", "saml", "embed"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config is not valid TOML for the broker: {0}")]
    Parse(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A `"60s"`-style duration: integer followed by `ms`, `s`, `m`, `h` or `d`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl fmt::Debug for DurationStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One definition for every program: `lookergate_proto::duration`.
pub use lookergate_proto::duration::parse as parse_duration;

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lookergate_proto::duration::deserialize(d).map(DurationStr)
    }
}

/// Looker ids are strings in API 4.0 but numbers in older answers; accept both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookerId(pub String);

impl<'de> Deserialize<'de> for LookerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        Ok(LookerId(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::N(n) => n.to_string(),
        }))
    }
}

/// The file as written by operators (and by `rotate`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub looker_url: String,
    /// PEM bundle of CAs trusted for `looker_url` besides the platform's store and the
    /// compiled-in webpki roots (a private CA in front of Looker).
    pub looker_ca_file: Option<PathBuf>,
    /// Where rotation writes rotated API3 credentials when the config itself is read-only
    /// (a Kubernetes ConfigMap/Secret); read at start and on reload (see [`crate::rotate`]).
    pub rotated_credentials_file: Option<PathBuf>,
    /// Inline, or `gateway_credentials_file` (one per line), or `gateway_credentials_env`
    /// (comma-separated): exactly one of the three.
    pub gateway_credentials: Option<Vec<Secret>>,
    pub gateway_credentials_file: Option<PathBuf>,
    pub gateway_credentials_env: Option<String>,
    pub refresh_before: Option<DurationStr>,
    /// Timeout of one HTTP call to Looker.
    pub looker_timeout: Option<DurationStr>,
    /// Total time for one Looker operation including retries; keep it under the gateway's broker timeout.
    pub retry_budget: Option<DurationStr>,
    /// How often the config file is checked for changes.
    pub reload_poll: Option<DurationStr>,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleFile>,
    pub sudo: Option<SudoFile>,
    /// Embedded analytics (docs/embed.md); without it the embed endpoints answer 501.
    pub embed: Option<EmbedFile>,
    /// A store shared by broker replicas (Redis); without it everything stays in-process.
    pub store: Option<StoreFile>,
}

/// `[store]`: the Redis every replica shares (tokens, logins, rotated keys), see
/// [`crate::store`]. The URL may hold a password, so it is a secret like the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `redis://[:password@]host:port[/db]`: inline, or `url_file`, or `url_env`.
    pub url: Option<Secret>,
    pub url_file: Option<PathBuf>,
    pub url_env: Option<String>,
    /// The sealing key (32 bytes, base64): `key_file` or `key_env`, never inline.
    pub key_file: Option<PathBuf>,
    pub key_env: Option<String>,
    /// Prefix of every Redis key (several fleets may share one Redis).
    pub prefix: Option<String>,
    /// How often a replica reads the shared credentials and renews its heartbeat.
    pub poll: Option<DurationStr>,
    /// The longest a rotation waits for every live replica before deleting the old key.
    pub rotation_grace: Option<DurationStr>,
}

/// `[embed]`: which role's credentials make Looker's embed calls, and the SSO embed secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedFile {
    /// A configured role whose API3 credentials may embed (acquire, generate tokens, and
    /// create/delete embed secrets when rotating).
    pub role: String,
    /// The Looker UI host as the browser reaches it (`host[:port]`): signed SSO URLs point there.
    pub host: String,
    /// The SSO embed secret: inline, or `secret_file`, or `secret_env` (at most one; none
    /// disables signed URLs unless rotation creates one).
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    /// Looker's id of the secret (needed to delete it when rotating).
    pub secret_id: Option<LookerId>,
    /// `hmac/sha-256` (default) or `hmac/sha-1`.
    pub algorithm: Option<String>,
    pub rotate_secret_every: Option<DurationStr>,
    /// Unix seconds of the last secret rotation (written by rotation).
    pub rotated_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    pub client_id: String,
    /// Inline, or `client_secret_file`, or `client_secret_env`: exactly one of the three.
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    /// The service account's Looker user id (needed for rotation).
    pub user_id: Option<LookerId>,
    /// Id of the current `credentials_api3` key (written by rotation).
    pub api3_id: Option<LookerId>,
    pub rotate_every: Option<DurationStr>,
    /// Unix seconds of the last rotation (written by rotation).
    pub rotated_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SudoFile {
    pub client_id: String,
    /// Inline, or `client_secret_file`, or `client_secret_env`: exactly one of the three.
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    /// Passed as `associative` to `POST /login/{user_id}`.
    #[serde(default)]
    pub associative: bool,
    /// How long a credential -> Looker user id lookup is cached.
    pub user_cache_ttl: Option<DurationStr>,
    /// Credential types the gateway may ask for (default `["email"]`).
    pub credential_types: Option<Vec<String>>,
}

/// API3 client credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api3Credentials {
    pub client_id: String,
    pub client_secret: Secret,
}

impl Api3Credentials {
    /// Identifies these credentials in logs and cache entries without revealing the secret.
    pub fn fingerprint(&self) -> String {
        format!("{}/{}", self.client_id, self.client_secret.fingerprint())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleConfig {
    pub credentials: Api3Credentials,
    pub user_id: Option<String>,
    pub api3_id: Option<String>,
    pub rotate_every: Option<Duration>,
    pub rotated_at: Option<u64>,
}

/// The algorithm of SSO embed URL signatures (Looker's `EmbedSecret.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsoAlgorithm {
    HmacSha256,
    HmacSha1,
}

impl SsoAlgorithm {
    pub const NAMES: [&'static str; 2] = ["hmac/sha-256", "hmac/sha-1"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "hmac/sha-256" => Some(SsoAlgorithm::HmacSha256),
            "hmac/sha-1" => Some(SsoAlgorithm::HmacSha1),
            _ => None,
        }
    }

    /// The name as Looker writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SsoAlgorithm::HmacSha256 => "hmac/sha-256",
            SsoAlgorithm::HmacSha1 => "hmac/sha-1",
        }
    }
}

/// The SSO embed secret the broker signs URLs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSecret {
    pub secret: Secret,
    pub id: Option<String>,
}

/// Compiled `[embed]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedConfig {
    pub role: String,
    pub host: String,
    /// `None`: signed SSO URLs are disabled (501 `embed_disabled`).
    pub secret: Option<EmbedSecret>,
    pub algorithm: SsoAlgorithm,
    pub rotate_secret_every: Option<Duration>,
    pub rotated_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SudoConfig {
    pub credentials: Api3Credentials,
    pub associative: bool,
    pub user_cache_ttl: Duration,
    pub credential_types: Vec<String>,
}

/// A gateway credential kept only as its SHA-256, compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayCredential {
    pub digest: [u8; 32],
    pub fingerprint: String,
}

impl fmt::Debug for GatewayCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatewayCredential(sha256:{})", self.fingerprint)
    }
}

/// The CAs of `looker_ca_file`, read and checked at load; a changed file is a changed config.
#[derive(Clone, PartialEq, Eq)]
pub struct LookerCa {
    pub path: PathBuf,
    pem: Vec<u8>,
}

impl fmt::Debug for LookerCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LookerCa({})", self.path.display())
    }
}

impl LookerCa {
    /// Reads the PEM bundle; errors name `looker_ca_file`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let field = "looker_ca_file";
        let pem = std::fs::read(path)
            .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
        let ca = LookerCa {
            path: path.to_path_buf(),
            pem,
        };
        let certs = ca.certificates().map_err(|e| {
            invalid(
                field,
                format!("{} is not a PEM certificate bundle: {e}", path.display()),
            )
        })?;
        // rustls parses the DER only when a client is built: do it now, so a bad bundle is a
        // config error and never a client that cannot be built on reload.
        let mut builder = reqwest::Client::builder().tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
        builder.build().map_err(|e| {
            invalid(
                field,
                format!("{} holds an invalid certificate: {e}", path.display()),
            )
        })?;
        Ok(ca)
    }

    /// The bundle's certificates (at least one).
    pub fn certificates(&self) -> Result<Vec<reqwest::Certificate>, String> {
        let certs = reqwest::Certificate::from_pem_bundle(&self.pem).map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no certificate in it".into());
        }
        Ok(certs)
    }
}

/// Validated, compiled configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub looker_url: Url,
    pub looker_ca: Option<LookerCa>,
    pub rotated_credentials_file: Option<PathBuf>,
    pub gateway_credentials: Vec<GatewayCredential>,
    pub refresh_before: Duration,
    pub looker_timeout: Duration,
    pub retry_budget: Duration,
    pub reload_poll: Duration,
    pub roles: BTreeMap<String, RoleConfig>,
    pub sudo: Option<SudoConfig>,
    pub embed: Option<EmbedConfig>,
    pub store: Option<crate::store::StoreConfig>,
}

const MIN_GATEWAY_CREDENTIAL_LEN: usize = 16;

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        // Name the field and line but never quote the line: its value may be a secret.
        toml_edit::de::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            match e.span().and_then(|s| field_at(text, s.start)) {
                // serde quotes offending values ("invalid type: string \"…\""); hide them for secrets.
                Some((field, line))
                    if field.ends_with("secret") || field.contains("gateway_credentials") =>
                {
                    ConfigError::Parse(format!(
                        "{field} (line {line}): invalid value (not shown, it may be a secret)"
                    ))
                }
                Some((field, line)) => {
                    ConfigError::Parse(format!("{field} (line {line}): {message}"))
                }
                None => ConfigError::Parse(message),
            }
        })
    }

    /// `LOOKERGATE_BROKER_LISTEN`, `_LOOKER_URL`, `_GATEWAY_CREDENTIALS` (comma-separated) override the file.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        if let Some(v) = lookup("LOOKERGATE_BROKER_LISTEN") {
            self.listen = Some(v);
        }
        if let Some(v) = lookup("LOOKERGATE_BROKER_LOOKER_URL") {
            self.looker_url = v;
        }
        if let Some(v) = lookup("LOOKERGATE_BROKER_GATEWAY_CREDENTIALS") {
            // The override replaces whichever source the file named.
            self.gateway_credentials = Some(split_credentials(&v, ','));
            self.gateway_credentials_file = None;
            self.gateway_credentials_env = None;
        }
    }

    /// Validates and compiles, reading `*_file` secrets from disk and `*_env` ones from
    /// the process environment (again on every reload).
    pub fn compile(self) -> Result<BrokerConfig, ConfigError> {
        self.compile_with(&|k| std::env::var(k).ok())
    }

    /// [`ConfigFile::compile`] with `env` as the environment.
    pub fn compile_with(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<BrokerConfig, ConfigError> {
        let listen_text = self.listen.as_deref().unwrap_or("127.0.0.1:10090");
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_text:?} is not an ip:port address"),
            )
        })?;

        let looker_url = compile_looker_url(&self.looker_url)?;
        let looker_ca = self
            .looker_ca_file
            .as_deref()
            .map(LookerCa::load)
            .transpose()?;

        let gateway_secrets = match (
            self.gateway_credentials,
            self.gateway_credentials_file,
            self.gateway_credentials_env,
        ) {
            (Some(inline), None, None) => inline,
            (None, Some(path), None) => {
                split_credentials(&read_secret_file("gateway_credentials_file", &path)?, '\n')
            }
            (None, None, Some(var)) => {
                split_credentials(&read_secret_env("gateway_credentials_env", &var, env)?, ',')
            }
            _ => return Err(invalid("gateway_credentials", ONE_SOURCE)),
        };
        if gateway_secrets.is_empty() {
            return Err(invalid(
                "gateway_credentials",
                "needs at least one credential",
            ));
        }
        let mut gateway_credentials = Vec::new();
        for (i, c) in gateway_secrets.iter().enumerate() {
            if c.expose().len() < MIN_GATEWAY_CREDENTIAL_LEN {
                return Err(invalid(
                    format!("gateway_credentials[{i}]"),
                    format!("must be at least {MIN_GATEWAY_CREDENTIAL_LEN} characters"),
                ));
            }
            gateway_credentials.push(GatewayCredential {
                digest: Sha256::digest(c.expose().as_bytes()).into(),
                fingerprint: c.fingerprint(),
            });
        }

        let refresh_before = self.refresh_before.map_or(Duration::from_secs(60), |d| d.0);
        let looker_timeout = self.looker_timeout.map_or(Duration::from_secs(1), |d| d.0);
        let retry_budget = self
            .retry_budget
            .map_or(Duration::from_millis(1500), |d| d.0);
        let reload_poll = self.reload_poll.map_or(Duration::from_secs(2), |d| d.0);
        if looker_timeout.is_zero() {
            return Err(invalid("looker_timeout", "must be more than 0"));
        }
        if retry_budget < looker_timeout {
            return Err(invalid("retry_budget", "must be at least looker_timeout"));
        }
        if reload_poll < Duration::from_millis(50) {
            return Err(invalid("reload_poll", "must be at least 50ms"));
        }

        let mut roles = BTreeMap::new();
        for (name, r) in self.roles {
            let field = format!("roles.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    &field,
                    "role names use only letters, digits, '_' and '-'",
                ));
            }
            if r.client_id.trim().is_empty() {
                return Err(invalid(format!("{field}.client_id"), "must not be empty"));
            }
            let client_secret = SecretSource {
                inline: r.client_secret,
                file: r.client_secret_file,
                env: r.client_secret_env,
            }
            .resolve(&format!("{field}.client_secret"), env)?;
            if client_secret.is_empty() {
                return Err(invalid(
                    format!("{field}.client_secret"),
                    "must not be empty",
                ));
            }
            let rotate_every = r.rotate_every.map(|d| d.0);
            if let Some(every) = rotate_every {
                if every < Duration::from_secs(1) {
                    return Err(invalid(
                        format!("{field}.rotate_every"),
                        "must be at least 1s",
                    ));
                }
                if r.user_id.is_none() {
                    return Err(invalid(
                        format!("{field}.rotate_every"),
                        format!("needs {field}.user_id (the service account's Looker user id)"),
                    ));
                }
                if self.sudo.is_none() {
                    return Err(invalid(
                        format!("{field}.rotate_every"),
                        "needs a [sudo] section (an admin creates the new key)",
                    ));
                }
            }
            roles.insert(
                name,
                RoleConfig {
                    credentials: Api3Credentials {
                        client_id: r.client_id,
                        client_secret,
                    },
                    user_id: r.user_id.map(|i| i.0),
                    api3_id: r.api3_id.map(|i| i.0),
                    rotate_every,
                    rotated_at: r.rotated_at,
                },
            );
        }

        let sudo = match self.sudo {
            None => None,
            Some(s) => {
                if s.client_id.trim().is_empty() {
                    return Err(invalid("sudo.client_id", "must not be empty"));
                }
                let client_secret = SecretSource {
                    inline: s.client_secret,
                    file: s.client_secret_file,
                    env: s.client_secret_env,
                }
                .resolve("sudo.client_secret", env)?;
                if client_secret.is_empty() {
                    return Err(invalid("sudo.client_secret", "must not be empty"));
                }
                let credential_types = s.credential_types.unwrap_or_else(|| vec!["email".into()]);
                for (i, t) in credential_types.iter().enumerate() {
                    if !CREDENTIAL_TYPES.contains(&t.as_str()) {
                        return Err(invalid(
                            format!("sudo.credential_types[{i}]"),
                            format!("{t:?} is not one of {CREDENTIAL_TYPES:?}"),
                        ));
                    }
                }
                Some(SudoConfig {
                    credentials: Api3Credentials {
                        client_id: s.client_id,
                        client_secret,
                    },
                    associative: s.associative,
                    user_cache_ttl: s.user_cache_ttl.map_or(Duration::from_secs(300), |d| d.0),
                    credential_types,
                })
            }
        };

        if roles.is_empty() && sudo.is_none() {
            return Err(invalid(
                "roles",
                "configure at least one [roles.NAME] or a [sudo] section",
            ));
        }

        if let Some(store) = &self.rotated_credentials_file {
            crate::rotate::apply_rotated(store, &mut roles).map_err(|e| {
                invalid(
                    "rotated_credentials_file",
                    format!("{}: {e}", store.display()),
                )
            })?;
        }

        let mut embed = self
            .embed
            .map(|e| compile_embed(e, &roles, env))
            .transpose()?;
        if let (Some(store), Some(embed)) = (&self.rotated_credentials_file, &mut embed) {
            crate::rotate::apply_rotated_embed(store, embed).map_err(|e| {
                invalid(
                    "rotated_credentials_file",
                    format!("{}: {e}", store.display()),
                )
            })?;
        }

        let store = self.store.map(|s| compile_store(s, env)).transpose()?;
        if store.is_some() {
            if self.rotated_credentials_file.is_some() {
                return Err(invalid(
                    "rotated_credentials_file",
                    "with [store], rotated keys live in the store: remove one of the two",
                ));
            }
            if embed
                .as_ref()
                .is_some_and(|e| e.rotate_secret_every.is_some())
            {
                return Err(invalid(
                    "embed.rotate_secret_every",
                    "is not shared between replicas: not supported with [store]",
                ));
            }
        }

        Ok(BrokerConfig {
            listen,
            looker_url,
            looker_ca,
            rotated_credentials_file: self.rotated_credentials_file,
            gateway_credentials,
            refresh_before,
            looker_timeout,
            retry_budget,
            reload_poll,
            roles,
            sudo,
            embed,
            store,
        })
    }
}

fn compile_store(
    s: StoreFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::store::StoreConfig, ConfigError> {
    let url = SecretSource {
        inline: s.url,
        file: s.url_file,
        env: s.url_env,
    }
    .resolve("store.url", env)?;
    // Never quote the URL: it may carry a password.
    let parsed = redis::Client::open(url.expose()).map_err(|_| {
        invalid(
            "store.url",
            "is not a redis:// or rediss:// URL (not shown)",
        )
    })?;
    drop(parsed);
    let (field, text) = match (s.key_file, s.key_env) {
        (Some(path), None) => ("store.key_file", read_secret_file("store.key_file", &path)?),
        (None, Some(var)) => (
            "store.key_env",
            read_secret_env("store.key_env", &var, env)?,
        ),
        _ => {
            return Err(invalid(
                "store.key",
                "give exactly one of `key_file` and `key_env`",
            ))
        }
    };
    let key = crate::store::SealingKey::from_base64(text.trim())
        .map_err(|message| invalid(field, message))?;
    let prefix = s.prefix.unwrap_or_else(|| "lookergate:broker".into());
    if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c == '*') {
        return Err(invalid(
            "store.prefix",
            "must be non-empty, without spaces or '*'",
        ));
    }
    let poll = s.poll.map_or(Duration::from_secs(1), |d| d.0);
    if poll < Duration::from_millis(100) {
        return Err(invalid("store.poll", "must be at least 100ms"));
    }
    let rotation_grace = s.rotation_grace.map_or(Duration::from_secs(60), |d| d.0);
    Ok(crate::store::StoreConfig {
        url,
        key,
        prefix,
        poll,
        rotation_grace,
    })
}

fn compile_embed(
    e: EmbedFile,
    roles: &BTreeMap<String, RoleConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<EmbedConfig, ConfigError> {
    if !roles.contains_key(&e.role) {
        return Err(invalid(
            "embed.role",
            format!("no [roles.{}] is configured", e.role),
        ));
    }
    let host = e.host.trim();
    let valid_host = !host.is_empty()
        && !host.contains(['/', '@', '?', '#', '\\', ' '])
        && Url::parse(&format!("https://{host}/")).is_ok_and(|u| u.host().is_some());
    if !valid_host {
        return Err(invalid(
            "embed.host",
            format!("{host:?} is not host[:port] (no scheme, no path)"),
        ));
    }
    let algorithm = match e.algorithm.as_deref() {
        None => SsoAlgorithm::HmacSha256,
        Some(name) => SsoAlgorithm::parse(name).ok_or_else(|| {
            invalid(
                "embed.algorithm",
                format!("{name:?} is not one of {:?}", SsoAlgorithm::NAMES),
            )
        })?,
    };
    let secret = match (e.secret, e.secret_file, e.secret_env) {
        (None, None, None) => None,
        (inline, file, env_var) => {
            let secret = SecretSource {
                inline,
                file,
                env: env_var,
            }
            .resolve("embed.secret", env)?;
            if secret.is_empty() {
                return Err(invalid("embed.secret", "must not be empty"));
            }
            Some(secret)
        }
    };
    let rotate_secret_every = e.rotate_secret_every.map(|d| d.0);
    if let Some(every) = rotate_secret_every {
        if every < Duration::from_secs(1) {
            return Err(invalid("embed.rotate_secret_every", "must be at least 1s"));
        }
        if secret.is_some() && e.secret_id.is_none() {
            return Err(invalid(
                "embed.rotate_secret_every",
                "needs embed.secret_id (Looker's id of the secret, deleted after rotation)",
            ));
        }
    }
    if secret.is_none() && e.secret_id.is_some() {
        return Err(invalid("embed.secret_id", "needs embed.secret"));
    }
    Ok(EmbedConfig {
        role: e.role,
        host: host.to_owned(),
        secret: secret.map(|secret| EmbedSecret {
            secret,
            id: e.secret_id.map(|i| i.0),
        }),
        algorithm,
        rotate_secret_every,
        rotated_at: e.rotated_at,
    })
}

const ONE_SOURCE: &str = "give exactly one of the value, `<field>_file` and `<field>_env`";

/// Where one secret comes from: inline, a file (a mounted Kubernetes Secret) or an
/// environment variable. Exactly one of the three.
struct SecretSource {
    inline: Option<Secret>,
    file: Option<PathBuf>,
    env: Option<String>,
}

impl SecretSource {
    fn resolve(
        self,
        field: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Secret, ConfigError> {
        match (self.inline, self.file, self.env) {
            (Some(secret), None, None) => Ok(secret),
            (None, Some(path), None) => {
                read_secret_file(&format!("{field}_file"), &path).map(Secret::new)
            }
            (None, None, Some(var)) => {
                read_secret_env(&format!("{field}_env"), &var, env).map(Secret::new)
            }
            _ => Err(invalid(field, ONE_SOURCE)),
        }
    }
}

/// A secret file's contents without one trailing newline (`echo` and editors add it).
fn read_secret_file(field: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.to_owned())
}

fn read_secret_env(
    field: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    match env(var) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(invalid(
            field,
            format!("the environment variable {var} is not set or empty"),
        )),
    }
}

/// A list of gateway credentials in one string; blank entries are skipped.
fn split_credentials(text: &str, separator: char) -> Vec<Secret> {
    text.split(separator)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect()
}

/// The dotted key (`roles.a.client_id`) and 1-based line number at byte `offset`.
fn field_at(text: &str, offset: usize) -> Option<(String, usize)> {
    let before = text.get(..offset)?;
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1)?.trim();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string());
    let table = text
        .lines()
        .take(line_no - 1)
        .map(str::trim)
        .filter(|l| l.starts_with('['))
        .last()
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let field = match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => return None,
    };
    Some((field, line_no))
}

fn compile_looker_url(text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| invalid("looker_url", format!("{text:?}: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid("looker_url", "must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(
            "looker_url",
            "must not contain credentials, a query or a fragment",
        ));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid("looker_url", "must have a host"));
    }
    Ok(url)
}

impl BrokerConfig {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        ConfigFile::parse(text)?.compile()
    }

    pub fn demo() -> Result<Self, ConfigError> {
        Self::parse(DEMO_CONFIG)
    }

    /// Reads, applies environment overrides, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut file = ConfigFile::parse(&text)?;
        file.apply_env(|k| std::env::var(k).ok());
        file.compile()
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

    #[test]
    fn demo_config_is_valid() {
        let c = BrokerConfig::demo();
        assert!(c.is_ok(), "{c:?}");
        let Ok(c) = c else { return };
        assert_eq!(c.listen.to_string(), "127.0.0.1:10090");
        assert_eq!(c.roles.len(), 3);
        let embed = c.embed.as_ref().unwrap();
        assert_eq!(
            (embed.role.as_str(), embed.host.as_str()),
            ("embed-admin", "127.0.0.1:10443")
        );
        assert_eq!(embed.algorithm, SsoAlgorithm::HmacSha256);
        assert_eq!(c.refresh_before, Duration::from_secs(60));
    }

    fn error_of(text: &str) -> String {
        match BrokerConfig::parse(text) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let base =
            "looker_url = \"http://looker:19999\"\ngateway_credentials = [\"0123456789abcdef\"]\n";
        let role = "[roles.a]\nclient_id = \"x\"\nclient_secret = \"y\"\n";
        let table = [
            (format!("{base}{role}refresh = 1\n"), "unknown field"),
            (format!("{base}refresh_before = \"1y\"\n{role}"), "refresh_before"),
            (format!("{base}listen = \"nope\"\n{role}"), "listen"),
            (format!("looker_url = \"ftp://x\"\ngateway_credentials = [\"0123456789abcdef\"]\n{role}"), "looker_url"),
            (format!("looker_url = \"http://x\"\ngateway_credentials = [\"short\"]\n{role}"), "gateway_credentials[0]"),
            (format!("looker_url = \"http://x\"\ngateway_credentials = []\n{role}"), "gateway_credentials"),
            (format!("{base}[roles.a]\nclient_id = \"\"\nclient_secret = \"y\"\n"), "roles.a.client_id"),
            (format!("{base}{role}rotate_every = \"7d\"\n"), "roles.a.rotate_every"),
            (base.to_string(), "roles"),
            (format!("{base}[sudo]\nclient_id = \"a\"\nclient_secret = \"b\"\ncredential_types = [\"fax\"]\n"), "sudo.credential_types[0]"),
        ];
        for (text, want) in table {
            let err = error_of(&text);
            assert!(err.contains(want), "want {want:?} in {err:?} for\n{text}");
        }
    }

    #[test]
    fn config_errors_never_show_secrets() {
        let text = "looker_url = \"http://x\"\ngateway_credentials = [\"0123456789abcdef\"]\n[roles.a]\nclient_id = \"x\"\nclient_secret = \"topsecretvalue\"\nrotate_every = \"7d\"\n";
        let err = error_of(text);
        assert!(!err.contains("topsecretvalue"), "{err}");
        let text = "looker_url = \"http://x\"\ngateway_credentials = \"topsecretgateway\"\n[roles.a]\nclient_id = \"x\"\nclient_secret = [\"topsecretvalue\"]\n";
        let err = error_of(text);
        assert!(
            err.contains("gateway_credentials") && !err.contains("topsecret"),
            "{err}"
        );
        let debug = format!("{:?}", BrokerConfig::demo());
        assert!(
            !debug.contains("demo-analyst-secret")
                && !debug.contains("demo-gateway-secret")
                && !debug.contains("demo-embed-secret"),
            "{debug}"
        );
        let text = "looker_url = \"http://x\"\ngateway_credentials = [\"0123456789abcdef\"]\n[roles.a]\nclient_id = \"x\"\nclient_secret = \"y\"\n[embed]\nrole = \"a\"\nhost = \"h\"\nsecret = [\"topsecretembed\"]\n";
        let err = error_of(text);
        assert!(
            err.contains("embed.secret") && !err.contains("topsecret"),
            "{err}"
        );
    }

    #[test]
    fn embed_needs_a_configured_role_a_host_and_at_most_one_secret_source() {
        let base =
            "looker_url = \"http://looker:19999\"\ngateway_credentials = [\"0123456789abcdef\"]\n\
                    [roles.a]\nclient_id = \"x\"\nclient_secret = \"y\"\n[embed]\n";
        let ok =
            |lines: &str| compile_with_env(&format!("{base}{lines}"), &[("EMBED", "env-embed")]);
        let c = ok("role = \"a\"\nhost = \"looker.example:443\"\n").unwrap();
        let embed = c.embed.unwrap();
        assert_eq!(embed.secret, None, "no secret: SSO URLs disabled");
        assert_eq!(embed.algorithm, SsoAlgorithm::HmacSha256);
        let c = ok("role = \"a\"\nhost = \"h\"\nsecret_env = \"EMBED\"\nsecret_id = 7\nalgorithm = \"hmac/sha-1\"\nrotate_secret_every = \"30d\"\n").unwrap();
        let embed = c.embed.unwrap();
        let secret = embed.secret.unwrap();
        assert_eq!(
            (secret.secret.expose(), secret.id.as_deref()),
            ("env-embed", Some("7"))
        );
        assert_eq!(embed.algorithm, SsoAlgorithm::HmacSha1);
        assert_eq!(
            embed.rotate_secret_every,
            Some(Duration::from_secs(30 * 86400))
        );
        // Rotation may start without a secret: the first rotation creates one.
        assert!(ok("role = \"a\"\nhost = \"h\"\nrotate_secret_every = \"1d\"\n").is_ok());

        let table = [
            ("role = \"nope\"\nhost = \"h\"\n", "embed.role: no [roles.nope]"),
            ("host = \"h\"\n", "missing field `role`"),
            ("role = \"a\"\nhost = \"https://looker.example\"\n", "embed.host"),
            ("role = \"a\"\nhost = \"looker.example/x\"\n", "embed.host"),
            ("role = \"a\"\nhost = \"\"\n", "embed.host"),
            ("role = \"a\"\nhost = \"h\"\nalgorithm = \"rsa\"\n", "embed.algorithm"),
            ("role = \"a\"\nhost = \"h\"\nsecret = \"s\"\nsecret_env = \"EMBED\"\n", "embed.secret: give exactly one"),
            ("role = \"a\"\nhost = \"h\"\nsecret_env = \"UNSET\"\n", "embed.secret_env"),
            ("role = \"a\"\nhost = \"h\"\nsecret = \"\"\n", "embed.secret: must not be empty"),
            ("role = \"a\"\nhost = \"h\"\nsecret = \"s\"\nrotate_secret_every = \"1d\"\n", "embed.rotate_secret_every: needs embed.secret_id"),
            ("role = \"a\"\nhost = \"h\"\nsecret = \"s\"\nsecret_id = \"1\"\nrotate_secret_every = \"0s\"\n", "embed.rotate_secret_every"),
            ("role = \"a\"\nhost = \"h\"\nsecret_id = \"1\"\n", "embed.secret_id: needs embed.secret"),
            ("role = \"a\"\nhost = \"h\"\nsecrets = \"s\"\n", "unknown field"),
        ];
        for (lines, want) in table {
            let err = match ok(lines) {
                Ok(_) => panic!("accepted:\n{lines}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "want {want:?} in {err:?} for\n{lines}");
        }
    }

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("lookergate-broker-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, contents: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path.display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn compile_with_env(text: &str, vars: &[(&str, &str)]) -> Result<BrokerConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConfigFile::parse(text)?.compile_with(&|k| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn secrets_come_inline_from_a_file_or_from_the_environment() {
        let dir = TempDir::new("secret-sources");
        let gateway_file = dir.file("gateway", "aaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbb\n");
        let role_file = dir.file("analyst", "file-secret\n");
        let sudo_file = dir.file("admin", "sudo-file-secret\n\n");
        let text = format!(
            "looker_url = \"http://looker:19999\"\ngateway_credentials_file = {gateway_file:?}\n\
             [roles.a]\nclient_id = \"x\"\nclient_secret_file = {role_file:?}\n\
             [roles.b]\nclient_id = \"y\"\nclient_secret_env = \"B_SECRET\"\n\
             [roles.c]\nclient_id = \"z\"\nclient_secret = \"inline-secret\"\n\
             [sudo]\nclient_id = \"admin\"\nclient_secret_file = {sudo_file:?}\n"
        );
        let c = compile_with_env(&text, &[("B_SECRET", "env-secret")]).unwrap();
        let secret = |role: &str| c.roles[role].credentials.client_secret.expose().to_owned();
        assert_eq!(secret("a"), "file-secret", "one trailing newline trimmed");
        assert_eq!(secret("b"), "env-secret");
        assert_eq!(secret("c"), "inline-secret");
        let sudo = c.sudo.as_ref().unwrap();
        assert_eq!(
            sudo.credentials.client_secret.expose(),
            "sudo-file-secret\n",
            "only one trailing newline is trimmed"
        );
        let fingerprints: Vec<&str> = c
            .gateway_credentials
            .iter()
            .map(|g| g.fingerprint.as_str())
            .collect();
        assert_eq!(
            fingerprints,
            vec![
                Secret::new("aaaaaaaaaaaaaaaa").fingerprint(),
                Secret::new("bbbbbbbbbbbbbbbb").fingerprint()
            ],
            "one gateway credential per line"
        );

        let text = "looker_url = \"http://looker:19999\"\ngateway_credentials_env = \"GW\"\n\
                    [sudo]\nclient_id = \"admin\"\nclient_secret_env = \"SUDO\"\n";
        let c = compile_with_env(
            text,
            &[
                ("GW", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb"),
                ("SUDO", "s3cret"),
            ],
        )
        .unwrap();
        assert_eq!(c.gateway_credentials.len(), 2, "comma-separated");
        assert_eq!(c.sudo.unwrap().credentials.client_secret.expose(), "s3cret");
    }

    #[test]
    fn a_secret_needs_exactly_one_source_that_exists() {
        let dir = TempDir::new("secret-errors");
        let present = dir.file("present", "file-secret\n");
        let missing = dir.0.join("missing").display().to_string();
        let gateway = "gateway_credentials = [\"0123456789abcdef\"]\n";
        let url = "looker_url = \"http://looker:19999\"\n";
        let role = |lines: &str| format!("{url}{gateway}[roles.a]\nclient_id = \"x\"\n{lines}");
        let sudo = |lines: &str| format!("{url}{gateway}[sudo]\nclient_id = \"x\"\n{lines}");
        // (config, field named, words of the message)
        let table = [
            (role(""), "roles.a.client_secret", "exactly one of"),
            (
                role(&format!("client_secret = \"y\"\nclient_secret_file = {present:?}\n")),
                "roles.a.client_secret",
                "exactly one of",
            ),
            (
                role("client_secret = \"y\"\nclient_secret_env = \"SET\"\n"),
                "roles.a.client_secret",
                "exactly one of",
            ),
            (
                role(&format!("client_secret_file = {present:?}\nclient_secret_env = \"SET\"\n")),
                "roles.a.client_secret",
                "exactly one of",
            ),
            (
                role(&format!("client_secret_file = {missing:?}\n")),
                "roles.a.client_secret_file",
                "cannot read",
            ),
            (
                role("client_secret_env = \"UNSET\"\n"),
                "roles.a.client_secret_env",
                "UNSET is not set",
            ),
            (
                role("client_secret_env = \"EMPTY\"\n"),
                "roles.a.client_secret_env",
                "EMPTY is not set or empty",
            ),
            (sudo(""), "sudo.client_secret", "exactly one of"),
            (
                sudo(&format!("client_secret_file = {missing:?}\n")),
                "sudo.client_secret_file",
                "cannot read",
            ),
            (
                sudo("client_secret_env = \"UNSET\"\n"),
                "sudo.client_secret_env",
                "UNSET is not set",
            ),
            (
                format!("{url}[sudo]\nclient_id = \"x\"\nclient_secret = \"y\"\n"),
                "gateway_credentials",
                "exactly one of",
            ),
            (
                format!("{url}{gateway}gateway_credentials_env = \"SET\"\n[sudo]\nclient_id = \"x\"\nclient_secret = \"y\"\n"),
                "gateway_credentials",
                "exactly one of",
            ),
            (
                format!("{url}gateway_credentials_file = {missing:?}\n[sudo]\nclient_id = \"x\"\nclient_secret = \"y\"\n"),
                "gateway_credentials_file",
                "cannot read",
            ),
            (
                format!("{url}gateway_credentials_env = \"UNSET\"\n[sudo]\nclient_id = \"x\"\nclient_secret = \"y\"\n"),
                "gateway_credentials_env",
                "UNSET is not set",
            ),
        ];
        for (text, field, words) in table {
            let err = match compile_with_env(&text, &[("SET", "0123456789abcdef"), ("EMPTY", "")]) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.starts_with(&format!("{field}: ")) && err.contains(words),
                "want {field}: …{words}… in {err:?} for\n{text}"
            );
            assert!(!err.contains("file-secret"), "{err}");
        }
    }

    #[test]
    fn a_reload_reads_secret_files_again() {
        let dir = TempDir::new("secret-reload");
        let secret = dir.file("analyst", "first-secret\n");
        let config = dir.file(
            "broker.toml",
            &format!(
                "looker_url = \"http://looker:19999\"\ngateway_credentials = [\"0123456789abcdef\"]\n\
                 [roles.a]\nclient_id = \"x\"\nclient_secret_file = {secret:?}\n"
            ),
        );
        let first = BrokerConfig::load(Path::new(&config)).unwrap();
        dir.file("analyst", "second-secret\n");
        let second = BrokerConfig::load(Path::new(&config)).unwrap();
        assert_eq!(
            first.roles["a"].credentials.client_secret.expose(),
            "first-secret"
        );
        assert_eq!(
            second.roles["a"].credentials.client_secret.expose(),
            "second-secret"
        );
        assert_ne!(first, second, "a reload sees the new secret as a change");
    }

    #[test]
    fn store_needs_a_redis_url_and_a_32_byte_key_from_a_file_or_the_environment() {
        let dir = TempDir::new("store");
        const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let good = dir.file("good.key", &format!("{KEY}\n"));
        let short = dir.file("short.key", "c2hvcnQta2V5\n");
        let base =
            "looker_url = \"http://looker:19999\"\ngateway_credentials = [\"0123456789abcdef\"]\n\
                    [roles.a]\nclient_id = \"x\"\nclient_secret = \"y\"\n";
        let env = [
            ("KEY", KEY),
            ("BAD", "not base64 at all!"),
            ("URL", "redis://:hunter2@127.0.0.1:6379/0"),
        ];
        let store = |lines: &str| compile_with_env(&format!("{base}[store]\n{lines}"), &env);
        let c = store(&format!(
            "url = \"redis://127.0.0.1:6379\"\nkey_file = {good:?}\n"
        ))
        .unwrap();
        let s = c.store.unwrap();
        assert_eq!(
            (s.prefix.as_str(), s.poll),
            ("lookergate:broker", Duration::from_secs(1))
        );
        assert_eq!(s.rotation_grace, Duration::from_secs(60));
        let c =
            store("url_env = \"URL\"\nkey_env = \"KEY\"\nprefix = \"fleet-a\"\npoll = \"500ms\"\n")
                .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(KEY),
            "{shown}"
        );
        assert!(
            BrokerConfig::parse(base).unwrap().store.is_none(),
            "no [store]: none"
        );

        let url = "url = \"redis://127.0.0.1:6379\"\n";
        let table = [
            (
                format!("{url}key_file = {short:?}\n"),
                "store.key_file: must decode to 32 bytes",
            ),
            (
                format!("{url}key_env = \"BAD\"\n"),
                "store.key_env: is not base64",
            ),
            (
                format!("{url}key_env = \"UNSET\"\n"),
                "store.key_env: the environment variable UNSET",
            ),
            (
                url.to_string(),
                "store.key: give exactly one of `key_file` and `key_env`",
            ),
            (
                format!("{url}key_env = \"KEY\"\nkey_file = {good:?}\n"),
                "store.key: give exactly one",
            ),
            (format!("{url}key = \"{KEY}\"\n"), "unknown field"),
            (
                "key_env = \"KEY\"\n".to_string(),
                "store.url: give exactly one",
            ),
            (
                "url = \"http://127.0.0.1:6379\"\nkey_env = \"KEY\"\n".to_string(),
                "store.url: is not a redis",
            ),
            (
                format!("{url}key_env = \"KEY\"\npoll = \"10ms\"\n"),
                "store.poll",
            ),
            (
                format!("{url}key_env = \"KEY\"\nprefix = \"a b\"\n"),
                "store.prefix",
            ),
        ];
        for (lines, want) in table {
            let err = match store(&lines) {
                Ok(_) => panic!("accepted:\n{lines}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "want {want:?} in {err:?} for\n{lines}");
            assert!(!err.contains(KEY) && !err.contains("c2hvcnQta2V5"), "{err}");
        }
        let both = format!(
            "rotated_credentials_file = \"/tmp/r.toml\"\n{base}[store]\n{url}key_env = \"KEY\"\n"
        );
        let err = compile_with_env(&both, &env).unwrap_err().to_string();
        assert!(
            err.starts_with("rotated_credentials_file: with [store]"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_listen_and_credentials() {
        let mut file = match ConfigFile::parse(DEMO_CONFIG) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        file.apply_env(|k| match k {
            "LOOKERGATE_BROKER_LISTEN" => Some("127.0.0.1:0".into()),
            "LOOKERGATE_BROKER_GATEWAY_CREDENTIALS" => {
                Some("aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb".into())
            }
            _ => None,
        });
        let c = file.compile();
        assert!(
            matches!(&c, Ok(c) if c.listen.port() == 0 && c.gateway_credentials.len() == 2),
            "{c:?}"
        );
    }
}
