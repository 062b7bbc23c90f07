//! Embed profiles (docs/embed.md): how a verified token's claims become the embed user
//! Looker creates for a cookieless embed session, and the gateway's embed endpoints
//! under `embed.path_prefix`, which the filter answers itself (never forwarded).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use lookergate_proto::embed::{self as wire, is_embed_permission, EmbedUser};

use super::matching::lookup;
use crate::duration;

/// Where the embed endpoints live unless `embed.path_prefix` says otherwise.
pub const DEFAULT_PATH_PREFIX: &str = "/lookergate/embed";

/// The longest embed session Looker grants (`session_length`, 30 days).
pub const MAX_SESSION_LENGTH: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest body an embed endpoint reads (the Embed SDK's tokens, or a target URL).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The plugin config's `embed` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Embed")
)]
#[serde(deny_unknown_fields)]
pub struct RawEmbed {
    /// Where the embed endpoints are (`<prefix>/acquire`, ...); outside the API prefix.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Embed profiles by name; a rule allows `{"embed": "<name>"}`.
    #[serde(default)]
    pub profiles: BTreeMap<String, RawProfile>,
}

fn default_path_prefix() -> String {
    DEFAULT_PATH_PREFIX.to_owned()
}

/// The embed user a profile computes from the token's claims.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "EmbedProfile")
)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// The claim whose value, after the issuer (`<iss>|<value>`), is Looker's
    /// `external_user_id` (default claim `sub`).
    #[serde(default)]
    pub external_user_id: Option<ClaimRef>,
    #[serde(default)]
    pub first_name: Option<Source>,
    #[serde(default)]
    pub last_name: Option<Source>,
    #[serde(default)]
    pub user_timezone: Option<Source>,
    /// Looker embed permissions (`access_data`, `see_user_dashboards`, ...).
    pub permissions: Vec<String>,
    /// LookML models the embed user may see.
    pub models: Vec<String>,
    #[serde(default)]
    pub group_ids: Vec<String>,
    #[serde(default)]
    pub external_group_id: Option<Source>,
    /// Looker user attribute name -> the claim it is read from (row-level security).
    #[serde(default)]
    pub user_attributes: BTreeMap<String, RawAttribute>,
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", regex(pattern = duration::PATTERN))
    )]
    #[serde(
        default = "default_session_length",
        deserialize_with = "duration::deserialize"
    )]
    pub session_length: Duration,
    #[serde(default = "default_true")]
    pub force_logout_login: bool,
}

fn default_session_length() -> Duration {
    Duration::from_secs(3600)
}

fn default_true() -> bool {
    true
}

/// `{"claim": "<claim>"}` (dots reach into objects: `address.region`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimRef {
    pub claim: String,
}

/// A field read from a claim, or a fixed value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "EmbedValue")
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Source {
    Claim(String),
    Value(String),
}

/// A user attribute read from a claim (an array claim's values joined by commas).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "EmbedUserAttribute")
)]
#[serde(deny_unknown_fields)]
pub struct RawAttribute {
    pub claim: String,
    /// A token without the claim is refused (`missing_claim`); else the attribute is left out.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Its value never appears in the audit trail.
    #[serde(default)]
    pub sensitive: bool,
}

/// A claim, as a path into the claims.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    name: String,
    path: Vec<String>,
}

impl Claim {
    fn new(name: &str) -> Claim {
        Claim {
            name: name.to_owned(),
            path: name.split('.').map(str::to_owned).collect(),
        }
    }

    /// The claim as text: strings as they are, numbers and booleans printed, arrays of
    /// those joined by commas (as Looker reads several values); absent or empty: `None`.
    fn text(&self, claims: &Map<String, Value>) -> Option<String> {
        let scalar = |value: &Value| match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        let text = match lookup(claims, &self.path)? {
            Value::Array(items) => items
                .iter()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(","),
            other => scalar(other)?,
        };
        (!text.is_empty()).then_some(text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Claim(Claim),
    Value(String),
}

impl Field {
    fn read(&self, claims: &Map<String, Value>) -> Option<String> {
        match self {
            Field::Claim(claim) => claim.text(claims),
            Field::Value(value) => Some(value.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Attribute {
    name: String,
    claim: Claim,
    required: bool,
    sensitive: bool,
}

/// A compiled profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    external_user_id: Claim,
    first_name: Option<Field>,
    last_name: Option<Field>,
    user_timezone: Option<Field>,
    permissions: Vec<String>,
    models: Vec<String>,
    group_ids: Vec<String>,
    external_group_id: Option<Field>,
    attributes: Vec<Attribute>,
    session_length_secs: u64,
    force_logout_login: bool,
}

/// Why a profile cannot build the embed user from a token: the claim it lacks (its
/// name, never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingClaim(pub String);

impl Profile {
    /// The embed user for the token of `issuer` with `claims`. `external_user_id` is
    /// always `<iss>|<claim>`: two issuers' users never share an embed user.
    pub fn user(
        &self,
        issuer: &str,
        claims: &Map<String, Value>,
    ) -> Result<EmbedUser, MissingClaim> {
        let missing = |claim: &Claim| MissingClaim(claim.name.clone());
        let id = self
            .external_user_id
            .text(claims)
            .ok_or_else(|| missing(&self.external_user_id))?;
        let mut user_attributes = BTreeMap::new();
        for attribute in &self.attributes {
            match attribute.claim.text(claims) {
                Some(value) => {
                    user_attributes.insert(attribute.name.clone(), value);
                }
                None if attribute.required => return Err(missing(&attribute.claim)),
                None => {}
            }
        }
        let read = |field: &Option<Field>| field.as_ref().and_then(|f| f.read(claims));
        Ok(EmbedUser {
            external_user_id: format!("{issuer}|{id}"),
            first_name: read(&self.first_name),
            last_name: read(&self.last_name),
            user_timezone: read(&self.user_timezone),
            permissions: self.permissions.clone(),
            models: self.models.clone(),
            group_ids: self.group_ids.clone(),
            external_group_id: read(&self.external_group_id),
            user_attributes,
            session_length: self.session_length_secs,
            force_logout_login: self.force_logout_login,
        })
    }

    /// The user's attributes for the audit trail and `explain`: a sensitive
    /// attribute's value is replaced by `(sensitive)`.
    pub fn shown_attributes(&self, user: &EmbedUser) -> BTreeMap<String, String> {
        user.user_attributes
            .iter()
            .map(|(name, value)| {
                let sensitive = self
                    .attributes
                    .iter()
                    .any(|a| a.sensitive && &a.name == name);
                let shown = if sensitive { "(sensitive)" } else { value };
                (name.clone(), shown.to_owned())
            })
            .collect()
    }

    /// The compact JSON the access log records as `wasm.lookergate_embed`.
    pub fn audit_record(&self, user: &EmbedUser) -> String {
        serde_json::json!({
            "profile": self.name,
            "external_user_id": user.external_user_id,
            "attributes": self.shown_attributes(user),
        })
        .to_string()
    }
}

/// The compiled `embed` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embed {
    /// No trailing slash.
    pub path_prefix: String,
    profiles: BTreeMap<String, Profile>,
}

/// An endpoint the Embed SDK (or the embedding app) calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Acquire,
    GenerateTokens,
    Logout,
    SsoUrl,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Acquire,
        Endpoint::GenerateTokens,
        Endpoint::Logout,
        Endpoint::SsoUrl,
    ];

    /// The path below the prefix.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Acquire => "/acquire",
            Endpoint::GenerateTokens => "/generate_tokens",
            Endpoint::Logout => "/session",
            Endpoint::SsoUrl => "/sso_url",
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Acquire | Endpoint::SsoUrl => "POST",
            Endpoint::GenerateTokens => "PUT",
            Endpoint::Logout => "DELETE",
        }
    }

    /// Its name in the audit trail (`lookergate_operation`).
    pub fn operation(self) -> &'static str {
        match self {
            Endpoint::Acquire => "embed_acquire",
            Endpoint::GenerateTokens => "embed_generate_tokens",
            Endpoint::Logout => "embed_logout",
            Endpoint::SsoUrl => "embed_sso_url",
        }
    }

    /// The broker endpoint it calls.
    pub fn broker_path(self) -> &'static str {
        match self {
            Endpoint::Acquire => wire::ACQUIRE_PATH,
            Endpoint::GenerateTokens => wire::GENERATE_TOKENS_PATH,
            Endpoint::Logout => wire::LOGOUT_PATH,
            Endpoint::SsoUrl => wire::SSO_URL_PATH,
        }
    }

    /// Whether it reads the request body (the SDK's tokens, or the target URL).
    pub fn reads_body(self) -> bool {
        matches!(self, Endpoint::GenerateTokens | Endpoint::SsoUrl)
    }
}

/// What a path under the prefix names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Endpoint(Endpoint),
    /// Under the prefix, but no endpoint: 404.
    NotFound,
    /// An endpoint's path with another method: 405, `Allow: <method>`.
    WrongMethod(&'static str),
}

impl Embed {
    /// What `method` and the normalized `path` name, if the path is under the prefix.
    pub fn route(&self, method: &str, path: &str) -> Option<Route> {
        let rest = path.strip_prefix(&self.path_prefix)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let Some(endpoint) = Endpoint::ALL.into_iter().find(|e| e.path() == rest) else {
            return Some(Route::NotFound);
        };
        Some(if endpoint.method() == method {
            Route::Endpoint(endpoint)
        } else {
            Route::WrongMethod(endpoint.method())
        })
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    pub fn profile_names(&self) -> Vec<&str> {
        self.profiles.keys().map(String::as_str).collect()
    }

    /// Compiles the section; errors name the field (`embed.profiles.customer.models`).
    /// `api_prefix`: the Looker API's prefix, which the embed prefix must stay out of.
    pub fn compile(raw: &RawEmbed, api_prefix: &str) -> Result<Embed, (String, String)> {
        let at = |field: &str| format!("embed.{field}");
        let prefix = raw.path_prefix.trim_end_matches('/');
        let fail = |field: String, message: &str| Err((field, message.to_owned()));
        let crate::path::RequestTarget {
            path: normalized,
            query,
        } = crate::path::parse_target(prefix)
            .map_err(|bad| (at("path_prefix"), bad.0.to_owned()))?;
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || query.is_some()
            || normalized != prefix
            || prefix.contains(['*', '%'])
        {
            return fail(
                at("path_prefix"),
                "must be a plain path starting with '/' (no query, wildcard or escape), such as /lookergate/embed",
            );
        }
        let under = |path: &str, prefix: &str| {
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|r| r.starts_with('/'))
        };
        if under(prefix, api_prefix) || under(api_prefix, prefix) || under(prefix, "/api") {
            return fail(
                at("path_prefix"),
                "must be outside the Looker API paths (api_prefix and /api/): embed endpoints are answered by the gateway, never forwarded",
            );
        }
        let mut profiles = BTreeMap::new();
        for (name, rp) in &raw.profiles {
            let at = |field: &str| format!("embed.profiles.{name}.{field}");
            if !valid_name(name) {
                return fail(
                    format!("embed.profiles.{name}"),
                    "a profile name is 1-64 letters, digits, '-', '_' or '.'",
                );
            }
            let claim = |field: &str, name: &str| -> Result<Claim, (String, String)> {
                if name.is_empty() || name.split('.').any(str::is_empty) {
                    return Err((at(field), format!("{name:?} is not a claim name")));
                }
                Ok(Claim::new(name))
            };
            let field =
                |f: &str, source: &Option<Source>| -> Result<Option<Field>, (String, String)> {
                    match source {
                        None => Ok(None),
                        Some(Source::Claim(name)) => Ok(Some(Field::Claim(claim(f, name)?))),
                        Some(Source::Value(value)) if value.is_empty() => {
                            Err((at(f), "value must not be empty".to_owned()))
                        }
                        Some(Source::Value(value)) => Ok(Some(Field::Value(value.clone()))),
                    }
                };
            let external_user_id = claim(
                "external_user_id.claim",
                rp.external_user_id
                    .as_ref()
                    .map_or("sub", |c| c.claim.as_str()),
            )?;
            if rp.permissions.is_empty() {
                return fail(at("permissions"), "needs at least one permission");
            }
            for (j, permission) in rp.permissions.iter().enumerate() {
                if !is_embed_permission(permission) {
                    return Err((
                        at(&format!("permissions[{j}]")),
                        format!("{permission:?} is not a permission Looker grants embed users"),
                    ));
                }
            }
            if rp.models.is_empty() {
                return fail(at("models"), "needs at least one LookML model");
            }
            if let Some(j) = rp.models.iter().position(|m| m.trim().is_empty()) {
                return fail(at(&format!("models[{j}]")), "must name a model");
            }
            if let Some(j) = rp.group_ids.iter().position(|g| g.trim().is_empty()) {
                return fail(at(&format!("group_ids[{j}]")), "must name a group id");
            }
            let mut attributes = Vec::new();
            for (attribute, ra) in &rp.user_attributes {
                let field = format!("user_attributes.{attribute}");
                if attribute.is_empty()
                    || !attribute
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return fail(
                        at(&field),
                        "a Looker user attribute name is lower-case letters, digits and '_'",
                    );
                }
                attributes.push(Attribute {
                    name: attribute.clone(),
                    claim: claim(&format!("{field}.claim"), &ra.claim)?,
                    required: ra.required,
                    sensitive: ra.sensitive,
                });
            }
            if rp.session_length < Duration::from_secs(60) || rp.session_length > MAX_SESSION_LENGTH
            {
                return fail(at("session_length"), "must be between 1m and 30d");
            }
            profiles.insert(
                name.clone(),
                Profile {
                    name: name.clone(),
                    external_user_id,
                    first_name: field("first_name", &rp.first_name)?,
                    last_name: field("last_name", &rp.last_name)?,
                    user_timezone: field("user_timezone", &rp.user_timezone)?,
                    permissions: rp.permissions.clone(),
                    models: rp.models.clone(),
                    group_ids: rp.group_ids.clone(),
                    external_group_id: field("external_group_id", &rp.external_group_id)?,
                    attributes,
                    session_length_secs: rp.session_length.as_secs(),
                    force_logout_login: rp.force_logout_login,
                },
            );
        }
        Ok(Embed {
            path_prefix: prefix.to_owned(),
            profiles,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(section: Value) -> Result<Embed, (String, String)> {
        let raw: RawEmbed = serde_json::from_value(section).unwrap();
        Embed::compile(&raw, "/api/4.0")
    }

    fn customer() -> Value {
        json!({"profiles": {"customer": {
            "first_name": {"claim": "given_name"},
            "user_timezone": {"value": "Europe/Paris"},
            "permissions": ["access_data", "see_user_dashboards"],
            "models": ["thelook"],
            "group_ids": ["7"],
            "external_group_id": {"claim": "org"},
            "user_attributes": {
                "region": {"claim": "region"},
                "ssn": {"claim": "ssn", "sensitive": true},
                "team": {"claim": "teams", "required": false}
            },
            "session_length": "2h"
        }}})
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn profiles_build_the_embed_user_from_claims() {
        let embed = compile(customer()).unwrap();
        let profile = embed.profile("customer").unwrap();
        let user = profile
            .user(
                "https://idp.example",
                &claims(
                    json!({"sub": "alice", "email": "a@x", "given_name": "Alice", "org": "acme",
                               "region": ["west", "north"], "ssn": "123-45", "teams": 7}),
                ),
            )
            .unwrap();
        assert_eq!(user.external_user_id, "https://idp.example|alice");
        assert_eq!(user.first_name.as_deref(), Some("Alice"));
        assert_eq!(user.last_name, None);
        assert_eq!(user.user_timezone.as_deref(), Some("Europe/Paris"));
        assert_eq!(user.external_group_id.as_deref(), Some("acme"));
        assert_eq!(user.group_ids, ["7"]);
        assert_eq!(user.session_length, 7200);
        assert!(user.force_logout_login);
        assert_eq!(user.user_attributes["region"], "west,north");
        assert_eq!(user.user_attributes["ssn"], "123-45");
        assert_eq!(user.user_attributes["team"], "7");
        let record: Value = serde_json::from_str(&profile.audit_record(&user)).unwrap();
        assert_eq!(
            record,
            json!({"profile": "customer", "external_user_id": "https://idp.example|alice",
                   "attributes": {"region": "west,north", "ssn": "(sensitive)", "team": "7"}})
        );
    }

    #[test]
    fn a_missing_required_claim_is_named_and_an_optional_one_left_out() {
        let embed = compile(customer()).unwrap();
        let profile = embed.profile("customer").unwrap();
        let got = profile.user("i", &claims(json!({"sub": "bob", "ssn": "9"})));
        assert_eq!(got, Err(MissingClaim("region".into())));
        let got = profile.user("i", &claims(json!({"sub": "bob", "region": "east"})));
        assert_eq!(got, Err(MissingClaim("ssn".into())));
        let user = profile
            .user(
                "i",
                &claims(json!({"sub": "bob", "region": "east", "ssn": "9", "teams": []})),
            )
            .unwrap();
        assert!(!user.user_attributes.contains_key("team"));
        assert_eq!(user.first_name, None);
        let got = profile.user("i", &claims(json!({"email": "bob@x", "region": "east"})));
        assert_eq!(got, Err(MissingClaim("sub".into())));
    }

    #[test]
    fn external_user_ids_are_always_issuer_scoped() {
        let embed = compile(json!({"profiles": {"p": {
            "external_user_id": {"claim": "email"}, "permissions": ["access_data"], "models": ["m"]}}}))
        .unwrap();
        let user = embed
            .profile("p")
            .unwrap()
            .user("https://idp", &claims(json!({"sub": "s", "email": "a@x"})))
            .unwrap();
        assert_eq!(user.external_user_id, "https://idp|a@x");
    }

    #[test]
    fn load_errors_name_the_field() {
        let cases = [
            (json!({"path_prefix": "/api/embed"}), "embed.path_prefix"),
            (
                json!({"path_prefix": "/api/4.0/embed"}),
                "embed.path_prefix",
            ),
            (json!({"path_prefix": "/api"}), "embed.path_prefix"),
            (json!({"path_prefix": "/"}), "embed.path_prefix"),
            (json!({"path_prefix": "embed"}), "embed.path_prefix"),
            (json!({"path_prefix": "/a/../b"}), "embed.path_prefix"),
            (json!({"path_prefix": "/e/*"}), "embed.path_prefix"),
            (
                json!({"profiles": {"c": {"permissions": ["access_data", "admin"], "models": ["m"]}}}),
                "embed.profiles.c.permissions[1]",
            ),
            (
                json!({"profiles": {"c": {"permissions": [], "models": ["m"]}}}),
                "embed.profiles.c.permissions",
            ),
            (
                json!({"profiles": {"c": {"permissions": ["access_data"], "models": []}}}),
                "embed.profiles.c.models",
            ),
            (
                json!({"profiles": {"c": {"permissions": ["access_data"], "models": [""]}}}),
                "embed.profiles.c.models[0]",
            ),
            (
                json!({"profiles": {"c": {"permissions": ["access_data"], "models": ["m"], "group_ids": [" "]}}}),
                "embed.profiles.c.group_ids[0]",
            ),
            (
                json!({"profiles": {"c": {"permissions": ["access_data"], "models": ["m"], "session_length": "31d"}}}),
                "embed.profiles.c.session_length",
            ),
            (
                json!({"profiles": {"c": {"permissions": ["access_data"], "models": ["m"],
                "user_attributes": {"Region": {"claim": "r"}}}}}),
                "embed.profiles.c.user_attributes.Region",
            ),
            (
                json!({"profiles": {"c": {"permissions": ["access_data"], "models": ["m"],
                "user_attributes": {"region": {"claim": ""}}}}}),
                "embed.profiles.c.user_attributes.region.claim",
            ),
            (
                json!({"profiles": {"c": {"permissions": ["access_data"], "models": ["m"],
                "external_user_id": {"claim": "a..b"}}}}),
                "embed.profiles.c.external_user_id.claim",
            ),
            (
                json!({"profiles": {"c": {"permissions": ["access_data"], "models": ["m"],
                "first_name": {"value": ""}}}}),
                "embed.profiles.c.first_name",
            ),
            (
                json!({"profiles": {"c d": {"permissions": ["access_data"], "models": ["m"]}}}),
                "embed.profiles.c d",
            ),
        ];
        for (section, field) in cases {
            let got = compile(section.clone()).map(|_| ());
            assert_eq!(
                got.as_ref().map_err(|e| e.0.as_str()),
                Err(field),
                "{section} -> {got:?}"
            );
        }
        let (_, message) = compile(json!({"profiles": {"customer": {
            "permissions": ["access_data", "admin"], "models": ["m"]}}}))
        .unwrap_err();
        assert_eq!(
            message,
            "\"admin\" is not a permission Looker grants embed users"
        );
        let unknown: Result<RawEmbed, _> = serde_json::from_value(
            json!({"profiles": {"c": {"permissions": ["access_data"], "models": ["m"], "rolez": 1}}}),
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn endpoints_route_by_path_then_method() {
        let embed = compile(json!({"path_prefix": "/embed-api/"})).unwrap();
        assert_eq!(embed.path_prefix, "/embed-api");
        let cases = [
            (
                "POST",
                "/embed-api/acquire",
                Some(Route::Endpoint(Endpoint::Acquire)),
            ),
            (
                "PUT",
                "/embed-api/generate_tokens",
                Some(Route::Endpoint(Endpoint::GenerateTokens)),
            ),
            (
                "DELETE",
                "/embed-api/session",
                Some(Route::Endpoint(Endpoint::Logout)),
            ),
            (
                "POST",
                "/embed-api/sso_url",
                Some(Route::Endpoint(Endpoint::SsoUrl)),
            ),
            (
                "GET",
                "/embed-api/acquire",
                Some(Route::WrongMethod("POST")),
            ),
            (
                "POST",
                "/embed-api/generate_tokens",
                Some(Route::WrongMethod("PUT")),
            ),
            ("POST", "/embed-api/other", Some(Route::NotFound)),
            ("POST", "/embed-api", Some(Route::NotFound)),
            ("POST", "/embed-api/acquire/x", Some(Route::NotFound)),
            ("POST", "/embed-apix/acquire", None),
            ("POST", "/api/4.0/user", None),
        ];
        for (method, path, want) in cases {
            assert_eq!(embed.route(method, path), want, "{method} {path}");
        }
        assert_eq!(compile(json!({})).unwrap().path_prefix, DEFAULT_PATH_PREFIX);
    }
}
