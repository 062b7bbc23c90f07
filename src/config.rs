//! Plugin configuration: parsed from JSON (unknown fields are errors), validated with
//! errors that name the field, then compiled once into an immutable [`Gateway`].

use std::collections::HashSet;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
use crate::jwt::{Algorithm, IssuerVerifier, KeySet};
use crate::looker::OperationTable;
use crate::policy::embed::{Embed, RawEmbed};
use crate::policy::{Policy, RawPolicy};

/// The configuration versions this filter understands.
pub const SUPPORTED_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "PluginConfig")
)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default = "default_version")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1)))]
    pub version: u32,
    pub issuers: Vec<RawIssuer>,
    pub policy: RawPolicy,
    /// Embedded analytics: the embed endpoints and the profiles embed rules name.
    #[serde(default)]
    pub embed: Option<RawEmbed>,
    pub broker: RawBroker,
    /// The rate limit service (Envoy RLS v3) that keeps `scope: "global"` limits;
    /// required when any rule has one.
    #[serde(default)]
    pub rate_limit_service: Option<RawRateLimitService>,
    #[serde(default)]
    pub looker_token: RawLookerToken,
    /// Requests under this prefix must be Looker API 4.0 operations.
    #[serde(default = "default_api_prefix")]
    pub api_prefix: String,
    /// Most bytes of a request body read when a rule inspects a query.
    #[serde(default = "default_max_body_bytes")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1024, max = 16777216)))]
    pub max_body_bytes: usize,
    /// The HTTP connection manager's `xff_num_trusted_hops`: `x-forwarded-for` reaches
    /// Looker with only its last `xff_num_trusted_hops + 1` entries (what Envoy and the
    /// trusted proxies in front of it appended), never what the client wrote before them.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 10)))]
    pub xff_num_trusted_hops: usize,
}

fn default_api_prefix() -> String {
    crate::looker::API_PREFIX.to_owned()
}

fn default_max_body_bytes() -> usize {
    256 * 1024
}

fn default_version() -> u32 {
    SUPPORTED_VERSION
}

#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Issuer")
)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Inline JWKS.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// JWKS URL, fetched through `cluster`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Find `jwks_uri` in `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// The Envoy cluster that reaches the IdP (for `jwks_uri` / `discovery`).
    #[serde(default)]
    pub cluster: Option<String>,
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(
        default = "default_jwks_refresh",
        deserialize_with = "duration::deserialize"
    )]
    pub jwks_refresh: Duration,
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(
        default = "default_jwks_max_stale",
        deserialize_with = "duration::deserialize"
    )]
    pub jwks_max_stale: Duration,
    /// At most one refetch per this interval when a token names an unknown `kid`.
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(
        default = "default_unknown_kid_refetch",
        deserialize_with = "duration::deserialize"
    )]
    pub unknown_kid_refetch: Duration,
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(
        default = "default_jwks_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub jwks_timeout: Duration,
    #[serde(default)]
    pub algorithms: Option<Vec<Algorithm>>,
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(default = "default_skew", deserialize_with = "duration::deserialize")]
    pub clock_skew: Duration,
    #[serde(default)]
    pub from: Option<RawTokenSource>,
    #[serde(default = "default_max_token_bytes")]
    #[cfg_attr(feature = "schema", schemars(range(min = 256, max = 65536)))]
    pub max_token_bytes: usize,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}

fn default_jwks_max_stale() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_unknown_kid_refetch() -> Duration {
    Duration::from_secs(30)
}

fn default_jwks_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_skew() -> Duration {
    Duration::from_secs(30)
}

fn default_max_token_bytes() -> usize {
    8192
}

#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "TokenSource")
)]
#[serde(deny_unknown_fields)]
pub struct RawTokenSource {
    pub header: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Broker")
)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    pub cluster: String,
    #[serde(default = "default_broker_authority")]
    pub authority: String,
    #[serde(default = "default_broker_path")]
    pub path: String,
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(
        default = "default_broker_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub credential: Option<Secret>,
    /// The environment variable of the Wasm VM that holds the credential (Envoy's
    /// `vm_config.environment_variables`), so it stays out of the plugin config.
    #[serde(default)]
    pub credential_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "RateLimitService")
)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimitService {
    /// The Envoy cluster of the service (HTTP/2: `http2_protocol_options`).
    pub cluster: String,
    /// The RLS domain (the service's namespace for these limits).
    #[serde(default = "default_rls_domain")]
    pub domain: String,
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(
        default = "default_rls_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
}

fn default_rls_domain() -> String {
    "lookergate".to_owned()
}

fn default_rls_timeout() -> Duration {
    Duration::from_millis(200)
}

/// How the filter reaches the rate limit service (`dispatch_grpc_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitServiceSettings {
    pub cluster: String,
    pub domain: String,
    pub timeout: Duration,
}

/// A secret from the configuration: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn default_broker_authority() -> String {
    "lookergate-broker".to_owned()
}

fn default_broker_path() -> String {
    "/v1/token".to_owned()
}

fn default_broker_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "LookerToken")
)]
#[serde(deny_unknown_fields)]
pub struct RawLookerToken {
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(
        default = "default_refresh_before",
        deserialize_with = "duration::deserialize"
    )]
    pub refresh_before: Duration,
}

impl Default for RawLookerToken {
    fn default() -> Self {
        RawLookerToken {
            refresh_before: default_refresh_before(),
        }
    }
}

fn default_refresh_before() -> Duration {
    Duration::from_secs(60)
}

/// Where an issuer's token is carried: a header, with an optional scheme prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    /// Lower-case header name.
    pub header: String,
    /// Scheme prefix such as `Bearer ` (matched case-insensitively), if any.
    pub prefix: Option<String>,
}

/// An `http(s)://authority/path` URL, split for a callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchUrl {
    pub authority: String,
    pub path: String,
}

impl FetchUrl {
    pub fn parse(url: &str) -> Result<FetchUrl, String> {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || !authority.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!("{url:?} has no valid host"));
        }
        Ok(FetchUrl {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Where an issuer's keys come from when they are not inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKeys {
    pub cluster: String,
    /// The JWKS URL, or `None` until discovery finds it.
    pub jwks_url: Option<FetchUrl>,
    /// `{issuer}/.well-known/openid-configuration` when discovery is on.
    pub discovery_url: Option<FetchUrl>,
    pub refresh: Duration,
    pub max_stale: Duration,
    pub unknown_kid_refetch: Duration,
    pub timeout: Duration,
}

/// What every verifier of the issuer is built from (with inline or fetched keys).
#[derive(Debug, Clone)]
struct VerifierSettings {
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    clock_skew_secs: u64,
    max_token_bytes: usize,
}

/// Why an issuer could not verify a token.
#[derive(Debug)]
pub enum IssuerError {
    /// No keys yet (remote JWKS not fetched), or the last good ones are too old.
    NoKeys,
    Token(crate::jwt::JwtError),
}

/// One trusted issuer, compiled.
pub struct Issuer {
    pub issuer: String,
    pub source: TokenSource,
    /// `None` for inline keys.
    pub remote: Option<RemoteKeys>,
    settings: VerifierSettings,
    /// Inline keys, decoded at load. Fetched keys live in each worker's `KeyRing`.
    pub inline_keys: Option<Rc<KeySet>>,
}

impl Issuer {
    /// A verifier of this issuer's tokens with `keys` (its cache starts empty).
    pub fn verifier(&self, keys: Rc<KeySet>) -> IssuerVerifier {
        let s = &self.settings;
        IssuerVerifier::new(
            self.issuer.clone(),
            s.audiences.clone(),
            s.algorithms.clone(),
            s.clock_skew_secs,
            s.max_token_bytes,
            keys,
        )
    }
}

/// How the gateway reaches the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    /// Presented as `Authorization: Bearer …`; never logged.
    pub credential: Secret,
}

/// The compiled, immutable configuration shared by every request on a worker.
pub struct Gateway {
    pub issuers: Vec<Issuer>,
    pub policy: Policy,
    /// Looker API 4.0 operations, resolved per request through a trie.
    pub operations: OperationTable,
    pub api_prefix: String,
    pub max_body_bytes: usize,
    /// `x-forwarded-for` entries kept, from the end: trusted hops + Envoy's own.
    pub forwarded_for_kept: usize,
    pub broker: BrokerSettings,
    /// The rate limit service, when the config has one (required by global limits).
    pub rate_limit_service: Option<RateLimitServiceSettings>,
    /// The embed endpoints and profiles, when the config has an `embed` section.
    pub embed: Option<Embed>,
    pub refresh_before: Duration,
    /// Distinct token header names, in issuer order.
    pub token_headers: Vec<String>,
    /// Non-fatal notes from loading (skipped JWKS keys), to log once.
    pub warnings: Vec<String>,
}

/// A configuration error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl Gateway {
    /// Parses and compiles the plugin configuration bytes; `broker.credential_env` is
    /// read from the process environment (in the filter: the Wasm VM's, which Envoy's
    /// `vm_config.environment_variables` fills).
    pub fn load(bytes: &[u8]) -> Result<Gateway, ConfigError> {
        Gateway::load_with_env(bytes, &|name| std::env::var(name).ok())
    }

    /// [`Gateway::load`] with `env` as the environment.
    pub fn load_with_env(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Gateway, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            err(field, e.into_inner().to_string())
        })?;
        Gateway::compile(raw, env)
    }

    pub fn compile(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Gateway, ConfigError> {
        if raw.version != SUPPORTED_VERSION {
            return Err(err(
                "version",
                format!("unsupported configuration version {} (this filter supports {SUPPORTED_VERSION})", raw.version),
            ));
        }
        if raw.issuers.is_empty() {
            return Err(err("issuers", "at least one issuer is required"));
        }
        let mut issuers = Vec::with_capacity(raw.issuers.len());
        let mut warnings = Vec::new();
        let mut seen = HashSet::new();
        for (i, ri) in raw.issuers.into_iter().enumerate() {
            let at = |f: &str| format!("issuers[{i}].{f}");
            if ri.issuer.trim().is_empty() {
                return Err(err(at("issuer"), "must not be empty"));
            }
            if !seen.insert(ri.issuer.clone()) {
                return Err(err(
                    at("issuer"),
                    format!("issuer {:?} is listed twice", ri.issuer),
                ));
            }
            if ri.audiences.is_empty() || ri.audiences.iter().any(|a| a.is_empty()) {
                return Err(err(
                    at("audiences"),
                    "needs at least one non-empty audience",
                ));
            }
            if ri.clock_skew > Duration::from_secs(300) {
                return Err(err(at("clock_skew"), "must be at most 5m"));
            }
            if !(256..=65_536).contains(&ri.max_token_bytes) {
                return Err(err(at("max_token_bytes"), "must be between 256 and 65536"));
            }
            let algorithms = match ri.algorithms {
                Some(list) if list.is_empty() => {
                    return Err(err(at("algorithms"), "must not be empty"))
                }
                Some(list) => list,
                None => Algorithm::all().to_vec(),
            };
            let source = match ri.from {
                None => TokenSource {
                    header: "authorization".to_owned(),
                    prefix: Some("Bearer ".to_owned()),
                },
                Some(src) => {
                    let header = src.header.to_ascii_lowercase();
                    if header.is_empty()
                        || !header
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(err(
                            at("from.header"),
                            format!("{:?} is not a header name", src.header),
                        ));
                    }
                    if header.starts_with("x-lookergate-") || header == "cookie" {
                        return Err(err(
                            at("from.header"),
                            "may not be a gateway-owned header or cookie",
                        ));
                    }
                    let prefix = match src.prefix {
                        Some(p) if p.is_empty() => None,
                        Some(p) => Some(p),
                        None if header == "authorization" => Some("Bearer ".to_owned()),
                        None => None,
                    };
                    TokenSource { header, prefix }
                }
            };
            let settings = VerifierSettings {
                audiences: ri.audiences,
                algorithms,
                clock_skew_secs: ri.clock_skew.as_secs(),
                max_token_bytes: ri.max_token_bytes,
            };
            let remote = match (ri.jwks.is_some(), ri.jwks_uri.is_some(), ri.discovery) {
                (true, false, false) => None,
                (false, true, false) | (false, false, true) => {
                    let cluster = ri
                        .cluster
                        .filter(|c| !c.trim().is_empty())
                        .ok_or_else(|| err(at("cluster"), "names the Envoy cluster that reaches the IdP (needed for jwks_uri or discovery)"))?;
                    let jwks_url = match &ri.jwks_uri {
                        Some(u) => Some(FetchUrl::parse(u).map_err(|e| err(at("jwks_uri"), e))?),
                        None => None,
                    };
                    let discovery_url = if ri.discovery {
                        let url = format!(
                            "{}/.well-known/openid-configuration",
                            ri.issuer.trim_end_matches('/')
                        );
                        Some(FetchUrl::parse(&url).map_err(|e| {
                            err(
                                at("issuer"),
                                format!("discovery needs an http(s) issuer: {e}"),
                            )
                        })?)
                    } else {
                        None
                    };
                    if ri.jwks_refresh < Duration::from_secs(10) {
                        return Err(err(at("jwks_refresh"), "must be at least 10s"));
                    }
                    if ri.jwks_max_stale < ri.jwks_refresh {
                        return Err(err(at("jwks_max_stale"), "must be at least jwks_refresh"));
                    }
                    if ri.jwks_timeout < Duration::from_millis(100)
                        || ri.jwks_timeout > Duration::from_secs(30)
                    {
                        return Err(err(at("jwks_timeout"), "must be between 100ms and 30s"));
                    }
                    Some(RemoteKeys {
                        cluster,
                        jwks_url,
                        discovery_url,
                        refresh: ri.jwks_refresh,
                        max_stale: ri.jwks_max_stale,
                        unknown_kid_refetch: ri.unknown_kid_refetch,
                        timeout: ri.jwks_timeout,
                    })
                }
                (false, false, false) => {
                    return Err(err(
                        at("jwks"),
                        "an issuer needs keys: `jwks` (inline), `jwks_uri` or `discovery: true`",
                    ))
                }
                _ => {
                    return Err(err(
                        at("jwks"),
                        "give exactly one of `jwks`, `jwks_uri` and `discovery`",
                    ))
                }
            };
            let inline_keys = match &ri.jwks {
                Some(jwks) => {
                    let (keys, skipped) =
                        KeySet::from_jwks(jwks).map_err(|e| err(at("jwks"), e.to_string()))?;
                    warnings.extend(
                        skipped
                            .into_iter()
                            .map(|w| format!("issuers[{i}].jwks: {w}")),
                    );
                    Some(Rc::new(keys))
                }
                None => None,
            };
            issuers.push(Issuer {
                issuer: ri.issuer,
                source,
                remote,
                settings,
                inline_keys,
            });
        }
        let operations =
            OperationTable::looker_4_0().map_err(|e| err("(built-in operation table)", e))?;
        let api_prefix = raw.api_prefix.trim_end_matches('/').to_owned();
        if !api_prefix.starts_with('/') {
            return Err(err("api_prefix", "must start with '/'"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&raw.max_body_bytes) {
            return Err(err("max_body_bytes", "must be between 1024 and 16777216"));
        }
        if raw.xff_num_trusted_hops > 10 {
            return Err(err("xff_num_trusted_hops", "must be between 0 and 10"));
        }
        let embed = match &raw.embed {
            Some(section) => Some(
                Embed::compile(section, &api_prefix)
                    .map_err(|(field, message)| err(field, message))?,
            ),
            None => None,
        };
        let profiles = embed.as_ref().map(Embed::profile_names).unwrap_or_default();
        let issuer_names: Vec<&str> = issuers.iter().map(|i| i.issuer.as_str()).collect();
        let policy = Policy::compile(&raw.policy, &operations, &issuer_names, &profiles).map_err(
            |e| match e.split_once(": ") {
                Some((field, message)) => err(field, message),
                None => err("policy", e),
            },
        )?;
        warnings.extend(policy.warnings(&operations));
        let b = raw.broker;
        if b.cluster.trim().is_empty() {
            return Err(err(
                "broker.cluster",
                "must name the Envoy cluster of the broker",
            ));
        }
        if !b.path.starts_with('/') {
            return Err(err("broker.path", "must start with '/'"));
        }
        if b.timeout < Duration::from_millis(50) || b.timeout > Duration::from_secs(60) {
            return Err(err("broker.timeout", "must be between 50ms and 60s"));
        }
        let (credential, credential_field) = match (b.credential, b.credential_env) {
            (Some(credential), None) => (credential, "broker.credential"),
            (None, Some(name)) => match env(&name) {
                Some(value) if !value.is_empty() => (Secret(value), "broker.credential_env"),
                _ => {
                    return Err(err(
                        "broker.credential_env",
                        format!("the environment variable {name} is not set or empty (Envoy: vm_config.environment_variables)"),
                    ))
                }
            },
            _ => {
                return Err(err(
                    "broker.credential",
                    "give exactly one of `credential` and `credential_env`",
                ))
            }
        };
        let text = credential.expose();
        if text.len() < 16 || !text.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(err(
                credential_field,
                "must be at least 16 printable characters without spaces",
            ));
        }
        let rate_limit_service = compile_rate_limit_service(raw.rate_limit_service, &policy)?;
        let refresh_before = raw.looker_token.refresh_before;
        if refresh_before > Duration::from_secs(3600) {
            return Err(err("looker_token.refresh_before", "must be at most 1h"));
        }
        let mut token_headers: Vec<String> = Vec::new();
        for issuer in &issuers {
            if !token_headers.contains(&issuer.source.header) {
                token_headers.push(issuer.source.header.clone());
            }
        }
        Ok(Gateway {
            issuers,
            policy,
            operations,
            api_prefix,
            max_body_bytes: raw.max_body_bytes,
            forwarded_for_kept: raw.xff_num_trusted_hops + 1,
            broker: BrokerSettings {
                cluster: b.cluster,
                authority: b.authority,
                path: b.path,
                timeout: b.timeout,
                credential,
            },
            rate_limit_service,
            embed,
            refresh_before,
            token_headers,
            warnings,
        })
    }
}

/// The `rate_limit_service` section: checked, and required when a rule is global.
fn compile_rate_limit_service(
    raw: Option<RawRateLimitService>,
    policy: &Policy,
) -> Result<Option<RateLimitServiceSettings>, ConfigError> {
    let global = policy
        .rules()
        .iter()
        .find(|r| r.rate_limit.as_ref().is_some_and(|l| l.is_global()));
    let Some(raw) = raw else {
        return match global {
            Some(rule) => Err(err(
                "rate_limit_service",
                format!("required: rule {:?} has a global rate_limit (give the cluster of the rate limit service)", rule.name),
            )),
            None => Ok(None),
        };
    };
    if raw.cluster.trim().is_empty() {
        return Err(err(
            "rate_limit_service.cluster",
            "must name the Envoy cluster of the rate limit service",
        ));
    }
    if raw.domain.trim().is_empty() {
        return Err(err("rate_limit_service.domain", "must not be empty"));
    }
    if raw.timeout < Duration::from_millis(10) || raw.timeout > Duration::from_secs(10) {
        return Err(err(
            "rate_limit_service.timeout",
            "must be between 10ms and 10s",
        ));
    }
    Ok(Some(RateLimitServiceSettings {
        cluster: raw.cluster,
        domain: raw.domain,
        timeout: raw.timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::TestIssuer;
    use serde_json::{json, Value};

    fn base() -> Value {
        json!({
            "issuers": [{"issuer": "https://idp.test", "audiences": ["looker-api"], "jwks": TestIssuer::new().jwks}],
            "policy": {"rules": [
                {"name": "first", "paths": ["/api/4.0/**"], "allow": {"role": "analyst"}},
                {"name": "second", "operations": ["me"], "allow": {"role": "viewer"}}
            ]},
            "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789"},
            "max_body_bytes": 4096,
            "xff_num_trusted_hops": 1
        })
    }

    fn load(config: &Value) -> Result<Gateway, ConfigError> {
        Gateway::load(config.to_string().as_bytes())
    }

    #[test]
    fn embed_sections_compile_and_their_errors_name_the_field() {
        let mut config = base();
        config["embed"] = json!({"profiles": {"customer": {
            "permissions": ["access_data"], "models": ["thelook"]}}});
        config["policy"]["rules"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "embed", "allow": {"embed": "customer"}}));
        let gateway = load(&config).unwrap();
        let embed = gateway.embed.as_ref().unwrap();
        assert_eq!(embed.path_prefix, "/lookergate/embed");
        assert!(embed.profile("customer").is_some());
        assert!(load(&base()).unwrap().embed.is_none());

        let mut bad = config.clone();
        bad["embed"]["profiles"]["customer"]["permissions"] = json!(["access_data", "admin"]);
        let err = load(&bad).err().unwrap();
        assert_eq!(
            err.to_string(),
            "embed.profiles.customer.permissions[1]: \"admin\" is not a permission Looker grants embed users"
        );
        let mut bad = config.clone();
        bad["embed"]["path_prefix"] = json!("/api/4.0/embed");
        assert_eq!(load(&bad).err().unwrap().field, "embed.path_prefix");
        let mut bad = config.clone();
        bad["policy"]["rules"][2]["allow"]["embed"] = json!("other");
        assert_eq!(
            load(&bad).err().unwrap().field,
            "policy.rules[2].allow.embed"
        );
        let mut bad = config;
        bad["embed"]["profiles"]["customer"]["colour"] = json!("red");
        assert!(load(&bad)
            .err()
            .unwrap()
            .field
            .starts_with("embed.profiles"));
    }

    #[test]
    fn a_valid_config_compiles_with_its_settings_and_defaults() {
        let gateway = load(&base()).unwrap();
        assert_eq!(gateway.issuers.len(), 1);
        assert!(
            gateway.issuers[0].inline_keys.is_some(),
            "inline keys compiled"
        );
        assert!(gateway.issuers[0].remote.is_none());
        assert_eq!(gateway.max_body_bytes, 4096);
        assert_eq!(gateway.forwarded_for_kept, 2, "trusted hops + Envoy's own");
        assert_eq!(gateway.broker.timeout, Duration::from_secs(2));
        assert_eq!(gateway.broker.path, "/v1/token");
        assert_eq!(gateway.token_headers, vec!["authorization".to_owned()]);
        assert_eq!(format!("{:?}", gateway.broker.credential), "<redacted>");
    }

    #[test]
    fn the_broker_credential_can_come_from_the_vm_environment() {
        let mut config = base();
        let broker = config["broker"].as_object_mut().unwrap();
        broker.remove("credential");
        broker.insert(
            "credential_env".into(),
            json!("LOOKERGATE_BROKER_CREDENTIAL"),
        );
        let with = |value: Option<&'static str>| {
            move |name: &str| {
                (name == "LOOKERGATE_BROKER_CREDENTIAL")
                    .then_some(value)
                    .flatten()
                    .map(str::to_owned)
            }
        };
        let load_env = |config: &Value, value: Option<&'static str>| {
            Gateway::load_with_env(config.to_string().as_bytes(), &with(value))
        };

        let gateway = load_env(&config, Some("env-secret-0123456789")).unwrap();
        assert_eq!(gateway.broker.credential.expose(), "env-secret-0123456789");

        // (value of the variable, field named, words of the message)
        let cases = [
            (
                None,
                "broker.credential_env",
                "LOOKERGATE_BROKER_CREDENTIAL is not set",
            ),
            (Some(""), "broker.credential_env", "not set or empty"),
            (
                Some("too-short"),
                "broker.credential_env",
                "at least 16 printable",
            ),
            (
                Some("an env secret with spaces"),
                "broker.credential_env",
                "without spaces",
            ),
        ];
        for (value, field, words) in cases {
            let error = match load_env(&config, value) {
                Ok(_) => panic!("{value:?}: loaded"),
                Err(error) => error,
            };
            assert_eq!(error.field, field, "{value:?}: {error}");
            assert!(error.message.contains(words), "{value:?}: {error}");
            assert!(
                !error.to_string().contains("too-short"),
                "never shows the value: {error}"
            );
        }

        config["broker"]["credential"] = json!("gateway-secret-0123456789");
        let error = match load_env(&config, Some("env-secret-0123456789")) {
            Ok(_) => panic!("both: loaded"),
            Err(error) => error,
        };
        assert_eq!(error.field, "broker.credential");
        assert!(error.message.contains("exactly one of"), "{error}");
    }

    #[test]
    fn global_limits_need_the_rate_limit_service_and_errors_name_the_field() {
        let global =
            json!({"per_second": 5, "burst": 10, "db_queries_per_minute": 10, "scope": "global"});
        let service = json!({"cluster": "lookergate_rls"});
        // (rule's rate_limit, rate_limit_service, field named, words of the message)
        let cases: Vec<(Value, Option<Value>, &str, &str)> = vec![
            (
                global.clone(),
                None,
                "rate_limit_service",
                "rule \"first\" has a global rate_limit",
            ),
            (
                json!({"per_second": 5, "burst": 10, "scope": "everywhere"}),
                Some(service.clone()),
                "policy.rules[0].rate_limit.scope",
                "unknown variant",
            ),
            (
                json!({"per_second": 5, "burst": 10, "scope": "global", "on_unavailable": "allow"}),
                Some(service.clone()),
                "policy.rules[0].rate_limit.on_unavailable",
                "unknown variant",
            ),
            (
                json!({"per_second": 5, "burst": 10, "on_unavailable": "local"}),
                None,
                "policy.rules[0].rate_limit",
                "on_unavailable applies to scope \"global\" only",
            ),
            (
                global.clone(),
                Some(json!({"cluster": " "})),
                "rate_limit_service.cluster",
                "must name",
            ),
            (
                global.clone(),
                Some(json!({"cluster": "c", "timeout": "5ms"})),
                "rate_limit_service.timeout",
                "between 10ms and 10s",
            ),
            (
                global.clone(),
                Some(json!({"cluster": "c", "domain": ""})),
                "rate_limit_service.domain",
                "must not be empty",
            ),
            (
                global.clone(),
                Some(json!({"cluster": "c", "port": 1})),
                "rate_limit_service.port",
                "unknown field",
            ),
        ];
        for (limit, service, field, words) in cases {
            let mut config = base();
            config["policy"]["rules"][0]["rate_limit"] = limit.clone();
            if let Some(service) = service {
                config["rate_limit_service"] = service;
            }
            let error = match load(&config) {
                Ok(_) => panic!("{limit} loaded"),
                Err(error) => error,
            };
            assert_eq!(error.field, field, "{limit}: {error}");
            assert!(error.message.contains(words), "{limit}: {error}");
        }
        let mut config = base();
        config["policy"]["rules"][0]["rate_limit"] = global;
        config["rate_limit_service"] = service;
        let gateway = load(&config).unwrap();
        assert_eq!(
            gateway.rate_limit_service,
            Some(RateLimitServiceSettings {
                cluster: "lookergate_rls".into(),
                domain: "lookergate".into(),
                timeout: Duration::from_millis(200),
            })
        );
        let limit = gateway.policy.rules()[0].rate_limit.clone().unwrap();
        assert!(limit.is_global());
        assert_eq!(
            limit.on_unavailable(),
            crate::ratelimit::OnUnavailable::Deny
        );
        // A local-only config needs no service.
        assert_eq!(load(&base()).unwrap().rate_limit_service, None);
    }

    #[test]
    fn load_errors_name_the_field() {
        // (JSON pointer, new value or `None` to remove it, field named, words of the message)
        let cases: Vec<(&str, Option<Value>, &str, &str)> = vec![
            (
                "/issuers",
                Some(json!([])),
                "issuers",
                "at least one issuer",
            ),
            ("/issuers", None, ".", "missing field `issuers`"),
            (
                "/issuers/0/issuer",
                Some(json!(" ")),
                "issuers[0].issuer",
                "must not be empty",
            ),
            (
                "/issuers/0/audiences",
                Some(json!([])),
                "issuers[0].audiences",
                "non-empty audience",
            ),
            (
                "/issuers/0/clock_skew",
                Some(json!("30x")),
                "issuers[0].clock_skew",
                "unknown unit",
            ),
            (
                "/issuers/0/jwks",
                None,
                "issuers[0].jwks",
                "an issuer needs keys",
            ),
            (
                "/issuers/0/jwks_uri",
                Some(json!("https://idp.test/keys")),
                "issuers[0].jwks",
                "exactly one of",
            ),
            (
                "/broker/credential",
                Some(json!("too-short")),
                "broker.credential",
                "at least 16 printable",
            ),
            (
                "/broker/credential",
                Some(json!("a secret with spaces in it")),
                "broker.credential",
                "without spaces",
            ),
            (
                "/broker/credential",
                Some(json!(42)),
                "broker.credential",
                "invalid type",
            ),
            (
                "/broker/credential",
                None,
                "broker.credential",
                "exactly one of `credential` and `credential_env`",
            ),
            (
                "/max_body_bytes",
                Some(json!(1023)),
                "max_body_bytes",
                "between 1024 and 16777216",
            ),
            (
                "/max_body_bytes",
                Some(json!(16_777_217)),
                "max_body_bytes",
                "between 1024 and 16777216",
            ),
            (
                "/max_body_bytes",
                Some(json!("4k")),
                "max_body_bytes",
                "invalid type",
            ),
            (
                "/xff_num_trusted_hops",
                Some(json!(11)),
                "xff_num_trusted_hops",
                "between 0 and 10",
            ),
            (
                "/xff_num_trusted_hops",
                Some(json!(-1)),
                "xff_num_trusted_hops",
                "invalid value",
            ),
            (
                "/policy/rules/1/name",
                Some(json!("first")),
                "policy.rules[1].name",
                "duplicate rule name",
            ),
            (
                "/policy/rules/1/operations",
                Some(json!(["me", "no_such_op"])),
                "policy.rules[1].operations[1]",
                "not a Looker API 4.0 operationId",
            ),
            (
                "/policy/rules/0/deny",
                Some(json!(true)),
                "policy.rules[0]",
                "both allow and deny",
            ),
            (
                "/policy/rules/0/issuers",
                Some(json!(["https://other.test"])),
                "policy.rules[0].issuers[0]",
                "not one of the configured issuers",
            ),
            (
                "/policy/rules/0/methods",
                Some(json!(["GET", "G E T"])),
                "policy.rules[0].methods[1]",
                "not an HTTP method",
            ),
        ];
        for (pointer, value, field, words) in cases {
            let mut config = base();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let parent = config.pointer_mut(parent).unwrap().as_object_mut().unwrap();
            match value {
                Some(value) => parent.insert(key.to_owned(), value),
                None => parent.remove(key),
            };
            let error = match load(&config) {
                Ok(_) => panic!("{pointer}: loaded"),
                Err(error) => error,
            };
            assert_eq!(error.field, field, "{pointer}: {error}");
            assert!(error.message.contains(words), "{pointer}: {error}");
        }
    }

    #[test]
    fn an_error_reads_field_then_message() {
        let mut config = base();
        config["max_body_bytes"] = json!(1);
        let error = load(&config).err().unwrap();
        assert_eq!(
            error.to_string(),
            "max_body_bytes: must be between 1024 and 16777216"
        );
        let root = ConfigError {
            field: ".".into(),
            message: "EOF while parsing".into(),
        };
        assert_eq!(root.to_string(), "EOF while parsing");
    }
}
