//! The access policy: ordered rules that map a verified principal and a request to a
//! verdict — allow as a Looker identity, or deny naming the rule. Default deny.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::looker::{ActivityType, Operation, OperationTable, Status};
use crate::ratelimit::RateLimit;
use crate::trace::{Off, Trace};

pub mod embed;
mod guard;
mod matching;

use matching::{compile_condition, compile_pattern, lookup, Condition, PathPattern};

/// A Looker identity the gateway acts as, as written in a rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Identity")
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum IdentitySpec {
    /// A service account per role; the broker holds its API3 credentials.
    Role(String),
    /// The user themselves, found in Looker by a claim (sudo via the broker).
    User(UserIdentitySpec),
    /// An embed profile (`embed.profiles`): the rule applies to the gateway's embed
    /// endpoints only, and the profile makes the embed user from the claims.
    Embed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "UserIdentity")
)]
#[serde(deny_unknown_fields)]
pub struct UserIdentitySpec {
    /// Claim holding the user's Looker credential id (default `email`).
    #[serde(default = "default_user_claim")]
    pub claim: String,
    /// Looker credential type used to find the user (default `email`).
    #[serde(default = "default_credential_type")]
    pub credential_type: String,
    /// When `claim` is `email`: act as the user only if the token says
    /// `"email_verified": true` (default). An IdP that lets users set an unverified
    /// address would otherwise let them become any Looker user.
    #[serde(default = "default_true")]
    pub require_email_verified: bool,
}

fn default_true() -> bool {
    true
}

fn default_user_claim() -> String {
    "email".to_owned()
}

fn default_credential_type() -> String {
    "email".to_owned()
}

/// The Looker identity resolved for one request: what the broker is asked for. Its
/// `key()` folds e-mail case, as the broker's cache does.
pub use lookergate_proto::LookerIdentity;

/// One condition on the principal's claims.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Condition")
)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub claim: String,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    #[serde(default)]
    pub contains: Option<Value>,
    #[serde(default)]
    pub exists: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Rule")
)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    /// Looker operationIds (`run_inline_query`, `dashboard`).
    #[serde(default)]
    pub operations: Vec<String>,
    /// Looker API tags (`Dashboard`, `Query`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// `x-looker-activity-type`: `db_query`, `non_query`, `none`.
    #[serde(default)]
    pub activity_types: Vec<String>,
    /// `x-looker-status`: `stable`, `beta`, `alpha`, `deprecated`.
    #[serde(default)]
    pub statuses: Vec<String>,
    /// The issuers (`iss`) whose tokens this rule accepts; empty: any configured issuer.
    /// Required on a rule that acts as the user when several issuers are configured.
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub when: Vec<RawCondition>,
    /// Guardrails on the query a query operation carries.
    #[serde(default)]
    pub query: Option<QueryGuard>,
    /// Evaluate and report, never enforce (dry run).
    #[serde(default)]
    pub shadow: bool,
    /// Per-principal token buckets for the requests this rule allows.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub allow: Option<IdentitySpec>,
    #[serde(default)]
    pub deny: Option<bool>,
}

/// What a rule allows of a query (`model`, `view`, `limit`, `filters`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct QueryGuard {
    #[serde(default)]
    pub models: Vec<String>,
    /// Explores (`view` in a Looker query).
    #[serde(default)]
    pub views: Vec<String>,
    /// The most rows a query may ask for. Looker reads a missing or `0` limit as its
    /// default (5000) and a negative one as "no limit": both count against it.
    #[serde(default)]
    pub max_limit: Option<i64>,
    /// Fields that must carry a non-empty filter (`orders.created_date`).
    #[serde(default)]
    pub required_filters: Vec<String>,
    /// Allow a `filter_expression` (a Looker expression that can widen the query).
    #[serde(default)]
    pub allow_filter_expression: bool,
    /// Allow a `filter_config` (Looker's UI filter state, which takes precedence over
    /// `filters` in some paths).
    #[serde(default)]
    pub allow_filter_config: bool,
}

/// The query a request carries, read as Looker reads it (see `decision::read_query`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryFacts {
    pub model: Option<String>,
    pub view: Option<String>,
    /// The effective row limit: `None` when none was given; `0` and `None` mean Looker's
    /// default (5000), a negative value "no limit".
    pub limit: Option<i64>,
    /// `(field, filter expression)` pairs.
    pub filters: Vec<(String, String)>,
    /// A non-empty `filter_expression` was given.
    pub filter_expression: bool,
    /// A non-empty `filter_config` was given.
    pub filter_config: bool,
}

/// Operations that run SQL written by the client: no rule reaches them unless it names
/// them in `operations` (not by path, tag or activity type).
pub const SQL_RUNNER_OPERATIONS: &[&str] = &[
    "create_sql_query",
    "sql_query",
    "run_sql_query",
    "create_sql_interface_query",
    "run_sql_interface_query",
    "sql_interface_metadata",
    // Takes raw SQL (`CreateCostEstimate.sql`) and runs it as an EXPLAIN.
    "connection_cost_estimate",
];

/// Operations that change the Looker session or mint, change or destroy credentials
/// outside the gateway. Reached only through a rule that names them in `operations`,
/// and only as the user themselves: on a role's account they would act for every
/// principal sharing it (`update_session` would switch them all to dev mode).
pub const SESSION_OPERATIONS: &[&str] = &[
    "update_session",
    "create_user_credentials_api3",
    "update_user_credentials_api3",
    "delete_user_credentials_api3",
    "create_user_credentials_email",
    "update_user_credentials_email",
    "delete_user_credentials_email",
    "create_user_credentials_email_password_reset",
    "create_user_credentials_totp",
    "delete_user_credentials_totp",
    "delete_user_credentials_ldap",
    "delete_user_credentials_google",
    "delete_user_credentials_saml",
    "delete_user_credentials_oidc",
    "delete_user_credentials_looker_openid",
    "delete_user_credentials_embed",
    "delete_user_session",
    "create_embed_url_as_me",
    "invalidate_tokens",
    "create_oauth_application_user_state",
];

/// Looker's embed-session and embed-secret operations: the gateway owns them (its embed
/// endpoints, through the broker). No rule may name them, and no request reaches them.
pub const GATEWAY_OWNED_EMBED_OPERATIONS: &[&str] = &[
    "acquire_embed_cookieless_session",
    "generate_tokens_for_cookieless_session",
    "delete_embed_cookieless_session",
    "create_sso_embed_url",
    "create_embed_secret",
    "delete_embed_secret",
];

/// Operations whose query the gateway can read (body `WriteQuery`, or URL).
pub const INSPECTABLE_QUERY_OPERATIONS: &[&str] =
    &["run_inline_query", "create_query", "run_url_encoded_query"];

/// Looker's default row limit when a query gives none.
pub const LOOKER_DEFAULT_LIMIT: i64 = 5000;

/// One request, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The verified token's issuer (`iss`).
    pub issuer: &'a str,
    pub method: &'a str,
    /// Normalized path, no query string.
    pub path: &'a str,
    pub operation: Option<&'a Operation>,
    pub claims: &'a Map<String, Value>,
    /// `Some` for inspectable query operations once the query was read.
    pub query: Option<&'a QueryFacts>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Policy")
)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Allow(IdentitySpec),
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    methods: Vec<String>,
    paths: Vec<PathPattern>,
    operations: Vec<String>,
    tags: Vec<String>,
    activity_types: Vec<String>,
    statuses: Vec<String>,
    issuers: Vec<String>,
    when: Vec<Condition>,
    query: Option<QueryGuard>,
    pub shadow: bool,
    pub rate_limit: Option<RateLimit>,
    pub effect: Effect,
}

/// A shadow rule that matched: what it would have decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowHit {
    pub rule: String,
    /// `allow` or `deny`.
    pub would: &'static str,
}

/// The verdict and the shadow rules that matched on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub shadows: Vec<ShadowHit>,
}

/// One step of an evaluation, in rule order (see [`Policy::evaluate_traced`]). Rules
/// after the deciding one have none: they are not reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleStep {
    /// The rule does not apply to the request, and why not.
    Skipped { rule: String, why: String },
    /// The rule applies and checked the query the request carries against its
    /// guardrails: `Err` names the field that failed.
    Guard {
        rule: String,
        verdict: Result<(), String>,
    },
    /// A shadow rule applies: what it would decide (reported, never enforced).
    Shadow { rule: String, verdict: Verdict },
    /// The rule applies and decides.
    Decides { rule: String, verdict: Verdict },
    /// An embed rule applies and allows the embed profile.
    Embeds { rule: String, profile: String },
    /// No rule applies: [`DEFAULT_DENY`].
    DefaultDeny,
}

/// The compiled policy, built once at configuration time.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        rule: String,
        identity: LookerIdentity,
    },
    /// A rule denied, or no rule matched (`rule` = `default_deny`), or an allow rule
    /// could not resolve its identity (e.g. the user claim is missing). `reason` goes
    /// to the client: it names what failed, never what the policy allows.
    Deny { rule: String, reason: String },
}

pub const DEFAULT_DENY: &str = "default_deny";

/// What the policy decided for a request to an embed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedVerdict {
    Allow { rule: String, profile: String },
    Deny { rule: String, reason: String },
}

impl Policy {
    /// Compiles the raw rules; errors name the field (`policy.rules[2].paths[0]`).
    /// `issuers`: the configured issuers (`iss`), which rules may name; `profiles`: the
    /// embed profiles (`embed.profiles`), which embed rules name.
    pub fn compile(
        raw: &RawPolicy,
        table: &OperationTable,
        issuers: &[&str],
        profiles: &[&str],
    ) -> Result<Policy, String> {
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut names = std::collections::HashSet::new();
        for (i, rule) in raw.rules.iter().enumerate() {
            let at = format!("policy.rules[{i}]");
            if rule.name.trim().is_empty() {
                return Err(format!("{at}.name: must not be empty"));
            }
            if !names.insert(rule.name.clone()) {
                return Err(format!("{at}.name: duplicate rule name {:?}", rule.name));
            }
            if let Some(IdentitySpec::Embed(profile)) = &rule.allow {
                check_embed_rule(rule, profile, profiles).map_err(|e| format!("{at}.{e}"))?;
            }
            let effect = match (&rule.allow, rule.deny) {
                (Some(identity), None | Some(false)) => {
                    validate_identity(identity).map_err(|e| format!("{at}.allow: {e}"))?;
                    Effect::Allow(identity.clone())
                }
                (None, Some(true)) => Effect::Deny,
                (Some(_), Some(true)) => return Err(format!("{at}: has both allow and deny")),
                (None, _) => {
                    return Err(format!("{at}: needs `allow` (an identity) or `deny: true`"))
                }
            };
            let mut methods = Vec::new();
            for (j, m) in rule.methods.iter().enumerate() {
                let upper = m.to_ascii_uppercase();
                if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(format!("{at}.methods[{j}]: {m:?} is not an HTTP method"));
                }
                methods.push(upper);
            }
            let mut paths = Vec::new();
            for (j, p) in rule.paths.iter().enumerate() {
                paths.push(compile_pattern(p).map_err(|e| format!("{at}.paths[{j}]: {e}"))?);
            }
            let mut when = Vec::new();
            for (j, c) in rule.when.iter().enumerate() {
                when.push(compile_condition(c).map_err(|e| format!("{at}.when[{j}]: {e}"))?);
            }
            for (j, id) in rule.operations.iter().enumerate() {
                if table.by_id(id).is_none() {
                    return Err(format!(
                        "{at}.operations[{j}]: {id:?} is not a Looker API 4.0 operationId"
                    ));
                }
                if GATEWAY_OWNED_EMBED_OPERATIONS.contains(&id.as_str()) {
                    return Err(format!(
                        "{at}.operations[{j}]: {id} is owned by the gateway (its embed endpoints, under embed.path_prefix, serve embedded analytics); no rule grants it"
                    ));
                }
                if SESSION_OPERATIONS.contains(&id.as_str())
                    && matches!(rule.allow, Some(IdentitySpec::Role(_)))
                {
                    return Err(format!(
                        "{at}.operations[{j}]: {id} changes the Looker session or credentials of the identity it runs as; allow it only as the user themselves, never on a role's account shared by every principal of the rule"
                    ));
                }
            }
            for (j, iss) in rule.issuers.iter().enumerate() {
                if !issuers.contains(&iss.as_str()) {
                    return Err(format!(
                        "{at}.issuers[{j}]: {iss:?} is not one of the configured issuers"
                    ));
                }
            }
            if matches!(rule.allow, Some(IdentitySpec::User(_)))
                && issuers.len() > 1
                && rule.issuers.is_empty()
            {
                return Err(format!(
                    "{at}.issuers: a rule that acts as the user themselves must name the issuers it trusts when several are configured (a token from any of them could otherwise claim any user)"
                ));
            }
            for (j, tag) in rule.tags.iter().enumerate() {
                if !table.operations().iter().any(|o| o.tags.contains(tag)) {
                    return Err(format!(
                        "{at}.tags[{j}]: {tag:?} is not a Looker API 4.0 tag"
                    ));
                }
            }
            for (j, a) in rule.activity_types.iter().enumerate() {
                if ActivityType::parse(a).is_none() {
                    return Err(format!(
                        "{at}.activity_types[{j}]: {a:?} is not db_query, non_query or none"
                    ));
                }
            }
            for (j, st) in rule.statuses.iter().enumerate() {
                if Status::parse(st).is_none() {
                    return Err(format!(
                        "{at}.statuses[{j}]: {st:?} is not stable, beta, alpha or deprecated"
                    ));
                }
            }
            if let Some(limit) = &rule.rate_limit {
                limit
                    .validate()
                    .map_err(|e| format!("{at}.rate_limit: {e}"))?;
                if rule.effect_is_deny() {
                    return Err(format!("{at}.rate_limit: limits belong on allow rules"));
                }
                if limit.is_global() && matches!(&rule.allow, Some(IdentitySpec::Embed(_))) {
                    return Err(format!("{at}.rate_limit.scope: embed rules keep local limits (global limits apply to API rules)"));
                }
            }
            if let Some(guard) = &rule.query {
                if guard.max_limit.is_some_and(|l| l <= 0) {
                    return Err(format!("{at}.query.max_limit: must be positive"));
                }
                if let Some(j) = guard
                    .required_filters
                    .iter()
                    .position(|f| f.trim().is_empty())
                {
                    return Err(format!(
                        "{at}.query.required_filters[{j}]: must name a field"
                    ));
                }
                if rule.effect_is_deny() {
                    return Err(format!("{at}.query: guardrails belong on allow rules"));
                }
            }
            rules.push(Rule {
                name: rule.name.clone(),
                methods,
                paths,
                operations: rule.operations.clone(),
                tags: rule.tags.clone(),
                activity_types: rule.activity_types.clone(),
                statuses: rule.statuses.clone(),
                issuers: rule.issuers.clone(),
                when,
                query: rule.query.clone(),
                shadow: rule.shadow,
                rate_limit: rule.rate_limit.clone(),
                effect,
            });
        }
        Ok(Policy { rules })
    }

    /// First matching (non-shadow) rule decides; no match is `default_deny`. The hot
    /// path: no trace is built (see [`Policy::evaluate_traced`]).
    pub fn evaluate(&self, input: &Input<'_>) -> Evaluation {
        self.evaluate_traced(input, &mut Off)
    }

    /// [`Policy::evaluate`], recording each rule's step into `trace`: why it did not
    /// apply, its guardrails' verdict, what it decides or (shadow) would decide.
    pub fn evaluate_traced<T: Trace<RuleStep>>(
        &self,
        input: &Input<'_>,
        trace: &mut T,
    ) -> Evaluation {
        let mut shadows = Vec::new();
        for rule in &self.rules {
            if let Err(miss) = rule.matches(input) {
                trace.record(|| RuleStep::Skipped {
                    rule: rule.name.clone(),
                    why: rule.describe(miss, input),
                });
                continue;
            }
            let verdict = rule.decide(input, trace);
            if rule.shadow {
                let would = if matches!(verdict, Verdict::Allow { .. }) {
                    "allow"
                } else {
                    "deny"
                };
                shadows.push(ShadowHit {
                    rule: rule.name.clone(),
                    would,
                });
                trace.record(|| RuleStep::Shadow {
                    rule: rule.name.clone(),
                    verdict: verdict.clone(),
                });
                continue;
            }
            trace.record(|| RuleStep::Decides {
                rule: rule.name.clone(),
                verdict: verdict.clone(),
            });
            return Evaluation { verdict, shadows };
        }
        trace.record(|| RuleStep::DefaultDeny);
        let verdict = Verdict::Deny {
            rule: DEFAULT_DENY.to_owned(),
            reason: "no rule allows this request".to_owned(),
        };
        Evaluation { verdict, shadows }
    }

    /// The first embed rule whose issuers and conditions hold decides an embed
    /// endpoint's request (`input.operation` is `None`); no other rule applies to it.
    /// No match is `default_deny`.
    pub fn evaluate_embed_traced<T: Trace<RuleStep>>(
        &self,
        input: &Input<'_>,
        trace: &mut T,
    ) -> EmbedVerdict {
        for rule in &self.rules {
            let applies = match rule.embed_profile() {
                None => Err(Miss::ApiOnly),
                Some(profile) => rule
                    .matches_issuer(input.issuer)
                    .and_then(|()| rule.matches_when(input.claims))
                    .map(|()| profile),
            };
            match applies {
                Ok(profile) => {
                    trace.record(|| RuleStep::Embeds {
                        rule: rule.name.clone(),
                        profile: profile.to_owned(),
                    });
                    return EmbedVerdict::Allow {
                        rule: rule.name.clone(),
                        profile: profile.to_owned(),
                    };
                }
                Err(miss) => trace.record(|| RuleStep::Skipped {
                    rule: rule.name.clone(),
                    why: rule.describe(miss, input),
                }),
            }
        }
        trace.record(|| RuleStep::DefaultDeny);
        EmbedVerdict::Deny {
            rule: DEFAULT_DENY.to_owned(),
            reason: "no rule allows this request".to_owned(),
        }
    }

    /// Does any rule that could match this request need to read its query?
    pub fn needs_query(&self, input: &Input<'_>) -> bool {
        self.rules
            .iter()
            .any(|r| r.query.is_some() && r.matches_request(input).is_ok())
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// What an operator should know about a policy that loads: rules that grant
    /// database queries without guardrails. `lookergate check` prints them; the filter
    /// logs them at configuration.
    pub fn warnings(&self, table: &OperationTable) -> Vec<String> {
        let mut warnings = Vec::new();
        for rule in &self.rules {
            if rule.query.is_some() || rule.effect == Effect::Deny {
                continue;
            }
            let mut granted: Vec<&str> = rule
                .operations
                .iter()
                .filter(|id| {
                    table
                        .by_id(id)
                        .is_some_and(|o| o.activity_type == "db_query")
                })
                .map(String::as_str)
                .collect();
            if rule.activity_types.iter().any(|a| a == "db_query") {
                granted.insert(0, "every db_query operation");
            }
            if !granted.is_empty() {
                warnings.push(format!(
                    "rule {:?} grants database queries ({}) without `query` guardrails: its principals may run any query their Looker identity can",
                    rule.name,
                    granted.join(", ")
                ));
            }
        }
        warnings
    }
}

impl RawRule {
    fn effect_is_deny(&self) -> bool {
        self.deny == Some(true)
    }
}

/// Why a rule does not apply to a request (described only when tracing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    Method,
    Path,
    Operation,
    SqlRunner,
    SessionOperation,
    QueryNotGranted,
    Issuer,
    Tag,
    ActivityType,
    Status,
    QueryNotInspectable,
    Condition(usize),
    /// An embed rule, and the request is an API request.
    EmbedOnly,
    /// An API rule, and the request is an embed endpoint's.
    ApiOnly,
}

impl Rule {
    /// Method, path and operation only (no claims, no query).
    fn matches_request(&self, input: &Input<'_>) -> Result<(), Miss> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == input.method) {
            return Err(Miss::Method);
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| p.matches(input.path)) {
            return Err(Miss::Path);
        }
        let op = input.operation;
        let id = op.map(|o| o.operation_id.as_str());
        let named = id.is_some_and(|id| self.operations.iter().any(|o| o == id));
        if !self.operations.is_empty() && !named {
            return Err(Miss::Operation);
        }
        // This narrows what an allow rule grants; a deny rule denies whatever it covers
        // (a blanket `no-contractors` must stop SQL Runner too).
        if self.effect != Effect::Deny {
            self.grants(op, named)?;
        }
        if !self.tags.is_empty()
            && !op.is_some_and(|o| o.tags.iter().any(|t| self.tags.contains(t)))
        {
            return Err(Miss::Tag);
        }
        if !self.activity_types.is_empty()
            && !op.is_some_and(|o| self.activity_types.contains(&o.activity_type))
        {
            return Err(Miss::ActivityType);
        }
        if !self.statuses.is_empty() && !op.is_some_and(|o| self.statuses.contains(&o.status)) {
            return Err(Miss::Status);
        }
        self.matches_query_scope(op)
    }

    /// What an allow rule grants only by name: SQL, session changes, database queries.
    fn grants(&self, op: Option<&Operation>, named: bool) -> Result<(), Miss> {
        let id = op.map(|o| o.operation_id.as_str());
        // SQL Runner and session-changing operations: only a rule naming them applies.
        if let Some(id) = id {
            if SQL_RUNNER_OPERATIONS.contains(&id) && !named {
                return Err(Miss::SqlRunner);
            }
            if SESSION_OPERATIONS.contains(&id) && !named {
                return Err(Miss::SessionOperation);
            }
        }
        // Database access is never granted by accident: a path, tag or method that
        // happens to cover `run_look` does not; naming it or `db_query` does.
        if op.is_some_and(is_db_query)
            && !named
            && !self.activity_types.iter().any(|a| a == "db_query")
        {
            return Err(Miss::QueryNotGranted);
        }
        Ok(())
    }

    /// Guardrails apply to query operations; a guarded rule refuses (in `decide`) the
    /// ones whose query it cannot see, and does not apply to other operations.
    fn matches_query_scope(&self, op: Option<&Operation>) -> Result<(), Miss> {
        if self.query.is_some() && !op.is_some_and(is_db_query) {
            return Err(Miss::QueryNotInspectable);
        }
        Ok(())
    }

    fn matches(&self, input: &Input<'_>) -> Result<(), Miss> {
        // Embed rules apply to the embed endpoints only (`Policy::evaluate_embed`).
        if self.embed_profile().is_some() {
            return Err(Miss::EmbedOnly);
        }
        self.matches_issuer(input.issuer)?;
        self.matches_request(input)?;
        self.matches_when(input.claims)
    }

    fn matches_issuer(&self, issuer: &str) -> Result<(), Miss> {
        if !self.issuers.is_empty() && !self.issuers.iter().any(|i| i == issuer) {
            return Err(Miss::Issuer);
        }
        Ok(())
    }

    fn matches_when(&self, claims: &Map<String, Value>) -> Result<(), Miss> {
        match self.when.iter().position(|c| !c.holds(claims)) {
            Some(i) => Err(Miss::Condition(i)),
            None => Ok(()),
        }
    }

    /// The embed profile an embed rule allows (`"allow": {"embed": ...}`).
    pub fn embed_profile(&self) -> Option<&str> {
        match &self.effect {
            Effect::Allow(IdentitySpec::Embed(profile)) => Some(profile),
            _ => None,
        }
    }

    fn describe(&self, miss: Miss, input: &Input<'_>) -> String {
        let op = input.operation;
        let id = op.map_or("(none)", |o| o.operation_id.as_str());
        match miss {
            Miss::Method => format!("method {} is not in {:?}", input.method, self.methods),
            Miss::Path => format!("path {} matches none of its path patterns", input.path),
            Miss::Operation => format!("operation {id} is not in {:?}", self.operations),
            Miss::SqlRunner => {
                format!("{id} runs SQL: only a rule naming it in `operations` applies")
            }
            Miss::SessionOperation => format!(
                "{id} changes the Looker session or credentials: only a rule naming it in `operations` applies"
            ),
            Miss::QueryNotGranted => format!(
                "{id} runs a database query: only a rule naming it in `operations`, or `db_query` in `activity_types`, applies"
            ),
            Miss::Issuer => format!(
                "the token's issuer {:?} is not in {:?}",
                input.issuer, self.issuers
            ),
            Miss::Tag => format!(
                "operation tags {:?} are not in {:?}",
                op.map(|o| &o.tags),
                self.tags
            ),
            Miss::ActivityType => format!(
                "activity type {} is not in {:?}",
                op.map_or("(none)", |o| o.activity_type.as_str()),
                self.activity_types
            ),
            Miss::Status => {
                format!(
                    "operation status {} is not in {:?}",
                    op.map_or("(none)", |o| o.status.as_str()),
                    self.statuses
                )
            }
            Miss::EmbedOnly => "an embed rule: it applies to the embed endpoints only".to_owned(),
            Miss::ApiOnly => "not an embed rule: it applies to Looker API requests only".to_owned(),
            Miss::QueryNotInspectable => {
                "has query guardrails, which apply to query operations only".to_owned()
            }
            Miss::Condition(i) => {
                let claim = self
                    .when
                    .get(i)
                    .map(|c| c.claim.join("."))
                    .unwrap_or_default();
                format!("condition when[{i}] on claim {claim:?} does not hold")
            }
        }
    }

    fn decide<T: Trace<RuleStep>>(&self, input: &Input<'_>, trace: &mut T) -> Verdict {
        match &self.effect {
            Effect::Deny => Verdict::Deny {
                rule: self.name.clone(),
                reason: format!("denied by rule {:?}", self.name),
            },
            Effect::Allow(spec) => {
                let id = input.operation.map_or("", |o| o.operation_id.as_str());
                if let Some(guard) = &self.query {
                    if !INSPECTABLE_QUERY_OPERATIONS.contains(&id) {
                        return Verdict::Deny {
                            rule: self.name.clone(),
                            reason: format!(
                                "{id} runs a query the gateway cannot inspect, and this rule puts guardrails on queries (use run_inline_query, run_url_encoded_query or create_query)"
                            ),
                        };
                    }
                    let facts = input.query.cloned().unwrap_or_default();
                    let checked = guard.check(&facts);
                    trace.record(|| RuleStep::Guard {
                        rule: self.name.clone(),
                        verdict: checked.clone(),
                    });
                    if let Err(reason) = checked {
                        return Verdict::Deny {
                            rule: self.name.clone(),
                            reason,
                        };
                    }
                }
                let identity = resolve_identity(spec, input.claims);
                if SESSION_OPERATIONS.contains(&id)
                    && matches!(identity, Ok(LookerIdentity::Role(_)))
                {
                    // `compile` refuses such rules; never act on a shared account anyway.
                    return Verdict::Deny {
                        rule: self.name.clone(),
                        reason: format!("{id} is never run on a role's shared account"),
                    };
                }
                match identity {
                    Ok(identity) => Verdict::Allow {
                        rule: self.name.clone(),
                        identity,
                    },
                    Err(reason) => Verdict::Deny {
                        rule: self.name.clone(),
                        reason,
                    },
                }
            }
        }
    }
}

/// An embed rule names an existing profile and says only who (issuers, `when`,
/// `rate_limit`): the embed endpoints are its requests. The error starts with the field.
fn check_embed_rule(rule: &RawRule, profile: &str, profiles: &[&str]) -> Result<(), String> {
    if !profiles.contains(&profile) {
        return Err(format!(
            "allow.embed: {profile:?} is not a profile in embed.profiles"
        ));
    }
    let request_fields = [
        ("methods", rule.methods.is_empty()),
        ("paths", rule.paths.is_empty()),
        ("operations", rule.operations.is_empty()),
        ("tags", rule.tags.is_empty()),
        ("activity_types", rule.activity_types.is_empty()),
        ("statuses", rule.statuses.is_empty()),
        ("query", rule.query.is_none()),
    ];
    if let Some((field, _)) = request_fields.iter().find(|(_, empty)| !empty) {
        return Err(format!(
            "{field}: an embed rule applies to the embed endpoints only; it takes issuers, when and rate_limit"
        ));
    }
    if rule.shadow {
        return Err("shadow: embed rules cannot be shadow rules".to_owned());
    }
    Ok(())
}

fn is_db_query(op: &Operation) -> bool {
    op.activity_type == "db_query"
}

fn validate_identity(identity: &IdentitySpec) -> Result<(), String> {
    let ok_name = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match identity {
        IdentitySpec::Role(role) if !ok_name(role) => Err(format!(
            "role {role:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"
        )),
        IdentitySpec::User(user) if user.claim.is_empty() => {
            Err("user.claim must not be empty".to_owned())
        }
        IdentitySpec::User(user) if !ok_name(&user.credential_type) => Err(format!(
            "user.credential_type {:?} is not a Looker credential type",
            user.credential_type
        )),
        IdentitySpec::Embed(profile) if !ok_name(profile) => {
            Err(format!("embed {profile:?} is not a profile name"))
        }
        _ => Ok(()),
    }
}

fn resolve_identity(
    spec: &IdentitySpec,
    claims: &Map<String, Value>,
) -> Result<LookerIdentity, String> {
    match spec {
        IdentitySpec::Role(name) => Ok(LookerIdentity::Role(name.clone())),
        // `evaluate` never reaches an embed rule.
        IdentitySpec::Embed(_) => {
            Err("an embed rule applies to the embed endpoints only".to_owned())
        }
        IdentitySpec::User(user) => {
            let path: Vec<String> = user.claim.split('.').map(str::to_owned).collect();
            if user.claim == "email"
                && user.require_email_verified
                && !matches!(claims.get("email_verified"), Some(Value::Bool(true)))
                // Some IdPs (Cognito) send the boolean as a string.
                && !matches!(claims.get("email_verified"), Some(Value::String(v)) if v == "true")
            {
                return Err(
                    "the token's email is not verified (email_verified is not true), so it cannot name a Looker user".to_owned(),
                );
            }
            match lookup(claims, &path) {
                Some(Value::String(id)) if !id.is_empty() => Ok(LookerIdentity::User {
                    credential_type: user.credential_type.clone(),
                    credential_id: id.clone(),
                }),
                _ => Err(format!(
                    "token has no string claim {:?} to find the Looker user",
                    user.claim
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> &'static OperationTable {
        static TABLE: std::sync::OnceLock<OperationTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| OperationTable::looker_4_0().unwrap())
    }

    fn policy(rules: Value) -> Policy {
        let raw: RawPolicy = serde_json::from_value(json!({ "rules": rules })).unwrap();
        Policy::compile(&raw, table(), &ISSUERS[..1], &["dashboards"]).unwrap()
    }

    const ISSUERS: [&str; 2] = ["https://idp.example", "https://other.example"];

    /// Evaluates as the filter would: resolve the operation, then the rules.
    fn eval(
        p: &Policy,
        method: &str,
        path: &str,
        claims: &Map<String, Value>,
        query: Option<&QueryFacts>,
    ) -> Evaluation {
        let operation = path
            .strip_prefix(crate::looker::API_PREFIX)
            .and_then(|rest| match table().resolve(method, rest) {
                crate::looker::Resolution::Found(op) => Some(op),
                _ => None,
            });
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or(ISSUERS[0]);
        p.evaluate(&Input {
            issuer,
            method,
            path,
            operation,
            claims,
            query,
        })
    }

    fn verdict(p: &Policy, method: &str, path: &str, claims: &Map<String, Value>) -> Verdict {
        eval(p, method, path, claims, None).verdict
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn demo() -> Policy {
        policy(json!([
            {"name": "no-eve", "when": [{"claim": "sub", "equals": "eve"}], "deny": true},
            {"name": "analysts-read", "methods": ["get"], "paths": ["/api/4.0/dashboards/**", "/api/4.0/looks/*", "/api/4.0/user"],
             "when": [{"claim": "groups", "contains": "analysts"}], "allow": {"role": "analyst"}},
            {"name": "analysts-query", "methods": ["POST"], "paths": ["/api/4.0/queries/run/*"], "activity_types": ["db_query"],
             "when": [{"claim": "groups", "contains": "analysts"}], "allow": {"role": "analyst"}},
            {"name": "realm-admins", "paths": ["/api/4.0/**"],
             "when": [{"claim": "realm_access.roles", "contains": "looker-admin"}], "allow": {"user": {}}},
            {"name": "tenant", "methods": ["GET"], "paths": ["/api/4.0/looks/*"],
             "when": [{"claim": "tenant", "one_of": ["acme", "initech"]}, {"claim": "contractor", "exists": false}],
             "allow": {"role": "viewer"}},
        ]))
    }

    #[test]
    fn rules_decide_in_order_with_default_deny() {
        let p = demo();
        let alice =
            claims(json!({"sub": "alice", "groups": ["analysts"], "email": "alice@example.com"}));
        let eve = claims(json!({"sub": "eve", "groups": ["analysts"]}));
        let admin = claims(
            json!({"sub": "root", "email": "root@example.com", "email_verified": true, "realm_access": {"roles": ["looker-admin"]}}),
        );
        let acme = claims(json!({"sub": "x", "tenant": "acme"}));
        let acme_contractor = claims(json!({"sub": "x", "tenant": "acme", "contractor": true}));
        let scoped = claims(json!({"sub": "s", "groups": "viewers analysts"}));
        let role = |r: &str, n: &str| Verdict::Allow {
            rule: r.into(),
            identity: LookerIdentity::Role(n.into()),
        };
        fn denied(r: &'static str) -> impl Fn(&Verdict) -> bool {
            move |v: &Verdict| matches!(v, Verdict::Deny { rule, .. } if rule == r)
        }
        let cases: Vec<(
            &str,
            &str,
            &Map<String, Value>,
            Box<dyn Fn(&Verdict) -> bool>,
        )> = vec![
            (
                "GET",
                "/api/4.0/dashboards/1",
                &alice,
                Box::new(|v| *v == role("analysts-read", "analyst")),
            ),
            (
                "GET",
                "/api/4.0/dashboards/1/elements",
                &alice,
                Box::new(|v| *v == role("analysts-read", "analyst")),
            ),
            (
                "GET",
                "/api/4.0/dashboards",
                &alice,
                Box::new(|v| *v == role("analysts-read", "analyst")),
            ),
            (
                "GET",
                "/api/4.0/looks/7",
                &alice,
                Box::new(|v| *v == role("analysts-read", "analyst")),
            ),
            (
                "GET",
                "/api/4.0/looks/7/run",
                &alice,
                Box::new(denied(DEFAULT_DENY)),
            ),
            (
                "GET",
                "/api/4.0/looks",
                &alice,
                Box::new(denied(DEFAULT_DENY)),
            ),
            (
                "DELETE",
                "/api/4.0/dashboards/1",
                &alice,
                Box::new(denied(DEFAULT_DENY)),
            ),
            (
                "POST",
                "/api/4.0/queries/run/json",
                &alice,
                Box::new(|v| *v == role("analysts-query", "analyst")),
            ),
            (
                "GET",
                "/api/4.0/dashboards/1",
                &eve,
                Box::new(denied("no-eve")),
            ),
            (
                "GET",
                "/api/4.0/user",
                &scoped,
                Box::new(|v| *v == role("analysts-read", "analyst")),
            ),
            (
                "GET",
                "/api/4.0/looks/1",
                &acme,
                Box::new(|v| *v == role("tenant", "viewer")),
            ),
            (
                "GET",
                "/api/4.0/looks/1",
                &acme_contractor,
                Box::new(denied(DEFAULT_DENY)),
            ),
            (
                "PATCH",
                "/api/4.0/users/1",
                &admin,
                Box::new(|v| {
                    *v == Verdict::Allow {
                        rule: "realm-admins".into(),
                        identity: LookerIdentity::User {
                            credential_type: "email".into(),
                            credential_id: "root@example.com".into(),
                        },
                    }
                }),
            ),
        ];
        for (method, path, who, check) in cases {
            let got = verdict(&p, method, path, who);
            assert!(check(&got), "{method} {path} for {who:?}: got {got:?}");
        }
    }

    #[test]
    fn user_identity_without_its_claim_is_denied_by_that_rule() {
        let p = demo();
        let no_email = claims(json!({"sub": "root", "realm_access": {"roles": ["looker-admin"]}}));
        match verdict(&p, "GET", "/api/4.0/user", &no_email) {
            Verdict::Deny { rule, reason } => {
                assert_eq!(rule, "realm-admins");
                assert!(reason.contains("email"), "{reason}");
            }
            other => panic!("expected deny, got {other:?}"),
        }
    }

    #[test]
    fn invalid_rules_are_rejected_naming_the_field() {
        let cases = [
            (json!([{"name": "a"}]), "policy.rules[0]: needs"),
            (
                json!([{"name": "a", "deny": true}, {"name": "a", "deny": true}]),
                "policy.rules[1].name",
            ),
            (
                json!([{"name": "a", "deny": true, "allow": {"role": "x"}}]),
                "both allow and deny",
            ),
            (
                json!([{"name": "a", "deny": true, "paths": ["api"]}]),
                "policy.rules[0].paths[0]",
            ),
            (
                json!([{"name": "a", "deny": true, "paths": ["/a/**/b"]}]),
                "policy.rules[0].paths[0]",
            ),
            (
                json!([{"name": "a", "deny": true, "paths": ["/a/b*"]}]),
                "policy.rules[0].paths[0]",
            ),
            (
                json!([{"name": "a", "deny": true, "methods": ["GE T"]}]),
                "policy.rules[0].methods[0]",
            ),
            (
                json!([{"name": "a", "deny": true, "when": [{"claim": "g"}]}]),
                "policy.rules[0].when[0]",
            ),
            (
                json!([{"name": "a", "deny": true, "when": [{"claim": "g", "equals": 1, "exists": true}]}]),
                "policy.rules[0].when[0]",
            ),
            (
                json!([{"name": "a", "allow": {"role": "bad role"}}]),
                "policy.rules[0].allow",
            ),
            (json!([{"name": "", "deny": true}]), "policy.rules[0].name"),
            (
                json!([{"name": "a", "deny": true, "operations": ["no_such_op"]}]),
                "policy.rules[0].operations[0]",
            ),
            (
                json!([{"name": "a", "deny": true, "tags": ["Dashboards"]}]),
                "policy.rules[0].tags[0]",
            ),
            (
                json!([{"name": "a", "deny": true, "activity_types": ["query"]}]),
                "policy.rules[0].activity_types[0]",
            ),
            (
                json!([{"name": "a", "deny": true, "statuses": ["experimental"]}]),
                "policy.rules[0].statuses[0]",
            ),
            (
                json!([{"name": "a", "allow": {"role": "x"}, "query": {"max_limit": 0}}]),
                "policy.rules[0].query.max_limit",
            ),
        ];
        for (rules, want) in cases {
            let raw: RawPolicy = serde_json::from_value(json!({ "rules": rules })).unwrap();
            let err = Policy::compile(&raw, table(), &ISSUERS, &["dashboards"])
                .expect_err("must be rejected");
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn empty_policy_denies_everything() {
        let p = policy(json!([]));
        let v = verdict(&p, "GET", "/api/4.0/user", &claims(json!({"sub": "a"})));
        assert!(matches!(v, Verdict::Deny { ref rule, .. } if rule == DEFAULT_DENY));
    }

    #[test]
    fn rules_in_lookers_terms() {
        let p = policy(json!([
            {"name": "no-beta-for-viewers", "statuses": ["beta", "alpha"], "when": [{"claim": "groups", "contains": "viewers"}], "deny": true},
            {"name": "dashboards-by-tag", "methods": ["GET"], "tags": ["Dashboard"], "allow": {"role": "viewer"}},
            {"name": "queries-by-activity", "activity_types": ["db_query"], "when": [{"claim": "groups", "contains": "analysts"}], "allow": {"role": "analyst"}},
            {"name": "look-by-id", "operations": ["look"], "allow": {"role": "viewer"}},
            {"name": "sql-runner-for-dbas", "operations": ["create_sql_query", "run_sql_query"], "when": [{"claim": "groups", "contains": "dba"}], "allow": {"role": "dba"}},
            {"name": "anything-for-admins", "paths": ["/api/4.0/**"], "when": [{"claim": "groups", "contains": "admins"}], "allow": {"role": "admin"}}
        ]));
        let viewer = claims(json!({"sub": "v", "groups": ["viewers"]}));
        let analyst = claims(json!({"sub": "a", "groups": ["analysts"]}));
        let dba = claims(json!({"sub": "d", "groups": ["dba"]}));
        let admin = claims(json!({"sub": "x", "groups": ["admins"]}));
        let rule_of = |v: Verdict| match v {
            Verdict::Allow { rule, .. } => format!("allow:{rule}"),
            Verdict::Deny { rule, .. } => format!("deny:{rule}"),
        };
        let cases = [
            (
                "GET",
                "/api/4.0/dashboards/7",
                &viewer,
                "allow:dashboards-by-tag",
            ),
            (
                "DELETE",
                "/api/4.0/dashboards/7",
                &viewer,
                "deny:default_deny",
            ),
            ("GET", "/api/4.0/looks/1", &viewer, "allow:look-by-id"),
            ("GET", "/api/4.0/looks/1/run", &viewer, "deny:default_deny"),
            (
                "POST",
                "/api/4.0/queries/run/json",
                &analyst,
                "allow:queries-by-activity",
            ),
            (
                "POST",
                "/api/4.0/queries/run/json",
                &viewer,
                "deny:default_deny",
            ),
            // SQL Runner is db_query, yet only a rule naming it applies.
            (
                "POST",
                "/api/4.0/sql_queries",
                &analyst,
                "deny:default_deny",
            ),
            ("POST", "/api/4.0/sql_queries", &admin, "deny:default_deny"),
            (
                "POST",
                "/api/4.0/sql_queries",
                &dba,
                "allow:sql-runner-for-dbas",
            ),
            (
                "GET",
                "/api/4.0/agents/search",
                &viewer,
                "deny:no-beta-for-viewers",
            ),
            (
                "GET",
                "/api/4.0/agents/search",
                &admin,
                "allow:anything-for-admins",
            ),
        ];
        for (method, path, who, want) in cases {
            assert_eq!(
                rule_of(verdict(&p, method, path, who)),
                want,
                "{method} {path} for {who:?}"
            );
        }
    }

    #[test]
    fn query_guardrails_name_the_field() {
        let p = policy(json!([
            {"name": "thelook-orders", "operations": ["run_inline_query", "create_query", "create_query_task"],
             "query": {"models": ["thelook"], "views": ["orders"], "max_limit": 500, "required_filters": ["orders.created_date"]},
             "allow": {"role": "analyst"}}
        ]));
        let who = claims(json!({"sub": "a"}));
        let q = |model: &str, view: &str, limit: Option<i64>, filters: &[&str]| QueryFacts {
            model: Some(model.into()),
            view: Some(view.into()),
            limit,
            filters: filters
                .iter()
                .map(|f| (f.to_string(), "7 days".to_owned()))
                .collect(),
            ..QueryFacts::default()
        };
        let run = |facts: &QueryFacts| {
            eval(&p, "POST", "/api/4.0/queries/run/json", &who, Some(facts)).verdict
        };
        assert!(matches!(
            run(&q("thelook", "orders", Some(100), &["orders.created_date"])),
            Verdict::Allow { .. }
        ));
        let cases = [
            (
                q("other", "orders", Some(100), &["orders.created_date"]),
                "query.model",
            ),
            (
                q("thelook", "users", Some(100), &["orders.created_date"]),
                "query.view",
            ),
            (
                q("thelook", "orders", Some(501), &["orders.created_date"]),
                "query.limit",
            ),
            (
                q("thelook", "orders", None, &["orders.created_date"]),
                "Looker's default of 5000",
            ),
            (
                q("thelook", "orders", Some(-1), &["orders.created_date"]),
                "query.limit",
            ),
            (q("thelook", "orders", Some(10), &[]), "query.filters"),
        ];
        for (facts, field) in cases {
            match run(&facts) {
                Verdict::Deny { rule, reason } => {
                    assert_eq!(rule, "thelook-orders");
                    assert!(reason.contains(field), "{reason:?} should name {field}");
                }
                other => panic!("{facts:?}: expected deny, got {other:?}"),
            }
        }
        // A query task names a saved query by id: nothing to inspect, so the guarded rule
        // refuses it rather than letting a later rule run it unguarded.
        let task = eval(&p, "POST", "/api/4.0/query_tasks", &who, None).verdict;
        assert!(
            matches!(task, Verdict::Deny { ref rule, ref reason } if rule == "thelook-orders" && reason.contains("cannot inspect")),
            "{task:?}"
        );
        assert!(p.needs_query(&Input {
            issuer: ISSUERS[0],
            method: "POST",
            path: "/api/4.0/queries/run/json",
            operation: table().by_id("run_inline_query"),
            claims: &who,
            query: None
        }));
    }

    #[test]
    fn shadow_rules_are_reported_never_enforced() {
        let p = policy(json!([
            {"name": "would-block-queries", "shadow": true, "operations": ["run_inline_query"], "deny": true},
            {"name": "would-allow-users", "shadow": true, "operations": ["me"], "allow": {"role": "viewer"}},
            {"name": "analysts", "paths": ["/api/4.0/**"], "activity_types": ["db_query", "non_query", "none"], "allow": {"role": "analyst"}}
        ]));
        let who = claims(json!({"sub": "a"}));
        let e = eval(
            &p,
            "POST",
            "/api/4.0/queries/run/json",
            &who,
            Some(&QueryFacts::default()),
        );
        assert!(matches!(e.verdict, Verdict::Allow { ref rule, .. } if rule == "analysts"));
        assert_eq!(
            e.shadows,
            vec![ShadowHit {
                rule: "would-block-queries".into(),
                would: "deny"
            }]
        );
        let e = eval(&p, "GET", "/api/4.0/user", &who, None);
        assert_eq!(
            e.shadows,
            vec![ShadowHit {
                rule: "would-allow-users".into(),
                would: "allow"
            }]
        );
        assert!(matches!(e.verdict, Verdict::Allow { ref rule, .. } if rule == "analysts"));
        let operation = table().by_id("me");
        let mut steps = Vec::new();
        let traced = p.evaluate_traced(
            &Input {
                issuer: ISSUERS[0],
                method: "GET",
                path: "/api/4.0/user",
                operation,
                claims: &who,
                query: None,
            },
            &mut steps,
        );
        assert_eq!(traced, e, "tracing changes nothing");
        assert_eq!(
            steps,
            vec![
                RuleStep::Skipped {
                    rule: "would-block-queries".to_owned(),
                    why: "operation me is not in [\"run_inline_query\"]".to_owned()
                },
                RuleStep::Shadow {
                    rule: "would-allow-users".to_owned(),
                    verdict: Verdict::Allow {
                        rule: "would-allow-users".to_owned(),
                        identity: LookerIdentity::Role("viewer".to_owned())
                    }
                },
                RuleStep::Decides {
                    rule: "analysts".to_owned(),
                    verdict: e.verdict.clone()
                },
            ]
        );
    }

    #[test]
    fn database_queries_are_granted_only_by_name() {
        let p = policy(json!([
            {"name": "look-readers", "methods": ["GET"], "tags": ["Look"], "allow": {"role": "viewer"}},
            {"name": "all-paths", "paths": ["/api/4.0/**"], "allow": {"role": "viewer"}}
        ]));
        let who = claims(json!({"sub": "a"}));
        // `look` is non_query: allowed by the tag rule. `run_look` is db_query: no rule names it.
        assert!(matches!(
            verdict(&p, "GET", "/api/4.0/looks/1", &who),
            Verdict::Allow { ref rule, .. } if rule == "look-readers"
        ));
        for (method, path) in [
            ("GET", "/api/4.0/looks/1/run/json"),
            ("GET", "/api/4.0/queries/7/run/json"),
            ("POST", "/api/4.0/queries/run/json"),
            ("POST", "/api/4.0/connections/db/cost_estimate"),
            ("PATCH", "/api/4.0/session"),
        ] {
            let got = eval(&p, method, path, &who, Some(&QueryFacts::default()));
            assert!(
                matches!(got.verdict, Verdict::Deny { ref rule, .. } if rule == DEFAULT_DENY),
                "{method} {path}: {:?}",
                got.verdict
            );
        }
        let named = policy(json!([
            {"name": "by-name", "operations": ["run_look"], "allow": {"role": "viewer"}},
            {"name": "by-activity", "activity_types": ["db_query"], "allow": {"role": "analyst"}}
        ]));
        assert!(matches!(
            verdict(&named, "GET", "/api/4.0/looks/1/run/json", &who),
            Verdict::Allow { ref rule, .. } if rule == "by-name"
        ));
        assert!(matches!(
            verdict(&named, "GET", "/api/4.0/queries/7/run/json", &who),
            Verdict::Allow { ref rule, .. } if rule == "by-activity"
        ));
        // SQL stays out of reach of `db_query`: only its name grants it.
        assert!(matches!(
            verdict(&named, "POST", "/api/4.0/connections/db/cost_estimate", &who),
            Verdict::Deny { ref rule, .. } if rule == DEFAULT_DENY
        ));
        let warnings = named.warnings(table());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("by-name") && warnings[0].contains("run_look"));
        assert!(warnings[1].contains("every db_query operation"));
    }

    #[test]
    fn session_operations_only_by_name_and_only_as_the_user() {
        let raw: RawPolicy = serde_json::from_value(json!({"rules": [
            {"name": "r", "operations": ["update_session"], "allow": {"role": "analyst"}}
        ]}))
        .unwrap();
        let err = Policy::compile(&raw, table(), &ISSUERS[..1], &["dashboards"]).unwrap_err();
        assert!(err.starts_with("policy.rules[0].operations[0]:"), "{err}");
        let p = policy(json!([
            {"name": "everything", "paths": ["/api/4.0/**"], "activity_types": ["db_query", "non_query", "none"], "allow": {"user": {}}},
            {"name": "sessions", "operations": ["update_session"], "allow": {"user": {}}}
        ]));
        let who = claims(json!({"sub": "a", "email": "a@x", "email_verified": true}));
        assert!(matches!(
            verdict(&p, "PATCH", "/api/4.0/session", &who),
            Verdict::Allow { ref rule, .. } if rule == "sessions"
        ));
        assert!(matches!(
            verdict(&p, "POST", "/api/4.0/users/1/credentials_api3", &who),
            Verdict::Deny { ref rule, .. } if rule == DEFAULT_DENY
        ));
    }

    #[test]
    fn identities_are_bound_to_their_issuer() {
        let rules = json!({"rules": [
            {"name": "people", "issuers": ["https://idp.example"], "allow": {"user": {}}},
            {"name": "partners", "issuers": ["https://other.example"], "methods": ["GET"], "allow": {"role": "viewer"}}
        ]});
        let raw: RawPolicy = serde_json::from_value(rules).unwrap();
        let p = Policy::compile(&raw, table(), &ISSUERS, &["dashboards"]).unwrap();
        let from = |iss: &str, verified: Value| {
            claims(
                json!({"iss": iss, "sub": "x", "email": "boss@corp.example", "email_verified": verified}),
            )
        };
        assert!(matches!(
            verdict(&p, "GET", "/api/4.0/user", &from(ISSUERS[0], json!(true))),
            Verdict::Allow {
                identity: LookerIdentity::User { .. },
                ..
            }
        ));
        // The other issuer's token claiming the same e-mail never becomes that user.
        assert!(matches!(
            verdict(&p, "GET", "/api/4.0/user", &from(ISSUERS[1], json!(true))),
            Verdict::Allow {
                identity: LookerIdentity::Role(_),
                ..
            }
        ));
        // An unverified e-mail names no one.
        for unverified in [json!(false), json!(null), json!("false")] {
            let got = verdict(
                &p,
                "GET",
                "/api/4.0/user",
                &from(ISSUERS[0], unverified.clone()),
            );
            assert!(
                matches!(got, Verdict::Deny { ref rule, ref reason } if rule == "people" && reason.contains("email_verified")),
                "{unverified}: {got:?}"
            );
        }
        for (rules, field) in [
            (
                json!([{"name": "u", "allow": {"user": {}}}]),
                "policy.rules[0].issuers:",
            ),
            (
                json!([{"name": "u", "issuers": ["https://nope"], "allow": {"role": "x"}}]),
                "policy.rules[0].issuers[0]:",
            ),
        ] {
            let raw: RawPolicy = serde_json::from_value(json!({ "rules": rules })).unwrap();
            let err = Policy::compile(&raw, table(), &ISSUERS, &["dashboards"]).unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
        let opt_out = policy(json!([
            {"name": "u", "allow": {"user": {"require_email_verified": false}}}
        ]));
        assert!(matches!(
            verdict(
                &opt_out,
                "GET",
                "/api/4.0/user",
                &from(ISSUERS[0], json!(false))
            ),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn guardrails_count_default_and_negative_limits_and_need_real_filters() {
        let guard = QueryGuard {
            models: vec!["thelook".into()],
            views: vec![],
            max_limit: Some(100),
            required_filters: vec!["orders.created_date".into()],
            allow_filter_expression: false,
            allow_filter_config: false,
        };
        let facts = |limit: Option<i64>, filter: &str| QueryFacts {
            model: Some("thelook".into()),
            limit,
            filters: vec![("orders.created_date".into(), filter.into())],
            ..QueryFacts::default()
        };
        assert!(guard.check(&facts(Some(100), "7 days")).is_ok());
        for (f, why) in [
            (facts(Some(0), "7 days"), "default of 5000"),
            (facts(None, "7 days"), "default of 5000"),
            (facts(Some(-1), "7 days"), "no limit"),
            (facts(Some(101), "7 days"), "exceeds"),
            (facts(Some(10), ""), "must not be empty"),
            (facts(Some(10), "  "), "must not be empty"),
            (
                QueryFacts {
                    filter_expression: true,
                    ..facts(Some(10), "7 days")
                },
                "filter_expression",
            ),
            (
                QueryFacts {
                    filter_config: true,
                    ..facts(Some(10), "7 days")
                },
                "filter_config",
            ),
        ] {
            let err = guard.check(&f).unwrap_err();
            assert!(err.contains(why), "{f:?}: {err}");
        }
        let other = QueryFacts {
            model: Some("secret_model".into()),
            ..facts(Some(10), "7 days")
        };
        let err = guard.check(&other).unwrap_err();
        assert!(
            !err.contains("thelook"),
            "the refusal lists the allowed models: {err}"
        );
    }

    #[test]
    fn a_deny_rule_covers_sql_and_queries_without_naming_them() {
        let p = policy(json!([
            {"name": "no-contractors", "when": [{"claim": "contractor", "equals": true}], "deny": true},
            {"name": "sql", "operations": ["create_sql_query", "run_look"], "allow": {"role": "analyst"}}
        ]));
        let contractor = claims(json!({"sub": "c", "contractor": true}));
        for (method, path) in [
            ("POST", "/api/4.0/sql_queries"),
            ("GET", "/api/4.0/looks/1/run/json"),
        ] {
            assert!(matches!(
                verdict(&p, method, path, &contractor),
                Verdict::Deny { ref rule, .. } if rule == "no-contractors"
            ));
        }
        assert!(matches!(
            verdict(&p, "POST", "/api/4.0/sql_queries", &claims(json!({"sub": "e"}))),
            Verdict::Allow { ref rule, .. } if rule == "sql"
        ));
    }

    fn compile_err(rules: Value) -> String {
        let raw: RawPolicy = serde_json::from_value(json!({ "rules": rules })).unwrap();
        Policy::compile(&raw, table(), &ISSUERS[..1], &["dashboards"]).unwrap_err()
    }

    fn embed_input<'a>(claims: &'a Map<String, Value>) -> Input<'a> {
        Input {
            issuer: ISSUERS[0],
            method: "POST",
            path: "/lookergate/embed/acquire",
            operation: None,
            claims,
            query: None,
        }
    }

    #[test]
    fn embed_rules_name_a_profile_and_only_who_they_apply_to() {
        let err = compile_err(json!([{"name": "e", "allow": {"embed": "nope"}}]));
        assert!(
            err.starts_with("policy.rules[0].allow.embed: \"nope\" is not a profile"),
            "{err}"
        );
        for field in [
            json!({"methods": ["POST"]}),
            json!({"paths": ["/lookergate/**"]}),
            json!({"operations": ["me"]}),
            json!({"tags": ["User"]}),
            json!({"activity_types": ["none"]}),
            json!({"statuses": ["stable"]}),
            json!({"query": {"max_limit": 1}}),
            json!({"shadow": true}),
        ] {
            let mut rule = json!({"name": "e", "allow": {"embed": "dashboards"}});
            let (key, value) = field.as_object().unwrap().iter().next().unwrap();
            rule[key] = value.clone();
            let err = compile_err(json!([rule]));
            assert!(
                err.starts_with(&format!("policy.rules[0].{key}: ")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn looker_s_embed_operations_cannot_be_granted_by_any_rule() {
        for id in GATEWAY_OWNED_EMBED_OPERATIONS {
            for allow in [json!({"user": {}}), json!({"role": "analyst"})] {
                let err = compile_err(json!([{"name": "r", "operations": [id], "allow": allow}]));
                assert!(
                    err.starts_with("policy.rules[0].operations[0]: ")
                        && err.contains("owned by the gateway"),
                    "{id}: {err}"
                );
            }
        }
    }

    #[test]
    fn embed_rules_decide_embed_requests_and_api_rules_api_requests() {
        let p = policy(json!([
            {"name": "everyone-api", "allow": {"role": "analyst"}},
            {"name": "no-eve", "when": [{"claim": "sub", "equals": "eve"}], "deny": true},
            {"name": "embed-west", "when": [{"claim": "region", "equals": "west"}], "allow": {"embed": "dashboards"}},
            {"name": "embed-any", "issuers": [ISSUERS[0]], "allow": {"embed": "dashboards"}}
        ]));
        let west = claims(json!({"sub": "a", "region": "west"}));
        let mut trace = Vec::new();
        assert_eq!(
            p.evaluate_embed_traced(&embed_input(&west), &mut trace),
            EmbedVerdict::Allow {
                rule: "embed-west".into(),
                profile: "dashboards".into()
            }
        );
        assert!(
            matches!(&trace[0], RuleStep::Skipped { rule, why } if rule == "everyone-api" && why.contains("API requests only"))
        );
        let east = claims(json!({"sub": "eve", "region": "east"}));
        assert!(matches!(
            p.evaluate_embed_traced(&embed_input(&east), &mut Off),
            EmbedVerdict::Allow { rule, .. } if rule == "embed-any"
        ));
        // API requests never reach an embed rule.
        let p = policy(json!([
            {"name": "embed-any", "allow": {"embed": "dashboards"}}
        ]));
        assert!(matches!(
            verdict(&p, "GET", "/api/4.0/user", &west),
            Verdict::Deny { ref rule, .. } if rule == DEFAULT_DENY
        ));
        let p = policy(json!([{"name": "api", "allow": {"role": "analyst"}}]));
        assert!(matches!(
            p.evaluate_embed_traced(&embed_input(&west), &mut Off),
            EmbedVerdict::Deny { rule, .. } if rule == DEFAULT_DENY
        ));
    }
}
