//! Reading a guarded operation's query where and how Looker reads it: the URL of
//! `run_url_encoded_query`, the `WriteQuery` body of `run_inline_query` /
//! `create_query` (with the URL `limit` that overrides it). Ambiguity is an error.

use crate::policy::QueryFacts;

/// The query a guarded operation carries, read where and how Looker reads it:
/// `run_url_encoded_query` from its path and URL; `run_inline_query` and `create_query`
/// from their `WriteQuery` body, where a URL `limit` overrides the body's (Looker's spec:
/// "Row limit (may override the limit in the saved query)"). Anything two readers could
/// take two ways (a repeated name, `limit[]`, a `;` separator, a duplicated JSON key, the
/// query's model in the URL of a body operation) is an error: the request is refused.
pub fn read_query(
    operation_id: &str,
    path: &str,
    url_query: Option<&str>,
    body: Option<&[u8]>,
) -> Result<QueryFacts, String> {
    let params = crate::query::parse(url_query.unwrap_or("")).map_err(|e| e.0)?;
    let mut seen = std::collections::HashSet::new();
    for p in &params {
        if !seen.insert(p.name.as_str()) {
            return Err(format!(
                "the query string names {:?} more than once",
                p.name
            ));
        }
        let base = p.base();
        if base != p.name
            && [
                "limit",
                "model",
                "view",
                "filter_expression",
                "filter_config",
            ]
            .contains(&base)
        {
            return Err(format!(
                "the query string parameter {:?} is not a single value",
                p.name
            ));
        }
    }
    let url_limit = match params.iter().find(|p| p.name == "limit") {
        Some(p) => Some(parse_limit(&p.value).map_err(|e| format!("the URL's {e}"))?),
        None => None,
    };
    let mut facts = match body {
        None => query_from_url_params(path, &params)?,
        Some(body) => {
            // Looker builds these queries from the body alone; a query field in the URL
            // would be read by one server and not another.
            if let Some(p) = params.iter().find(|p| {
                [
                    "model",
                    "view",
                    "filters",
                    "filter_expression",
                    "filter_config",
                    "f",
                ]
                .contains(&p.base())
            }) {
                return Err(format!(
                    "the query's {} belongs in the body, not the URL",
                    p.base()
                ));
            }
            query_from_body(body)?
        }
    };
    if operation_id == "create_query" && url_limit.is_some() {
        return Err("create_query takes the query's limit in the body, not the URL".to_owned());
    }
    if let Some(limit) = url_limit {
        facts.limit = limit;
    }
    Ok(facts)
}

/// A limit as Looker reads it: blank is none (its default applies), else a whole number.
fn parse_limit(text: &str) -> Result<Option<i64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<i64>()
        .map(Some)
        .map_err(|_| format!("query.limit {text:?} is not a whole number"))
}

/// Reads a Looker `WriteQuery` (`model`, `view`, `limit` — a string in Looker's
/// schema, a number accepted too — `filters`, `filter_expression`, `filter_config`).
pub fn query_from_body(body: &[u8]) -> Result<QueryFacts, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the query body is not valid JSON".to_owned())?;
    let object = value
        .as_object()
        .ok_or_else(|| "the query body is not a JSON object".to_owned())?;
    // serde_json keeps the last of duplicated keys; Looker's parser might keep another.
    // `{"limit":"100000","limit":"10"}` must not mean one thing here and another there,
    // at any depth (`filters` too).
    serde_json::from_slice::<UniqueKeys>(body)
        .map_err(|e| format!("the query body is ambiguous: {e}"))?;
    let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let limit = match object.get("limit") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => parse_limit(s)?,
        Some(serde_json::Value::Number(n)) => Some(
            n.as_i64()
                .ok_or_else(|| "query.limit is not a whole number".to_owned())?,
        ),
        Some(_) => return Err("query.limit is not a whole number".to_owned()),
    };
    let filters = match object.get("filters") {
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(field, value)| {
                // A filter that is not a string filters nothing.
                let expression = value.as_str().unwrap_or_default().to_owned();
                (field.clone(), expression)
            })
            .collect(),
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(_) => return Err("query.filters is not a JSON object".to_owned()),
    };
    let present = |key: &str| match object.get(key) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::String(s)) => !s.trim().is_empty(),
        Some(serde_json::Value::Object(map)) => !map.is_empty(),
        Some(serde_json::Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    };
    Ok(QueryFacts {
        model: text("model"),
        view: text("view"),
        limit,
        filters,
        filter_expression: present("filter_expression"),
        filter_config: present("filter_config"),
    })
}

/// Deserializes JSON only to check that no object, at any depth, repeats a key.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "key {key:?} appears twice"
                        )));
                    }
                    map.next_value::<UniqueKeys>()?;
                }
                Ok(UniqueKeys)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<UniqueKeys, A::Error> {
                while seq.next_element::<UniqueKeys>()?.is_some() {}
                Ok(UniqueKeys)
            }
            fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `run_url_encoded_query`: `/queries/models/{model}/views/{view}/run/{format}` with
/// `limit`, `f[field]=value`, `filter_expression` in the (decoded) query string.
fn query_from_url_params(path: &str, params: &[crate::query::Param]) -> Result<QueryFacts, String> {
    let parts: Vec<&str> = path.split('/').collect();
    let after = |name: &str| {
        parts
            .iter()
            .position(|p| *p == name)
            .and_then(|i| parts.get(i + 1))
            .map(|s| (*s).to_owned())
    };
    let mut facts = QueryFacts {
        model: after("models"),
        view: after("views"),
        ..QueryFacts::default()
    };
    for p in params {
        match p.base() {
            "f" => {
                let field = p
                    .name
                    .strip_prefix("f[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .filter(|field| !field.is_empty() && !field.contains(['[', ']']))
                    .ok_or_else(|| format!("the filter parameter {:?} is not f[field]", p.name))?;
                facts.filters.push((field.to_owned(), p.value.clone()));
            }
            "filter_expression" => facts.filter_expression |= !p.value.trim().is_empty(),
            "filter_config" => facts.filter_config |= !p.value.trim().is_empty(),
            _ => {}
        }
    }
    Ok(facts)
}
