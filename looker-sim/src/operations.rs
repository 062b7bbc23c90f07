//! Routing by Looker API 4.0's operation table (one definition, generated from Looker's
//! spec: `lookergate_proto::operations`): a request's method and path to its operation
//! and decoded path parameters, the way Looker's router does it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

pub use lookergate_proto::operations::{Operation, OperationTable, OPERATIONS_TSV};

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

/// The embedded table, parsed once. A broken table is a build defect caught by the
/// tests; at run time it degrades to an empty table (every call answers 404).
pub fn embedded() -> &'static OperationTable {
    static TABLE: OnceLock<OperationTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        OperationTable::looker_4_0().unwrap_or_else(|e| {
            eprintln!("looker-sim: embedded operations.tsv is invalid: {e}");
            OperationTable::default()
        })
    })
}

/// The operation for `method` and a concrete path relative to `/api/4.0` (still
/// percent-encoded). Literal segments win over parameters, left to right, so
/// `/users/credential/email/x` is `user_for_credential`, not a `/users/{user_id}/..`.
pub fn find(method: &str, path: &str) -> Option<Matched<'static>> {
    let segments: Vec<String> = split(path).map(percent_decode).collect();
    let operation = embedded().route(method, &segments)?;
    let params = operation
        .params(&segments)
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    Some(Matched { operation, params })
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
    fn every_operation_is_found_by_its_own_sample_path() {
        for op in embedded().operations() {
            let path = sample_path(&op.template);
            let found =
                find(&op.method, &path).unwrap_or_else(|| panic!("{} {path} not found", op.method));
            assert_eq!(
                found.operation.operation_id, op.operation_id,
                "{} {path}",
                op.method
            );
        }
    }

    #[test]
    fn requests_map_to_the_right_operation() {
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
            let found = find(method, path);
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
