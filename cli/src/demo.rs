//! The demo users of DESIGN.md and RS256 tokens for them, signed with the committed demo
//! key (or any RSA key). Shared by `lookergate token`, the dev IdP and the end-to-end tests.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

/// DEMO ONLY: the demo IdP's private key. Public on purpose; anyone can forge demo tokens.
pub const DEMO_SIGNING_KEY_PEM: &str = include_str!("../../envoy/demo/demo-signing-key.pem");
/// The JWKS matching [`DEMO_SIGNING_KEY_PEM`], as it goes into the demo plugin config.
pub const DEMO_JWKS_JSON: &str = include_str!("../../envoy/demo/demo-jwks.json");
pub const DEMO_ISSUER: &str = "https://idp.lookergate.demo";
pub const DEMO_AUDIENCE: &str = "looker-api";
pub const DEMO_KID: &str = "demo-2026";
/// Default token lifetime: long enough to play with the demo.
pub const DEFAULT_TTL_SECS: u64 = 3600;

/// A user of the demo IdP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoUser {
    pub sub: &'static str,
    pub display_name: &'static str,
    pub groups: &'static [&'static str],
    /// The `region` claim (the demo's embed profile reads it as a Looker user attribute).
    pub region: Option<&'static str>,
}

pub const DEMO_USERS: &[DemoUser] = &[
    DemoUser {
        sub: "alice",
        display_name: "Alice",
        groups: &["analysts"],
        region: Some("west"),
    },
    DemoUser {
        sub: "bob",
        display_name: "Bob",
        groups: &["viewers"],
        region: Some("east"),
    },
    DemoUser {
        sub: "carol",
        display_name: "Carol",
        groups: &["analysts"],
        region: None,
    },
    DemoUser {
        sub: "eve",
        display_name: "Eve",
        groups: &[],
        region: None,
    },
];

pub fn demo_user(sub: &str) -> Option<&'static DemoUser> {
    DEMO_USERS.iter().find(|u| u.sub == sub)
}

#[derive(Debug)]
pub enum TokenError {
    UnknownUser(String),
    Key(String),
    Sign(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::UnknownUser(u) => {
                let known: Vec<&str> = DEMO_USERS.iter().map(|u| u.sub).collect();
                write!(f, "unknown demo user {u:?} (known: {})", known.join(", "))
            }
            TokenError::Key(e) => write!(f, "cannot load RSA private key: {e}"),
            TokenError::Sign(e) => write!(f, "cannot sign token: {e}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Everything that goes into one token. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    /// `nbf`, left out unless set.
    pub nbf: Option<u64>,
    /// Extra custom claims, merged last.
    pub extra: Map<String, Value>,
}

impl TokenSpec {
    /// A token for a demo user, issued now by the demo issuer, valid for `ttl_secs`.
    pub fn for_demo_user(sub: &str, ttl_secs: u64) -> Result<TokenSpec, TokenError> {
        let user = demo_user(sub).ok_or_else(|| TokenError::UnknownUser(sub.to_owned()))?;
        let now = unix_now();
        let mut extra = Map::new();
        if let Some(region) = user.region {
            extra.insert("region".to_owned(), json!(region));
        }
        Ok(TokenSpec {
            iss: DEMO_ISSUER.to_owned(),
            aud: DEMO_AUDIENCE.to_owned(),
            sub: user.sub.to_owned(),
            email: format!("{}@example.com", user.sub),
            name: user.display_name.to_owned(),
            groups: user.groups.iter().map(|g| (*g).to_owned()).collect(),
            iat: now,
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            extra,
        })
    }

    /// The claims as jwt-simple signs them (for tests that sign with other algorithms).
    pub fn claims(&self) -> JWTClaims<Map<String, Value>> {
        let mut custom = Map::new();
        custom.insert("email".to_owned(), json!(self.email));
        // The demo IdP verified its users' addresses (the filter acts as a user by e-mail
        // only then); `extra` may say otherwise.
        custom.insert("email_verified".to_owned(), json!(true));
        custom.insert("name".to_owned(), json!(self.name));
        custom.insert("groups".to_owned(), json!(self.groups));
        custom.extend(self.extra.clone());
        let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(0))
            .with_issuer(&self.iss)
            .with_audience(&self.aud)
            .with_subject(&self.sub);
        claims.issued_at = Some(Duration::from_secs(self.iat));
        claims.expires_at = Some(Duration::from_secs(self.exp));
        claims.invalid_before = self.nbf.map(Duration::from_secs);
        claims
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Loads an RSA private key from PEM (PKCS#8 or PKCS#1). Lines before the PEM armour
/// (like the demo key's warning) are ignored.
pub fn load_signing_key(pem: &str, kid: &str) -> Result<RS256KeyPair, TokenError> {
    let start = pem
        .find("-----BEGIN")
        .ok_or_else(|| TokenError::Key("no PEM block".to_owned()))?;
    let armoured = pem.get(start..).unwrap_or_default();
    RS256KeyPair::from_pem(armoured)
        .map(|k| k.with_key_id(kid))
        .map_err(|e| TokenError::Key(e.to_string()))
}

/// The demo key with the demo kid.
pub fn demo_signing_key() -> Result<RS256KeyPair, TokenError> {
    load_signing_key(DEMO_SIGNING_KEY_PEM, DEMO_KID)
}

/// Signs `spec` as an RS256 JWT with `key` (its kid goes into the header).
pub fn mint(key: &RS256KeyPair, spec: &TokenSpec) -> Result<String, TokenError> {
    key.sign(spec.claims())
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// The public JWKS (one RSA key) for `key`.
pub fn jwks(key: &RS256KeyPair, kid: &str) -> Value {
    json!({"keys": [jwk(key, kid)]})
}

/// The public JWK of `key`.
pub fn jwk(key: &RS256KeyPair, kid: &str) -> Value {
    let c = key.public_key().to_components();
    json!({
        "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e),
    })
}

/// The public key of `key` as PEM (SubjectPublicKeyInfo), e.g. for HS256 key-confusion tests.
pub fn public_key_pem(key: &RS256KeyPair) -> Result<String, TokenError> {
    key.public_key()
        .to_pem()
        .map_err(|e| TokenError::Key(e.to_string()))
}

/// Values of envoy/demo.yaml that the end-to-end tests and the soak replace to run the
/// demo on free ports with another build of the filter. Each occurs there exactly once.
pub const DEMO_ENVOY_ADMIN_PORT: &str = "port_value: 9901 ";
pub const DEMO_ENVOY_LISTENER_PORT: &str = "port_value: 10000 ";
/// The TLS listener of Looker's UI host (embedded dashboards).
pub const DEMO_ENVOY_UI_PORT: &str = "port_value: 10443 ";
pub const DEMO_ENVOY_LOOKER_PORT: &str = "port_value: 10080 ";
pub const DEMO_ENVOY_BROKER_PORT: &str = "port_value: 10090 ";
pub const DEMO_ENVOY_IDP_PORT: &str = "port_value: 10070 ";
pub const DEMO_ENVOY_WASM_PATH: &str = "filename: target/wasm32-wasip1/release/lookergate.wasm";

/// Where the demo's Envoy config points, for [`demo_envoy_yaml`].
#[derive(Debug, Clone, Copy)]
pub struct DemoEnvoyPorts {
    pub admin: u16,
    pub listener: u16,
    /// The Looker UI host listener (TLS, embedded dashboards).
    pub ui: u16,
    pub looker: u16,
    pub broker: u16,
    pub idp: u16,
}

/// envoy/demo.yaml (`demo`) with other ports and another `lookergate.wasm`.
pub fn demo_envoy_yaml(
    demo: &str,
    ports: DemoEnvoyPorts,
    wasm: &std::path::Path,
) -> Result<String, String> {
    let mut yaml = demo.to_owned();
    for (from, port) in [
        (DEMO_ENVOY_ADMIN_PORT, ports.admin),
        (DEMO_ENVOY_LISTENER_PORT, ports.listener),
        (DEMO_ENVOY_UI_PORT, ports.ui),
        (DEMO_ENVOY_LOOKER_PORT, ports.looker),
        (DEMO_ENVOY_BROKER_PORT, ports.broker),
        (DEMO_ENVOY_IDP_PORT, ports.idp),
    ] {
        yaml = replace_once(&yaml, from, &format!("port_value: {port} "))?;
    }
    replace_once(
        &yaml,
        DEMO_ENVOY_WASM_PATH,
        &format!("filename: {}", wasm.display()),
    )
}

/// `text` with `from`, which must occur in it exactly once, replaced by `to`.
pub fn replace_once(text: &str, from: &str, to: &str) -> Result<String, String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!(
            "envoy/demo.yaml must contain `{from}` exactly once, not {n} times"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn demo_token_verifies_against_the_committed_jwks() {
        let key = demo_signing_key().unwrap();
        let token = mint(&key, &TokenSpec::for_demo_user("alice", 60).unwrap()).unwrap();

        let committed: Value = serde_json::from_str(DEMO_JWKS_JSON).unwrap();
        assert_eq!(
            committed,
            jwks(&key, DEMO_KID),
            "envoy/demo/demo-jwks.json is stale"
        );

        let opts = VerificationOptions {
            allowed_issuers: Some(HashSet::from([DEMO_ISSUER.to_owned()])),
            allowed_audiences: Some(HashSet::from([DEMO_AUDIENCE.to_owned()])),
            ..Default::default()
        };
        let claims = key
            .public_key()
            .verify_token::<Map<String, Value>>(&token, Some(opts))
            .unwrap();
        assert_eq!(claims.subject.as_deref(), Some("alice"));
        assert_eq!(claims.custom["groups"], json!(["analysts"]));
        assert_eq!(claims.custom["email"], json!("alice@example.com"));
        assert_eq!(claims.custom["region"], json!("west"));
        assert_eq!(claims.custom["name"], json!("Alice"));
        let header = token.split('.').next().unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["kid"], json!(DEMO_KID));
        assert_eq!(header["alg"], json!("RS256"));
    }

    #[test]
    fn demo_envoy_config_trusts_the_demo_key() {
        // envoy/demo.yaml takes the demo issuer's keys from the dev IdP through discovery,
        // via the cluster `lookergate idp` listens on by default ...
        let demo_yaml = include_str!("../../envoy/demo.yaml");
        let found = crate::source::find("envoy/demo.yaml", demo_yaml).unwrap();
        assert_eq!(found.len(), 1, "one lookergate filter in envoy/demo.yaml");
        let plugin: Value = serde_json::from_str(found[0].json.as_ref().unwrap()).unwrap();
        let issuer = &plugin["issuers"][0];
        assert_eq!(issuer["issuer"], DEMO_ISSUER);
        assert_eq!(issuer["audiences"], json!([DEMO_AUDIENCE]));
        assert_eq!(issuer["discovery"], true);
        assert!(issuer.get("jwks").is_none() && issuer.get("jwks_uri").is_none());
        let cluster = issuer["cluster"].as_str().unwrap();
        let envoy: Value = serde_norway::from_str(demo_yaml).unwrap();
        let clusters = envoy["static_resources"]["clusters"].as_array().unwrap();
        let idp = clusters.iter().find(|c| c["name"] == cluster).unwrap();
        let address = &idp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        assert_eq!(
            (address["address"].as_str(), address["port_value"].as_u64()),
            (Some("127.0.0.1"), Some(10070)),
            "the IdP cluster is not `lookergate idp`'s default address"
        );
        // ... and the dev IdP publishes the committed demo key, which `make token` signs with.
        let committed: Value = serde_json::from_str(DEMO_JWKS_JSON).unwrap();
        let idp = crate::idp::Idp::demo().unwrap();
        assert_eq!(idp.issuer(), DEMO_ISSUER);
        assert_eq!(idp.jwks(), committed);
    }

    #[test]
    fn unknown_user_is_an_error_listing_the_known_ones() {
        let err = TokenSpec::for_demo_user("mallory", 60)
            .unwrap_err()
            .to_string();
        assert!(err.contains("alice, bob, carol, eve"), "{err}");
    }
}
