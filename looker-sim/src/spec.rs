//! Looker's API 4.0 spec (`spec/Looker.4.0.oas.json`, from sdk-codegen), embedded and
//! parsed once: what operations without hand-written behaviour answer, and how every
//! request body is checked.
//!
//! Generated answers (`generate`) follow the operation's success response:
//! - the status is the spec's first 2xx that has content (`204` always without a body);
//! - `$ref`s to `#/components/schemas` are resolved; arrays have 2 items at the top and 1
//!   below, none past `MAX_DEPTH`, where objects keep only their `required` properties;
//! - strings by format and name: date-times are `DEMO_CREATED_AT`, `*_id`s are the demo's
//!   ids (dashboards "1"/"2", looks "1"/"2", users "1"/"101"/..., folder "1", query "1",
//!   model `thelook`, explore `orders`), a path parameter's value is echoed in the property
//!   of the same name and in the top-level object's `id`; `can` maps are all `true`;
//! - other media types answer as such: `text/plain` text, tiny PNG/JPEG/SVG/PDF bodies.
//!
//! Request bodies (`check_body`), as Looker's Rails controllers read them: malformed JSON
//! is a 400; a body missing a `required` property (`missing_field`) or with a value of the
//! wrong JSON type for a declared property (`invalid`) is a 422. Values Rails coerces are
//! accepted: a number or boolean for a string, a numeric string for a number, and `null`
//! for anything (Looker treats it as unset).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::demo::DEMO_CREATED_AT;

const SPEC_JSON: &str = include_str!("../spec/Looker.4.0.oas.json");

/// Past this depth of nested objects, generated arrays are empty and objects hold only
/// their `required` properties, so recursive schemas (folders, boards) stay small.
const MAX_DEPTH: usize = 3;

/// The parsed spec. A broken embedded spec is a build defect caught by the tests; at run
/// time it degrades to `null` (every generated answer is then an empty 200/204).
pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        serde_json::from_str(SPEC_JSON).unwrap_or_else(|e| {
            eprintln!("looker-sim: embedded Looker.4.0.oas.json is invalid: {e}");
            Value::Null
        })
    })
}

/// The spec's operation object for a method and path template.
pub fn operation(method: &str, template: &str) -> Option<&'static Value> {
    spec()
        .get("paths")?
        .get(template)?
        .get(method.to_ascii_lowercase())
}

/// Follows a `$ref` to `#/components/schemas/{name}`: the schema's name and the schema.
pub fn resolve(schema: &'static Value) -> (Option<&'static str>, &'static Value) {
    let name = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"));
    let target = name.and_then(|n| spec().get("components")?.get("schemas")?.get(n));
    match target {
        Some(target) => (name, target),
        None => (None, schema),
    }
}

/// What an operation answers when it succeeds.
#[derive(Debug, Clone, Copy)]
pub struct Success {
    pub status: u16,
    /// Media type and schema of the body; `None` for no body.
    pub content: Option<(&'static str, &'static Value)>,
}

/// The spec's success answer: the first 2xx with content, JSON preferred among its media
/// types; a `204` has no body whatever the spec lists under it.
pub fn success(op: &'static Value) -> Success {
    let Some(responses) = op.get("responses").and_then(Value::as_object) else {
        return Success {
            status: 200,
            content: None,
        };
    };
    let mut codes: Vec<(u16, &'static Value)> = responses
        .iter()
        .filter_map(|(code, r)| Some((code.parse::<u16>().ok()?, r)))
        .filter(|(code, _)| (200..300).contains(code))
        .collect();
    codes.sort_by_key(|(code, _)| *code);
    for (code, response) in &codes {
        if *code == 204 {
            return Success {
                status: 204,
                content: None,
            };
        }
        let content = response.get("content").and_then(Value::as_object);
        let media = content.and_then(|c| {
            c.get_key_value("application/json")
                .or_else(|| c.iter().next())
        });
        if let Some((media, body)) = media {
            if let Some(schema) = body.get("schema") {
                return Success {
                    status: *code,
                    content: Some((media.as_str(), schema)),
                };
            }
        }
    }
    Success {
        status: codes.first().map_or(200, |(code, _)| *code),
        content: None,
    }
}

/// A resource the demo knows, so a path naming an unknown one answers 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dashboard,
    Look,
    User,
    Folder,
    Query,
    Model,
    Explore,
}

/// The demo's folders: "Shared" and each demo user's personal folder (1000 + user id).
pub const FOLDER_IDS: [&str; 7] = ["1", "1001", "1101", "1102", "1201", "1202", "1203"];
const DASHBOARD_IDS: [&str; 2] = ["1", "2"];
const LOOK_IDS: [&str; 2] = ["1", "2"];
const USER_IDS: [&str; 6] = ["1", "101", "102", "201", "202", "203"];
const QUERY_IDS: [&str; 2] = ["1", "2"];

impl Kind {
    /// The kind a path parameter names in a template, if the demo knows it.
    pub fn of_path_param(template: &str, name: &str) -> Option<Kind> {
        Some(match name {
            "dashboard_id" => Kind::Dashboard,
            "look_id" => Kind::Look,
            "user_id" => Kind::User,
            "folder_id" => Kind::Folder,
            // `/sql_interface_queries/{query_id}` names SQL interface queries instead.
            "query_id" if template.starts_with("/queries/") => Kind::Query,
            "model_name" | "lookml_model_name" => Kind::Model,
            "view_name" | "explore_name" => Kind::Explore,
            _ => return None,
        })
    }

    /// Ids known to every demo instance (queries created later are checked in the world).
    pub fn demo_ids(self) -> &'static [&'static str] {
        match self {
            Kind::Dashboard => &DASHBOARD_IDS,
            Kind::Look => &LOOK_IDS,
            Kind::User => &USER_IDS,
            Kind::Folder => &FOLDER_IDS,
            Kind::Query => &QUERY_IDS,
            Kind::Model => &["thelook"],
            Kind::Explore => &["orders"],
        }
    }

    fn of_schema(name: &str) -> Option<Kind> {
        Some(match name {
            "Dashboard" | "DashboardBase" => Kind::Dashboard,
            "Look" | "LookWithQuery" | "LookWithDashboards" | "LookBasic" => Kind::Look,
            "User" | "UserPublic" => Kind::User,
            "Folder" | "FolderBase" => Kind::Folder,
            "Query" => Kind::Query,
            "LookmlModel" => Kind::Model,
            "LookmlModelExplore" => Kind::Explore,
            _ => return None,
        })
    }

    /// The kind a property (`dashboard_id`, `role_ids`, `model`, ...) refers to.
    fn of_property(name: &str) -> Option<Kind> {
        let name = name
            .strip_suffix('s')
            .filter(|n| n.ends_with("_id"))
            .unwrap_or(name);
        Some(match name {
            "dashboard_id" => Kind::Dashboard,
            "look_id" => Kind::Look,
            "user_id" | "owner_id" | "created_by_user_id" | "created_by_userid"
            | "updated_by_userid" => Kind::User,
            "folder_id" | "space_id" | "home_folder_id" | "personal_folder_id" => Kind::Folder,
            "query_id" => Kind::Query,
            "model" | "model_name" | "lookml_model_name" => Kind::Model,
            "view" | "view_name" | "explore" | "explore_name" => Kind::Explore,
            _ => return None,
        })
    }
}

/// Generates one operation's answer body from its success schema.
pub struct Generator<'a> {
    /// The matched path parameters, echoed where a property has the same name.
    pub path_params: &'a BTreeMap<String, String>,
    /// The path parameter whose value is the top-level object's `id` (the last one).
    pub own_id: Option<&'a str>,
}

impl Generator<'_> {
    pub fn generate(&self, schema: &'static Value) -> Value {
        self.value(schema, "", 0, 0)
    }

    fn value(&self, schema: &'static Value, prop: &str, depth: usize, index: usize) -> Value {
        let (name, schema) = resolve(schema);
        // Looker puts the allowed values of an array's items on the array itself.
        let is_array = schema.get("type").and_then(Value::as_str) == Some("array");
        if let (true, Some(first)) = (
            is_array && depth < MAX_DEPTH,
            schema
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|v| v.first()),
        ) {
            return Value::Array(vec![first.clone()]);
        }
        if let Some(first) = schema
            .get("enum")
            .filter(|_| !is_array)
            .and_then(Value::as_array)
            .and_then(|v| v.first())
        {
            return first.clone();
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("array") => {
                let count = match depth {
                    0 => 2,
                    d if d < MAX_DEPTH => 1,
                    _ => 0,
                };
                let items = schema.get("items").unwrap_or(&Value::Null);
                let items: &'static Value = if items.is_null() { &EMPTY } else { items };
                (0..count)
                    .map(|i| self.value(items, prop, depth + 1, i))
                    .collect()
            }
            Some("boolean") => Value::Bool(false),
            Some("integer") => json!(self.integer(prop, index)),
            Some("number") => json!(1.5),
            Some("string") => Value::String(self.string(prop, schema, index)),
            Some("object") | None if schema.get("properties").is_some() => {
                self.object(name, schema, depth, index)
            }
            Some("object") => self.map(prop, schema, depth),
            // `type: any` (Looker's own word): a string is as good as anything.
            _ => Value::String(format!("{prop} {}", index + 1)),
        }
    }

    fn object(
        &self,
        name: Option<&str>,
        schema: &'static Value,
        depth: usize,
        index: usize,
    ) -> Value {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut out = Map::new();
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return Value::Object(out);
        };
        let kind = name.and_then(Kind::of_schema);
        for (prop, prop_schema) in properties {
            if depth >= MAX_DEPTH && !required.contains(&prop.as_str()) {
                continue;
            }
            // Write-only properties (passwords, secrets) are never in an answer.
            if prop_schema.get("x-looker-write-only") == Some(&Value::Bool(true)) {
                continue;
            }
            let value = if prop == "id" {
                let id = match (depth, self.own_id) {
                    (0, Some(own)) => own.to_owned(),
                    _ => kind
                        .and_then(|k| k.demo_ids().get(index % k.demo_ids().len()))
                        .map_or_else(|| (index + 1).to_string(), |id| (*id).to_owned()),
                };
                typed(prop_schema, id)
            } else {
                self.value(prop_schema, prop, depth + 1, index)
            };
            out.insert(prop.clone(), value);
        }
        Value::Object(out)
    }

    /// An object without declared properties: `can` maps and other string-keyed maps.
    fn map(&self, prop: &str, schema: &'static Value, depth: usize) -> Value {
        let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) else {
            return json!({});
        };
        let (_, values) = resolve(values);
        if values.get("type").and_then(Value::as_str) == Some("boolean") {
            return json!({"show": true, "index": true, "update": true, "destroy": true});
        }
        if depth >= MAX_DEPTH {
            return json!({});
        }
        json!({ "key": self.value(values, prop, depth + 1, 0) })
    }

    fn integer(&self, prop: &str, index: usize) -> i64 {
        let echoed = self.path_params.get(prop).and_then(|v| v.parse().ok());
        echoed.unwrap_or(index as i64 + 1)
    }

    fn string(&self, prop: &str, schema: &Value, index: usize) -> String {
        if let Some(value) = self.path_params.get(prop) {
            return value.clone();
        }
        match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => return DEMO_CREATED_AT.to_owned(),
            Some("date") => return "2026-01-01".to_owned(),
            Some("uri-reference") => return format!("/api/4.0/{prop}/{}", index + 1),
            _ => {}
        }
        if let Some(kind) = Kind::of_property(prop) {
            let ids = kind.demo_ids();
            if let Some(id) = ids.get(index % ids.len()) {
                return (*id).to_owned();
            }
        }
        match prop {
            "email" => "admin@example.com".to_owned(),
            "url" | "share_url" | "short_url" => format!("/{prop}/{}", index + 1),
            p if p.ends_with("_id") || p == "id" => (index + 1).to_string(),
            p if p.ends_with("_at") => DEMO_CREATED_AT.to_owned(),
            "" => "demo".to_owned(),
            p => format!("{p} {}", index + 1),
        }
    }
}

static EMPTY: Value = Value::Null;

/// An id as the property's type wants it.
fn typed(schema: &'static Value, id: String) -> Value {
    let (_, schema) = resolve(schema);
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") => id.parse::<i64>().map_or(Value::String(id), Value::from),
        _ => Value::String(id),
    }
}

/// A body of another media type, as `content_type` wants it.
pub fn non_json_body(media: &str) -> (&'static str, Vec<u8>) {
    match media {
        "image/png" => ("image/png", PNG_1X1.to_vec()),
        "image/jpeg" => ("image/jpeg", JPEG_1X1.to_vec()),
        "image/svg+xml" => (
            "image/svg+xml",
            br#"<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>"#.to_vec(),
        ),
        "application/pdf" => (
            "application/pdf",
            b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n".to_vec(),
        ),
        _ => ("text/plain; charset=utf-8", b"demo\n".to_vec()),
    }
}

/// A 1x1 transparent PNG.
const PNG_1X1: [u8; 67] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// The smallest JPEG markers a decoder accepts as a file start (SOI, APP0 JFIF, EOI).
const JPEG_1X1: [u8; 22] = [
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xff, 0xd9,
];

/// One entry of Looker's 422 `errors` list.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    /// `missing_field` or `invalid`, Looker's codes.
    pub code: &'static str,
    pub message: String,
}

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyError {
    /// Not JSON at all (400).
    Malformed(String),
    /// JSON that does not fit the request schema (422).
    Invalid(Vec<FieldError>),
}

/// Checks a request body against the operation's JSON request schema. Operations without
/// one (or with a form or text body) accept anything; so does an empty optional body.
pub fn check_body(op: &'static Value, body: &[u8]) -> Result<(), BodyError> {
    let Some(request) = op.get("requestBody") else {
        return Ok(());
    };
    let Some(schema) = request
        .get("content")
        .and_then(|c| c.get("application/json"))
        .and_then(|c| c.get("schema"))
    else {
        return Ok(());
    };
    let required = request.get("required") == Some(&Value::Bool(true));
    if body.iter().all(u8::is_ascii_whitespace) {
        return if required {
            Err(BodyError::Malformed(
                "A JSON request body is required".into(),
            ))
        } else {
            Ok(())
        };
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BodyError::Malformed(format!("Request body is not valid JSON: {e}")))?;
    let errors = check_value(schema, &value, "");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(BodyError::Invalid(errors))
    }
}

/// Top-level checks: the body's own type, its required properties, and each declared
/// property's JSON type (one level deep, as Looker reports errors by top-level field).
fn check_value(schema: &'static Value, value: &Value, field: &str) -> Vec<FieldError> {
    let (_, schema) = resolve(schema);
    let name = if field.is_empty() { "body" } else { field };
    if !type_fits(schema, value) {
        return vec![FieldError {
            field: name.to_owned(),
            code: "invalid",
            message: format!("{name} must be {}", expected(schema)),
        }];
    }
    if !field.is_empty() {
        return Vec::new();
    }
    let Some(object) = value.as_object() else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if object.get(required).is_none_or(Value::is_null) {
            errors.push(FieldError {
                field: required.to_owned(),
                code: "missing_field",
                message: format!("{required} is required"),
            });
        }
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (prop, value) in object {
            if let Some(prop_schema) = properties.get(prop) {
                errors.extend(check_value(prop_schema, value, prop));
            }
        }
    }
    errors
}

fn type_fits(schema: &'static Value, value: &Value) -> bool {
    let (_, schema) = resolve(schema);
    let declared = schema.get("type").and_then(Value::as_str);
    let declared = declared.or(schema.get("properties").map(|_| "object"));
    match (declared, value) {
        (_, Value::Null) => true,
        (Some("string"), v) => v.is_string() || v.is_number() || v.is_boolean(),
        (Some("integer"), Value::String(s)) => s.trim().parse::<i64>().is_ok(),
        (Some("integer"), v) => v.is_i64() || v.is_u64(),
        (Some("number"), Value::String(s)) => s.trim().parse::<f64>().is_ok(),
        (Some("number"), v) => v.is_number(),
        (Some("boolean"), v) => v.is_boolean(),
        (Some("array"), v) => v.is_array(),
        (Some("object"), v) => v.is_object(),
        _ => true,
    }
}

fn expected(schema: &Value) -> String {
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => "an array".into(),
        Some("object") | None => "an object".into(),
        Some("integer") => "an integer".into(),
        Some(other) => format!("a {other}"),
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
    use crate::operations::embedded;

    #[test]
    fn the_embedded_spec_has_every_operation_of_the_table() {
        assert_eq!(spec()["openapi"], "3.0.0");
        let table = embedded();
        assert_eq!(table.operations().len(), 483);
        for op in table.operations() {
            let spec_op = operation(&op.method, &op.template)
                .unwrap_or_else(|| panic!("{} {} not in the spec", op.method, op.template));
            assert_eq!(spec_op["operationId"], op.operation_id.as_str());
        }
    }

    #[test]
    fn success_picks_the_first_2xx_with_content_and_204_without_a_body() {
        let cases = [
            (
                "GET",
                "/dashboards/{dashboard_id}",
                200,
                Some("application/json"),
            ),
            ("DELETE", "/dashboards/{dashboard_id}", 204, None),
            ("DELETE", "/color_collections/{collection_id}", 204, None),
            (
                "GET",
                "/projects/{project_id}/git/deploy_key",
                200,
                Some("text/plain"),
            ),
            (
                "POST",
                "/dashboards/{dashboard_id}/copy",
                200,
                Some("application/json"),
            ),
        ];
        for (method, template, status, media) in cases {
            let got = success(operation(method, template).unwrap());
            assert_eq!(got.status, status, "{method} {template}");
            assert_eq!(got.content.map(|(m, _)| m), media, "{method} {template}");
        }
    }

    #[test]
    fn generated_objects_use_demo_ids_and_echo_path_parameters() {
        let params: BTreeMap<String, String> = [("group_id".to_owned(), "77".to_owned())].into();
        let generator = Generator {
            path_params: &params,
            own_id: Some("77"),
        };
        let group = generator.generate(&spec()["components"]["schemas"]["Group"]);
        assert_eq!(group["id"], "77");
        let none = BTreeMap::new();
        let generator = Generator {
            path_params: &none,
            own_id: None,
        };
        let dashboards = generator.generate(
            json!({"type": "array", "items": {"$ref": "#/components/schemas/DashboardBase"}})
                .leak_static(),
        );
        assert_eq!(dashboards[0]["id"], "1");
        assert_eq!(dashboards[1]["id"], "2");
        assert!(FOLDER_IDS.contains(&dashboards[1]["folder"]["id"].as_str().unwrap()));
    }

    trait Leak {
        fn leak_static(self) -> &'static Value;
    }
    impl Leak for Value {
        fn leak_static(self) -> &'static Value {
            Box::leak(Box::new(self))
        }
    }

    #[test]
    fn bodies_are_checked_against_the_request_schema() {
        let create_query = operation("POST", "/queries").unwrap();
        let ok =
            br#"{"model": "thelook", "view": "orders", "limit": 10, "fields": ["orders.count"]}"#;
        assert_eq!(check_body(create_query, ok), Ok(()));
        assert!(matches!(
            check_body(create_query, b"{nope"),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            check_body(create_query, b""),
            Err(BodyError::Malformed(_))
        ));
        let Err(BodyError::Invalid(errors)) = check_body(
            create_query,
            br#"{"view": "orders", "fields": "orders.count"}"#,
        ) else {
            panic!("not invalid")
        };
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(got, [("model", "missing_field"), ("fields", "invalid")]);
        let Err(BodyError::Invalid(errors)) = check_body(create_query, b"[1]") else {
            panic!("not invalid")
        };
        assert_eq!(errors[0].field, "body");
        // No request body in the spec: anything goes.
        assert_eq!(
            check_body(operation("GET", "/user").unwrap(), b"{nope"),
            Ok(())
        );
    }
}
