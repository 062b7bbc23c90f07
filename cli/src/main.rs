//! `lookergate`: check plugin configurations, explain policy decisions, print the
//! config's JSON Schema, run the dev IdP, and mint demo tokens.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};
use jwt_simple::algorithms::RS256KeyPair;

use lookergate::keyring::KeyRing;
use lookergate_cli::explain::{self, Principal, Request};
use lookergate_cli::idp::{self, Idp};
use lookergate_cli::{check, schema, source};
use lookergate_cli::{
    jwks, load_signing_key, mint, unix_now, TokenSpec, DEFAULT_TTL_SECS, DEMO_AUDIENCE,
    DEMO_ISSUER, DEMO_KID, DEMO_SIGNING_KEY_PEM,
};
use serde_json::Value;

/// Check plugin configurations, explain policy decisions, print the config's JSON Schema,
/// run the dev IdP, and mint demo tokens.
#[derive(Debug, Parser)]
#[command(name = "lookergate", version, arg_required_else_help = true, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  lookergate check envoy/demo.yaml
  lookergate explain envoy/demo.yaml --claims '{\"sub\":\"bob\"}' --request \"GET /api/4.0/user\"
  lookergate idp --listen 127.0.0.1:0
  lookergate token --user alice
The default key is the embedded DEMO key (envoy/demo/demo-signing-key.pem): demo only.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate plugin configurations exactly as the filter loads them
    ///
    /// Every error with its field path (the filter stops at the first; the JSON Schema
    /// finds more). Exit 0 valid, 1 invalid, 2 unreadable.
    Check {
        /// A plugin JSON file, or an Envoy config (YAML/JSON) whose
        /// envoy.filters.http.wasm filters carry it
        #[arg(required = true, value_name = "CONFIG")]
        configs: Vec<PathBuf>,
    },
    /// What the policy decides for one request and why
    ///
    /// The Looker operation, each rule tried, shadow hits, the Looker identity.
    /// Exit 0 allow, 1 deny, 2 usage or invalid config.
    Explain(ExplainArgs),
    /// Print the JSON Schema of the plugin configuration (docs/schema/plugin-config.schema.json)
    Schema,
    /// Run the dev OIDC issuer; prints `listening on <ip:port>` once bound
    ///
    /// Serves /.well-known/openid-configuration, /jwks, POST /token {"user": "alice",
    /// "ttl": 600}, POST /rotate[?keep_old=false], POST /__idp/fail {"mode":
    /// "500"|"garbage"|"ok"}, GET /__idp/stats, POST /__idp/jwks_padding {"extra_keys":
    /// 19, "x5c_bytes": 2500} (a large JWKS).
    Idp(IdpArgs),
    /// Print a signed RS256 JWT for a demo user (alice, bob, carol, eve)
    Token(TokenArgs),
    /// Print the public JWKS of the signing key
    Jwks(KeyArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("principal").required(true).args(["claims", "token"])))]
struct ExplainArgs {
    /// A plugin JSON file, or an Envoy config carrying plugin configurations
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// The token's claims (a JSON object, or a file holding one); skips token verification
    #[arg(long, value_name = "FILE|JSON")]
    claims: Option<String>,
    /// A JWT, verified as the filter would, now
    #[arg(long, value_name = "JWT")]
    token: Option<String>,
    /// The request line
    #[arg(long, value_name = "METHOD /path")]
    request: String,
    /// The request body
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,
    /// A request header (repeatable)
    #[arg(long = "header", value_name = "name: value")]
    headers: Vec<String>,
    /// Keys for issuers that fetch theirs remotely
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// Which plugin of an Envoy config (1 is the first)
    #[arg(long, value_name = "N")]
    plugin: Option<usize>,
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// The key id
    #[arg(long, value_name = "K", default_value = DEMO_KID)]
    kid: String,
    /// The RSA signing key (default: the embedded demo key)
    #[arg(long, value_name = "PEM_FILE")]
    key: Option<PathBuf>,
}

impl KeyArgs {
    fn signing_key(&self) -> Result<RS256KeyPair, Failure> {
        let pem = match &self.key {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--key {}: {e}", path.display()))?,
            None => DEMO_SIGNING_KEY_PEM.to_owned(),
        };
        load_signing_key(&pem, &self.kid).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The demo user
    #[arg(long, value_name = "NAME")]
    user: String,
    /// Lifetime in seconds
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TTL_SECS)]
    ttl: u64,
    /// The issuer (default: the demo issuer)
    #[arg(long, value_name = "ISS")]
    iss: Option<String>,
    /// The audience (default: the demo audience)
    #[arg(long, value_name = "AUD")]
    aud: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, Args)]
struct IdpArgs {
    /// Address to bind (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10070")]
    listen: String,
    /// The issuer URL
    #[arg(long, value_name = "URL", default_value = DEMO_ISSUER)]
    issuer: String,
    /// The audience of the tokens it mints
    #[arg(long, value_name = "AUD", default_value = DEMO_AUDIENCE)]
    audience: String,
    /// Also serve this directory's files under /app/ (the demo web app, web/embed-demo)
    #[arg(long, value_name = "DIR")]
    app_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
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

fn run(cli: Cli) -> Result<Output, Failure> {
    match cli.command {
        Command::Check { configs } => Ok(check_command(&configs)),
        Command::Explain(args) => explain_command(&args),
        Command::Schema => {
            let text = schema::plugin_config_schema_text();
            Ok(Output::ok(text.trim_end().to_owned()))
        }
        Command::Idp(args) => idp_command(args),
        Command::Token(args) => {
            let mut spec =
                TokenSpec::for_demo_user(&args.user, args.ttl).map_err(|e| e.to_string())?;
            if let Some(iss) = args.iss {
                spec.iss = iss;
            }
            if let Some(aud) = args.aud {
                spec.aud = aud;
            }
            let key = args.key.signing_key()?;
            mint(&key, &spec).map(Output::ok).map_err(|e| e.to_string())
        }
        Command::Jwks(args) => {
            let key = args.signing_key()?;
            serde_json::to_string_pretty(&jwks(&key, &args.kid))
                .map(Output::ok)
                .map_err(|e| e.to_string())
        }
    }
}

fn check_command(configs: &[PathBuf]) -> Output {
    let mut text = String::new();
    let mut code = 0;
    for file in configs {
        match source::read(file) {
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
    Output {
        text: text.trim_end().to_owned(),
        code,
    }
}

fn explain_command(args: &ExplainArgs) -> Result<Output, Failure> {
    let config = args.config.display();
    let mut request = Request::parse(&args.request)?;
    for header in &args.headers {
        request.add_header(header)?;
    }
    if let Some(body) = &args.body {
        request.body =
            Some(std::fs::read(body).map_err(|e| format!("--body {}: {e}", body.display()))?);
    }
    let principal = match (&args.claims, &args.token) {
        (Some(claims), _) => {
            let (text, origin) = if claims.trim_start().starts_with('{') {
                (claims.clone(), "--claims".to_owned())
            } else {
                (
                    std::fs::read_to_string(claims)
                        .map_err(|e| format!("--claims {claims}: {e}"))?,
                    claims.clone(),
                )
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(claims)) => Principal::Claims { claims, origin },
                Ok(_) => return Err(format!("--claims {origin}: not a JSON object")),
                Err(e) => return Err(format!("--claims {origin}: {e}")),
            }
        }
        (None, Some(token)) => Principal::Token(token.trim().to_owned()),
        // Unreachable: the `principal` group requires exactly one of the two.
        (None, None) => return Err("explain: give one of --claims and --token".to_owned()),
    };
    let plugins = source::read(&args.config)?;
    let index = match args.plugin {
        Some(n) => Some(n)
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
    // explain never calls the broker: a placeholder may stand in for its credential.
    let gateway = check::load_for_tooling(json).0.map_err(|e| {
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
    // The keys explain verifies with, as a worker holds them: inline ones from the
    // config, remote ones from --jwks.
    let mut ring = KeyRing::default();
    if let Some(file) = &args.jwks {
        let file = file.display();
        let jwks =
            std::fs::read_to_string(file.to_string()).map_err(|e| format!("--jwks {file}: {e}"))?;
        let jwks: Value = serde_json::from_str(&jwks).map_err(|e| format!("--jwks {file}: {e}"))?;
        explain::install_remote_keys(&gateway, &jwks, &mut ring)?;
    }
    let explanation = explain::explain(&gateway, &mut ring, &request, &principal, unix_now());
    text.push_str(&explanation.render());
    let code = if explanation.allowed() { 0 } else { 1 };
    Ok(Output {
        text: text.trim_end().to_owned(),
        code,
    })
}

fn idp_command(args: IdpArgs) -> Result<Output, Failure> {
    let IdpArgs {
        listen,
        issuer,
        audience,
        app_dir,
        key,
    } = args;
    let kid = key.kid.as_str();
    let signing_key = key.signing_key()?;
    let app_dir = app_dir
        .map(|dir| lookergate_cli::app_files::AppDir::new(&dir))
        .transpose()?;
    let idp = Idp::new(&issuer, &audience, signing_key, kid);
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
            served = idp::serve_with_app(listener, idp, app_dir) => served.map_err(|e| format!("idp: server failed: {e}"))?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(Output { text: String::new(), code: 0 })
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
