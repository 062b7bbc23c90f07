//! The access policy: ordered rules that map a verified principal and a request to a
//! verdict — allow as a Looker identity, or deny naming the rule. Default deny.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A Looker identity the gateway acts as, as written in a rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum IdentitySpec {
    /// A service account per role; the broker holds its API3 credentials.
    Role(String),
    /// The user themselves, found in Looker by a claim (sudo via the broker).
    User(UserIdentitySpec),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserIdentitySpec {
    /// Claim holding the user's Looker credential id (default `email`).
    #[serde(default = "default_user_claim")]
    pub claim: String,
    /// Looker credential type used to find the user (default `email`).
    #[serde(default = "default_credential_type")]
    pub credential_type: String,
}

fn default_user_claim() -> String {
    "email".to_owned()
}

fn default_credential_type() -> String {
    "email".to_owned()
}

/// The Looker identity resolved for one request: what the broker is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LookerIdentity {
    Role(String),
    User { credential_type: String, credential_id: String },
}

impl LookerIdentity {
    /// Stable key for caches and logs. Contains no secret.
    pub fn key(&self) -> String {
        match self {
            LookerIdentity::Role(name) => format!("role:{name}"),
            LookerIdentity::User { credential_type, credential_id } => {
                format!("user:{credential_type}:{credential_id}")
            }
        }
    }
}

/// One condition on the principal's claims.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub when: Vec<RawCondition>,
    #[serde(default)]
    pub allow: Option<IdentitySpec>,
    #[serde(default)]
    pub deny: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Contains(Value),
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    claim: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**` (last only): zero or more segments.
    Rest,
}

#[derive(Debug, Clone, PartialEq)]
struct PathPattern(Vec<Segment>);

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
    when: Vec<Condition>,
    pub effect: Effect,
}

/// The compiled policy, built once at configuration time.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow { rule: String, identity: LookerIdentity },
    /// A rule denied, or no rule matched (`rule` = `default_deny`), or an allow rule
    /// could not resolve its identity (e.g. the user claim is missing).
    Deny { rule: String, reason: String },
}

pub const DEFAULT_DENY: &str = "default_deny";

impl Policy {
    /// Compiles the raw rules; errors name the field (`policy.rules[2].paths[0]`).
    pub fn compile(raw: &RawPolicy) -> Result<Policy, String> {
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
            let effect = match (&rule.allow, rule.deny) {
                (Some(identity), None | Some(false)) => {
                    validate_identity(identity).map_err(|e| format!("{at}.allow: {e}"))?;
                    Effect::Allow(identity.clone())
                }
                (None, Some(true)) => Effect::Deny,
                (Some(_), Some(true)) => return Err(format!("{at}: has both allow and deny")),
                (None, _) => return Err(format!("{at}: needs `allow` (an identity) or `deny: true`")),
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
            rules.push(Rule { name: rule.name.clone(), methods, paths, when, effect });
        }
        Ok(Policy { rules })
    }

    /// First matching rule decides; no match is `default_deny`.
    /// `path` is the normalized path without its query string.
    pub fn evaluate(&self, method: &str, path: &str, claims: &Map<String, Value>) -> Verdict {
        for rule in &self.rules {
            if !rule.matches(method, path, claims) {
                continue;
            }
            return match &rule.effect {
                Effect::Deny => Verdict::Deny {
                    rule: rule.name.clone(),
                    reason: format!("denied by rule {:?}", rule.name),
                },
                Effect::Allow(spec) => match resolve_identity(spec, claims) {
                    Ok(identity) => Verdict::Allow { rule: rule.name.clone(), identity },
                    Err(reason) => Verdict::Deny { rule: rule.name.clone(), reason },
                },
            };
        }
        Verdict::Deny {
            rule: DEFAULT_DENY.to_owned(),
            reason: "no rule allows this request".to_owned(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Rule {
    fn matches(&self, method: &str, path: &str, claims: &Map<String, Value>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
            && self.when.iter().all(|c| c.holds(claims))
    }
}

fn validate_identity(identity: &IdentitySpec) -> Result<(), String> {
    let ok_name = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match identity {
        IdentitySpec::Role(role) if !ok_name(role) => {
            Err(format!("role {role:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"))
        }
        IdentitySpec::User(user) if user.claim.is_empty() => Err("user.claim must not be empty".to_owned()),
        IdentitySpec::User(user) if !ok_name(&user.credential_type) => {
            Err(format!("user.credential_type {:?} is not a Looker credential type", user.credential_type))
        }
        _ => Ok(()),
    }
}

fn resolve_identity(spec: &IdentitySpec, claims: &Map<String, Value>) -> Result<LookerIdentity, String> {
    match spec {
        IdentitySpec::Role(name) => Ok(LookerIdentity::Role(name.clone())),
        IdentitySpec::User(user) => {
            let path: Vec<String> = user.claim.split('.').map(str::to_owned).collect();
            match lookup(claims, &path) {
                Some(Value::String(id)) if !id.is_empty() => Ok(LookerIdentity::User {
                    credential_type: user.credential_type.clone(),
                    credential_id: id.clone(),
                }),
                _ => Err(format!("token has no string claim {:?} to find the Looker user", user.claim)),
            }
        }
    }
}

fn compile_pattern(pattern: &str) -> Result<PathPattern, String> {
    let rest = pattern
        .strip_prefix('/')
        .ok_or_else(|| format!("pattern {pattern:?} must start with '/'"))?;
    let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let segment = match *part {
            "" => return Err(format!("pattern {pattern:?} has an empty segment")),
            "*" => Segment::One,
            "**" if i + 1 == parts.len() => Segment::Rest,
            "**" => return Err(format!("pattern {pattern:?}: '**' may only be the last segment")),
            p if p.contains('*') => {
                return Err(format!("pattern {pattern:?}: '*' must be a whole segment"));
            }
            p => Segment::Literal(p.to_owned()),
        };
        segments.push(segment);
    }
    Ok(PathPattern(segments))
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = if rest.is_empty() { "".split('/').skip(1) } else { rest.split('/').skip(0) };
        for segment in &self.0 {
            match segment {
                Segment::Rest => return true,
                Segment::One => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

fn compile_condition(raw: &RawCondition) -> Result<Condition, String> {
    if raw.claim.is_empty() || raw.claim.split('.').any(str::is_empty) {
        return Err(format!("claim {:?} is not a dotted claim path", raw.claim));
    }
    let tests: Vec<Test> = [
        raw.equals.clone().map(Test::Equals),
        raw.one_of.clone().map(Test::OneOf),
        raw.contains.clone().map(Test::Contains),
        raw.exists.map(Test::Exists),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut tests = tests.into_iter();
    match (tests.next(), tests.next()) {
        (Some(test), None) => Ok(Condition { claim: raw.claim.split('.').map(str::to_owned).collect(), test }),
        _ => Err("needs exactly one of equals, one_of, contains, exists".to_owned()),
    }
}

fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

impl Condition {
    fn holds(&self, claims: &Map<String, Value>) -> bool {
        let value = lookup(claims, &self.claim);
        match (&self.test, value) {
            (Test::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Test::Equals(want), Some(v)) => v == want,
            (Test::OneOf(options), Some(v)) => options.contains(v),
            (Test::Contains(want), Some(Value::Array(items))) => items.contains(want),
            // Space-separated string claims (OAuth `scope`, some IdPs' groups).
            (Test::Contains(Value::String(want)), Some(Value::String(s))) => {
                s.split_ascii_whitespace().any(|part| part == want)
            }
            (Test::Contains(_), Some(_)) => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(rules: Value) -> Policy {
        let raw: RawPolicy = serde_json::from_value(json!({ "rules": rules })).unwrap();
        Policy::compile(&raw).unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn demo() -> Policy {
        policy(json!([
            {"name": "no-eve", "when": [{"claim": "sub", "equals": "eve"}], "deny": true},
            {"name": "analysts-read", "methods": ["get"], "paths": ["/api/4.0/dashboards/**", "/api/4.0/looks/*", "/api/4.0/user"],
             "when": [{"claim": "groups", "contains": "analysts"}], "allow": {"role": "analyst"}},
            {"name": "analysts-query", "methods": ["POST"], "paths": ["/api/4.0/queries/run/*"],
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
        let alice = claims(json!({"sub": "alice", "groups": ["analysts"], "email": "alice@example.com"}));
        let eve = claims(json!({"sub": "eve", "groups": ["analysts"]}));
        let admin = claims(json!({"sub": "root", "email": "root@example.com", "realm_access": {"roles": ["looker-admin"]}}));
        let acme = claims(json!({"sub": "x", "tenant": "acme"}));
        let acme_contractor = claims(json!({"sub": "x", "tenant": "acme", "contractor": true}));
        let scoped = claims(json!({"sub": "s", "groups": "viewers analysts"}));
        let role = |r: &str, n: &str| Verdict::Allow { rule: r.into(), identity: LookerIdentity::Role(n.into()) };
        fn denied(r: &'static str) -> impl Fn(&Verdict) -> bool {
            move |v: &Verdict| matches!(v, Verdict::Deny { rule, .. } if rule == r)
        }
        let cases: Vec<(&str, &str, &Map<String, Value>, Box<dyn Fn(&Verdict) -> bool>)> = vec![
            ("GET", "/api/4.0/dashboards/1", &alice, Box::new(|v| *v == role("analysts-read", "analyst"))),
            ("GET", "/api/4.0/dashboards/1/elements", &alice, Box::new(|v| *v == role("analysts-read", "analyst"))),
            ("GET", "/api/4.0/dashboards", &alice, Box::new(|v| *v == role("analysts-read", "analyst"))),
            ("GET", "/api/4.0/looks/7", &alice, Box::new(|v| *v == role("analysts-read", "analyst"))),
            ("GET", "/api/4.0/looks/7/run", &alice, Box::new(denied(DEFAULT_DENY))),
            ("GET", "/api/4.0/looks/", &alice, Box::new(denied(DEFAULT_DENY))),
            ("DELETE", "/api/4.0/dashboards/1", &alice, Box::new(denied(DEFAULT_DENY))),
            ("POST", "/api/4.0/queries/run/json", &alice, Box::new(|v| *v == role("analysts-query", "analyst"))),
            ("GET", "/api/4.0/dashboards/1", &eve, Box::new(denied("no-eve"))),
            ("GET", "/api/4.0/user", &scoped, Box::new(|v| *v == role("analysts-read", "analyst"))),
            ("GET", "/api/4.0/looks/1", &acme, Box::new(|v| *v == role("tenant", "viewer"))),
            ("GET", "/api/4.0/looks/1", &acme_contractor, Box::new(denied(DEFAULT_DENY))),
            ("PATCH", "/api/4.0/users/1", &admin, Box::new(|v| {
                *v == Verdict::Allow { rule: "realm-admins".into(), identity: LookerIdentity::User {
                    credential_type: "email".into(), credential_id: "root@example.com".into() } }
            })),
        ];
        for (method, path, who, check) in cases {
            let got = p.evaluate(method, path, who);
            assert!(check(&got), "{method} {path} for {who:?}: got {got:?}");
        }
    }

    #[test]
    fn user_identity_without_its_claim_is_denied_by_that_rule() {
        let p = demo();
        let no_email = claims(json!({"sub": "root", "realm_access": {"roles": ["looker-admin"]}}));
        match p.evaluate("GET", "/api/4.0/user", &no_email) {
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
            (json!([{"name": "a", "deny": true}, {"name": "a", "deny": true}]), "policy.rules[1].name"),
            (json!([{"name": "a", "deny": true, "allow": {"role": "x"}}]), "both allow and deny"),
            (json!([{"name": "a", "deny": true, "paths": ["api"]}]), "policy.rules[0].paths[0]"),
            (json!([{"name": "a", "deny": true, "paths": ["/a/**/b"]}]), "policy.rules[0].paths[0]"),
            (json!([{"name": "a", "deny": true, "paths": ["/a/b*"]}]), "policy.rules[0].paths[0]"),
            (json!([{"name": "a", "deny": true, "methods": ["GE T"]}]), "policy.rules[0].methods[0]"),
            (json!([{"name": "a", "deny": true, "when": [{"claim": "g"}]}]), "policy.rules[0].when[0]"),
            (json!([{"name": "a", "deny": true, "when": [{"claim": "g", "equals": 1, "exists": true}]}]), "policy.rules[0].when[0]"),
            (json!([{"name": "a", "allow": {"role": "bad role"}}]), "policy.rules[0].allow"),
            (json!([{"name": "", "deny": true}]), "policy.rules[0].name"),
        ];
        for (rules, want) in cases {
            let raw: RawPolicy = serde_json::from_value(json!({ "rules": rules })).unwrap();
            let err = Policy::compile(&raw).expect_err("must be rejected");
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn empty_policy_denies_everything() {
        let p = policy(json!([]));
        let v = p.evaluate("GET", "/api/4.0/user", &claims(json!({"sub": "a"})));
        assert!(matches!(v, Verdict::Deny { ref rule, .. } if rule == DEFAULT_DENY));
    }
}
