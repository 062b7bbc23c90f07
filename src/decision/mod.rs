//! The per-request decision, pure: from what the client sent to either a refusal or
//! "forward as this Looker identity, with these header changes". Each step can be
//! recorded ([`Step`], for `lookergate explain`); the filter records none.

use std::borrow::Cow;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::config::{Gateway, Issuer, IssuerError, TokenSource};
pub use crate::http::HeaderOp;
use crate::jwt::{self, Algorithm, VerifiedToken};
use crate::keyring::KeyRing;
use crate::looker::{Operation, Resolution};
use crate::path;
use crate::policy::embed::{Embed, Endpoint, Route};
use crate::policy::{
    EmbedVerdict, Input, LookerIdentity, QueryFacts, RuleStep, Verdict,
    GATEWAY_OWNED_EMBED_OPERATIONS, INSPECTABLE_QUERY_OPERATIONS,
};
use crate::reply::Refusal;
use crate::trace::{Off, Trace};
use lookergate_proto::embed::{EmbedUser, Principal};

mod looker_query;
pub use looker_query::{query_from_body, read_query};

/// A request with owned strings (the `explain` CLI, tests); see [`RequestHead`].
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

impl RequestView {
    /// The headers, borrowed, as [`RequestHead::headers`] wants them.
    pub fn header_pairs(&self) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        self.headers
            .iter()
            .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str())))
            .collect()
    }
}

/// What the decision reads from a request, borrowed: the filter reads it in place from
/// the host's header block, with no copy per header.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path` as received (path and query).
    pub path: &'a str,
    /// Every request header as (lower-case name, value), in order.
    pub headers: &'a [(Cow<'a, str>, Cow<'a, str>)],
}

impl<'a> RequestHead<'a> {
    /// `:method` and `:path` (empty if absent, as an absent path is refused anyway).
    pub fn new(headers: &'a [(Cow<'a, str>, Cow<'a, str>)]) -> RequestHead<'a> {
        RequestHead {
            method: header(headers, ":method").unwrap_or_default(),
            path: header(headers, ":path").unwrap_or_default(),
            headers,
        }
    }
}

/// The first value of header `name`.
pub fn header<'a>(headers: &'a [(Cow<'a, str>, Cow<'a, str>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_ref())
}

/// Who asked, what was decided and why: the audit record of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    pub subject: Option<String>,
    pub issuer: Option<String>,
    /// The principal's groups (the `groups` claim), comma-joined and bounded.
    pub groups: Option<String>,
    /// The Looker operationId, when the request resolved to one.
    pub operation: Option<String>,
    pub rule: Option<String>,
    pub identity: Option<String>,
    /// `allow` or `deny`.
    pub verdict: &'static str,
    pub reason: Option<String>,
    /// Shadow rules that matched, as `rule:would`.
    pub shadows: Vec<String>,
    /// Why it was refused, in words (the decision's log line; never a secret).
    pub detail: Option<String>,
}

/// What a request's headers decide: the decision, or to read the body first.
// `Decided` is nearly every request's path: boxing it would allocate for each one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadDecision {
    Decided(Decision),
    /// A rule inspects the query this request carries in its body: read the body
    /// (bounded), then call [`decide_body`].
    NeedBody(Box<Admitted>),
    /// An embed endpoint's request, allowed: the filter calls the broker and answers it
    /// itself (it is never forwarded).
    Embed(Box<EmbedCall>),
}

/// An allowed request to an embed endpoint: what the broker is asked, and what is
/// recorded of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedCall {
    pub endpoint: Endpoint,
    pub rule: String,
    pub profile: String,
    /// The token's `iss` and `sub`: whose session it is.
    pub principal: Principal,
    /// The embed user the profile made of the claims (never logged: attribute values).
    pub user: EmbedUser,
    /// `wasm.lookergate_embed`: profile, external user id and attributes, sensitive
    /// values masked.
    pub record: String,
    /// The user's attributes as shown (sensitive values masked), for `explain`.
    pub shown_attributes: std::collections::BTreeMap<String, String>,
    pub audit: Audit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Refuse {
        refusal: Refusal,
        audit: Audit,
    },
    /// Forward once a Looker token for `identity` is at hand; `header_ops` excludes
    /// the Looker `authorization` header, added by [`with_looker_token`].
    Forward {
        identity: LookerIdentity,
        /// The verified `iss`: with `subject`, the principal (rate-limit buckets).
        issuer: String,
        subject: String,
        header_ops: Vec<HeaderOp>,
        audit: Audit,
    },
}

/// A request that passed authentication and operation checks, awaiting the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    method: String,
    /// Normalized path without the query.
    path: String,
    operation_id: Option<String>,
    /// The verified token (shared with the worker's verified-token cache).
    token: Rc<VerifiedToken>,
    /// Header changes planned so far (credential stripping, path rewrite).
    header_ops: Vec<HeaderOp>,
    /// The query string as received (guarded operations read it as Looker does).
    query_string: Option<String>,
    pub audit: Audit,
}

/// One step of a decision, in order: what `lookergate explain` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The request asked to be treated as another method: refused.
    MethodOverride { header: String },
    /// The issuer chosen to verify the token presented in `header`, and why.
    Issuer {
        header: String,
        choice: IssuerChoice,
    },
    /// The token verified.
    Verified(Rc<VerifiedToken>),
    /// Claims stated, not verified (`explain --claims`); `trusted`: their `iss` is a
    /// configured issuer (a token from any other is refused).
    Unverified { issuer: String, trusted: bool },
    /// The Looker operation the method and path resolve to.
    Operation(OperationStep),
    /// The query a rule inspects, as read.
    Query {
        facts: QueryFacts,
        from: QuerySource,
    },
    /// A step of the policy's evaluation.
    Rule(RuleStep),
    /// The path is under `embed.path_prefix`: an embed endpoint (the gateway answers).
    Embed(Endpoint),
}

impl From<RuleStep> for Step {
    fn from(step: RuleStep) -> Step {
        Step::Rule(step)
    }
}

/// How the issuer of a presented token was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerChoice {
    /// The only issuer reading the token's header.
    Only(String),
    /// Several issuers read the header: the one the token's unverified `iss` names
    /// (`chosen`), if any.
    ByIss {
        readers: usize,
        iss: Option<String>,
        chosen: Option<String>,
    },
}

/// What the method and path resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationStep {
    /// Outside the API prefix: no Looker operation (rules match on method and path).
    OutsidePrefix,
    Found(Operation),
    /// Below the prefix, and no operation of Looker's API 4.0: refused.
    Unknown,
}

/// Where a query was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuerySource {
    /// The URL's path and query string (`run_url_encoded_query`).
    Url,
    /// The `WriteQuery` body, with a `limit` in the URL taking precedence.
    BodyAndUrl,
}

/// The policy's steps, recorded into a decision's trace.
struct Within<'t, T>(&'t mut T);

impl<T: Trace<Step>> Trace<RuleStep> for Within<'_, T> {
    #[inline(always)]
    fn record(&mut self, step: impl FnOnce() -> RuleStep) {
        self.0.record(|| Step::Rule(step()));
    }
}

/// Operations only the gateway performs: clients never log in to Looker through it.
/// (Looker's embed operations are the gateway's too: [`GATEWAY_OWNED_EMBED_OPERATIONS`].)
pub const GATEWAY_OWNED_OPERATIONS: &[&str] = &["login", "login_user", "logout"];

/// Headers that ask a server to treat the request as another method.
const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Verifies the token, resolves the Looker operation, evaluates the policy and plans
/// the rewrite, verifying with the worker's `keys`.
pub fn decide(
    gateway: &Gateway,
    keys: &mut KeyRing,
    request: &RequestView,
    now_unix: u64,
) -> HeadDecision {
    let headers = request.header_pairs();
    decide_head(
        gateway,
        keys,
        RequestHead {
            method: &request.method,
            path: &request.path,
            headers: &headers,
        },
        now_unix,
    )
}

/// [`decide`] on a borrowed request (the filter's path).
pub fn decide_head(
    gateway: &Gateway,
    keys: &mut KeyRing,
    request: RequestHead<'_>,
    now_unix: u64,
) -> HeadDecision {
    decide_head_traced(gateway, keys, request, now_unix, &mut Off)
}

/// [`decide_head`], recording each step into `trace`.
pub fn decide_head_traced<T: Trace<Step>>(
    gateway: &Gateway,
    keys: &mut KeyRing,
    request: RequestHead<'_>,
    now_unix: u64,
    trace: &mut T,
) -> HeadDecision {
    let authenticate = |audit: &mut Audit, trace: &mut T| {
        authenticate(gateway, keys, request, now_unix, &mut audit.issuer, trace)
    };
    if let Some((embed, route)) = embed_route(gateway, request) {
        return decide_embed(gateway, embed, route, request, trace, authenticate);
    }
    let admission = admit(gateway, request, trace, authenticate);
    decide_admitted(gateway, admission, trace)
}

/// What the filter decides for a request whose token carried `claims` and verified,
/// without a token (`lookergate explain --claims`): the request's own token headers
/// are not read, and nothing about the claims is checked.
pub fn decide_claims<T: Trace<Step>>(
    gateway: &Gateway,
    request: RequestHead<'_>,
    claims: Map<String, Value>,
    trace: &mut T,
) -> HeadDecision {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let issuer = text("iss").unwrap_or_default();
    let subject = text("sub");
    let token = Rc::new(VerifiedToken {
        claims,
        issuer,
        subject,
        // Read only by authentication, which stated claims skip.
        expires_at: 0,
        kid: None,
        alg: Algorithm::RS256,
    });
    let authenticate = |_: &mut Audit, trace: &mut T| {
        trace.record(|| Step::Unverified {
            trusted: issuer_named(gateway, &token.issuer).is_some(),
            issuer: token.issuer.clone(),
        });
        Ok(token)
    };
    if let Some((embed, route)) = embed_route(gateway, request) {
        return decide_embed(gateway, embed, route, request, trace, authenticate);
    }
    let admission = admit(gateway, request, trace, authenticate);
    decide_admitted(gateway, admission, trace)
}

/// The embed endpoint a request names, if its path is under `embed.path_prefix` (a
/// target that does not parse is left to the API path, which refuses it).
fn embed_route<'g>(gateway: &'g Gateway, request: RequestHead<'_>) -> Option<(&'g Embed, Route)> {
    let embed = gateway.embed.as_ref()?;
    let target = path::parse_target(request.path).ok()?;
    Some((embed, embed.route(request.method, &target.path)?))
}

/// The decision for a request to an embed endpoint: authenticated as any request, then
/// the first embed rule that holds picks the profile, which makes the embed user.
fn decide_embed<T: Trace<Step>>(
    gateway: &Gateway,
    embed: &Embed,
    route: Route,
    request: RequestHead<'_>,
    trace: &mut T,
    authenticate: impl FnOnce(&mut Audit, &mut T) -> Result<Rc<VerifiedToken>, Refusal>,
) -> HeadDecision {
    let mut audit = Audit {
        verdict: "deny",
        ..Audit::default()
    };
    let refused = |refusal: Refusal, audit: Audit| HeadDecision::Decided(refuse(refusal, audit));
    let endpoint = match route {
        Route::Endpoint(endpoint) => endpoint,
        Route::NotFound => {
            let reason = format!("{} is not an embed endpoint of the gateway", request.path);
            return refused(Refusal::UnknownOperation { reason }, audit);
        }
        Route::WrongMethod(allow) => return refused(Refusal::MethodNotAllowed { allow }, audit),
    };
    trace.record(|| Step::Embed(endpoint));
    audit.operation = Some(endpoint.operation().to_owned());
    if let Some((name, _)) = request
        .headers
        .iter()
        .find(|(n, _)| METHOD_OVERRIDE_HEADERS.contains(&n.as_ref()))
    {
        let reason = format!("the {name} header is not allowed on embed endpoints");
        return refused(Refusal::BadRequest { reason }, audit);
    }
    let verified = match authenticate(&mut audit, trace) {
        Ok(v) => v,
        Err(refusal) => return refused(refusal, audit),
    };
    audit.subject = verified.subject.clone();
    audit.issuer = Some(verified.issuer.clone());
    audit.groups = groups_summary(&verified.claims);
    let input = Input {
        issuer: &verified.issuer,
        method: request.method,
        path: request.path,
        operation: None,
        claims: &verified.claims,
        query: None,
    };
    let (rule, profile) = match gateway
        .policy
        .evaluate_embed_traced(&input, &mut Within(trace))
    {
        EmbedVerdict::Allow { rule, profile } => (rule, profile),
        EmbedVerdict::Deny { rule, reason } => {
            audit.rule = Some(rule.clone());
            return refused(Refusal::Forbidden { rule, reason }, audit);
        }
    };
    audit.rule = Some(rule.clone());
    let missing = |claim: &str| Refusal::MissingClaim {
        rule: rule.clone(),
        claim: claim.to_owned(),
    };
    // `compile` checks every embed rule's profile exists.
    let Some(found) = embed.profile(&profile) else {
        let reason = format!("embed profile {profile:?} is not configured");
        return refused(Refusal::Forbidden { rule, reason }, audit);
    };
    let Some(subject) = verified.subject.clone().filter(|s| !s.is_empty()) else {
        return refused(missing("sub"), audit);
    };
    let user = match found.user(&verified.issuer, &verified.claims) {
        Ok(user) => user,
        Err(claim) => return refused(missing(&claim.0), audit),
    };
    audit.identity = Some(format!("embed:{profile}"));
    audit.verdict = "allow";
    HeadDecision::Embed(Box::new(EmbedCall {
        endpoint,
        record: found.audit_record(&user),
        shown_attributes: found.shown_attributes(&user),
        principal: Principal {
            issuer: verified.issuer.clone(),
            subject,
        },
        user,
        rule,
        profile,
        audit,
    }))
}

/// The verdict for an admitted request, or the body to read first.
fn decide_admitted<T: Trace<Step>>(
    gateway: &Gateway,
    admission: Admission<'_>,
    trace: &mut T,
) -> HeadDecision {
    let decided = match admission {
        Err(refused) => {
            let (refusal, audit) = *refused;
            refuse(refusal, audit)
        }
        Ok((admitted, operation)) => {
            let input = Input {
                issuer: &admitted.token.issuer,
                method: &admitted.method,
                path: &admitted.path,
                operation,
                claims: &admitted.token.claims,
                query: None,
            };
            let id = operation.map_or("", |o| o.operation_id.as_str());
            if !INSPECTABLE_QUERY_OPERATIONS.contains(&id) || !gateway.policy.needs_query(&input) {
                judge(gateway, admitted, operation, None, trace)
            } else if BODY_QUERY_OPERATIONS.contains(&id) {
                return HeadDecision::NeedBody(Box::new(admitted));
            } else {
                match read_query(id, &admitted.path, admitted.query_string.as_deref(), None) {
                    Ok(facts) => {
                        trace.record(|| Step::Query {
                            facts: facts.clone(),
                            from: QuerySource::Url,
                        });
                        judge(gateway, admitted, operation, Some(&facts), trace)
                    }
                    Err(reason) => refuse(Refusal::BadRequest { reason }, admitted.audit),
                }
            }
        }
    };
    HeadDecision::Decided(decided)
}

/// The verdict for a request whose body (a Looker `WriteQuery`) has been read.
pub fn decide_body(gateway: &Gateway, admitted: Admitted, body: &[u8]) -> Decision {
    decide_body_traced(gateway, admitted, body, &mut Off)
}

/// [`decide_body`], recording each step into `trace`.
pub fn decide_body_traced<T: Trace<Step>>(
    gateway: &Gateway,
    admitted: Admitted,
    body: &[u8],
    trace: &mut T,
) -> Decision {
    let id = admitted.operation_id.as_deref().unwrap_or_default();
    match read_query(
        id,
        &admitted.path,
        admitted.query_string.as_deref(),
        Some(body),
    ) {
        Ok(facts) => {
            trace.record(|| Step::Query {
                facts: facts.clone(),
                from: QuerySource::BodyAndUrl,
            });
            let operation = gateway.operations.by_id(id);
            judge(gateway, admitted, operation, Some(&facts), trace)
        }
        Err(reason) => refuse(Refusal::BadRequest { reason }, admitted.audit),
    }
}

/// Operations whose body is a `WriteQuery`.
pub const BODY_QUERY_OPERATIONS: &[&str] = &["run_inline_query", "create_query"];

fn refuse(refusal: Refusal, mut audit: Audit) -> Decision {
    audit.verdict = "deny";
    audit.reason = Some(refusal.code().to_owned());
    if let Refusal::Forbidden { reason, .. } | Refusal::BadRequest { reason } = &refusal {
        audit.detail = Some(reason.clone());
    }
    Decision::Refuse { refusal, audit }
}

/// The admitted request with its resolved operation, or the refusal with its audit.
type Admission<'g> = Result<(Admitted, Option<&'g Operation>), Box<(Refusal, Audit)>>;

/// Checks the target and method, authenticates (`authenticate`: the principal, or the
/// refusal) and resolves the operation; returns it with the admitted request.
fn admit<'g, T: Trace<Step>>(
    gateway: &'g Gateway,
    request: RequestHead<'_>,
    trace: &mut T,
    authenticate: impl FnOnce(&mut Audit, &mut T) -> Result<Rc<VerifiedToken>, Refusal>,
) -> Admission<'g> {
    let mut audit = Audit {
        verdict: "deny",
        ..Audit::default()
    };
    let target = match path::parse_target(request.path) {
        Ok(t) => t,
        Err(bad) => {
            return Err(Box::new((
                Refusal::BadRequest {
                    reason: bad.0.to_owned(),
                },
                audit,
            )))
        }
    };
    if let Some((name, _)) = request
        .headers
        .iter()
        .find(|(n, _)| METHOD_OVERRIDE_HEADERS.contains(&n.as_ref()))
    {
        trace.record(|| Step::MethodOverride {
            header: name.to_string(),
        });
        let reason = format!(
            "the {name} header is not allowed: the gateway decides on the request's own method"
        );
        return Err(Box::new((Refusal::BadRequest { reason }, audit)));
    }
    let verified = match authenticate(&mut audit, trace) {
        Ok(v) => v,
        Err(refusal) => return Err(Box::new((refusal, audit))),
    };
    audit.subject = verified.subject.clone();
    audit.issuer = Some(verified.issuer.clone());
    audit.groups = groups_summary(&verified.claims);
    let operation = match resolve_operation(gateway, request.method, &target.path) {
        Ok(operation) => {
            trace.record(|| {
                Step::Operation(match operation {
                    Some(op) => OperationStep::Found(op.clone()),
                    None => OperationStep::OutsidePrefix,
                })
            });
            operation
        }
        Err(refusal) => {
            trace.record(|| Step::Operation(OperationStep::Unknown));
            return Err(Box::new((refusal, audit)));
        }
    };
    if let Some(op) = operation {
        audit.operation = Some(op.operation_id.clone());
        if GATEWAY_OWNED_EMBED_OPERATIONS.contains(&op.operation_id.as_str()) {
            return Err(Box::new((
                Refusal::GatewayOwnsEmbedding {
                    operation: op.operation_id.clone(),
                },
                audit,
            )));
        }
        if GATEWAY_OWNED_OPERATIONS.contains(&op.operation_id.as_str()) {
            return Err(Box::new((
                Refusal::GatewayOwnsAuthentication {
                    operation: op.operation_id.clone(),
                },
                audit,
            )));
        }
    }
    let mut header_ops = strip_client_headers(gateway, request);
    // Forward exactly the path the policy matched (normalized), minus any token.
    let forward = path::strip_access_token(&target).unwrap_or_else(|| target.to_path());
    if forward != request.path {
        header_ops.push(HeaderOp::Set(":path".to_owned(), forward));
    }
    let admitted = Admitted {
        method: request.method.to_owned(),
        path: target.path,
        operation_id: operation.map(|o| o.operation_id.clone()),
        token: verified,
        header_ops,
        query_string: target.query.map(str::to_owned),
        audit,
    };
    Ok((admitted, operation))
}

/// The Looker operation `method` and `path` (normalized, no query) name: `None` outside
/// the API prefix, a 404 refusal below it for anything not in Looker's API 4.0.
pub fn resolve_operation<'g>(
    gateway: &'g Gateway,
    method: &str,
    path: &str,
) -> Result<Option<&'g Operation>, Refusal> {
    let Some(rest) = below_prefix(path, &gateway.api_prefix) else {
        return Ok(None);
    };
    match gateway.operations.resolve(method, rest) {
        Resolution::Found(op) => Ok(Some(op)),
        Resolution::NotFound | Resolution::WrongMethod => Err(Refusal::UnknownOperation {
            reason: format!("{method} {path} is not an operation of Looker's API 4.0"),
        }),
    }
}

fn judge<T: Trace<Step>>(
    gateway: &Gateway,
    admitted: Admitted,
    operation: Option<&Operation>,
    query: Option<&QueryFacts>,
    trace: &mut T,
) -> Decision {
    let evaluation = gateway.policy.evaluate_traced(
        &Input {
            issuer: &admitted.token.issuer,
            method: &admitted.method,
            path: &admitted.path,
            operation,
            claims: &admitted.token.claims,
            query,
        },
        &mut Within(trace),
    );
    let mut audit = admitted.audit;
    audit.shadows = evaluation
        .shadows
        .iter()
        .map(|s| format!("{}:{}", s.rule, s.would))
        .collect();
    match evaluation.verdict {
        Verdict::Deny { rule, reason } => {
            audit.rule = Some(rule.clone());
            refuse(Refusal::Forbidden { rule, reason }, audit)
        }
        Verdict::Allow { rule, identity } => {
            audit.rule = Some(rule);
            audit.identity = Some(identity.key());
            audit.verdict = "allow";
            Decision::Forward {
                identity,
                issuer: admitted.token.issuer.clone(),
                subject: admitted.token.subject.clone().unwrap_or_default(),
                header_ops: admitted.header_ops,
                audit,
            }
        }
    }
}

/// The `groups` claim for the audit trail: comma-joined, at most 256 bytes.
fn groups_summary(claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    // Joined into one buffer (no intermediate Vec): this runs on every request.
    let mut summary = String::new();
    let mut first = true;
    let mut push = |group: &str| {
        if !std::mem::take(&mut first) {
            summary.push(',');
        }
        summary.push_str(group);
    };
    match claims.get("groups")? {
        serde_json::Value::Array(items) => {
            items.iter().filter_map(|g| g.as_str()).for_each(&mut push)
        }
        serde_json::Value::String(s) => s.split_ascii_whitespace().for_each(&mut push),
        _ => return None,
    }
    if summary.len() > 256 {
        let mut cut = 253;
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary.truncate(cut);
        summary.push_str("...");
    }
    Some(summary)
}

/// The path below the API prefix (`/api/4.0/user` -> `/user`), if it is under it.
fn below_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Appends the Looker token to a planned rewrite. Looker accepts `token X`.
pub fn with_looker_token(mut header_ops: Vec<HeaderOp>, looker_token: &str) -> Vec<HeaderOp> {
    let mut value = String::with_capacity(looker_token.len() + 6);
    value.push_str("token ");
    value.push_str(looker_token);
    header_ops.push(HeaderOp::Set("authorization".to_owned(), value));
    header_ops
}

/// Verifies the presented token. `issuer_seen` is set once an issuer was chosen, so
/// an unknown `kid` can be traced to the issuer whose keys to refetch.
fn authenticate<T: Trace<Step>>(
    gateway: &Gateway,
    keys: &mut KeyRing,
    request: RequestHead<'_>,
    now_unix: u64,
    issuer_seen: &mut Option<String>,
    trace: &mut T,
) -> Result<Rc<VerifiedToken>, Refusal> {
    let mut presented: Option<(&str, &str)> = None; // (header, token)
    for header in &gateway.token_headers {
        let mut values = request
            .headers
            .iter()
            .filter(|(n, _)| n == header)
            .map(|(_, v)| v.as_ref());
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
    let Some((header, value)) = presented else {
        return Err(Refusal::MissingToken);
    };
    // Envoy folds repeated headers into one value joined by ','; a JWT has no ','.
    if value.contains(',') {
        return Err(Refusal::InvalidToken {
            code: "multiple_tokens",
            detail: format!("the {header} header carries more than one value"),
        });
    }
    let chosen = choose_issuer(gateway, header, value, trace);
    let Some(issuer) = chosen else {
        return Err(Refusal::InvalidToken {
            code: "unknown_issuer",
            detail: "the token's issuer is not trusted".to_owned(),
        });
    };
    let Some(token) = token_from(&issuer.source, value) else {
        return Err(Refusal::InvalidToken {
            code: "unsupported_scheme",
            detail: format!("the {header} header does not carry a bearer token"),
        });
    };
    *issuer_seen = Some(issuer.issuer.clone());
    let verified = keys.verify(issuer, token, now_unix).map_err(|e| match e {
        IssuerError::NoKeys => Refusal::KeysUnavailable,
        IssuerError::Token(e) => Refusal::InvalidToken {
            code: e.code(),
            detail: e.to_string(),
        },
    })?;
    trace.record(|| Step::Verified(Rc::clone(&verified)));
    Ok(verified)
}

/// The issuer that verifies the token presented in `header` (raw `value`): the only
/// issuer reading that header; when several share it, the one the token's unverified
/// `iss` names (verification then checks it), else none.
fn choose_issuer<'g, T: Trace<Step>>(
    gateway: &'g Gateway,
    header: &str,
    value: &str,
    trace: &mut T,
) -> Option<&'g Issuer> {
    let mut readers = gateway.issuers.iter().filter(|i| i.source.header == header);
    let first = readers.next()?;
    if readers.next().is_none() {
        trace.record(|| Step::Issuer {
            header: header.to_owned(),
            choice: IssuerChoice::Only(first.issuer.clone()),
        });
        return Some(first);
    }
    let iss = token_from(&first.source, value).and_then(jwt::peek_issuer);
    let chosen = gateway
        .issuers
        .iter()
        .find(|i| i.source.header == header && Some(&i.issuer) == iss.as_ref());
    trace.record(|| Step::Issuer {
        header: header.to_owned(),
        choice: IssuerChoice::ByIss {
            readers: gateway
                .issuers
                .iter()
                .filter(|i| i.source.header == header)
                .count(),
            chosen: chosen.map(|i| i.issuer.clone()),
            iss: iss.clone(),
        },
    });
    chosen
}

/// The configured issuer whose `iss` is `iss`.
fn issuer_named<'g>(gateway: &'g Gateway, iss: &str) -> Option<&'g Issuer> {
    gateway.issuers.iter().find(|i| i.issuer == iss)
}

/// The header, and its value, in which a client of the token's issuer presents `token`
/// (`lookergate explain --token`): that of the issuer its unverified `iss` names, else
/// of the first issuer (which then refuses it as the filter would).
pub fn present_token(gateway: &Gateway, token: &str) -> Option<(String, String)> {
    let issuer = jwt::peek_issuer(token)
        .and_then(|iss| issuer_named(gateway, &iss))
        .or_else(|| gateway.issuers.first())?;
    let value = match &issuer.source.prefix {
        Some(prefix) => format!("{prefix}{token}"),
        None => token.to_owned(),
    };
    Some((issuer.source.header.clone(), value))
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

/// Headers that must not reach Looker: the client's credentials, anything the gateway
/// owns, and what a client could use to steer Envoy or to spoof where it comes from.
/// `authorization` is set again with the Looker token.
fn strip_client_headers(gateway: &Gateway, request: RequestHead<'_>) -> Vec<HeaderOp> {
    let mut ops: Vec<HeaderOp> = Vec::new();
    let mut remove = |name: &str| {
        if !ops
            .iter()
            .any(|op| matches!(op, HeaderOp::Remove(n) if n == name))
        {
            ops.push(HeaderOp::Remove(name.to_owned()));
        }
    };
    for header in &gateway.token_headers {
        if header != "authorization" {
            remove(header);
        }
    }
    let mut forwarded_for: Option<&str> = None;
    for (name, value) in request.headers {
        let name = name.as_ref();
        if name == "x-forwarded-for" {
            forwarded_for = Some(value);
            continue;
        }
        // `x-envoy-*`: Envoy's router reads `x-envoy-retry-on`, `-max-retries`,
        // `-upstream-rq-timeout-ms`, ... after this filter: a client must not retry a
        // query or cut its timeout. `forwarded` and `x-forwarded-*` (but -for and
        // -proto, which Envoy itself sets under `use_remote_address`) are the client's.
        let spoofable = name.starts_with("x-envoy-")
            || name == "forwarded"
            || name == "x-real-ip"
            || (name.starts_with("x-forwarded-") && name != "x-forwarded-proto");
        if spoofable
            || name == "cookie"
            || name == "proxy-authorization"
            || name.starts_with("x-lookergate-")
        {
            remove(name);
        }
    }
    // Envoy appends the peer's address as the last hop (`use_remote_address: true` in
    // every shipped config), after the trusted proxies' entries; the hops before those
    // are whatever the client wrote.
    // Under `use_remote_address` every request has one: no allocation unless it is cut.
    if let Some(value) = forwarded_for {
        let kept = match value
            .rmatch_indices(',')
            .nth(gateway.forwarded_for_kept.saturating_sub(1))
        {
            Some((comma, _)) => value.get(comma + 1..).unwrap_or_default(),
            None => value,
        };
        if kept.split(',').any(|h| h.trim().is_empty()) {
            remove("x-forwarded-for");
        } else if kept.len() < value.len() {
            let hops: Vec<&str> = kept.split(',').map(str::trim).collect();
            ops.push(HeaderOp::Set("x-forwarded-for".to_owned(), hops.join(",")));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::{sign_rs256, TestIssuer};
    use serde_json::json;

    /// The decision from the headers alone (no test here sends a body), verified with a
    /// fresh key ring.
    fn decide(gateway: &Gateway, request: &RequestView, now_unix: u64) -> Decision {
        match super::decide(gateway, &mut KeyRing::default(), request, now_unix) {
            HeadDecision::Decided(decision) => decision,
            HeadDecision::NeedBody(_) => panic!("no test here needs a body"),
            HeadDecision::Embed(_) => panic!("no test here calls an embed endpoint"),
        }
    }

    fn gateway(issuer: &TestIssuer) -> Gateway {
        Gateway::load(gateway_json(issuer).as_bytes()).unwrap()
    }

    fn gateway_json(issuer: &TestIssuer) -> String {
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
        config.to_string()
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> RequestView {
        RequestView {
            method: "GET".into(),
            path: path.into(),
            request_id: "rid".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// `Authorization` for alice, an analyst of `idp`.
    fn alice_bearer(idp: &TestIssuer) -> String {
        let jwt = sign_rs256(
            idp,
            json!({"sub": "alice", "groups": ["analysts"], "aud": "looker-api"}),
        );
        format!("Bearer {jwt}")
    }

    #[test]
    fn allowed_request_strips_client_credentials_and_access_token() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        let bearer = alice_bearer(&idp);
        let req = request(
            "/api/4.0/user?access_token=stolen&fields=id",
            &[
                ("authorization", &bearer),
                ("cookie", "looker=1"),
                ("x-lookergate-identity", "role:admin"),
            ],
        );
        match decide(&gw, &req, now()) {
            Decision::Forward {
                identity,
                subject,
                header_ops,
                audit,
                ..
            } => {
                assert_eq!(identity, LookerIdentity::Role("analyst".into()));
                assert_eq!(subject, "alice");
                assert_eq!(audit.rule.as_deref(), Some("analysts"));
                let ops = with_looker_token(header_ops, "LOOKER");
                assert!(ops.contains(&HeaderOp::Remove("cookie".into())));
                assert!(ops.contains(&HeaderOp::Remove("x-lookergate-identity".into())));
                assert!(ops.contains(&HeaderOp::Set(
                    ":path".into(),
                    "/api/4.0/user?fields=id".into()
                )));
                assert_eq!(
                    ops.last(),
                    Some(&HeaderOp::Set(
                        "authorization".into(),
                        "token LOOKER".into()
                    ))
                );
            }
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn token_in_a_custom_header_works_and_that_header_is_stripped() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        let jwt = sign_rs256(
            &idp,
            json!({"iss": "https://access.example", "sub": "bob", "groups": ["analysts"], "aud": "app"}),
        );
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
        let good = sign_rs256(
            &idp,
            json!({"sub": "alice", "groups": ["analysts"], "aud": "looker-api"}),
        );
        let eve = sign_rs256(
            &idp,
            json!({"sub": "eve", "groups": ["analysts"], "aud": "looker-api"}),
        );
        let bob = sign_rs256(
            &idp,
            json!({"sub": "bob", "groups": ["viewers"], "aud": "looker-api"}),
        );
        let b = |t: &str| format!("Bearer {t}");
        let cases: Vec<(RequestView, u32, &str)> = vec![
            (request("/api/4.0/user", &[]), 401, "missing_token"),
            (
                request(
                    "/api/4.0/user",
                    &[("authorization", &format!("Basic {good}"))],
                ),
                401,
                "unsupported_scheme",
            ),
            (
                request(
                    "/api/4.0/user",
                    &[("authorization", &b(&good)), ("authorization", &b(&good))],
                ),
                401,
                "multiple_tokens",
            ),
            (
                request(
                    "/api/4.0/user",
                    &[
                        ("authorization", &b(&good)),
                        ("cf-access-jwt-assertion", &good),
                    ],
                ),
                401,
                "multiple_tokens",
            ),
            (
                request("/api/4.0/user", &[("authorization", "Bearer not.a.jwt")]),
                401,
                "",
            ),
            (
                request("/api/4.0/user", &[("authorization", &b(&eve))]),
                403,
                "forbidden",
            ),
            (
                request("/api/4.0/user", &[("authorization", &b(&bob))]),
                403,
                "forbidden",
            ),
            (
                request("/api/4.0/../4.0/user", &[("authorization", &b(&good))]),
                400,
                "bad_request",
            ),
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
        let src = TokenSource {
            header: "authorization".into(),
            prefix: Some("Bearer ".into()),
        };
        assert_eq!(token_from(&src, "bearer abc"), Some("abc"));
        assert_eq!(token_from(&src, "BEARER   abc "), Some("abc"));
        assert_eq!(token_from(&src, "Bearerabc"), None);
        assert_eq!(token_from(&src, "Bearer "), None);
        assert_eq!(token_from(&src, "token abc"), None);
        let raw = TokenSource {
            header: "x-goog-iap-jwt-assertion".into(),
            prefix: None,
        };
        assert_eq!(token_from(&raw, " abc"), Some("abc"));
    }

    #[test]
    fn looker_operations_are_resolved_and_gateway_auth_is_refused() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        let jwt = format!(
            "Bearer {}",
            sign_rs256(
                &idp,
                json!({"sub": "alice", "groups": ["analysts"], "aud": "looker-api"})
            )
        );
        let cases: [(&str, &str, &[(&str, &str)], u32, &str); 5] = [
            (
                "GET",
                "/api/4.0/no_such_endpoint",
                &[],
                404,
                "unknown_operation",
            ),
            ("DELETE", "/api/4.0/user", &[], 404, "unknown_operation"),
            (
                "POST",
                "/api/4.0/login",
                &[],
                403,
                "gateway_owns_authentication",
            ),
            (
                "DELETE",
                "/api/4.0/logout",
                &[],
                403,
                "gateway_owns_authentication",
            ),
            (
                "GET",
                "/api/4.0/user",
                &[("x-http-method-override", "DELETE")],
                400,
                "bad_request",
            ),
        ];
        for (method, path, extra, status, code) in cases {
            let mut req = request(path, &[("authorization", &jwt)]);
            req.method = method.into();
            req.headers
                .extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
            match decide(&gw, &req, now()) {
                Decision::Refuse { refusal, .. } => {
                    assert_eq!(
                        (refusal.status(), refusal.code()),
                        (status, code),
                        "{method} {path}"
                    );
                }
                other => panic!("{method} {path}: expected refusal, got {other:?}"),
            }
        }
        match decide(
            &gw,
            &request("/api/4.0/dashboards/7", &[("authorization", &jwt)]),
            now(),
        ) {
            Decision::Forward { audit, .. } => {
                assert_eq!(audit.operation.as_deref(), Some("dashboard"))
            }
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn groups_summary_joins_every_group_and_is_bounded() {
        let summary = |groups: serde_json::Value| {
            groups_summary(json!({ "groups": groups }).as_object().unwrap())
        };
        assert_eq!(summary(json!(["a", "b"])).as_deref(), Some("a,b"));
        assert_eq!(summary(json!(["", "a", 5, "b"])).as_deref(), Some(",a,b"));
        assert_eq!(summary(json!("a  b")).as_deref(), Some("a,b"));
        assert_eq!(summary(json!([])).as_deref(), Some(""));
        assert_eq!(summary(json!(5)), None);
        assert_eq!(
            summary(json!(["x".repeat(300)])).map(|s| s.len()),
            Some(256)
        );
    }

    #[test]
    fn write_query_bodies_and_url_queries_are_read() {
        let q = query_from_body(br#"{"model":"thelook","view":"orders","limit":"10","filters":{"orders.status":"complete"}}"#).unwrap();
        assert_eq!(q.model.as_deref(), Some("thelook"));
        assert_eq!(q.limit, Some(10));
        assert_eq!(
            q.filters,
            vec![("orders.status".to_owned(), "complete".to_owned())]
        );
        assert_eq!(
            query_from_body(br#"{"limit":500}"#).unwrap().limit,
            Some(500)
        );
        assert!(query_from_body(br#"{"limit":"ten"}"#).is_err());
        assert!(query_from_body(b"[1]").is_err());
        // found by fuzzing review: last-one-wins duplicates would let a limit slip past
        let dup = query_from_body(br#"{"limit":"100000","limit":"10"}"#).unwrap_err();
        assert!(dup.contains("appears twice"), "{dup}");
        let nested = query_from_body(br#"{"filters":{"a":"","a":"x"}}"#).unwrap_err();
        assert!(nested.contains("appears twice"), "{nested}");
        let flags = query_from_body(
            br#"{"filter_expression":"${orders.id} > 0","filter_config":{"x":1},"filters":{"a":null}}"#,
        )
        .unwrap();
        assert!(flags.filter_expression && flags.filter_config);
        assert_eq!(flags.filters, vec![("a".to_owned(), String::new())]);
        let blank = query_from_body(br#"{"filter_expression":"","filter_config":null}"#).unwrap();
        assert!(!blank.filter_expression && !blank.filter_config);
        let u = read_query(
            "run_url_encoded_query",
            "/api/4.0/queries/models/thelook/views/orders/run/json",
            Some("limit=20&f%5Borders.status%5D=x+y"),
            None,
        )
        .unwrap();
        assert_eq!(
            (u.model.as_deref(), u.view.as_deref(), u.limit),
            (Some("thelook"), Some("orders"), Some(20))
        );
        assert_eq!(
            u.filters,
            vec![("orders.status".to_owned(), "x y".to_owned())]
        );
    }

    #[test]
    fn the_url_limit_overrides_the_body_and_ambiguity_is_refused() {
        let inline = |url: &str, body: &str| {
            read_query(
                "run_inline_query",
                "/api/4.0/queries/run/json",
                Some(url),
                Some(body.as_bytes()),
            )
        };
        let body = r#"{"model":"thelook","view":"orders","limit":"10"}"#;
        assert_eq!(inline("limit=100000", body).unwrap().limit, Some(100_000));
        assert_eq!(inline("%6Cimit=-1", body).unwrap().limit, Some(-1));
        assert_eq!(inline("limit=", body).unwrap().limit, None);
        assert_eq!(inline("cache=true", body).unwrap().limit, Some(10));
        for (url, why) in [
            ("limit=1&limit=100000", "more than once"),
            ("limit=1&%6Cimit=2", "more than once"),
            ("limit[]=5", "not a single value"),
            ("limit=10;limit=99999", "';'"),
            ("limit=1e6", "whole number"),
            ("limit=%zz", "percent-escape"),
            ("model=other", "belongs in the body"),
            ("f[orders.id]=1", "belongs in the body"),
        ] {
            let err = inline(url, body).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
        let create = read_query(
            "create_query",
            "/api/4.0/queries",
            Some("limit=5"),
            Some(body.as_bytes()),
        );
        assert!(create.is_err(), "{create:?}");
        for (url, why) in [
            ("f[a]=1&f[a]=2", "more than once"),
            ("f[a][b]=1", "not f[field]"),
            ("f[]=1", "not f[field]"),
        ] {
            let err = read_query(
                "run_url_encoded_query",
                "/api/4.0/queries/models/m/views/v/run/json",
                Some(url),
                None,
            )
            .unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn client_headers_that_steer_envoy_or_spoof_origin_are_stripped() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        let bearer = alice_bearer(&idp);
        let req = request(
            "/api/4.0/user",
            &[
                ("authorization", &bearer),
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-upstream-rq-timeout-ms", "1"),
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-host", "evil"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "6.6.6.6, 10.0.0.1,127.0.0.1"),
            ],
        );
        let Decision::Forward { header_ops, .. } = decide(&gw, &req, now()) else {
            panic!("expected forward");
        };
        for name in [
            "x-envoy-retry-on",
            "x-envoy-upstream-rq-timeout-ms",
            "forwarded",
            "x-forwarded-host",
        ] {
            assert!(
                header_ops.contains(&HeaderOp::Remove(name.into())),
                "{name}"
            );
        }
        assert!(!header_ops.contains(&HeaderOp::Remove("x-forwarded-proto".into())));
        assert!(header_ops.contains(&HeaderOp::Set("x-forwarded-for".into(), "127.0.0.1".into())));
        // Behind one trusted load balancer: its client entry stays too.
        let mut config: serde_json::Value = serde_json::from_str(&gateway_json(&idp)).unwrap();
        config["xff_num_trusted_hops"] = json!(1);
        let behind_lb = Gateway::load(config.to_string().as_bytes()).unwrap();
        let Decision::Forward { header_ops, .. } = decide(&behind_lb, &req, now()) else {
            panic!("expected forward");
        };
        assert!(header_ops.contains(&HeaderOp::Set(
            "x-forwarded-for".into(),
            "10.0.0.1,127.0.0.1".into()
        )));
    }

    #[test]
    fn the_traced_decision_is_the_filters_and_records_each_step() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        let req = request("/api/4.0/user", &[("authorization", &alice_bearer(&idp))]);
        let mut steps = Vec::new();
        let headers = req.header_pairs();
        let head = RequestHead {
            method: &req.method,
            path: &req.path,
            headers: &headers,
        };
        let HeadDecision::Decided(traced) =
            decide_head_traced(&gw, &mut KeyRing::default(), head, now(), &mut steps)
        else {
            panic!("no body is needed");
        };
        assert_eq!(traced, decide(&gw, &req, now()));
        let [Step::Issuer { header, choice }, Step::Verified(token), Step::Operation(OperationStep::Found(op)), Step::Rule(RuleStep::Skipped { rule: skipped, why }), Step::Rule(RuleStep::Decides { rule, verdict })] =
            steps.as_slice()
        else {
            panic!("{steps:#?}");
        };
        assert_eq!(
            (header.as_str(), choice),
            ("authorization", &IssuerChoice::Only(idp.iss.clone()))
        );
        assert_eq!(token.subject.as_deref(), Some("alice"));
        assert_eq!(op.operation_id, "me");
        assert_eq!(
            (skipped.as_str(), why.as_str()),
            ("no-eve", "condition when[0] on claim \"sub\" does not hold")
        );
        assert_eq!(rule, "analysts");
        assert!(matches!(verdict, Verdict::Allow { .. }), "{verdict:?}");
    }

    #[test]
    fn a_guarded_rule_records_the_query_and_its_verdict_on_the_body() {
        let idp = TestIssuer::new();
        let mut config: serde_json::Value = serde_json::from_str(&gateway_json(&idp)).unwrap();
        config["policy"]["rules"] = json!([
            {"name": "queries", "operations": ["run_inline_query"],
             "query": {"views": ["orders"]}, "allow": {"role": "analyst"}}
        ]);
        let gw = Gateway::load(config.to_string().as_bytes()).unwrap();
        let mut req = request(
            "/api/4.0/queries/run/json",
            &[("authorization", &alice_bearer(&idp))],
        );
        req.method = "POST".into();
        let headers = req.header_pairs();
        let head = RequestHead {
            method: &req.method,
            path: &req.path,
            headers: &headers,
        };
        for (view, allowed) in [("orders", true), ("users", false)] {
            let body = json!({"model": "m", "view": view}).to_string();
            let mut steps = Vec::new();
            let HeadDecision::NeedBody(admitted) =
                decide_head_traced(&gw, &mut KeyRing::default(), head, now(), &mut steps)
            else {
                panic!("the guarded rule reads the body");
            };
            let traced = decide_body_traced(&gw, (*admitted).clone(), body.as_bytes(), &mut steps);
            assert_eq!(traced, decide_body(&gw, *admitted, body.as_bytes()));
            assert!(
                steps.iter().any(|s| matches!(s, Step::Query { facts, from: QuerySource::BodyAndUrl } if facts.view.as_deref() == Some(view))),
                "{steps:#?}"
            );
            let guard = steps.iter().find_map(|s| match s {
                Step::Rule(RuleStep::Guard { rule, verdict }) if rule == "queries" => {
                    Some(verdict.clone())
                }
                _ => None,
            });
            match guard {
                Some(Ok(())) => assert!(allowed),
                Some(Err(reason)) => {
                    assert!(!allowed);
                    assert!(reason.contains("query.view"), "{reason}");
                }
                None => panic!("no guard step: {steps:#?}"),
            }
        }
    }

    #[test]
    fn issuers_sharing_a_header_are_chosen_by_the_unverified_iss() {
        let idp = TestIssuer::new();
        let mut config: serde_json::Value = serde_json::from_str(&gateway_json(&idp)).unwrap();
        config["issuers"][1]["from"] = json!({"header": "authorization", "prefix": "Bearer "});
        config["policy"]["rules"] = json!([{"name": "all", "allow": {"role": "analyst"}}]);
        let gw = Gateway::load(config.to_string().as_bytes()).unwrap();
        for (iss, aud, chosen) in [
            (idp.iss.as_str(), "looker-api", Some(idp.iss.as_str())),
            (
                "https://access.example",
                "app",
                Some("https://access.example"),
            ),
            ("https://unknown.example", "app", None),
        ] {
            let jwt = sign_rs256(&idp, json!({"iss": iss, "sub": "a", "aud": aud}));
            let (header, value) = present_token(&gw, &jwt).unwrap();
            assert_eq!(header, "authorization");
            let req = request("/api/4.0/user", &[(&header, &value)]);
            let headers = req.header_pairs();
            let head = RequestHead {
                method: &req.method,
                path: &req.path,
                headers: &headers,
            };
            let mut steps = Vec::new();
            let HeadDecision::Decided(decision) =
                decide_head_traced(&gw, &mut KeyRing::default(), head, now(), &mut steps)
            else {
                panic!("no body is needed");
            };
            assert_eq!(
                steps.first(),
                Some(&Step::Issuer {
                    header: "authorization".into(),
                    choice: IssuerChoice::ByIss {
                        readers: 2,
                        iss: Some(iss.to_owned()),
                        chosen: chosen.map(str::to_owned),
                    }
                }),
                "{iss}"
            );
            match (chosen, decision) {
                (Some(_), Decision::Forward { issuer, .. }) => assert_eq!(issuer, iss),
                (
                    None,
                    Decision::Refuse {
                        refusal: Refusal::InvalidToken { code, .. },
                        ..
                    },
                ) => assert_eq!(code, "unknown_issuer"),
                (_, other) => panic!("{iss}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_token_without_a_subject_is_refused() {
        let idp = TestIssuer::new();
        let gw = gateway(&idp);
        for claims in [
            json!({"groups": ["analysts"], "aud": "looker-api"}),
            json!({"sub": "", "groups": ["analysts"], "aud": "looker-api"}),
        ] {
            let bearer = format!("Bearer {}", sign_rs256(&idp, claims));
            let req = request("/api/4.0/user", &[("authorization", &bearer)]);
            match decide(&gw, &req, now()) {
                Decision::Refuse {
                    refusal: Refusal::InvalidToken { code, .. },
                    ..
                } => assert_eq!(code, "missing_sub"),
                other => panic!("expected 401 missing_sub, got {other:?}"),
            }
        }
    }
}
