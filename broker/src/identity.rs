//! Who the gateway asks a Looker token for ([`LookerIdentity`], one definition in
//! `lookergate_proto`) and the key of the broker's session cache.

pub use lookergate_proto::LookerIdentity;

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
    /// The session of `identity`: identities Looker cannot tell apart (e-mail case,
    /// `LookerIdentity::canonical`) share one, as they share one key in the filter.
    pub fn of(identity: &LookerIdentity) -> CacheKey {
        match identity.canonical() {
            LookerIdentity::Role(name) => CacheKey::Role(name),
            LookerIdentity::User {
                credential_type,
                credential_id,
            } => CacheKey::User {
                credential_type,
                credential_id,
            },
        }
    }

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
        assert_eq!(CacheKey::of(&a), CacheKey::of(&b));
        assert_eq!(CacheKey::of(&a).kind(), "user");
    }
}
