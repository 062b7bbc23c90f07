//! The JSON Schema of the plugin configuration, generated from the filter's own config
//! types (schemars) and completed with what the types cannot say: the Looker API 4.0
//! operationIds and tags a rule may name, duration defaults as operators write them, and
//! descriptions for editors. `docs/schema/plugin-config.schema.json` is this, committed.

use std::sync::OnceLock;

use lookergate::config::RawConfig;
use lookergate::looker::{ActivityType, OperationTable, Status};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// Where the generated schema is committed, relative to the repository root.
pub const SCHEMA_PATH: &str = "docs/schema/plugin-config.schema.json";

/// The committed schema (a test keeps it equal to [`plugin_config_schema`]).
pub const COMMITTED_SCHEMA: &str = include_str!("../../docs/schema/plugin-config.schema.json");

/// The pattern the config types put on every duration field (`"30s"`, `"10m"`).
pub const DURATION_PATTERN: &str = lookergate_proto::duration::PATTERN;

/// `x-looker-activity-type` and `x-looker-status` values a rule may name.
pub const ACTIVITY_TYPES: &[&str] = &ActivityType::NAMES;
pub const STATUSES: &[&str] = &Status::NAMES;

/// Descriptions for editors, by `$defs` type and property (the README's reference table).
const DESCRIPTIONS: &[(&str, &str, &str)] = &[
    ("PluginConfig", "version", "Configuration schema version; only 1 exists."),
    ("PluginConfig", "issuers", "Trusted token issuers: a request's token must verify against one of them."),
    ("PluginConfig", "policy", "Ordered rules mapping a verified principal and a Looker operation to a Looker identity, or a denial."),
    ("PluginConfig", "broker", "How the filter reaches the token broker (an Envoy cluster) and the credential it presents."),
    ("PluginConfig", "looker_token", "Looker API token caching."),
    ("PluginConfig", "api_prefix", "Requests under this prefix must be Looker API 4.0 operations (404 otherwise); login and logout are refused."),
    ("PluginConfig", "max_body_bytes", "Most bytes of a request body read when a rule inspects a query (413 above)."),
    ("Issuer", "issuer", "The exact `iss` value trusted."),
    ("Issuer", "audiences", "The token's `aud` (string or array) must contain one of these."),
    ("Issuer", "jwks", "Inline JWKS ({\"keys\": [...]}: RSA, EC P-256/P-384, Ed25519). Exactly one of jwks, jwks_uri and discovery."),
    ("Issuer", "jwks_uri", "JWKS URL, fetched through the Envoy cluster `cluster`. Exactly one of jwks, jwks_uri and discovery."),
    ("Issuer", "discovery", "Find jwks_uri in {issuer}/.well-known/openid-configuration, fetched through `cluster`. Exactly one of jwks, jwks_uri and discovery."),
    ("Issuer", "cluster", "The Envoy cluster that reaches the IdP (required with jwks_uri or discovery)."),
    ("Issuer", "jwks_refresh", "How often remote keys are refreshed (at least 10s)."),
    ("Issuer", "jwks_max_stale", "How long the last good keys are kept when the IdP fails (at least jwks_refresh)."),
    ("Issuer", "unknown_kid_refetch", "At most one refetch per this interval when a token names an unknown kid."),
    ("Issuer", "jwks_timeout", "Timeout of one JWKS or discovery fetch (100ms to 30s)."),
    ("Issuer", "algorithms", "Allowed `alg`s (default: all listed). HS* and none can never be allowed."),
    ("Issuer", "clock_skew", "Tolerance for exp/nbf/iat (at most 5m)."),
    ("Issuer", "from", "Where the token is: a header and a scheme prefix (default: authorization, \"Bearer \")."),
    ("Issuer", "max_token_bytes", "Longer tokens are refused before decoding."),
    ("TokenSource", "header", "Header carrying the token, e.g. authorization, cf-access-jwt-assertion, x-goog-iap-jwt-assertion."),
    ("TokenSource", "prefix", "Scheme prefix before the token (default \"Bearer \" for authorization, none otherwise; \"\" for none)."),
    ("Policy", "rules", "Evaluated in order: the first non-shadow rule that matches decides; none matching is 403 default_deny."),
    ("Rule", "name", "Unique name, reported in 403 answers, the audit log and metrics."),
    ("Rule", "methods", "HTTP methods this rule applies to (any when empty)."),
    ("Rule", "paths", "Path patterns: `*` one segment, `**` the rest (last only), otherwise exact."),
    ("Rule", "operations", "Looker API 4.0 operationIds. SQL Runner operations match only rules that name them here."),
    ("Rule", "tags", "Looker API 4.0 tags (Dashboard, Look, Query, ...)."),
    ("Rule", "activity_types", "x-looker-activity-type of the operation."),
    ("Rule", "statuses", "x-looker-status of the operation."),
    ("Rule", "when", "Conditions on the token's claims; all must hold."),
    ("Rule", "query", "Guardrails for the query of run_inline_query, create_query and run_url_encoded_query (allow rules only)."),
    ("Rule", "shadow", "Dry run: evaluated, counted and logged with what it would have decided, never enforced."),
    ("Rule", "rate_limit", "Token buckets per principal (sub), shared by all workers (allow rules only)."),
    ("Rule", "allow", "The Looker identity to act as: {\"role\": NAME} or {\"user\": {\"claim\": \"email\", \"credential_type\": \"email\"}}; or {\"embed\": PROFILE}: an embed rule, deciding the embed endpoints' requests only (it takes name, issuers, when and rate_limit)."),
    ("Rule", "deny", "true: deny matching requests."),
    ("Condition", "claim", "Dotted claim path, e.g. groups or realm_access.roles."),
    ("Condition", "equals", "The claim equals this value."),
    ("Condition", "one_of", "The claim equals one of these values."),
    ("Condition", "contains", "The claim is an array containing this value, or a space-separated string containing it."),
    ("Condition", "exists", "The claim is present (true) or absent (false)."),
    ("QueryGuard", "models", "Allowed query models."),
    ("QueryGuard", "views", "Allowed explores (`view` in a Looker query)."),
    ("QueryGuard", "max_limit", "Largest row limit; a query without one counts as Looker's 5000."),
    ("QueryGuard", "required_filters", "Fields the query must filter on."),
    ("RateLimit", "per_second", "Sustained requests per second (0 < per_second <= 100000)."),
    ("RateLimit", "burst", "Requests allowed at once above the sustained rate."),
    ("RateLimit", "db_queries_per_minute", "A separate budget for db_query operations."),
    ("RateLimit", "scope", "local (default): this Envoy's buckets; global: one budget across every Envoy, counted by the rate limit service (rate_limit_service)."),
    ("RateLimit", "on_unavailable", "Global limits: when the rate limit service cannot answer, deny (default: 503 naming the rule) or local (this Envoy's bucket decides)."),
    ("PluginConfig", "rate_limit_service", "The rate limit service (Envoy RLS v3, lookergate-ratelimit) for global limits; required when a rule's rate_limit is global."),
    ("RateLimitService", "cluster", "The Envoy cluster of the rate limit service (HTTP/2 for gRPC)."),
    ("RateLimitService", "domain", "The RLS domain of these limits (default lookergate)."),
    ("RateLimitService", "timeout", "Timeout of one ShouldRateLimit call (10ms to 10s; default 200ms)."),
    ("Broker", "cluster", "The Envoy cluster of the broker."),
    ("Broker", "authority", "The :authority of broker calls."),
    ("Broker", "path", "The broker's token endpoint."),
    ("Broker", "timeout", "Broker call timeout (50ms to 60s)."),
    ("Broker", "credential", "Presented to the broker as Authorization: Bearer (at least 16 printable characters). Exactly one of credential and credential_env."),
    ("Broker", "credential_env", "The environment variable of the Wasm VM holding the credential (Envoy vm_config.environment_variables; Istio vmConfig.env, Envoy Gateway env.hostKeys): keeps it out of the plugin config and /config_dump. Must be set when the filter loads."),
    ("LookerToken", "refresh_before", "Stop using a Looker token this long before it expires (at most 1h)."),
    ("PluginConfig", "embed", "Embedded analytics: the embed endpoints (answered by the filter through the broker, never forwarded) and the embed profiles embed rules name. docs/embed.md."),
    ("Embed", "path_prefix", "Where the embed endpoints are (POST acquire, PUT generate_tokens, DELETE session, POST sso_url); outside api_prefix and /api/."),
    ("Embed", "profiles", "Embed profiles by name: how a token's claims become the embed user Looker creates."),
    ("EmbedProfile", "external_user_id", "{\"claim\": CLAIM} (default sub); Looker gets <iss>|<claim value>."),
    ("EmbedProfile", "first_name", "{\"claim\": CLAIM} or {\"value\": TEXT}."),
    ("EmbedProfile", "last_name", "{\"claim\": CLAIM} or {\"value\": TEXT}."),
    ("EmbedProfile", "user_timezone", "{\"claim\": CLAIM} or {\"value\": TEXT}."),
    ("EmbedProfile", "permissions", "Looker embed permissions (only those Looker grants embed users)."),
    ("EmbedProfile", "models", "LookML models the embed user may see (at least one)."),
    ("EmbedProfile", "group_ids", "Looker group ids of the embed user."),
    ("EmbedProfile", "external_group_id", "{\"claim\": CLAIM} or {\"value\": TEXT}."),
    ("EmbedProfile", "user_attributes", "Looker user attribute name -> the claim it is read from (row-level security)."),
    ("EmbedProfile", "session_length", "How long the embed session lasts (1m to 30d)."),
    ("EmbedProfile", "force_logout_login", "Log out any Looker session of the browser before the embed user logs in."),
    ("EmbedUserAttribute", "claim", "Dotted claim path; an array claim's values are joined by commas."),
    ("EmbedUserAttribute", "required", "A token without the claim is refused (403 missing_claim); false: the attribute is left out."),
    ("EmbedUserAttribute", "sensitive", "Its value never appears in the audit trail or explain."),
];

/// The schema, generated now from the config types and the operation table.
pub fn plugin_config_schema() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<RawConfig>().to_value();
    complete(&mut schema);
    sorted(schema)
}

/// The schema as committed: pretty JSON, keys sorted, one trailing newline.
pub fn plugin_config_schema_text() -> String {
    let text = serde_json::to_string_pretty(&plugin_config_schema()).unwrap_or_default();
    format!("{text}\n")
}

fn complete(schema: &mut Value) {
    if let Some(root) = schema.as_object_mut() {
        root.insert("title".into(), json!("lookergate plugin configuration"));
        root.insert(
            "description".into(),
            json!("The JSON in Envoy's envoy.filters.http.wasm filter (config.configuration.value) for the lookergate filter. \
                   Generated from the filter's config types: `lookergate schema`."),
        );
    }
    fix_duration_defaults(schema);
    let defs = schema.get_mut("$defs").and_then(Value::as_object_mut);
    let Some(defs) = defs else { return };
    if let Ok(table) = OperationTable::looker_4_0() {
        let mut ids: Vec<&str> = table
            .operations()
            .iter()
            .map(|o| o.operation_id.as_str())
            .collect();
        ids.sort_unstable();
        let mut tags: Vec<&str> = table
            .operations()
            .iter()
            .flat_map(|o| o.tags.iter().map(String::as_str))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        set_item_enum(defs, "Rule", "operations", &ids);
        set_item_enum(defs, "Rule", "tags", &tags);
    }
    set_item_enum(defs, "Rule", "activity_types", ACTIVITY_TYPES);
    if let Some(broker) = defs.get_mut("Broker").and_then(Value::as_object_mut) {
        broker.insert(
            "oneOf".into(),
            json!([{"required": ["credential"]}, {"required": ["credential_env"]}]),
        );
    }
    set_item_enum(defs, "Rule", "statuses", STATUSES);
    set_item_enum(
        defs,
        "EmbedProfile",
        "permissions",
        lookergate_proto::embed::EMBED_PERMISSIONS,
    );
    for (def, property, text) in DESCRIPTIONS {
        if let Some(p) = property_mut(defs, def, property) {
            p.insert("description".into(), json!(text));
        }
    }
}

fn property_mut<'a>(
    defs: &'a mut Map<String, Value>,
    def: &str,
    property: &str,
) -> Option<&'a mut Map<String, Value>> {
    defs.get_mut(def)?
        .get_mut("properties")?
        .get_mut(property)?
        .as_object_mut()
}

fn set_item_enum(defs: &mut Map<String, Value>, def: &str, property: &str, values: &[&str]) {
    if let Some(items) = property_mut(defs, def, property)
        .and_then(|p| p.get_mut("items"))
        .and_then(Value::as_object_mut)
    {
        items.insert("enum".into(), json!(values));
    }
}

/// Durations are `String`s in the schema, but their defaults come from the Rust
/// defaults (`Duration`, serialized as `{"secs", "nanos"}`): write them as `"30s"`.
fn fix_duration_defaults(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("pattern").and_then(Value::as_str) == Some(DURATION_PATTERN) {
                if let Some(default) = map.get_mut("default") {
                    if let Some(text) = duration_text(default) {
                        *default = json!(text);
                    }
                }
            }
            map.values_mut().for_each(fix_duration_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(fix_duration_defaults),
        _ => {}
    }
}

fn duration_text(serialized: &Value) -> Option<String> {
    let secs = serialized.get("secs")?.as_u64()?;
    let nanos = serialized.get("nanos")?.as_u64()?;
    let millis = secs.checked_mul(1000)?.checked_add(nanos / 1_000_000)?;
    let units = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ];
    Some(
        units
            .iter()
            .find(|(_, per)| millis > 0 && millis % per == 0)
            .map_or(format!("{millis}ms"), |(unit, per)| {
                format!("{}{unit}", millis / per)
            }),
    )
}

/// Keys in sorted order whatever serde_json's map is (`preserve_order` may be on).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// One schema violation, with the field path written as the filter writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// `issuers[0].clock_skew`; empty for the document itself.
    pub field: String,
    pub message: String,
}

fn validator() -> Result<&'static jsonschema::Validator, String> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            jsonschema::validator_for(&plugin_config_schema()).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Every violation of the schema in `instance` (sorted by field, deduplicated).
pub fn validate(instance: &Value) -> Result<Vec<SchemaError>, String> {
    let validator = validator()?;
    let mut errors = Vec::new();
    for error in validator.iter_errors(instance) {
        let field = field_path(error.instance_path().segments().map(|s| s.to_string()));
        errors.extend(describe(
            &field,
            error.kind(),
            error.instance(),
            &error.to_string(),
        ));
    }
    errors.sort_by(|a, b| a.field.cmp(&b.field).then(a.message.cmp(&b.message)));
    errors.dedup();
    Ok(errors)
}

/// JSON pointer segments -> `issuers[0].clock_skew`.
fn field_path(segments: impl Iterator<Item = String>) -> String {
    let mut field = String::new();
    for segment in segments {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            field.push_str(&format!("[{segment}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(&segment);
        }
    }
    field
}

fn join(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_owned()
    } else {
        format!("{field}.{name}")
    }
}

/// A short rendering of a JSON value for a message.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

fn describe(
    field: &str,
    kind: &jsonschema::error::ValidationErrorKind,
    instance: &Value,
    fallback: &str,
) -> Vec<SchemaError> {
    use jsonschema::error::ValidationErrorKind as Kind;
    let one = |message: String| {
        vec![SchemaError {
            field: field.to_owned(),
            message,
        }]
    };
    let last = field
        .rsplit('.')
        .next()
        .unwrap_or("")
        .split('[')
        .next()
        .unwrap_or("");
    match kind {
        Kind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| SchemaError { field: join(field, name), message: "unknown field".to_owned() })
            .collect(),
        Kind::Required { property } => {
            let name = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
            vec![SchemaError { field: join(field, &name), message: "missing field".to_owned() }]
        }
        Kind::Pattern { pattern } if pattern == DURATION_PATTERN => one(format!(
            "{} is not a duration (a whole number and a unit: ms, s, m, h or d, like \"30s\")",
            short(instance)
        )),
        Kind::Enum { .. } if last == "operations" => {
            one(format!("{} is not a Looker API 4.0 operationId", short(instance)))
        }
        Kind::Enum { .. } if last == "tags" => one(format!("{} is not a Looker API 4.0 tag", short(instance))),
        Kind::Enum { options } => {
            let listed: Vec<String> = options.as_array().map(|o| o.iter().map(short).collect()).unwrap_or_default();
            if listed.len() <= 12 {
                one(format!("{} is not one of {}", short(instance), listed.join(", ")))
            } else {
                one(format!("{} is not one of the {} allowed values", short(instance), listed.len()))
            }
        }
        Kind::OneOfNotValid { .. } | Kind::AnyOf { .. } if last == "allow" => one(format!(
            "{} is not an identity: {{\"role\": NAME}} or {{\"user\": {{\"claim\": ..., \"credential_type\": ...}}}}",
            short(instance)
        )),
        Kind::OneOfNotValid { .. } | Kind::OneOfMultipleValid { .. } if last == "broker" => vec![SchemaError {
            field: join(field, "credential"),
            message: "give exactly one of `credential` and `credential_env`".to_owned(),
        }],
        Kind::OneOfNotValid { .. } | Kind::AnyOf { .. } => {
            one(format!("{} does not have any of the allowed shapes", short(instance)))
        }
        _ => one(fallback.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn committed_schema_is_the_generated_one() {
        assert!(
            COMMITTED_SCHEMA == plugin_config_schema_text(),
            "{SCHEMA_PATH} is stale: regenerate it with\n  cargo run -q -p lookergate-cli -- schema > {SCHEMA_PATH}"
        );
    }

    #[test]
    fn schema_describes_the_config_types() {
        let schema = plugin_config_schema();
        let defs = &schema["$defs"];
        assert_eq!(
            schema["additionalProperties"],
            json!(false),
            "unknown fields are errors"
        );
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, ["issuers", "policy", "broker"]);
        assert_eq!(
            defs["Issuer"]["properties"]["clock_skew"]["default"],
            json!("30s")
        );
        assert_eq!(
            defs["Issuer"]["properties"]["jwks_refresh"]["default"],
            json!("10m")
        );
        assert_eq!(
            defs["Issuer"]["properties"]["jwks_max_stale"]["default"],
            json!("1d")
        );
        assert_eq!(
            defs["Broker"]["properties"]["timeout"]["default"],
            json!("2s")
        );
        let ops = defs["Rule"]["properties"]["operations"]["items"]["enum"]
            .as_array()
            .unwrap();
        assert!(ops.contains(&json!("run_inline_query")) && ops.len() >= 480);
        assert!(defs["Algorithm"].to_string().contains("EdDSA"));
        assert!(!defs["Algorithm"].to_string().contains("HS256"));
    }

    #[test]
    fn every_description_names_a_property_of_the_generated_schema() {
        let generator = SchemaSettings::draft2020_12().into_generator();
        let raw = generator.into_root_schema_for::<RawConfig>().to_value();
        for (def, property, _) in DESCRIPTIONS {
            assert!(
                raw["$defs"][def]["properties"].get(property).is_some()
                    || (*def == "PluginConfig" && raw["properties"].get(property).is_some()),
                "{def}.{property} is not in the schema"
            );
        }
    }

    #[test]
    fn duration_defaults_are_written_as_operators_write_them() {
        let d = |secs: u64, nanos: u64| duration_text(&json!({"secs": secs, "nanos": nanos}));
        assert_eq!(d(30, 0).as_deref(), Some("30s"));
        assert_eq!(d(600, 0).as_deref(), Some("10m"));
        assert_eq!(d(7200, 0).as_deref(), Some("2h"));
        assert_eq!(d(0, 500_000_000).as_deref(), Some("500ms"));
        assert_eq!(d(0, 0).as_deref(), Some("0ms"));
    }

    #[test]
    fn violations_name_their_fields() {
        let config = json!({
            "issuers": [{"issuer": "https://idp", "audiences": ["a"], "clock_skew": "30x", "colour": 1,
                         "max_token_bytes": 10}],
            "policy": {"rules": [{"name": "r", "operations": ["no_such_op"], "tags": ["Dashboards"],
                                  "statuses": ["experimental"], "allow": {"group": "x"}}]},
            "broker": {"timeout": "2s"}
        });
        let errors = validate(&config).unwrap();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "issuers[0].clock_skew",
            "issuers[0].colour",
            "issuers[0].max_token_bytes",
            "policy.rules[0].operations[0]",
            "policy.rules[0].tags[0]",
            "policy.rules[0].statuses[0]",
            "policy.rules[0].allow",
            "broker.cluster",
            "broker.credential",
        ] {
            assert!(fields.contains(&want), "{want} missing from {errors:#?}");
        }
        let op = errors
            .iter()
            .find(|e| e.field == "policy.rules[0].operations[0]")
            .unwrap();
        assert_eq!(
            op.message,
            "\"no_such_op\" is not a Looker API 4.0 operationId"
        );
        let skew = errors
            .iter()
            .find(|e| e.field == "issuers[0].clock_skew")
            .unwrap();
        assert!(skew.message.contains("not a duration"), "{skew:?}");
    }

    #[test]
    fn field_paths_are_written_as_the_filter_writes_them() {
        let path = |s: &[&str]| field_path(s.iter().map(|s| (*s).to_owned()));
        assert_eq!(
            path(&["issuers", "0", "from", "header"]),
            "issuers[0].from.header"
        );
        assert_eq!(
            path(&["policy", "rules", "2", "paths", "0"]),
            "policy.rules[2].paths[0]"
        );
        assert_eq!(path(&[]), "");
    }
}
