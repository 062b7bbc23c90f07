//! The gateway's side of the broker protocol (docs/DESIGN.md): the callout request
//! for an identity, and the answer parsed into a token or a refusal.

use lookergate_proto::broker::{
    ErrorCode, ErrorResponse, InvalidateRequest, TokenRequest, TokenResponse,
};

use lookergate_proto::embed::{
    AcquireRequest, EmbedUser, GenerateTokensRequest, LogoutRequest, Principal, SessionTokens,
    SsoUrlRequest, SsoUrlResponse,
};

use crate::config::BrokerSettings;
use crate::policy::embed::{Endpoint, MAX_BODY_BYTES};
use crate::reply::Refusal;

pub use lookergate_proto::LookerIdentity;

/// Largest broker answer read; a token answer is a few hundred bytes.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// A Looker token as the broker issued it.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerToken {
    pub access_token: String,
    pub expires_in_secs: u64,
}

impl std::fmt::Debug for BrokerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerToken")
            .field(
                "access_token",
                &crate::fingerprint(self.access_token.as_bytes()),
            )
            .field("expires_in_secs", &self.expires_in_secs)
            .finish()
    }
}

/// A broker callout: its headers and JSON body.
pub type BrokerRequest = (Vec<(&'static str, String)>, String);

/// A protocol body as JSON. These types always serialize; were one not to, the empty
/// body would be refused by the broker (fail closed).
fn body<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The callout: headers and JSON body.
pub fn token_request(
    settings: &BrokerSettings,
    identity: &LookerIdentity,
    subject: &str,
    request_id: &str,
) -> (Vec<(&'static str, String)>, String) {
    let request = TokenRequest {
        identity: identity.clone(),
        subject: Some(subject.to_owned()),
        request_id: Some(request_id.to_owned()),
    };
    let headers = vec![
        (":method", "POST".to_owned()),
        (":path", settings.path.clone()),
        (":authority", settings.authority.clone()),
        ("content-type", "application/json".to_owned()),
        (
            "authorization",
            format!("Bearer {}", settings.credential.expose()),
        ),
    ];
    (headers, body(&request))
}

/// Asks the broker to drop an identity's token (Looker rejected it).
pub fn invalidate_request(
    settings: &BrokerSettings,
    identity: &LookerIdentity,
) -> (Vec<(&'static str, String)>, String) {
    let (mut headers, _) = token_request(settings, identity, "", "");
    for (name, value) in headers.iter_mut() {
        if *name == ":path" {
            *value = format!("{}/invalidate", settings.path.trim_end_matches('/'));
        }
    }
    let request = InvalidateRequest {
        identity: identity.clone(),
    };
    (headers, body(&request))
}

/// Whether a failed token call is worth its one retry, which the cluster's load
/// balancer sends to the next broker replica (Envoy's `dispatch_http_call` has no retry
/// policy): no answer (connect failure, reset; a timeout leaves no budget anyway) or a
/// 503 that is not a broker's own error answer (Envoy's connect error, no healthy
/// upstream). A broker's `looker_unavailable` is not retried: every replica asks the
/// same Looker, which needs fewer logins then, not more.
pub fn worth_retrying(status: Option<u32>, body: &[u8]) -> bool {
    match status {
        None => true,
        Some(503) => serde_json::from_slice::<ErrorResponse>(body).is_err(),
        Some(_) => false,
    }
}

/// Interprets the broker's answer. `status` is `None` when Envoy could not reach the
/// broker or the call timed out. Anything unexpected fails closed.
pub fn parse_token_response(
    status: Option<u32>,
    body: &[u8],
    rule: &str,
) -> Result<BrokerToken, Refusal> {
    let unavailable = |reason: &str| Refusal::BrokerUnavailable {
        reason: reason.to_owned(),
    };
    let Some(status) = status else {
        return Err(unavailable("the token broker did not answer in time"));
    };
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(unavailable("the token broker's answer is too large"));
    }
    if status != 200 {
        return Err(broker_error(status, body, rule));
    }
    let answer: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| unavailable("the token broker's answer is not a token"))?;
    // The token becomes a header value: refuse anything that could split or smuggle.
    let valid = !answer.access_token.is_empty()
        && answer.access_token.len() <= 4096
        && answer.access_token.bytes().all(|b| b.is_ascii_graphic());
    if !valid || answer.expires_in == 0 {
        return Err(unavailable(
            "the token broker's answer is not a usable token",
        ));
    }
    Ok(BrokerToken {
        access_token: answer.access_token,
        expires_in_secs: answer.expires_in,
    })
}

/// The refusal for a broker's error answer (any endpoint); anything unexpected is
/// "broker unavailable".
fn broker_error(status: u32, body: &[u8], rule: &str) -> Refusal {
    let unavailable = |reason: &str| Refusal::BrokerUnavailable {
        reason: reason.to_owned(),
    };
    let code = serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .map(|e| e.error);
    match (status, code) {
        (403, Some(ErrorCode::NoLookerUser)) => Refusal::NoLookerUser {
            rule: rule.to_owned(),
        },
        (502, Some(ErrorCode::BadCredentials)) => Refusal::LookerCredentialsRejected,
        (404, Some(ErrorCode::NoEmbedSession)) => Refusal::NoEmbedSession,
        (501, Some(ErrorCode::EmbedDisabled)) => Refusal::EmbedDisabled,
        (_, Some(ErrorCode::LookerUnavailable)) => {
            unavailable("Looker is unavailable to the token broker")
        }
        (_, Some(ErrorCode::UnknownRole)) => {
            unavailable("the token broker does not know this rule's role")
        }
        (401, _) => unavailable("the token broker refused the gateway's credential"),
        _ => Refusal::BrokerUnavailable {
            reason: format!("the token broker answered {status}"),
        },
    }
}

/// What an embed endpoint asks the broker for.
pub struct EmbedAsk<'a> {
    pub endpoint: Endpoint,
    pub principal: &'a Principal,
    pub profile: &'a str,
    pub user: &'a EmbedUser,
    pub request_id: &'a str,
}

/// The tokens the Embed SDK sends to `generate_tokens` (other fields, such as a
/// `session_reference_token`, are ignored: only the broker holds that).
#[derive(serde::Deserialize)]
struct SdkTokens {
    api_token: String,
    navigation_token: String,
}

/// The body of `sso_url`.
#[derive(serde::Deserialize)]
struct SsoTarget {
    target_url: String,
}

/// The broker callout for an embed endpoint's request: headers and JSON body. `body`
/// is the client's (read only by `generate_tokens` and `sso_url`); a malformed one is a
/// 400.
pub fn embed_request(
    settings: &BrokerSettings,
    ask: &EmbedAsk<'_>,
    body: &[u8],
) -> Result<BrokerRequest, Refusal> {
    let bad = |reason: &str| Refusal::BadRequest {
        reason: reason.to_owned(),
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(Refusal::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let principal = ask.principal.clone();
    let profile = ask.profile.to_owned();
    let user = ask.user.clone();
    let request_id = Some(ask.request_id.to_owned());
    let json = match ask.endpoint {
        Endpoint::Acquire => self::body(&AcquireRequest {
            principal,
            profile,
            user,
            request_id,
        }),
        Endpoint::Logout => self::body(&LogoutRequest {
            principal,
            profile,
            user,
            request_id,
        }),
        Endpoint::GenerateTokens => {
            let tokens: SdkTokens = serde_json::from_slice(body).map_err(|_| {
                bad("the body must be JSON with the session's api_token and navigation_token")
            })?;
            if tokens.api_token.is_empty() || tokens.navigation_token.is_empty() {
                return Err(bad("api_token and navigation_token must not be empty"));
            }
            self::body(&GenerateTokensRequest {
                principal,
                profile,
                user,
                api_token: tokens.api_token,
                navigation_token: tokens.navigation_token,
                request_id,
            })
        }
        Endpoint::SsoUrl => {
            let target: SsoTarget = serde_json::from_slice(body)
                .map_err(|_| bad("the body must be JSON with a target_url"))?;
            let url = target.target_url;
            let path = match url.split_once("://") {
                Some((_, rest)) => rest.find('/').and_then(|i| rest.get(i..)).unwrap_or(""),
                None => url.as_str(),
            };
            if !path.starts_with("/embed/") || url.len() > 2048 || url.chars().any(char::is_control)
            {
                return Err(bad("target_url must be a Looker embed page (/embed/...)"));
            }
            self::body(&SsoUrlRequest {
                principal,
                profile,
                user,
                target_url: url,
                request_id,
            })
        }
    };
    let headers = vec![
        (":method", "POST".to_owned()),
        (":path", ask.endpoint.broker_path().to_owned()),
        (":authority", settings.authority.clone()),
        ("content-type", "application/json".to_owned()),
        (
            "authorization",
            format!("Bearer {}", settings.credential.expose()),
        ),
    ];
    Ok((headers, json))
}

/// The broker's answer to an embed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedAnswer {
    /// acquire, generate_tokens: what the browser gets (no session reference token).
    Tokens(SessionTokens),
    /// logout.
    Ended,
    /// sso_url.
    Url(SsoUrlResponse),
}

/// Interprets the broker's answer to an embed call (`status` `None`: no answer in
/// time). Anything unexpected fails closed.
pub fn parse_embed_response(
    endpoint: Endpoint,
    status: Option<u32>,
    body: &[u8],
    rule: &str,
) -> Result<EmbedAnswer, Refusal> {
    let unavailable = |reason: &str| Refusal::BrokerUnavailable {
        reason: reason.to_owned(),
    };
    let Some(status) = status else {
        return Err(unavailable("the token broker did not answer in time"));
    };
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(unavailable("the token broker's answer is too large"));
    }
    match (endpoint, status) {
        (Endpoint::Logout, 200 | 204) => Ok(EmbedAnswer::Ended),
        (Endpoint::Acquire | Endpoint::GenerateTokens, 200) => serde_json::from_slice(body)
            .map(EmbedAnswer::Tokens)
            .map_err(|_| unavailable("the token broker's answer is not an embed session")),
        (Endpoint::SsoUrl, 200) => serde_json::from_slice::<SsoUrlResponse>(body)
            .ok()
            .filter(|u| u.url.starts_with("https://") || u.url.starts_with("http://"))
            .map(EmbedAnswer::Url)
            .ok_or_else(|| unavailable("the token broker's answer is not an embed URL")),
        // The broker checks what it signs (an SSO target URL on the Looker host).
        (_, 400)
            if serde_json::from_slice::<ErrorResponse>(body)
                .is_ok_and(|e| e.error == ErrorCode::BadRequest) =>
        {
            Err(Refusal::BadRequest {
                reason: "the token broker refused the embed request as malformed".to_owned(),
            })
        }
        _ => Err(broker_error(status, body, rule)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn request_carries_identity_and_gateway_credential() {
        let settings = BrokerSettings {
            cluster: "b".into(),
            authority: "broker".into(),
            path: "/v1/token".into(),
            timeout: Duration::from_secs(1),
            credential: "gateway-secret-123456".into(),
        };
        let (headers, body) = token_request(
            &settings,
            &LookerIdentity::Role("analyst".into()),
            "alice",
            "r1",
        );
        assert!(headers.contains(&("authorization", "Bearer gateway-secret-123456".into())));
        assert!(headers.contains(&(":path", "/v1/token".into())));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["identity"], json!({"kind": "role", "name": "analyst"}));
        assert_eq!(body["subject"], "alice");
        let user = LookerIdentity::User {
            credential_type: "email".into(),
            credential_id: "c@x".into(),
        };
        let (_, body) = token_request(&settings, &user, "carol", "r2");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["identity"]["credential_id"], "c@x");
    }

    #[test]
    fn answers_map_to_tokens_or_refusals() {
        let ok = br#"{"access_token":"abc123","token_type":"token","expires_in":3600}"#;
        assert_eq!(
            parse_token_response(Some(200), ok, "r"),
            Ok(BrokerToken {
                access_token: "abc123".into(),
                expires_in_secs: 3600
            })
        );
        let cases: Vec<(Option<u32>, &[u8], u32)> = vec![
            (None, b"", 503),
            (Some(200), b"<html>", 503),
            (Some(200), br#"{"access_token":"a b","expires_in":1}"#, 503),
            (
                Some(200),
                br#"{"access_token":"a\r\nx: y","expires_in":1}"#,
                503,
            ),
            (Some(200), br#"{"access_token":"","expires_in":1}"#, 503),
            (Some(200), br#"{"access_token":"abc","expires_in":0}"#, 503),
            (Some(200), br#"{"access_token":"abc""#, 503),
            (Some(500), b"oops", 503),
            (Some(401), br#"{"error":"unauthorized"}"#, 503),
            (Some(503), br#"{"error":"looker_unavailable"}"#, 503),
            (Some(403), br#"{"error":"no_looker_user"}"#, 403),
            (Some(502), br#"{"error":"bad_credentials"}"#, 502),
        ];
        for (status, body, want) in cases {
            let got = parse_token_response(status, body, "r").map_err(|r| r.status());
            assert_eq!(
                got,
                Err(want),
                "{status:?} {:?}",
                String::from_utf8_lossy(body)
            );
        }
        let huge = vec![b' '; MAX_RESPONSE_BYTES + 1];
        assert!(parse_token_response(Some(200), &huge, "r").is_err());
    }

    #[test]
    fn only_failures_on_the_way_to_a_broker_are_retried() {
        let cases: Vec<(Option<u32>, &[u8], bool)> = vec![
            (None, b"", true),
            (
                Some(503),
                b"upstream connect error or disconnect/reset before headers",
                true,
            ),
            (Some(503), b"no healthy upstream", true),
            (
                Some(503),
                br#"{"error":"looker_unavailable","message":"x"}"#,
                false,
            ),
            (Some(500), b"oops", false),
            (Some(502), br#"{"error":"bad_credentials"}"#, false),
            (Some(403), br#"{"error":"no_looker_user"}"#, false),
            (Some(401), br#"{"error":"unauthorized"}"#, false),
            (Some(200), b"<html>", false),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                worth_retrying(status, body),
                want,
                "{status:?} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
