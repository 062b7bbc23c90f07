//! The per-request decision, pure: from what the client sent to either a refusal or
//! "forward as this Looker identity, with these header changes".

use crate::config::{Gateway, TokenSource};
use crate::jwt::{self, VerifiedToken};
use crate::path;
use crate::policy::{LookerIdentity, Verdict};
use crate::reply::Refusal;

/// What the filter read from the request: just what the decision needs.
#[derive(Debug, Default, Clone)]
pub struct RequestView {
    pub method: String,
    /// `:path` as received (path and query).
    pub path: String,
    /// Envoy's `x-request-id`, echoed in replies and logs.
    pub request_id: String,
    /// Every request header as (lower-case name, value).
    pub headers: Vec<(String, String)>,
}

/// One change to the request headers before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Remove(String),
    Set(String, String),
}

/// Who asked, what was decided and why: the audit record of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub rule: Option<String>,
    pub identity: Option<String>,
    /// `allow` or `deny`.
    pub verdict: &'static str,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Refuse { refusal: Refusal, audit: Audit },
    /// Forward once a Looker token for `identity` is at hand; `header_ops` excludes
    /// the Looker `authorization` header, added by [`with_looker_token`].
    Forward { identity: LookerIdentity, subject: String, header_ops: Vec<HeaderOp>, audit: Audit },
}

/// Verifies the token, evaluates the policy and plans the rewrite.
pub fn decide(gateway: &Gateway, request: &RequestView, now_unix: u64) -> Decision {
    let mut audit = Audit { verdict: "deny", ..Audit::default() };
    let refuse = |refusal: Refusal, mut audit: Audit| {
        audit.reason = Some(refusal.code().to_owned());
        Decision::Refuse { refusal, audit }
    };
    let target = match path::parse_target(&request.path) {
        Ok(t) => t,
        Err(bad) => return refuse(Refusal::BadRequest { reason: bad.0.to_owned() }, audit),
    };
    let verified = match authenticate(gateway, request, now_unix) {
        Ok(v) => v,
        Err(refusal) => return refuse(refusal, audit),
    };
    audit.subject = verified.subject.clone();
    audit.issuer = Some(verified.issuer.clone());
    match gateway.policy.evaluate(&request.method, &target.path, &verified.claims) {
        Verdict::Deny { rule, reason } => {
            audit.rule = Some(rule.clone());
            refuse(Refusal::Forbidden { rule, reason }, audit)
        }
        Verdict::Allow { rule, identity } => {
            audit.rule = Some(rule);
            audit.identity = Some(identity.key());
            audit.verdict = "allow";
            let mut header_ops = strip_client_credentials(gateway, request);
            // Forward exactly the path the policy matched (normalized), minus any token.
            let forward = path::strip_access_token(&target).unwrap_or_else(|| target.to_path());
            if forward != request.path {
                header_ops.push(HeaderOp::Set(":path".to_owned(), forward));
            }
            Decision::Forward {
                identity,
                subject: verified.subject.unwrap_or_default(),
                header_ops,
                audit,
            }
        }
    }
}

/// Appends the Looker token to a planned rewrite. Looker accepts `token X`.
pub fn with_looker_token(mut header_ops: Vec<HeaderOp>, looker_token: &str) -> Vec<HeaderOp> {
    header_ops.push(HeaderOp::Set("authorization".to_owned(), format!("token {looker_token}")));
    header_ops
}

fn authenticate(gateway: &Gateway, request: &RequestView, now_unix: u64) -> Result<VerifiedToken, Refusal> {
    let mut presented: Option<(&str, &str)> = None; // (header, token)
    for header in &gateway.token_headers {
        let mut values = request.headers.iter().filter(|(n, _)| n == header).map(|(_, v)| v.as_str());
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(Refusal::InvalidToken {
                code: "multiple_tokens",
                detail: format!("the {header} header was sent more than once"),
            });
        }
        if presented.is_some() {
            return Err(Refusal::InvalidToken {
                code: "multiple_tokens",
                detail: "tokens were presented in more than one header".to_owned(),
            });
        }
        presented = Some((header.as_str(), value));
    }
    let Some((header, value)) = presented else { return Err(Refusal::MissingToken) };
    // Several issuers may share a header; choose by the (unverified) `iss`, then verify.
    let candidates: Vec<_> = gateway.issuers.iter().filter(|i| i.source.header == header).collect();
    let chosen = match candidates.as_slice() {
        [only] => Some(*only),
        many => {
            let token = many.first().and_then(|i| token_from(&i.source, value));
            let iss = token.and_then(jwt::peek_issuer);
            many.iter().copied().find(|i| Some(&i.issuer) == iss.as_ref())
        }
    };
    let Some(issuer) = chosen else {
        return Err(Refusal::InvalidToken { code: "unknown_issuer", detail: "the token's issuer is not trusted".to_owned() });
    };
    let Some(token) = token_from(&issuer.source, value) else {
        return Err(Refusal::InvalidToken {
            code: "unsupported_scheme",
            detail: format!("the {header} header does not carry a bearer token"),
        });
    };
    issuer
        .verifier
        .verify(token, now_unix)
        .map_err(|e| Refusal::InvalidToken { code: e.code(), detail: e.to_string() })
}

/// The token in a header value, after the scheme prefix (case-insensitive).
fn token_from<'v>(source: &TokenSource, value: &'v str) -> Option<&'v str> {
    let value = value.trim();
    let token = match &source.prefix {
        None => value,
        Some(prefix) => {
            let scheme = prefix.trim();
            let head = value.get(..scheme.len())?;
            let rest = value.get(scheme.len()..)?;
            if !head.eq_ignore_ascii_case(scheme) || !rest.starts_with([' ', '\t']) {
                return None;
            }
            rest.trim_start()
        }
    };
    (!token.is_empty()).then_some(token)
}

/// Headers that must not reach Looker: the client's credentials and anything the
/// gateway owns. `authorization` is set again with the Looker token.
fn strip_client_credentials(gateway: &Gateway, request: &RequestView) -> Vec<HeaderOp> {
    let mut ops: Vec<HeaderOp> = Vec::new();
    let mut remove = |name: &str| {
        if !ops.iter().any(|op| matches!(op, HeaderOp::Remove(n) if n == name)) {
            ops.push(HeaderOp::Remove(name.to_owned()));
        }
    };
    for header in &gateway.token_headers {
        if header != "authorization" {
            remove(header);
        }
    }
    for (name, _) in &request.headers {
        if name == "cookie" || name == "proxy-authorization" || name.starts_with("x-lookergate-") {
            remove(name);
        }
    }
    ops
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testkeys::{sign_rs256, TestIssuer};
    use serde_json::json;

    fn gateway(issuer: &TestIssuer) -> Gateway {
        let config = json!({
            "issuers": [
                {"issuer": issuer.iss, "audiences": ["looker-api"], "jwks": issuer.jwks},
                {"issuer": "https://access.example", "audiences": ["app"], "jwks": issuer.jwks,
                 "from": {"header": "Cf-Access-Jwt-Assertion"}}
            ],
            "policy": {"rules": [
                {"name": "no-eve", "when": [{"claim": "sub", "equals": "eve"}], "deny": true},
                {"name": "analysts", "methods": ["GET"], "paths": ["/api/4.0/**"],
                 "when": [{"claim": "groups", "contains": "analysts"}], "allow": {"role": "analyst"}}
            ]},
            "broker": {"cluster": "broker", "credential": "0123456789abcdef-secret"}
        });
        Gateway::load(config.to_string().as_bytes()).unwrap()
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> RequestView {
        RequestView {
            method: "GET".into(),
            path: path.into(),
            request_id: "rid".into(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn allowed_request_strips_client_credentials_and_access_token() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        let jwt = sign_rs256(&idp, json!({"sub": "alice", "groups": ["analysts"], "aud": "looker-api"}));
        let bearer = format!("Bearer {jwt}");
        let req = request(
            "/api/4.0/user?access_token=stolen&fields=id",
            &[("authorization", &bearer), ("cookie", "looker=1"), ("x-lookergate-identity", "role:admin")],
        );
        match decide(&gw, &req, now()) {
            Decision::Forward { identity, subject, header_ops, audit } => {
                assert_eq!(identity, LookerIdentity::Role("analyst".into()));
                assert_eq!(subject, "alice");
                assert_eq!(audit.rule.as_deref(), Some("analysts"));
                let ops = with_looker_token(header_ops, "LOOKER");
                assert!(ops.contains(&HeaderOp::Remove("cookie".into())));
                assert!(ops.contains(&HeaderOp::Remove("x-lookergate-identity".into())));
                assert!(ops.contains(&HeaderOp::Set(":path".into(), "/api/4.0/user?fields=id".into())));
                assert_eq!(ops.last(), Some(&HeaderOp::Set("authorization".into(), "token LOOKER".into())));
            }
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn token_in_a_custom_header_works_and_that_header_is_stripped() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        let jwt = sign_rs256(&idp, json!({"iss": "https://access.example", "sub": "bob", "groups": ["analysts"], "aud": "app"}));
        let req = request("/api/4.0/user", &[("cf-access-jwt-assertion", &jwt)]);
        match decide(&gw, &req, now()) {
            Decision::Forward { header_ops, .. } => {
                assert!(header_ops.contains(&HeaderOp::Remove("cf-access-jwt-assertion".into())));
            }
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn refusals_by_case() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        let good = sign_rs256(&idp, json!({"sub": "alice", "groups": ["analysts"], "aud": "looker-api"}));
        let eve = sign_rs256(&idp, json!({"sub": "eve", "groups": ["analysts"], "aud": "looker-api"}));
        let bob = sign_rs256(&idp, json!({"sub": "bob", "groups": ["viewers"], "aud": "looker-api"}));
        let b = |t: &str| format!("Bearer {t}");
        let cases: Vec<(RequestView, u32, &str)> = vec![
            (request("/api/4.0/user", &[]), 401, "missing_token"),
            (request("/api/4.0/user", &[("authorization", &format!("Basic {good}"))]), 401, "unsupported_scheme"),
            (request("/api/4.0/user", &[("authorization", &b(&good)), ("authorization", &b(&good))]), 401, "multiple_tokens"),
            (request("/api/4.0/user", &[("authorization", &b(&good)), ("cf-access-jwt-assertion", &good)]), 401, "multiple_tokens"),
            (request("/api/4.0/user", &[("authorization", "Bearer not.a.jwt")]), 401, ""),
            (request("/api/4.0/user", &[("authorization", &b(&eve))]), 403, "forbidden"),
            (request("/api/4.0/user", &[("authorization", &b(&bob))]), 403, "forbidden"),
            (request("/api/4.0/../4.0/user", &[("authorization", &b(&good))]), 400, "bad_request"),
        ];
        for (req, status, code) in cases {
            match decide(&gw, &req, now()) {
                Decision::Refuse { refusal, audit } => {
                    assert_eq!(refusal.status(), status, "{req:?}: {refusal:?}");
                    if !code.is_empty() {
                        assert_eq!(refusal.code(), code, "{req:?}");
                    }
                    assert_eq!(audit.verdict, "deny");
                }
                other => panic!("{req:?}: expected refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_whitespace_tolerant() {
        let src = TokenSource { header: "authorization".into(), prefix: Some("Bearer ".into()) };
        assert_eq!(token_from(&src, "bearer abc"), Some("abc"));
        assert_eq!(token_from(&src, "BEARER   abc "), Some("abc"));
        assert_eq!(token_from(&src, "Bearerabc"), None);
        assert_eq!(token_from(&src, "Bearer "), None);
        assert_eq!(token_from(&src, "token abc"), None);
        let raw = TokenSource { header: "x-goog-iap-jwt-assertion".into(), prefix: None };
        assert_eq!(token_from(&raw, " abc"), Some("abc"));
    }
}
