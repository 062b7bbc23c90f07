//! The `lookergate` binary on sample configurations: `check` on the demo config and on
//! broken ones, `explain` with claims and with tokens, `schema`, and the dev IdP on a
//! real socket.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use lookergate_cli::{demo_signing_key, mint, unix_now, TokenSpec};
use serde_json::{json, Value};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn lookergate(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_lookergate"))
        .args(args)
        .output()
        .expect("run lookergate");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn file(relative: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), relative].iter().collect();
    path.to_string_lossy().into_owned()
}

fn fixture(name: &str) -> String {
    file(&format!("tests/fixtures/{name}"))
}

fn demo_yaml() -> String {
    file("../envoy/demo.yaml")
}

/// The demo issuer's keys: envoy/demo.yaml fetches them from the dev IdP (discovery), so
/// `explain --token` needs them given (`--jwks`), as an operator would.
fn demo_jwks() -> String {
    file("../envoy/demo/demo-jwks.json")
}

fn token(user: &str, change: impl FnOnce(&mut TokenSpec)) -> String {
    let mut spec = TokenSpec::for_demo_user(user, 600).unwrap();
    change(&mut spec);
    mint(&demo_signing_key().unwrap(), &spec).unwrap()
}

fn explain(config: &str, extra: &[&str]) -> Run {
    let mut args = vec!["explain", config];
    args.extend_from_slice(extra);
    lookergate(&args)
}

/// The value after `label` on its line of explain's output.
fn line<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            l.strip_prefix(label)
                .filter(|_| l.starts_with(&format!("{label:<10} ")))
        })
        .map_or("", str::trim)
}

#[test]
fn check_accepts_the_demo_envoy_config_with_a_summary() {
    let run = lookergate(&["check", &demo_yaml()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "(lookergate): ok: 1 issuer: https://idp.lookergate.demo (discovery via cluster lookergate_idp); 8 rules (6 allow, 1 deny, 1 shadow)"
        ) && run.stdout.contains(
            "; embed endpoints under /lookergate/embed: 1 profile (dashboards), 1 embed rule"
        ),
        "{}",
        run.stdout
    );
    // Every rule of the demo that grants database queries has guardrails: no warning.
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
}

#[test]
fn check_lists_every_error_with_its_field() {
    let run = lookergate(&["check", &fixture("broken-many.json")]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let errors: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("error: "))
        .collect();
    // The filter's own error first, then what only the schema finds.
    assert!(
        errors[0].starts_with("issuers[0].jwks_refresh: duration \"10 minutes\""),
        "{errors:#?}"
    );
    for field in [
        "broker.timeout:",
        "issuers[0].colour: unknown field",
        "policy.rules[0].allow:",
        "policy.rules[0].operations[0]: \"run_query_please\" is not a Looker API 4.0 operationId",
        "policy.rules[1].statuses[0]:",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(field)),
            "{field} missing: {errors:#?}"
        );
    }
    assert!(run.stdout.contains("6 errors"), "{}", run.stdout);
}

#[test]
fn check_reports_what_only_the_loader_knows() {
    let run = lookergate(&["check", &fixture("broken-skew.json")]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("error: issuers[0].clock_skew: must be at most 5m\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("1 error"), "{}", run.stdout);
}

#[test]
fn check_finds_the_plugin_inside_an_envoy_yaml() {
    let run = lookergate(&["check", &fixture("broken-envoy.yaml")]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("http_filters[0].typed_config (lookergate): invalid"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("error: policy.rules[0].paths[0]: pattern \"api/4.0/dashboards/**\" must start with '/'"), "{}", run.stdout);
}

#[test]
fn check_of_several_files_fails_if_any_fails_and_unreadable_is_2() {
    let run = lookergate(&[
        "check",
        &fixture("guarded.json"),
        &fixture("broken-skew.json"),
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("guarded.json: ok: 1 issuer"),
        "{}",
        run.stdout
    );
    let missing = lookergate(&["check", &fixture("no-such-file.json")]);
    assert_eq!(missing.code, 2, "{}", missing.stdout);
    assert_eq!(lookergate(&["check"]).code, 2);
}

#[test]
fn schema_prints_the_committed_schema() {
    let run = lookergate(&["schema"]);
    assert_eq!(run.code, 0);
    let committed =
        std::fs::read_to_string(file("../docs/schema/plugin-config.schema.json")).unwrap();
    assert_eq!(run.stdout, committed);
}

#[test]
fn explain_with_claims_says_it_skipped_verification_and_shows_each_rule() {
    let run = explain(
        &demo_yaml(),
        &[
            "--claims",
            r#"{"sub": "bob", "groups": ["viewers"]}"#,
            "--request",
            "GET /api/4.0/looks/7",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(
        line(out, "principal").contains("NOT verified (--claims)"),
        "{out}"
    );
    assert_eq!(
        line(out, "operation"),
        "look (GET /api/4.0/looks/{look_id})"
    );
    assert!(
        out.contains("tags: Look; activity type: non_query; status: stable"),
        "{out}"
    );
    assert!(
        out.contains(
            "1. try-blocking-beta         no match: operation status stable is not in [\"beta\"]"
        ),
        "{out}"
    );
    assert!(out.contains("4. carol-reads-as-herself    no match: condition when[0] on claim \"groups\" does not hold"), "{out}");
    assert!(
        out.contains("5. analysts-query-orders     no match: operation look is not in"),
        "{out}"
    );
    assert!(out.contains("6. analysts-read             no match: condition when[0] on claim \"groups\" does not hold"), "{out}");
    assert!(
        out.contains("7. viewers-read              matches: decides ALLOW"),
        "{out}"
    );
    assert_eq!(line(out, "verdict"), "ALLOW by rule \"viewers-read\"");
    assert!(line(out, "identity").starts_with("role:viewer"), "{out}");
}

#[test]
fn explain_with_a_token_verifies_it_and_names_the_looker_user() {
    let carol = token("carol", |_| {});
    let run = explain(
        &demo_yaml(),
        &[
            "--token",
            &carol,
            "--jwks",
            &demo_jwks(),
            "--request",
            "GET /api/4.0/user",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        line(&run.stdout, "principal").starts_with("token verified as the filter would"),
        "{}",
        run.stdout
    );
    assert_eq!(line(&run.stdout, "operation"), "me (GET /api/4.0/user)");
    assert!(
        line(&run.stdout, "identity").starts_with("user:email:carol@example.com"),
        "{}",
        run.stdout
    );
    assert_eq!(
        line(&run.stdout, "issuer"),
        "https://idp.lookergate.demo (the only issuer reading the authorization header)"
    );
}

#[test]
fn explain_refuses_bad_tokens_as_the_filter_does() {
    let expired = token("alice", |s| {
        s.iat = unix_now() - 3600;
        s.exp = unix_now() - 600;
    });
    let foreign = token("alice", |s| s.aud = "someone-else".into());
    let cases = [
        (expired, "401 token_expired"),
        (foreign, "401 wrong_audience"),
        ("not.a.token".to_owned(), "401 malformed_token"),
    ];
    for (jwt, want) in cases {
        let run = explain(
            &demo_yaml(),
            &[
                "--token",
                &jwt,
                "--jwks",
                &demo_jwks(),
                "--request",
                "GET /api/4.0/user",
            ],
        );
        assert_eq!(run.code, 1, "{}", run.stdout);
        assert!(
            line(&run.stdout, "verdict").starts_with(&format!("DENY: {want}")),
            "{want}: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains("rules      not evaluated"),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn explain_refuses_what_never_reaches_the_policy() {
    let claims = r#"{"sub": "alice", "groups": ["analysts"]}"#;
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "GET /api/4.0/no_such_endpoint",
            &[],
            "DENY: 404 unknown_operation",
        ),
        (
            "POST /api/4.0/login",
            &[],
            "DENY: 403 gateway_owns_authentication",
        ),
        ("GET /api/4.0/../4.0/user", &[], "DENY: 400 bad_request"),
        (
            "GET /api/4.0/user",
            &["--header", "X-HTTP-Method-Override: DELETE"],
            "DENY: 400 bad_request",
        ),
    ];
    for (request, extra, want) in cases {
        let mut args = vec!["--claims", claims, "--request", request];
        args.extend_from_slice(extra);
        let run = explain(&demo_yaml(), &args);
        assert_eq!(run.code, 1, "{request}: {}", run.stdout);
        assert!(
            line(&run.stdout, "verdict").starts_with(want),
            "{request}: {}",
            run.stdout
        );
    }
}

#[test]
fn explain_reads_the_query_body_and_names_the_guardrail() {
    let dir = std::env::temp_dir().join(format!("lookergate-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    let bad = dir.join("bad.json");
    let query = |view: &str| {
        json!({"model": "thelook", "view": view, "fields": ["orders.count"], "limit": "100",
                                     "filters": {"orders.created_date": "7 days"}})
    };
    std::fs::write(&good, query("orders").to_string()).unwrap();
    std::fs::write(&bad, query("users").to_string()).unwrap();
    let alice = token("alice", |_| {});
    let config = fixture("guarded.json");
    for (principal, flag) in [
        (alice.as_str(), "--token"),
        (r#"{"sub": "alice", "groups": ["analysts"]}"#, "--claims"),
    ] {
        let body = good.to_string_lossy().into_owned();
        let run = explain(
            &config,
            &[
                flag,
                principal,
                "--request",
                "POST /api/4.0/queries/run/json",
                "--body",
                &body,
            ],
        );
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(
            line(&run.stdout, "query"),
            "model thelook, view orders, limit 100, filters orders.created_date=\"7 days\" (from the body and the URL)"
        );
        assert!(run.stdout.contains("1. no-contractors        no match: condition when[0] on claim \"contractor\" does not hold"), "{}", run.stdout);
        assert!(
            run.stdout
                .contains("2. try-blocking-beta     no match: operation status stable is not in"),
            "{}",
            run.stdout
        );
        assert!(
            line(&run.stdout, "ratelimit").starts_with("5/s, burst 20, 60 db queries/min"),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout
                .contains("guard: the query is within its guardrails"),
            "{}",
            run.stdout
        );

        let body = bad.to_string_lossy().into_owned();
        let run = explain(
            &config,
            &[
                flag,
                principal,
                "--request",
                "POST /api/4.0/queries/run/json",
                "--body",
                &body,
            ],
        );
        assert_eq!(run.code, 1);
        assert!(
            line(&run.stdout, "verdict").starts_with("DENY by rule \"queries-as-analyst\": 403 forbidden: query.view \"users\" is not allowed"),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout
                .contains("guard: its guardrails refuse the query: query.view \"users\""),
            "{}",
            run.stdout
        );
    }
    // Without --body the filter reads an empty body: not a query.
    let run = explain(
        &config,
        &[
            "--token",
            &alice,
            "--request",
            "POST /api/4.0/queries/run/json",
        ],
    );
    assert!(
        line(&run.stdout, "verdict").starts_with("DENY: 400 bad_request"),
        "{}",
        run.stdout
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn explain_reads_url_encoded_queries_as_the_filter_does() {
    let alice = token("alice", |_| {});
    let config = fixture("guarded.json");
    let cases = [
        ("GET /api/4.0/queries/models/thelook/views/orders/run/json?limit=10&f[orders.created_date]=7+days", 0),
        ("GET /api/4.0/queries/models/thelook/views/orders/run/json?limit=10", 1),
        ("GET /api/4.0/queries/models/thelook/views/orders/run/json?limit=9999&f[orders.created_date]=x", 1),
    ];
    for (request, code) in cases {
        let run = explain(&config, &["--token", &alice, "--request", request]);
        assert_eq!(run.code, code, "{request}: {}", run.stdout);
        assert!(
            line(&run.stdout, "query").ends_with("(from the URL)"),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn explain_shows_shadow_hits_and_sql_runner_opt_in() {
    let config = fixture("guarded.json");
    let admin = r#"{"sub": "root", "groups": ["admins", "viewers"], "email": "root@example.com", "email_verified": true}"#;
    // A beta operation: the shadow rule would deny but does not decide; nothing else allows it.
    let run = explain(
        &config,
        &["--claims", admin, "--request", "GET /api/4.0/agents/search"],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("2. try-blocking-beta     shadow rule: would deny"),
        "{}",
        run.stdout
    );
    assert_eq!(line(&run.stdout, "shadow"), "try-blocking-beta would deny");
    assert!(
        line(&run.stdout, "verdict").starts_with("DENY by rule \"default_deny\""),
        "{}",
        run.stdout
    );

    // SQL Runner: only the rule naming the operation applies.
    let run = explain(
        &config,
        &["--claims", admin, "--request", "POST /api/4.0/sql_queries"],
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        line(&run.stdout, "operation"),
        "create_sql_query (POST /api/4.0/sql_queries)"
    );
    assert!(
        run.stdout
            .contains("3. queries-as-analyst    no match: operation create_sql_query is not in"),
        "{}",
        run.stdout
    );
    assert!(
        line(&run.stdout, "identity").starts_with("user:email:root@example.com"),
        "{}",
        run.stdout
    );

    let contractor = r#"{"sub": "c", "groups": ["viewers"], "contractor": true}"#;
    let run = explain(
        &config,
        &[
            "--claims",
            contractor,
            "--request",
            "GET /api/4.0/dashboards/1",
        ],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("1. no-contractors        matches: decides DENY"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("5. sql-runner-as-myself  not reached"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_with_remote_keys_needs_them_given() {
    let alice = token("alice", |_| {});
    let config = fixture("remote-keys.json");
    let run = explain(
        &config,
        &["--token", &alice, "--request", "GET /api/4.0/user"],
    );
    assert_eq!(run.code, 1);
    assert!(
        line(&run.stdout, "verdict").starts_with("DENY: 503 keys_unavailable"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("--jwks"), "{}", run.stdout);
    let jwks = file("../envoy/demo/demo-jwks.json");
    let run = explain(
        &config,
        &[
            "--token",
            &alice,
            "--jwks",
            &jwks,
            "--request",
            "GET /api/4.0/user",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(line(&run.stdout, "verdict"), "ALLOW by rule \"analysts\"");
}

#[test]
fn explain_usage_errors_exit_2() {
    let demo = demo_yaml();
    let cases: [&[&str]; 5] = [
        &["explain", &demo, "--request", "GET /api/4.0/user"],
        &[
            "explain",
            &demo,
            "--claims",
            "{}",
            "--token",
            "x",
            "--request",
            "GET /api/4.0/user",
        ],
        &["explain", &demo, "--claims", "{}"],
        &[
            "explain",
            &demo,
            "--claims",
            "{}",
            "--request",
            "/api/4.0/user",
        ],
        &[
            "explain",
            &fixture("broken-skew.json"),
            "--claims",
            "{}",
            "--request",
            "GET /api/4.0/user",
        ],
    ];
    for args in cases {
        let run = lookergate(args);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        // clap's own message for a malformed command line, ours for bad input.
        assert!(
            run.stderr.starts_with("lookergate: ") || run.stderr.starts_with("error: "),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn token_and_jwks_commands_still_work() {
    let run = lookergate(&["token", "--user", "alice", "--ttl", "60"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim().split('.').count(), 3);
    let jwks = lookergate(&["jwks"]);
    let committed: Value = serde_json::from_str(lookergate_cli::DEMO_JWKS_JSON).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&jwks.stdout).unwrap(),
        committed
    );
}

/// The dev IdP as a process; killed on drop.
struct IdpProcess {
    child: Child,
    addr: String,
}

impl Drop for IdpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: idp\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn dev_idp_serves_on_a_real_socket_and_prints_its_address() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookergate"))
        .args(["idp", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    let idp = IdpProcess { child, addr };

    let (status, body) = http(&idp.addr, "GET", "/.well-known/openid-configuration", None);
    assert_eq!(status, 200);
    let discovery: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(discovery["jwks_uri"], "https://idp.lookergate.demo/jwks");

    let (status, body) = http(
        &idp.addr,
        "POST",
        "/token",
        Some(r#"{"user": "alice", "ttl": 600}"#),
    );
    assert_eq!(status, 200, "{body}");
    let jwt = serde_json::from_str::<Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The token verifies through explain against the JWKS the IdP serves.
    let (status, jwks) = http(&idp.addr, "GET", "/jwks", None);
    assert_eq!(status, 200);
    let dir = std::env::temp_dir().join(format!("lookergate-idp-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks).unwrap();
    let run = explain(
        &fixture("remote-keys.json"),
        &[
            "--token",
            &jwt,
            "--jwks",
            &jwks_file.to_string_lossy(),
            "--request",
            "GET /api/4.0/user",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn explain_shows_why_a_rule_never_grants_a_query_by_accident() {
    let config = fixture("guarded.json");
    let viewer = r#"{"sub": "vera", "groups": ["viewers"]}"#;
    // read-content is GET on tags Dashboard and Look: it reads a look, it does not run one.
    let run = explain(
        &config,
        &[
            "--claims",
            viewer,
            "--request",
            "GET /api/4.0/looks/1/run/json",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("4. read-content          no match: run_look runs a database query: only a rule naming it in `operations`, or `db_query` in `activity_types`, applies"),
        "{}",
        run.stdout
    );
    // A stored query: the guarded rule names only the operations it can read, and no
    // other rule grants run_query.
    let analyst = r#"{"sub": "ann", "groups": ["analysts"]}"#;
    let run = explain(
        &config,
        &[
            "--claims",
            analyst,
            "--request",
            "GET /api/4.0/queries/7/run/json",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        line(&run.stdout, "verdict").starts_with("DENY by rule \"default_deny\""),
        "{}",
        run.stdout
    );
    // check warns about the one query grant without guardrails (SQL Runner, by name).
    let check = lookergate(&["check", &config]);
    assert_eq!(check.code, 0, "{}", check.stdout);
    let warnings: Vec<&str> = check
        .stdout
        .lines()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", check.stdout);
    assert!(
        warnings[0].contains("rule \"sql-runner-as-myself\" grants database queries (create_sql_query, run_sql_query) without `query` guardrails"),
        "{}",
        check.stdout
    );
}
