//! The Looker API 4.0 operation table (`operations.tsv`, generated from Looker's spec by
//! `tools/gen_operations.py`) and the matcher that maps a request to one operation.

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The generated table, embedded so the simulator never reads the spec at run time.
pub const OPERATIONS_TSV: &str = include_str!("../operations.tsv");

/// One row of the table: an operation of Looker API 4.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Upper case HTTP method.
    pub method: String,
    /// Path template relative to `/api/4.0`, e.g. `/dashboards/{dashboard_id}`.
    pub path: String,
    pub operation_id: String,
    pub tags: Vec<String>,
    /// `x-looker-activity-type`: `db_query`, `non_query` or `none`.
    pub activity_type: String,
    /// `x-looker-status`: `stable`, `beta`, `alpha` or `deprecated`.
    pub status: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// An operation matched against a concrete path, with its decoded path parameters.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    pub operation: &'a Operation,
    pub params: BTreeMap<String, String>,
}

impl Matched<'_> {
    /// A path parameter by name ("" when the template has no such parameter).
    pub fn param(&self, name: &str) -> &str {
        self.params
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub struct OperationTable {
    operations: Vec<Operation>,
}

impl OperationTable {
    /// The embedded table, parsed once. A broken table is a build defect caught by the
    /// tests; at run time it degrades to an empty table (every call answers 404).
    pub fn embedded() -> &'static OperationTable {
        static TABLE: OnceLock<OperationTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            OperationTable::parse(OPERATIONS_TSV).unwrap_or_else(|e| {
                eprintln!("looker-sim: embedded operations.tsv is invalid: {e}");
                OperationTable::default()
            })
        })
    }

    /// Parses the TSV format written by `tools/gen_operations.py`; `#` lines are comments.
    pub fn parse(text: &str) -> Result<OperationTable, String> {
        let mut operations = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let cells: Vec<&str> = line.split('\t').collect();
            let [method, path, operation_id, tags, activity_type, status] = cells.as_slice() else {
                return Err(format!(
                    "line {}: expected 6 tab-separated cells, got {}",
                    n + 1,
                    cells.len()
                ));
            };
            if !path.starts_with('/') {
                return Err(format!(
                    "line {}: path {path:?} does not start with '/'",
                    n + 1
                ));
            }
            operations.push(Operation {
                method: method.to_string(),
                path: path.to_string(),
                operation_id: operation_id.to_string(),
                tags: tags
                    .split(',')
                    .filter(|t| !t.is_empty() && *t != "-")
                    .map(str::to_owned)
                    .collect(),
                activity_type: activity_type.to_string(),
                status: status.to_string(),
                segments: split(path)
                    .map(
                        |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => Segment::Param(name.to_owned()),
                            None => Segment::Literal(s.to_owned()),
                        },
                    )
                    .collect(),
            });
        }
        Ok(OperationTable { operations })
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The operation for `method` and a concrete path relative to `/api/4.0` (still
    /// percent-encoded). Literal segments win over parameters, left to right, so
    /// `/users/credential/email/x` is `user_for_credential`, not a `/users/{user_id}/..`.
    pub fn find(&self, method: &str, path: &str) -> Option<Matched<'_>> {
        let segments: Vec<String> = split(path).map(percent_decode).collect();
        let mut best: Option<(&Operation, Vec<bool>)> = None;
        for op in &self.operations {
            if op.method != method || op.segments.len() != segments.len() {
                continue;
            }
            let fits = op.segments.iter().zip(&segments).all(|(t, s)| match t {
                Segment::Literal(l) => l == s,
                Segment::Param(_) => !s.is_empty(),
            });
            if !fits {
                continue;
            }
            let literalness: Vec<bool> = op
                .segments
                .iter()
                .map(|t| matches!(t, Segment::Literal(_)))
                .collect();
            let better = match &best {
                None => true,
                Some((_, so_far)) => literalness > *so_far,
            };
            if better {
                best = Some((op, literalness));
            }
        }
        let (operation, _) = best?;
        let params = operation
            .segments
            .iter()
            .zip(segments)
            .filter_map(|(t, s)| match t {
                Segment::Param(name) => Some((name.clone(), s)),
                Segment::Literal(_) => None,
            })
            .collect();
        Some(Matched { operation, params })
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

/// `%XX` decoding of one path segment; invalid escapes are kept as they are.
pub(crate) fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (bytes.get(i), hex(i + 1), hex(i + 2)) {
            (Some(b'%'), Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (Some(b), _, _) => {
                out.push(*b);
                i += 1;
            }
            (None, _, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The template with every `{param}` replaced by a sample value.
#[cfg(test)]
pub(crate) fn sample_path(template: &str) -> String {
    split(template)
        .map(|s| if s.starts_with('{') { "1" } else { s })
        .fold(String::new(), |acc, s| acc + "/" + s)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_parses_with_every_spec_operation() {
        let table = OperationTable::parse(OPERATIONS_TSV).unwrap();
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
    fn every_operation_is_found_by_its_own_sample_path() {
        let table = OperationTable::embedded();
        for op in table.operations() {
            let path = sample_path(&op.path);
            let found = table
                .find(&op.method, &path)
                .unwrap_or_else(|| panic!("{} {path} not found", op.method));
            assert_eq!(
                found.operation.operation_id, op.operation_id,
                "{} {path}",
                op.method
            );
        }
    }

    #[test]
    fn requests_map_to_the_right_operation() {
        let table = OperationTable::embedded();
        let cases = [
            ("POST", "/login", Some("login"), vec![]),
            (
                "POST",
                "/login/201",
                Some("login_user"),
                vec![("user_id", "201")],
            ),
            ("DELETE", "/logout", Some("logout"), vec![]),
            ("GET", "/user", Some("me"), vec![]),
            ("GET", "/users/101", Some("user"), vec![("user_id", "101")]),
            ("GET", "/users/search", Some("search_users"), vec![]),
            (
                "GET",
                "/users/credential/email/carol%40example.com",
                Some("user_for_credential"),
                vec![
                    ("credential_type", "email"),
                    ("credential_id", "carol@example.com"),
                ],
            ),
            (
                "GET",
                "/dashboards/1",
                Some("dashboard"),
                vec![("dashboard_id", "1")],
            ),
            (
                "POST",
                "/queries/run/json",
                Some("run_inline_query"),
                vec![("result_format", "json")],
            ),
            (
                "GET",
                "/queries/7/run/csv",
                Some("run_query"),
                vec![("query_id", "7"), ("result_format", "csv")],
            ),
            (
                "DELETE",
                "/users/101/credentials_api3/4",
                Some("delete_user_credentials_api3"),
                vec![("user_id", "101"), ("credentials_api3_id", "4")],
            ),
            ("GET", "/dashboards", Some("all_dashboards"), vec![]),
            ("PUT", "/dashboards/1", None, vec![]),
            ("GET", "/nope", None, vec![]),
            ("GET", "/dashboards/", None, vec![]),
            ("GET", "/dashboards/1/extra/deep", None, vec![]),
        ];
        for (method, path, want, params) in cases {
            let found = table.find(method, path);
            assert_eq!(
                found.as_ref().map(|m| m.operation.operation_id.as_str()),
                want,
                "{method} {path}"
            );
            if let Some(found) = found {
                for (name, value) in params {
                    assert_eq!(found.param(name), value, "{method} {path} param {name}");
                }
            }
        }
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        for (raw, want) in [
            ("a%40b", "a@b"),
            ("100%", "100%"),
            ("%zz", "%zz"),
            ("a%20b%2F", "a b/"),
            ("", ""),
        ] {
            assert_eq!(percent_decode(raw), want, "{raw}");
        }
    }
}
