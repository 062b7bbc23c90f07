//! What each callout a worker sent is for, found by its token when the answer comes:
//! each kind is read with its own bound and handled by its own code.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callout {
    /// A broker call for the Looker token of an identity (its cache key).
    Token(String),
    /// An issuer's OIDC discovery document (the issuer's name).
    Discovery(String),
    /// An issuer's JWKS (the issuer's name).
    Keys(String),
    /// A token-invalidation call to the broker (its answer is not read).
    Invalidate,
    /// A broker call for an embed endpoint's request (the context it answers).
    Embed(u32),
    /// A `ShouldRateLimit` gRPC call for a request's global limit (its context).
    RateLimit(u32),
}

/// A worker's callouts awaiting their answer, by callout token.
pub type Callouts = HashMap<u32, Callout>;
