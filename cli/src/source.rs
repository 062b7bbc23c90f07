//! Plugin configurations where operators keep them: a plugin JSON file, or an Envoy
//! config (YAML or JSON, several documents allowed) whose `envoy.filters.http.wasm`
//! filters carry the JSON in `config.configuration.value`.
//!
//! The one reader of the plugin JSON in envoy/demo.yaml for the end-to-end tests, the
//! soak and the fuzzers too; `fuzz/` (outside the workspace) compiles this file as its
//! own module, so it uses nothing but serde, serde_json and serde_norway.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// One plugin configuration found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Where it was found: the file, and for Envoy configs the filter's place and name.
    pub label: String,
    /// The plugin JSON, exactly as Envoy would hand it to the filter; `Err` when the
    /// filter has no usable `configuration`.
    pub json: Result<String, String>,
}

/// Reads `path` and finds the plugin configurations in it.
pub fn read(path: &Path) -> Result<Vec<PluginConfig>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    find(&path.display().to_string(), &text)
}

/// A JSON object is a plugin configuration, taken as it is (even when malformed: the
/// loader names the line), unless it is an Envoy config holding Wasm filters; anything
/// else is read as an Envoy config in YAML.
pub fn find(name: &str, text: &str) -> Result<Vec<PluginConfig>, String> {
    if text.trim_start().starts_with('{') {
        if let Ok(document) = serde_json::from_str::<Value>(text) {
            let mut found = Vec::new();
            wasm_filters(&document, "", name, &mut found);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        return Ok(vec![PluginConfig {
            label: name.to_owned(),
            json: Ok(text.to_owned()),
        }]);
    }
    let mut found = Vec::new();
    let mut documents = 0;
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| format!("{name}: not JSON, and not YAML: {e}"))?;
        documents += 1;
        let at = if i == 0 {
            String::new()
        } else {
            format!("(document {})", i + 1)
        };
        wasm_filters(&value, &at, name, &mut found);
    }
    if found.is_empty() {
        let what = if documents == 0 {
            "an empty file"
        } else {
            "no envoy.filters.http.wasm filter in it"
        };
        return Err(format!("{name}: not a plugin configuration, and {what}"));
    }
    Ok(found)
}

/// The plugin JSON of an Envoy config with exactly one Wasm filter (envoy/demo.yaml).
pub fn single_plugin_json(name: &str, text: &str) -> Result<String, String> {
    match find(name, text)?.as_slice() {
        [plugin] => plugin
            .json
            .clone()
            .map_err(|e| format!("{}: {e}", plugin.label)),
        found => Err(format!(
            "{name}: {} Wasm filters, expected exactly one",
            found.len()
        )),
    }
}

/// `yaml`, one Envoy config document with exactly one Wasm filter, with that filter's
/// plugin JSON replaced by `json`. Written out again as YAML: comments, layout and key
/// order are not kept, so edit the text before, not after.
pub fn with_plugin_json(name: &str, yaml: &str, json: &str) -> Result<String, String> {
    let mut document: Value =
        serde_norway::from_str(yaml).map_err(|e| format!("{name}: not YAML: {e}"))?;
    let mut found = Vec::new();
    wasm_filters_mut(&mut document, &mut found);
    let count = found.len();
    let [filter] = found.as_mut_slice() else {
        return Err(format!(
            "{name}: {count} Wasm filters, expected exactly one"
        ));
    };
    let value = filter
        .get_mut("config")
        .and_then(|c| c.get_mut("configuration"))
        .and_then(|c| c.get_mut("value"))
        .ok_or(format!(
            "{name}: the Wasm filter has no config.configuration.value"
        ))?;
    *value = Value::String(json.to_owned());
    serde_norway::to_string(&document).map_err(|e| format!("{name}: {e}"))
}

fn wasm_filters_mut<'a>(value: &'a mut Value, found: &mut Vec<&'a mut Value>) {
    let is_wasm = value.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE);
    if is_wasm {
        found.push(value);
        return;
    }
    match value {
        Value::Object(map) => map.values_mut().for_each(|v| wasm_filters_mut(v, found)),
        Value::Array(items) => items.iter_mut().for_each(|v| wasm_filters_mut(v, found)),
        _ => {}
    }
}

/// Walks the whole document: Wasm filters sit in listeners, Istio EnvoyFilter patches,
/// per-route configs, ... wherever a `typed_config` of the Wasm filter type is.
fn wasm_filters(value: &Value, at: &str, file: &str, found: &mut Vec<PluginConfig>) {
    match value {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                found.push(plugin_of(map.get("config"), at, file));
                return;
            }
            for (key, child) in map {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                wasm_filters(child, &path, file, found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                wasm_filters(child, &format!("{at}[{i}]"), file, found);
            }
        }
        _ => {}
    }
}

fn plugin_of(config: Option<&Value>, at: &str, file: &str) -> PluginConfig {
    let name = config
        .and_then(|c| c.get("name").or_else(|| c.get("root_id")))
        .and_then(Value::as_str)
        .unwrap_or("unnamed");
    let label = format!("{file}: {at} ({name})");
    let configuration = config.and_then(|c| c.get("configuration"));
    let json = match configuration {
        None => Err("the Wasm filter has no config.configuration".to_owned()),
        Some(c) => match c.get("value") {
            Some(Value::String(json)) => Ok(json.clone()),
            Some(_) => Err(
                "config.configuration.value is not a string (use google.protobuf.StringValue)"
                    .to_owned(),
            ),
            None => Err("config.configuration has no value".to_owned()),
        },
    };
    PluginConfig { label, json }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn plugin_json_is_taken_as_it_is() {
        let text = r#"{"issuers": [], "policy": {"rules": []}}"#;
        let found = find("p.json", text).unwrap();
        assert_eq!(
            found,
            vec![PluginConfig {
                label: "p.json".into(),
                json: Ok(text.into())
            }]
        );
    }

    #[test]
    fn demo_envoy_yaml_yields_its_one_plugin() {
        let found = find("demo.yaml", include_str!("../../envoy/demo.yaml")).unwrap();
        assert_eq!(found.len(), 1);
        let plugin = &found[0];
        assert_eq!(
            plugin.label,
            "demo.yaml: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[1].typed_config (lookergate)"
        );
        let json: Value = serde_json::from_str(plugin.json.as_ref().unwrap()).unwrap();
        assert_eq!(json["issuers"][0]["issuer"], "https://idp.lookergate.demo");
    }

    #[test]
    fn every_wasm_filter_of_every_document_is_found() {
        let yaml = r#"
http_filters:
- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: a
      configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: '{"version": 1}'}
- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config: {name: b}
---
patch:
  value:
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
      config:
        root_id: c
        configuration: {value: {"version": 1}}
"#;
        let found = find("f.yaml", yaml).unwrap();
        let summary: Vec<(String, bool)> = found
            .iter()
            .map(|p| (p.label.clone(), p.json.is_ok()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("f.yaml: http_filters[0].typed_config (a)".to_owned(), true),
                ("f.yaml: http_filters[1].typed_config (b)".to_owned(), false),
                (
                    "f.yaml: (document 2).patch.value.typed_config (c)".to_owned(),
                    false
                ),
            ]
        );
        assert_eq!(found[0].json.as_deref(), Ok(r#"{"version": 1}"#));
    }

    #[test]
    fn demo_plugin_json_is_read_and_replaced() {
        let demo = include_str!("../../envoy/demo.yaml");
        let json = single_plugin_json("demo.yaml", demo).unwrap();
        let plugin: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            plugin["issuers"][0]["issuer"],
            "https://idp.lookergate.demo"
        );

        let other = r#"{"version": 1, "issuers": []}"#;
        let replaced = with_plugin_json("demo.yaml", demo, other).unwrap();
        assert_eq!(
            single_plugin_json("replaced", &replaced).as_deref(),
            Ok(other)
        );
        // Everything else is the same config.
        let mut before: Value = serde_norway::from_str(demo).unwrap();
        let mut after: Value = serde_norway::from_str(&replaced).unwrap();
        for config in [&mut before, &mut after] {
            let mut found = Vec::new();
            wasm_filters_mut(config, &mut found);
            found[0]["config"]["configuration"]["value"] = Value::Null;
        }
        assert_eq!(before, after);
    }

    #[test]
    fn reading_or_replacing_needs_exactly_one_plugin() {
        let two = r#"
filters:
- typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, config: {configuration: {value: "{}"}}}
- typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, config: {configuration: {value: "{}"}}}
"#;
        assert!(single_plugin_json("two.yaml", two)
            .unwrap_err()
            .contains("2 Wasm filters"));
        assert!(with_plugin_json("two.yaml", two, "{}")
            .unwrap_err()
            .contains("2 Wasm filters"));
        let no_value = r#"
typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, config: {}}
"#;
        assert!(single_plugin_json("n.yaml", no_value)
            .unwrap_err()
            .contains("no config.configuration"));
        assert!(with_plugin_json("n.yaml", no_value, "{}")
            .unwrap_err()
            .contains("no config.configuration.value"));
    }

    #[test]
    fn files_without_a_plugin_are_errors() {
        assert!(find("x.yaml", "static_resources: {}\n")
            .unwrap_err()
            .contains("no envoy.filters.http.wasm"));
        assert!(find("x.yaml", "a: [unclosed\n")
            .unwrap_err()
            .contains("not JSON, and not YAML"));
    }
}
