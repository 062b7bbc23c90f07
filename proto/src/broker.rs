//! The broker protocol (DESIGN.md "Broker HTTP API"): what the gateway sends to
//! `/v1/token` and `/v1/token/invalidate`, and what the broker answers.

use serde::{Deserialize, Serialize};

use crate::identity::LookerIdentity;

/// Where the broker hands out tokens.
pub const TOKEN_PATH: &str = "/v1/token";

/// Where the gateway asks the broker to drop a token Looker rejected.
pub const INVALIDATE_PATH: &str = "/v1/token/invalidate";

/// The `token_type` of every token answer (Looker's own word for its session tokens).
pub const TOKEN_TYPE: &str = "token";

/// The body of `POST /v1/token`. `subject` and `request_id` are for the broker's audit
/// trail only. Unknown fields are ignored, so a newer gateway can add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub identity: LookerIdentity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The body of `POST /v1/token/invalidate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidateRequest {
    pub identity: LookerIdentity,
}

/// The broker's answer to a token request (200).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    /// Whole seconds the token has left.
    pub expires_in: u64,
}

impl TokenResponse {
    pub fn new(access_token: impl Into<String>, expires_in: u64) -> Self {
        TokenResponse {
            access_token: access_token.into(),
            token_type: TOKEN_TYPE.to_owned(),
            expires_in,
        }
    }
}

/// The token never prints, only its fingerprint.
impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field(
                "access_token",
                &crate::fingerprint(self.access_token.as_bytes()),
            )
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why the broker refused: the `error` of every non-2xx answer, with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401: the gateway credential is missing or wrong.
    Unauthorized,
    /// 400: the request body is not a valid token request.
    BadRequest,
    /// 404: the broker has no role of that name.
    UnknownRole,
    /// 403: no Looker user has the credential (per-user mode).
    NoLookerUser,
    /// 502: Looker refused the broker's API3 credentials.
    BadCredentials,
    /// 503: Looker could not be reached, or answered unexpectedly.
    LookerUnavailable,
    /// 501: the broker has no `embed` configuration (embed endpoints only).
    EmbedDisabled,
    /// 404: the principal has no live embed session for that profile (generate_tokens,
    /// logout): acquire first.
    NoEmbedSession,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::Unauthorized,
        ErrorCode::BadRequest,
        ErrorCode::UnknownRole,
        ErrorCode::NoLookerUser,
        ErrorCode::BadCredentials,
        ErrorCode::LookerUnavailable,
        ErrorCode::EmbedDisabled,
        ErrorCode::NoEmbedSession,
    ];

    /// The code as it is written on the wire, in logs and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownRole => "unknown_role",
            ErrorCode::NoLookerUser => "no_looker_user",
            ErrorCode::BadCredentials => "bad_credentials",
            ErrorCode::LookerUnavailable => "looker_unavailable",
            ErrorCode::EmbedDisabled => "embed_disabled",
            ErrorCode::NoEmbedSession => "no_embed_session",
        }
    }

    /// The HTTP status the broker answers with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::BadRequest => 400,
            ErrorCode::UnknownRole => 404,
            ErrorCode::NoLookerUser => 403,
            ErrorCode::BadCredentials => 502,
            ErrorCode::LookerUnavailable => 503,
            ErrorCode::EmbedDisabled => 501,
            ErrorCode::NoEmbedSession => 404,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorCode,
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn error_codes_are_written_as_documented() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
        let answer: ErrorResponse = serde_json::from_str(r#"{"error":"no_looker_user"}"#).unwrap();
        assert_eq!(answer.error, ErrorCode::NoLookerUser);
        assert_eq!(answer.error.status(), 403);
        assert!(serde_json::from_str::<ErrorResponse>(r#"{"error":"nope"}"#).is_err());
    }

    #[test]
    fn token_answers_hide_the_token_in_debug() {
        let answer = TokenResponse::new("abc123-secret", 60);
        let shown = format!("{answer:?}");
        assert!(!shown.contains("abc123-secret"), "{shown}");
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            json!({"access_token": "abc123-secret", "token_type": "token", "expires_in": 60})
        );
    }

    fn identity() -> impl Strategy<Value = LookerIdentity> {
        prop_oneof![
            ".{0,16}".prop_map(LookerIdentity::Role),
            (".{0,8}", ".{0,16}").prop_map(|(credential_type, credential_id)| {
                LookerIdentity::User {
                    credential_type,
                    credential_id,
                }
            }),
        ]
    }

    fn round_trip<T>(value: &T) -> T
    where
        T: Serialize + serde::de::DeserializeOwned,
    {
        serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
    }

    proptest! {
        #[test]
        fn token_requests_round_trip(
            identity in identity(),
            subject in proptest::option::of(".{0,16}"),
            request_id in proptest::option::of("[0-9a-f-]{0,36}"),
        ) {
            let request = TokenRequest { identity, subject, request_id };
            prop_assert_eq!(round_trip(&request), request);
        }

        #[test]
        fn invalidate_requests_round_trip(identity in identity()) {
            let request = InvalidateRequest { identity };
            prop_assert_eq!(round_trip(&request), request);
        }

        #[test]
        fn token_responses_round_trip(token in "[!-~]{1,64}", expires_in in any::<u64>()) {
            let answer = TokenResponse::new(token, expires_in);
            prop_assert_eq!(round_trip(&answer), answer);
        }

        #[test]
        fn error_responses_round_trip(index in 0..ErrorCode::ALL.len(), message in ".{0,32}") {
            let answer = ErrorResponse { error: ErrorCode::ALL[index], message };
            prop_assert_eq!(round_trip(&answer), answer);
        }
    }
}
