//! `lookergate`: mint demo tokens (`token`) and print the demo key's JWKS (`jwks`).

use std::process::ExitCode;

use lookergate_cli::{
    jwks, load_signing_key, mint, TokenSpec, DEFAULT_TTL_SECS, DEMO_KID, DEMO_SIGNING_KEY_PEM,
};

const USAGE: &str = "\
usage:
  lookergate token --user NAME [--ttl SECS] [--kid K] [--key PEM_FILE] [--iss ISS] [--aud AUD]
      print a signed RS256 JWT for a demo user (alice, bob, carol, eve)
  lookergate jwks [--kid K] [--key PEM_FILE]
      print the public JWKS of the signing key
The default key is the embedded DEMO key (envoy/demo/demo-signing-key.pem): demo only.";

#[derive(Debug, Default)]
struct Options {
    user: Option<String>,
    ttl: Option<u64>,
    kid: Option<String>,
    key: Option<String>,
    iss: Option<String>,
    aud: Option<String>,
}

fn parse_options(args: &[String], allowed: &[&str]) -> Result<Options, String> {
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if !allowed.contains(&flag.as_str()) {
            return Err(format!("unknown option {flag}"));
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        match flag.as_str() {
            "--user" => opts.user = Some(value),
            "--ttl" => {
                let secs = value
                    .parse()
                    .map_err(|_| format!("--ttl: not a number of seconds: {value}"))?;
                opts.ttl = Some(secs);
            }
            "--kid" => opts.kid = Some(value),
            "--key" => opts.key = Some(value),
            "--iss" => opts.iss = Some(value),
            "--aud" => opts.aud = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(opts)
}

fn key_pem(opts: &Options) -> Result<String, String> {
    match &opts.key {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--key {path}: {e}")),
        None => Ok(DEMO_SIGNING_KEY_PEM.to_owned()),
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let (command, rest) = args.split_first().ok_or_else(|| USAGE.to_owned())?;
    match command.as_str() {
        "token" => {
            let opts = parse_options(
                rest,
                &["--user", "--ttl", "--kid", "--key", "--iss", "--aud"],
            )?;
            let user = opts.user.as_deref().ok_or("token: --user is required")?;
            let mut spec = TokenSpec::for_demo_user(user, opts.ttl.unwrap_or(DEFAULT_TTL_SECS))
                .map_err(|e| e.to_string())?;
            if let Some(iss) = &opts.iss {
                spec.iss.clone_from(iss);
            }
            if let Some(aud) = &opts.aud {
                spec.aud.clone_from(aud);
            }
            let kid = opts.kid.as_deref().unwrap_or(DEMO_KID);
            let key = load_signing_key(&key_pem(&opts)?, kid).map_err(|e| e.to_string())?;
            mint(&key, &spec).map_err(|e| e.to_string())
        }
        "jwks" => {
            let opts = parse_options(rest, &["--kid", "--key"])?;
            let kid = opts.kid.as_deref().unwrap_or(DEMO_KID);
            let key = load_signing_key(&key_pem(&opts)?, kid).map_err(|e| e.to_string())?;
            serde_json::to_string_pretty(&jwks(&key, kid)).map_err(|e| e.to_string())
        }
        "-h" | "--help" | "help" => Ok(USAGE.to_owned()),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lookergate: {e}");
            ExitCode::from(2)
        }
    }
}
