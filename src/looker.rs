//! Looker API 4.0 operations: the table generated from Looker's OpenAPI spec
//! (`tools/gen_operations.py` writes `looker-sim/operations.tsv`), compiled once into a segment trie that resolves a
//! request to its operation without scanning patterns per request.

use std::collections::HashMap;

/// The committed operation table (see `tools/gen_operations.py`).
pub const OPERATIONS_TSV: &str = include_str!("../looker-sim/operations.tsv");

/// The API prefix every operation path lives under.
pub const API_PREFIX: &str = "/api/4.0";

/// One Looker API operation, as the spec describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub method: String,
    /// Path template below the API prefix, e.g. `/dashboards/{dashboard_id}`.
    pub template: String,
    pub operation_id: String,
    pub tags: Vec<String>,
    /// `x-looker-activity-type`: `db_query`, `non_query` or `none`.
    pub activity_type: String,
    /// `x-looker-status`: `stable`, `beta`, `alpha` or `deprecated`.
    pub status: String,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, Node>,
    param: Option<Box<Node>>,
    /// method -> index into `operations`
    methods: Vec<(String, usize)>,
}

/// Resolves requests to operations.
#[derive(Debug)]
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
            let cols: Vec<&str> = line.split('\t').collect();
            let [method, template, operation_id, tags, activity_type, status] = cols.as_slice()
            else {
                return Err(format!(
                    "operation table line {}: expected 6 tab-separated columns",
                    n + 1
                ));
            };
            let op = Operation {
                method: method.to_ascii_uppercase(),
                template: (*template).to_owned(),
                operation_id: (*operation_id).to_owned(),
                // `-` marks an empty cell.
                tags: tags
                    .split(',')
                    .filter(|t| !t.is_empty() && *t != "-")
                    .map(str::to_owned)
                    .collect(),
                activity_type: (*activity_type).to_owned(),
                status: (*status).to_owned(),
            };
            table
                .insert(op)
                .map_err(|e| format!("operation table line {}: {e}", n + 1))?;
        }
        Ok(table)
    }

    fn insert(&mut self, op: Operation) -> Result<(), String> {
        let index = self.operations.len();
        let mut node = &mut self.root;
        for segment in segments(&op.template) {
            node = if segment.starts_with('{') && segment.ends_with('}') {
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

    /// Resolves `path` (below the API prefix, normalized, no query). Literal segments
    /// win over parameters, as in Looker's router (`/dashboards/search` is not an id).
    pub fn resolve(&self, method: &str, path: &str) -> Resolution<'_> {
        let parts: Vec<&str> = segments(path).collect();
        match find(&self.root, &parts) {
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

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn by_id(&self, operation_id: &str) -> Option<&Operation> {
        self.operations
            .iter()
            .find(|o| o.operation_id == operation_id)
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn find<'n>(node: &'n Node, parts: &[&str]) -> Option<&'n Node> {
    let Some((first, rest)) = parts.split_first() else {
        return (!node.methods.is_empty()).then_some(node);
    };
    if let Some(found) = node
        .literals
        .get(*first)
        .and_then(|child| find(child, rest))
    {
        return Some(found);
    }
    node.param.as_deref().and_then(|child| find(child, rest))
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
    fn every_spec_operation_resolves_to_itself() {
        let table = OperationTable::looker_4_0().unwrap();
        assert!(
            table.operations().len() >= 480,
            "{} operations",
            table.operations().len()
        );
        for op in table.operations() {
            // A parameter value equal to a sibling literal would (correctly) resolve to
            // the literal route; "x1" is no literal in Looker's API.
            match table.resolve(&op.method, &sample(&op.template)) {
                Resolution::Found(found) => {
                    assert_eq!(found.operation_id, op.operation_id, "{}", op.template)
                }
                other => panic!("{} {} resolved to {other:?}", op.method, op.template),
            }
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
}
