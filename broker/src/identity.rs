//! Who the gateway asks a Looker token for: a shared role (service account) or a
//! Looker user found by one of their credentials (per-user mode, via sudo).

use serde::{Deserialize, Serialize};

/// The `identity` object of `/v1/token` (see DESIGN.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LookerIdentity {
    Role {
        name: String,
    },
    User {
        credential_type: String,
        credential_id: String,
    },
}

const MAX_FIELD_LEN: usize = 320;

impl LookerIdentity {
    /// Rejects values we would not want in a Looker URL path or a cache key.
    pub fn validate(&self) -> Result<(), String> {
        let check = |field: &str, v: &str| {
            if v.is_empty() {
                Err(format!("identity.{field} must not be empty"))
            } else if v.len() > MAX_FIELD_LEN {
                Err(format!(
                    "identity.{field} is longer than {MAX_FIELD_LEN} bytes"
                ))
            } else if v.chars().any(|c| c.is_control() || c == '/' || c == '\\')
                || v == "."
                || v == ".."
            {
                Err(format!(
                    "identity.{field} contains characters that are not allowed"
                ))
            } else {
                Ok(())
            }
        };
        match self {
            LookerIdentity::Role { name } => check("name", name),
            LookerIdentity::User {
                credential_type,
                credential_id,
            } => {
                check("credential_type", credential_type)?;
                check("credential_id", credential_id)
            }
        }
    }

    /// Cache key; emails are case-insensitive in Looker, so they share one entry.
    pub fn cache_key(&self) -> CacheKey {
        match self {
            LookerIdentity::Role { name } => CacheKey::Role(name.clone()),
            LookerIdentity::User {
                credential_type,
                credential_id,
            } => CacheKey::User {
                credential_type: credential_type.clone(),
                credential_id: if credential_type == "email" {
                    credential_id.to_lowercase()
                } else {
                    credential_id.clone()
                },
            },
        }
    }
}

/// One cached Looker session: a role, a user, or the broker's own admin (sudo) session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheKey {
    Role(String),
    User {
        credential_type: String,
        credential_id: String,
    },
    Admin,
}

impl CacheKey {
    pub fn kind(&self) -> &'static str {
        match self {
            CacheKey::Role(_) => "role",
            CacheKey::User { .. } => "user",
            CacheKey::Admin => "admin",
        }
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
    use serde_json::json;

    #[test]
    fn identities_parse_and_validate() {
        let table = [
            (json!({"kind": "role", "name": "analyst"}), true),
            (
                json!({"kind": "user", "credential_type": "email", "credential_id": "carol@example.com"}),
                true,
            ),
            (json!({"kind": "role", "name": ""}), false),
            (json!({"kind": "role", "name": "../admin"}), false),
            (json!({"kind": "role", "name": ".."}), false),
            (
                json!({"kind": "user", "credential_type": "email", "credential_id": "a/b@example.com"}),
                false,
            ),
            (json!({"kind": "role"}), false),
            (json!({"kind": "role", "name": "a", "extra": 1}), false),
            (json!({"kind": "group", "name": "a"}), false),
            (json!({"name": "a"}), false),
        ];
        for (value, ok) in table {
            let parsed = serde_json::from_value::<LookerIdentity>(value.clone())
                .map_err(|e| e.to_string())
                .and_then(|i| i.validate().map(|_| i));
            assert_eq!(parsed.is_ok(), ok, "{value} -> {parsed:?}");
        }
    }

    #[test]
    fn email_cache_key_ignores_case() {
        let a = LookerIdentity::User {
            credential_type: "email".into(),
            credential_id: "Carol@Example.com".into(),
        };
        let b = LookerIdentity::User {
            credential_type: "email".into(),
            credential_id: "carol@example.com".into(),
        };
        assert_eq!(a.cache_key(), b.cache_key());
    }
}
