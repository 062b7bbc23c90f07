//! The gateway's side of the broker protocol (docs/DESIGN.md): the callout request
//! for an identity, and the answer parsed into a token or a refusal.

use serde::Deserialize;
use serde_json::json;

use crate::config::BrokerSettings;
use crate::policy::LookerIdentity;
use crate::reply::Refusal;

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

/// An identity as the broker protocol writes it (docs/DESIGN.md).
fn identity_json(identity: &LookerIdentity) -> serde_json::Value {
    match identity {
        LookerIdentity::Role(name) => json!({"kind": "role", "name": name}),
        LookerIdentity::User {
            credential_type,
            credential_id,
        } => {
            json!({"kind": "user", "credential_type": credential_type, "credential_id": credential_id})
        }
    }
}

/// The callout: headers and JSON body.
pub fn token_request(
    settings: &BrokerSettings,
    identity: &LookerIdentity,
    subject: &str,
    request_id: &str,
) -> (Vec<(&'static str, String)>, String) {
    let identity = identity_json(identity);
    let body =
        json!({"identity": identity, "subject": subject, "request_id": request_id}).to_string();
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
    (headers, body)
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
    let identity = identity_json(identity);
    (headers, json!({ "identity": identity }).to_string())
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
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
        let code = serde_json::from_slice::<ErrorAnswer>(body)
            .map(|e| e.error)
            .unwrap_or_default();
        return Err(match (status, code.as_str()) {
            (403, "no_looker_user") => Refusal::NoLookerUser {
                rule: rule.to_owned(),
            },
            (502, "bad_credentials") => Refusal::LookerCredentialsRejected,
            (_, "looker_unavailable") => unavailable("Looker is unavailable to the token broker"),
            (_, "unknown_role") => unavailable("the token broker does not know this rule's role"),
            (401, _) => unavailable("the token broker refused the gateway's credential"),
            _ => Refusal::BrokerUnavailable {
                reason: format!("the token broker answered {status}"),
            },
        });
    }
    let answer: TokenAnswer = serde_json::from_slice(body)
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
