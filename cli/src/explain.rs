//! `lookergate explain`: what the policy decides for one request, and why — the Looker
//! operation matched, why each earlier rule did not match, the deciding rule, shadow
//! hits, and the Looker identity. Built on the filter's own code: the same target
//! hygiene, operation table, query reading and policy (`Policy::explain` is `evaluate`
//! with a trace). With a token, the filter's whole decision (`decision::decide`) is run
//! too, and is authoritative.

use std::fmt::Write as _;

use lookergate::config::Gateway;
use lookergate::decision::{self, Decision, HeadDecision, RequestView, GATEWAY_OWNED_OPERATIONS};
use lookergate::jwt::{self, KeySet, VerifiedToken};
use lookergate::keyring::KeyRing;
use lookergate::looker::{Operation, Resolution};
use lookergate::path;
use lookergate::policy::{Evaluation, Input, LookerIdentity, QueryFacts, Verdict};
use lookergate::ratelimit::RateLimit;
use lookergate::reply::Refusal;
use serde_json::{Map, Value};

use lookergate::decision::BODY_QUERY_OPERATIONS;
use lookergate::policy::INSPECTABLE_QUERY_OPERATIONS;

/// Headers that ask a server to treat the request as another method (as in the filter).
const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Claims given directly: there is no token, so nothing about them is verified.
    Claims {
        claims: Map<String, Value>,
        origin: String,
    },
    /// A token, verified as the filter would verify it.
    Token(String),
}

/// The request to explain.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// Path and query, as the client sends them.
    pub target: String,
    /// Extra request headers, lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// `"POST /api/4.0/queries/run/json"`.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(method), Some(target), None)
                if method.bytes().all(|b| b.is_ascii_alphabetic()) =>
            {
                Ok(Request {
                    method: method.to_ascii_uppercase(),
                    target: target.to_owned(),
                    ..Request::default()
                })
            }
            _ => Err(format!(
                "--request {line:?}: expected \"METHOD /path\", e.g. \"GET /api/4.0/user\""
            )),
        }
    }

    /// `"name: value"`.
    pub fn add_header(&mut self, header: &str) -> Result<(), String> {
        let (name, value) = header
            .split_once(':')
            .filter(|(n, _)| !n.trim().is_empty())
            .ok_or_else(|| format!("--header {header:?}: expected \"name: value\""))?;
        self.headers
            .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        Ok(())
    }
}

/// What the gateway would do.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Allow {
        rule: String,
        identity: LookerIdentity,
        rate_limit: Option<RateLimit>,
    },
    /// `rule` is set when the policy decided (403 naming the rule).
    Deny {
        status: u32,
        code: String,
        rule: Option<String>,
        reason: String,
    },
}

/// Everything `explain` found out, rendered by [`Explanation::render`].
#[derive(Debug, Clone)]
pub struct Explanation {
    pub request_line: String,
    /// How the principal was established, and who it is.
    pub principal: Vec<String>,
    pub operation: Option<Operation>,
    /// The query the policy saw, and where it was read from.
    pub query: Option<(QueryFacts, &'static str)>,
    /// `None` when the request was refused before the policy.
    pub evaluation: Option<Evaluation>,
    /// The policy's rules, in order.
    pub rules: Vec<String>,
    pub outcome: Outcome,
    pub notes: Vec<String>,
}

/// Installs `jwks` in `ring` as the keys of the issuers that fetch theirs remotely (the
/// CLI does not reach the IdP through Envoy), so tokens of those issuers can be verified.
pub fn install_remote_keys(
    gateway: &Gateway,
    jwks: &Value,
    ring: &mut KeyRing,
) -> Result<usize, String> {
    let mut installed = 0;
    for issuer in gateway.issuers.iter().filter(|i| i.remote.is_some()) {
        let (keys, _skipped) = KeySet::from_jwks(jwks).map_err(|e| format!("--jwks: {e}"))?;
        ring.install(issuer, keys);
        installed += 1;
    }
    Ok(installed)
}

pub fn explain(
    gateway: &Gateway,
    ring: &mut KeyRing,
    request: &Request,
    principal: &Principal,
    now_unix: u64,
) -> Explanation {
    let mut ex = Explanation {
        request_line: format!("{} {}", request.method, request.target),
        principal: Vec::new(),
        operation: None,
        query: None,
        evaluation: None,
        rules: gateway
            .policy
            .rules()
            .iter()
            .map(|r| r.name.clone())
            .collect(),
        outcome: Outcome::Deny {
            status: 0,
            code: String::new(),
            rule: None,
            reason: String::new(),
        },
        notes: Vec::new(),
    };
    let target = match path::parse_target(&request.target) {
        Ok(t) => t,
        Err(bad) => {
            return ex.refused(&Refusal::BadRequest {
                reason: bad.0.to_owned(),
            })
        }
    };
    // Shown even when the request is refused earlier: it helps to know what was meant.
    ex.operation = resolve(gateway, &request.method, &target.path)
        .ok()
        .flatten()
        .cloned();
    if let Some((name, _)) = request
        .headers
        .iter()
        .find(|(n, _)| METHOD_OVERRIDE_HEADERS.contains(&n.as_str()))
    {
        let reason = format!(
            "the {name} header is not allowed: the gateway decides on the request's own method"
        );
        return ex.refused(&Refusal::BadRequest { reason });
    }
    let (claims, filter_decision) = match principal {
        Principal::Claims { claims, origin } => {
            ex.principal.push(format!("claims from {origin}: signature, issuer, audience and expiry NOT verified (--claims)"));
            let iss = claims.get("iss").and_then(Value::as_str);
            if let Some(iss) = iss.filter(|iss| !gateway.issuers.iter().any(|i| i.issuer == *iss)) {
                ex.notes.push(format!(
                    "iss {iss:?} is not a trusted issuer: the filter would refuse a token from it"
                ));
            }
            (claims.clone(), None)
        }
        Principal::Token(token) => {
            let decision = filter_decision(gateway, ring, request, token, now_unix);
            let verified = verify(gateway, ring, token, now_unix);
            if let Ok(v) = &verified {
                ex.principal.push(describe_token(v, now_unix));
            }
            match (decision, verified) {
                // Refused before the policy (bad token, unknown operation, ...): that is the answer.
                (Err(refusal), verified) if !matches!(refusal, Refusal::Forbidden { .. }) => {
                    if let Ok(v) = verified {
                        ex.principal.push(describe_claims(&v.claims));
                    }
                    return ex.refused(&refusal);
                }
                (_, Err(refusal)) => return ex.refused(&refusal),
                (decision, Ok(v)) => (v.claims, Some(decision)),
            }
        }
    };
    ex.principal.push(describe_claims(&claims));
    let outcome = ex.evaluate(gateway, request, &target, &claims);
    if let Some(decision) = filter_decision {
        // The filter's own decision is authoritative; disagreeing is a bug in explain.
        let agrees = match (&decision, &outcome) {
            (Ok(rule), Ok(Outcome::Allow { rule: r, .. })) => rule == r,
            (Err(Refusal::Forbidden { rule, .. }), Ok(Outcome::Deny { rule: Some(r), .. })) => {
                rule == r
            }
            (Err(refusal), Err(mine)) => refusal == mine,
            _ => false,
        };
        if !agrees {
            ex.notes.push(format!("explain's own evaluation differs from the filter's decision ({decision:?}): please report"));
            if let Err(refusal) = &decision {
                return ex.refused(refusal);
            }
        }
    }
    match outcome {
        Ok(outcome) => {
            ex.outcome = outcome;
            ex
        }
        Err(refusal) => ex.refused(&refusal),
    }
}

impl Explanation {
    fn refused(mut self, refusal: &Refusal) -> Explanation {
        let (rule, reason) = match refusal {
            Refusal::Forbidden { rule, reason } => (Some(rule.clone()), reason.clone()),
            other => (None, refusal_reason(other)),
        };
        self.outcome = Outcome::Deny {
            status: refusal.status(),
            code: refusal.code().to_owned(),
            rule,
            reason,
        };
        self
    }

    /// Operation, query, policy: what the filter does once the token is verified.
    fn evaluate(
        &mut self,
        gateway: &Gateway,
        request: &Request,
        target: &path::RequestTarget<'_>,
        claims: &Map<String, Value>,
    ) -> Result<Outcome, Refusal> {
        let operation = resolve(gateway, &request.method, &target.path)?;
        if let Some(op) = operation {
            if GATEWAY_OWNED_OPERATIONS.contains(&op.operation_id.as_str()) {
                return Err(Refusal::GatewayOwnsAuthentication {
                    operation: op.operation_id.clone(),
                });
            }
        }
        let id = operation.map_or("", |o| o.operation_id.as_str());
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut input = Input {
            issuer,
            method: &request.method,
            path: &target.path,
            operation,
            claims,
            query: None,
        };
        let mut query = None;
        if INSPECTABLE_QUERY_OPERATIONS.contains(&id) && gateway.policy.needs_query(&input) {
            let (body, from) = if BODY_QUERY_OPERATIONS.contains(&id) {
                let body = request.body.as_deref().unwrap_or_default();
                if request.body.is_none() {
                    self.notes.push("a rule inspects this operation's query body, and no --body was given: the filter reads an empty body".to_owned());
                }
                if body.len() > gateway.max_body_bytes {
                    return Err(Refusal::PayloadTooLarge {
                        limit: gateway.max_body_bytes,
                    });
                }
                (Some(body), "the body and the URL")
            } else {
                (None, "the URL")
            };
            let facts = decision::read_query(id, &target.path, target.query, body)
                .map_err(|reason| Refusal::BadRequest { reason })?;
            query = Some((facts, from));
        }
        self.query.clone_from(&query);
        input.query = query.as_ref().map(|(facts, _)| facts);
        let evaluation = gateway.policy.explain(&input);
        self.evaluation = Some(evaluation.clone());
        match evaluation.verdict {
            Verdict::Allow { rule, identity } => {
                let rate_limit = gateway
                    .policy
                    .rule(&rule)
                    .and_then(|r| r.rate_limit.clone());
                Ok(Outcome::Allow {
                    rule,
                    identity,
                    rate_limit,
                })
            }
            Verdict::Deny { rule, reason } => {
                let refusal = Refusal::Forbidden {
                    rule: rule.clone(),
                    reason: reason.clone(),
                };
                Ok(Outcome::Deny {
                    status: refusal.status(),
                    code: refusal.code().to_owned(),
                    rule: Some(rule),
                    reason,
                })
            }
        }
    }

    /// The verdict, for scripts: allow or deny.
    pub fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allow { .. })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, text: &str| {
            let _ = writeln!(out, "{label:<10} {text}");
        };
        line("request", &self.request_line);
        let mut principal = self.principal.iter();
        if let Some(first) = principal.next() {
            line("principal", first);
        }
        for more in principal {
            line("", more);
        }
        match &self.operation {
            Some(op) => {
                line(
                    "operation",
                    &format!(
                        "{} ({} {}{})",
                        op.operation_id,
                        op.method,
                        lookergate::looker::API_PREFIX,
                        op.template
                    ),
                );
                let tags = if op.tags.is_empty() {
                    "-".to_owned()
                } else {
                    op.tags.join(", ")
                };
                line(
                    "",
                    &format!(
                        "tags: {tags}; activity type: {}; status: {}",
                        op.activity_type, op.status
                    ),
                );
            }
            None => line(
                "operation",
                "none (not a Looker API 4.0 operation, or outside api_prefix)",
            ),
        }
        if let Some((q, from)) = &self.query {
            let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
            let limit = q.limit.map_or_else(
                || "none (Looker's default 5000)".to_owned(),
                |l| l.to_string(),
            );
            let filters = if q.filters.is_empty() {
                "none".to_owned()
            } else {
                q.filters
                    .iter()
                    .map(|(field, value)| format!("{field}={value:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            line(
                "query",
                &format!(
                    "model {}, view {}, limit {limit}, filters {filters} (from {from})",
                    or_dash(&q.model),
                    or_dash(&q.view)
                ),
            );
        }
        out.push_str(&self.render_rules());
        if let Some(evaluation) = &self.evaluation {
            let shadows: Vec<String> = evaluation
                .shadows
                .iter()
                .map(|s| format!("{} would {}", s.rule, s.would))
                .collect();
            let shadows = if shadows.is_empty() {
                "none".to_owned()
            } else {
                shadows.join(", ")
            };
            let _ = writeln!(out, "{:<10} {shadows}", "shadow");
        }
        match &self.outcome {
            Outcome::Allow {
                rule,
                identity,
                rate_limit,
            } => {
                let _ = writeln!(out, "{:<10} ALLOW by rule {rule:?}", "verdict");
                let who = match identity {
                    LookerIdentity::Role(name) => {
                        format!("role:{name} (the role's service account; the broker holds its API3 credentials)")
                    }
                    LookerIdentity::User { credential_type, credential_id } => format!(
                        "user:{credential_type}:{credential_id} (the user themselves: the broker logs in as the Looker user with {credential_type} credential {credential_id:?}, via sudo)"
                    ),
                };
                let _ = writeln!(out, "{:<10} {who}", "identity");
                if let Some(limit) = rate_limit {
                    let db = limit
                        .db_queries_per_minute
                        .map(|n| format!(", {n} db queries/min"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{:<10} {}/s, burst {}{db} per principal (sub); not simulated here",
                        "ratelimit", limit.per_second, limit.burst
                    );
                }
            }
            Outcome::Deny {
                status,
                code,
                rule,
                reason,
            } => {
                let by = rule
                    .as_ref()
                    .map(|r| format!(" by rule {r:?}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{:<10} DENY{by}: {status} {code}: {reason}", "verdict");
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "{:<10} {note}", "note");
        }
        out
    }

    fn render_rules(&self) -> String {
        let mut out = String::new();
        let Some(evaluation) = &self.evaluation else {
            let _ = writeln!(
                out,
                "{:<10} not evaluated: the request is refused before the policy",
                "rules"
            );
            return out;
        };
        let _ = writeln!(out, "rules");
        let width = self.rules.iter().map(String::len).max().unwrap_or(0);
        let decider = match &evaluation.verdict {
            Verdict::Allow { rule, .. } | Verdict::Deny { rule, .. } => rule.as_str(),
        };
        let mut decided = false;
        for (i, name) in self.rules.iter().enumerate() {
            let status = if decided {
                "not reached".to_owned()
            } else if let Some((_, why)) = evaluation.trace.iter().find(|(rule, _)| rule == name) {
                if why.starts_with("shadow rule") {
                    why.clone()
                } else {
                    format!("no match: {why}")
                }
            } else if name == decider {
                decided = true;
                match &evaluation.verdict {
                    Verdict::Allow { .. } => "matches: decides ALLOW".to_owned(),
                    Verdict::Deny { reason, .. } => format!("matches: decides DENY ({reason})"),
                }
            } else {
                "not reached".to_owned()
            };
            let _ = writeln!(out, "  {:>2}. {name:<width$}  {status}", i + 1);
        }
        if !decided {
            let _ = writeln!(
                out,
                "      no rule decided: {}",
                lookergate::policy::DEFAULT_DENY
            );
        }
        out
    }
}

/// The operation below the API prefix: `Ok(None)` outside it, 404 for unknown paths.
fn resolve<'g>(
    gateway: &'g Gateway,
    method: &str,
    path: &str,
) -> Result<Option<&'g Operation>, Refusal> {
    let Some(rest) = path
        .strip_prefix(gateway.api_prefix.as_str())
        .filter(|r| r.is_empty() || r.starts_with('/'))
    else {
        return Ok(None);
    };
    match gateway.operations.resolve(method, rest) {
        Resolution::Found(op) => Ok(Some(op)),
        Resolution::NotFound | Resolution::WrongMethod => Err(Refusal::UnknownOperation {
            reason: format!("{method} {path} is not an operation of Looker's API 4.0"),
        }),
    }
}

/// The filter's own decision for the request carrying `token`: `Ok(rule)` for an allow.
fn filter_decision(
    gateway: &Gateway,
    ring: &mut KeyRing,
    request: &Request,
    token: &str,
    now_unix: u64,
) -> Result<String, Refusal> {
    let issuer = jwt::peek_issuer(token)
        .and_then(|iss| gateway.issuers.iter().find(|i| i.issuer == iss))
        .or_else(|| gateway.issuers.first());
    let mut headers = request.headers.clone();
    if let Some(issuer) = issuer {
        let value = match &issuer.source.prefix {
            Some(prefix) => format!("{prefix}{token}"),
            None => token.to_owned(),
        };
        headers.push((issuer.source.header.clone(), value));
    }
    let view = RequestView {
        method: request.method.clone(),
        path: request.target.clone(),
        request_id: "lookergate-explain".to_owned(),
        headers,
    };
    let decision = match decision::decide(gateway, ring, &view, now_unix) {
        HeadDecision::Decided(decision) => decision,
        HeadDecision::NeedBody(admitted) => {
            let body = request.body.as_deref().unwrap_or_default();
            if body.len() > gateway.max_body_bytes {
                return Err(Refusal::PayloadTooLarge {
                    limit: gateway.max_body_bytes,
                });
            }
            decision::decide_body(gateway, *admitted, body)
        }
    };
    match decision {
        Decision::Forward { audit, .. } => Ok(audit.rule.unwrap_or_default()),
        Decision::Refuse { refusal, .. } => Err(refusal),
    }
}

/// Verifies the token with the issuer the filter would choose.
fn verify(
    gateway: &Gateway,
    ring: &mut KeyRing,
    token: &str,
    now_unix: u64,
) -> Result<VerifiedToken, Refusal> {
    let iss = jwt::peek_issuer(token);
    let issuer = match gateway.issuers.as_slice() {
        [only] => Some(only),
        many => many.iter().find(|i| Some(&i.issuer) == iss.as_ref()),
    }
    .ok_or(Refusal::InvalidToken {
        code: "unknown_issuer",
        detail: "the token's issuer is not trusted".to_owned(),
    })?;
    match ring.verify(issuer, token, now_unix) {
        Ok(verified) => Ok(VerifiedToken::clone(&verified)),
        Err(lookergate::config::IssuerError::NoKeys) => Err(Refusal::KeysUnavailable),
        Err(lookergate::config::IssuerError::Token(e)) => Err(Refusal::InvalidToken {
            code: e.code(),
            detail: e.to_string(),
        }),
    }
}

fn describe_token(token: &VerifiedToken, now_unix: u64) -> String {
    let kid = token.kid.as_deref().unwrap_or("-");
    let left = token.expires_at.saturating_sub(now_unix);
    format!(
        "token verified as the filter would, now: issuer {}, alg {}, kid {kid}, expires in {left}s",
        token.issuer, token.alg
    )
}

fn describe_claims(claims: &Map<String, Value>) -> String {
    let text = |v: Option<&Value>| match v {
        None => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect();
            if items.is_empty() {
                "(none)".to_owned()
            } else {
                items.join(", ")
            }
        }
        Some(other) => other.to_string(),
    };
    format!(
        "sub {}, email {}, groups {}",
        text(claims.get("sub")),
        text(claims.get("email")),
        text(claims.get("groups"))
    )
}

fn refusal_reason(refusal: &Refusal) -> String {
    match refusal {
        Refusal::MissingToken => "no token".to_owned(),
        Refusal::InvalidToken { detail, .. } => detail.clone(),
        Refusal::BadRequest { reason } | Refusal::UnknownOperation { reason } => reason.clone(),
        Refusal::Forbidden { reason, .. } => reason.clone(),
        Refusal::GatewayOwnsAuthentication { operation } => {
            format!("{operation}: clients never log in or out through the gateway: it owns authentication")
        }
        Refusal::PayloadTooLarge { limit } => format!("the body a rule must inspect exceeds max_body_bytes ({limit})"),
        Refusal::KeysUnavailable => {
            "the issuer's keys are fetched remotely and the CLI does not fetch them: pass --jwks FILE, or use --claims".to_owned()
        }
        other => other.code().to_owned(),
    }
}
