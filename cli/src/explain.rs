//! `lookergate explain`: what the filter decides for one request, and why. It runs the
//! filter's own decision (`decision::decide_head_traced`, or `decide_claims` for stated
//! claims) with a recorder, and prints the steps it recorded: the issuer chosen, the
//! token verified, the Looker operation, the query read, each rule in order (why it did
//! not apply, its guardrails' verdict, what it decided), and the Looker identity — or,
//! for an embed endpoint, the embed profile and the embed user it makes of the claims.
//! Nothing of the decision is re-implemented here.

use std::borrow::Cow;
use std::fmt::Write as _;

use lookergate::config::Gateway;
use lookergate::decision::{
    self, Decision, EmbedCall, HeadDecision, IssuerChoice, OperationStep, QuerySource, RequestHead,
    Step,
};
use lookergate::jwt::{KeySet, VerifiedToken};
use lookergate::keyring::KeyRing;
use lookergate::looker::Operation;
use lookergate::path;
use lookergate::policy::{LookerIdentity, QueryFacts, RuleStep, Verdict};
use lookergate::ratelimit::RateLimit;
use lookergate::reply::Refusal;
use serde_json::{Map, Value};

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
    /// An embed endpoint's request: the broker is called with this embed user, and
    /// the gateway answers (nothing is forwarded).
    Embed {
        call: Box<EmbedCall>,
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

/// The filter's decision and the steps it recorded, rendered by [`Explanation::render`].
#[derive(Debug, Clone)]
pub struct Explanation {
    pub request_line: String,
    /// `Some(origin)` when the principal is stated claims (`--claims`), not a token.
    pub claims: Option<(Map<String, Value>, String)>,
    /// The steps of the filter's decision, in order.
    pub steps: Vec<Step>,
    /// The operation the request names, when the filter refused it before resolving
    /// one: it helps to know what was meant.
    pub meant: Option<Operation>,
    /// The policy's rules, in order.
    pub rules: Vec<String>,
    pub outcome: Outcome,
    pub notes: Vec<String>,
    /// When the decision was made (token lifetimes are shown from it).
    pub now_unix: u64,
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
    let mut headers = request.headers.clone();
    if let Principal::Token(token) = principal {
        headers.extend(decision::present_token(gateway, token));
    }
    let pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = headers
        .iter()
        .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str())))
        .collect();
    let head = RequestHead {
        method: &request.method,
        path: &request.target,
        headers: &pairs,
    };
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    let head_decision = match principal {
        Principal::Claims { claims, .. } => {
            decision::decide_claims(gateway, head, claims.clone(), &mut steps)
        }
        Principal::Token(_) => {
            decision::decide_head_traced(gateway, ring, head, now_unix, &mut steps)
        }
    };
    let decision = match head_decision {
        HeadDecision::Decided(decision) => decision,
        HeadDecision::Embed(call) => {
            let rate_limit = gateway
                .policy
                .rule(&call.rule)
                .and_then(|r| r.rate_limit.clone());
            return Explanation {
                request_line: format!("{} {}", request.method, request.target),
                claims: match principal {
                    Principal::Claims { claims, origin } => Some((claims.clone(), origin.clone())),
                    Principal::Token(_) => None,
                },
                steps,
                meant: None,
                rules: gateway
                    .policy
                    .rules()
                    .iter()
                    .map(|r| r.name.clone())
                    .collect(),
                outcome: Outcome::Embed { call, rate_limit },
                notes,
                now_unix,
            };
        }
        HeadDecision::NeedBody(admitted) => {
            let body = request.body.as_deref().unwrap_or_default();
            if request.body.is_none() {
                notes.push("a rule inspects this operation's query body, and no --body was given: the filter reads an empty body".to_owned());
            }
            if body.len() > gateway.max_body_bytes {
                // The filter refuses a body over the bound before reading it.
                Decision::Refuse {
                    refusal: Refusal::PayloadTooLarge {
                        limit: gateway.max_body_bytes,
                    },
                    audit: admitted.audit,
                }
            } else {
                decision::decide_body_traced(gateway, *admitted, body, &mut steps)
            }
        }
    };
    let outcome = match decision {
        Decision::Forward {
            identity, audit, ..
        } => {
            let rule = audit.rule.unwrap_or_default();
            let rate_limit = gateway
                .policy
                .rule(&rule)
                .and_then(|r| r.rate_limit.clone());
            Outcome::Allow {
                rule,
                identity,
                rate_limit,
            }
        }
        Decision::Refuse { refusal, .. } => denial(&refusal),
    };
    let resolved = steps.iter().any(|s| matches!(s, Step::Operation(_)));
    let meant = match path::parse_target(&request.target) {
        Ok(target) if !resolved => {
            decision::resolve_operation(gateway, &request.method, &target.path)
                .ok()
                .flatten()
                .cloned()
        }
        _ => None,
    };
    let claims = match principal {
        Principal::Claims { claims, origin } => Some((claims.clone(), origin.clone())),
        Principal::Token(_) => None,
    };
    if claims.is_some() {
        for step in &steps {
            if let Step::Unverified {
                issuer,
                trusted: false,
            } = step
            {
                if !issuer.is_empty() {
                    notes.push(format!(
                        "iss {issuer:?} is not a trusted issuer: the filter would refuse a token from it"
                    ));
                }
            }
        }
    }
    Explanation {
        request_line: format!("{} {}", request.method, request.target),
        claims,
        steps,
        meant,
        rules: gateway
            .policy
            .rules()
            .iter()
            .map(|r| r.name.clone())
            .collect(),
        outcome,
        notes,
        now_unix,
    }
}

fn denial(refusal: &Refusal) -> Outcome {
    let (rule, reason) = match refusal {
        Refusal::Forbidden { rule, reason } => (Some(rule.clone()), reason.clone()),
        other => (None, refusal_reason(other)),
    };
    Outcome::Deny {
        status: refusal.status(),
        code: refusal.code().to_owned(),
        rule,
        reason,
    }
}

impl Explanation {
    /// The verdict, for scripts: allow or deny.
    pub fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allow { .. } | Outcome::Embed { .. })
    }

    /// The policy's steps, if it was reached.
    fn rule_steps(&self) -> impl Iterator<Item = &RuleStep> {
        self.steps.iter().filter_map(|s| match s {
            Step::Rule(step) => Some(step),
            _ => None,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, text: &str| {
            let _ = writeln!(out, "{label:<10} {text}");
        };
        line("request", &self.request_line);
        let mut principal = Vec::new();
        if let Some((claims, origin)) = &self.claims {
            principal.push(format!("claims from {origin}: signature, issuer, audience and expiry NOT verified (--claims)"));
            principal.push(describe_claims(claims));
        }
        for step in &self.steps {
            if let Step::Verified(token) = step {
                principal.push(describe_token(token, self.now_unix));
                principal.push(describe_claims(&token.claims));
            }
        }
        let mut principal = principal.iter();
        if let Some(first) = principal.next() {
            line("principal", first);
        }
        for more in principal {
            line("", more);
        }
        for step in &self.steps {
            match step {
                Step::Issuer { header, choice } => line("issuer", &describe_issuer(header, choice)),
                Step::MethodOverride { header } => line(
                    "method",
                    &format!("the {header} header asks for another method: refused"),
                ),
                _ => {}
            }
        }
        let operation = self.steps.iter().find_map(|s| match s {
            Step::Operation(op) => Some(op),
            _ => None,
        });
        let embed = self.steps.iter().find_map(|s| match s {
            Step::Embed(endpoint) => Some(endpoint),
            _ => None,
        });
        match (operation, &self.meant) {
            _ if embed.is_some() => {
                if let Some(endpoint) = embed {
                    line(
                        "operation",
                        &format!(
                            "{} (an embed endpoint: the gateway answers it through the broker; never forwarded to Looker)",
                            endpoint.operation()
                        ),
                    );
                }
            }
            (Some(OperationStep::Found(op)), _) => {
                describe_operation(&mut line, op, "");
            }
            (Some(OperationStep::OutsidePrefix), _) => line(
                "operation",
                "none (outside api_prefix: not a Looker API 4.0 operation)",
            ),
            (Some(OperationStep::Unknown), _) => {
                line("operation", "none (not a Looker API 4.0 operation)")
            }
            (None, Some(op)) => describe_operation(
                &mut line,
                op,
                " (not resolved by the filter: it refused the request first)",
            ),
            (None, None) => line(
                "operation",
                "none (not a Looker API 4.0 operation, or outside api_prefix)",
            ),
        }
        for step in &self.steps {
            if let Step::Query { facts, from } = step {
                line("query", &describe_query(facts, *from));
            }
        }
        out.push_str(&self.render_rules());
        if self.rule_steps().next().is_some() {
            let shadows: Vec<String> = self
                .rule_steps()
                .filter_map(|s| match s {
                    RuleStep::Shadow { rule, verdict } => {
                        Some(format!("{rule} would {}", would(verdict)))
                    }
                    _ => None,
                })
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
            Outcome::Embed { call, rate_limit } => {
                let _ = writeln!(out, "{:<10} ALLOW by rule {:?}", "verdict", call.rule);
                let _ = writeln!(out, "{:<10} embed:{}", "identity", call.profile);
                out.push_str(&describe_embed_user(call));
                if let Some(limit) = rate_limit {
                    let _ = writeln!(
                        out,
                        "{:<10} {}/s, burst {} per principal (sub); not simulated here",
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
        if self.rule_steps().next().is_none() {
            let _ = writeln!(
                out,
                "{:<10} not evaluated: the request is refused before the policy",
                "rules"
            );
            return out;
        }
        let _ = writeln!(out, "rules");
        let width = self.rules.iter().map(String::len).max().unwrap_or(0);
        for (i, name) in self.rules.iter().enumerate() {
            let mut status = "not reached".to_owned();
            let mut guard = None;
            for step in self.rule_steps() {
                match step {
                    RuleStep::Skipped { rule, why } if rule == name => {
                        status = format!("no match: {why}");
                    }
                    RuleStep::Shadow { rule, verdict } if rule == name => {
                        status = format!("shadow rule: would {}", would(verdict));
                    }
                    RuleStep::Decides { rule, verdict } if rule == name => {
                        status = match verdict {
                            Verdict::Allow { .. } => "matches: decides ALLOW".to_owned(),
                            Verdict::Deny { reason, .. } => {
                                format!("matches: decides DENY ({reason})")
                            }
                        };
                    }
                    RuleStep::Embeds { rule, profile } if rule == name => {
                        status = format!("matches: decides ALLOW (embed profile {profile:?})");
                    }
                    RuleStep::Guard { rule, verdict } if rule == name => {
                        guard = Some(match verdict {
                            Ok(()) => "the query is within its guardrails".to_owned(),
                            Err(reason) => format!("its guardrails refuse the query: {reason}"),
                        });
                    }
                    _ => {}
                }
            }
            let _ = writeln!(out, "  {:>2}. {name:<width$}  {status}", i + 1);
            if let Some(guard) = guard {
                let _ = writeln!(out, "      {:<width$}  guard: {guard}", "");
            }
        }
        if self
            .rule_steps()
            .any(|s| matches!(s, RuleStep::DefaultDeny))
        {
            let _ = writeln!(
                out,
                "      no rule decided: {}",
                lookergate::policy::DEFAULT_DENY
            );
        }
        out
    }
}

/// The embed user the profile made (sensitive attribute values masked).
fn describe_embed_user(call: &EmbedCall) -> String {
    let user = &call.user;
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "{label:<10} {text}");
    };
    line(
        "principal",
        format!(
            "iss {:?}, sub {:?} (the embed session is bound to it)",
            call.principal.issuer, call.principal.subject
        ),
    );
    line(
        "embed user",
        format!("external_user_id {:?}", user.external_user_id),
    );
    let optional = [
        ("first_name", &user.first_name),
        ("last_name", &user.last_name),
        ("user_timezone", &user.user_timezone),
        ("external_group_id", &user.external_group_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            line("", format!("{name} {value:?}"));
        }
    }
    line("", format!("permissions {}", user.permissions.join(", ")));
    line("", format!("models {}", user.models.join(", ")));
    if !user.group_ids.is_empty() {
        line("", format!("group_ids {}", user.group_ids.join(", ")));
    }
    let attributes: Vec<String> = call
        .shown_attributes
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect();
    let attributes = if attributes.is_empty() {
        "none".to_owned()
    } else {
        attributes.join(", ")
    };
    line("", format!("user_attributes {attributes}"));
    line(
        "",
        format!(
            "session_length {}s, force_logout_login {}",
            user.session_length, user.force_logout_login
        ),
    );
    out
}

fn would(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Allow { .. } => "allow",
        Verdict::Deny { .. } => "deny",
    }
}

fn describe_issuer(header: &str, choice: &IssuerChoice) -> String {
    match choice {
        IssuerChoice::Only(issuer) => {
            format!("{issuer} (the only issuer reading the {header} header)")
        }
        IssuerChoice::ByIss {
            readers,
            iss,
            chosen: Some(issuer),
        } => format!(
            "{issuer} (named by the token's unverified iss {:?}, among the {readers} issuers reading the {header} header)",
            iss.as_deref().unwrap_or_default()
        ),
        IssuerChoice::ByIss {
            readers,
            iss: Some(iss),
            chosen: None,
        } => format!(
            "none: the token's unverified iss {iss:?} names none of the {readers} issuers reading the {header} header"
        ),
        IssuerChoice::ByIss {
            readers,
            iss: None,
            chosen: None,
        } => format!(
            "none: the token names no iss to choose among the {readers} issuers reading the {header} header"
        ),
    }
}

fn describe_operation(line: &mut impl FnMut(&str, &str), op: &Operation, aside: &str) {
    line(
        "operation",
        &format!(
            "{} ({} {}{}){aside}",
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

fn describe_query(q: &QueryFacts, from: QuerySource) -> String {
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
    let from = match from {
        QuerySource::Url => "the URL",
        QuerySource::BodyAndUrl => "the body and the URL",
    };
    format!(
        "model {}, view {}, limit {limit}, filters {filters} (from {from})",
        or_dash(&q.model),
        or_dash(&q.view)
    )
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
        Refusal::GatewayOwnsEmbedding { operation } => {
            format!("{operation}: Looker's embed operations are the gateway's: browsers use its embed endpoints")
        }
        Refusal::MissingClaim { rule, claim } => {
            format!("the token has no claim {claim:?}, which the embed profile of rule {rule:?} needs")
        }
        Refusal::MethodNotAllowed { allow } => format!("this embed endpoint takes {allow}"),
        Refusal::PayloadTooLarge { limit } => format!("the body a rule must inspect exceeds max_body_bytes ({limit})"),
        Refusal::KeysUnavailable => {
            "the issuer's keys are fetched remotely and the CLI does not fetch them: pass --jwks FILE, or use --claims".to_owned()
        }
        other => other.code().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{demo_signing_key, mint, unix_now, TokenSpec, DEMO_ISSUER, DEMO_JWKS_JSON};
    use serde_json::json;

    const OTHER: &str = "https://other.example";

    /// Two issuers share the `authorization` header (both trust the demo key).
    fn two_issuers() -> Gateway {
        let jwks: Value = serde_json::from_str(DEMO_JWKS_JSON).unwrap();
        let config = json!({
            "issuers": [
                {"issuer": DEMO_ISSUER, "audiences": ["looker-api"], "jwks": jwks},
                {"issuer": OTHER, "audiences": ["looker-api"], "jwks": jwks}
            ],
            "policy": {"rules": [
                {"name": "others", "issuers": [OTHER], "allow": {"role": "viewer"}},
                {"name": "demo", "allow": {"role": "analyst"}}
            ]},
            "broker": {"cluster": "broker", "credential": "0123456789abcdef-secret"}
        });
        Gateway::load(config.to_string().as_bytes()).unwrap()
    }

    fn token_from(iss: &str) -> Principal {
        let mut spec = TokenSpec::for_demo_user("alice", 600).unwrap();
        spec.iss = iss.to_owned();
        Principal::Token(mint(&demo_signing_key().unwrap(), &spec).unwrap())
    }

    fn run(gateway: &Gateway, principal: &Principal) -> String {
        let request = Request::parse("GET /api/4.0/user").unwrap();
        explain(
            gateway,
            &mut KeyRing::default(),
            &request,
            principal,
            unix_now(),
        )
        .render()
    }

    #[test]
    fn an_issuer_sharing_its_header_is_chosen_by_the_tokens_iss() {
        let gateway = two_issuers();
        let out = run(&gateway, &token_from(OTHER));
        assert!(
            out.contains("issuer     https://other.example (named by the token's unverified iss \"https://other.example\", among the 2 issuers reading the authorization header)"),
            "{out}"
        );
        assert!(out.contains("1. others  matches: decides ALLOW"), "{out}");
        assert!(out.contains("verdict    ALLOW by rule \"others\""), "{out}");

        let out = run(&gateway, &token_from("https://unknown.example"));
        assert!(
            out.contains("issuer     none: the token's unverified iss \"https://unknown.example\" names none of the 2 issuers reading the authorization header"),
            "{out}"
        );
        assert!(out.contains("verdict    DENY: 401 unknown_issuer"), "{out}");
        assert!(out.contains("rules      not evaluated"), "{out}");
    }

    #[test]
    fn an_embed_request_shows_the_rule_profile_and_embed_user_masked() {
        let jwks: Value = serde_json::from_str(DEMO_JWKS_JSON).unwrap();
        let config = json!({
            "issuers": [{"issuer": DEMO_ISSUER, "audiences": ["looker-api"], "jwks": jwks}],
            "policy": {"rules": [
                {"name": "api", "allow": {"role": "analyst"}},
                {"name": "embed-dashboards", "when": [{"claim": "sub", "one_of": ["alice", "bob"]}],
                 "allow": {"embed": "dashboards"}}
            ]},
            "embed": {"profiles": {"dashboards": {
                "permissions": ["access_data", "see_looks"], "models": ["thelook"],
                "user_attributes": {"region": {"claim": "region"},
                                    "ssn": {"claim": "ssn", "sensitive": true}}}}},
            "broker": {"cluster": "broker", "credential": "0123456789abcdef-secret"}
        });
        let gateway = Gateway::load(config.to_string().as_bytes()).unwrap();
        let mut spec = TokenSpec::for_demo_user("alice", 600).unwrap();
        spec.extra.insert("ssn".into(), json!("123-45-6789"));
        let principal = Principal::Token(mint(&demo_signing_key().unwrap(), &spec).unwrap());
        let request = Request::parse("POST /lookergate/embed/acquire").unwrap();
        let explanation = explain(
            &gateway,
            &mut KeyRing::default(),
            &request,
            &principal,
            unix_now(),
        );
        assert!(explanation.allowed());
        let out = explanation.render();
        assert!(
            out.contains("operation  embed_acquire (an embed endpoint"),
            "{out}"
        );
        assert!(
            out.contains("1. api               no match: not an embed rule"),
            "{out}"
        );
        assert!(
            out.contains(
                "2. embed-dashboards  matches: decides ALLOW (embed profile \"dashboards\")"
            ),
            "{out}"
        );
        assert!(out.contains("identity   embed:dashboards"), "{out}");
        assert!(
            out.contains(&format!("external_user_id \"{DEMO_ISSUER}|alice\"")),
            "{out}"
        );
        assert!(
            out.contains("user_attributes region=\"west\", ssn=\"(sensitive)\""),
            "{out}"
        );
        assert!(!out.contains("123-45-6789"), "{out}");

        // Bob without his region claim: refused, naming the claim.
        let mut spec = TokenSpec::for_demo_user("bob", 600).unwrap();
        spec.extra.remove("region");
        let principal = Principal::Token(mint(&demo_signing_key().unwrap(), &spec).unwrap());
        let out = explain(
            &gateway,
            &mut KeyRing::default(),
            &request,
            &principal,
            unix_now(),
        )
        .render();
        assert!(out.contains("DENY: 403 missing_claim"), "{out}");
    }

    #[test]
    fn stated_claims_name_an_untrusted_issuer_in_a_note() {
        let gateway = two_issuers();
        let claims = json!({"iss": "https://unknown.example", "sub": "x"});
        let principal = Principal::Claims {
            claims: claims.as_object().unwrap().clone(),
            origin: "--claims".to_owned(),
        };
        let out = run(&gateway, &principal);
        assert!(out.contains("NOT verified (--claims)"), "{out}");
        assert!(!out.contains("issuer     "), "no issuer is chosen: {out}");
        assert!(
            out.contains("note       iss \"https://unknown.example\" is not a trusted issuer"),
            "{out}"
        );
        assert!(out.contains("verdict    ALLOW by rule \"demo\""), "{out}");
    }
}
