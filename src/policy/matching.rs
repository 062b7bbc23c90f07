//! Rule matching: path patterns (`*`, `**`) and claim conditions, compiled at load.

use serde_json::{Map, Value};

use super::RawCondition;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Contains(Value),
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    pub(super) claim: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**` (last only): zero or more segments.
    Rest,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct PathPattern(Vec<Segment>);

pub(super) fn compile_pattern(pattern: &str) -> Result<PathPattern, String> {
    let rest = pattern
        .strip_prefix('/')
        .ok_or_else(|| format!("pattern {pattern:?} must start with '/'"))?;
    let parts: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let segment = match *part {
            "" => return Err(format!("pattern {pattern:?} has an empty segment")),
            "*" => Segment::One,
            "**" if i + 1 == parts.len() => Segment::Rest,
            "**" => {
                return Err(format!(
                    "pattern {pattern:?}: '**' may only be the last segment"
                ))
            }
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
    pub(super) fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        // "/" has no segments; otherwise every piece between slashes is one.
        let mut parts = rest.split('/').filter(move |_| !rest.is_empty());
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

pub(super) fn compile_condition(raw: &RawCondition) -> Result<Condition, String> {
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
        (Some(test), None) => Ok(Condition {
            claim: raw.claim.split('.').map(str::to_owned).collect(),
            test,
        }),
        _ => Err("needs exactly one of equals, one_of, contains, exists".to_owned()),
    }
}

pub(super) fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

impl Condition {
    pub(super) fn holds(&self, claims: &Map<String, Value>) -> bool {
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
