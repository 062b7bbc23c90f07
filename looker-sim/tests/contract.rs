//! The contract test: every operation of Looker's API 4.0 spec, called on the in-process
//! simulator as an admin (demo ids in the path, required query parameters, the minimal
//! valid body of the request schema), answers one of the spec's success statuses with a
//! body that validates against the spec's success response schema.
//!
//! The spec is OpenAPI 3.0; its schemas become JSON Schema here: `nullable: true` also
//! allows `null`, Looker's `type: any` allows anything, a schema with `properties` is an
//! object, an `enum` on an array constrains its items, and `$ref`s to
//! `#/components/schemas` resolve against the converted spec as the root document. A
//! response schema of `type: string` (query results, `run_*`) is what the SDKs hand back
//! as raw text, so any body of a declared media type passes.
//!
//! All operations run; the failures are reported together, and any one fails the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use lookergate_looker_sim::operations::embedded;
use lookergate_looker_sim::{app, Operation, SimState, HAND_WRITTEN};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

const SPEC: &str = include_str!("../spec/Looker.4.0.oas.json");

/// OpenAPI 3.0 schema -> JSON Schema (draft 2020-12 reads every keyword used here).
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "nullable")
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        // Property names and enum values are data, not schemas.
                        "enum" | "required" => v.clone(),
                        "properties" => Value::Object(
                            v.as_object()
                                .into_iter()
                                .flatten()
                                .map(|(name, s)| (name.clone(), to_json_schema(s)))
                                .collect(),
                        ),
                        _ => to_json_schema(v),
                    };
                    (k.clone(), v)
                })
                .collect();
            if out.get("type") == Some(&json!("any")) {
                out.remove("type");
                out.remove("format");
            }
            // Looker's schemas of objects name only `properties`: they are objects.
            if out.contains_key("properties") && !out.contains_key("type") {
                out.insert("type".into(), json!("object"));
            }
            // Looker puts the allowed values of an array's items on the array.
            if out.get("type") == Some(&json!("array")) {
                if let (Some(values), Some(Value::Object(items))) =
                    (out.remove("enum"), out.get_mut("items"))
                {
                    items.insert("enum".into(), values);
                }
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), json!([t, "null"]));
                }
                if let Some(Value::Array(values)) = out.get_mut("enum") {
                    values.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => &spec["components"]["schemas"][name],
        None => schema,
    }
}

/// A sample value for a path or query parameter: the demo's ids for what it knows.
fn sample_param(name: &str) -> &'static str {
    match name {
        "result_format" => "json",
        "model_name" | "lookml_model_name" => "thelook",
        "view_name" | "explore_name" => "orders",
        "credential_type" => "email",
        "credential_id" => "admin@example.com",
        "width" | "height" => "100",
        _ => "1",
    }
}

/// The minimal valid body: only the `required` properties, recursively.
fn minimal(spec: &Value, schema: &Value, name: &str) -> Value {
    let schema = resolve(spec, schema);
    if let Some(first) = schema["enum"].get(0) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("array") => json!([]),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(false),
        Some("string") | Some("any") => json!(sample_param(name)),
        _ => {
            let mut out = Map::new();
            for required in schema["required"].as_array().into_iter().flatten() {
                let prop = required.as_str().unwrap();
                let value = minimal(spec, &schema["properties"][prop], prop);
                out.insert(prop.to_owned(), value);
            }
            Value::Object(out)
        }
    }
}

/// Bodies the minimal one would not make succeed on a hand-written operation.
fn body_override(operation_id: &str, session: &Value) -> Option<Value> {
    let query = json!({"model": "thelook", "view": "orders", "fields": ["orders.count"]});
    Some(match operation_id {
        "run_inline_query" | "create_query" => query,
        "acquire_embed_cookieless_session" => json!({
            "external_user_id": "idp|contract",
            "permissions": ["access_data"],
            "models": ["thelook"],
        }),
        "generate_tokens_for_cookieless_session" => json!({
            "session_reference_token": session["session_reference_token"],
            "navigation_token": session["navigation_token"],
            "api_token": session["api_token"],
        }),
        _ => return None,
    })
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("token {token}"));
    }
    if !body.is_empty() {
        request = request.header("content-type", content_type);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

async fn admin_token(router: &axum::Router) -> String {
    let answer = call(
        router,
        "POST",
        "/api/4.0/login",
        None,
        "application/x-www-form-urlencoded",
        b"client_id=demo-admin-id&client_secret=demo-admin-secret".to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// Calls one operation on a fresh demo instance; `Err` says why its answer breaks the spec.
async fn check(
    spec: &Value,
    components: &Value,
    op: &Operation,
    spec_op: &Value,
) -> Result<(), String> {
    let state = SimState::demo().with_embed_secret("contract-test-secret");
    let router = app(state);
    let token = admin_token(&router).await;
    // Embed session operations need a live session.
    let session = if op.operation_id.contains("cookieless_session")
        && op.operation_id != "acquire_embed_cookieless_session"
    {
        let acquire = body_override("acquire_embed_cookieless_session", &Value::Null).unwrap();
        let answer = call(
            &router,
            "POST",
            "/api/4.0/embed/cookieless_session/acquire",
            Some(&token),
            "application/json",
            acquire.to_string().into_bytes(),
        )
        .await;
        serde_json::from_slice(&answer.body).unwrap()
    } else {
        Value::Null
    };

    let mut path = String::from("/api/4.0");
    for segment in op.template.split('/').filter(|s| !s.is_empty()) {
        let value = match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some("session_reference_token") => session["session_reference_token"]
                .as_str()
                .unwrap()
                .to_owned(),
            Some(name) => sample_param(name).to_owned(),
            None => segment.to_owned(),
        };
        path.push('/');
        path.push_str(&value);
    }
    let query: Vec<String> = spec_op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query" && p["required"] == true)
        .map(|p| {
            let name = p["name"].as_str().unwrap();
            format!("{name}={}", sample_param(name))
        })
        .collect();
    let mut query = query;
    if op.operation_id == "run_url_encoded_query" {
        // A query without fields is refused (422), as Looker does.
        query.push("fields=orders.count".into());
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let request_body = &spec_op["requestBody"]["content"];
    let (content_type, body) = if op.operation_id == "login" {
        (
            "application/x-www-form-urlencoded",
            b"client_id=demo-admin-id&client_secret=demo-admin-secret".to_vec(),
        )
    } else if let Some(schema) = request_body["application/json"].get("schema") {
        let body =
            body_override(&op.operation_id, &session).unwrap_or_else(|| minimal(spec, schema, ""));
        ("application/json", body.to_string().into_bytes())
    } else if request_body.get("text/plain").is_some() {
        ("text/plain", b"demo".to_vec())
    } else {
        ("application/json", Vec::new())
    };
    let answer = call(&router, &op.method, &path, Some(&token), content_type, body).await;

    let responses = &spec_op["responses"];
    let code = answer.status.as_str();
    let Some(response) = responses.get(code).filter(|_| answer.status.is_success()) else {
        let text = String::from_utf8_lossy(&answer.body);
        return Err(format!(
            "status {code} is not a success of the spec: {text}"
        ));
    };
    if answer.status == StatusCode::NO_CONTENT {
        return if answer.body.is_empty() {
            Ok(())
        } else {
            Err("204 with a body".into())
        };
    }
    let content = response["content"].as_object().cloned().unwrap_or_default();
    if content.is_empty() {
        return Ok(());
    }
    let media = answer
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    // Looker's spec names plain text, csv and the like just `text`.
    let declared = content.get(media).or_else(|| {
        media
            .starts_with("text/")
            .then(|| content.get("text"))
            .flatten()
    });
    let Some(declared) = declared else {
        return Err(format!(
            "content type {media:?} is not one of {:?}",
            content.keys().collect::<Vec<_>>()
        ));
    };
    let schema = resolve(spec, &declared["schema"]);
    if schema["type"] == "string" && schema.get("properties").is_none() {
        return Ok(());
    }
    let instance: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("{media} body is not JSON: {e}"))?;
    let mut document = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [to_json_schema(&declared["schema"])],
    });
    document["components"] = components.clone();
    let validator = jsonschema::validator_for(&document)
        .map_err(|e| format!("schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .take(3)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[tokio::test]
async fn every_operation_answers_as_the_spec_says() {
    let spec: Value = serde_json::from_str(SPEC).unwrap();
    let components = json!({"schemas": to_json_schema(&spec["components"]["schemas"])});
    let table = embedded();
    assert_eq!(table.operations().len(), 483, "the spec's operation count");
    let mut failures = Vec::new();
    let mut generated = 0;
    for op in table.operations() {
        let spec_op = &spec["paths"][&op.template][op.method.to_lowercase()];
        assert!(
            spec_op.is_object(),
            "{} {} not in the spec",
            op.method,
            op.template
        );
        if !HAND_WRITTEN.contains(&op.operation_id.as_str()) {
            generated += 1;
        }
        if let Err(why) = check(&spec, &components, op, spec_op).await {
            failures.push(format!(
                "{} ({} {}): {why}",
                op.operation_id, op.method, op.template
            ));
        }
    }
    eprintln!(
        "contract: {} operations, {} hand-written, {generated} generated, {} failed",
        table.operations().len(),
        HAND_WRITTEN.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of 483 operations break the spec:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_hand_written_operation_is_in_the_table() {
    let table = embedded();
    for id in HAND_WRITTEN {
        assert!(
            table.operations().iter().any(|op| op.operation_id == id),
            "{id}"
        );
    }
}

#[test]
fn the_conversion_allows_null_only_where_the_spec_says_nullable() {
    let schema = to_json_schema(&json!({
        "type": "object",
        "properties": {
            "a": {"type": "string", "nullable": true},
            "b": {"type": "string", "nullable": false},
            "c": {"type": "any", "format": "any"},
            "d": {"type": "string", "enum": ["x"], "nullable": true},
        },
    }));
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&json!({"a": null, "b": "s", "c": [1], "d": null})));
    assert!(!validator.is_valid(&json!({"b": null})));
    assert!(!validator.is_valid(&json!({"d": "y"})));
}
