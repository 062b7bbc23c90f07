//! Who the gateway asks a Looker token for: a shared role (service account) or a Looker
//! user found by one of their credentials (per-user mode, via sudo); its wire JSON and
//! the one rule that says when two identities are the same Looker user.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The Looker identity resolved for one request: what the broker is asked for.
///
/// On the wire (`identity` of `/v1/token`, DESIGN.md): `{"kind": "role", "name": ...}` or
/// `{"kind": "user", "credential_type": ..., "credential_id": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LookerIdentity {
    Role(String),
    User {
        credential_type: String,
        credential_id: String,
    },
}

/// Longest name or credential the broker accepts (an e-mail address is at most 320).
pub const MAX_FIELD_LEN: usize = 320;

/// Whether Looker matches credentials of this type without regard to case: e-mail
/// addresses are (and the simulator models it so).
pub fn folds_case(credential_type: &str) -> bool {
    credential_type == "email"
}

/// The credential id as Looker matches it: e-mail addresses in lower case. ASCII only,
/// on purpose: a wider folding than Looker's could give two users one cached token,
/// a narrower one only costs a second cache entry.
pub fn canonical_credential_id<'a>(credential_type: &str, credential_id: &'a str) -> Cow<'a, str> {
    if folds_case(credential_type) && credential_id.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(credential_id.to_ascii_lowercase())
    } else {
        Cow::Borrowed(credential_id)
    }
}

impl LookerIdentity {
    /// Stable key for caches, shared data and logs (`role:analyst`,
    /// `user:email:carol@example.com`): identities Looker cannot tell apart share one.
    /// Contains no secret.
    pub fn key(&self) -> String {
        // Concatenated by hand: `format!` costs several times more on the filter's hot path.
        let parts: [&str; 4] = match self {
            LookerIdentity::Role(name) => ["role:", name, "", ""],
            LookerIdentity::User {
                credential_type,
                credential_id,
            } => ["user:", credential_type, ":", credential_id],
        };
        let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            key.push_str(part);
        }
        if let LookerIdentity::User {
            credential_type,
            credential_id,
        } = self
        {
            if folds_case(credential_type) {
                let start = key.len() - credential_id.len();
                if let Some(id) = key.get_mut(start..) {
                    id.make_ascii_lowercase();
                }
            }
        }
        key
    }

    /// The same identity with its credential id as Looker matches it (see
    /// [`canonical_credential_id`]); `a.key() == b.key()` exactly when their canonical
    /// forms are equal.
    pub fn canonical(&self) -> LookerIdentity {
        match self {
            LookerIdentity::Role(name) => LookerIdentity::Role(name.clone()),
            LookerIdentity::User {
                credential_type,
                credential_id,
            } => LookerIdentity::User {
                credential_type: credential_type.clone(),
                credential_id: canonical_credential_id(credential_type, credential_id).into_owned(),
            },
        }
    }

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
            LookerIdentity::Role(name) => check("name", name),
            LookerIdentity::User {
                credential_type,
                credential_id,
            } => {
                check("credential_type", credential_type)?;
                check("credential_id", credential_id)
            }
        }
    }
}

/// The wire form, borrowed for writing.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireRef<'a> {
    Role {
        name: &'a str,
    },
    User {
        credential_type: &'a str,
        credential_id: &'a str,
    },
}

/// The wire form, owned for reading; unknown kinds and fields are refused.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Wire {
    Role {
        name: String,
    },
    User {
        credential_type: String,
        credential_id: String,
    },
}

impl Serialize for LookerIdentity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LookerIdentity::Role(name) => WireRef::Role { name },
            LookerIdentity::User {
                credential_type,
                credential_id,
            } => WireRef::User {
                credential_type,
                credential_id,
            },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LookerIdentity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Wire::deserialize(deserializer)? {
            Wire::Role { name } => LookerIdentity::Role(name),
            Wire::User {
                credential_type,
                credential_id,
            } => LookerIdentity::User {
                credential_type,
                credential_id,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
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
    fn wire_json_is_the_documented_shape() {
        let role = LookerIdentity::Role("analyst".into());
        assert_eq!(
            serde_json::to_value(&role).unwrap(),
            json!({"kind": "role", "name": "analyst"})
        );
        let user = LookerIdentity::User {
            credential_type: "email".into(),
            credential_id: "c@x".into(),
        };
        assert_eq!(
            serde_json::to_value(&user).unwrap(),
            json!({"kind": "user", "credential_type": "email", "credential_id": "c@x"})
        );
    }

    #[test]
    fn keys_name_the_kind_and_fold_only_email_case() {
        let user = |t: &str, id: &str| LookerIdentity::User {
            credential_type: t.into(),
            credential_id: id.into(),
        };
        let table = [
            (LookerIdentity::Role("Analyst".into()), "role:Analyst"),
            (
                user("email", "Carol@Example.com"),
                "user:email:carol@example.com",
            ),
            (
                user("email", "carol@example.com"),
                "user:email:carol@example.com",
            ),
            // Only ASCII letters fold (see `canonical_credential_id`).
            (user("email", "Ünal@X.de"), "user:email:Ünal@x.de"),
            (user("api3", "AbC"), "user:api3:AbC"),
            (user("EMAIL", "AbC"), "user:EMAIL:AbC"),
        ];
        for (identity, want) in table {
            assert_eq!(identity.key(), want, "{identity:?}");
            assert_eq!(identity.canonical().key(), want, "{identity:?}");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        // Mixed case ASCII and some non-ASCII, where case folding could go wrong.
        "[a-zA-Z0-9@._:ÄäÜüΣσ-]{0,24}"
    }

    fn identity() -> impl Strategy<Value = LookerIdentity> {
        prop_oneof![
            text().prop_map(LookerIdentity::Role),
            (prop_oneof![Just("email".to_owned()), text()], text()).prop_map(
                |(credential_type, credential_id)| LookerIdentity::User {
                    credential_type,
                    credential_id,
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn wire_json_round_trips(identity in identity()) {
            let text = serde_json::to_string(&identity).unwrap();
            let back: LookerIdentity = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, identity);
        }

        #[test]
        fn email_keys_ignore_ascii_case(id in text()) {
            let lower = LookerIdentity::User {
                credential_type: "email".into(),
                credential_id: id.to_ascii_lowercase(),
            };
            let upper = LookerIdentity::User {
                credential_type: "email".into(),
                credential_id: id.to_ascii_uppercase(),
            };
            prop_assert_eq!(lower.key(), upper.key());
            prop_assert_eq!(lower.canonical(), upper.canonical());
        }

        #[test]
        fn keys_are_equal_exactly_when_canonical_forms_are(a in identity(), b in identity()) {
            if !ambiguous(&a, &b) {
                prop_assert_eq!(a.key() == b.key(), a.canonical() == b.canonical());
            }
            prop_assert_eq!(a.canonical().key(), a.key());
            prop_assert_eq!(a.canonical().canonical(), a.canonical());
        }

        #[test]
        fn other_credentials_keep_their_case(t in text(), id in text()) {
            prop_assume!(!folds_case(&t));
            let identity = LookerIdentity::User { credential_type: t.clone(), credential_id: id.clone() };
            prop_assert_eq!(identity.key(), format!("user:{t}:{id}"));
        }
    }

    /// Keys join parts with `:`, which names may contain: `user:a:b` + `c` and `user:a` +
    /// `b:c` collide. Cache keys only ever meet identities a policy produced.
    fn ambiguous(a: &LookerIdentity, b: &LookerIdentity) -> bool {
        let colons = |i: &LookerIdentity| match i {
            LookerIdentity::Role(n) => n.contains(':'),
            LookerIdentity::User {
                credential_type,
                credential_id,
            } => credential_type.contains(':') || credential_id.contains(':'),
        };
        colons(a) || colons(b)
    }
}
