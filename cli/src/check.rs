//! `lookergate check`: validates a plugin configuration exactly as the filter does
//! (`Gateway::load`, which stops at its first error), and lists further errors found by
//! the JSON Schema, so one run shows as many mistakes as possible.

use lookergate::config::{ConfigError, Gateway};
use lookergate::policy::Effect;
use serde_json::Value;

use crate::schema::{self, SchemaError};
use crate::source::PluginConfig;

/// One error, with the field path written as the filter writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub field: String,
    pub message: String,
    /// Found by the JSON Schema (not the loader, which stops at its first error).
    pub from_schema: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The filter would start with it.
    Valid { summary: String },
    /// The filter would refuse it; the first error is the one the filter logs.
    Invalid { errors: Vec<Finding> },
}

/// The verdict on one plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub label: String,
    pub outcome: Outcome,
    /// Loader notes (skipped JWKS keys), and schema findings on a config the filter accepts.
    pub warnings: Vec<String>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        matches!(self.outcome, Outcome::Valid { .. })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        match &self.outcome {
            Outcome::Valid { summary } => out.push_str(&format!("{}: ok: {summary}\n", self.label)),
            Outcome::Invalid { errors } => {
                out.push_str(&format!(
                    "{}: invalid: the filter would refuse this configuration\n",
                    self.label
                ));
                for e in errors {
                    let field = if e.field.is_empty() {
                        "(document)"
                    } else {
                        &e.field
                    };
                    let origin = if e.from_schema { " [schema]" } else { "" };
                    out.push_str(&format!("  error: {field}: {}{origin}\n", e.message));
                }
                let n = errors.len();
                let plural = if n == 1 { "" } else { "s" };
                out.push_str(&format!("  {n} error{plural}"));
                if errors.iter().any(|e| e.from_schema) {
                    out.push_str(
                        " (the filter stops at the first; [schema] ones are from the JSON Schema)",
                    );
                }
                out.push('\n');
            }
        }
        for w in &self.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        out
    }
}

/// Checks one plugin configuration found in a file.
pub fn check(plugin: &PluginConfig) -> Report {
    match &plugin.json {
        Ok(json) => check_json(&plugin.label, json),
        Err(why) => Report {
            label: plugin.label.clone(),
            outcome: Outcome::Invalid {
                errors: vec![Finding {
                    field: "configuration".to_owned(),
                    message: why.clone(),
                    from_schema: false,
                }],
            },
            warnings: Vec::new(),
        },
    }
}

/// Stands in for a `broker.credential_env` variable that is not set where the tool runs.
const PLACEHOLDER_CREDENTIAL: &str = "placeholder-credential-for-lookergate-check";

/// Loads plugin JSON as the filter does. `broker.credential_env` names a variable of the
/// Envoy process (its Wasm VM), which is rarely set where the tool runs: when it is not,
/// a placeholder stands in and a warning says so.
pub fn load_for_tooling(json: &str) -> (Result<Gateway, ConfigError>, Vec<String>) {
    let unset = std::cell::RefCell::new(Vec::new());
    let loaded = Gateway::load_with_env(json.as_bytes(), &|name| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| {
                unset.borrow_mut().push(name.to_owned());
                Some(PLACEHOLDER_CREDENTIAL.to_owned())
            })
    });
    let warnings = unset
        .into_inner()
        .into_iter()
        .map(|name| {
            format!(
                "broker.credential_env: {name} is not set here, so the credential itself was not checked; \
                 the filter refuses to start unless Envoy's vm_config.environment_variables provides it"
            )
        })
        .collect();
    (loaded, warnings)
}

/// Checks plugin JSON: the loader's verdict, completed by the schema's findings.
pub fn check_json(label: &str, json: &str) -> Report {
    let (loaded, mut warnings) = load_for_tooling(json);
    let schema_errors = match serde_json::from_str::<Value>(json) {
        Ok(value) => schema::validate(&value).unwrap_or_else(|e| {
            warnings.push(format!("the JSON Schema could not be used: {e}"));
            Vec::new()
        }),
        Err(_) => Vec::new(), // the loader reports the syntax error, with its line
    };
    let outcome = match loaded {
        Ok(gateway) => {
            warnings.extend(gateway.warnings.iter().cloned());
            // The loader is the authority: a schema finding here is a schema bug.
            warnings.extend(schema_errors.iter().map(|e| {
                format!(
                    "the JSON Schema disagrees with the filter (please report): {}: {}",
                    e.field, e.message
                )
            }));
            Outcome::Valid {
                summary: summary(&gateway),
            }
        }
        Err(first) => {
            let mut errors = vec![Finding {
                field: first.field.clone(),
                message: first.message.clone(),
                from_schema: false,
            }];
            errors.extend(
                schema_errors
                    .into_iter()
                    .filter(|e| !same_error(&first, e))
                    .map(|e| Finding {
                        field: e.field,
                        message: e.message,
                        from_schema: true,
                    }),
            );
            Outcome::Invalid { errors }
        }
    };
    Report {
        label: label.to_owned(),
        outcome,
        warnings,
    }
}

/// Does the schema finding repeat the loader's error? serde names the object for a
/// missing or unknown field (`issuers[0]: missing field `audiences``), the schema the field.
fn same_error(loader: &ConfigError, schema: &SchemaError) -> bool {
    let loader_field = if loader.field == "." {
        ""
    } else {
        loader.field.as_str()
    };
    if schema.field == loader_field {
        return true;
    }
    let parent = match schema.field.rsplit_once('.') {
        Some((parent, _)) => parent,
        None => "",
    };
    let name = schema.field.rsplit('.').next().unwrap_or("");
    parent == loader_field && loader.message.contains(&format!("`{name}`"))
}

/// One line: what the filter would run with.
pub fn summary(gateway: &Gateway) -> String {
    let issuers: Vec<String> = gateway
        .issuers
        .iter()
        .map(|i| {
            let keys = match &i.remote {
                None => "inline JWKS".to_owned(),
                Some(r) if r.discovery_url.is_some() => {
                    format!("discovery via cluster {}", r.cluster)
                }
                Some(r) => format!("jwks_uri via cluster {}", r.cluster),
            };
            format!("{} ({keys})", i.issuer)
        })
        .collect();
    let rules = gateway.policy.rules();
    let shadow = rules.iter().filter(|r| r.shadow).count();
    let deny = rules
        .iter()
        .filter(|r| !r.shadow && r.effect == Effect::Deny)
        .count();
    let allow = rules.len() - shadow - deny;
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    let embed = match &gateway.embed {
        Some(embed) => {
            let embed_rules = rules.iter().filter(|r| r.embed_profile().is_some()).count();
            format!(
                "; embed endpoints under {}: {} ({}), {}",
                embed.path_prefix,
                plural(embed.profile_names().len(), "profile"),
                embed.profile_names().join(", "),
                plural(embed_rules, "embed rule"),
            )
        }
        None => String::new(),
    };
    format!(
        "{}: {}; {} ({allow} allow, {deny} deny, {shadow} shadow); broker cluster {}; api_prefix {}{embed}",
        plural(issuers.len(), "issuer"),
        issuers.join(", "),
        plural(rules.len(), "rule"),
        gateway.broker.cluster,
        gateway.api_prefix,
    )
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "issuers": [{"issuer": "https://idp.example", "audiences": ["looker-api"],
                         "jwks": serde_json::from_str::<Value>(crate::DEMO_JWKS_JSON).unwrap()}],
            "policy": {"rules": [{"name": "all", "allow": {"role": "analyst"}}]},
            "broker": {"cluster": "broker", "credential": "0123456789abcdef-secret"}
        })
    }

    fn errors(config: &Value) -> Vec<Finding> {
        match check_json("t", &config.to_string()).outcome {
            Outcome::Invalid { errors } => errors,
            Outcome::Valid { summary } => panic!("accepted: {summary}"),
        }
    }

    #[test]
    fn valid_config_gets_a_one_line_summary() {
        let report = check_json("t", &base().to_string());
        assert_eq!(
            report.outcome,
            Outcome::Valid {
                summary: "1 issuer: https://idp.example (inline JWKS); 1 rule (1 allow, 0 deny, 0 shadow); \
                          broker cluster broker; api_prefix /api/4.0"
                    .to_owned()
            }
        );
        assert_eq!(report.warnings, Vec::<String>::new());
    }

    #[test]
    fn a_credential_from_the_vm_environment_is_checked_with_a_warning_when_unset_here() {
        let mut config = base();
        let broker = config["broker"].as_object_mut().unwrap();
        broker.remove("credential");
        broker.insert(
            "credential_env".into(),
            json!("LOOKERGATE_CHECK_TEST_UNSET_VARIABLE"),
        );
        let report = check_json("t", &config.to_string());
        assert!(report.is_valid(), "{}", report.render());
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0].contains("LOOKERGATE_CHECK_TEST_UNSET_VARIABLE is not set here"),
            "{:?}",
            report.warnings
        );

        config["broker"]["credential"] = json!("gateway-secret-0123456789");
        let found = errors(&config);
        assert_eq!(found[0].field, "broker.credential", "{found:#?}");
        assert!(found[0].message.contains("exactly one of"), "{found:#?}");
    }

    #[test]
    fn the_loaders_error_comes_first_then_the_schemas_others() {
        let mut config = base();
        config["issuers"][0]["clock_skew"] = json!("10m");
        config["issuers"][0]["jwks_refresh"] = json!("soon");
        config["policy"]["rules"][0]["operations"] = json!(["no_such_op"]);
        let errors = errors(&config);
        // The loader stops at the duration it cannot parse; the schema also sees the operation.
        assert_eq!(errors[0].field, "issuers[0].jwks_refresh");
        assert!(!errors[0].from_schema);
        assert!(errors
            .iter()
            .any(|e| e.field == "policy.rules[0].operations[0]" && e.from_schema));
        assert_eq!(
            errors
                .iter()
                .filter(|e| e.field == "issuers[0].jwks_refresh")
                .count(),
            1,
            "{errors:#?}"
        );
    }

    #[test]
    fn a_missing_or_unknown_field_is_reported_once() {
        let mut missing = base();
        missing["issuers"][0]
            .as_object_mut()
            .unwrap()
            .remove("audiences");
        let found = errors(&missing);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].field, "issuers[0]");
        assert!(
            found[0].message.contains("missing field `audiences`"),
            "{found:#?}"
        );

        let mut unknown = base();
        unknown["broker"]["colour"] = json!("blue");
        let found = errors(&unknown);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].field, "broker.colour");
    }

    #[test]
    fn semantic_errors_only_the_loader_knows_are_reported() {
        let mut config = base();
        config["issuers"][0]["clock_skew"] = json!("10m");
        let errors = errors(&config);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].field.as_str(), errors[0].message.as_str()),
            ("issuers[0].clock_skew", "must be at most 5m")
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let errors = errors(&json!(null)); // `null` is valid JSON but not a config
        assert_eq!(errors.len(), 1, "{errors:#?}"); // the schema's type error is the same one
        match check_json("t", "{\n  \"issuers\": [,]\n}").outcome {
            Outcome::Invalid { errors } => {
                assert!(errors[0].message.contains("line 2"), "{errors:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}
