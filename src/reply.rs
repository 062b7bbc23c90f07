//! Every refusal the gateway sends, and the one function that turns it into a local
//! reply: JSON body, status, and headers. Reasons never contain a token or secret.

use serde_json::json;

pub use crate::http::LocalReply;

/// Why the gateway answers a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token where the issuer says to look.
    MissingToken,
    /// A token was presented and failed verification (`code` is stable, `detail` human).
    InvalidToken { code: &'static str, detail: String },
    /// The request target or headers are malformed or ambiguous.
    BadRequest { reason: String },
    /// The policy denied; `rule` is the deciding rule or `default_deny`.
    Forbidden { rule: String, reason: String },
    /// The broker knows no Looker user for this principal (per-user identities).
    NoLookerUser { rule: String },
    /// The path is under the API prefix but names no Looker API operation.
    UnknownOperation { reason: String },
    /// Clients may not log in or out through the gateway: it owns authentication.
    GatewayOwnsAuthentication { operation: String },
    /// The body a rule must inspect is larger than the configured bound.
    PayloadTooLarge { limit: usize },
    /// The body a rule must inspect did not arrive in time.
    BodyTimeout,
    /// The principal exceeded a rule's rate limit.
    RateLimited {
        rule: String,
        retry_after_secs: u64,
        budget: &'static str,
    },
    /// A rule's global rate limit could not be checked (the rate limit service or its
    /// Redis failed) and the rule fails closed (`on_unavailable: "deny"`).
    RateLimitUnavailable { rule: String },
    /// The issuer's keys are not available yet (remote JWKS never fetched, or stale).
    KeysUnavailable,
    /// The broker (or Looker behind it) could not give a token in time.
    BrokerUnavailable { reason: String },
    /// The broker answered, but Looker refused the identity's credentials.
    LookerCredentialsRejected,
    /// Looker's embed operations are the gateway's (its embed endpoints).
    GatewayOwnsEmbedding { operation: String },
    /// An embed endpoint's path with another method; `allow` is the one it takes.
    MethodNotAllowed { allow: &'static str },
    /// The embed profile needs a claim the token lacks (named; its value never).
    MissingClaim { rule: String, claim: String },
    /// The broker has no embed session for this principal and profile.
    NoEmbedSession,
    /// The broker has no embed credential: embedding is off.
    EmbedDisabled,
}

impl Refusal {
    /// The stable short reason for logs, metrics and the audit trail.
    pub fn code(&self) -> &str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::InvalidToken { code, .. } => code,
            Refusal::BadRequest { .. } => "bad_request",
            Refusal::UnknownOperation { .. } => "unknown_operation",
            Refusal::GatewayOwnsAuthentication { .. } => "gateway_owns_authentication",
            Refusal::PayloadTooLarge { .. } => "payload_too_large",
            Refusal::KeysUnavailable => "keys_unavailable",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::RateLimitUnavailable { .. } => "rate_limit_unavailable",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::Forbidden { .. } => "forbidden",
            Refusal::NoLookerUser { .. } => "no_looker_user",
            Refusal::BrokerUnavailable { .. } => "broker_unavailable",
            Refusal::LookerCredentialsRejected => "bad_credentials",
            Refusal::GatewayOwnsEmbedding { .. } => "gateway_owns_embedding",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::MissingClaim { .. } => "missing_claim",
            Refusal::NoEmbedSession => "no_embed_session",
            Refusal::EmbedDisabled => "embed_disabled",
        }
    }

    pub fn status(&self) -> u32 {
        match self {
            Refusal::MissingToken | Refusal::InvalidToken { .. } => 401,
            Refusal::BadRequest { .. } => 400,
            Refusal::UnknownOperation { .. } => 404,
            Refusal::GatewayOwnsAuthentication { .. } => 403,
            Refusal::PayloadTooLarge { .. } => 413,
            Refusal::KeysUnavailable => 503,
            Refusal::RateLimited { .. } => 429,
            Refusal::RateLimitUnavailable { .. } => 503,
            Refusal::BodyTimeout => 408,
            Refusal::Forbidden { .. } | Refusal::NoLookerUser { .. } => 403,
            Refusal::BrokerUnavailable { .. } => 503,
            Refusal::LookerCredentialsRejected => 502,
            Refusal::GatewayOwnsEmbedding { .. } | Refusal::MissingClaim { .. } => 403,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::NoEmbedSession => 404,
            Refusal::EmbedDisabled => 501,
        }
    }

    /// Builds the reply. `request_id` is Envoy's `x-request-id`, echoed for support.
    pub fn to_reply(&self, request_id: &str) -> LocalReply {
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
        ];
        let body = match self {
            Refusal::MissingToken => {
                headers.push((
                    "www-authenticate",
                    r#"Bearer realm="lookergate""#.to_owned(),
                ));
                json!({"error": "missing_token", "reason": "no bearer token was presented", "request_id": request_id})
            }
            Refusal::InvalidToken { code, detail } => {
                // RFC 6750 §3: error_description must be printable ASCII without '"' or '\'.
                let description: String = detail
                    .chars()
                    .filter(|c| c.is_ascii_graphic() || *c == ' ')
                    .filter(|c| *c != '"' && *c != '\\')
                    .collect();
                headers.push((
                    "www-authenticate",
                    format!(r#"Bearer realm="lookergate", error="invalid_token", error_description="{description}""#),
                ));
                json!({"error": "invalid_token", "reason": format!("{code}: {detail}"), "request_id": request_id})
            }
            Refusal::BadRequest { reason } => {
                json!({"error": "bad_request", "reason": reason, "request_id": request_id})
            }
            Refusal::UnknownOperation { reason } => {
                json!({"error": "not_found", "reason": reason, "request_id": request_id})
            }
            Refusal::GatewayOwnsAuthentication { operation } => json!({
                "error": "forbidden",
                "reason": format!("gateway_owns_authentication: {operation} is not available through the gateway; it logs in to Looker for you"),
                "request_id": request_id,
            }),
            Refusal::PayloadTooLarge { limit } => json!({
                "error": "payload_too_large",
                "reason": format!("the request body exceeds {limit} bytes"),
                "request_id": request_id,
            }),
            Refusal::BodyTimeout => json!({
                "error": "request_timeout",
                "reason": "body_timeout: the request body a policy rule inspects did not arrive in time",
                "request_id": request_id,
            }),
            Refusal::RateLimited {
                rule,
                retry_after_secs,
                budget,
            } => {
                headers.push(("retry-after", retry_after_secs.to_string()));
                json!({
                    "error": "rate_limited",
                    "reason": format!("rate limit of rule {rule} exceeded ({budget}); retry after {retry_after_secs}s"),
                    "rule": rule,
                    "request_id": request_id,
                })
            }
            Refusal::RateLimitUnavailable { rule } => {
                headers.push(("retry-after", "1".to_owned()));
                json!({
                    "error": "rate_limit_unavailable",
                    "reason": format!("the global rate limit of rule {rule} cannot be checked now (the rate limit service is unavailable); retry shortly"),
                    "rule": rule,
                    "request_id": request_id,
                })
            }
            Refusal::KeysUnavailable => {
                headers.push(("retry-after", "2".to_owned()));
                json!({
                    "error": "keys_unavailable",
                    "reason": "the identity provider's signing keys are not available yet; retry shortly",
                    "request_id": request_id,
                })
            }
            Refusal::Forbidden { rule, reason } => {
                json!({"error": "forbidden", "reason": format!("{reason} (rule {rule})"), "rule": rule, "request_id": request_id})
            }
            Refusal::NoLookerUser { rule } => json!({
                "error": "forbidden",
                "reason": "no_looker_user: Looker has no user for this principal",
                "rule": rule,
                "request_id": request_id,
            }),
            Refusal::BrokerUnavailable { reason } => {
                headers.push(("retry-after", "1".to_owned()));
                json!({"error": "broker_unavailable", "reason": reason, "request_id": request_id})
            }
            Refusal::LookerCredentialsRejected => json!({
                "error": "bad_gateway",
                "reason": "bad_credentials: Looker refused the gateway's credentials for this identity",
                "request_id": request_id,
            }),
            Refusal::GatewayOwnsEmbedding { operation } => json!({
                "error": "forbidden",
                "reason": format!("gateway_owns_embedding: {operation} is not available through the gateway; use its embed endpoints"),
                "request_id": request_id,
            }),
            Refusal::MethodNotAllowed { allow } => {
                headers.push(("allow", (*allow).to_owned()));
                json!({
                    "error": "method_not_allowed",
                    "reason": format!("this endpoint takes {allow}"),
                    "request_id": request_id,
                })
            }
            Refusal::MissingClaim { rule, claim } => json!({
                "error": "forbidden",
                "reason": format!("missing_claim: the token has no claim {claim:?}, which the embed profile of rule {rule} needs"),
                "rule": rule,
                "claim": claim,
                "request_id": request_id,
            }),
            Refusal::NoEmbedSession => json!({
                "error": "not_found",
                "reason": "no_embed_session: there is no embed session for this principal; acquire one first",
                "request_id": request_id,
            }),
            Refusal::EmbedDisabled => json!({
                "error": "not_implemented",
                "reason": "embed_disabled: the token broker has no embed credential configured",
                "request_id": request_id,
            }),
        };
        // Looker's clients (the official SDKs) read `message` from every error body.
        let mut body = body;
        if let Some(object) = body.as_object_mut() {
            let message = object.get("reason").cloned().unwrap_or_default();
            object.insert("message".to_owned(), message);
            object.insert(
                "documentation_url".to_owned(),
                json!("https://github.com/lookergate/lookergate#errors"),
            );
        }
        LocalReply {
            status: self.status(),
            headers,
            body: body.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(reply: &LocalReply) -> serde_json::Value {
        serde_json::from_str(&reply.body).unwrap()
    }

    fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn each_refusal_has_its_status_and_json_shape() {
        let cases = [
            (Refusal::MissingToken, 401, "missing_token"),
            (
                Refusal::InvalidToken {
                    code: "token_expired",
                    detail: "the token expired".into(),
                },
                401,
                "invalid_token",
            ),
            (
                Refusal::BadRequest { reason: "x".into() },
                400,
                "bad_request",
            ),
            (
                Refusal::Forbidden {
                    rule: "no-eve".into(),
                    reason: "denied".into(),
                },
                403,
                "forbidden",
            ),
            (Refusal::NoLookerUser { rule: "r".into() }, 403, "forbidden"),
            (
                Refusal::BrokerUnavailable {
                    reason: "timeout".into(),
                },
                503,
                "broker_unavailable",
            ),
            (Refusal::LookerCredentialsRejected, 502, "bad_gateway"),
            (
                Refusal::UnknownOperation { reason: "x".into() },
                404,
                "not_found",
            ),
            (
                Refusal::GatewayOwnsAuthentication {
                    operation: "login".into(),
                },
                403,
                "forbidden",
            ),
            (
                Refusal::PayloadTooLarge { limit: 10 },
                413,
                "payload_too_large",
            ),
            (Refusal::KeysUnavailable, 503, "keys_unavailable"),
            (Refusal::BodyTimeout, 408, "request_timeout"),
            (
                Refusal::GatewayOwnsEmbedding {
                    operation: "acquire_embed_cookieless_session".into(),
                },
                403,
                "forbidden",
            ),
            (
                Refusal::MethodNotAllowed { allow: "PUT" },
                405,
                "method_not_allowed",
            ),
            (
                Refusal::MissingClaim {
                    rule: "r".into(),
                    claim: "region".into(),
                },
                403,
                "forbidden",
            ),
            (Refusal::NoEmbedSession, 404, "not_found"),
            (Refusal::EmbedDisabled, 501, "not_implemented"),
            (
                Refusal::RateLimited {
                    rule: "r".into(),
                    retry_after_secs: 2,
                    budget: "requests",
                },
                429,
                "rate_limited",
            ),
            (
                Refusal::RateLimitUnavailable { rule: "r".into() },
                503,
                "rate_limit_unavailable",
            ),
        ];
        for (refusal, status, error) in cases {
            let reply = refusal.to_reply("req-1");
            assert_eq!(reply.status, status, "{refusal:?}");
            let b = body(&reply);
            assert_eq!(b["error"], error, "{refusal:?}");
            assert_eq!(b["request_id"], "req-1");
            assert!(b["reason"].as_str().is_some_and(|r| !r.is_empty()));
            assert_eq!(b["message"], b["reason"], "Looker SDKs read `message`");
            assert_eq!(header(&reply, "content-type"), Some("application/json"));
        }
    }

    #[test]
    fn embed_refusals_name_the_method_and_the_claim() {
        let reply = Refusal::MethodNotAllowed { allow: "PUT" }.to_reply("r");
        assert_eq!(header(&reply, "allow"), Some("PUT"));
        let reply = Refusal::MissingClaim {
            rule: "embed-dashboards".into(),
            claim: "region".into(),
        }
        .to_reply("r");
        let b = body(&reply);
        assert_eq!(b["claim"], "region");
        assert!(b["reason"].as_str().unwrap().starts_with("missing_claim:"));
    }

    #[test]
    fn unauthorized_replies_carry_rfc6750_challenges() {
        let missing = Refusal::MissingToken.to_reply("r");
        assert_eq!(
            header(&missing, "www-authenticate"),
            Some(r#"Bearer realm="lookergate""#)
        );
        let invalid = Refusal::InvalidToken {
            code: "bad_signature",
            detail: "sig \"bad\"\n".into(),
        }
        .to_reply("r");
        let challenge = header(&invalid, "www-authenticate").unwrap();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
        assert!(
            challenge.ends_with(r#"error_description="sig bad""#),
            "{challenge}"
        );
    }

    #[test]
    fn forbidden_names_the_rule() {
        let reply = Refusal::Forbidden {
            rule: "no-eve".into(),
            reason: "denied by rule".into(),
        }
        .to_reply("r");
        let b = body(&reply);
        assert_eq!(b["rule"], "no-eve");
        assert!(b["reason"].as_str().unwrap().contains("no-eve"));
    }
}
