//! The one explore the simulator can query: model `thelook`, explore `orders` (joined
//! with `users`). Runs a Looker `WriteQuery` over the demo rows and renders it in the
//! result formats Looker names (`json`, `json_bi`, `json_detail`, `csv`, `txt`, `md`,
//! `html`, `sql`, and placeholder `png`/`jpg` images; `xlsx` is not rendered: 501).
//!
//! The row limit, as the spec describes it:
//! - `Query.limit`: "Row limit. To download unlimited results, set the limit to -1
//!   (negative one)." So a negative limit returns every row.
//! - the `limit` parameter of `run_query`, `run_look`, `run_inline_query`: "Row limit
//!   (may override the limit in the saved query)." The URL's wins over the body's.
//! - no limit, or `0` (the spec says nothing of `0`; Looker treats it as unset, and the
//!   gateway's guardrails read it the same way, `QueryFacts::limit`): Looker's default of
//!   5000 rows, also the most a positive limit returns.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

use crate::demo::{self, OrderRow};

pub const MODEL: &str = "thelook";
pub const EXPLORE: &str = "orders";

/// Looker's row limit when a query names none (or `0`), and the most a positive limit
/// returns; the gateway's `LOOKER_DEFAULT_LIMIT` is the same number.
const DEFAULT_LIMIT: usize = 5000;
const MAX_LIMIT: usize = 5000;

/// The parts of Looker's `WriteQuery` the simulator understands; other fields
/// (`vis_config`, `query_timezone`, ...) are accepted and ignored, as Looker stores them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuerySpec {
    pub model: String,
    pub view: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub fields: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub filters: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub sorts: Vec<String>,
    /// Looker sends the limit as a string (`"500"`); numbers are accepted too. `-1`
    /// means "no limit", `0` the default.
    #[serde(default, deserialize_with = "limit")]
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum QueryError {
    UnknownModel(String),
    UnknownExplore(String),
    UnknownField(String),
    NoFields,
    BadLimit(String),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::UnknownModel(m) => write!(f, "model {m:?} not found"),
            QueryError::UnknownExplore(v) => {
                write!(f, "explore {v:?} not found in model {MODEL:?}")
            }
            QueryError::UnknownField(name) => write!(f, "unknown field {name:?}"),
            QueryError::NoFields => write!(f, "a query needs at least one field"),
            QueryError::BadLimit(l) => write!(f, "limit {l:?} is not a number"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Number,
    String,
    Date,
    Count,
}

struct FieldDef {
    name: &'static str,
    label: &'static str,
    kind: Kind,
    sql: &'static str,
}

const FIELDS: [FieldDef; 6] = [
    FieldDef {
        name: "orders.id",
        label: "Orders ID",
        kind: Kind::Number,
        sql: "orders.id",
    },
    FieldDef {
        name: "orders.status",
        label: "Orders Status",
        kind: Kind::String,
        sql: "orders.status",
    },
    FieldDef {
        name: "orders.created_date",
        label: "Orders Created Date",
        kind: Kind::Date,
        sql: "DATE(orders.created_at)",
    },
    FieldDef {
        name: "orders.count",
        label: "Orders Count",
        kind: Kind::Count,
        sql: "COUNT(DISTINCT orders.id)",
    },
    FieldDef {
        name: "users.state",
        label: "Users State",
        kind: Kind::String,
        sql: "users.state",
    },
    FieldDef {
        name: "users.region",
        label: "Users Region",
        kind: Kind::String,
        sql: "users.region",
    },
];

fn field_def(name: &str) -> Option<&'static FieldDef> {
    FIELDS.iter().find(|f| f.name == name)
}

impl FieldDef {
    fn is_measure(&self) -> bool {
        self.kind == Kind::Count
    }

    fn value(&self, row: &OrderRow) -> Value {
        match self.name {
            "orders.id" => json!(row.id),
            "orders.status" => json!(row.status),
            "orders.created_date" => json!(row.created_date),
            "users.state" => json!(row.user_state),
            "users.region" => json!(row.user_region),
            _ => Value::Null,
        }
    }
}

/// A query result: column names in query order, and one JSON object per row.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub fields: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
    pub sql: String,
}

impl QuerySpec {
    /// Checks model, explore and fields the way Looker does before running anything.
    pub fn validate(&self) -> Result<(), QueryError> {
        if self.model != MODEL {
            return Err(QueryError::UnknownModel(self.model.clone()));
        }
        if self.view != EXPLORE {
            return Err(QueryError::UnknownExplore(self.view.clone()));
        }
        if self.fields.is_empty() {
            return Err(QueryError::NoFields);
        }
        let named = self.fields.iter().chain(self.filters.keys());
        let sorted = self
            .sorts
            .iter()
            .filter_map(|s| s.split_whitespace().next());
        match named
            .map(String::as_str)
            .chain(sorted)
            .find(|n| field_def(n).is_none())
        {
            Some(unknown) => Err(QueryError::UnknownField(unknown.to_owned())),
            None => Ok(()),
        }
    }

    /// The query as Looker's `Query` object with the given id.
    pub fn to_looker_json(&self, id: u64) -> Value {
        json!({
            "can": {"run": true, "see_results": true, "explore": true, "create": true, "show": true},
            "id": id.to_string(),
            "model": self.model,
            "view": self.view,
            "fields": self.fields,
            "pivots": null,
            "fill_fields": null,
            "filters": if self.filters.is_empty() { Value::Null } else { json!(self.filters) },
            "filter_expression": null,
            "sorts": self.sorts,
            "limit": self.limit.map(|l| l.to_string()),
            "column_limit": null,
            "total": false,
            "row_total": null,
            "subtotals": null,
            "vis_config": null,
            "dynamic_fields": null,
            "query_timezone": null,
            "has_table_calculations": false,
            "client_id": format!("simquery{id:014}"),
            "slug": format!("sim{id}"),
            "share_url": format!("/x/sim{id}"),
            "url": format!("/explore/{}/{}?qid=simquery{id:014}", self.model, self.view),
        })
    }

    /// Runs the query over the demo orders. `limit_override` is the `limit` query
    /// parameter of `run_query`/`run_inline_query`, which wins over the body's.
    pub fn run(&self, limit_override: Option<&str>) -> Result<QueryResult, QueryError> {
        self.validate()?;
        let limit = match limit_override {
            Some(raw) => Some(
                raw.trim()
                    .parse::<i64>()
                    .map_err(|_| QueryError::BadLimit(raw.to_owned()))?,
            ),
            None => self.limit,
        };
        let limit = match limit {
            None | Some(0) => Some(DEFAULT_LIMIT),
            Some(n) if n < 0 => None,
            Some(n) => Some(usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
        };
        let defs: Vec<&FieldDef> = self.fields.iter().filter_map(|f| field_def(f)).collect();
        let dimensions: Vec<&FieldDef> = defs.iter().copied().filter(|d| !d.is_measure()).collect();

        // WHERE on dimensions, GROUP BY the selected dimensions, HAVING on measures.
        let mut groups: BTreeMap<Vec<String>, (Map<String, Value>, u64)> = BTreeMap::new();
        for row in demo::orders() {
            let kept = self
                .filters
                .iter()
                .all(|(name, expr)| match field_def(name) {
                    Some(def) if !def.is_measure() => {
                        filter_matches(expr, &def.value(&row), def.kind)
                    }
                    _ => true,
                });
            if !kept {
                continue;
            }
            let values: Vec<Value> = dimensions.iter().map(|d| d.value(&row)).collect();
            let key = values.iter().map(Value::to_string).collect();
            let entry = groups.entry(key).or_insert_with(|| {
                let cells = dimensions
                    .iter()
                    .zip(values)
                    .map(|(d, v)| (d.name.to_owned(), v))
                    .collect();
                (cells, 0)
            });
            entry.1 += 1;
        }
        if dimensions.is_empty() && groups.is_empty() {
            groups.insert(Vec::new(), (Map::new(), 0));
        }
        let mut rows: Vec<Map<String, Value>> = groups
            .into_values()
            .map(|(mut cells, count)| {
                for def in defs.iter().filter(|d| d.is_measure()) {
                    cells.insert(def.name.to_owned(), json!(count));
                }
                cells
            })
            .filter(|cells: &Map<String, Value>| {
                self.filters
                    .iter()
                    .all(|(name, expr)| match field_def(name) {
                        Some(def) if def.is_measure() => cells
                            .get(name)
                            .is_some_and(|v| filter_matches(expr, v, def.kind)),
                        _ => true,
                    })
            })
            .collect();
        let sorts = self.effective_sorts(&defs);
        rows.sort_by(|a, b| {
            sorts.iter().fold(Ordering::Equal, |acc, (name, desc)| {
                acc.then_with(|| {
                    let ord = compare(a.get(name), b.get(name));
                    if *desc {
                        ord.reverse()
                    } else {
                        ord
                    }
                })
            })
        });
        if let Some(limit) = limit {
            rows.truncate(limit);
        }
        Ok(QueryResult {
            fields: self.fields.clone(),
            rows,
            sql: self.sql(&defs, &dimensions, limit),
        })
    }

    /// Explicit sorts (`"orders.count desc 0"`), else Looker's default: the first date
    /// descending, else the first measure descending, else the first field ascending.
    fn effective_sorts(&self, defs: &[&FieldDef]) -> Vec<(String, bool)> {
        if !self.sorts.is_empty() {
            return self
                .sorts
                .iter()
                .filter_map(|s| {
                    let mut words = s.split_whitespace();
                    let name = words.next()?;
                    Some((
                        name.to_owned(),
                        words.next().is_some_and(|w| w.eq_ignore_ascii_case("desc")),
                    ))
                })
                .collect();
        }
        let default = defs
            .iter()
            .find(|d| d.kind == Kind::Date)
            .or_else(|| defs.iter().find(|d| d.is_measure()))
            .map(|d| (d.name.to_owned(), true))
            .or_else(|| defs.first().map(|d| (d.name.to_owned(), false)));
        default.into_iter().collect()
    }

    /// `limit` `None`: unlimited, no `LIMIT` clause.
    fn sql(&self, defs: &[&FieldDef], dimensions: &[&FieldDef], limit: Option<usize>) -> String {
        let select: Vec<String> = defs
            .iter()
            .map(|d| format!("    {} AS \"{}\"", d.sql, d.name))
            .collect();
        let mut sql = format!(
            "SELECT\n{}\nFROM demo.orders AS orders\nLEFT JOIN demo.users AS users ON orders.user_id = users.id\n",
            select.join(",\n")
        );
        if !dimensions.is_empty() {
            let positions: Vec<String> = (1..=dimensions.len()).map(|n| n.to_string()).collect();
            sql.push_str(&format!("GROUP BY {}\n", positions.join(",")));
        }
        match limit {
            Some(limit) => sql.push_str(&format!("LIMIT {limit}")),
            None => sql.truncate(sql.trim_end().len()),
        }
        sql
    }
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// A subset of Looker filter expressions: `a,b` (any of), `-a` (none of), `%` wildcards
/// for strings; `>n`, `>=n`, `<n`, `<=n`, `n`, `not n` for numbers.
fn filter_matches(expr: &str, value: &Value, kind: Kind) -> bool {
    let terms: Vec<&str> = expr
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if terms.is_empty() {
        return true;
    }
    let numeric = matches!(kind, Kind::Number | Kind::Count);
    let mut includes = Vec::new();
    let mut excludes = Vec::new();
    for term in terms {
        let negated = if numeric {
            term.get(..4)
                .filter(|p| p.eq_ignore_ascii_case("not "))
                .and(term.get(4..))
        } else {
            term.strip_prefix('-')
        };
        match negated {
            Some(rest) => excludes.push(rest.trim()),
            None => includes.push(term),
        }
    }
    let hit = |term: &str| {
        if numeric {
            number_matches(term, value)
        } else {
            text_matches(term, value)
        }
    };
    (includes.is_empty() || includes.iter().any(|t| hit(t))) && !excludes.iter().any(|t| hit(t))
}

fn number_matches(term: &str, value: &Value) -> bool {
    let Some(v) = value.as_f64() else {
        return false;
    };
    let (op, rest) = [">=", "<=", ">", "<", "="]
        .iter()
        .find_map(|op| term.strip_prefix(op).map(|rest| (*op, rest)))
        .unwrap_or(("=", term));
    let Ok(n) = rest.trim().parse::<f64>() else {
        return false;
    };
    match op {
        ">=" => v >= n,
        "<=" => v <= n,
        ">" => v > n,
        "<" => v < n,
        _ => v == n,
    }
}

fn text_matches(pattern: &str, value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    like(&pattern.to_lowercase(), &text.to_lowercase())
}

/// SQL `LIKE` with `%` only.
fn like(pattern: &str, text: &str) -> bool {
    match pattern.split_once('%') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            if tail.is_empty() {
                return true;
            }
            rest.char_indices()
                .map(|(i, _)| i)
                .chain([rest.len()])
                .any(|i| rest.get(i..).is_some_and(|r| like(tail, r)))
        }
    }
}

/// A rendered result: content type and body.
pub struct Rendered {
    pub content_type: &'static str,
    pub body: String,
}

/// What Looker does with a result format the simulator was asked for.
pub enum Format {
    Supported(fn(&QueryResult) -> Rendered),
    /// A picture of the visualization (`png`, `jpg`): a placeholder image of this type.
    Image(&'static str),
    /// A format Looker has (`xlsx`) that the simulator does not render.
    NotRendered,
    Unknown,
}

pub fn format(name: &str) -> Format {
    match name {
        "json" => Format::Supported(render_json),
        "json_detail" => Format::Supported(render_json_detail),
        "csv" => Format::Supported(|r| render_delimited(r, ',')),
        "txt" => Format::Supported(|r| render_delimited(r, '\t')),
        "md" => Format::Supported(render_markdown),
        "sql" => Format::Supported(|r| Rendered {
            content_type: "text/plain; charset=utf-8",
            body: r.sql.clone(),
        }),
        "json_bi" => Format::Supported(render_json_bi),
        "html" => Format::Supported(render_html),
        "png" => Format::Image("image/png"),
        "jpg" => Format::Image("image/jpeg"),
        "xlsx" => Format::NotRendered,
        _ => Format::Unknown,
    }
}

/// Looker's `json`: one object per row, keys in query order (serde_json's `Map` would
/// sort them, hence the hand-written object).
fn render_json(result: &QueryResult) -> Rendered {
    let rows: Vec<String> = result
        .rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = result
                .fields
                .iter()
                .map(|f| {
                    format!(
                        "{}:{}",
                        Value::from(f.as_str()),
                        row.get(f).unwrap_or(&Value::Null)
                    )
                })
                .collect();
            format!("{{{}}}", cells.join(","))
        })
        .collect();
    Rendered {
        content_type: "application/json",
        body: format!("[{}]", rows.join(",")),
    }
}

fn render_json_detail(result: &QueryResult) -> Rendered {
    let describe = |measures: bool| -> Vec<Value> {
        result
            .fields
            .iter()
            .filter_map(|f| field_def(f))
            .filter(|d| d.is_measure() == measures)
            .map(|d| json!({"name": d.name, "label": d.label, "type": kind_name(d.kind), "is_numeric": matches!(d.kind, Kind::Number | Kind::Count)}))
            .collect()
    };
    let data: Vec<Value> = result
        .rows
        .iter()
        .map(|row| {
            Value::Object(
                row.iter()
                    .map(|(k, v)| (k.clone(), json!({"value": v})))
                    .collect(),
            )
        })
        .collect();
    let body = json!({
        "fields": {"dimensions": describe(false), "measures": describe(true), "table_calculations": []},
        "data": data,
        "sql": result.sql,
        "has_row_totals": false,
        "has_totals": false,
    });
    Rendered {
        content_type: "application/json",
        body: body.to_string(),
    }
}

/// Looker's recommended `json_bi`: the `JsonBi` type (metadata, fields, rows). The spec
/// types `rows` as strings; Looker sends one object per row, and so does the simulator.
fn render_json_bi(result: &QueryResult) -> Rendered {
    let describe = |measures: bool| -> Vec<Value> {
        result
            .fields
            .iter()
            .filter_map(|f| field_def(f))
            .filter(|d| d.is_measure() == measures)
            .map(|d| {
                let (view, _) = d.name.split_once('.').unwrap_or((d.name, ""));
                json!({
                    "sql": d.sql, "view": view, "dimension_group": null,
                    "category": if measures { "measure" } else { "dimension" },
                    "field_group_label": null, "name": d.name, "type": kind_name(d.kind),
                    "view_label": view, "label": d.label, "field_group_variant": "",
                    "hidden": false, "description": null,
                })
            })
            .collect()
    };
    let body = json!({
        "metadata": {
            "big_query_metadata": {"total_bytes_processed": 0, "backend_cache_hit": false},
            "fields": {"dimensions": describe(false), "measures": describe(true), "pivots": [], "table_calculations": []},
            "pivots": [],
            "has_subtotals": false,
            "has_totals": false,
            "columns_truncated": "false",
            "filter_expression": null,
            "filters": {},
            "sql": result.sql,
        },
        "rows": result.rows,
    });
    Rendered {
        content_type: "application/json",
        body: body.to_string(),
    }
}

/// `html`: a bare table with a label header.
fn render_html(result: &QueryResult) -> Rendered {
    let escape = |s: String| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let header: String = labels(result)
        .into_iter()
        .map(|l| format!("<th>{}</th>", escape(l)))
        .collect();
    let rows: String = result
        .rows
        .iter()
        .map(|row| {
            let cells: String = result
                .fields
                .iter()
                .map(|f| format!("<td>{}</td>", escape(cell_text(row.get(f)))))
                .collect();
            format!("<tr>{cells}</tr>\n")
        })
        .collect();
    Rendered {
        content_type: "text/html; charset=utf-8",
        body: format!("<table>\n<tr>{header}</tr>\n{rows}</table>\n"),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Number => "number",
        Kind::String => "string",
        Kind::Date => "date_date",
        Kind::Count => "count_distinct",
    }
}

fn cell_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn labels(result: &QueryResult) -> Vec<String> {
    result
        .fields
        .iter()
        .map(|f| field_def(f).map_or_else(|| f.clone(), |d| d.label.to_owned()))
        .collect()
}

/// `csv` (RFC 4180 quoting) and `txt` (tab separated); both with a label header, like Looker.
fn render_delimited(result: &QueryResult, sep: char) -> Rendered {
    let quote = |s: String| {
        if sep == ',' && s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut lines = vec![labels(result)
        .into_iter()
        .map(quote)
        .collect::<Vec<_>>()
        .join(&sep.to_string())];
    for row in &result.rows {
        let cells: Vec<String> = result
            .fields
            .iter()
            .map(|f| quote(cell_text(row.get(f))))
            .collect();
        lines.push(cells.join(&sep.to_string()));
    }
    let content_type = if sep == ',' {
        "text/csv; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    Rendered {
        content_type,
        body: lines.join("\n") + "\n",
    }
}

fn render_markdown(result: &QueryResult) -> Rendered {
    let mut lines = vec![format!("| {} |", labels(result).join(" | "))];
    lines.push(format!("|{}", " --- |".repeat(result.fields.len())));
    for row in &result.rows {
        let cells: Vec<String> = result
            .fields
            .iter()
            .map(|f| cell_text(row.get(f)))
            .collect();
        lines.push(format!("| {} |", cells.join(" | ")));
    }
    Rendered {
        content_type: "text/markdown; charset=utf-8",
        body: lines.join("\n") + "\n",
    }
}

fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

fn limit<'de, D: Deserializer<'de>>(de: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(de)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("limit is not an integer")),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("limit is not an integer")),
        Some(_) => Err(serde::de::Error::custom(
            "limit must be a string or a number",
        )),
    }
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

    fn query(body: Value) -> QuerySpec {
        serde_json::from_value(body).unwrap()
    }

    fn count_where(pred: impl Fn(&OrderRow) -> bool) -> u64 {
        demo::orders().iter().filter(|r| pred(r)).count() as u64
    }

    #[test]
    fn write_query_bodies_parse_like_looker_sends_them() {
        let cases = [
            (
                json!({"model": "thelook", "view": "orders", "limit": "10"}),
                Some(10),
            ),
            (
                json!({"model": "thelook", "view": "orders", "limit": 7}),
                Some(7),
            ),
            (
                json!({"model": "thelook", "view": "orders", "limit": null, "fields": null}),
                None,
            ),
            (
                json!({"model": "thelook", "view": "orders", "vis_config": {"type": "table"}}),
                None,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(query(body.clone()).limit, want, "{body}");
        }
        assert!(serde_json::from_value::<QuerySpec>(
            json!({"model": "thelook", "view": "orders", "limit": "ten"})
        )
        .is_err());
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let cases = [
            (
                json!({"model": "nope", "view": "orders", "fields": ["orders.count"]}),
                Some(QueryError::UnknownModel("nope".into())),
            ),
            (
                json!({"model": "thelook", "view": "nope", "fields": ["orders.count"]}),
                Some(QueryError::UnknownExplore("nope".into())),
            ),
            (
                json!({"model": "thelook", "view": "orders", "fields": []}),
                Some(QueryError::NoFields),
            ),
            (
                json!({"model": "thelook", "view": "orders", "fields": ["orders.nope"]}),
                Some(QueryError::UnknownField("orders.nope".into())),
            ),
            (
                json!({"model": "thelook", "view": "orders", "fields": ["orders.count"], "filters": {"x.y": "1"}}),
                Some(QueryError::UnknownField("x.y".into())),
            ),
            (
                json!({"model": "thelook", "view": "orders", "fields": ["orders.count"], "sorts": ["z.z desc"]}),
                Some(QueryError::UnknownField("z.z".into())),
            ),
            (
                json!({"model": "thelook", "view": "orders", "fields": ["orders.count", "users.state"]}),
                None,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(query(body.clone()).validate().err(), want, "{body}");
        }
    }

    #[test]
    fn count_without_dimensions_counts_every_order() {
        let result =
            query(json!({"model": "thelook", "view": "orders", "fields": ["orders.count"]}))
                .run(None)
                .unwrap();
        assert_eq!(
            result.rows,
            vec![json!({"orders.count": 40}).as_object().cloned().unwrap()]
        );
    }

    #[test]
    fn counts_group_by_dimensions_and_honour_filters() {
        let cases = [
            ("complete", count_where(|r| r.status == "complete")),
            (
                "complete,pending",
                count_where(|r| r.status == "complete" || r.status == "pending"),
            ),
            ("-complete", count_where(|r| r.status != "complete")),
            ("COMP%", count_where(|r| r.status.starts_with("comp"))),
            ("", 40),
        ];
        for (filter, want) in cases {
            let q = query(
                json!({"model": "thelook", "view": "orders", "fields": ["orders.count"], "filters": {"orders.status": filter}}),
            );
            let result = q.run(None).unwrap();
            assert_eq!(
                result.rows[0]["orders.count"],
                json!(want),
                "filter {filter:?}"
            );
        }
        let numeric = [
            (">30", 10),
            (">=30", 11),
            ("<=5", 5),
            ("7", 1),
            ("not 7", 39),
            ("1,2,3", 3),
        ];
        for (filter, want) in numeric {
            let q = query(
                json!({"model": "thelook", "view": "orders", "fields": ["orders.count"], "filters": {"orders.id": filter}}),
            );
            assert_eq!(
                q.run(None).unwrap().rows[0]["orders.count"],
                json!(want),
                "filter {filter:?}"
            );
        }
    }

    #[test]
    fn grouped_rows_sum_to_the_total_and_sort_by_count_desc_by_default() {
        let q = query(
            json!({"model": "thelook", "view": "orders", "fields": ["users.state", "orders.count"]}),
        );
        let result = q.run(None).unwrap();
        let counts: Vec<u64> = result
            .rows
            .iter()
            .map(|r| r["orders.count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 40);
        assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
        assert_eq!(result.rows[0]["users.state"], "California");
        let Format::Supported(render) = format("json") else {
            panic!("json")
        };
        assert!(
            render(&result)
                .body
                .starts_with(r#"[{"users.state":"California","orders.count":16},"#),
            "columns in query order"
        );
    }

    #[test]
    fn limit_from_body_or_parameter_caps_rows() {
        let q = query(
            json!({"model": "thelook", "view": "orders", "fields": ["orders.id"], "limit": "5"}),
        );
        assert_eq!(q.run(None).unwrap().rows.len(), 5);
        assert_eq!(
            q.run(Some("3")).unwrap().rows.len(),
            3,
            "the limit parameter wins"
        );
        assert_eq!(q.run(Some("-1")).unwrap().rows.len(), 40, "-1: unlimited");
        assert_eq!(
            q.run(Some("0")).unwrap().rows.len(),
            40,
            "0: the default, 5000"
        );
        assert!(!q.run(Some("-1")).unwrap().sql.contains("LIMIT"));
        assert!(q.run(Some("0")).unwrap().sql.ends_with("LIMIT 5000"));
        assert_eq!(
            q.run(Some("x")).unwrap_err(),
            QueryError::BadLimit("x".into())
        );
        let ids = query(
            json!({"model": "thelook", "view": "orders", "fields": ["orders.id"], "sorts": ["orders.id desc"], "limit": 2}),
        );
        let rows = ids.run(None).unwrap().rows;
        assert_eq!(
            rows.iter()
                .map(|r| r["orders.id"].clone())
                .collect::<Vec<_>>(),
            [json!(40), json!(39)]
        );
    }

    #[test]
    fn measure_filters_apply_after_grouping() {
        let q = query(
            json!({"model": "thelook", "view": "orders", "fields": ["orders.status", "orders.count"], "filters": {"orders.count": ">15"}}),
        );
        let rows = q.run(None).unwrap().rows;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["orders.status"], "complete");
    }

    #[test]
    fn formats_render_the_same_rows() {
        let q = query(
            json!({"model": "thelook", "view": "orders", "fields": ["orders.status", "orders.count"], "sorts": ["orders.status"]}),
        );
        let result = q.run(None).unwrap();
        let render = |name: &str| match format(name) {
            Format::Supported(f) => f(&result),
            _ => panic!("{name} not supported"),
        };
        let csv = render("csv");
        assert_eq!(csv.content_type, "text/csv; charset=utf-8");
        assert_eq!(
            csv.body,
            "Orders Status,Orders Count\ncancelled,10\ncomplete,20\npending,10\n"
        );
        assert_eq!(
            render("txt").body,
            "Orders Status\tOrders Count\ncancelled\t10\ncomplete\t20\npending\t10\n"
        );
        let json_rows: Value = serde_json::from_str(&render("json").body).unwrap();
        assert_eq!(
            json_rows[1],
            json!({"orders.status": "complete", "orders.count": 20})
        );
        let detail: Value = serde_json::from_str(&render("json_detail").body).unwrap();
        assert_eq!(detail["data"][0]["orders.count"]["value"], 10);
        assert_eq!(detail["fields"]["measures"][0]["name"], "orders.count");
        assert!(render("sql").body.starts_with("SELECT"));
        assert!(render("md").body.contains("| complete | 20 |"));
        let bi: Value = serde_json::from_str(&render("json_bi").body).unwrap();
        assert_eq!(
            bi["rows"][1],
            json!({"orders.status": "complete", "orders.count": 20})
        );
        assert_eq!(
            bi["metadata"]["fields"]["measures"][0]["name"],
            "orders.count"
        );
        assert!(render("html")
            .body
            .contains("<tr><td>complete</td><td>20</td></tr>"));
        assert!(matches!(format("png"), Format::Image("image/png")));
        assert!(matches!(format("xlsx"), Format::NotRendered));
        assert!(matches!(format("bogus"), Format::Unknown));
    }

    #[test]
    fn like_matches_percent_wildcards() {
        let cases = [
            ("a%", "abc", true),
            ("%c", "abc", true),
            ("%b%", "abc", true),
            ("a%d", "abc", false),
            ("abc", "abc", true),
            ("%", "", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(like(pattern, text), want, "{pattern} ~ {text}");
        }
    }
}
