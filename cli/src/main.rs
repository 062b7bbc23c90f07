//! `lookergate`: check plugin configurations, explain policy decisions, print the
//! config's JSON Schema, run the dev IdP, and mint demo tokens.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use lookergate::config::Gateway;
use lookergate_cli::explain::{self, Principal, Request};
use lookergate_cli::idp::{self, Idp};
use lookergate_cli::{check, schema, source};
use lookergate_cli::{
    jwks, load_signing_key, mint, unix_now, TokenSpec, DEFAULT_TTL_SECS, DEMO_AUDIENCE,
    DEMO_ISSUER, DEMO_KID, DEMO_SIGNING_KEY_PEM,
};
use serde_json::Value;

const USAGE: &str = "\
usage:
  lookergate check CONFIG...
      validate plugin configurations exactly as the filter loads them; every error with
      its field path (the filter stops at the first; the JSON Schema finds more).
      CONFIG: a plugin JSON file, or an Envoy config (YAML/JSON) whose
      envoy.filters.http.wasm filters carry it. Exit 0 valid, 1 invalid, 2 unreadable.
  lookergate explain CONFIG (--claims FILE|JSON | --token JWT) --request \"METHOD /path\"
                     [--body FILE] [--header 'name: value']... [--jwks FILE] [--plugin N]
      what the policy decides for one request and why: the Looker operation, each rule
      tried, shadow hits, the Looker identity. --claims skips token verification;
      --token verifies as the filter would, now (--jwks: keys for issuers that fetch
      theirs remotely). --plugin N picks the Nth plugin of an Envoy config.
      Exit 0 allow, 1 deny, 2 usage or invalid config.
  lookergate schema
      print the JSON Schema of the plugin configuration (docs/schema/plugin-config.schema.json)
  lookergate idp [--listen ADDR] [--issuer URL] [--audience AUD] [--key PEM_FILE] [--kid K]
      run the dev OIDC issuer (default 127.0.0.1:10070, issuer https://idp.lookergate.demo,
      the demo key, kid demo-2026): /.well-known/openid-configuration, /jwks,
      POST /token {\"user\": \"alice\", \"ttl\": 600}, POST /rotate[?keep_old=false],
      POST /__idp/fail {\"mode\": \"500\"|\"garbage\"|\"ok\"}, GET /__idp/stats,
      POST /__idp/jwks_padding {\"extra_keys\": 19, \"x5c_bytes\": 2500} (a large JWKS).
      Prints `listening on <ip:port>` once bound.
  lookergate token --user NAME [--ttl SECS] [--kid K] [--key PEM_FILE] [--iss ISS] [--aud AUD]
      print a signed RS256 JWT for a demo user (alice, bob, carol, eve)
  lookergate jwks [--kid K] [--key PEM_FILE]
      print the public JWKS of the signing key
The default key is the embedded DEMO key (envoy/demo/demo-signing-key.pem): demo only.";

/// Command-line arguments: positionals and `--flag value` pairs (also `--flag=value`).
#[derive(Debug, Default)]
struct Args {
    positionals: Vec<String>,
    flags: Vec<(String, String)>,
}

impl Args {
    fn parse(args: &[String], known: &[&str]) -> Result<Args, String> {
        let mut parsed = Args::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if !arg.starts_with("--") {
                parsed.positionals.push(arg.clone());
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            if !known.contains(&flag.as_str()) {
                return Err(format!("unknown option {flag}"));
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value"))?
                    .clone(),
            };
            parsed.flags.push((flag, value));
        }
        Ok(parsed)
    }

    /// The flag's value; given twice is an error.
    fn one(&self, flag: &str) -> Result<Option<&str>, String> {
        match self.all(flag).as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(format!("{flag} given more than once")),
        }
    }

    fn all(&self, flag: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn no_positionals(&self, command: &str) -> Result<(), String> {
        match self.positionals.first() {
            Some(extra) => Err(format!("{command}: unexpected argument {extra:?}")),
            None => Ok(()),
        }
    }
}

/// What a command prints on stdout, and its exit code.
struct Output {
    text: String,
    code: u8,
}

impl Output {
    fn ok(text: String) -> Output {
        Output { text, code: 0 }
    }
}

/// A usage or input error: exit 2.
type Failure = String;

fn key_pem(path: Option<&str>) -> Result<String, Failure> {
    match path {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--key {path}: {e}")),
        None => Ok(DEMO_SIGNING_KEY_PEM.to_owned()),
    }
}

fn run(args: &[String]) -> Result<Output, Failure> {
    let (command, rest) = args.split_first().ok_or_else(|| USAGE.to_owned())?;
    match command.as_str() {
        "check" => check_command(rest),
        "explain" => explain_command(rest),
        "schema" => {
            Args::parse(rest, &[])?.no_positionals("schema")?;
            let text = schema::plugin_config_schema_text();
            Ok(Output::ok(text.trim_end().to_owned()))
        }
        "idp" => idp_command(rest),
        "token" => {
            let opts = Args::parse(
                rest,
                &["--user", "--ttl", "--kid", "--key", "--iss", "--aud"],
            )?;
            opts.no_positionals("token")?;
            let user = opts.one("--user")?.ok_or("token: --user is required")?;
            let ttl = match opts.one("--ttl")? {
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("--ttl: not a number of seconds: {v}"))?,
                None => DEFAULT_TTL_SECS,
            };
            let mut spec = TokenSpec::for_demo_user(user, ttl).map_err(|e| e.to_string())?;
            if let Some(iss) = opts.one("--iss")? {
                iss.clone_into(&mut spec.iss);
            }
            if let Some(aud) = opts.one("--aud")? {
                aud.clone_into(&mut spec.aud);
            }
            let kid = opts.one("--kid")?.unwrap_or(DEMO_KID);
            let key =
                load_signing_key(&key_pem(opts.one("--key")?)?, kid).map_err(|e| e.to_string())?;
            mint(&key, &spec).map(Output::ok).map_err(|e| e.to_string())
        }
        "jwks" => {
            let opts = Args::parse(rest, &["--kid", "--key"])?;
            opts.no_positionals("jwks")?;
            let kid = opts.one("--kid")?.unwrap_or(DEMO_KID);
            let key =
                load_signing_key(&key_pem(opts.one("--key")?)?, kid).map_err(|e| e.to_string())?;
            serde_json::to_string_pretty(&jwks(&key, kid))
                .map(Output::ok)
                .map_err(|e| e.to_string())
        }
        "-h" | "--help" | "help" => Ok(Output::ok(USAGE.to_owned())),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn check_command(rest: &[String]) -> Result<Output, Failure> {
    let args = Args::parse(rest, &[])?;
    if args.positionals.is_empty() {
        return Err("check: which CONFIG? (a plugin JSON file or an Envoy config)".to_owned());
    }
    let mut text = String::new();
    let mut code = 0;
    for file in &args.positionals {
        match source::read(Path::new(file)) {
            Err(e) => {
                text.push_str(&format!("{e}\n"));
                code = 2;
            }
            Ok(plugins) => {
                for plugin in &plugins {
                    let report = check::check(plugin);
                    if !report.is_valid() && code == 0 {
                        code = 1;
                    }
                    text.push_str(&report.render());
                }
            }
        }
    }
    Ok(Output {
        text: text.trim_end().to_owned(),
        code,
    })
}

fn explain_command(rest: &[String]) -> Result<Output, Failure> {
    let args = Args::parse(
        rest,
        &[
            "--claims",
            "--token",
            "--request",
            "--body",
            "--header",
            "--jwks",
            "--plugin",
        ],
    )?;
    let [config] = args.positionals.as_slice() else {
        return Err("explain: give exactly one CONFIG".to_owned());
    };
    let line = args
        .one("--request")?
        .ok_or("explain: --request \"METHOD /path\" is required")?;
    let mut request = Request::parse(line)?;
    for header in args.all("--header") {
        request.add_header(header)?;
    }
    if let Some(body) = args.one("--body")? {
        request.body = Some(std::fs::read(body).map_err(|e| format!("--body {body}: {e}"))?);
    }
    let principal = match (args.one("--claims")?, args.one("--token")?) {
        (Some(claims), None) => {
            let (text, origin) = if claims.trim_start().starts_with('{') {
                (claims.to_owned(), "--claims".to_owned())
            } else {
                (
                    std::fs::read_to_string(claims)
                        .map_err(|e| format!("--claims {claims}: {e}"))?,
                    claims.to_owned(),
                )
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(claims)) => Principal::Claims { claims, origin },
                Ok(_) => return Err(format!("--claims {origin}: not a JSON object")),
                Err(e) => return Err(format!("--claims {origin}: {e}")),
            }
        }
        (None, Some(token)) => Principal::Token(token.trim().to_owned()),
        _ => return Err("explain: give one of --claims FILE and --token JWT".to_owned()),
    };
    let plugins = source::read(Path::new(config))?;
    let index = match args.one("--plugin")? {
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=plugins.len()).contains(n))
            .ok_or_else(|| {
                format!(
                    "--plugin {n}: {config} has {} plugin configuration(s)",
                    plugins.len()
                )
            })?,
        None => 1,
    };
    let plugin = plugins
        .get(index - 1)
        .ok_or_else(|| format!("{config}: no plugin configuration"))?;
    let json = plugin
        .json
        .as_ref()
        .map_err(|e| format!("{}: {e}", plugin.label))?;
    let gateway = Gateway::load(json.as_bytes()).map_err(|e| {
        format!(
            "{}: invalid plugin configuration: {e} (see `lookergate check {config}`)",
            plugin.label
        )
    })?;
    let mut text = String::new();
    if plugins.len() > 1 {
        text.push_str(&format!(
            "{:<10} {} (plugin {index} of {})\n",
            "config",
            plugin.label,
            plugins.len()
        ));
    }
    if let Some(file) = args.one("--jwks")? {
        let jwks = std::fs::read_to_string(file).map_err(|e| format!("--jwks {file}: {e}"))?;
        let jwks: Value = serde_json::from_str(&jwks).map_err(|e| format!("--jwks {file}: {e}"))?;
        explain::install_remote_keys(&gateway, &jwks)?;
    }
    let explanation = explain::explain(&gateway, &request, &principal, unix_now());
    text.push_str(&explanation.render());
    let code = if explanation.allowed() { 0 } else { 1 };
    Ok(Output {
        text: text.trim_end().to_owned(),
        code,
    })
}

fn idp_command(rest: &[String]) -> Result<Output, Failure> {
    let args = Args::parse(
        rest,
        &["--listen", "--issuer", "--audience", "--key", "--kid"],
    )?;
    args.no_positionals("idp")?;
    let listen = args
        .one("--listen")?
        .unwrap_or("127.0.0.1:10070")
        .to_owned();
    let issuer = args.one("--issuer")?.unwrap_or(DEMO_ISSUER);
    let audience = args.one("--audience")?.unwrap_or(DEMO_AUDIENCE);
    let kid = args.one("--kid")?.unwrap_or(DEMO_KID);
    let key = load_signing_key(&key_pem(args.one("--key")?)?, kid).map_err(|e| e.to_string())?;
    let idp = Idp::new(issuer, audience, key, kid);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("idp: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| format!("idp: cannot listen on {listen}: {e}"))?;
        let local = listener.local_addr().map_err(|e| format!("idp: {e}"))?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {local}").and_then(|()| stdout.flush()).map_err(|e| format!("idp: stdout: {e}"))?;
        eprintln!("lookergate idp: issuer {}, kid {kid}: DEMO keys, never trust them elsewhere", idp.issuer());
        tokio::select! {
            served = idp::serve(listener, idp) => served.map_err(|e| format!("idp: server failed: {e}"))?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(Output { text: String::new(), code: 0 })
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(Output { text, code }) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("lookergate: {e}");
            ExitCode::from(2)
        }
    }
}
