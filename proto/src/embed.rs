//! Embedded analytics (docs/embed.md): the embed user a profile describes, the broker's
//! embed endpoints (what the gateway sends, what the broker answers), and Looker's list
//! of permissions an embed user may hold.
//!
//! The browser talks to the gateway's embed endpoints; the gateway (filter) verifies the
//! IdP token, picks the rule and profile, builds an [`EmbedUser`] from the claims and
//! calls the broker. The broker holds Looker's `session_reference_token` and never
//! returns it: a session is found again by [`session_key`], which binds it to the
//! principal (issuer + subject) and the profile that acquired it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `POST`: acquire (or join) the principal's cookieless embed session.
pub const ACQUIRE_PATH: &str = "/v1/embed/acquire";
/// `POST`: new navigation and API tokens for the principal's session.
pub const GENERATE_TOKENS_PATH: &str = "/v1/embed/generate_tokens";
/// `POST`: end the principal's session (Looker's `delete_embed_cookieless_session`).
pub const LOGOUT_PATH: &str = "/v1/embed/logout";
/// `POST`: a signed SSO embed URL (signed by the broker with the embed secret).
pub const SSO_URL_PATH: &str = "/v1/embed/sso_url";

/// Permissions Looker grants embed users (Looker's signed embedding documentation,
/// "Permissions"); a profile naming any other is refused at load.
pub const EMBED_PERMISSIONS: &[&str] = &[
    "access_data",
    "see_lookml_dashboards",
    "see_looks",
    "see_user_dashboards",
    "explore",
    "create_table_calculations",
    "create_custom_fields",
    "can_create_forecast",
    "save_content",
    "create_public_looks",
    "download_with_limit",
    "download_without_limit",
    "schedule_look_emails",
    "schedule_external_look_emails",
    "create_alerts",
    "follow_alerts",
    "send_to_s3",
    "send_to_sftp",
    "send_outgoing_webhook",
    "send_to_integration",
    "see_sql",
    "see_lookml",
    "develop",
    "deploy",
    "support_access_toggle",
    "use_sql_runner",
    "clear_cache_refresh",
    "see_drill_overlay",
    "embed_browse_spaces",
    "embed_save_shared_space",
];

/// Whether Looker lets an embed user hold `permission`.
pub fn is_embed_permission(permission: &str) -> bool {
    EMBED_PERMISSIONS.contains(&permission)
}

/// Who the principal is, as the gateway verified it: the token's `iss` and `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    pub issuer: String,
    pub subject: String,
}

/// The embed user Looker creates for a session: the fields of Looker's
/// `EmbedCookielessSessionAcquire` / `EmbedSsoParams` that a profile computes from claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedUser {
    pub external_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_timezone: Option<String>,
    pub permissions: Vec<String>,
    pub models: Vec<String>,
    #[serde(default)]
    pub group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_group_id: Option<String>,
    /// Looker user attribute name -> value (multiple values joined by commas, as Looker
    /// reads them).
    #[serde(default)]
    pub user_attributes: std::collections::BTreeMap<String, String>,
    /// Seconds the embed session lasts (Looker's `session_length`).
    pub session_length: u64,
    #[serde(default)]
    pub force_logout_login: bool,
}

/// Body of `POST /v1/embed/acquire`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub principal: Principal,
    pub profile: String,
    pub user: EmbedUser,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Body of `POST /v1/embed/generate_tokens`: the tokens the browser holds now (Looker's
/// `generate_tokens` takes them with the session reference token, which only the broker
/// has).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateTokensRequest {
    pub principal: Principal,
    pub profile: String,
    pub user: EmbedUser,
    pub api_token: String,
    pub navigation_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Body of `POST /v1/embed/logout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutRequest {
    pub principal: Principal,
    pub profile: String,
    pub user: EmbedUser,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Body of `POST /v1/embed/sso_url`: `target_url` is the Looker UI page to show, a path
/// under `/embed/` (`/embed/dashboards/1`; the broker also takes the full URL on its
/// embed host, `https://<embed.host>/embed/dashboards/1`). Anything else is 400.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoUrlRequest {
    pub principal: Principal,
    pub profile: String,
    pub user: EmbedUser,
    pub target_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The broker's answer to acquire and generate_tokens, and what the gateway returns to the
/// browser: the fields of Looker's answers that the Embed SDK reads, WITHOUT
/// `session_reference_token` (it stays with the broker). `authentication_token` is only
/// in acquire answers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTokens {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_token_ttl: Option<u64>,
    pub navigation_token: String,
    pub navigation_token_ttl: u64,
    pub api_token: String,
    pub api_token_ttl: u64,
    /// Seconds the session has left; 0 once it has ended (the SDK then stops).
    pub session_reference_token_ttl: u64,
}

/// Tokens never print, only their fingerprints.
impl std::fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let print = |token: &str| crate::fingerprint(token.as_bytes());
        f.debug_struct("SessionTokens")
            .field(
                "authentication_token",
                &self.authentication_token.as_deref().map(print),
            )
            .field("navigation_token", &print(&self.navigation_token))
            .field("api_token", &print(&self.api_token))
            .field(
                "session_reference_token_ttl",
                &self.session_reference_token_ttl,
            )
            .finish()
    }
}

impl std::fmt::Debug for GenerateTokensRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateTokensRequest")
            .field("principal", &self.principal)
            .field("profile", &self.profile)
            .field("api_token", &crate::fingerprint(self.api_token.as_bytes()))
            .finish()
    }
}

/// The broker's answer to `sso_url`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoUrlResponse {
    pub url: String,
}

impl std::fmt::Debug for SsoUrlResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoUrlResponse")
            .field("url", &crate::fingerprint(self.url.as_bytes()))
            .finish()
    }
}

/// The one key under which the broker keeps a session: the principal, the profile and
/// the embed user the profile computed (so changed claims, e.g. a new `region`, get a
/// new session instead of joining one with stale attributes). SHA-256 hex; fields are
/// length-prefixed so no two inputs share a key.
pub fn session_key(principal: &Principal, profile: &str, user: &EmbedUser) -> String {
    let mut hash = Sha256::new();
    let user_json = serde_json::to_string(user).unwrap_or_default();
    for part in [
        principal.issuer.as_str(),
        principal.subject.as_str(),
        profile,
        user_json.as_str(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The signed SSO embed URL's parameters, in signing order, each JSON-encoded as Looker
/// reads them (`nonce`, `time`, `session_length`, `external_user_id`, `permissions`,
/// `models`, then `group_ids`, `external_group_id`, `user_attributes` when present, then
/// `access_filters`), followed by the unsigned ones (`first_name`, `last_name`,
/// `user_timezone`, `force_logout_login`). Looker's signed embedding documentation
/// ("Building the embed URL").
pub fn sso_params(user: &EmbedUser, nonce: &str, time: u64) -> Vec<(&'static str, String)> {
    let json = |value: serde_json::Value| value.to_string();
    let mut signed = vec![
        ("nonce", json(nonce.into())),
        ("time", time.to_string()),
        ("session_length", user.session_length.to_string()),
        (
            "external_user_id",
            json(user.external_user_id.as_str().into()),
        ),
        ("permissions", json(user.permissions.clone().into())),
        ("models", json(user.models.clone().into())),
    ];
    if !user.group_ids.is_empty() {
        signed.push(("group_ids", json(user.group_ids.clone().into())));
    }
    if let Some(group) = &user.external_group_id {
        signed.push(("external_group_id", json(group.as_str().into())));
    }
    if !user.user_attributes.is_empty() {
        let attributes: serde_json::Map<String, serde_json::Value> = user
            .user_attributes
            .iter()
            .map(|(name, value)| (name.clone(), value.as_str().into()))
            .collect();
        signed.push(("user_attributes", json(attributes.into())));
    }
    signed.push(("access_filters", "{}".to_owned()));
    for (name, value) in [
        ("first_name", &user.first_name),
        ("last_name", &user.last_name),
        ("user_timezone", &user.user_timezone),
    ] {
        if let Some(value) = value {
            signed.push((name, json(value.as_str().into())));
        }
    }
    signed.push(("force_logout_login", user.force_logout_login.to_string()));
    signed
}

/// Names of [`sso_params`] that the signature covers, in order.
pub const SSO_SIGNED: &[&str] = &[
    "nonce",
    "time",
    "session_length",
    "external_user_id",
    "permissions",
    "models",
    "group_ids",
    "external_group_id",
    "user_attributes",
    "access_filters",
];

/// The string an SSO embed URL's signature is the HMAC of: the host (with port), the
/// embed path (`/login/embed/` + the percent-encoded target path), then the value of each
/// signed parameter present, joined by newlines. `params` as [`sso_params`] returns them
/// (or as the URL carries them, for a verifier).
pub fn sso_string_to_sign(host: &str, embed_path: &str, params: &[(&str, String)]) -> String {
    let mut lines = vec![host.to_owned(), embed_path.to_owned()];
    for name in SSO_SIGNED {
        if let Some((_, value)) = params.iter().find(|(n, _)| n == name) {
            lines.push(value.clone());
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(region: &str) -> EmbedUser {
        EmbedUser {
            external_user_id: "https://idp.example|alice".into(),
            first_name: Some("Alice".into()),
            last_name: None,
            user_timezone: None,
            permissions: vec!["access_data".into(), "see_user_dashboards".into()],
            models: vec!["thelook".into()],
            group_ids: vec![],
            external_group_id: None,
            user_attributes: [("region".to_owned(), region.to_owned())].into(),
            session_length: 3600,
            force_logout_login: true,
        }
    }

    #[test]
    fn session_keys_bind_principal_profile_and_user() {
        let alice = Principal {
            issuer: "https://idp.example".into(),
            subject: "alice".into(),
        };
        let mallory = Principal {
            issuer: "https://idp.example".into(),
            subject: "mallory".into(),
        };
        let key = session_key(&alice, "customer", &user("west"));
        assert_eq!(key.len(), 64);
        assert_eq!(key, session_key(&alice, "customer", &user("west")));
        assert_ne!(key, session_key(&mallory, "customer", &user("west")));
        assert_ne!(key, session_key(&alice, "other", &user("west")));
        assert_ne!(key, session_key(&alice, "customer", &user("east")));
        // Length prefixes: moving bytes between fields changes the key.
        let split = Principal {
            issuer: "https://idp.examplea".into(),
            subject: "lice".into(),
        };
        assert_ne!(key, session_key(&split, "customer", &user("west")));
    }

    #[test]
    fn session_tokens_hide_tokens_in_debug_and_omit_the_reference_token() {
        let tokens = SessionTokens {
            authentication_token: Some("auth-secret".into()),
            authentication_token_ttl: Some(30),
            navigation_token: "nav-secret".into(),
            navigation_token_ttl: 600,
            api_token: "api-secret".into(),
            api_token_ttl: 600,
            session_reference_token_ttl: 3600,
        };
        let shown = format!("{tokens:?}");
        for secret in ["auth-secret", "nav-secret", "api-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let wire = serde_json::to_value(&tokens).unwrap();
        assert_eq!(wire["api_token"], json!("api-secret"));
        assert!(wire.get("session_reference_token").is_none());
    }

    #[test]
    fn embed_users_round_trip_and_permissions_are_looker_s() {
        let value = user("west");
        let text = serde_json::to_string(&value).unwrap();
        assert_eq!(serde_json::from_str::<EmbedUser>(&text).unwrap(), value);
        assert!(is_embed_permission("access_data"));
        assert!(!is_embed_permission("admin"));
        assert!(!is_embed_permission("sudo"));
    }

    #[test]
    fn sso_strings_sign_the_documented_parameters_in_order() {
        let params = sso_params(&user("west"), "n1", 1_700_000_000);
        let names: Vec<&str> = params.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "nonce",
                "time",
                "session_length",
                "external_user_id",
                "permissions",
                "models",
                "user_attributes",
                "access_filters",
                "first_name",
                "force_logout_login"
            ]
        );
        let text = sso_string_to_sign(
            "looker.example:443",
            "/login/embed/%2Fembed%2Fdashboards%2F1",
            &params,
        );
        assert_eq!(
            text,
            "looker.example:443\n/login/embed/%2Fembed%2Fdashboards%2F1\n\"n1\"\n1700000000\n3600\n\
             \"https://idp.example|alice\"\n[\"access_data\",\"see_user_dashboards\"]\n[\"thelook\"]\n\
             {\"region\":\"west\"}\n{}"
        );
    }
}
