//! Looker API 4.0 operations: the table generated from Looker's OpenAPI spec
//! (`tools/gen_operations.py` writes `proto/operations.tsv`), compiled once into a
//! segment trie that resolves a request to its operation without scanning patterns per
//! request. The filter resolves with it; the Looker simulator routes with it.

use std::collections::HashMap;
use std::fmt;

/// The committed operation table (see `tools/gen_operations.py`).
pub const OPERATIONS_TSV: &str = include_str!("../operations.tsv");

/// The API prefix every operation path lives under.
pub const API_PREFIX: &str = "/api/4.0";

/// `x-looker-activity-type`: what an operation costs Looker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivityType {
    /// Runs a database query (Looker's query quotas count these).
    DbQuery,
    NonQuery,
    None,
}

impl ActivityType {
    pub const ALL: [ActivityType; 3] = [
        ActivityType::DbQuery,
        ActivityType::NonQuery,
        ActivityType::None,
    ];
    /// The names as the spec, the table and the plugin config write them.
    pub const NAMES: [&'static str; 3] = ["db_query", "non_query", "none"];

    pub fn as_str(self) -> &'static str {
        match self {
            ActivityType::DbQuery => "db_query",
            ActivityType::NonQuery => "non_query",
            ActivityType::None => "none",
        }
    }

    pub fn parse(name: &str) -> Option<ActivityType> {
        ActivityType::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for ActivityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `x-looker-status`: how settled an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Stable,
    Beta,
    Alpha,
    Deprecated,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Stable,
        Status::Beta,
        Status::Alpha,
        Status::Deprecated,
    ];
    /// The names as the spec, the table and the plugin config write them.
    pub const NAMES: [&'static str; 4] = ["stable", "beta", "alpha", "deprecated"];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stable => "stable",
            Status::Beta => "beta",
            Status::Alpha => "alpha",
            Status::Deprecated => "deprecated",
        }
    }

    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Looker API operation, as the spec describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Upper case HTTP method.
    pub method: String,
    /// Path template below the API prefix, e.g. `/dashboards/{dashboard_id}`.
    pub template: String,
    pub operation_id: String,
    pub tags: Vec<String>,
    /// `x-looker-activity-type`, one of [`ActivityType::NAMES`] (checked when parsed).
    pub activity_type: String,
    /// `x-looker-status`, one of [`Status::NAMES`] (checked when parsed).
    pub status: String,
}

impl Operation {
    /// The path parameters of a concrete path this operation was found for, by name:
    /// `/dashboards/{dashboard_id}` and `["dashboards", "7"]` give `("dashboard_id", "7")`.
    pub fn params<'a, S: AsRef<str>>(
        &'a self,
        segments: &'a [S],
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        template_segments(&self.template)
            .zip(segments)
            .filter_map(|(t, s)| Some((param_name(t)?, s.as_ref())))
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, Node>,
    param: Option<Box<Node>>,
    /// method -> index into `operations`
    methods: Vec<(String, usize)>,
}

/// Resolves requests to operations (the default one knows none).
#[derive(Debug, Default)]
pub struct OperationTable {
    root: Node,
    operations: Vec<Operation>,
}

/// The result of resolving a method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution<'a> {
    Found(&'a Operation),
    /// The path names an operation, but not for this method.
    WrongMethod,
    NotFound,
}

impl OperationTable {
    /// The embedded Looker API 4.0 table.
    pub fn looker_4_0() -> Result<OperationTable, String> {
        OperationTable::from_tsv(OPERATIONS_TSV)
    }

    /// Parses `method \t path \t operationId \t tags(,) \t activity \t status` lines;
    /// `#` starts a comment line.
    pub fn from_tsv(text: &str) -> Result<OperationTable, String> {
        let mut table = OperationTable {
            root: Node::default(),
            operations: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            table
                .parse_line(line)
                .map_err(|e| format!("operation table line {}: {e}", n + 1))?;
        }
        Ok(table)
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let cols: Vec<&str> = line.split('\t').collect();
        let [method, template, operation_id, tags, activity_type, status] = cols.as_slice() else {
            return Err(format!(
                "expected 6 tab-separated columns, got {}",
                cols.len()
            ));
        };
        if !template.starts_with('/') {
            return Err(format!("path {template:?} does not start with '/'"));
        }
        let activity_type = ActivityType::parse(activity_type)
            .ok_or_else(|| format!("unknown activity type {activity_type:?}"))?;
        let status = Status::parse(status).ok_or_else(|| format!("unknown status {status:?}"))?;
        self.insert(Operation {
            method: method.to_ascii_uppercase(),
            template: (*template).to_owned(),
            operation_id: (*operation_id).to_owned(),
            // `-` marks an empty cell.
            tags: tags
                .split(',')
                .filter(|t| !t.is_empty() && *t != "-")
                .map(str::to_owned)
                .collect(),
            activity_type: activity_type.as_str().to_owned(),
            status: status.as_str().to_owned(),
        })
    }

    fn insert(&mut self, op: Operation) -> Result<(), String> {
        let index = self.operations.len();
        let mut node = &mut self.root;
        for segment in template_segments(&op.template) {
            node = if param_name(segment).is_some() {
                node.param.get_or_insert_with(Box::default)
            } else {
                node.literals.entry(segment.to_owned()).or_default()
            };
        }
        if node.methods.iter().any(|(m, _)| *m == op.method) {
            return Err(format!("duplicate operation {} {}", op.method, op.template));
        }
        node.methods.push((op.method.clone(), index));
        self.operations.push(op);
        Ok(())
    }

    /// Resolves `path` (below the API prefix, normalized, no query) as the gateway
    /// judges it: the most literal route the path names decides, and a method it lacks
    /// is [`Resolution::WrongMethod`]. Literal segments win over parameters, as in
    /// Looker's router (`/dashboards/search` is not an id). Empty segments are skipped.
    pub fn resolve(&self, method: &str, path: &str) -> Resolution<'_> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match find(&self.root, &parts, &|node| !node.methods.is_empty()) {
            None => Resolution::NotFound,
            Some(node) => match node.methods.iter().find(|(m, _)| m == method) {
                Some((_, i)) => self
                    .operations
                    .get(*i)
                    .map_or(Resolution::NotFound, Resolution::Found),
                None => Resolution::WrongMethod,
            },
        }
    }

    /// Routes decoded path `segments` (below the API prefix) as a server would: the
    /// most literal route, left to right, that has this method. An empty segment
    /// matches no parameter.
    pub fn route<S: AsRef<str>>(&self, method: &str, segments: &[S]) -> Option<&Operation> {
        find(&self.root, segments, &|node| {
            node.methods.iter().any(|(m, _)| m == method)
        })
        .and_then(|node| self.at(node, method))
    }

    fn at(&self, node: &Node, method: &str) -> Option<&Operation> {
        let (_, i) = node.methods.iter().find(|(m, _)| m == method)?;
        self.operations.get(*i)
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn by_id(&self, operation_id: &str) -> Option<&Operation> {
        self.operations
            .iter()
            .find(|o| o.operation_id == operation_id)
    }
}

fn template_segments(template: &str) -> impl Iterator<Item = &str> {
    template.split('/').filter(|s| !s.is_empty())
}

/// `{name}` -> `name`.
fn param_name(segment: &str) -> Option<&str> {
    segment.strip_prefix('{')?.strip_suffix('}')
}

/// Depth first, literal before parameter: the first node `accept`s is the most literal.
fn find<'n, S: AsRef<str>, F: Fn(&Node) -> bool>(
    node: &'n Node,
    parts: &[S],
    accept: &F,
) -> Option<&'n Node> {
    let Some((first, rest)) = parts.split_first() else {
        return accept(node).then_some(node);
    };
    let first = first.as_ref();
    if let Some(found) = node
        .literals
        .get(first)
        .and_then(|child| find(child, rest, accept))
    {
        return Some(found);
    }
    if first.is_empty() {
        return None;
    }
    node.param
        .as_deref()
        .and_then(|child| find(child, rest, accept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(template: &str) -> String {
        template
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn embedded_table_parses_with_every_spec_operation() {
        let table = OperationTable::looker_4_0().unwrap();
        assert_eq!(table.operations().len(), 483);
        let ids: std::collections::BTreeSet<_> =
            table.operations().iter().map(|o| &o.operation_id).collect();
        assert_eq!(ids.len(), 483, "operation ids are unique");
        for op in table.operations() {
            assert!(
                ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&op.method.as_str()),
                "{op:?}"
            );
            assert!(
                ["db_query", "non_query", "none"].contains(&op.activity_type.as_str()),
                "{op:?}"
            );
            assert!(
                ["stable", "beta", "alpha", "deprecated"].contains(&op.status.as_str()),
                "{op:?}"
            );
            assert!(!op.tags.is_empty(), "{op:?}");
        }
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let table = [
            (
                "GET\t/a\ta\tA\tnone",
                "line 1: expected 6 tab-separated columns, got 5",
            ),
            (
                "GET\ta\ta\tA\tnone\tstable",
                "line 1: path \"a\" does not start with '/'",
            ),
            (
                "# c\nGET\t/a\ta\tA\tquery\tstable",
                "line 2: unknown activity type \"query\"",
            ),
            (
                "GET\t/a\ta\tA\tnone\tgamma",
                "line 1: unknown status \"gamma\"",
            ),
            (
                "GET\t/a/{x}\ta\tA\tnone\tstable\nget\t/a/{y}\tb\tA\tnone\tstable",
                "line 2: duplicate operation GET /a/{y}",
            ),
        ];
        for (text, want) in table {
            assert_eq!(
                OperationTable::from_tsv(text).err(),
                Some(format!("operation table {want}")),
                "{text}"
            );
        }
    }

    #[test]
    fn every_spec_operation_resolves_to_itself() {
        let table = OperationTable::looker_4_0().unwrap();
        for op in table.operations() {
            // A parameter value equal to a sibling literal would (correctly) resolve to
            // the literal route; "x1" is no literal in Looker's API.
            match table.resolve(&op.method, &sample(&op.template)) {
                Resolution::Found(found) => {
                    assert_eq!(found.operation_id, op.operation_id, "{}", op.template)
                }
                other => panic!("{} {} resolved to {other:?}", op.method, op.template),
            }
            let segments: Vec<&str> = template_segments(&op.template)
                .map(|s| if s.starts_with('{') { "x1" } else { s })
                .collect();
            let routed = table.route(&op.method, &segments).map(|o| &o.operation_id);
            assert_eq!(routed, Some(&op.operation_id), "{}", op.template);
        }
    }

    #[test]
    fn literal_segments_win_and_unknown_paths_are_not_found() {
        let table = OperationTable::looker_4_0().unwrap();
        let id = |m: &str, p: &str| match table.resolve(m, p) {
            Resolution::Found(op) => op.operation_id.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(id("GET", "/dashboards/1"), "dashboard");
        assert_eq!(id("GET", "/dashboards/search"), "search_dashboards");
        assert_eq!(id("POST", "/queries/run/json"), "run_inline_query");
        assert_eq!(id("POST", "/login"), "login");
        assert_eq!(id("POST", "/login/5"), "login_user");
        assert_eq!(id("GET", "/user"), "me");
        assert_eq!(id("DELETE", "/user"), "WrongMethod");
        assert_eq!(id("GET", "/no_such_thing"), "NotFound");
        assert_eq!(id("GET", "/dashboards/1/nope"), "NotFound");
        assert_eq!(id("GET", ""), "NotFound");
    }

    #[test]
    fn routing_takes_the_most_literal_route_with_the_method() {
        let table = OperationTable::looker_4_0().unwrap();
        let route = |m: &str, p: &[&str]| table.route(m, p).map(|o| o.operation_id.as_str());
        assert_eq!(route("GET", &["users", "search"]), Some("search_users"));
        // The gateway calls this WrongMethod; a server routes it to the parameter route.
        assert_eq!(route("DELETE", &["users", "search"]), Some("delete_user"));
        assert_eq!(
            table.resolve("DELETE", "/users/search"),
            Resolution::WrongMethod
        );
        assert_eq!(route("GET", &["dashboards", ""]), None);
        assert_eq!(route("GET", &[""]), None);
        let op = table.route("GET", &["queries", "7", "run", "csv"]).unwrap();
        let params: Vec<_> = op.params(&["queries", "7", "run", "csv"]).collect();
        assert_eq!(params, [("query_id", "7"), ("result_format", "csv")]);
    }

    #[test]
    fn activity_types_and_statuses_name_themselves() {
        for a in ActivityType::ALL {
            assert_eq!(ActivityType::parse(a.as_str()), Some(a));
        }
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(
            ActivityType::NAMES,
            ActivityType::ALL.map(ActivityType::as_str)
        );
        assert_eq!(Status::NAMES, Status::ALL.map(Status::as_str));
        assert_eq!(ActivityType::parse("query"), None);
    }
}
